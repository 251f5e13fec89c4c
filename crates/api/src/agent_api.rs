//! The agent API's wire types: what the operator's agent (crates/agent) and the
//! reference control plane (crates/controlplane) exchange over HTTP (DESIGN §3).
//!
//! Both sides serialize these types and nothing else, so they cannot drift apart;
//! `docs/agent-api.openapi.yaml` documents the same shapes and a test of the control
//! plane checks its responses against that document.
//!
//! Invariants:
//! * every field is snake_case, like the audit payload that travels inside
//!   [`EventBatch`];
//! * a job's instruction travels as text ([`Job::document`]): the control plane stores
//!   and forwards what it was given without interpreting it, and the agent parses it
//!   into a [`JobDocument`]. That keeps a malformed job (bad JSON, an unknown type, a
//!   missing field) deliverable, so the agent can reject it with a reason instead of the
//!   transport failing;
//! * job ids are chosen by the control plane and unique per cluster; the agent is
//!   idempotent by job id.
//!
//! Endpoints (all under the control plane's base URL, `Authorization: Bearer <token>`,
//! the token identifying one cluster):
//! * `POST /api/agent/events` — body [`EventBatch`], answer [`EventsAccepted`];
//! * `GET /api/agent/jobs?wait_seconds=N&limit=M` — long-poll: answers [`JobList`] as
//!   soon as at least one job is waiting, or an empty list after `wait_seconds`;
//!   every job not yet acknowledged is delivered again (oldest first), so a job fetched
//!   by an agent that crashed before answering is not lost;
//! * `POST /api/agent/jobs/{id}/status` — body [`JobStatusReport`], answer [`Ack`];
//! * `POST /api/agent/heartbeat` — body [`Heartbeat`], answer [`HeartbeatAck`].
//!
//! Errors answer [`ApiError`] with the HTTP status: 400 bad request, 401 unknown token,
//! 404 unknown job, 409 a different status for a job already acknowledged, 413 body too
//! large, 429 rate limited (with `Retry-After` in seconds), 5xx server trouble.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::audit::AuditEvent;

/// Path of the events endpoint.
pub const EVENTS_PATH: &str = "/api/agent/events";
/// Path of the jobs long-poll endpoint.
pub const JOBS_PATH: &str = "/api/agent/jobs";
/// Path of the heartbeat endpoint.
pub const HEARTBEAT_PATH: &str = "/api/agent/heartbeat";

/// Path of the status endpoint of job `id`.
pub fn job_status_path(id: &str) -> String {
    format!("{JOBS_PATH}/{id}/status")
}

/// `POST /api/agent/events`: audit events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// The events; the receiver stores each `event_id` once.
    pub events: Vec<AuditEvent>,
}

/// Answer to an [`EventBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsAccepted {
    /// Events whose `event_id` the receiver had not stored before.
    pub accepted: u64,
    /// Events whose `event_id` it already had (dropped as duplicates).
    pub duplicates: u64,
}

/// Answer of `GET /api/agent/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// Jobs not yet acknowledged, oldest first; empty when the long-poll timed out.
    pub jobs: Vec<Job>,
}

/// One job as the control plane delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique per cluster, chosen by the control plane; becomes the label
    /// `app.vworkspace.io/job-id` on what the job creates.
    pub id: String,
    /// When the control plane enqueued it (RFC 3339, UTC). The agent's
    /// `pull_job_lag_seconds` is measured from when it fetched the job, not from this.
    pub created_at: String,
    /// The instruction, as JSON text: a [`JobDocument`] when well-formed.
    pub document: String,
}

/// The instruction inside a job, parsed by the agent from [`Job::document`].
///
/// `cluster_id` names the cluster the job is meant for; a job for another cluster is
/// rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum JobDocument {
    /// Create or update an ApplicationInstance (server-side apply of `spec`).
    ApplyApplicationInstance {
        cluster_id: String,
        namespace: String,
        name: String,
        /// An `ApplicationInstance.spec`, camelCase as in the CRD.
        spec: Map<String, Value>,
    },
    /// Delete an ApplicationInstance.
    DeleteApplicationInstance {
        cluster_id: String,
        namespace: String,
        name: String,
    },
    /// Create an Operation (its spec is immutable; re-applying the same job is a no-op).
    CreateOperation {
        cluster_id: String,
        namespace: String,
        name: String,
        /// An `Operation.spec`, camelCase as in the CRD.
        spec: Map<String, Value>,
    },
    /// Set `spec.cancel: true` on an Operation.
    CancelOperation {
        cluster_id: String,
        namespace: String,
        name: String,
    },
    /// Label and annotate a namespace as managed (creating it when missing).
    ManageNamespace {
        cluster_id: String,
        namespace: String,
        org_id: String,
        #[serde(default)]
        allowed_operation_templates: Vec<String>,
    },
    /// Remove the managed-by label and the annotations the agent set.
    UnmanageNamespace {
        cluster_id: String,
        namespace: String,
    },
}

