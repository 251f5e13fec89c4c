//! Stopping (drain bound, abort), error reports, and the readiness of several controllers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use futures::FutureExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::CustomResource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use vworkspace_runtime::{
    Controller, ErrorReport, Gate, Manager, RuntimeMetrics, Shutdown, StopReason, Stopped,
    SyncState,
};
use vworkspace_testkit::env::TestEnv;

use super::{Ctx, DEADLINE, Harness, Step, eventually, labelled, reconcile};

/// A kind whose CRD no test installs: a required watch of it never syncs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug)]
#[kube(
    group = "absent.runtime.test.vworkspace.io",
    version = "v1",
    kind = "Ghost",
    namespaced,
    schema = "disabled"
)]
pub struct GhostSpec {
    target: String,
}

#[tokio::test]
async fn a_drain_past_its_bound_cuts_the_reconcile_off() -> Result<()> {
    const DRAIN: Duration = Duration::from_millis(500);
    let gate = Gate::closed();
    let mut h = Harness::start_with(
        "rt-drain-bound",
        Ctx {
            gate: Some(gate.clone()),
            ..Ctx::default()
        },
        DRAIN,
        |c, _| c,
    )
    .await?;
    h.create_configmap("stuck").await?;
    h.eventually("a reconcile held at the gate", |_| {
        (gate.waiting() == 1).then_some(())
    })
    .await;
    let signalled = Instant::now();
    h.signal_stop();
    let stopped = h.stopped().await?;
    let took = signalled.elapsed();
    assert_eq!(
        stopped,
        Stopped {
            reason: StopReason::DrainTimedOut,
            cut_off: 1
        }
    );
    assert!(
        took >= DRAIN,
        "returned after {took:?}, before the drain bound"
    );
    // The reconcile never got past the gate: it was dropped, not finished.
    assert_eq!(gate.waiting(), 0);
    assert!(h.ctx.seen().is_empty());
    assert_eq!(h.reconciles("success"), Some(0.0));
    assert_eq!(
        h.controller_metric("controller_runtime_active_workers", &[]),
        Some(0.0)
    );
    Ok(())
}

#[tokio::test]
async fn abort_cuts_an_in_flight_reconcile_at_once() -> Result<()> {
    let gate = Gate::closed();
    // A drain bound far beyond the test's deadline: only the abort can end the run in time.
    let mut h = Harness::start_with(
        "rt-abort",
        Ctx {
            gate: Some(gate.clone()),
            ..Ctx::default()
        },
        Duration::from_secs(3600),
        |c, _| c,
    )
    .await?;
    h.create_configmap("held").await?;
    h.create_configmap("queued").await?;
    h.eventually("a reconcile held at the gate, one waiting", |h| {
        (gate.waiting() == 1 && h.queue_metric("workqueue_depth") == Some(1.0)).then_some(())
    })
    .await;
    // A graceful stop first: it would wait for the held reconcile...
    h.signal_stop();
    // ...until the abort (leadership lost) cuts it off.
    h.signal_abort();
    let stopped = h.stopped().await?;
    assert_eq!(
        stopped,
        Stopped {
            reason: StopReason::Aborted,
            cut_off: 1
        }
    );
    assert_eq!(gate.waiting(), 0);
    assert!(h.ctx.seen().is_empty(), "{:?}", h.ctx.seen());
    assert_eq!(h.reconciles("success"), Some(0.0));
    assert_eq!(
        h.controller_metric("controller_runtime_active_workers", &[]),
        Some(0.0)
    );
    Ok(())
}

type Reports = Arc<Mutex<Vec<(String, ErrorReport)>>>;

