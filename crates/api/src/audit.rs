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
//! ## `event_id` derivation (version 1)
//!
//! `event_id` = the first 16 bytes of SHA-256 over the byte string below, as 32 lowercase
//! hex characters. Each field is written as its length in bytes (8-byte big-endian unsigned
//! integer) followed by its UTF-8 bytes, so no two different field lists can produce the
//! same byte string:
//!
//! 1. `"vworkspace.io/audit-event-id/v1"` (domain separation and versioning)
//! 2. `cluster_id`
//! 3. `kind` (the Event reason, e.g. `OperationSucceeded`)
//! 4. the subject tag and its values ([`EventSubject`]):
//!    * `"operation"`, `operation_id` (the Operation's `metadata.uid`): the spec's key,
//!      one event per cluster + kind + operation;
//!    * `"generation"`, object uid, generation in decimal;
//!    * `"revision"`, object uid, revision in decimal;
//!    * `"transition"`, object uid, the time as `YYYY-MM-DDTHH:MM:SSZ`.
//!
//! Which subject to use: condition transitions go through [`AuditEvent::for_condition`]
//! (Operation uid for Operations, else object uid + `lastTransitionTime`);
//! `HelmReleaseUpgraded` uses the ApplicationInstance uid + the new Helm revision;
//! `CredentialRotated` uses the Cluster uid + the time the rotated token first worked.
//!
//! Everything else (org, message, reason, operator version, occurred_at) is deliberately not
//! part of the key: a retry after an operator upgrade or with a reworded message is the same
//! event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::conditions::{ResourceKind, event_for};

/// Domain tag of version 1 of the `event_id` derivation.
pub const EVENT_ID_DOMAIN: &str = "vworkspace.io/audit-event-id/v1";

/// Length of an `event_id` in hex characters.
pub const EVENT_ID_LEN: usize = 32;

/// What an audit event is about; selects the inputs of its `event_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSubject<'a> {
    /// An Operation's event; `operation_id` is the Operation's `metadata.uid`.
    Operation {
        /// The Operation's uid.
        operation_id: &'a str,
    },
    /// Once per object generation (e.g. `ReconcileStarted`).
    Generation {
        /// The object's `metadata.uid`.
        uid: &'a str,
        /// The generation the event is about.
        generation: i64,
    },
    /// Once per revision (e.g. `HelmReleaseUpgraded` with the HelmRelease revision).
    Revision {
        /// The object's `metadata.uid`.
        uid: &'a str,
        /// The revision the event is about.
        revision: i64,
    },
    /// Once per condition transition within a generation: a generation's outcome
    /// (`ReconcileSucceeded`, `ReconcileFailed`). The generation keeps two outcomes of
    /// different generations apart even when both fall in the same second.
    GenerationTransition {
        /// The object's `metadata.uid`.
        uid: &'a str,
        /// The generation the outcome belongs to.
        generation: i64,
        /// The condition's `lastTransitionTime`; only whole seconds count.
        at: &'a Time,
    },
    /// Once per point in time: a condition transition (its `lastTransitionTime`) or an
    /// occurrence that has no generation (e.g. `CredentialRotated`).
    Transition {
        /// The object's `metadata.uid`.
        uid: &'a str,
        /// The transition time; only whole seconds count.
        at: &'a Time,
    },
}

