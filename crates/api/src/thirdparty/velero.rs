//! Velero: `Backup` and `Restore` (velero.io/v1). Both live in Velero's own namespace
//! (usually `velero`); the operator targets the application's namespace through
//! `includedNamespaces`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `status.phase` values of Backup and Restore.
pub mod phase {
    /// Not processed yet.
    pub const NEW: &str = "New";
    /// The spec was rejected (`status.validationErrors`).
    pub const FAILED_VALIDATION: &str = "FailedValidation";
    /// Running.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Waiting for plugin (e.g. CSI data mover) operations.
    pub const WAITING_FOR_PLUGIN_OPERATIONS: &str = "WaitingForPluginOperations";
    /// Waiting for plugin operations; some already failed.
    pub const WAITING_FOR_PLUGIN_OPERATIONS_PARTIALLY_FAILED: &str =
        "WaitingForPluginOperationsPartiallyFailed";
    /// Finalizing.
    pub const FINALIZING: &str = "Finalizing";
    /// Finalizing; some items failed.
    pub const FINALIZING_PARTIALLY_FAILED: &str = "FinalizingPartiallyFailed";
    /// Done without errors.
    pub const COMPLETED: &str = "Completed";
    /// Done with errors on some items.
    pub const PARTIALLY_FAILED: &str = "PartiallyFailed";
    /// Failed (also what Velero sets on in-flight work after its own restart).
    pub const FAILED: &str = "Failed";
    /// Backup only: being deleted.
    pub const DELETING: &str = "Deleting";
}

/// A Velero backup.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "velero.io",
    version = "v1",
    kind = "Backup",
    plural = "backups",
    namespaced,
    status = "BackupStatus",
    derive = "PartialEq",
    doc = "Velero Backup (lenient test double of the upstream CRD).",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Namespaces to back up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    /// Backup storage location name (Velero's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_location: Option<String>,
    /// Retention, e.g. `720h0m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Take volume snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_volumes: Option<bool>,
    /// Back up volumes with the file-system uploader by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_volumes_to_fs_backup: Option<bool>,
}

/// Observed state of a Backup.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// New, InProgress, ..., Completed, PartiallyFailed, Failed, FailedValidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why the spec was rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<String>,
    /// Why the backup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// When it will be garbage-collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// Errors encountered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<i64>,
    /// Warnings encountered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<i64>,
    /// Item counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BackupProgress>,
}

/// `status.progress` of a Backup.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupProgress {
    /// Items to back up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_items: Option<i64>,
    /// Items backed up so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_backed_up: Option<i64>,
}

/// A Velero restore.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "velero.io",
    version = "v1",
    kind = "Restore",
    plural = "restores",
    namespaced,
    status = "RestoreStatus",
    derive = "PartialEq",
    doc = "Velero Restore (lenient test double of the upstream CRD).",
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.backupName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The Backup to restore from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// Namespaces to restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    /// Restore persistent volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "restorePVs")]
    pub restore_pvs: Option<bool>,
    /// `none` or `update`: what to do with resources that already exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_resource_policy: Option<String>,
}

/// Observed state of a Restore.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// New, InProgress, ..., Completed, PartiallyFailed, Failed, FailedValidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why the spec was rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<String>,
    /// Why the restore failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Errors encountered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<i64>,
    /// Warnings encountered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<i64>,
    /// Item counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RestoreProgress>,
}

/// `status.progress` of a Restore.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    /// Items to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_items: Option<i64>,
    /// Items restored so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_restored: Option<i64>,
}

/// A Velero `ServerStatusRequest` (velero.io/v1): created in Velero's namespace, answered
/// by the Velero server with its version. The Cluster controller reads
/// `Cluster.status.veleroVersion` this way; Velero deletes processed requests after a
/// minute.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "velero.io",
    version = "v1",
    kind = "ServerStatusRequest",
    plural = "serverstatusrequests",
    namespaced,
    status = "ServerStatusRequestStatus",
    derive = "PartialEq",
    doc = "Velero ServerStatusRequest (lenient test double of the upstream CRD)."
)]
pub struct ServerStatusRequestSpec {}

/// What the Velero server answered.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatusRequestStatus {
    /// `New` or `Processed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The server's version, e.g. `v1.14.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// When the server answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_timestamp: Option<Time>,
}

/// Label Velero puts on the objects it creates for a Backup (PodVolumeBackups,
/// DataUploads, ...): the Backup's uid.
pub const BACKUP_UID_LABEL: &str = "velero.io/backup-uid";
/// Label Velero puts on those objects: the Backup's name (shortened when too long).
pub const BACKUP_NAME_LABEL: &str = "velero.io/backup-name";

/// A Velero `PodVolumeBackup` (velero.io/v1): one pod volume copied by Velero's node agent
/// (file-system backup) for a Backup. Created by Velero in its namespace, labelled
/// [`BACKUP_NAME_LABEL`] and [`BACKUP_UID_LABEL`], owned by the Backup. Its
/// `status.progress` holds the bytes moved; the Backup's own status counts only items.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "velero.io",
    version = "v1",
    kind = "PodVolumeBackup",
    plural = "podvolumebackups",
    namespaced,
    status = "PodVolumeBackupStatus",
    derive = "PartialEq",
    doc = "Velero PodVolumeBackup (lenient test double of the upstream CRD)."
)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupSpec {
    /// The volume's name within its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

/// Observed state of a PodVolumeBackup.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupStatus {
    /// New, InProgress, Completed, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Bytes of the volume and bytes copied so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DataMoveProgress>,
}

/// `status.progress` of a PodVolumeBackup or DataUpload (Velero's
/// `DataMoveOperationProgress`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DataMoveProgress {
    /// Size of the data to move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Bytes moved so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
}
