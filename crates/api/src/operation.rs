//! `Operation` (`operations.vworkspace.io`): one day-2 action (backup, restore, upgrade,
//! migration, command, runbook) on an ApplicationInstance, carried out by an engine.
//!
//! Invariants:
//! * the spec is immutable once created, except `cancel`, which may only go from false to
//!   true (CEL rules in the CRD; see [`IMMUTABLE_RULE`] and [`CANCEL_RULE`]): an accepted
//!   Operation must keep meaning what it meant when its child was created, and to change
//!   one that is still Blocked you delete it and create another;
//! * phases move Pending → Blocked ⇄ Accepted → Running → Succeeded | Failed | Cancelled and
//!   never leave a terminal phase ([`OperationPhase::is_terminal`]);
//! * `kubectl get operations -A` answers "what is happening now and what happened recently":
//!   Type, Template, Target, Phase, Reason, Age and Completed are on the default columns;
//! * the children of an Operation are named by [`child_name`] from its uid and labelled
//!   `app.vworkspace.io/operation-id=<uid>`, so an operator that restarts between creating a
//!   child and recording it finds the same child instead of creating a second one;
//! * an Operation whose children may live in another namespace (Velero's) carries
//!   [`FINALIZER`] from its first reconcile; the controller deletes what the Operation
//!   created before it removes the finalizer (an owner reference cannot cross namespaces).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::GoDuration;

/// Finalizer the Operation controller sets, so the children it created in other namespaces
/// (Velero's Backup / Restore) are deleted with the Operation.
pub const FINALIZER: &str = "vworkspace.io/operation-children";

/// Field manager of the Operation controller when it changes the target
/// ApplicationInstance (the chart version of an Upgrade): a manager of its own, so the
/// agent's and the controllers' ownership of the other fields is untouched.
pub const FIELD_MANAGER_UPGRADE: &str = "vworkspace-operation";

/// How many hex digits of the uid go into a child name: 48 bits, so two Operations of one
/// namespace collide with negligible probability, and the name stays short enough to carry
/// suffixes (`-hook`, the PVC name of a snapshot) within 63 characters.
pub const CHILD_NAME_HEX: usize = 12;

/// The name of an Operation's (main) child: `op-` and the first [`CHILD_NAME_HEX`] hex
/// digits of its uid, e.g. `op-6b62a1f0c3d4`. Deterministic, a valid DNS-1123 label
/// (≤ 63 characters) for any uid.
pub fn child_name(uid: &str) -> String {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .take(CHILD_NAME_HEX)
        .collect();
    format!("op-{hex}")
}

/// The CEL rule that makes every spec field but `cancel` immutable. Every field of
/// [`OperationSpec`] except `cancel` must appear here (a unit test checks it).
pub const IMMUTABLE_RULE: &str = "self.type == oldSelf.type \
    && self.template == oldSelf.template \
    && self.applicationInstance == oldSelf.applicationInstance \
    && has(self.timeout) == has(oldSelf.timeout) \
    && (!has(self.timeout) || self.timeout == oldSelf.timeout) \
    && has(self.parameters) == has(oldSelf.parameters) \
    && (!has(self.parameters) || self.parameters == oldSelf.parameters)";

/// The CEL rule that lets `cancel` go from false to true but never back.
pub const CANCEL_RULE: &str =
    "!(has(oldSelf.cancel) && oldSelf.cancel) || (has(self.cancel) && self.cancel)";

/// Desired action.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "vworkspace.io",
    version = "v1alpha1",
    kind = "Operation",
    plural = "operations",
    namespaced,
    status = "OperationStatus",
    derive = "PartialEq",
    shortname = "op",
    category = "vworkspace",
    doc = "A day-2 operation (backup, restore, upgrade, migration, command, runbook) on an ApplicationInstance, carried out by an engine such as Velero, Flux, Argo Workflows or a Job.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.template"),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.applicationInstance"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(name = "Completed", type_ = "date", json_path = ".status.completedAt"),
    printcolumn(
        name = "Started",
        type_ = "date",
        json_path = ".status.startedAt",
        priority = 1
    ),
    printcolumn(
        name = "Deadline",
        type_ = "date",
        json_path = ".status.deadline",
        priority = 1
    ),
    printcolumn(
        name = "Engine",
        type_ = "string",
        json_path = ".status.engine",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(IMMUTABLE_RULE).message("spec is immutable once created, except spec.cancel"),
    validation = Rule::new(CANCEL_RULE).message("spec.cancel cannot be withdrawn once set")
)]
pub struct OperationSpec {
    /// What kind of operation; must match the template's type.
    #[serde(rename = "type")]
    pub type_: OperationType,
    /// Catalog template, `<verb>.<engine>`, e.g. `backup.velero`; must be allowed by the
    /// namespace's `app.vworkspace.io/allowed-operation-templates` annotation.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z]+\.[A-Za-z]+$"))]
    pub template: String,
    /// Name of the target ApplicationInstance, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub application_instance: String,
    /// Template parameters (free-form; each template documents its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub parameters: Option<Map<String, Value>>,
    /// Deadline from acceptance; defaults to the catalog's timeout for the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Set to true to cancel; the only field that may change after creation.
    #[serde(default)]
    pub cancel: bool,
}

