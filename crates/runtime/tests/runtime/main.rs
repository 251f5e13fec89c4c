//! The controller runtime against the real local Kubernetes: ConfigMaps are the watched
//! kind (no CRDs needed), Secrets the owned children; CRDs only where a test is about a
//! kind that comes and goes. Metrics are read the way Prometheus reads them: by encoding
//! the registry. Every wait polls with a deadline.
//!
//! * this file — one controller: queue depth, workers, retries, requeues, children,
//!   cleanup, graceful shutdown;
//! * [`lifecycle`] — drain bound, abort, error reports, readiness of several controllers;
//! * [`shared`] — two controllers on one shared watch;
//! * [`optional`] — optional watches whose CRD is installed after the start.
//!
//! Needs the shared test cluster (`cargo xtask test`, or `cargo xtask cluster up` and
//! plain `cargo test`).

mod lifecycle;
mod optional;
mod shared;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vworkspace_testkit::env::TestEnv;
use vworkspace_testkit::prom::Exposition;

use vworkspace_runtime::{
    Action, Controller, ErrorCategory, Event, Gate, ReconcileResult, RuntimeMetrics, Shutdown,
    StopReason, Stopped,
};

const LABEL: &str = "runtime.vworkspace.io/test";
const DEADLINE: Duration = Duration::from_secs(60);

/// What the scripted reconcile does for one object, one step per reconcile; `Done` once
/// the script is used up.
#[derive(Debug, Clone, Copy)]
enum Step {
    Fail,
    /// Fail with an error that has a source chain.
    FailApply,
    /// Fail with a terminal error.
    FailInvalid,
    Panic,
    Requeue,
    RequeueAfter(Duration),
}

#[derive(Debug, thiserror::Error)]
enum ScriptedError {
    #[error("scripted failure")]
    Flaky,
    #[error("applying child web")]
    Apply(#[source] ApiFailure),
    #[error("the spec is invalid")]
    Invalid,
}

/// Prints its source itself, as many error types do; the report names it once.
#[derive(Debug, thiserror::Error)]
#[error("server rejected the patch: {0}")]
struct ApiFailure(#[source] QuotaExceeded);

#[derive(Debug, thiserror::Error)]
#[error("quota exceeded")]
struct QuotaExceeded;

impl ErrorCategory for ScriptedError {
    fn category(&self) -> &'static str {
        match self {
            Self::Flaky => "Scripted",
            Self::Apply(_) => "ApplyFailed",
            Self::Invalid => "Invalid",
        }
    }
    fn is_terminal(&self) -> bool {
        matches!(self, Self::Invalid)
    }
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    cleanup: bool,
    at: Instant,
}

#[derive(Debug, Default)]
struct Ctx {
    gate: Option<Gate>,
    script: Mutex<HashMap<String, VecDeque<Step>>>,
    seen: Mutex<Vec<Seen>>,
    outcomes: Mutex<Vec<(ReconcileResult, Option<&'static str>, String)>>,
}

impl Ctx {
    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn reconciles_of(&self, name: &str) -> usize {
        self.seen().iter().filter(|s| s.name == name).count()
    }
    fn script(&self, name: &str, steps: impl IntoIterator<Item = Step>) {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), steps.into_iter().collect());
    }
}

async fn reconcile(event: Event<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ScriptedError> {
    if let Some(gate) = &ctx.gate {
        gate.pass().await;
    }
    let key = event.key();
    ctx.seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            name: key.name.clone(),
            cleanup: matches!(event, Event::Cleanup(_)),
            at: Instant::now(),
        });
    let step = ctx
        .script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(&key.name)
        .and_then(VecDeque::pop_front);
    match step {
        None => Ok(Action::Done),
        Some(Step::Fail) => Err(ScriptedError::Flaky),
        Some(Step::FailApply) => Err(ScriptedError::Apply(ApiFailure(QuotaExceeded))),
        Some(Step::FailInvalid) => Err(ScriptedError::Invalid),
        Some(Step::Panic) => panic!("scripted panic"),
        Some(Step::Requeue) => Ok(Action::Requeue),
        Some(Step::RequeueAfter(after)) => Ok(Action::RequeueAfter(after)),
    }
}

