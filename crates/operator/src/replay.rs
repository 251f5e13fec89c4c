//! The replay from status: the audit events of every transition still recorded in
//! ApplicationInstance, Operation and Cluster status since a watermark.
//!
//! The cluster is the source of truth. When audit events were lost — dropped from a full
//! buffer, or lost with a process that was killed before it could ship them — the
//! transitions they announced are still in `status.transitions` of the objects (the
//! latest of each kind per object). Rebuilding their audit events with
//! [`publisher::audit_event`] from those records gives exactly the events the live
//! publisher built: same `event_id`, same fields. The control plane stores each
//! `event_id` once, so replaying an event it already has costs a duplicate count and
//! nothing else.
//!
//! Invariants:
//! * an event is replayed when its record's time is at or after the watermark (records
//!   hold whole seconds, and so does the watermark, so "at" matters: two transitions in
//!   the same second as the last delivered one may straddle it);
//! * the events come out oldest first (then by `event_id`, for a stable order), the
//!   order the live stream had;
//! * the audit context per kind is the live one: an ApplicationInstance names itself as
//!   `application_instance`; an Operation names its target instance and its own uid as
//!   `operation_id`; a Cluster names neither.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::{AuditEvent, AuditSource, Cluster, Operation};

use crate::publisher::{self, AuditContext};

/// The objects whose status records transitions.
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a> {
    /// Every ApplicationInstance.
    pub instances: &'a [std::sync::Arc<ApplicationInstance>],
    /// Every Operation.
    pub operations: &'a [std::sync::Arc<Operation>],
    /// The Cluster.
    pub cluster: Option<&'a Cluster>,
}

/// The audit events of every recorded transition at or after `watermark` (all of them
/// without one), oldest first.
pub fn events_since(
    source: &AuditSource,
    recorded: Recorded<'_>,
    watermark: Option<&Time>,
) -> Vec<AuditEvent> {
    let keep = |at: &Time| watermark.is_none_or(|w| at >= w);
    let mut out = Vec::new();
    for obj in recorded.instances {
        let name = obj.metadata.name.as_deref();
        for record in obj.status.iter().flat_map(|s| &s.transitions) {
            if keep(&record.at) {
                out.push(publisher::audit_event(
                    source,
                    &obj.metadata,
                    record,
                    AuditContext {
                        application_instance: name,
                        operation_id: None,
                    },
                ));
            }
        }
    }
    for obj in recorded.operations {
        let context = AuditContext {
            application_instance: Some(obj.spec.application_instance.as_str()),
            operation_id: obj.metadata.uid.as_deref(),
        };
        for record in obj.status.iter().flat_map(|s| &s.transitions) {
            if keep(&record.at) {
                out.push(publisher::audit_event(
                    source,
                    &obj.metadata,
                    record,
                    context,
                ));
            }
        }
    }
    if let Some(obj) = recorded.cluster {
        for record in obj.status.iter().flat_map(|s| &s.transitions) {
            if keep(&record.at) {
                out.push(publisher::audit_event(
                    source,
                    &obj.metadata,
                    record,
                    AuditContext::default(),
                ));
            }
        }
    }
    out.sort_by(|a, b| (&a.occurred_at, &a.event_id).cmp(&(&b.occurred_at, &b.event_id)));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::sync::Arc;

    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;
    use vworkspace_api::TransitionRecord;
    use vworkspace_api::conditions::EventType;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_780_000_000 + s).unwrap())
    }

    fn record(kind: &str, s: i64) -> TransitionRecord {
        TransitionRecord {
            kind: kind.into(),
            condition: "Ready".into(),
            reason: "HelmReleaseReady".into(),
            generation: 1,
            occurrence: 1,
            event_type: EventType::Normal,
            message: format!("{kind} message"),
            at: at(s),
        }
    }

    fn source() -> AuditSource {
        AuditSource {
            cluster_id: "cluster-prod-1".into(),
            org_id: "myteam".into(),
            operator_version: "v0.4.2".into(),
        }
    }

    #[test]
    fn replays_what_the_publisher_built_since_the_watermark() {
        let mut instance: ApplicationInstance = serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": { "name": "nextcloud", "namespace": "org-a", "uid": "u-ai" },
            "spec": { "chart": { "repository": "https://c.example.org", "name": "nextcloud", "version": "1.0.0" } }
        }))
        .unwrap();
        let started = record("ReconcileStarted", 0);
        let ready = record("ReconcileSucceeded", 10);
        instance.status = Some(vworkspace_api::ApplicationInstanceStatus {
            transitions: vec![started.clone(), ready.clone()],
            ..Default::default()
        });
        let mut operation: Operation = serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": { "name": "backup-1", "namespace": "org-a", "uid": "u-op" },
            "spec": { "type": "Backup", "template": "backup.velero", "applicationInstance": "nextcloud" }
        }))
        .unwrap();
        let succeeded = record("OperationSucceeded", 10);
        operation.status = Some(vworkspace_api::OperationStatus {
            transitions: vec![record("OperationAccepted", 5), succeeded.clone()],
            ..Default::default()
        });
        let instances = [Arc::new(instance.clone())];
        let operations = [Arc::new(operation.clone())];
        let recorded = Recorded {
            instances: &instances,
            operations: &operations,
            cluster: None,
        };

        let replayed = events_since(&source(), recorded, Some(&at(10)));
        let live_ready = publisher::audit_event(
            &source(),
            &instance.metadata,
            &ready,
            AuditContext {
                application_instance: Some("nextcloud"),
                operation_id: None,
            },
        );
        let live_succeeded = publisher::audit_event(
            &source(),
            &operation.metadata,
            &succeeded,
            AuditContext {
                application_instance: Some("nextcloud"),
                operation_id: Some("u-op"),
            },
        );
        let mut want = vec![live_ready, live_succeeded];
        want.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        assert_eq!(
            replayed, want,
            "exactly the live events at or after the watermark"
        );
        assert_eq!(replayed[0].namespace.as_deref(), Some("org-a"));

        let everything = events_since(&source(), recorded, None);
        let kinds: Vec<_> = everything.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds[..2],
            ["ReconcileStarted", "OperationAccepted"],
            "oldest first"
        );
        assert_eq!(everything.len(), 4);
    }
}