/// The idempotency key of an audit event; see the module docs for the exact derivation.
pub fn event_id(cluster_id: &str, kind: &str, subject: &EventSubject<'_>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(EVENT_ID_DOMAIN.as_bytes());
    field(cluster_id.as_bytes());
    field(kind.as_bytes());
    match subject {
        EventSubject::Operation { operation_id } => {
            field(b"operation");
            field(operation_id.as_bytes());
        }
        EventSubject::Generation { uid, generation } => {
            field(b"generation");
            field(uid.as_bytes());
            field(generation.to_string().as_bytes());
        }
        EventSubject::Revision { uid, revision } => {
            field(b"revision");
            field(uid.as_bytes());
            field(revision.to_string().as_bytes());
        }
        EventSubject::GenerationTransition {
            uid,
            generation,
            at,
        } => {
            field(b"generation-transition");
            field(uid.as_bytes());
            field(generation.to_string().as_bytes());
            field(rfc3339_seconds(at).as_bytes());
        }
        EventSubject::Transition { uid, at } => {
            field(b"transition");
            field(uid.as_bytes());
            field(rfc3339_seconds(at).as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(EVENT_ID_LEN);
    for byte in digest.iter().take(EVENT_ID_LEN / 2) {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `YYYY-MM-DDTHH:MM:SSZ`, the same text `Time` serializes to.
fn rfc3339_seconds(t: &Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

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
    /// An event about `subject`; `event_id` is derived, and `operation_id` is filled for
    /// Operation subjects. Add the namespace and application with the `with_*` methods.
    pub fn new(
        source: &AuditSource,
        kind: &str,
        reason: &str,
        message: impl Into<String>,
        occurred_at: Time,
        subject: &EventSubject<'_>,
    ) -> Self {
        let operation_id = match subject {
            EventSubject::Operation { operation_id } => Some((*operation_id).to_owned()),
            _ => None,
        };
        Self {
            event_id: event_id(&source.cluster_id, kind, subject),
            cluster_id: source.cluster_id.clone(),
            org_id: source.org_id.clone(),
            occurred_at,
            namespace: None,
            application_instance: None,
            operation_id,
            kind: kind.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
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
}

/// The object whose condition transitioned, as an audit event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditObject<'a> {
    /// Which custom resource.
    pub kind: ResourceKind,
    /// Its `metadata.uid` (for an Operation, also the `operation_id`).
    pub uid: &'a str,
    /// Its namespace (`vworkspace-system` for the Cluster).
    pub namespace: Option<&'a str>,
    /// The ApplicationInstance concerned: the object itself, or an Operation's target.
    pub application_instance: Option<&'a str>,
}

impl AuditEvent {
    /// The audit event that announces a condition transition, or `None` when the transition
    /// is silent ([`event_for`]). This is the rule the event publisher (live) and the replay
    /// after an overflow or restart (from CR status) both use, so both produce the same
    /// `event_id`:
    ///
    /// * `kind` = the Event reason, `reason` = the condition's reason, `message` = its message;
    /// * subject: an Operation's uid for Operation conditions (the spec's key), otherwise the
    ///   object uid + the condition's `lastTransitionTime`;
    /// * `occurred_at` as given: now when live, the condition's `lastTransitionTime` on replay.
    ///
    /// `conditions` is the object's full list after this status update (see [`event_for`]).
    pub fn for_condition(
        source: &AuditSource,
        object: &AuditObject<'_>,
        condition: &Condition,
        conditions: &[Condition],
        occurred_at: Time,
    ) -> Option<Self> {
        let spec = event_for(object.kind, condition, conditions)?;
        let subject = match object.kind {
            ResourceKind::Operation => EventSubject::Operation {
                operation_id: object.uid,
            },
            ResourceKind::Cluster | ResourceKind::ApplicationInstance => EventSubject::Transition {
                uid: object.uid,
                at: &condition.last_transition_time,
            },
        };
        let mut event = Self::new(
            source,
            spec.reason,
            &condition.reason,
            condition.message.clone(),
            occurred_at,
            &subject,
        );
        event.namespace = object.namespace.map(str::to_owned);
        event.application_instance = object.application_instance.map(str::to_owned);
        Some(event)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
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

    #[test]
    fn same_inputs_same_id() {
        let t1 = at(1_780_000_000, 0);
        let t1_nanos = at(1_780_000_000, 999_000_000);
        let subjects = [
            EventSubject::Operation {
                operation_id: "6b62",
            },
            EventSubject::Generation {
                uid: "u",
                generation: 4,
            },
            EventSubject::Revision {
                uid: "u",
                revision: 4,
            },
            EventSubject::Transition { uid: "u", at: &t1 },
        ];
        for s in &subjects {
            let a = event_id("c", "OperationSucceeded", s);
            assert_eq!(a, event_id("c", "OperationSucceeded", s), "{s:?}");
            assert_eq!(a.len(), EVENT_ID_LEN);
            assert!(
                a.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        // Sub-second precision is not part of the key (the API server stores seconds).
        assert_eq!(
            event_id("c", "k", &EventSubject::Transition { uid: "u", at: &t1 }),
            event_id(
                "c",
                "k",
                &EventSubject::Transition {
                    uid: "u",
                    at: &t1_nanos
                }
            ),
        );
    }

    #[test]
    fn any_differing_input_gives_a_different_id() {
        let t1 = at(1_780_000_000, 0);
        let t2 = at(1_780_000_001, 0);
        let base = ("c", "k", EventSubject::Operation { operation_id: "op" });
        let variants: Vec<(&str, &str, EventSubject<'_>)> = vec![
            base,
            ("c2", "k", EventSubject::Operation { operation_id: "op" }),
            ("c", "k2", EventSubject::Operation { operation_id: "op" }),
            (
                "c",
                "k",
                EventSubject::Operation {
                    operation_id: "op2",
                },
            ),
            (
                "c",
                "k",
                EventSubject::Generation {
                    uid: "op",
                    generation: 1,
                },
            ),
            (
                "c",
                "k",
                EventSubject::Generation {
                    uid: "op",
                    generation: 2,
                },
            ),
            (
                "c",
                "k",
                EventSubject::Generation {
                    uid: "op2",
                    generation: 1,
                },
            ),
            (
                "c",
                "k",
                EventSubject::Revision {
                    uid: "op",
                    revision: 1,
                },
            ),
            (
                "c",
                "k",
                EventSubject::Revision {
                    uid: "op",
                    revision: 2,
                },
            ),
            ("c", "k", EventSubject::Transition { uid: "op", at: &t1 }),
            ("c", "k", EventSubject::Transition { uid: "op", at: &t2 }),
            (
                "c",
                "k",
                EventSubject::Transition {
                    uid: "op2",
                    at: &t1,
                },
            ),
            // Length prefixes: moving bytes between fields must change the id.
            ("ck", "", EventSubject::Operation { operation_id: "op" }),
            ("", "ck", EventSubject::Operation { operation_id: "op" }),
        ];
        let mut seen = std::collections::BTreeMap::new();
        for (cluster, kind, subject) in &variants {
            let id = event_id(cluster, kind, subject);
            if let Some(previous) = seen.insert(id.clone(), (cluster, kind, subject)) {
                panic!(
                    "{previous:?} and {:?} share id {id}",
                    (cluster, kind, subject)
                );
            }
        }
    }

    #[test]
    fn id_is_pinned() {
        // Pins the documented derivation: changing it orphans every key the control plane
        // has stored, so it needs a new domain tag (v2), not an edit.
        let id = event_id(
            "cluster-prod-1",
            "OperationSucceeded",
            &EventSubject::Operation {
                operation_id: "6b62",
            },
        );
        assert_eq!(id, PINNED_ID);
    }
    // Computed independently: python3 hashlib.sha256 over the documented encoding.
    const PINNED_ID: &str = "f032507d891e477b751f4e3d23a5068c";

    #[test]
    fn json_is_exactly_the_spec_payload() {
        let event = AuditEvent::new(
            &source(),
            "OperationSucceeded",
            "VeleroBackupCompleted",
            "velero.io/Backup completed; 412 items, 18.4 GiB",
            at(1_779_962_833, 500_000_000),
            &EventSubject::Operation {
                operation_id: "6b62",
            },
        )
        .with_namespace("org-myteam")
        .with_application_instance("nextcloud-myteam");
        let json = serde_json::to_value(&event).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
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
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, want);
        assert_eq!(json["occurred_at"], "2026-05-28T10:07:13Z");
        assert_eq!(json["operation_id"], "6b62");
        assert_eq!(json["cluster_id"], "cluster-prod-1");
        assert_eq!(json["org_id"], "myteam");
        assert_eq!(json["operator_version"], "v0.4.2");
        let back: AuditEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back.event_id, event.event_id);
    }

    #[test]
    fn condition_transitions_become_audit_events() {
        use crate::conditions::{ConditionStatus, new_condition, operation};
        let t = at(1_780_000_000, 0);
        let later = at(1_780_000_100, 0);
        let succeeded = new_condition(
            operation::SUCCEEDED,
            ConditionStatus::True,
            operation::reasons::VELERO_BACKUP_COMPLETED,
            "412 items",
            Some(1),
            &t,
        );
        let op = AuditObject {
            kind: ResourceKind::Operation,
            uid: "6b62",
            namespace: Some("org-myteam"),
            application_instance: Some("nextcloud-myteam"),
        };
        let conditions = std::slice::from_ref(&succeeded);
        let live = AuditEvent::for_condition(&source(), &op, &succeeded, conditions, later.clone())
            .unwrap();
        assert_eq!(live.kind, "OperationSucceeded");
        assert_eq!(live.reason, "VeleroBackupCompleted");
        assert_eq!(live.message, "412 items");
        assert_eq!(live.operation_id.as_deref(), Some("6b62"));
        assert_eq!(live.namespace.as_deref(), Some("org-myteam"));
        assert_eq!(
            live.application_instance.as_deref(),
            Some("nextcloud-myteam")
        );
        assert_eq!(live.occurred_at, later);
        assert_eq!(live.event_id, PINNED_ID_FOR_6B62);
        // Replay from status (different occurred_at) yields the same id.
        let replay =
            AuditEvent::for_condition(&source(), &op, &succeeded, conditions, t.clone()).unwrap();
        assert_eq!(replay.event_id, live.event_id);

        // Non-Operation objects are keyed by uid + lastTransitionTime.
        let lost = new_condition(
            crate::conditions::cluster::CONNECTED,
            ConditionStatus::False,
            crate::conditions::cluster::reasons::CONTROL_PLANE_UNREACHABLE,
            "",
            None,
            &t,
        );
        let cluster = AuditObject {
            kind: ResourceKind::Cluster,
            uid: "cluster-uid",
            namespace: Some("vworkspace-system"),
            application_instance: None,
        };
        let event = AuditEvent::for_condition(
            &source(),
            &cluster,
            &lost,
            std::slice::from_ref(&lost),
            later,
        )
        .unwrap();
        assert_eq!(event.kind, "ConnectivityLost");
        assert_eq!(event.operation_id, None);
        assert_eq!(
            event.event_id,
            event_id(
                "cluster-prod-1",
                "ConnectivityLost",
                &EventSubject::Transition {
                    uid: "cluster-uid",
                    at: &t
                }
            )
        );

        // Silent transitions produce nothing.
        let reconnecting = new_condition(
            crate::conditions::cluster::CONNECTED,
            ConditionStatus::Unknown,
            crate::conditions::cluster::reasons::RECONNECTING,
            "",
            None,
            &t,
        );
        assert!(
            AuditEvent::for_condition(&source(), &cluster, &reconnecting, &[], t.clone()).is_none()
        );
    }
    const PINNED_ID_FOR_6B62: &str = PINNED_ID;

    #[test]
    fn optional_fields_are_omitted_not_null() {
        let t = at(1_780_000_000, 0);
        let event = AuditEvent::new(
            &source(),
            "ConnectivityLost",
            "ControlPlaneUnreachable",
            "no round-trip for 5m",
            t.clone(),
            &EventSubject::Transition {
                uid: "cluster-uid",
                at: &t,
            },
        );
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