/// Poll `check` every 20ms until it yields a value; panic with `what` and `context()`
/// after [`DEADLINE`].
async fn eventually<T>(
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text exposition of `registry`, as a scrape sees it.
fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("encoding into a String cannot fail");
    text
}

/// `registry` scraped and parsed by the project's one exposition parser; a broken
/// exposition fails the test.
fn scrape(registry: &Registry) -> Exposition {
    Exposition::parse(&encode(registry)).expect("a valid exposition")
}

/// A labelled ConfigMap named `name` (the harness controllers watch only labelled ones).
fn labelled_configmap(name: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { LABEL: "yes" } },
        "data": { "k": "v" }
    }))?)
}

/// The watch config of every test controller: only the labelled objects.
fn labelled() -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL}=yes"))
}

/// One running controller over the labelled ConfigMaps of a fresh namespace.
struct Harness {
    name: &'static str,
    namespace: String,
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
    registry: Registry,
    ctx: Arc<Ctx>,
    stop: Option<oneshot::Sender<()>>,
    abort: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<Stopped>>,
}

impl Harness {
    async fn start(
        name: &'static str,
        ctx: Ctx,
        build: impl FnOnce(Controller<ConfigMap>, &Harness) -> Controller<ConfigMap>,
    ) -> Result<Self> {
        Self::start_with(name, ctx, DEADLINE, build).await
    }

    /// [`start`](Self::start) with the drain timeout of a graceful stop.
    async fn start_with(
        name: &'static str,
        ctx: Ctx,
        drain_timeout: Duration,
        build: impl FnOnce(Controller<ConfigMap>, &Harness) -> Controller<ConfigMap>,
    ) -> Result<Self> {
        let env = TestEnv::shared().await?;
        let namespace = env.fresh_namespace("rt").await?;
        let configmaps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &namespace);
        let mut registry = Registry::default();
        let metrics = RuntimeMetrics::register(&mut registry);
        let mut harness = Self {
            name,
            namespace,
            configmaps: configmaps.clone(),
            secrets,
            registry,
            ctx: Arc::new(ctx),
            stop: None,
            abort: None,
            running: None,
        };
        let controller = Controller::new(name, configmaps, &metrics)
            .watcher_config(labelled())
            .on_reconcile({
                let ctx = Arc::clone(&harness.ctx);
                move |outcome| {
                    ctx.outcomes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((
                            outcome.result,
                            outcome.error_category,
                            outcome.reconcile_id.to_owned(),
                        ))
                }
            });
        let controller = build(controller, &harness);
        let mut synced = controller.synced();
        let (stop, stopped) = oneshot::channel::<()>();
        let (abort, aborted) = oneshot::channel::<()>();
        let shutdown = Shutdown::new(async move {
            let _ = stopped.await;
        })
        .abort_on(async move {
            // Only a sent signal aborts; a dropped sender (a graceful test) does not.
            if aborted.await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .drain_timeout(drain_timeout);
        harness.running = Some(tokio::spawn(controller.run(
            reconcile,
            Arc::clone(&harness.ctx),
            shutdown,
        )));
        harness.stop = Some(stop);
        harness.abort = Some(abort);
        tokio::time::timeout(DEADLINE, synced.wait_for(|s| *s))
            .await
            .context("caches did not sync")??;
        Ok(harness)
    }

    fn metrics(&self) -> String {
        encode(&self.registry)
    }

    /// A controller_runtime_* sample of this controller.
    fn controller_metric(&self, metric: &str, extra: &[(&str, &str)]) -> Option<f64> {
        let mut labels = vec![("controller", self.name)];
        labels.extend_from_slice(extra);
        scrape(&self.registry).value(metric, &labels)
    }

    /// A workqueue_* sample of this controller's queue.
    fn queue_metric(&self, metric: &str) -> Option<f64> {
        scrape(&self.registry).value(metric, &[("name", self.name), ("controller", self.name)])
    }

    fn reconciles(&self, result: &str) -> Option<f64> {
        self.controller_metric("controller_runtime_reconcile_total", &[("result", result)])
    }

    /// Poll `check` until it yields a value; fail with the metrics after `DEADLINE`.
    async fn eventually<T>(&self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        eventually(
            what,
            || check(self),
            || {
                format!(
                    "namespace {}; metrics:\n{}\nseen: {:?}",
                    self.namespace,
                    self.metrics(),
                    self.ctx.seen()
                )
            },
        )
        .await
    }

    async fn create_configmap(&self, name: &str) -> Result<ConfigMap> {
        Ok(self
            .configmaps
            .create(&PostParams::default(), &labelled_configmap(name)?)
            .await?)
    }

    /// Send the graceful stop signal (the controller keeps running until it drained).
    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Send the abort signal.
    fn signal_abort(&mut self) {
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(());
        }
    }

