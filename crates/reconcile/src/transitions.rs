//! The one transition model: which status change is announced, as which Event reason,
//! with which `event_id`.
//!
//! [`announce`] is a pure function of (the status before, the status after, the observed
//! change of a child) and of the record of earlier announcements kept in
//! `status.transitions`. Every input of an `event_id` (object uid, generation, condition
//! type and reason, occurrence) ends up in that record, so:
//!
//! * a reconcile recomputed after a crash, from the same status, announces the same
//!   transitions with the same ids (the publisher writes Events named after the id, so the
//!   second attempt is answered 409 and publishes nothing twice);
//! * a transition recomputed later from the object's status alone (the control-plane
//!   link's replay) has the id the live publisher used;
//! * a transition that repeats within one generation (Blocked ⇄ Accepted, a second
//!   failure after a recovery) gets the next occurrence and therefore a new id.
//!
//! Controllers never decide announcements themselves: they compute the new status, call
//! [`announce`], publish what it returns, and then persist the status with the updated
//! record (publish first: a crash between the two repeats the publish, which is idempotent,
//! instead of losing the transition).
//!
//! The rule, per resource (a condition "becomes" a status when it is added with it or its
//! status changes to it):
//!
//! | resource | change | Event reason | type |
//! |---|---|---|---|
//! | any | a condition becomes `True` with an error category as reason, or its reason changes to one while `True` | the category (e.g. `ApplyForbidden`) | Warning |
//! | ApplicationInstance | `observedGeneration` changes | `ReconcileStarted` | Normal |
//! | ApplicationInstance | the HelmRelease's deployed revision rises | `HelmReleaseUpgraded` | Normal |
//! | ApplicationInstance | `Ready` becomes `True` | `ReconcileSucceeded` | Normal |
//! | ApplicationInstance | `Failed` becomes `True` | `ReconcileFailed` | Warning |
//! | Operation | `Accepted` becomes `True` / `False` | `OperationAccepted` / `OperationBlocked` | Normal / Warning |
//! | Operation | `Running` becomes `True` | `OperationRunning` | Normal |
//! | Operation | `Succeeded` becomes `True` | `OperationSucceeded` | Normal |
//! | Operation | `Succeeded` becomes `False`, reason `Cancelled` / other | `OperationCancelled` / `OperationFailed` | Normal / Warning |
//! | Operation | `CancelRequested` becomes `True` (the engine cannot stop its work) | the condition's reason (`CancelNotSupported`) | Warning |
//! | Cluster | `Connected` becomes `True`, first or after a loss (not after `Reconnecting`: a blip within the grace period) | `ConnectivityConnected` | Normal |
//! | Cluster | `Disconnected` becomes `True` (failing for the whole grace period) | `ConnectivityLost` | Warning |
//! | Cluster | `EventBufferOverflow` becomes `True` | `ClusterEventBufferOverflow` | Warning |
//! | Cluster | `Authenticated`, `ControllersHealthy`, `CRDsRegistered` become `False` or change reason while `False` | the condition's reason | Warning |
//! | Cluster | `Authenticated`, `ControllersHealthy`, `CRDsRegistered` become `True` after `False` | the condition's reason | Normal |
//!
//! Everything else (a message refresh, `Reconciling` moving, `Connected` going `False`
//! within the grace period, a condition first added as `True` or `Unknown`) is silent.
//! The connectivity Events carry fixed messages: the condition's message holds a measured
//! age ("Last successful round-trip 4s ago"), and Event messages carry no durations.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use vworkspace_api::TransitionRecord;
use vworkspace_api::conditions::{
    ConditionStatus, EventType, application_instance as ai, cluster, errors, events,
    find_condition, operation,
};
use vworkspace_api::thirdparty::flux;
use vworkspace_api::transition::{next_occurrence, record};

/// The resource whose status changed (selects the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `ApplicationInstance`.
    ApplicationInstance,
    /// `Operation`.
    Operation,
    /// `Cluster`.
    Cluster,
}