#[tokio::test]
async fn failed_reconciles_are_reported_before_the_key_is_done() -> Result<()> {
    let reports: Reports = Arc::default();
    let reporter_gate = Gate::closed();
    let ctx = Ctx::default();
    ctx.script("broken", [Step::FailApply]);
    ctx.script("invalid", [Step::FailInvalid]);
    ctx.script("panicky", [Step::Panic]);
    // Two workers: one is free while the other waits in the reporter.
    let h = Harness::start("rt-report", ctx, |c, _| {
        let reports = Arc::clone(&reports);
        let gate = reporter_gate.clone();
        c.max_concurrent_reconciles(2)
            .report_errors(move |cm: Arc<ConfigMap>, report| {
                let reports = Arc::clone(&reports);
                let gate = gate.clone();
                async move {
                    gate.pass().await;
                    reports
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((cm.metadata.name.clone().unwrap_or_default(), report));
                }
                .boxed()
            })
    })
    .await?;
    let reported = || {
        reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    };

    // The reporter of the first failure is held: the key stays "processing", so its
    // retry (and an update) wait in the queue instead of starting a second reconcile.
    h.create_configmap("broken").await?;
    h.eventually("the reporter of the failure held", |_| {
        (reporter_gate.waiting() == 1).then_some(())
    })
    .await;
    h.configmaps
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": { "k": "v2" } })),
        )
        .await?;
    h.eventually("the retry waiting behind the report", |h| {
        (h.queue_metric("workqueue_depth") == Some(1.0)).then_some(())
    })
    .await;
    // The free worker takes keys in order: had "broken" been handed out again, it would
    // have been reconciled before "other".
    h.create_configmap("other").await?;
    h.eventually("the free worker reconciling other", |h| {
        (h.ctx.reconciles_of("other") == 1).then_some(())
    })
    .await;
    assert_eq!(h.ctx.reconciles_of("broken"), 1);
    assert_eq!(reporter_gate.waiting(), 1);
    reporter_gate.open();
    h.eventually("the retry after the report", |h| {
        (h.ctx.reconciles_of("broken") == 2).then_some(())
    })
    .await;

    h.create_configmap("invalid").await?;
    h.eventually("the terminal error reported", |_| {
        (reported().len() == 2).then_some(())
    })
    .await;
    h.create_configmap("panicky").await?;
    h.eventually("the panic reported and retried", |h| {
        (reported().len() == 3 && h.ctx.reconciles_of("panicky") == 2).then_some(())
    })
    .await;

    // A failing cleanup has no object to report on.
    h.create_configmap("gone").await?;
    h.eventually("the first reconcile of gone", |h| {
        (h.ctx.reconciles_of("gone") == 1).then_some(())
    })
    .await;
    h.ctx.script("gone", [Step::Fail]);
    h.configmaps
        .delete("gone", &DeleteParams::default())
        .await?;
    h.eventually("the failed cleanup retried", |h| {
        (h.ctx
            .seen()
            .iter()
            .filter(|s| s.name == "gone" && s.cleanup)
            .count()
            == 2)
            .then_some(())
    })
    .await;

    assert_eq!(
        reported(),
        [
            (
                "broken".to_owned(),
                ErrorReport {
                    category: "ApplyFailed",
                    message: "applying child web: server rejected the patch: quota exceeded"
                        .to_owned(),
                    terminal: false,
                }
            ),
            (
                "invalid".to_owned(),
                ErrorReport {
                    category: "Invalid",
                    message: "the spec is invalid".to_owned(),
                    terminal: true,
                }
            ),
            (
                "panicky".to_owned(),
                ErrorReport {
                    category: "Panic",
                    message: "scripted panic".to_owned(),
                    terminal: false,
                }
            ),
        ]
    );
    // The outcome observers saw the same failures, with the runtime's own labels.
    assert_eq!(h.reconciles("error"), Some(4.0));
    assert_eq!(
        h.controller_metric("controller_runtime_terminal_reconcile_errors_total", &[]),
        Some(1.0)
    );
    h.stop().await
}

#[tokio::test]
async fn readiness_lists_every_controller_and_what_it_waits_for() -> Result<()> {
    let env = TestEnv::shared().await?;
    let namespace = env.fresh_namespace("rt-ready").await?;
    let mut registry = Registry::default();
    let metrics = RuntimeMetrics::register(&mut registry);
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &namespace);
    let ghosts: Api<Ghost> = Api::namespaced(env.client.clone(), &namespace);

    let mut manager = Manager::new();
    manager.add(
        Controller::new("rt-ready-a", configmaps.clone(), &metrics).watcher_config(labelled()),
        reconcile,
        Arc::new(Ctx::default()),
    );
    manager.add(
        Controller::new("rt-ready-b", configmaps, &metrics)
            .watcher_config(labelled())
            .watches_with(ghosts, watcher::Config::default(), |_: &Ghost| {
                Vec::<kube::runtime::reflector::ObjectRef<ConfigMap>>::new()
            }),
        reconcile,
        Arc::new(Ctx::default()),
    );
    let readiness = manager.readiness();
    // Before anything runs, every watch of both controllers is named.
    assert_eq!(
        readiness.unsynced_message().as_deref(),
        Some(
            "rt-ready-a: cache of v1 ConfigMap not synced; \
             rt-ready-b: cache of v1 ConfigMap not synced; \
             rt-ready-b: cache of absent.runtime.test.vworkspace.io/v1 Ghost not synced"
        )
    );

    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(manager.run(Shutdown::new(async move {
        let _ = stopped.await;
    })));
    eventually(
        "rt-ready-a synced",
        || {
            readiness
                .controllers()
                .iter()
                .any(|c| c.name == "rt-ready-a" && c.is_synced() && c.workers_started)
                .then_some(())
        },
        || format!("{:?}", readiness.controllers()),
    )
    .await;
    eventually(
        "rt-ready-b's ConfigMaps synced",
        || {
            (readiness.unsynced_message().as_deref()
                == Some(
                    "rt-ready-b: cache of absent.runtime.test.vworkspace.io/v1 Ghost not synced",
                ))
            .then_some(())
        },
        || format!("{:?}", readiness.controllers()),
    )
    .await;
    let states = readiness.controllers();
    assert_eq!(
        states.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["rt-ready-a", "rt-ready-b"]
    );
    assert!(!readiness.synced());
    let b = &states[1];
    assert!(!b.workers_started, "workers must wait for every cache");
    assert_eq!(
        b.watches.iter().map(|w| w.state).collect::<Vec<_>>(),
        [SyncState::Synced, SyncState::Pending]
    );
    assert_eq!(readiness.missing_message(), None);

    let _ = stop.send(());
    let stopped = tokio::time::timeout(DEADLINE, running).await??;
    assert_eq!(
        stopped,
        [
            (
                "rt-ready-a".to_owned(),
                Stopped {
                    reason: StopReason::Drained,
                    cut_off: 0
                }
            ),
            (
                "rt-ready-b".to_owned(),
                Stopped {
                    reason: StopReason::Drained,
                    cut_off: 0
                }
            ),
        ]
    );
    Ok(())
}