    /// Wait (with the deadline) for the controller's run to return.
    async fn stopped(&mut self) -> Result<Stopped> {
        let running = self.running.take().context("not running")?;
        Ok(tokio::time::timeout(DEADLINE, running)
            .await
            .context("controller did not stop")??)
    }

    async fn stop(mut self) -> Result<()> {
        self.signal_stop();
        let stopped = self.stopped().await?;
        assert_eq!(
            stopped,
            Stopped {
                reason: StopReason::Drained,
                cut_off: 0
            }
        );
        Ok(())
    }
}

#[tokio::test]
async fn depth_is_exactly_the_number_of_waiting_objects() -> Result<()> {
    const N: usize = 6;
    let gate = Gate::closed();
    let h = Harness::start(
        "rt-depth",
        Ctx {
            gate: Some(gate.clone()),
            ..Ctx::default()
        },
        |c, _| c.max_concurrent_reconciles(1),
    )
    .await?;
    assert_eq!(
        h.controller_metric("controller_runtime_max_concurrent_reconciles", &[]),
        Some(1.0)
    );
    for i in 0..N {
        h.create_configmap(&format!("cm-{i}")).await?;
    }

    // One object is being reconciled (held at the gate); every other one waits.
    h.eventually("N objects added", |h| {
        (h.queue_metric("workqueue_adds_total") == Some(N as f64)).then_some(())
    })
    .await;
    h.eventually("one reconcile held at the gate", |_| {
        (gate.waiting() == 1).then_some(())
    })
    .await;
    assert_eq!(h.queue_metric("workqueue_depth"), Some((N - 1) as f64));
    assert_eq!(
        h.controller_metric("controller_runtime_active_workers", &[]),
        Some(1.0)
    );
    assert_eq!(h.reconciles("success"), Some(0.0));

    gate.open();
    h.eventually("all reconciled", |h| {
        (h.reconciles("success") == Some(N as f64)).then_some(())
    })
    .await;
    h.eventually("workers idle", |h| {
        (h.controller_metric("controller_runtime_active_workers", &[]) == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(h.queue_metric("workqueue_depth"), Some(0.0));
    assert_eq!(h.queue_metric("workqueue_adds_total"), Some(N as f64));
    assert_eq!(h.queue_metric("workqueue_retries_total"), Some(0.0));
    assert_eq!(
        h.queue_metric("workqueue_work_duration_seconds_count"),
        Some(N as f64)
    );
    for result in ["error", "requeue", "requeue_after"] {
        assert_eq!(h.reconciles(result), Some(0.0), "{result}");
    }
    assert_eq!(
        h.controller_metric("controller_runtime_reconcile_time_seconds_count", &[]),
        Some(N as f64)
    );
    let seen = h.ctx.seen();
    assert_eq!(seen.len(), N);
    assert!(seen.iter().all(|s| !s.cleanup));
    h.stop().await
}

#[tokio::test]
async fn parallel_workers_take_waiting_objects_off_the_queue() -> Result<()> {
    const N: usize = 5;
    let gate = Gate::closed();
    let h = Harness::start(
        "rt-parallel",
        Ctx {
            gate: Some(gate.clone()),
            ..Ctx::default()
        },
        |c, _| c.max_concurrent_reconciles(3),
    )
    .await?;
    assert_eq!(
        h.controller_metric("controller_runtime_max_concurrent_reconciles", &[]),
        Some(3.0)
    );
    for i in 0..N {
        h.create_configmap(&format!("cm-{i}")).await?;
    }
    h.eventually("three reconciles held at the gate", |h| {
        (gate.waiting() == 3 && h.queue_metric("workqueue_adds_total") == Some(N as f64))
            .then_some(())
    })
    .await;
    assert_eq!(h.queue_metric("workqueue_depth"), Some((N - 3) as f64));
    assert_eq!(
        h.controller_metric("controller_runtime_active_workers", &[]),
        Some(3.0)
    );
    gate.open();
    h.eventually("all reconciled", |h| {
        (h.reconciles("success") == Some(N as f64)).then_some(())
    })
    .await;
    assert_eq!(h.queue_metric("workqueue_depth"), Some(0.0));
    h.stop().await
}

#[tokio::test]
async fn errors_are_counted_and_retried_with_backoff() -> Result<()> {
    let ctx = Ctx::default();
    ctx.script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert("flaky".into(), VecDeque::from([Step::Fail, Step::Fail]));
    let h = Harness::start("rt-errors", ctx, |c, _| c).await?;
    h.create_configmap("flaky").await?;
    h.eventually("success after two failures", |h| {
        (h.reconciles("success") == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(h.reconciles("error"), Some(2.0));
    assert_eq!(
        h.controller_metric("controller_runtime_reconcile_errors_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        h.controller_metric("controller_runtime_reconcile_panics_total", &[]),
        Some(0.0)
    );
    assert_eq!(h.queue_metric("workqueue_retries_total"), Some(2.0));
    assert_eq!(h.queue_metric("workqueue_adds_total"), Some(3.0));
    assert_eq!(h.ctx.reconciles_of("flaky"), 3);

    // The per-item backoff grows: 5ms before the first retry, 10ms before the second.
    let at: Vec<Instant> = h.ctx.seen().iter().map(|s| s.at).collect();
    assert!(at[1] - at[0] >= Duration::from_millis(5), "{at:?}");
    assert!(at[2] - at[1] >= Duration::from_millis(10), "{at:?}");

    let outcomes = h
        .ctx
        .outcomes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let results: Vec<_> = outcomes.iter().map(|(r, c, _)| (*r, *c)).collect();
    assert_eq!(
        results,
        [
            (ReconcileResult::Error, Some("Scripted")),
            (ReconcileResult::Error, Some("Scripted")),
            (ReconcileResult::Success, None),
        ]
    );
    // Each reconcile has its own id.
    let ids: std::collections::HashSet<&String> = outcomes.iter().map(|(_, _, id)| id).collect();
    assert_eq!(ids.len(), 3);
    h.stop().await
}

#[tokio::test]
async fn requeue_and_requeue_after_are_counted_apart() -> Result<()> {
    let ctx = Ctx::default();
    {
        let mut script = ctx.script.lock().unwrap_or_else(PoisonError::into_inner);
        script.insert(
            "later".into(),
            VecDeque::from([Step::RequeueAfter(Duration::from_millis(300))]),
        );
        script.insert("again".into(), VecDeque::from([Step::Requeue]));
    }
    let h = Harness::start("rt-requeue", ctx, |c, _| c).await?;
    h.create_configmap("later").await?;
    h.create_configmap("again").await?;
    h.eventually("both done", |h| {
        (h.reconciles("success") == Some(2.0)).then_some(())
    })
    .await;
    assert_eq!(h.reconciles("requeue_after"), Some(1.0));
    assert_eq!(h.reconciles("requeue"), Some(1.0));
    assert_eq!(h.reconciles("error"), Some(0.0));
    // client-go counts every delayed add as a retry.
    assert_eq!(h.queue_metric("workqueue_retries_total"), Some(2.0));
    let later: Vec<Instant> = h
        .ctx
        .seen()
        .iter()
        .filter(|s| s.name == "later")
        .map(|s| s.at)
        .collect();
    assert_eq!(later.len(), 2);
    assert!(
        later[1] - later[0] >= Duration::from_millis(300),
        "{later:?}"
    );
    h.stop().await
}

#[tokio::test]
async fn an_owned_child_change_reconciles_its_parent() -> Result<()> {
    let h = Harness::start("rt-owns", Ctx::default(), |c, h| {
        c.owns(
            h.secrets.clone(),
            watcher::Config::default().labels(&format!("{LABEL}=yes")),
        )
    })
    .await?;
    let parent = h.create_configmap("parent").await?;
    h.eventually("the parent's first reconcile", |h| {
        (h.ctx.reconciles_of("parent") == 1).then_some(())
    })
    .await;

    let uid = parent.metadata.uid.clone().context("parent uid")?;
    let child: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "child",
            "labels": { LABEL: "yes" },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid,
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "stringData": { "k": "v1" }
    }))?;
    h.secrets.create(&PostParams::default(), &child).await?;
    h.eventually("a reconcile of the parent for the child's creation", |h| {
        (h.ctx.reconciles_of("parent") == 2).then_some(())
    })
    .await;

    h.secrets
        .patch(
            "child",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "stringData": { "k": "v2" } })),
        )
        .await?;
    h.eventually("a reconcile of the parent for the child's update", |h| {
        (h.ctx.reconciles_of("parent") == 3).then_some(())
    })
    .await;
    assert!(
        h.ctx
            .seen()
            .iter()
            .all(|s| s.name == "parent" && !s.cleanup)
    );
    h.stop().await
}

#[tokio::test]
async fn a_deleted_object_is_reconciled_once_as_cleanup() -> Result<()> {
    let h = Harness::start("rt-cleanup", Ctx::default(), |c, _| c).await?;
    h.create_configmap("doomed").await?;
    h.eventually("the first reconcile", |h| {
        (h.ctx.reconciles_of("doomed") == 1).then_some(())
    })
    .await;
    h.configmaps
        .delete("doomed", &DeleteParams::default())
        .await?;
    h.eventually("the cleanup reconcile", |h| {
        h.ctx
            .seen()
            .into_iter()
            .find(|s| s.name == "doomed" && s.cleanup)
    })
    .await;
    h.eventually("the cleanup counted", |h| {
        (h.reconciles("success") == Some(2.0)).then_some(())
    })
    .await;
    h.stop().await
}

#[tokio::test]
async fn shutdown_lets_the_in_flight_reconcile_finish() -> Result<()> {
    let gate = Gate::closed();
    let mut h = Harness::start(
        "rt-shutdown",
        Ctx {
            gate: Some(gate.clone()),
            ..Ctx::default()
        },
        |c, _| c,
    )
    .await?;
    h.create_configmap("slow").await?;
    h.create_configmap("queued").await?;
    h.eventually("a reconcile held at the gate", |h| {
        (gate.waiting() == 1 && h.queue_metric("workqueue_depth") == Some(1.0)).then_some(())
    })
    .await;
    if let Some(stop) = h.stop.take() {
        let _ = stop.send(());
    }
    let mut running = h.running.take().context("running")?;
    // The controller must wait for the held reconcile rather than return.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut running)
            .await
            .is_err(),
        "run returned while a reconcile was in flight"
    );
    gate.open();
    let stopped = tokio::time::timeout(DEADLINE, running)
        .await
        .context("controller did not stop")??;
    // The in-flight reconcile completed; the queued one was never started.
    assert_eq!(h.reconciles("success"), Some(1.0));
    assert_eq!(h.ctx.seen().len(), 1);
    assert_eq!(
        stopped,
        Stopped {
            reason: StopReason::Drained,
            cut_off: 0
        }
    );
    Ok(())
}