/// The parts of a status that announcements depend on.
#[derive(Debug, Clone, Copy)]
pub struct StatusView<'a> {
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `status.conditions`.
    pub conditions: &'a [Condition],
}

/// A change of a child that the conditions do not show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildChange {
    /// The HelmRelease's deployed revision rose from `from` to `to`.
    HelmReleaseUpgraded {
        /// Revision before.
        from: i64,
        /// Revision now deployed.
        to: i64,
        /// Chart version of the new revision.
        chart_version: String,
    },
}

/// The message of every `ConnectivityConnected` (see the module doc).
pub const CONNECTED_MESSAGE: &str = "a round-trip to the control plane succeeded";

/// Longest message kept in a record (the Event note limit the publisher applies).
pub const MAX_MESSAGE: usize = 1024;

/// The transitions from `prev` to `next` on an object at `generation`, in the order they
/// are to be published. Each is also stored in `records` (the new status's
/// `status.transitions`, which must start as a copy of the old one), which is what makes
/// the next call pick the next occurrence.
pub fn announce(
    resource: Resource,
    generation: i64,
    prev: StatusView<'_>,
    next: StatusView<'_>,
    child: Option<&ChildChange>,
    records: &mut Vec<TransitionRecord>,
    now: &Time,
) -> Vec<TransitionRecord> {
    let mut out = Vec::new();
    let mut push = |kind: &str, condition: &str, reason: &str, event_type, message: &str| {
        let new = TransitionRecord {
            kind: kind.to_owned(),
            condition: condition.to_owned(),
            reason: reason.to_owned(),
            generation,
            occurrence: next_occurrence(records, kind, generation),
            event_type,
            message: truncate(message, MAX_MESSAGE),
            at: truncate_to_seconds(now),
        };
        record(records, new.clone());
        out.push(new);
    };

    if resource == Resource::ApplicationInstance
        && next.observed_generation != prev.observed_generation
    {
        push(
            events::RECONCILE_STARTED,
            ai::RECONCILING,
            ai::reasons::RECONCILING,
            EventType::Normal,
            &format!("reconciling generation {generation}"),
        );
    }
    if let Some(ChildChange::HelmReleaseUpgraded {
        from,
        to,
        chart_version,
    }) = child
    {
        push(
            events::HELM_RELEASE_UPGRADED,
            "",
            flux::reasons::UPGRADE_SUCCEEDED,
            EventType::Normal,
            &format!(
                "HelmRelease moved from revision {from} to {to} (chart version {chart_version})"
            ),
        );
    }
    for condition in next.conditions {
        let before = find_condition(prev.conditions, &condition.type_);
        if let Some((kind, event_type)) = rule(resource, before, condition) {
            let message = if kind == events::CONNECTIVITY_CONNECTED {
                CONNECTED_MESSAGE
            } else {
                &condition.message
            };
            push(
                kind,
                &condition.type_,
                &condition.reason,
                event_type,
                message,
            );
        }
    }
    out
}

/// How a condition changed from `before` to `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Status,
    Reason,
    None,
}

fn change(before: Option<&Condition>, after: &Condition) -> Change {
    match before {
        None => Change::Added,
        Some(b) if b.status != after.status => Change::Status,
        Some(b) if b.reason != after.reason => Change::Reason,
        Some(_) => Change::None,
    }
}