/// What kind of operation; must match the template's type.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum OperationType {
    /// Back up an application's data.
    Backup,
    /// Restore an application's data.
    Restore,
    /// Upgrade an application's chart.
    Upgrade,
    /// Run a data or schema migration.
    Migration,
    /// Run a one-off command.
    RunCommand,
    /// Run a multi-step runbook.
    Runbook,
}

impl OperationType {
    /// Every type (metrics initialise a series per type).
    pub const ALL: [OperationType; 6] = [
        Self::Backup,
        Self::Restore,
        Self::Upgrade,
        Self::Migration,
        Self::RunCommand,
        Self::Runbook,
    ];

    /// The wire spelling, also the `type` metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "Backup",
            Self::Restore => "Restore",
            Self::Upgrade => "Upgrade",
            Self::Migration => "Migration",
            Self::RunCommand => "RunCommand",
            Self::Runbook => "Runbook",
        }
    }
}

impl std::fmt::Display for OperationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The engine that carries out an Operation (the `engine` metric label).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub enum Engine {
    /// velero.io Backup / Restore.
    Velero,
    /// argoproj.io Workflow.
    Workflow,
    /// batch/v1 Job.
    Job,
    /// Flux HelmRelease upgrade.
    Helm,
    /// A pre-upgrade Job, then the HelmRelease upgrade.
    HelmHookJob,
    /// VolSync ReplicationSource with a manual trigger.
    Volsync,
    /// CSI VolumeSnapshot per PVC.
    Snapshot,
}

impl Engine {
    /// Every engine (metrics initialise a series per engine).
    pub const ALL: [Engine; 7] = [
        Self::Velero,
        Self::Workflow,
        Self::Job,
        Self::Helm,
        Self::HelmHookJob,
        Self::Volsync,
        Self::Snapshot,
    ];

    /// The wire spelling, also the `engine` metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Velero => "velero",
            Self::Workflow => "workflow",
            Self::Job => "job",
            Self::Helm => "helm",
            Self::HelmHookJob => "helmHookJob",
            Self::Volsync => "volsync",
            Self::Snapshot => "snapshot",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an Operation stands: Pending → Blocked ⇄ Accepted → Running → Succeeded | Failed |
/// Cancelled.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OperationPhase {
    /// Created, not evaluated yet.
    #[default]
    Pending,
    /// A precondition is unmet (`status.reason` names it); re-evaluated until it clears.
    Blocked,
    /// Preconditions met; the child is being created.
    Accepted,
    /// The child is running.
    Running,
    /// The engine reported success; outputs are recorded.
    Succeeded,
    /// The engine reported failure, the deadline passed, or the engine lost the work.
    Failed,
    /// Cancelled through `spec.cancel`.
    Cancelled,
}

impl OperationPhase {
    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Blocked => "Blocked",
            Self::Accepted => "Accepted",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }

    /// Succeeded, Failed and Cancelled are final.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for OperationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// Where the Operation stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<OperationPhase>,
    /// The engine carrying it out (from the catalog entry of `spec.template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// The child resource the engine works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_ref: Option<ChildRef>,
    /// Results reported by the engine (e.g. backup name, item count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// When the Operation was accepted (its deadline counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// When it fails if still not finished (or still Blocked): `startedAt` (or, before
    /// acceptance, `metadata.creationTimestamp`) plus the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// Upgrade only: the release the upgrade started from and the version it asked for,
    /// recorded when the target's chart version was changed (what "a new release revision
    /// at that version" is measured against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeRecord>,
    /// The operation catalog the Operation's work was handed out under: `builtin`, or the
    /// resourceVersion of the catalog ConfigMap whose overrides applied. Until the work is
    /// handed out, the catalog of the latest plan (docs/operations.md, "Which catalog
    /// applies").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_revision: Option<String>,
    /// Machine-readable reason of the current phase (see docs/conditions.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted, Running, Succeeded, CancelRequested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The latest announced transition of each Event reason: the inputs of its `event_id`
    /// (docs/conditions.md, "One rule from status change to Event").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub transitions: Vec<crate::transition::TransitionRecord>,
}

/// `status.upgrade`: what an Upgrade changed on its target.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRecord {
    /// The chart version in the target's spec before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_chart_version: Option<String>,
    /// The Helm release revision deployed before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<i64>,
    /// The chart version the Operation set.
    pub to_chart_version: String,
}

/// `status.childRef`: the engine's resource.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChildRef {
    /// e.g. `velero.io/v1`.
    pub api_version: String,
    /// e.g. `Backup`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace (Velero objects live in Velero's namespace); absent if cluster-scoped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_are_short_deterministic_and_from_the_uid() {
        let uid = "6B62A1F0-C3D4-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(child_name(uid), "op-6b62a1f0c3d4");
        assert_eq!(child_name(uid), child_name(uid));
        assert_ne!(
            child_name("6b62a1f0-c3d4-0000-0000-000000000000"),
            child_name("6b62a1f0-c3d5-0000-0000-000000000000")
        );
        assert!(child_name(&"f".repeat(300)).len() <= 63);
    }
}