/// Changes the filter recognises (the controller's own writes, in the operator) cost no
/// reconcile; other changes of the same object still do. One worker and a FIFO queue make
/// "not reconciled" observable: a key enqueued before the marker would be reconciled
/// before it.
#[tokio::test]
async fn ignored_primary_changes_cost_no_reconcile() -> Result<()> {
    let h = Harness::start("rt-ignore", Ctx::default(), |c, _| {
        c.max_concurrent_reconciles(1)
            .ignore_primary_changes(|cm: &ConfigMap| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get("written-by-us"))
                    .is_some_and(|v| v == "yes")
            })
    })
    .await?;
    h.create_configmap("watched").await?;
    h.eventually("the create reconciled", |h| {
        (h.ctx.reconciles_of("watched") == 1).then_some(())
    })
    .await;
    let mark =
        |value: &str| Patch::Merge(serde_json::json!({ "data": { "written-by-us": value } }));
    h.configmaps
        .patch("watched", &PatchParams::default(), &mark("yes"))
        .await?;
    h.create_configmap("marker").await?;
    h.eventually("the marker reconciled", |h| {
        (h.ctx.reconciles_of("marker") == 1).then_some(())
    })
    .await;
    assert_eq!(
        h.ctx.reconciles_of("watched"),
        1,
        "the ignored change was not reconciled"
    );
    // A change the filter does not recognise is reconciled as usual.
    h.configmaps
        .patch("watched", &PatchParams::default(), &mark("no"))
        .await?;
    h.eventually("the next change reconciled", |h| {
        (h.ctx.reconciles_of("watched") == 2).then_some(())
    })
    .await;
    // Deleting is never ignored, whatever the object says.
    h.configmaps
        .patch("watched", &PatchParams::default(), &mark("yes"))
        .await?;
    h.configmaps
        .delete("watched", &DeleteParams::default())
        .await?;
    h.eventually("the deletion reconciled", |h| {
        (h.ctx.reconciles_of("watched") == 3).then_some(())
    })
    .await;
    h.stop().await
}

/// `notify_changes` tells another controller of every change of the primary — an ignored
/// one, a deletion — and only once this controller's cache shows it: what the hook reads
/// from the store is the state the change produced.
#[tokio::test]
async fn change_notices_come_after_the_cache_and_include_ignored_changes() -> Result<()> {
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: Seen = Arc::default();
    let h = Harness::start("rt-notify", Ctx::default(), {
        let seen = Arc::clone(&seen);
        move |c, _| {
            let store = c.store();
            c.ignore_primary_changes(|cm: &ConfigMap| {
                cm.data
                    .as_ref()
                    .is_some_and(|d| d.contains_key("written-by-us"))
            })
            .notify_changes(move |key| {
                let version = store
                    .get(key)
                    .and_then(|cm| cm.metadata.resource_version.clone());
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((key.name.clone(), version));
            })
        }
    })
    .await?;
    let seen_versions = |name: &str| -> Vec<Option<String>> {
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let created = h.create_configmap("told").await?;
    h.eventually("the create noticed", |_| {
        (seen_versions("told") == vec![created.metadata.resource_version.clone()]).then_some(())
    })
    .await;
    // A change the controller ignores is still noticed, with the cache already holding it.
    let patched = h
        .configmaps
        .patch(
            "told",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": { "written-by-us": "yes" } })),
        )
        .await?;
    h.eventually("the ignored change noticed", |_| {
        (seen_versions("told").last() == Some(&patched.metadata.resource_version)).then_some(())
    })
    .await;
    assert_eq!(
        h.ctx.reconciles_of("told"),
        1,
        "the change itself was ignored"
    );
    // A deletion: noticed once the cache no longer holds the object.
    h.configmaps
        .delete("told", &DeleteParams::default())
        .await?;
    h.eventually("the deletion noticed", |_| {
        (seen_versions("told").last() == Some(&None)).then_some(())
    })
    .await;
    h.stop().await
}
