//! Scenario and table tests of the Operation state machine: every phase × observation,
//! every precondition, the mutating rule, deadlines, cancel per engine, and whole
//! lifecycles run through [`plan`] *and* [`transitions::announce`] (inside it), asserting
//! the exact Event sequence.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use super::*;
use k8s_openapi::api::batch::v1::JobStatus;
use serde_json::json;
use vworkspace_api::conditions::{EventType, events};
use vworkspace_api::operation::{OperationSpec, UpgradeRecord};
use vworkspace_api::thirdparty::argo::WorkflowStatus;
use vworkspace_api::thirdparty::velero::BackupStatus;

const UID: &str = "6b62a1f0-c3d4-4e5f-8a9b-0c1d2e3f4a5b";
const T0: i64 = 1_780_000_000;

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn operation(
    name: &str,
    type_: OperationType,
    template: &str,
    params: serde_json::Value,
) -> Operation {
    let mut op = Operation::new(
        name,
        OperationSpec {
            type_,
            template: template.into(),
            application_instance: "app".into(),
            parameters: params.as_object().cloned(),
            timeout: None,
            cancel: false,
        },
    );
    op.metadata.namespace = Some("org-a".into());
    op.metadata.uid = Some(UID.into());
    op.metadata.generation = Some(1);
    op.metadata.creation_timestamp = Some(at(T0));
    op
}

fn backup_op() -> Operation {
    operation("nightly", OperationType::Backup, "backup.velero", json!({}))
}

fn job_op() -> Operation {
    operation(
        "cmd",
        OperationType::RunCommand,
        "runcommand.job",
        json!({"command": "echo hi", "image": "busybox:1"}),
    )
}

fn valid(op: &Operation) -> ValidOperation {
    validate(op, &crate::catalog::builtin()).unwrap()
}

fn ready_target() -> TargetView {
    TargetView {
        ready: ConditionStatus::True,
        ready_reason: "HelmReleaseReady".into(),
        ready_message: "ready".into(),
        failed: None,
        generation: 1,
        observed_generation: Some(1),
        chart_version: "1.2.0".into(),
        release_name: "app".into(),
        release_revision: Some(3),
        release_chart_version: Some("1.2.0".into()),
        flux_ready_reason: Some("UpgradeSucceeded".into()),
        flux_ready_message: Some("ok".into()),
        flux_last_attempted_revision: Some("1.2.0".into()),
    }
}

fn world(now: i64) -> World {
    World {
        now: at(now),
        namespace: NamespaceView {
            managed: true,
            allowed_templates: crate::catalog::builtin()
                .templates()
                .map(|t| t.name().to_owned())
                .collect(),
        },
        engine_installed: true,
        target: Some(ready_target()),
        peers: Vec::new(),
        source: None,
        pvcs: vec!["data".into()],
        children: Children::default(),
    }
}

fn backup_child(status: serde_json::Value) -> Backup {
    let mut b = Backup::new(&child_name(UID), Default::default());
    b.status = Some(serde_json::from_value::<BackupStatus>(status).unwrap());
    b
}

fn job_child(status: serde_json::Value) -> Job {
    let mut j = Job::default();
    j.metadata.name = Some(child_name(UID));
    j.status = Some(serde_json::from_value::<JobStatus>(status).unwrap());
    j
}

/// Runs plans until the step is not "requeue at once", as the controller would.
struct Driver {
    op: ValidOperation,
    status: OperationStatus,
    events: Vec<TransitionRecord>,
    outcomes: Vec<Outcome>,
}

