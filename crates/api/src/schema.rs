//! Schema fragments shared by the CRD types (used through `#[schemars(schema_with = ...)]`).
//!
//! Invariant: every fragment here is a *structural* schema in the Kubernetes sense (it has a
//! `type`, or says explicitly that unknown fields are preserved), so it can be embedded anywhere.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form JSON object (Helm values, Operation parameters): any keys, any nesting.
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list of free-form JSON objects.
pub(crate) fn free_form_object_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

/// The `conditions` list of a status: metav1.Condition items, merged by `type` under
/// server-side apply, so that two field managers can each own their own condition types.
pub(crate) fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item = generator
        .subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>()
        .to_value();
    json_schema!({
        "description": "The latest observations of the object's state (metav1.Condition), one per type.",
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}
