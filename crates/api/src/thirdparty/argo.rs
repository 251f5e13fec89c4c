//! Argo Workflows: `Workflow` (argoproj.io/v1alpha1).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `status.phase` values.
pub mod phase {
    /// Not started.
    pub const PENDING: &str = "Pending";
    /// Running.
    pub const RUNNING: &str = "Running";
    /// Every step succeeded.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A step failed.
    pub const FAILED: &str = "Failed";
    /// The workflow could not run (controller error, invalid spec).
    pub const ERROR: &str = "Error";
}

/// `spec.shutdown` values (how the operator cancels a workflow).
pub mod shutdown {
    /// Stop now, without running exit handlers.
    pub const TERMINATE: &str = "Terminate";
    /// Stop, running exit handlers.
    pub const STOP: &str = "Stop";
}

/// An Argo workflow.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "Workflow",
    plural = "workflows",
    namespaced,
    status = "WorkflowStatus",
    derive = "PartialEq",
    shortname = "wf",
    doc = "Argo Workflow (lenient test double of the upstream CRD).",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".status.startedAt")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// Template to start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Workflow arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Arguments>,
    /// Run a WorkflowTemplate instead of inline templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_template_ref: Option<WorkflowTemplateRef>,
    /// Inline templates (free-form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::free_form_object_list")]
    pub templates: Vec<Map<String, Value>>,
    /// Service account the workflow's pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Hard deadline enforced by Argo itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// Set to `Terminate` or `Stop` to stop the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<String>,
}

/// `spec.arguments`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Arguments {
    /// Named string parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Parameter>,
}

/// One workflow parameter.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Parameter {
    /// Parameter name.
    pub name: String,
    /// Parameter value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `spec.workflowTemplateRef`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowTemplateRef {
    /// Template name.
    pub name: String,
    /// A ClusterWorkflowTemplate instead of a namespaced WorkflowTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_scope: Option<bool>,
}

/// Observed state of a Workflow.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// Pending, Running, Succeeded, Failed, Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Completed / total steps, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Workflow-level outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
}

/// `status.outputs`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Outputs {
    /// Output parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Parameter>,
}