impl Driver {
    fn new(op: &Operation) -> Self {
        Driver {
            op: valid(op),
            status: OperationStatus::default(),
            events: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    fn step(&mut self, world: &World) -> Step {
        let plan = plan(&self.op, &self.status, world);
        self.events.extend(plan.transitions.clone());
        self.outcomes.extend(plan.outcome);
        self.status = plan.status;
        plan.step
    }

    fn kinds(&self) -> Vec<String> {
        self.events.iter().map(|e| e.kind.clone()).collect()
    }

    fn phase(&self) -> OperationPhase {
        self.status.phase.unwrap_or_default()
    }
}

#[test]
fn a_backup_lifecycle_announces_exactly_its_events() {
    let mut d = Driver::new(&backup_op());
    let mut w = world(T0);

    // The target is not Ready: Blocked.
    w.target.as_mut().unwrap().ready = ConditionStatus::False;
    assert!(matches!(d.step(&w), Step::Wait { .. }));
    assert_eq!(d.phase(), OperationPhase::Blocked);
    assert_eq!(
        d.status.reason.as_deref(),
        Some(reasons::APPLICATION_INSTANCE_NOT_READY)
    );

    // It clears: Accepted, and nothing handed out in the same reconcile.
    w = world(T0 + 10);
    assert_eq!(
        d.step(&w),
        Step::Wait {
            requeue_after: Some(Duration::ZERO)
        }
    );
    assert_eq!(d.phase(), OperationPhase::Accepted);
    assert_eq!(d.status.started_at, Some(at(T0 + 10)));
    assert_eq!(
        d.status.deadline,
        Some(at(T0 + 10 + 30 * 60)),
        "Backup: 30 minutes"
    );

    // Before the child exists the target goes away again: Blocked once more.
    w.target = None;
    d.step(&w);
    assert_eq!(d.phase(), OperationPhase::Blocked);

    // Back: Accepted, then the Backup is created.
    w = world(T0 + 20);
    d.step(&w);
    let Step::CreateChildren(children) = d.step(&w) else {
        panic!("expected the child");
    };
    assert_eq!(children.len(), 1);
    let Child::Backup(b) = &children[0] else {
        panic!("a Backup");
    };
    assert_eq!(b.metadata.name.as_deref(), Some("op-6b62a1f0c3d4"));
    assert_eq!(b.metadata.namespace.as_deref(), Some("velero"));
    assert_eq!(b.spec.included_namespaces, ["org-a"]);
    assert_eq!(
        b.metadata.labels.as_ref().unwrap()[labels::OPERATION_ID],
        UID
    );
    assert!(
        b.metadata.owner_references.is_none(),
        "no owner across namespaces"
    );
    assert_eq!(d.phase(), OperationPhase::Accepted);

    // Velero has it queued: still Accepted; then working: Running.
    w.children.backups = vec![backup_child(json!({"phase": "New"}))];
    d.step(&w);
    assert_eq!(d.phase(), OperationPhase::Accepted);
    w.children.backups = vec![backup_child(
        json!({"phase": "InProgress", "progress": {"totalItems": 412, "itemsBackedUp": 10}}),
    )];
    d.step(&w);
    assert_eq!(d.phase(), OperationPhase::Running);
    // Progress refreshes are silent.
    w.children.backups = vec![backup_child(
        json!({"phase": "InProgress", "progress": {"totalItems": 412, "itemsBackedUp": 300}}),
    )];
    d.step(&w);

    // Done.
    w.children.backups = vec![backup_child(
        json!({"phase": "Completed", "progress": {"totalItems": 412, "itemsBackedUp": 412}}),
    )];
    w.children.velero_volume_bytes = Some(19_756_849_561);
    assert_eq!(d.step(&w), Step::Done);
    assert_eq!(d.phase(), OperationPhase::Succeeded);
    assert_eq!(
        d.status.message.as_deref(),
        Some("velero.io/Backup completed; 412 items, 18.4 GiB")
    );
    assert_eq!(d.status.outputs["backupName"], "op-6b62a1f0c3d4");
    assert_eq!(d.status.outputs["size"], "18.4 GiB");

    // Terminal: nothing more, ever.
    assert_eq!(d.step(&w), Step::Done);

    assert_eq!(
        d.kinds(),
        [
            events::OPERATION_BLOCKED,
            events::OPERATION_ACCEPTED,
            events::OPERATION_BLOCKED,
            events::OPERATION_ACCEPTED,
            events::OPERATION_RUNNING,
            events::OPERATION_SUCCEEDED,
        ]
    );
    let ids: BTreeSet<String> = d.events.iter().map(|e| e.event_id("c", UID)).collect();
    assert_eq!(ids.len(), d.events.len(), "every Event has its own id");
    let blocked: Vec<&TransitionRecord> = d
        .events
        .iter()
        .filter(|e| e.kind == events::OPERATION_BLOCKED)
        .collect();
    assert_eq!((blocked[0].occurrence, blocked[1].occurrence), (1, 2));
    assert_eq!(blocked[0].reason, reasons::APPLICATION_INSTANCE_NOT_READY);
    assert_eq!(blocked[1].reason, reasons::APPLICATION_INSTANCE_NOT_FOUND);
    assert_eq!(blocked[0].event_type, EventType::Warning);
    let success = d.events.last().unwrap();
    assert_eq!(success.reason, reasons::VELERO_BACKUP_COMPLETED);
    assert_eq!(
        success.message,
        "velero.io/Backup completed; 412 items, 18.4 GiB"
    );
    assert_eq!(
        d.outcomes,
        [Outcome::Succeeded],
        "counted once, on entering the terminal phase"
    );
}

#[test]
fn recomputing_a_plan_gives_the_same_child_and_ids() {
    let op = valid(&job_op());
    let mut w = world(T0);
    let accepted = plan(&op, &OperationStatus::default(), &w).status;
    w.now = at(T0 + 1);
    let first = plan(&op, &accepted, &w);
    // The operator crashed before writing the status: the retry starts from `accepted`.
    let again = plan(&op, &accepted, &w);
    assert_eq!(first, again);
    let Step::CreateChildren(children) = first.step else {
        panic!("create");
    };
    assert_eq!(children[0].child_ref().name, child_name(UID));
}

#[test]
fn every_precondition_blocks_with_its_reason_and_a_message_naming_it() {
    type Edit = fn(&mut World, &mut Operation);
    let cases: &[(&str, Edit, &str, &str)] = &[
        (
            "not managed",
            |w, _| w.namespace.managed = false,
            reasons::NAMESPACE_NOT_MANAGED,
            "app.vworkspace.io/managed-by=vworkspace",
        ),
        (
            "not allowed",
            |w, _| {
                w.namespace.allowed_templates = ["restore.velero".to_owned()].into();
            },
            reasons::TEMPLATE_NOT_ALLOWED,
            "template backup.velero is not allowed in namespace org-a: its annotation app.vworkspace.io/allowed-operation-templates lists [restore.velero]",
        ),
        (
            "type mismatch",
            |_, op| op.spec.type_ = OperationType::Restore,
            reasons::TEMPLATE_TYPE_MISMATCH,
            "implements Backup, but spec.type is Restore",
        ),
        (
            "engine missing",
            |w, _| w.engine_installed = false,
            reasons::ENGINE_NOT_INSTALLED,
            "velero.io/v1 Backup",
        ),
        (
            "target missing",
            |w, _| w.target = None,
            reasons::APPLICATION_INSTANCE_NOT_FOUND,
            "ApplicationInstance org-a/app does not exist",
        ),
        (
            "target not ready",
            |w, _| {
                let t = w.target.as_mut().unwrap();
                t.ready = ConditionStatus::False;
                t.ready_reason = "UpgradeFailed".into();
            },
            reasons::APPLICATION_INSTANCE_NOT_READY,
            "not Ready (Ready=False, UpgradeFailed",
        ),
    ];
    for (name, edit, reason, fragment) in cases {
        let mut op = backup_op();
        let mut w = world(T0);
        edit(&mut w, &mut op);
        let p = plan(&valid(&op), &OperationStatus::default(), &w);
        assert_eq!(p.status.phase, Some(OperationPhase::Blocked), "{name}");
        assert_eq!(p.status.reason.as_deref(), Some(*reason), "{name}");
        let message = p.status.message.clone().unwrap();
        assert!(message.contains(fragment), "{name}: {message}");
        assert_eq!(p.transitions.len(), 1, "{name}");
        assert_eq!(p.transitions[0].kind, events::OPERATION_BLOCKED, "{name}");
        assert_eq!(
            p.transitions[0].message, message,
            "{name}: the Event says the same"
        );
        assert_eq!(
            p.step,
            Step::Wait {
                requeue_after: Some(BLOCKED_RECHECK)
            },
            "{name}"
        );
        assert_eq!(p.outcome, None, "{name}");
    }
}

#[test]
fn restore_from_an_operation_waits_for_its_backup() {
    let op = operation(
        "r",
        OperationType::Restore,
        "restore.velero",
        json!({"fromOperation": "nightly"}),
    );
    let v = valid(&op);
    assert_eq!(v.source_operation(), Some("nightly"));
    let source = |phase, backup: Option<&str>| Peer {
        name: "nightly".into(),
        created_at: at(T0 - 100),
        type_: OperationType::Backup,
        target: "app".into(),
        phase,
        reason: None,
        backup_name: backup.map(str::to_owned),
    };
    let cases = [
        (None, "no such Operation"),
        (
            Some(source(OperationPhase::Running, None)),
            "has not succeeded (phase Running)",
        ),
        (
            Some(source(OperationPhase::Succeeded, None)),
            "no backupName output",
        ),
        (
            Some(Peer {
                type_: OperationType::Upgrade,
                ..source(OperationPhase::Succeeded, Some("b"))
            }),
            "not a Backup",
        ),
    ];
    for (src, fragment) in cases {
        let mut w = world(T0);
        w.source = src;
        let p = plan(&v, &OperationStatus::default(), &w);
        assert_eq!(
            p.status.reason.as_deref(),
            Some(reasons::SOURCE_OPERATION_NOT_SUCCEEDED)
        );
        assert!(
            p.status.message.as_ref().unwrap().contains(fragment),
            "{fragment}"
        );
    }
    let mut w = world(T0);
    w.source = Some(source(OperationPhase::Succeeded, Some("op-aaaabbbbcccc")));
    let accepted = plan(&v, &OperationStatus::default(), &w).status;
    let Step::CreateChildren(children) = plan(&v, &accepted, &w).step else {
        panic!("create");
    };
    let Child::Restore(r) = &children[0] else {
        panic!("a Restore");
    };
    assert_eq!(r.spec.backup_name.as_deref(), Some("op-aaaabbbbcccc"));
    assert_eq!(r.spec.included_namespaces, ["org-a"]);
}

fn peer(
    name: &str,
    created: i64,
    type_: OperationType,
    phase: OperationPhase,
    reason: Option<&str>,
) -> Peer {
    Peer {
        name: name.into(),
        created_at: at(created),
        type_,
        target: "app".into(),
        phase,
        reason: reason.map(str::to_owned),
        backup_name: None,
    }
}

#[test]
fn the_mutating_rule() {
    use OperationPhase::{Accepted, Blocked, Failed, Pending, Running, Succeeded};
    use OperationType::{Backup, Restore, Upgrade};
    // (case, my previous phase, peers, blocked by)
    type Case<'a> = (&'a str, Option<OperationPhase>, Vec<Peer>, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        ("alone", None, vec![], None),
        (
            "a running mutating peer holds it",
            None,
            vec![peer("u", T0 + 5, Upgrade, Running, None)],
            Some("u"),
        ),
        (
            "an accepted younger peer holds it while I wait",
            Some(Blocked),
            vec![peer("u", T0 + 5, Upgrade, Accepted, None)],
            Some("u"),
        ),
        (
            "two accepted: the older keeps it",
            Some(Accepted),
            vec![peer("u", T0 + 5, Upgrade, Accepted, None)],
            None,
        ),
        (
            "two accepted: the younger yields",
            Some(Accepted),
            vec![peer("u", T0 - 5, Upgrade, Accepted, None)],
            Some("u"),
        ),
        (
            "a running peer wins over my acceptance",
            Some(Accepted),
            vec![peer("u", T0 + 5, Upgrade, Running, None)],
            Some("u"),
        ),
        (
            "backups do not hold it",
            None,
            vec![peer("b", T0 - 5, Backup, Running, None)],
            None,
        ),
        (
            "terminal peers do not hold it",
            None,
            vec![
                peer("u", T0 - 5, Upgrade, Succeeded, None),
                peer("v", T0 - 4, Upgrade, Failed, None),
            ],
            None,
        ),
        (
            "another instance's peer does not count",
            None,
            vec![Peer {
                target: "other".into(),
                ..peer("u", T0 - 5, Upgrade, Running, None)
            }],
            None,
        ),
        (
            "an older pending peer is ahead in line",
            None,
            vec![peer("u", T0 - 5, Upgrade, Pending, None)],
            Some("u"),
        ),
        (
            "a younger pending peer is behind",
            None,
            vec![peer("u", T0 + 5, Upgrade, Pending, None)],
            None,
        ),
        (
            "an older peer waiting for the instance is ahead",
            None,
            vec![peer(
                "u",
                T0 - 5,
                Upgrade,
                Blocked,
                Some(reasons::APPLICATION_INSTANCE_NOT_READY),
            )],
            Some("u"),
        ),
        (
            "an older peer blocked for its own reason is not in line",
            None,
            vec![peer(
                "u",
                T0 - 5,
                Upgrade,
                Blocked,
                Some(reasons::TEMPLATE_NOT_ALLOWED),
            )],
            None,
        ),
        (
            "same creation second: the name decides",
            None,
            vec![peer("a-first", T0, Upgrade, Pending, None)],
            Some("a-first"),
        ),
        (
            "same creation second, later name: behind",
            None,
            vec![peer("z-last", T0, Upgrade, Pending, None)],
            None,
        ),
    ];
    for (name, my_phase, peers, want) in cases {
        let op = operation(
            "restore-1",
            Restore,
            "restore.velero",
            json!({"backupName": "b"}),
        );
        let mut w = world(T0 + 100);
        w.peers = peers;
        let prev = OperationStatus {
            phase: my_phase,
            ..OperationStatus::default()
        };
        let p = plan(&valid(&op), &prev, &w);
        match want {
            Some(holder) => {
                assert_eq!(
                    p.status.reason.as_deref(),
                    Some(reasons::MUTATING_OPERATION_RUNNING),
                    "{name}"
                );
                let message = p.status.message.unwrap();
                assert!(
                    message.contains(&format!("Operation {holder} (")),
                    "{name}: {message}"
                );
            }
            None => assert_ne!(
                p.status.phase,
                Some(OperationPhase::Blocked),
                "{name}: {:?}",
                p.status.message
            ),
        }
    }
    // A Backup is never blocked by the rule.
    let mut w = world(T0);
    w.peers = vec![peer("u", T0 - 5, Upgrade, Running, None)];
    let p = plan(&valid(&backup_op()), &OperationStatus::default(), &w);
    assert_eq!(p.status.phase, Some(OperationPhase::Accepted));
}

#[test]
fn the_rule_is_the_same_whichever_operation_is_reconciled_first() {
    // Two restores created in the same second, both Pending, target Ready.
    let a = operation(
        "restore-a",
        OperationType::Restore,
        "restore.velero",
        json!({"backupName": "b"}),
    );
    let mut b = a.clone();
    b.metadata.name = Some("restore-b".into());
    b.metadata.uid = Some("ffff0000-0000-0000-0000-000000000000".into());
    let as_peer = |op: &Operation, status: &OperationStatus| {
        let mut o = op.clone();
        o.status = Some(status.clone());
        Peer::of(&o).unwrap()
    };
    for a_first in [true, false] {
        let (mut sa, mut sb) = (OperationStatus::default(), OperationStatus::default());
        for round in 0..2 {
            let mut w = world(T0 + 1 + round);
            let order: [bool; 2] = if a_first {
                [true, false]
            } else {
                [false, true]
            };
            for is_a in order {
                if is_a {
                    w.peers = vec![as_peer(&b, &sb)];
                    sa = plan(&valid(&a), &sa, &w).status;
                } else {
                    w.peers = vec![as_peer(&a, &sa)];
                    sb = plan(&valid(&b), &sb, &w).status;
                }
            }
        }
        assert!(
            sa.child_ref.is_some(),
            "a_first={a_first}: the older (by name) starts"
        );
        assert_eq!(sb.phase, Some(OperationPhase::Blocked), "a_first={a_first}");
        assert_eq!(
            sb.reason.as_deref(),
            Some(reasons::MUTATING_OPERATION_RUNNING)
        );
    }
}

#[test]
fn still_blocked_at_the_deadline_fails_with_outcome_blocked() {
    let mut d = Driver::new(&backup_op());
    let mut w = world(T0);
    w.namespace.managed = false;
    d.step(&w);
    w.now = at(T0 + 30 * 60 - 1);
    let Step::Wait { requeue_after } = d.step(&w) else {
        panic!("still waiting");
    };
    assert_eq!(
        requeue_after,
        Some(Duration::from_secs(1)),
        "wakes up at the deadline"
    );
    w.now = at(T0 + 30 * 60);
    assert_eq!(d.step(&w), Step::Done);
    assert_eq!(d.phase(), OperationPhase::Failed);
    assert_eq!(d.status.reason.as_deref(), Some(reasons::BLOCKED_TIMEOUT));
    assert!(
        d.status
            .message
            .as_ref()
            .unwrap()
            .contains("is not managed")
    );
    assert_eq!(
        d.kinds(),
        [events::OPERATION_BLOCKED, events::OPERATION_FAILED]
    );
    assert_eq!(d.outcomes, [Outcome::Blocked]);
    assert_eq!(Outcome::Blocked.as_str(), "blocked");
}

/// Job engine, every phase × observation.
#[test]
fn phase_by_observation_table() {
    use OperationPhase::{Accepted, Running};
    let op = valid(&job_op());
    let created = OperationStatus {
        phase: Some(Accepted),
        reason: Some(reasons::PRECONDITIONS_MET.into()),
        started_at: Some(at(T0)),
        child_ref: Some(ChildRef {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: child_name(UID),
            namespace: Some("org-a".into()),
        }),
        ..OperationStatus::default()
    };
    let running = OperationStatus {
        phase: Some(Running),
        ..created.clone()
    };
    let complete = json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
    let failed = json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]});
    let pending = json!({});
    let active = json!({"active": 1});
    // (prev status, child status (None = absent), want phase, want reason, want step kind)
    type Case<'a> = (
        &'a str,
        OperationStatus,
        Option<serde_json::Value>,
        OperationPhase,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "accepted, pending",
            created.clone(),
            Some(pending.clone()),
            Accepted,
            reasons::PRECONDITIONS_MET,
            "Wait",
        ),
        (
            "accepted, active",
            created.clone(),
            Some(active.clone()),
            Running,
            reasons::ENGINE_RUNNING,
            "Wait",
        ),
        (
            "accepted, complete",
            created.clone(),
            Some(complete.clone()),
            OperationPhase::Succeeded,
            reasons::JOB_SUCCEEDED,
            "Done",
        ),
        (
            "accepted, failed",
            created.clone(),
            Some(failed.clone()),
            OperationPhase::Failed,
            reasons::JOB_BACKOFF_LIMIT_EXCEEDED,
            "Done",
        ),
        (
            "accepted, vanished",
            created.clone(),
            None,
            OperationPhase::Failed,
            reasons::ENGINE_LOST_WORK,
            "Done",
        ),
        (
            "running, pod gone (pending again)",
            running.clone(),
            Some(pending),
            Running,
            reasons::ENGINE_RUNNING,
            "Wait",
        ),
        (
            "running, active",
            running.clone(),
            Some(active),
            Running,
            reasons::ENGINE_RUNNING,
            "Wait",
        ),
        (
            "running, complete",
            running.clone(),
            Some(complete),
            OperationPhase::Succeeded,
            reasons::JOB_SUCCEEDED,
            "Done",
        ),
        (
            "running, failed",
            running.clone(),
            Some(failed),
            OperationPhase::Failed,
            reasons::JOB_BACKOFF_LIMIT_EXCEEDED,
            "Done",
        ),
        (
            "running, vanished",
            running,
            None,
            OperationPhase::Failed,
            reasons::ENGINE_LOST_WORK,
            "Done",
        ),
    ];
    for (name, prev, child, phase, reason, step) in cases {
        let mut w = world(T0 + 5);
        w.children.jobs = child.map(job_child).into_iter().collect();
        let p = plan(&op, &prev, &w);
        assert_eq!(p.status.phase, Some(phase), "{name}");
        assert_eq!(p.status.reason.as_deref(), Some(reason), "{name}");
        let kind = match p.step {
            Step::Wait { .. } => "Wait",
            Step::Done => "Done",
            ref other => panic!("{name}: {other:?}"),
        };
        assert_eq!(kind, step, "{name}");
        assert_eq!(p.outcome.is_some(), phase.is_terminal(), "{name}");
    }
    // Terminal phases and deletion, whatever the world says.
    for phase in [
        OperationPhase::Succeeded,
        OperationPhase::Failed,
        OperationPhase::Cancelled,
    ] {
        let prev = OperationStatus {
            phase: Some(phase),
            ..created.clone()
        };
        let p = plan(&op, &prev, &world(T0 + 99_999));
        assert_eq!(
            (p.step, p.changed, p.outcome),
            (Step::Done, false, None),
            "{phase}"
        );
    }
    let mut deleting = op.clone();
    deleting.deleting = true;
    assert_eq!(
        plan(&deleting, &created, &world(T0)).step,
        Step::DeleteChildren
    );
}

