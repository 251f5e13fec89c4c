//! End-to-end: Operations survive an operator that is SIGKILLed again and again.
//!
//! 50 Velero Backup Operations run (simulated Velero, a few at a time, some failing)
//! while the built operator binary is SIGKILLed at least 10 times and restarted. It runs
//! in Pull mode against the reference control plane in this process (its HTTP server and
//! SQLite store), so what reaches the control plane can be counted exactly: the store
//! keeps each `event_id` once, and the restarted operator replays from status what the
//! killed one had not delivered. At the end:
//!
//! * every Operation is terminal, with exactly one child Backup;
//! * exactly one terminal Event on each, and exactly one terminal audit event row per
//!   Operation in SQLite (a second one would have a second id; a lost one was not
//!   replayed);
//! * the last operator's `operation_total` equals, label by label, the outcomes it
//!   wrote (the counter is per process: every earlier process was killed with its
//!   counts).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vworkspace_api::AuditEvent;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::labels;
use vworkspace_api::operation::{Operation, OperationPhase};
use vworkspace_api::thirdparty::Backup;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::engine::{Control, SimOptions};
use vworkspace_testkit::sim::flux::FluxSimulator;
use vworkspace_testkit::sim::velero::{VeleroOptions, VeleroSimulator};

mod common;

use common::controlplane::{ControlPlane, create_pull_cluster};
use common::{condition, install_crds, spawn_operator};

const LIMIT: Duration = Duration::from_secs(120);
/// Operations running while the operator is killed.
const OPERATIONS: usize = 50;
/// SIGKILLs, at least.
const KILLS: usize = 10;
const TERMINAL_KINDS: [&str; 3] = [
    "OperationSucceeded",
    "OperationFailed",
    "OperationCancelled",
];

