//! The audit event: the payload posted to the control plane's `POST /api/agent/events`
//! (pull mode) or written into an `AuditBatch` (push mode), and its idempotency key.
//!
//! Invariants:
//! * The JSON field names are exactly the spec's payload (`cluster_id`, `org_id`,
//!   `occurred_at`, `namespace`, `application_instance`, `operation_id`, `kind`, `reason`,
//!   `message`, `operator_version`) plus `event_id`; snake_case on purpose, also inside an
//!   AuditBatch, so the control plane parses one format whatever the mode. Optional fields
//!   are omitted when absent, never `null`.
//! * `occurred_at` is RFC 3339 in UTC with a `Z` suffix and whole seconds (the precision of
//!   Kubernetes timestamps, which is where replayed events get their time from).
//! * `event_id` is a pure function of [`event_id`]'s documented inputs, so the same fact
//!   yields the same id whether it is sent live, retried, or replayed from CR status after an
//!   overflow or a restart, and the receiver's deduplication makes delivery exactly-once.
//!
//! ## `event_id` derivation (version 2)
//!
//! `event_id` = the first 16 bytes of SHA-256 over the byte string below, as 32 lowercase
//! hex characters. Each field is written as its length in bytes (8-byte big-endian unsigned
//! integer) followed by its UTF-8 bytes, so no two different field lists can produce the
//! same byte string:
//!
//! 1. `"vworkspace.io/audit-event-id/v2"` (domain separation and versioning)
//! 2. `cluster_id`
//! 3. `kind` (the Event reason, e.g. `OperationSucceeded`)
//! 4. the object's `metadata.uid` (for an Operation this is the spec's `operation_id`)
//! 5. the generation the transition belongs to, in decimal
//! 6. the condition type it is about (empty for a child's change, e.g. `HelmReleaseUpgraded`)
//! 7. the condition reason
//! 8. the occurrence: 1 for the first transition of this `kind` in this generation, 2 for
//!    the second (e.g. a second entry into `Blocked`), and so on, in decimal
//!
//! Every input is recorded in the object's `status.transitions`
//! ([`TransitionRecord`](crate::transition::TransitionRecord)), which is why the live
//! publisher, a retry after a crash and a replay from status alone derive the same id.
//! There is exactly one rule that produces transitions (`vworkspace_reconcile::transitions`).
//!
//! Everything else (org, message, operator version, occurred_at) is deliberately not
//! part of the key: a retry after an operator upgrade or with a reworded message is the same
//! event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::transition::TransitionRecord;

/// Domain tag of version 1 of the `event_id` derivation.
pub const EVENT_ID_DOMAIN: &str = "vworkspace.io/audit-event-id/v2";

/// Length of an `event_id` in hex characters.
pub const EVENT_ID_LEN: usize = 32;

/// The inputs of an `event_id` besides the cluster and the kind; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionKey<'a> {
    /// The object's `metadata.uid`.
    pub uid: &'a str,
    /// The generation the transition belongs to.
    pub generation: i64,
    /// The condition type (empty for a child's change).
    pub condition: &'a str,
    /// The condition reason.
    pub reason: &'a str,
    /// 1-based count of transitions of this kind in this generation.
    pub occurrence: i64,
}