#[test]
fn timeouts_stop_what_the_engine_can_stop() {
    // A Job past its deadline is deleted with its pods.
    let op = valid(&job_op());
    let mut w = world(T0 + 10 * 60);
    w.children.jobs = vec![job_child(json!({"active": 1}))];
    let prev = OperationStatus {
        phase: Some(OperationPhase::Running),
        started_at: Some(at(T0)),
        child_ref: Some(Child::Job(w.children.jobs[0].clone()).child_ref()),
        ..OperationStatus::default()
    };
    let p = plan(&op, &prev, &w);
    assert_eq!(p.status.reason.as_deref(), Some(reasons::TIMEOUT));
    assert!(
        matches!(&p.step, Step::StopChild(Stop::Delete(refs)) if refs[0].name == child_name(UID))
    );
    assert_eq!(p.outcome, Some(Outcome::Failed));

    // A Velero backup in progress cannot be stopped: Failed, and the message says so.
    let op = valid(&backup_op());
    let mut w = world(T0 + 30 * 60);
    w.children.backups = vec![backup_child(json!({"phase": "InProgress"}))];
    let prev = OperationStatus {
        started_at: Some(at(T0)),
        child_ref: Some(Child::Backup(w.children.backups[0].clone()).child_ref()),
        ..prev
    };
    let p = plan(&op, &prev, &w);
    assert_eq!(p.status.reason.as_deref(), Some(reasons::TIMEOUT));
    assert_eq!(p.step, Step::Done);
    let message = p.status.message.unwrap();
    assert!(
        message.contains("timeout 1800s") && message.contains("Velero cannot stop"),
        "{message}"
    );

    // Final words that arrive with the deadline still win.
    w.children.backups = vec![backup_child(json!({"phase": "Completed"}))];
    assert_eq!(
        plan(&op, &prev, &w).status.phase,
        Some(OperationPhase::Succeeded)
    );
}