fn phase(op: &Operation) -> Option<OperationPhase> {
    op.status.as_ref()?.phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_end_exactly_once_across_repeated_sigkills() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("opkill").await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": { "annotations": { labels::ALLOWED_OPERATION_TEMPLATES: "backup.velero" } }
            })),
        )
        .await?;
    let dir = std::env::temp_dir().join(format!("vws-opkill-{ns}"));
    let mut cp = ControlPlane::start(&dir).await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    create_pull_cluster(&env, &ns, &cp.url(), &cp.token, 5000, 100).await?;
    // One identity across restarts: each new process takes the Lease back at once.
    let identity = format!("op-{}", unique_suffix());
    let flags = ["--job-poll-wait=2s", "--cluster-resync=1s"];
    let mut op = spawn_operator(&env, &ns, &identity, &flags)?;

    let instances: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    instances
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1",
                "kind": "ApplicationInstance",
                "metadata": { "name": "app" },
                "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } }
            }))?,
        )
        .await?;
    poll_until(LIMIT, "app Ready", || async {
        let obj = instances.get("app").await.ok()?;
        condition(&obj, "Ready")
            .is_some_and(|c| c.0 == "True")
            .then_some(())
    })
    .await?;

    // Velero works on a few Backups at a time, so that the run spans the kills.
    let velero_ns = env.fresh_unmanaged_namespace("velero").await?;
    let velero = VeleroSimulator::start_with(
        env.client.clone(),
        Some(&velero_ns),
        VeleroOptions {
            sim: SimOptions {
                duration: Duration::from_millis(1500),
                max_in_flight: 6,
                ..SimOptions::default()
            },
            steps: 2,
            ..VeleroOptions::default()
        },
    );
    let ops: Api<Operation> = Api::namespaced(env.client.clone(), &ns);
    for i in 0..OPERATIONS {
        let created = ops
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "vworkspace.io/v1alpha1",
                    "kind": "Operation",
                    "metadata": { "name": format!("bk-{i:02}") },
                    "spec": {
                        "type": "Backup", "template": "backup.velero", "applicationInstance": "app",
                        "parameters": { "veleroNamespace": velero_ns }
                    },
                }))?,
            )
            .await?;
        // Every fifth fails in Velero (when the override reaches the simulator before it
        // picks the Backup up; the checks below count the outcomes as they are).
        if i % 5 == 4 {
            velero.set_for_operation(
                &created.uid().context("uid")?,
                Control::fail("simulated: the backup storage location is unavailable"),
            );
        }
    }

    let terminal = || async {
        let list = ops.list(&ListParams::default()).await.ok()?;
        Some(
            list.items
                .iter()
                .filter(|o| phase(o).is_some_and(OperationPhase::is_terminal))
                .count(),
        )
    };
    // Kill as soon as the new process has made progress (one more status change of any
    // Operation), at least KILLS times, then let the last process finish the run.
    let mut kills = 0;
    let mut last_spawn = Timestamp::now();
    loop {
        let before = status_versions(&ops).await?;
        let progressed = poll_until(LIMIT, "progress under the new process", || async {
            let now = status_versions(&ops).await.ok()?;
            (now != before).then_some(())
        })
        .await;
        if terminal().await == Some(OPERATIONS) {
            break;
        }
        progressed?;
        if kills >= KILLS {
            break;
        }
        op.kill();
        kills += 1;
        // A status the killed process planned carries a time (completedAt, in seconds)
        // before the next process exists: start that one in a later second.
        let killed_at = Timestamp::now().as_second();
        poll_until(LIMIT, "the next second", || async {
            (Timestamp::now().as_second() > killed_at).then_some(())
        })
        .await?;
        last_spawn = Timestamp::now();
        op = spawn_operator(&env, &ns, &identity, &flags)?;
    }
    ensure!(kills >= KILLS, "killed {kills} times before the run ended");
    poll_until(LIMIT, "every Operation terminal", || async {
        terminal().await.filter(|&n| n == OPERATIONS)
    })
    .await?;

    let list = ops.list(&ListParams::default()).await?.items;
    ensure!(list.len() == OPERATIONS);
    let backups: Api<Backup> = Api::namespaced(env.client.clone(), &velero_ns);
    let all_events = Api::<Event>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let mut by_uid = BTreeMap::new();
    let mut outcomes_of_last: BTreeMap<&str, f64> = BTreeMap::new();
    for o in &list {
        let name = o.name_any();
        let uid = o.uid().context("uid")?;
        let status = o.status.as_ref().context("status")?;
        let outcome = match status.phase {
            Some(OperationPhase::Succeeded) => "succeeded",
            Some(OperationPhase::Failed) => "failed",
            other => anyhow::bail!("{name} ended {other:?}: {status:?}"),
        };
        let children = backups
            .list(&ListParams::default().labels(&format!("{}={uid}", labels::OPERATION_ID)))
            .await?;
        ensure!(
            children.items.len() == 1,
            "{name}: {} Backups",
            children.items.len()
        );
        let reasons: Vec<&str> = all_events
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(&uid))
            .filter_map(|e| e.reason.as_deref())
            .collect();
        let terminal_events = reasons
            .iter()
            .filter(|r| TERMINAL_KINDS.contains(r))
            .count();
        ensure!(terminal_events == 1, "{name}: events {reasons:?}");
        // Planned (and so written and counted) by the last process?
        let completed = status.completed_at.as_ref().context("completedAt")?;
        if completed.0.as_second() >= last_spawn.as_second() {
            *outcomes_of_last.entry(outcome).or_default() += 1.0;
        }
        by_uid.insert(uid, name);
    }

    let failed = list
        .iter()
        .filter(|o| phase(o) == Some(OperationPhase::Failed))
        .count();
    eprintln!(
        "{kills} SIGKILLs; {failed} of {OPERATIONS} failed in Velero; the last process wrote {outcomes_of_last:?}"
    );
    // Exactly one terminal audit event per Operation in the control plane's store (the
    // last process replays what the killed ones left undelivered).
    let timeline = poll_until(
        LIMIT,
        "every terminal outcome in the control plane",
        || async {
            let t = cp.timeline().ok()?;
            let done: BTreeSet<&str> = t
                .iter()
                .filter(|e| TERMINAL_KINDS.contains(&e.kind.as_str()))
                .filter_map(|e| e.operation_id.as_deref())
                .collect();
            by_uid
                .keys()
                .all(|u| done.contains(u.as_str()))
                .then_some(t)
        },
    )
    .await?;
    for (uid, name) in &by_uid {
        let rows: Vec<&AuditEvent> = timeline
            .iter()
            .filter(|e| e.operation_id.as_deref() == Some(uid.as_str()))
            .filter(|e| TERMINAL_KINDS.contains(&e.kind.as_str()))
            .collect();
        ensure!(rows.len() == 1, "{name}: terminal audit rows {rows:?}");
    }
    let ids: BTreeSet<&String> = timeline.iter().map(|e| &e.event_id).collect();
    ensure!(ids.len() == timeline.len(), "each event_id stored once");

    // The last process counted each outcome it wrote, once.
    let metrics = Exposition::parse(&op.metrics().await?)?;
    for outcome in ["succeeded", "failed", "cancelled", "blocked"] {
        let counted = metrics
            .value(
                "vworkspace_operator_operation_total",
                &[
                    ("type", "Backup"),
                    ("engine", "velero"),
                    ("outcome", outcome),
                ],
            )
            .unwrap_or(0.0);
        let want = outcomes_of_last.get(outcome).copied().unwrap_or(0.0);
        ensure!(
            counted == want,
            "operation_total{{outcome={outcome}}} = {counted}, the last process wrote {want}"
        );
    }

    op.ensure_running()?;
    ops.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    poll_until(LIMIT, "every Operation deleted", || async {
        ops.list(&ListParams::default())
            .await
            .ok()
            .filter(|l| l.items.is_empty())
            .map(|_| ())
    })
    .await?;
    let _ = op.terminate();
    cp.stop().await;
    Ok(())
}

/// The resourceVersion of every Operation (changes with each status write).
async fn status_versions(ops: &Api<Operation>) -> Result<BTreeMap<String, String>> {
    Ok(ops
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|o| (o.name_any(), o.resource_version().unwrap_or_default()))
        .collect())
}