/// A change of a shared child that the filter recognises (in the operator: its own apply
/// coming back) reconciles no parent; any other change does. One worker and a FIFO queue
/// make "not reconciled" observable: the parent, had it been enqueued first, would be
/// reconciled before the marker.
#[tokio::test]
async fn ignored_child_changes_reconcile_no_parent() -> Result<()> {
    let h = Harness::start("rt-owns-ignoring", Ctx::default(), |c, h| {
        let secrets = vworkspace_runtime::SharedWatch::new(
            h.secrets.clone(),
            watcher::Config::default().labels(&format!("{LABEL}=yes")),
        );
        c.max_concurrent_reconciles(1)
            .owns_shared_ignoring(&secrets, |_, s: &Secret| {
                s.labels().get("ours").is_some_and(|v| v == "yes")
            })
    })
    .await?;
    let parent = h.create_configmap("parent").await?;
    h.eventually("the parent's first reconcile", |h| {
        (h.ctx.reconciles_of("parent") == 1).then_some(())
    })
    .await;
    let uid = parent.metadata.uid.clone().context("parent uid")?;
    let child = |ours: &str| -> Result<Secret> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "child",
                "labels": { LABEL: "yes", "ours": ours },
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid,
                    "controller": true, "blockOwnerDeletion": true
                }]
            },
            "stringData": { "k": "v1" }
        }))?)
    };
    h.secrets
        .create(&PostParams::default(), &child("yes")?)
        .await?;
    h.create_configmap("marker").await?;
    h.eventually("the marker reconciled", |h| {
        (h.ctx.reconciles_of("marker") == 1).then_some(())
    })
    .await;
    assert_eq!(
        h.ctx.reconciles_of("parent"),
        1,
        "the recognised change reconciled nothing"
    );
    h.secrets
        .patch(
            "child",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "labels": { "ours": "no" } } })),
        )
        .await?;
    h.eventually("the other change reconciled", |h| {
        (h.ctx.reconciles_of("parent") == 2).then_some(())
    })
    .await;
    h.stop().await
}