#[test]
fn snapshots_time_out_with_their_errors_and_are_deleted() {
    let op = valid(&operation(
        "snap",
        OperationType::Backup,
        "backup.snapshot",
        json!({}),
    ));
    let mut w = world(T0);
    w.pvcs = vec!["db".into(), "data".into()];
    let accepted = plan(&op, &OperationStatus::default(), &w).status;
    let p = plan(&op, &accepted, &w);
    let Step::CreateChildren(children) = &p.step else {
        panic!("create");
    };
    let names: Vec<String> = children.iter().map(|c| c.child_ref().name).collect();
    assert_eq!(
        names,
        ["op-6b62a1f0c3d4-data", "op-6b62a1f0c3d4-db"],
        "one per PVC, sorted"
    );
    assert_eq!(
        p.status.outputs[snapshot::OUTPUT_SNAPSHOTS],
        "op-6b62a1f0c3d4-data,op-6b62a1f0c3d4-db"
    );
    let created = p.status;
    let snap = |name: &str, status: serde_json::Value| {
        let mut vs = VolumeSnapshot::new(name, Default::default());
        vs.status = serde_json::from_value(status).unwrap();
        vs
    };
    w.children.snapshots = vec![
        snap("op-6b62a1f0c3d4-data", json!({"readyToUse": true})),
        snap(
            "op-6b62a1f0c3d4-db",
            json!({"readyToUse": false, "error": {"message": "quota exceeded"}}),
        ),
    ];
    let p = plan(&op, &created, &w);
    assert_eq!(
        p.status.phase,
        Some(OperationPhase::Running),
        "an error alone is not terminal"
    );
    w.now = at(T0 + 15 * 60);
    let p = plan(&op, &p.status, &w);
    assert_eq!(p.status.reason.as_deref(), Some(reasons::SNAPSHOT_TIMEOUT));
    assert!(
        p.status
            .message
            .as_ref()
            .unwrap()
            .contains("quota exceeded")
    );
    assert!(matches!(&p.step, Step::StopChild(Stop::Delete(refs)) if refs.len() == 2));

    // No PVC at all: nothing to snapshot.
    let mut w = world(T0);
    w.pvcs.clear();
    let p = plan(&op, &accepted, &w);
    assert_eq!(p.status.reason.as_deref(), Some(reasons::SNAPSHOT_FAILED));
    assert!(
        p.status
            .message
            .unwrap()
            .contains("app.kubernetes.io/instance=app")
    );
}

