//! `status.transitions`: the record of the transitions an object has announced.
//!
//! Every status the operator writes for an ApplicationInstance, an Operation or the
//! Cluster carries, for each Event reason (`kind`) it has announced, the latest
//! announcement of that kind: the inputs of its `event_id`, its message and its time.
//! This is what makes the one transition model (`vworkspace_reconcile::transitions`)
//! deterministic:
//!
//! * the occurrence of a new transition is derived from the record of its own kind only,
//!   so recomputing a reconcile after a crash (from the same status) yields the same ids,
//!   whatever other transitions were announced meanwhile;
//! * a transition that repeats within a generation (Blocked ⇄ Accepted) gets the next
//!   occurrence and so a new id, a new Event and a new audit event;
//! * the control-plane link can replay what is still recorded here, from status alone,
//!   with the ids the live publisher used.
//!
//! The list holds at most one entry per kind, so it stays small (a handful of entries)
//! however long the object lives.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit::{TransitionKey, event_id};
use crate::conditions::EventType;

/// One announced transition; see the module docs.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TransitionRecord {
    /// The Event reason, also the audit event's `kind` (e.g. `ReconcileSucceeded`).
    #[schemars(length(min = 1, max = 128))]
    pub kind: String,
    /// The condition type the transition is about; empty for a child's change.
    #[serde(default)]
    #[schemars(length(max = 316))]
    pub condition: String,
    /// The condition reason (the audit event's `reason`).
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// The object generation the transition belongs to.
    pub generation: i64,
    /// 1 for the first transition of this kind in this generation, then 2, 3, ...
    #[schemars(range(min = 1))]
    pub occurrence: i64,
    /// `Normal` or `Warning`, as the Event was written.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The Event note and audit message.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When it was announced (the audit event's `occurred_at`).
    pub at: Time,
}

impl TransitionRecord {
    /// The `event_id` of this transition on the object with `uid` (docs/api.md).
    pub fn event_id(&self, cluster_id: &str, uid: &str) -> String {
        event_id(
            cluster_id,
            &self.kind,
            &TransitionKey {
                uid,
                generation: self.generation,
                condition: &self.condition,
                reason: &self.reason,
                occurrence: self.occurrence,
            },
        )
    }
}

/// The occurrence a new transition of `kind` in `generation` gets, given the record.
pub fn next_occurrence(records: &[TransitionRecord], kind: &str, generation: i64) -> i64 {
    records
        .iter()
        .find(|r| r.kind == kind && r.generation == generation)
        .map_or(1, |r| r.occurrence + 1)
}

/// Store `new` in `records`, replacing the entry of the same kind (one entry per kind;
/// the order is the order of announcement, newest last).
pub fn record(records: &mut Vec<TransitionRecord>, new: TransitionRecord) {
    records.retain(|r| r.kind != new.kind);
    records.push(new);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn rec(kind: &str, generation: i64, occurrence: i64) -> TransitionRecord {
        TransitionRecord {
            kind: kind.into(),
            condition: "Accepted".into(),
            reason: "NamespaceNotManaged".into(),
            generation,
            occurrence,
            event_type: EventType::Warning,
            message: "m".into(),
            at: Time(Timestamp::from_second(1_780_000_000).unwrap()),
        }
    }

    #[test]
    fn occurrences_count_per_kind_and_generation() {
        let mut records = Vec::new();
        assert_eq!(next_occurrence(&records, "OperationBlocked", 1), 1);
        record(&mut records, rec("OperationBlocked", 1, 1));
        record(&mut records, rec("OperationAccepted", 1, 1));
        assert_eq!(next_occurrence(&records, "OperationBlocked", 1), 2);
        assert_eq!(next_occurrence(&records, "OperationBlocked", 2), 1);
        record(&mut records, rec("OperationBlocked", 1, 2));
        assert_eq!(records.len(), 2, "one entry per kind");
        assert_eq!(records[1].occurrence, 2, "newest last");
        assert_ne!(
            records[1].event_id("c", "u"),
            rec("OperationBlocked", 1, 1).event_id("c", "u")
        );
    }

    #[test]
    fn serializes_camel_case_with_type() {
        let json = serde_json::to_value(rec("OperationBlocked", 1, 1)).unwrap();
        assert_eq!(json["type"], "Warning");
        assert_eq!(json["occurrence"], 1);
        assert_eq!(json["at"], "2026-05-28T20:26:40Z");
        let back: TransitionRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, rec("OperationBlocked", 1, 1));
    }
}