/// The filter sees the cached state before the change: a change that keeps what the
/// parent reads (here the Secret's data) reconciles nothing, one that changes it does,
/// and a deletion always does, even though the deleted object's final state reads the
/// same as the cached one.
#[tokio::test]
async fn a_filter_on_old_and_new_state_never_swallows_a_deletion() -> Result<()> {
    let h = Harness::start("rt-owns-old-new", Ctx::default(), |c, h| {
        let secrets = vworkspace_runtime::SharedWatch::new(
            h.secrets.clone(),
            watcher::Config::default().labels(&format!("{LABEL}=yes")),
        );
        c.max_concurrent_reconciles(1)
            .owns_shared_ignoring(&secrets, |old, new: &Secret| {
                old.is_some_and(|old| old.data == new.data)
            })
    })
    .await?;
    let parent = h.create_configmap("parent").await?;
    h.eventually("the parent's first reconcile", |h| {
        (h.ctx.reconciles_of("parent") == 1).then_some(())
    })
    .await;
    let uid = parent.metadata.uid.clone().context("parent uid")?;
    let child: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "child",
            "labels": { LABEL: "yes" },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid,
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "stringData": { "k": "v1" }
    }))?;
    h.secrets.create(&PostParams::default(), &child).await?;
    h.eventually("a new child reconciles its parent", |h| {
        (h.ctx.reconciles_of("parent") == 2).then_some(())
    })
    .await;
    let annotate = Patch::Merge(serde_json::json!({
        "metadata": { "annotations": { "note": "same data" } }
    }));
    h.secrets
        .patch("child", &PatchParams::default(), &annotate)
        .await?;
    h.create_configmap("marker-1").await?;
    h.eventually("the first marker reconciled", |h| {
        (h.ctx.reconciles_of("marker-1") == 1).then_some(())
    })
    .await;
    assert_eq!(
        h.ctx.reconciles_of("parent"),
        2,
        "a change that keeps the data reconciled nothing"
    );
    let rewrite = Patch::Merge(serde_json::json!({ "stringData": { "k": "v2" } }));
    h.secrets
        .patch("child", &PatchParams::default(), &rewrite)
        .await?;
    h.eventually("a data change reconciles the parent", |h| {
        (h.ctx.reconciles_of("parent") == 3).then_some(())
    })
    .await;
    h.secrets
        .delete("child", &kube::api::DeleteParams::default())
        .await?;
    h.eventually("the deletion reconciles the parent", |h| {
        (h.ctx.reconciles_of("parent") == 4).then_some(())
    })
    .await;
    h.stop().await
}
