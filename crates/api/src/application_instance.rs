//! `ApplicationInstance` (`applicationinstances.vworkspace.io`): one Helm chart release for an
//! organization, realised through Flux (the operator never runs Helm itself).
//!
//! Invariants:
//! * the operator owns exactly two children per instance, a Flux `HelmRepository` and a
//!   `HelmRelease`, both named after the instance and in its namespace;
//! * `values` may be logged; `valuesFrom` sources (chart-value secrets) never are: only their
//!   names appear in messages, never their content;
//! * `kubectl get applicationinstances -A` answers "is each application healthy" (Ready, its
//!   reason, and the deployed revision).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::GoDuration;

/// Desired state of one application.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "vworkspace.io",
    version = "v1alpha1",
    kind = "ApplicationInstance",
    plural = "applicationinstances",
    namespaced,
    status = "ApplicationInstanceStatus",
    derive = "PartialEq",
    shortname = "ai",
    shortname = "appinst",
    category = "vworkspace",
    doc = "An application of an organization: a Helm chart at a version with values, released through Flux.",
    printcolumn(name = "Chart", type_ = "string", json_path = ".spec.chart.name"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.chart.version"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.helmRelease.revision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = 1
    ),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspend",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationInstanceSpec {
    /// The chart to release.
    pub chart: ChartRef,
    /// Helm values, merged over the chart's defaults (after `valuesFrom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub values: Option<Map<String, Value>>,
    /// Values taken from Secrets or ConfigMaps in the same namespace, merged in order, before
    /// `values`. Use Secrets for anything sensitive: their content is never logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub values_from: Vec<ValuesReference>,
    /// Stop reconciling (the release stays as it is) while true.
    #[serde(default)]
    pub suspend: bool,
    /// How often Flux re-checks the release for drift.
    #[serde(default = "default_interval")]
    pub interval: GoDuration,
}

fn default_interval() -> GoDuration {
    GoDuration::from_mins(5)
}

/// `spec.chart`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChartRef {
    /// Helm repository URL: `https://...` (index) or `oci://...` (registry), without
    /// credentials (`user:password@` is refused: put them in a Secret for Flux).
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(https?|oci)://[^\s/@]+(/[^\s]*)?$")
    )]
    pub repository: String,
    /// Chart name within the repository.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9_./]*$")
    )]
    pub name: String,
    /// Chart version (exact semver, or a semver range as Flux accepts).
    #[schemars(length(min = 1, max = 128))]
    pub version: String,
}

/// One `spec.valuesFrom` entry.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    /// Secret or ConfigMap.
    pub kind: ValuesSourceKind,
    /// Name of the Secret or ConfigMap, in the instance's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding YAML values.
    #[serde(default = "default_values_key")]
    #[schemars(length(min = 1, max = 253))]
    pub values_key: String,
    /// Dotted path where the key's (single) value is placed, e.g. `auth.password`; without it
    /// the key's YAML is merged at the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 250))]
    pub target_path: Option<String>,
    /// Tolerate a missing source instead of failing (ValuesSourceMissing).
    #[serde(default)]
    pub optional: bool,
}

fn default_values_key() -> String {
    "values.yaml".to_owned()
}

/// `valuesFrom[].kind`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValuesSourceKind {
    /// core/v1 Secret.
    Secret,
    /// core/v1 ConfigMap.
    ConfigMap,
}

impl ValuesSourceKind {
    /// The wire spelling (also Flux's).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
        }
    }
}

/// Observed state.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationInstanceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Failed, Reconciling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The latest announced transition of each Event reason: the inputs of its `event_id`
    /// (docs/conditions.md, "One rule from status change to Event").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub transitions: Vec<crate::transition::TransitionRecord>,
    /// The Flux HelmRelease realising this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_release: Option<HelmReleaseSummary>,
}

/// `status.helmRelease`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseSummary {
    /// Name of the HelmRelease (and of the Helm release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Helm release revision currently deployed (Flux `status.history[0].version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Chart version currently deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
}