#[test]
fn cancel_before_anything_started_cancels_at_once() {
    for blocked in [false, true] {
        let mut op = backup_op();
        op.spec.cancel = true;
        op.metadata.generation = Some(2);
        let mut w = world(T0);
        w.namespace.managed = !blocked;
        let p = plan(&valid(&op), &OperationStatus::default(), &w);
        assert_eq!(p.status.phase, Some(OperationPhase::Cancelled));
        assert_eq!(p.step, Step::Done);
        assert_eq!(p.outcome, Some(Outcome::Cancelled));
        assert_eq!(p.transitions[0].kind, events::OPERATION_CANCELLED);
    }
}

#[test]
fn cancel_stops_a_workflow_by_terminating_it() {
    let op = operation(
        "mig",
        OperationType::Migration,
        "migration.workflow",
        json!({"workflowTemplate": "migrate"}),
    );
    let mut d = Driver::new(&op);
    let mut w = world(T0);
    d.step(&w);
    let Step::CreateChildren(children) = d.step(&w) else {
        panic!("create");
    };
    let Child::Workflow(wf) = &children[0] else {
        panic!("workflow");
    };
    assert_eq!(wf.spec.active_deadline_seconds, Some(3600));
    assert_eq!(wf.metadata.owner_references.as_ref().unwrap()[0].uid, UID);
    let mut running = wf.clone();
    running.status =
        Some(serde_json::from_value::<WorkflowStatus>(json!({"phase": "Running"})).unwrap());
    w.children.workflows = vec![running];
    d.step(&w);
    assert_eq!(d.phase(), OperationPhase::Running);
    d.op.cancel = true;
    let Step::StopChild(Stop::TerminateWorkflow(r)) = d.step(&w) else {
        panic!("terminate");
    };
    assert_eq!(r.name, child_name(UID));
    assert_eq!(d.phase(), OperationPhase::Cancelled);
    assert_eq!(
        d.kinds(),
        [
            events::OPERATION_ACCEPTED,
            events::OPERATION_RUNNING,
            events::OPERATION_CANCELLED
        ]
    );
    assert_eq!(d.outcomes, [Outcome::Cancelled]);
}

#[test]
fn cancel_of_a_backup_in_progress_is_said_and_the_backup_finishes() {
    let mut d = Driver::new(&backup_op());
    let mut w = world(T0);
    d.step(&w);
    d.step(&w);
    w.children.backups = vec![backup_child(json!({"phase": "InProgress"}))];
    d.step(&w);
    d.op.cancel = true;
    assert!(matches!(d.step(&w), Step::Wait { .. }));
    assert_eq!(d.phase(), OperationPhase::Running);
    let c = find_condition(&d.status.conditions, cond::CANCEL_REQUESTED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::CANCEL_NOT_SUPPORTED)
    );
    assert!(
        c.message
            .contains("Velero cannot stop a Backup in phase InProgress"),
        "{}",
        c.message
    );
    d.step(&w); // said once
    w.children.backups = vec![backup_child(json!({"phase": "Completed"}))];
    d.step(&w);
    assert_eq!(d.phase(), OperationPhase::Succeeded);
    assert_eq!(
        d.kinds(),
        [
            events::OPERATION_ACCEPTED,
            events::OPERATION_RUNNING,
            reasons::CANCEL_NOT_SUPPORTED,
            events::OPERATION_SUCCEEDED,
        ]
    );
    // A backup still New is deleted instead.
    let mut d = Driver::new(&backup_op());
    let mut w = world(T0);
    d.step(&w);
    d.step(&w);
    w.children.backups = vec![backup_child(json!({"phase": "New"}))];
    d.op.cancel = true;
    assert!(matches!(d.step(&w), Step::StopChild(Stop::Delete(_))));
    assert_eq!(d.phase(), OperationPhase::Cancelled);
}

#[test]
fn velero_losing_in_flight_work_fails_the_operation() {
    let mut d = Driver::new(&backup_op());
    let mut w = world(T0);
    d.step(&w);
    d.step(&w);
    w.children.backups = vec![backup_child(json!({"phase": "InProgress"}))];
    d.step(&w);
    w.children.backups = vec![backup_child(
        json!({"phase": "Failed", "failureReason": "found a backup with status \"InProgress\" during the server starting, mark it as \"Failed\""}),
    )];
    assert_eq!(d.step(&w), Step::Done);
    assert_eq!(d.status.reason.as_deref(), Some(reasons::ENGINE_LOST_WORK));
    assert_eq!(
        d.kinds().last().map(String::as_str),
        Some(events::OPERATION_FAILED)
    );
}

fn upgrade_world(now: i64) -> World {
    world(now)
}

#[test]
fn a_helm_upgrade_sets_the_version_and_waits_for_a_new_revision() {
    let op = operation(
        "up",
        OperationType::Upgrade,
        "upgrade.helm",
        json!({"version": "1.3.0"}),
    );
    let mut d = Driver::new(&op);
    let mut w = upgrade_world(T0);
    d.step(&w);
    let step = d.step(&w);
    assert_eq!(
        step,
        Step::PatchTarget {
            namespace: "org-a".into(),
            name: "app".into(),
            chart_version: "1.3.0".into()
        }
    );
    assert_eq!(
        d.status.upgrade,
        Some(UpgradeRecord {
            from_chart_version: Some("1.2.0".into()),
            from_revision: Some(3),
            to_chart_version: "1.3.0".into()
        })
    );
    // The instance shows the version; Flux works.
    let t = w.target.as_mut().unwrap();
    t.chart_version = "1.3.0".into();
    t.generation = 2;
    t.observed_generation = Some(2);
    t.ready = ConditionStatus::Unknown;
    t.flux_ready_reason = Some("Progressing".into());
    d.step(&w);
    assert_eq!(d.phase(), OperationPhase::Running);
    // Cancel now cannot stop Flux.
    d.op.cancel = true;
    d.step(&w);
    assert!(find_condition(&d.status.conditions, cond::CANCEL_REQUESTED).is_some());
    // Ready at a new revision of 1.3.0.
    let t = w.target.as_mut().unwrap();
    t.ready = ConditionStatus::True;
    t.release_revision = Some(4);
    t.release_chart_version = Some("1.3.0".into());
    t.flux_ready_reason = Some("UpgradeSucceeded".into());
    t.flux_last_attempted_revision = Some("1.3.0".into());
    assert_eq!(d.step(&w), Step::Done);
    assert_eq!(
        d.status.reason.as_deref(),
        Some(reasons::HELM_UPGRADE_SUCCEEDED)
    );
    assert_eq!(d.status.outputs["revision"], "4");
    assert_eq!(
        d.kinds(),
        [
            events::OPERATION_ACCEPTED,
            events::OPERATION_RUNNING,
            reasons::CANCEL_NOT_SUPPORTED,
            events::OPERATION_SUCCEEDED
        ]
    );
}