impl JobDocument {
    /// The wire name of the job type (the `type` field).
    pub fn type_name(&self) -> &'static str {
        match self {
            JobDocument::ApplyApplicationInstance { .. } => "ApplyApplicationInstance",
            JobDocument::DeleteApplicationInstance { .. } => "DeleteApplicationInstance",
            JobDocument::CreateOperation { .. } => "CreateOperation",
            JobDocument::CancelOperation { .. } => "CancelOperation",
            JobDocument::ManageNamespace { .. } => "ManageNamespace",
            JobDocument::UnmanageNamespace { .. } => "UnmanageNamespace",
        }
    }

    /// The cluster the job is meant for.
    pub fn cluster_id(&self) -> &str {
        match self {
            JobDocument::ApplyApplicationInstance { cluster_id, .. }
            | JobDocument::DeleteApplicationInstance { cluster_id, .. }
            | JobDocument::CreateOperation { cluster_id, .. }
            | JobDocument::CancelOperation { cluster_id, .. }
            | JobDocument::ManageNamespace { cluster_id, .. }
            | JobDocument::UnmanageNamespace { cluster_id, .. } => cluster_id,
        }
    }

    /// The namespace the job acts in.
    pub fn namespace(&self) -> &str {
        match self {
            JobDocument::ApplyApplicationInstance { namespace, .. }
            | JobDocument::DeleteApplicationInstance { namespace, .. }
            | JobDocument::CreateOperation { namespace, .. }
            | JobDocument::CancelOperation { namespace, .. }
            | JobDocument::ManageNamespace { namespace, .. }
            | JobDocument::UnmanageNamespace { namespace, .. } => namespace,
        }
    }
}

/// Every job type, in the order of DESIGN §3.
pub const JOB_TYPES: [&str; 6] = [
    "ApplyApplicationInstance",
    "DeleteApplicationInstance",
    "CreateOperation",
    "CancelOperation",
    "ManageNamespace",
    "UnmanageNamespace",
];

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Applied to the cluster (or found already applied).
    Applied,
    /// Refused; the message says why.
    Rejected,
}

/// `POST /api/agent/jobs/{id}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatusReport {
    /// Applied or rejected.
    pub state: JobState,
    /// Why it was rejected, or a short summary of what was applied.
    #[serde(default)]
    pub message: String,
}

/// An empty acknowledgement (`{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {}

/// `POST /api/agent/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `Cluster.metadata.name`.
    pub cluster_id: String,
    /// The operator's version.
    pub operator_version: String,
    /// Events waiting in the agent's buffer.
    pub pending_events: u64,
}

/// Answer to a [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The control plane's clock (RFC 3339, UTC).
    pub server_time: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable machine-readable code: `bad_request`, `unauthorized`, `not_found`,
    /// `conflict`, `payload_too_large`, `rate_limited`, `unavailable`, `internal`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Further detail by field, when the request failed validation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn job_documents_parse_from_their_wire_form() {
        let doc: JobDocument = serde_json::from_str(
            r#"{"type":"ManageNamespace","cluster_id":"c1","namespace":"org-a","org_id":"a",
                "allowed_operation_templates":["backup.velero"]}"#,
        )
        .unwrap();
        assert_eq!(doc.type_name(), "ManageNamespace");
        assert_eq!(doc.cluster_id(), "c1");
        assert_eq!(doc.namespace(), "org-a");
        let back: JobDocument =
            serde_json::from_value(serde_json::to_value(&doc).unwrap()).unwrap();
        assert_eq!(back, doc);
        for name in JOB_TYPES {
            assert!(
                serde_json::from_str::<JobDocument>(&format!(r#"{{"type":"{name}"}}"#))
                    .unwrap_err()
                    .to_string()
                    .contains("missing field"),
                "{name} is a known type"
            );
        }
    }

    #[test]
    fn unknown_types_and_fields_are_refused() {
        let unknown = serde_json::from_str::<JobDocument>(r#"{"type":"Reboot"}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown variant"), "{unknown}");
        let extra = serde_json::from_str::<JobDocument>(
            r#"{"type":"UnmanageNamespace","cluster_id":"c","namespace":"n","force":true}"#,
        )
        .unwrap_err();
        assert!(extra.to_string().contains("unknown field"), "{extra}");
    }

    #[test]
    fn job_state_is_snake_case() {
        let report = JobStatusReport {
            state: JobState::Rejected,
            message: "namespace not managed".into(),
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"state":"rejected","message":"namespace not managed"}"#
        );
    }
}