/// The idempotency key of an audit event; see the module docs for the exact derivation.
pub fn event_id(cluster_id: &str, kind: &str, key: &TransitionKey<'_>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(EVENT_ID_DOMAIN.as_bytes());
    field(cluster_id.as_bytes());
    field(kind.as_bytes());
    field(key.uid.as_bytes());
    field(key.generation.to_string().as_bytes());
    field(key.condition.as_bytes());
    field(key.reason.as_bytes());
    field(key.occurrence.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut out = String::with_capacity(EVENT_ID_LEN);
    for byte in digest.iter().take(EVENT_ID_LEN / 2) {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Who emits: the fields every audit event of this operator shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSource {
    /// `Cluster.metadata.name`.
    pub cluster_id: String,
    /// `Cluster.spec.orgId`.
    pub org_id: String,
    /// The operator binary's version, e.g. `v0.4.2`.
    pub operator_version: String,
}

/// One audit event, exactly the spec's payload plus `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEvent {
    /// Idempotency key, derived from cluster, kind and subject (docs/api.md); the receiver
    /// deduplicates on it.
    #[schemars(length(equal = 32), regex(pattern = r"^[0-9a-f]{32}$"))]
    pub event_id: String,
    /// The cluster's identity (`Cluster.metadata.name`).
    #[schemars(length(min = 1))]
    pub cluster_id: String,
    /// The owning organization.
    #[schemars(length(min = 1))]
    pub org_id: String,
    /// When it happened: RFC 3339, UTC, whole seconds, `Z` suffix.
    pub occurred_at: Time,
    /// Namespace of the object the event is about; absent for cluster-wide events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The ApplicationInstance concerned (also for Operations on one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_instance: Option<String>,
    /// `Operation.metadata.uid`, for Operation events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The Event reason, e.g. `OperationSucceeded` (docs/conditions.md).
    #[schemars(length(min = 1))]
    pub kind: String,
    /// The condition reason, e.g. `VeleroBackupCompleted`.
    pub reason: String,
    /// Human-readable; never contains secrets (chart values, tokens).
    pub message: String,
    /// Version of the operator that emitted the event.
    pub operator_version: String,
}

impl AuditEvent {
    /// The audit event announcing `record`, a transition of the object with `uid`. The live
    /// publisher and the replay from status both build audit events here, from the record
    /// alone, so they cannot differ. `occurred_at` is the record's time.
    pub fn for_transition(source: &AuditSource, uid: &str, record: &TransitionRecord) -> Self {
        Self {
            event_id: record.event_id(&source.cluster_id, uid),
            cluster_id: source.cluster_id.clone(),
            org_id: source.org_id.clone(),
            occurred_at: record.at.clone(),
            namespace: None,
            application_instance: None,
            operation_id: None,
            kind: record.kind.clone(),
            reason: record.reason.clone(),
            message: record.message.clone(),
            operator_version: source.operator_version.clone(),
        }
    }

    /// Sets `namespace`.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets `application_instance`.
    pub fn with_application_instance(mut self, name: impl Into<String>) -> Self {
        self.application_instance = Some(name.into());
        self
    }

    /// Sets `operation_id` (the Operation's uid).
    pub fn with_operation_id(mut self, id: impl Into<String>) -> Self {
        self.operation_id = Some(id.into());
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::conditions::EventType;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64, nanos: i32) -> Time {
        Time(Timestamp::new(second, nanos).unwrap())
    }

    fn source() -> AuditSource {
        AuditSource {
            cluster_id: "cluster-prod-1".into(),
            org_id: "myteam".into(),
            operator_version: "v0.4.2".into(),
        }
    }

    fn key(uid: &str) -> TransitionKey<'_> {
        TransitionKey {
            uid,
            generation: 1,
            condition: "Succeeded",
            reason: "VeleroBackupCompleted",
            occurrence: 1,
        }
    }

    #[test]
    fn same_inputs_same_id() {
        let a = event_id("c", "OperationSucceeded", &key("u"));
        assert_eq!(a, event_id("c", "OperationSucceeded", &key("u")));
        assert_eq!(a.len(), EVENT_ID_LEN);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn any_differing_input_gives_a_different_id() {
        let base = key("op");
        let variants: Vec<(&str, &str, TransitionKey<'_>)> = vec![
            ("c", "k", base),
            ("c2", "k", base),
            ("c", "k2", base),
            ("c", "k", TransitionKey { uid: "op2", ..base }),
            (
                "c",
                "k",
                TransitionKey {
                    generation: 2,
                    ..base
                },
            ),
            (
                "c",
                "k",
                TransitionKey {
                    condition: "Accepted",
                    ..base
                },
            ),
            (
                "c",
                "k",
                TransitionKey {
                    reason: "R",
                    ..base
                },
            ),
            (
                "c",
                "k",
                TransitionKey {
                    occurrence: 2,
                    ..base
                },
            ),
            // Length prefixes: moving bytes between fields must change the id.
            ("ck", "", base),
            ("", "ck", base),
            (
                "c",
                "k",
                TransitionKey {
                    condition: "",
                    reason: "SucceededVeleroBackupCompleted",
                    ..base
                },
            ),
        ];
        let mut seen = std::collections::BTreeMap::new();
        for (cluster, kind, key) in &variants {
            let id = event_id(cluster, kind, key);
            if let Some(previous) = seen.insert(id.clone(), (cluster, kind, key)) {
                panic!("{previous:?} and {:?} share id {id}", (cluster, kind, key));
            }
        }
    }

    #[test]
    fn id_is_pinned() {
        // Pins the documented derivation: changing it orphans every key the control plane
        // has stored, so it needs a new domain tag (v3), not an edit.
        let id = event_id("cluster-prod-1", "OperationSucceeded", &key("6b62"));
        assert_eq!(id, PINNED_ID);
    }
    // Computed independently: python3 hashlib.sha256 over the documented encoding
    // (docs/api.md has the script).
    const PINNED_ID: &str = "5ffda867ac641abdcfb5b0d7b3d1445a";

    fn record() -> TransitionRecord {
        TransitionRecord {
            kind: "OperationSucceeded".into(),
            condition: "Succeeded".into(),
            reason: "VeleroBackupCompleted".into(),
            generation: 1,
            occurrence: 1,
            event_type: EventType::Normal,
            message: "velero.io/Backup completed; 412 items, 18.4 GiB".into(),
            at: at(1_779_962_833, 0),
        }
    }

    #[test]
    fn json_is_exactly_the_spec_payload() {
        let event = AuditEvent::for_transition(&source(), "6b62", &record())
            .with_namespace("org-myteam")
            .with_application_instance("nextcloud-myteam")
            .with_operation_id("6b62");
        assert_eq!(event.event_id, PINNED_ID);
        let json = serde_json::to_value(&event).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut want = vec![
            "application_instance",
            "cluster_id",
            "event_id",
            "kind",
            "message",
            "namespace",
            "occurred_at",
            "operation_id",
            "operator_version",
            "org_id",
            "reason",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(json["occurred_at"], "2026-05-28T10:07:13Z");
        assert_eq!(json["operation_id"], "6b62");
        assert_eq!(json["cluster_id"], "cluster-prod-1");
        assert_eq!(json["org_id"], "myteam");
        assert_eq!(json["operator_version"], "v0.4.2");
        assert_eq!(json["kind"], "OperationSucceeded");
        assert_eq!(json["reason"], "VeleroBackupCompleted");
        let back: AuditEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back.event_id, event.event_id);
    }

    #[test]
    fn optional_fields_are_omitted_not_null() {
        let event = AuditEvent::for_transition(&source(), "cluster-uid", &record());
        let json = serde_json::to_value(&event).unwrap();
        let obj = json.as_object().unwrap();
        for absent in ["namespace", "application_instance", "operation_id"] {
            assert!(!obj.contains_key(absent), "{absent} must be omitted");
        }
        // The spec's example payload (without event_id) plus an id deserializes.
        let spec_example = serde_json::json!({
            "event_id": "0123456789abcdef0123456789abcdef",
            "cluster_id": "cluster-prod-1",
            "org_id": "myteam",
            "occurred_at": "2026-05-28T10:07:13Z",
            "namespace": "org-myteam",
            "application_instance": "nextcloud-myteam",
            "operation_id": "6b62...",
            "kind": "OperationSucceeded",
            "reason": "VeleroBackupCompleted",
            "message": "velero.io/Backup completed; 412 items, 18.4 GiB",
            "operator_version": "v0.4.2"
        });
        let parsed: AuditEvent = serde_json::from_value(spec_example.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), spec_example);
    }
}