#[test]
fn a_flux_upgrade_failure_fails_with_fluxs_reason() {
    let op = operation(
        "up",
        OperationType::Upgrade,
        "upgrade.helm",
        json!({"version": "1.3.0"}),
    );
    let mut d = Driver::new(&op);
    let mut w = upgrade_world(T0);
    d.step(&w);
    d.step(&w);
    let t = w.target.as_mut().unwrap();
    t.chart_version = "1.3.0".into();
    t.ready = ConditionStatus::False;
    t.flux_ready_reason = Some("RollbackSucceeded".into());
    t.flux_ready_message = Some("Helm rollback to previous release succeeded".into());
    t.flux_last_attempted_revision = Some("1.3.0".into());
    d.step(&w);
    assert_eq!(
        d.status.reason.as_deref(),
        Some(reasons::HELM_UPGRADE_FAILED)
    );
    assert!(
        d.status
            .message
            .as_ref()
            .unwrap()
            .contains("Flux RollbackSucceeded")
    );
    assert_eq!(d.outcomes, [Outcome::Failed]);
}

#[test]
fn an_upgrade_to_the_running_version_succeeds_without_work() {
    let op = operation(
        "up",
        OperationType::Upgrade,
        "upgrade.helm",
        json!({"version": "1.2.0"}),
    );
    let mut d = Driver::new(&op);
    let w = upgrade_world(T0);
    d.step(&w);
    assert_eq!(d.step(&w), Step::Done);
    assert_eq!(d.phase(), OperationPhase::Succeeded);
    assert!(
        d.status
            .message
            .as_ref()
            .unwrap()
            .contains("nothing to upgrade")
    );
}

#[test]
fn a_hook_job_runs_first_and_its_failure_stops_before_the_upgrade() {
    let op = operation(
        "up",
        OperationType::Upgrade,
        "upgrade.helmHookJob",
        json!({"version": "1.3.0", "command": ["migrate"], "image": "tools:1"}),
    );
    let hook = |status: serde_json::Value| {
        let mut j = job_child(status);
        j.metadata.name = Some(format!("{}-hook", child_name(UID)));
        j
    };
    // Failure: no PatchTarget, HookJobFailed.
    let mut d = Driver::new(&op);
    let mut w = upgrade_world(T0);
    d.step(&w);
    let Step::CreateChildren(children) = d.step(&w) else {
        panic!("the hook Job");
    };
    assert_eq!(children[0].child_ref().name, "op-6b62a1f0c3d4-hook");
    w.children.jobs = vec![hook(
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
    )];
    assert_eq!(d.step(&w), Step::Done);
    assert_eq!(d.status.reason.as_deref(), Some(reasons::HOOK_JOB_FAILED));
    assert!(d.status.upgrade.is_none());

    // Success: then the chart version.
    let mut d = Driver::new(&op);
    let mut w = upgrade_world(T0);
    d.step(&w);
    d.step(&w);
    w.children.jobs = vec![hook(
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    )];
    assert!(
        matches!(d.step(&w), Step::PatchTarget { chart_version, .. } if chart_version == "1.3.0")
    );
    assert_eq!(d.status.outputs["hook.exitResult"], "succeeded");
    assert_eq!(d.phase(), OperationPhase::Running);
}

#[test]
fn invalid_operations_fail_once() {
    let cases = [
        (
            operation("x", OperationType::Backup, "backup.restic", json!({})),
            reasons::TEMPLATE_UNKNOWN,
            "backup.restic",
        ),
        (
            operation(
                "x",
                OperationType::Backup,
                "backup.velero",
                json!({"ttl": 5}),
            ),
            reasons::INVALID_PARAMETERS,
            "parameter ttl",
        ),
        (
            operation(
                "x",
                OperationType::Backup,
                "backup.velero",
                json!({"storageLocaton": "a"}),
            ),
            reasons::INVALID_PARAMETERS,
            "\"storageLocaton\"",
        ),
        (
            operation(
                "x",
                OperationType::RunCommand,
                "runcommand.job",
                json!({"command": "x"}),
            ),
            reasons::INVALID_PARAMETERS,
            "no image",
        ),
        (
            operation(
                "x",
                OperationType::Upgrade,
                "upgrade.helm",
                json!({"version": ">=1"}),
            ),
            reasons::INVALID_PARAMETERS,
            "exact version",
        ),
    ];
    for (op, reason, fragment) in cases {
        let invalid = validate(&op, &crate::catalog::builtin()).unwrap_err();
        assert_eq!(invalid.reason(), reason);
        assert!(invalid.to_string().contains(fragment), "{invalid}");
        let p = plan_invalid(&op, &invalid, &crate::catalog::builtin(), &at(T0));
        assert_eq!(p.status.phase, Some(OperationPhase::Failed));
        assert_eq!(p.outcome, Some(Outcome::Failed));
        assert_eq!(p.transitions[0].kind, events::OPERATION_FAILED);
        let mut again = op.clone();
        again.status = Some(p.status);
        let p = plan_invalid(&again, &invalid, &crate::catalog::builtin(), &at(T0 + 1));
        assert_eq!((p.outcome, p.changed, p.step), (None, false, Step::Done));
    }
}

#[test]
fn catalog_overrides_reach_the_operation() {
    let catalog = crate::catalog::builtin()
        .with_overrides(
            &[
                (
                    "runcommand.job".to_owned(),
                    "image: tools:9\ntimeout: 2m".to_owned(),
                ),
                (
                    "backup.velero".to_owned(),
                    "parameters: {veleroNamespace: backups, ttl: 72h}".to_owned(),
                ),
            ]
            .into(),
        )
        .unwrap();
    let mut op = job_op();
    op.spec.parameters = Some(json!({"command": "true"}).as_object().cloned().unwrap());
    let v = validate(&op, &catalog).unwrap();
    assert_eq!(v.timeout, Duration::from_secs(120));
    let EngineParams::Job(p) = &v.params else {
        panic!("job");
    };
    assert_eq!(p.image, "tools:9");
    // spec.timeout wins over the catalog.
    op.spec.timeout = Some(vworkspace_api::GoDuration::from_secs(30));
    assert_eq!(
        validate(&op, &catalog).unwrap().timeout,
        Duration::from_secs(30)
    );
    // Defaults under spec.parameters, key by key.
    let mut b = backup_op();
    b.spec.parameters = Some(json!({"ttl": "24h"}).as_object().cloned().unwrap());
    let v = validate(&b, &catalog).unwrap();
    assert_eq!(v.foreign_namespace(), Some("backups"));
    let EngineParams::VeleroBackup(p) = &v.params else {
        panic!("velero");
    };
    assert_eq!(p.ttl.as_deref(), Some("24h"));
    assert!(v.needs_finalizer());
}

