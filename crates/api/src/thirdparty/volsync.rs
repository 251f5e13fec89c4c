//! VolSync: `ReplicationSource` (volsync.backube/v1alpha1), used with a manual trigger: the
//! operator sets `spec.trigger.manual` to a fresh value and waits until
//! `status.lastManualSync` equals it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `status.latestMoverStatus.result` values.
pub mod mover_result {
    /// The last sync succeeded.
    pub const SUCCESSFUL: &str = "Successful";
    /// The last sync failed.
    pub const FAILED: &str = "Failed";
}

/// A VolSync replication source.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "volsync.backube",
    version = "v1alpha1",
    kind = "ReplicationSource",
    plural = "replicationsources",
    namespaced,
    status = "ReplicationSourceStatus",
    derive = "PartialEq",
    doc = "VolSync ReplicationSource (lenient test double of the upstream CRD).",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.sourcePVC"),
    printcolumn(name = "Last sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSourceSpec {
    /// The PVC to replicate.
    #[serde(default, rename = "sourcePVC", skip_serializing_if = "Option::is_none")]
    pub source_pvc: Option<String>,
    /// When to sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// Restic mover settings (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub restic: Option<Map<String, Value>>,
    /// Rclone mover settings (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub rclone: Option<Map<String, Value>>,
    /// Rsync-over-TLS mover settings (free-form).
    #[serde(default, rename = "rsyncTLS", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub rsync_tls: Option<Map<String, Value>>,
}

/// `spec.trigger`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// Cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Sync once whenever this value changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<String>,
}

/// Observed state of a ReplicationSource.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSourceStatus {
    /// The `spec.trigger.manual` value of the last completed manual sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_manual_sync: Option<String>,
    /// When the last sync completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// How long it took (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_duration: Option<String>,
    /// When the running sync started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_start_time: Option<Time>,
    /// Synchronizing, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Result of the last mover run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_mover_status: Option<MoverStatus>,
}

/// `status.latestMoverStatus`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MoverStatus {
    /// `Successful` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Tail of the mover's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}