/// The Event reason and type announcing `after` (the new state of one condition), if any.
fn rule<'a>(
    resource: Resource,
    before: Option<&Condition>,
    after: &'a Condition,
) -> Option<(&'a str, EventType)> {
    use ConditionStatus::{False, True};
    use EventType::{Normal, Warning};
    let change = change(before, after);
    if change == Change::None {
        return None;
    }
    let status = ConditionStatus::parse(&after.status)?;
    if status == True && errors::is_category(&after.reason) {
        return Some((after.reason.as_str(), Warning));
    }
    let became = change != Change::Reason;
    let t = after.type_.as_str();
    match resource {
        Resource::ApplicationInstance => match (t, status) {
            (ai::READY, True) if became => Some((events::RECONCILE_SUCCEEDED, Normal)),
            (ai::FAILED, True) if became => Some((events::RECONCILE_FAILED, Warning)),
            _ => None,
        },
        Resource::Operation => match (t, status) {
            (operation::ACCEPTED, True) if became => Some((events::OPERATION_ACCEPTED, Normal)),
            (operation::ACCEPTED, False) if became => Some((events::OPERATION_BLOCKED, Warning)),
            (operation::RUNNING, True) if became => Some((events::OPERATION_RUNNING, Normal)),
            (operation::SUCCEEDED, True) if became => Some((events::OPERATION_SUCCEEDED, Normal)),
            (operation::SUCCEEDED, False)
                if became && after.reason == operation::reasons::CANCELLED =>
            {
                Some((events::OPERATION_CANCELLED, Normal))
            }
            (operation::SUCCEEDED, False) if became => Some((events::OPERATION_FAILED, Warning)),
            (operation::CANCEL_REQUESTED, True) if became => Some((after.reason.as_str(), Warning)),
            _ => None,
        },
        Resource::Cluster => {
            let was = |s: &str| before.is_some_and(|b| b.status == s);
            match (t, status) {
                (cluster::CONNECTED, True)
                    if became
                        && !before.is_some_and(|b| {
                            b.status == "False" && b.reason == cluster::reasons::RECONNECTING
                        }) =>
                {
                    Some((events::CONNECTIVITY_CONNECTED, Normal))
                }
                (cluster::DISCONNECTED, True) if became => {
                    Some((events::CONNECTIVITY_LOST, Warning))
                }
                (cluster::EVENT_BUFFER_OVERFLOW, True) if became => {
                    Some((events::CLUSTER_EVENT_BUFFER_OVERFLOW, Warning))
                }
                (
                    cluster::AUTHENTICATED
                    | cluster::CONTROLLERS_HEALTHY
                    | cluster::CRDS_REGISTERED,
                    False,
                ) => Some((after.reason.as_str(), Warning)),
                (
                    cluster::AUTHENTICATED
                    | cluster::CONTROLLERS_HEALTHY
                    | cluster::CRDS_REGISTERED,
                    True,
                ) if was("False") => Some((after.reason.as_str(), Normal)),
                _ => None,
            }
        }
    }
}

/// `message` cut to at most `max` bytes, on a character boundary.
fn truncate(message: &str, max: usize) -> String {
    message[..message.floor_char_boundary(max)].to_owned()
}