#[test]
fn the_engine_check_names_the_kinds_it_needs() {
    let up = valid(&operation(
        "up",
        OperationType::Upgrade,
        "upgrade.helm",
        json!({"version": "1.3.0"}),
    ));
    let kinds: Vec<String> = up
        .required_kinds()
        .iter()
        .map(|k| format!("{}/{}", k.api_version(), k.kind))
        .collect();
    assert_eq!(kinds, ["helm.toolkit.fluxcd.io/v2/HelmRelease"]);
    let mut w = world(T0);
    w.engine_installed = false;
    let p = plan(&up, &OperationStatus::default(), &w);
    assert!(
        p.status
            .message
            .unwrap()
            .contains("helm.toolkit.fluxcd.io/v2 HelmRelease")
    );
    assert_eq!(valid(&backup_op()).required_kinds()[0].kind, "Backup");
}

#[test]
fn a_child_create_rejection_fails_with_the_servers_words() {
    let op = valid(&job_op());
    let w = world(T0);
    let accepted = plan(&op, &OperationStatus::default(), &w).status;
    let p = plan_child_create_failed(
        &op,
        &accepted,
        "admission webhook denied: image not allowed",
        &w.now,
    );
    assert_eq!(
        p.status.reason.as_deref(),
        Some(reasons::CHILD_CREATE_FAILED)
    );
    assert!(p.status.message.unwrap().contains("image not allowed"));
    assert_eq!(p.outcome, Some(Outcome::Failed));
}

#[test]
fn views_read_the_objects() {
    let mut ns = Namespace::default();
    ns.metadata.labels = Some(
        [(
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        )]
        .into(),
    );
    ns.metadata.annotations = Some(
        [(
            labels::ALLOWED_OPERATION_TEMPLATES.to_owned(),
            "backup.velero, upgrade.helm".to_owned(),
        )]
        .into(),
    );
    let view = NamespaceView::of(&ns);
    assert!(view.managed);
    assert!(view.allowed_templates.contains("upgrade.helm"));
    assert!(!NamespaceView::of(&Namespace::default()).managed);

    let instance: ApplicationInstance = serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": "app", "namespace": "org-a", "generation": 2},
        "spec": {"chart": {"repository": "https://charts.example.com", "name": "app", "version": "1.3.0"}},
        "status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "HelmReleaseReady", "message": "ok", "lastTransitionTime": "2026-05-28T10:00:00Z"}],
            "helmRelease": {"name": "app", "revision": 4, "chartVersion": "1.3.0"}
        }
    }))
    .unwrap();
    let t = TargetView::of(&instance, None);
    assert_eq!(t.ready, ConditionStatus::True);
    assert_eq!((t.generation, t.observed_generation), (2, Some(2)));
    assert_eq!(
        (t.release_revision, t.release_chart_version.as_deref()),
        (Some(4), Some("1.3.0"))
    );
    assert_eq!(t.release_name, "app");
}

#[test]
fn a_volsync_deadline_after_a_failed_mover_says_so_and_deletes_the_source() {
    let op = valid(&operation(
        "vs",
        OperationType::Backup,
        "backup.volsync",
        json!({"sourcePVC": "data", "restic": {"repository": "restic-secret"}}),
    ));
    let w = world(T0);
    let accepted = plan(&op, &OperationStatus::default(), &w).status;
    let p = plan(&op, &accepted, &w);
    let Step::CreateChildren(children) = &p.step else {
        panic!("create");
    };
    let Child::ReplicationSource(rs) = &children[0] else {
        panic!("a ReplicationSource");
    };
    assert_eq!(
        rs.spec.trigger.as_ref().and_then(|t| t.manual.as_deref()),
        Some("op-6b62a1f0c3d4")
    );
    let mut failing = rs.clone();
    failing.status = serde_json::from_value(
        json!({"latestMoverStatus": {"result": "Failed", "logs": "repository locked"}}),
    )
    .unwrap();
    let mut w = world(T0 + 5);
    w.children.replication_sources = vec![failing.clone()];
    let running = plan(&op, &p.status, &w);
    assert_eq!(running.status.phase, Some(OperationPhase::Running));
    w.now = at(T0 + 30 * 60);
    let late = plan(&op, &running.status, &w);
    assert_eq!(
        late.status.reason.as_deref(),
        Some(reasons::VOLSYNC_SYNC_FAILED)
    );
    assert!(late.status.message.unwrap().contains("repository locked"));
    assert!(
        matches!(&late.step, Step::StopChild(Stop::Delete(refs)) if refs[0].kind == "ReplicationSource")
    );
    // The sync completing is success, with VolSync's numbers in the outputs.
    let mut done = failing;
    done.status = serde_json::from_value(
        json!({"lastManualSync": "op-6b62a1f0c3d4", "lastSyncDuration": "42s"}),
    )
    .unwrap();
    w.children.replication_sources = vec![done];
    w.now = at(T0 + 60);
    let ok = plan(&op, &running.status, &w);
    assert_eq!(
        ok.status.reason.as_deref(),
        Some(reasons::VOLSYNC_SYNC_COMPLETED)
    );
    assert_eq!(ok.status.outputs["lastSyncDuration"], "42s");
}

#[test]
fn a_failed_reconcile_sets_reconciling_with_its_category_until_one_succeeds() {
    use vworkspace_api::conditions::errors;
    let mut op = backup_op();
    let mut d = Driver::new(&op);
    d.step(&world(T0));
    assert_eq!(d.phase(), OperationPhase::Accepted);
    op.status = Some(d.status.clone());

    // The create step fails: the report keeps the phase and announces the category once.
    let report = plan_error(
        &op,
        errors::APPLY_FAILED,
        "adding the finalizer: denied",
        &at(T0 + 1),
    );
    assert!(report.changed);
    assert_eq!(report.outcome, None);
    assert_eq!(report.status.phase, Some(OperationPhase::Accepted));
    let c = find_condition(&report.status.conditions, cond::RECONCILING).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", errors::APPLY_FAILED)
    );
    assert_eq!(c.message, "adding the finalizer: denied");
    let kinds: Vec<&str> = report.transitions.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(kinds, [errors::APPLY_FAILED]);
    assert_eq!(report.transitions[0].event_type, EventType::Warning);
    op.status = Some(report.status.clone());

    // The retry fails the same way: nothing new to announce.
    let again = plan_error(
        &op,
        errors::APPLY_FAILED,
        "adding the finalizer: denied",
        &at(T0 + 5),
    );
    assert!(again.transitions.is_empty(), "{:?}", again.transitions);
    // Another category is a new Warning.
    let other = plan_error(
        &op,
        errors::STATUS_WRITE_FAILED,
        "writing the status",
        &at(T0 + 6),
    );
    assert_eq!(other.transitions.len(), 1);
    assert_eq!(other.transitions[0].kind, errors::STATUS_WRITE_FAILED);

    // The next successful reconcile clears it and goes on as if nothing happened.
    d.status = report.status;
    let step = d.step(&world(T0 + 10));
    assert!(matches!(step, Step::CreateChildren(_)), "{step:?}");
    let c = find_condition(&d.status.conditions, cond::RECONCILING).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::RECONCILE_SUCCEEDED)
    );
    // Clearing announces nothing: the driver saw only the acceptance.
    assert_eq!(d.kinds(), [events::OPERATION_ACCEPTED]);

    // A terminal Operation with an error left on it is cleared too, and stays terminal.
    let mut done = d.status.clone();
    done.phase = Some(OperationPhase::Succeeded);
    let mut term = op.clone();
    term.status = Some(done.clone());
    let failed = plan_error(&term, errors::READ_FAILED, "reading", &at(T0 + 20));
    let cleared = plan(&valid(&term), &failed.status, &world(T0 + 21));
    assert!(cleared.changed);
    assert_eq!(cleared.step, Step::Done);
    assert_eq!(cleared.outcome, None);
    assert_eq!(cleared.status.phase, Some(OperationPhase::Succeeded));
    let c = find_condition(&cleared.status.conditions, cond::RECONCILING).unwrap();
    assert_eq!(c.status, "False");
    // ... and an Operation without errors is not touched by that rule.
    assert!(!plan(&valid(&term), &done, &world(T0 + 22)).changed);
}

