//! `AuditBatch` (`auditbatches.vworkspace.io`): the push-mode audit stream. The operator
//! writes batches into `vworkspace-system`; the control plane reads and deletes them.
//!
//! Invariants:
//! * events inside a batch are [`AuditEvent`]s in exactly the payload format of
//!   `POST /api/agent/events` (snake_case fields), so the control plane parses one format
//!   whatever the mode;
//! * `sequence` grows by one per batch written by a given operator (it restarts from the
//!   highest sequence found in the namespace), so the control plane can apply batches in
//!   order; deduplication is by each event's `event_id`, not by batch;
//! * the operator never modifies a batch after creating it; the control plane deletes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;

/// One batch of audit events.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "vworkspace.io",
    version = "v1alpha1",
    kind = "AuditBatch",
    plural = "auditbatches",
    namespaced,
    status = "AuditBatchStatus",
    derive = "PartialEq",
    shortname = "vwab",
    category = "vworkspace",
    doc = "A batch of audit events written by the operator in push mode, read and deleted by the vWorkspace control plane.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterId"),
    printcolumn(name = "Sequence", type_ = "integer", json_path = ".spec.sequence"),
    printcolumn(name = "Received", type_ = "date", json_path = ".status.receivedAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AuditBatchSpec {
    /// The cluster that emitted the batch (`Cluster.metadata.name`).
    #[schemars(length(min = 1, max = 253))]
    pub cluster_id: String,
    /// Position of this batch in the emitter's stream.
    #[schemars(range(min = 0))]
    pub sequence: i64,
    /// The events, oldest first.
    #[schemars(length(min = 1, max = 10_000))]
    pub events: Vec<AuditEvent>,
}

/// Written by the control plane when it has ingested the batch (before deleting it).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditBatchStatus {
    /// When the control plane ingested the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<Time>,
    /// Events stored as new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<i64>,
    /// Events skipped as already known (same event_id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<i64>,
    /// Why ingestion failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