fn truncate_to_seconds(t: &Time) -> Time {
    k8s_openapi::jiff::Timestamp::from_second(t.0.as_second()).map_or_else(|_| t.clone(), Time)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use vworkspace_api::conditions::new_condition;

    fn now() -> Time {
        Time(Timestamp::from_second(1_780_000_000).unwrap())
    }

    fn c(type_: &str, status: ConditionStatus, reason: &str) -> Condition {
        new_condition(
            type_,
            status,
            reason,
            format!("{type_} {reason}"),
            Some(1),
            &now(),
        )
    }

    fn view(conditions: &[Condition]) -> StatusView<'_> {
        StatusView {
            observed_generation: Some(1),
            conditions,
        }
    }

    fn kinds(resource: Resource, before: &[Condition], after: &[Condition]) -> Vec<String> {
        let mut records = Vec::new();
        announce(
            resource,
            1,
            view(before),
            view(after),
            None,
            &mut records,
            &now(),
        )
        .into_iter()
        .map(|r| format!("{}:{:?}", r.kind, r.event_type))
        .collect()
    }

    #[test]
    fn rule_table() {
        use ConditionStatus::{False, True, Unknown};
        use Resource::{ApplicationInstance as Ai, Cluster, Operation as Op};
        // (resource, before, after, expected "Kind:Type" list)
        type Case = (Resource, Vec<Condition>, Vec<Condition>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                Ai,
                vec![c(ai::READY, Unknown, ai::reasons::HELM_RELEASE_PROGRESSING)],
                vec![c(ai::READY, True, ai::reasons::HELM_RELEASE_READY)],
                vec!["ReconcileSucceeded:Normal"],
            ),
            (
                Ai,
                vec![c(ai::READY, True, ai::reasons::HELM_RELEASE_READY)],
                vec![c(ai::READY, True, ai::reasons::SUSPENDED)],
                vec![],
            ),
            (
                Ai,
                vec![],
                vec![c(ai::FAILED, True, ai::reasons::UPGRADE_FAILED)],
                vec!["ReconcileFailed:Warning"],
            ),
            (
                Ai,
                vec![c(ai::FAILED, True, ai::reasons::INSTALL_FAILED)],
                vec![c(ai::FAILED, True, ai::reasons::UPGRADE_FAILED)],
                vec![],
            ),
            (
                Ai,
                vec![c(ai::RECONCILING, True, ai::reasons::RECONCILING)],
                vec![c(ai::RECONCILING, True, errors::APPLY_FORBIDDEN)],
                vec!["ApplyForbidden:Warning"],
            ),
            (
                Ai,
                vec![c(ai::RECONCILING, True, errors::APPLY_FORBIDDEN)],
                vec![c(ai::RECONCILING, True, errors::APPLY_FORBIDDEN)],
                vec![],
            ),
            (
                Ai,
                vec![c(ai::FAILED, False, ai::reasons::RECONCILING)],
                vec![c(ai::FAILED, True, errors::APPLY_REJECTED)],
                vec!["ApplyRejected:Warning"],
            ),
            (
                Op,
                vec![c(operation::ACCEPTED, Unknown, operation::reasons::PENDING)],
                vec![c(
                    operation::ACCEPTED,
                    False,
                    operation::reasons::NAMESPACE_NOT_MANAGED,
                )],
                vec!["OperationBlocked:Warning"],
            ),
            (
                Op,
                vec![c(
                    operation::ACCEPTED,
                    False,
                    operation::reasons::NAMESPACE_NOT_MANAGED,
                )],
                vec![c(
                    operation::ACCEPTED,
                    False,
                    operation::reasons::TEMPLATE_NOT_ALLOWED,
                )],
                vec![],
            ),
            (
                Op,
                vec![],
                vec![
                    c(
                        operation::ACCEPTED,
                        True,
                        operation::reasons::PRECONDITIONS_MET,
                    ),
                    c(operation::RUNNING, True, operation::reasons::ENGINE_RUNNING),
                ],
                vec!["OperationAccepted:Normal", "OperationRunning:Normal"],
            ),
            (
                Op,
                vec![c(
                    operation::SUCCEEDED,
                    Unknown,
                    operation::reasons::IN_PROGRESS,
                )],
                vec![c(
                    operation::SUCCEEDED,
                    True,
                    operation::reasons::VELERO_BACKUP_COMPLETED,
                )],
                vec!["OperationSucceeded:Normal"],
            ),
            (
                Op,
                vec![c(
                    operation::SUCCEEDED,
                    Unknown,
                    operation::reasons::IN_PROGRESS,
                )],
                vec![c(
                    operation::SUCCEEDED,
                    False,
                    operation::reasons::CANCELLED,
                )],
                vec!["OperationCancelled:Normal"],
            ),
            (
                Op,
                vec![c(
                    operation::SUCCEEDED,
                    Unknown,
                    operation::reasons::IN_PROGRESS,
                )],
                vec![c(
                    operation::SUCCEEDED,
                    False,
                    operation::reasons::JOB_FAILED,
                )],
                vec!["OperationFailed:Warning"],
            ),
            (
                Op,
                vec![],
                vec![c(
                    operation::CANCEL_REQUESTED,
                    True,
                    operation::reasons::CANCEL_NOT_SUPPORTED,
                )],
                vec!["CancelNotSupported:Warning"],
            ),
            (
                Cluster,
                vec![],
                vec![
                    c(
                        cluster::CONNECTED,
                        True,
                        cluster::reasons::CONTROL_PLANE_REACHABLE,
                    ),
                    c(
                        cluster::AUTHENTICATED,
                        True,
                        cluster::reasons::CREDENTIAL_VALID,
                    ),
                    c(
                        cluster::DISCONNECTED,
                        False,
                        cluster::reasons::NOT_APPLICABLE,
                    ),
                ],
                vec!["ConnectivityConnected:Normal"],
            ),
            (
                Cluster,
                vec![c(
                    cluster::CONNECTED,
                    True,
                    cluster::reasons::CONTROL_PLANE_REACHABLE,
                )],
                vec![c(
                    cluster::CONNECTED,
                    Unknown,
                    cluster::reasons::RECONNECTING,
                )],
                vec![],
            ),
            (
                Cluster,
                vec![
                    c(cluster::CONNECTED, False, cluster::reasons::RECONNECTING),
                    c(
                        cluster::DISCONNECTED,
                        False,
                        cluster::reasons::NOT_APPLICABLE,
                    ),
                ],
                vec![
                    c(
                        cluster::CONNECTED,
                        False,
                        cluster::reasons::CONTROL_PLANE_UNREACHABLE,
                    ),
                    c(
                        cluster::DISCONNECTED,
                        True,
                        cluster::reasons::GRACE_PERIOD_EXCEEDED,
                    ),
                ],
                vec!["ConnectivityLost:Warning"],
            ),
            (
                Cluster,
                vec![c(cluster::CONNECTED, False, cluster::reasons::RECONNECTING)],
                vec![c(
                    cluster::CONNECTED,
                    True,
                    cluster::reasons::CONTROL_PLANE_REACHABLE,
                )],
                vec![],
            ),
            (
                Cluster,
                vec![c(
                    cluster::AUTHENTICATED,
                    False,
                    cluster::reasons::CREDENTIAL_REJECTED,
                )],
                vec![c(
                    cluster::AUTHENTICATED,
                    True,
                    cluster::reasons::CREDENTIAL_VALID,
                )],
                vec!["CredentialValid:Normal"],
            ),
            (
                Cluster,
                vec![],
                vec![c(
                    cluster::AUTHENTICATED,
                    Unknown,
                    cluster::reasons::RECONNECTING,
                )],
                vec![],
            ),
            (
                Cluster,
                vec![c(
                    cluster::AUTHENTICATED,
                    True,
                    cluster::reasons::CREDENTIAL_VALID,
                )],
                vec![c(
                    cluster::AUTHENTICATED,
                    False,
                    cluster::reasons::CREDENTIAL_REJECTED,
                )],
                vec!["CredentialRejected:Warning"],
            ),
            (
                Cluster,
                vec![],
                vec![c(
                    cluster::EVENT_BUFFER_OVERFLOW,
                    True,
                    cluster::reasons::BUFFER_OVERFLOWED,
                )],
                vec!["ClusterEventBufferOverflow:Warning"],
            ),
        ];
        for (i, (resource, before, after, want)) in cases.iter().enumerate() {
            assert_eq!(
                kinds(*resource, before, after),
                *want,
                "case {i}: {resource:?}"
            );
        }
    }

    #[test]
    fn a_message_refresh_is_silent() {
        let before = [c(
            ai::READY,
            ConditionStatus::True,
            ai::reasons::HELM_RELEASE_READY,
        )];
        let mut after = before.clone();
        after[0].message = "another message".into();
        assert!(kinds(Resource::ApplicationInstance, &before, &after).is_empty());
    }

    /// Blocked → Accepted → Blocked within one generation: two OperationBlocked with
    /// different ids, and recomputing the second step from the same status gives the same id.
    #[test]
    fn repeated_transitions_get_new_ids_and_recomputing_gives_the_same_ids() {
        use ConditionStatus::{False, True};
        let blocked = [c(
            operation::ACCEPTED,
            False,
            operation::reasons::MUTATING_OPERATION_RUNNING,
        )];
        let accepted = [c(
            operation::ACCEPTED,
            True,
            operation::reasons::PRECONDITIONS_MET,
        )];
        let mut records = Vec::new();
        let step = |records: &mut Vec<TransitionRecord>, b: &[Condition], a: &[Condition]| {
            announce(
                Resource::Operation,
                1,
                view(b),
                view(a),
                None,
                records,
                &now(),
            )
        };
        let first = step(&mut records, &[], &blocked);
        let _ = step(&mut records, &blocked, &accepted);
        let before_second = records.clone();
        let second = step(&mut records, &accepted, &blocked);
        assert_eq!(first[0].kind, events::OPERATION_BLOCKED);
        assert_eq!(second[0].kind, events::OPERATION_BLOCKED);
        assert_eq!((first[0].occurrence, second[0].occurrence), (1, 2));
        assert_ne!(
            first[0].event_id("c", "uid"),
            second[0].event_id("c", "uid")
        );
        // A crash after publishing, before the status write: the retry starts again from
        // the persisted status and derives the same id.
        let mut replayed = before_second;
        let retry = step(&mut replayed, &accepted, &blocked);
        assert_eq!(
            retry[0].event_id("c", "uid"),
            second[0].event_id("c", "uid")
        );
        // From status alone: the ids of what is recorded equal the ids announced.
        let from_status: Vec<String> = records.iter().map(|r| r.event_id("c", "uid")).collect();
        assert!(from_status.contains(&second[0].event_id("c", "uid")));
        assert_eq!(records.len(), 2, "one record per kind");
    }

    /// A reconcile publishes ReconcileStarted, then its status write fails and the error
    /// report (computed from the same persisted status) records the transition together
    /// with the error: the report's ReconcileStarted has the live id (so its Event is a 409,
    /// not a second Event), and the retry, starting from the reported status, does not
    /// announce it again.
    #[test]
    fn an_error_report_keeps_the_ids_of_the_failed_reconcile() {
        use ConditionStatus::{True, Unknown};
        let persisted = StatusView {
            observed_generation: Some(1),
            conditions: &[],
        };
        let progressing = [c(ai::READY, Unknown, ai::reasons::HELM_RELEASE_PROGRESSING)];
        let live = announce(
            Resource::ApplicationInstance,
            2,
            persisted,
            StatusView {
                observed_generation: Some(2),
                conditions: &progressing,
            },
            None,
            &mut Vec::new(),
            &now(),
        );
        let error_conditions = [c(ai::RECONCILING, True, errors::STATUS_WRITE_FAILED)];
        let mut reported = Vec::new();
        let report = announce(
            Resource::ApplicationInstance,
            2,
            persisted,
            StatusView {
                observed_generation: Some(2),
                conditions: &error_conditions,
            },
            None,
            &mut reported,
            &now(),
        );
        let started = |ts: &[TransitionRecord]| {
            ts.iter()
                .find(|r| r.kind == events::RECONCILE_STARTED)
                .map(|r| r.event_id("c", "u"))
        };
        assert_eq!(live[0].kind, events::RECONCILE_STARTED);
        assert_eq!(started(&report), started(&live));
        assert_eq!(report[1].kind, errors::STATUS_WRITE_FAILED);
        let retry = announce(
            Resource::ApplicationInstance,
            2,
            StatusView {
                observed_generation: Some(2),
                conditions: &error_conditions,
            },
            StatusView {
                observed_generation: Some(2),
                conditions: &progressing,
            },
            None,
            &mut reported,
            &now(),
        );
        assert_eq!(started(&retry), None);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        let long = "é".repeat(MAX_MESSAGE);
        assert!(truncate(&long, MAX_MESSAGE).len() <= MAX_MESSAGE);
    }
}