#[test]
fn the_catalog_revision_is_fixed_by_the_plan_that_hands_out_work() {
    let catalog = |rv: &str, image: &str| {
        crate::catalog::builtin()
            .with_overrides(&[("runcommand.job".to_owned(), format!("image: {image}"))].into())
            .unwrap()
            .at_revision(rv)
    };
    assert_eq!(
        crate::catalog::builtin().revision(),
        crate::catalog::BUILTIN_REVISION
    );
    let mut op = job_op();
    op.spec.parameters = Some(json!({"command": "true"}).as_object().cloned().unwrap());
    let under = |c: &Catalog| validate(&op, c).unwrap();
    // First look under revision 10: accepted, recorded.
    let p = plan(
        &under(&catalog("10", "a:1")),
        &OperationStatus::default(),
        &world(T0),
    );
    assert_eq!(p.status.phase, Some(OperationPhase::Accepted));
    assert_eq!(p.status.catalog_revision.as_deref(), Some("10"));
    // The catalog changed before the child was created: the plan that creates it
    // records (and uses) the newer one.
    let p = plan(&under(&catalog("12", "b:2")), &p.status, &world(T0 + 1));
    let Step::CreateChildren(children) = &p.step else {
        panic!("{:?}", p.step);
    };
    let Child::Job(job) = &children[0] else {
        panic!("job");
    };
    let image = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers[0].image.clone());
    assert_eq!(image, Some(Some("b:2".to_owned())));
    assert_eq!(p.status.catalog_revision.as_deref(), Some("12"));
    // Once started, a later catalog changes the record no more.
    let mut started = p.status.clone();
    started.child_ref = started.child_ref.or_else(|| {
        Some(ChildRef {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: child_name(UID),
            namespace: Some("org-a".into()),
        })
    });
    let mut w = world(T0 + 2);
    w.children.jobs = vec![job_child(json!({"active": 1}))];
    let p = plan(&under(&catalog("15", "c:3")), &started, &w);
    assert_eq!(p.status.catalog_revision.as_deref(), Some("12"));
}

#[test]
fn a_backup_is_accepted_and_handed_out_in_one_plan_with_the_two_step_ids() {
    let op = valid(&backup_op());
    let w = world(T0);
    let pending = OperationStatus::default();
    let chained = plan_through_acceptance(&op, &pending, &w);

    // What two reconciles make of it, one after the other.
    let claim = plan(&op, &pending, &w);
    let hand_out = plan(&op, &claim.status, &w);
    assert!(matches!(hand_out.step, Step::CreateChildren(_)));

    assert_eq!(chained.plan.step, hand_out.step, "the hand-out's step");
    assert_eq!(
        chained.plan.status, hand_out.status,
        "the hand-out's status"
    );
    assert_eq!(chained.plan.status.phase, Some(OperationPhase::Accepted));
    assert!(chained.plan.status.child_ref.is_some());
    assert!(chained.plan.changed);
    assert_eq!(chained.plan.outcome, None);
    let kinds: Vec<&str> = chained
        .plan
        .transitions
        .iter()
        .map(|t| t.kind.as_str())
        .collect();
    assert_eq!(kinds, [events::OPERATION_ACCEPTED]);
    assert_eq!(
        chained.plan.transitions, claim.transitions,
        "the same records, so the same event ids, as when accepted alone"
    );
    assert_eq!(
        chained.claim.as_ref(),
        Some(&claim),
        "the acceptance alone, for a failed hand-out"
    );
}

#[test]
fn only_a_non_mutating_acceptance_is_carried_through() {
    let w = world(T0);
    let pending = OperationStatus::default();
    // A mutating Operation claims first; the hand-out waits for the next reconcile.
    let upgrade = valid(&operation(
        "up",
        OperationType::Upgrade,
        "upgrade.helm",
        json!({"version": "1.3.0"}),
    ));
    let chained = plan_through_acceptance(&upgrade, &pending, &w);
    assert_eq!(chained.plan, plan(&upgrade, &pending, &w));
    assert_eq!(chained.claim, None);
    assert_eq!(
        chained.plan.step,
        Step::Wait {
            requeue_after: Some(Duration::ZERO)
        }
    );

    // A Backup that is blocked, already accepted, or running: `plan` unchanged.
    let backup = valid(&backup_op());
    let mut blocked_world = world(T0);
    blocked_world.target = None;
    let blocked = plan_through_acceptance(&backup, &pending, &blocked_world);
    assert_eq!(blocked.plan, plan(&backup, &pending, &blocked_world));
    assert_eq!(blocked.plan.status.phase, Some(OperationPhase::Blocked));
    assert_eq!(blocked.claim, None);
    let accepted = plan(&backup, &pending, &w).status;
    let again = plan_through_acceptance(&backup, &accepted, &w);
    assert_eq!(again.plan, plan(&backup, &accepted, &w));
    assert_eq!(again.claim, None);
    let started = plan(&backup, &accepted, &w).status;
    let mut running = world(T0 + 5);
    running.children.backups = vec![backup_child(json!({"phase": "InProgress"}))];
    let follow = plan_through_acceptance(&backup, &started, &running);
    assert_eq!(follow.plan, plan(&backup, &started, &running));
    assert_eq!(follow.plan.status.phase, Some(OperationPhase::Running));
}

#[test]
fn a_backup_that_ends_at_its_hand_out_announces_acceptance_and_end_at_once() {
    // A snapshot Backup of an application without PVCs fails where it would create.
    let op = valid(&operation(
        "snap",
        OperationType::Backup,
        "backup.snapshot",
        json!({}),
    ));
    let mut w = world(T0);
    w.pvcs = Vec::new();
    let chained = plan_through_acceptance(&op, &OperationStatus::default(), &w);
    assert_eq!(chained.plan.step, Step::Done);
    assert_eq!(chained.plan.status.phase, Some(OperationPhase::Failed));
    assert_eq!(chained.plan.outcome, Some(Outcome::Failed), "counted once");
    let kinds: Vec<&str> = chained
        .plan
        .transitions
        .iter()
        .map(|t| t.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        [events::OPERATION_ACCEPTED, events::OPERATION_FAILED]
    );
    assert_eq!(chained.claim, None, "nothing is handed out");
}
