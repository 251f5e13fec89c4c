//! A simulated Flux: source-controller for `HelmRepository` and helm-controller for
//! `HelmRelease`, driving their status the way the real controllers do.
//!
//! The operator never runs Helm; it writes a HelmRelease and reads Flux's verdict from
//! its status. This simulator produces that verdict without Helm or a chart:
//!
//! * a `HelmRepository` becomes `Ready=True` (reason `Succeeded`);
//! * a `HelmRelease` whose `metadata.generation` is ahead of `status.observedGeneration`
//!   first shows `Reconciling=True` / `Ready=Unknown` (reason `Progressing`), then either
//!   succeeds — a new entry (revision n+1, `deployed`) on top of `status.history`,
//!   `Ready=True` with reason `InstallSucceeded` or `UpgradeSucceeded` — or, when the
//!   chart version is marked failing with [`FluxSimulator::fail_version`], fails with
//!   `Ready=False`, reason `InstallFailed` or `UpgradeFailed`, and a `failed` history
//!   entry, as helm-controller does when an upgrade's hooks or resources fail;
//! * a suspended HelmRelease (`spec.suspend: true`) is left alone.
//!
//! The simulator only writes status (through the status subresource), never spec.
//!
//! Like the real controllers (`--concurrent`), each kind is worked on by up to
//! [`FluxOptions::max_in_flight`] objects at a time ([`DEFAULT_MAX_IN_FLIGHT`] by
//! default), and never by two at once for the same object: a newer generation seen
//! while one is in flight waits for it and is then handled from a fresh read, so that
//! its history builds on the entry just written (as is a watch event that arrives
//! after a write it predates). A failed status write is retried a
//! few times (not when the object is gone).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};

/// Objects of one kind worked on at once, by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

/// Attempts of one status write before the simulator gives up on that generation.
const WRITE_ATTEMPTS: u32 = 5;

/// `helm.toolkit.fluxcd.io/v2` `HelmRelease`.
pub fn helm_release_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
        "helmreleases",
    )
}

/// `source.toolkit.fluxcd.io/v1` `HelmRepository`.
pub fn helm_repository_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", "HelmRepository"),
        "helmrepositories",
    )
}

/// A minimal `HelmRepository` as the operator writes one, for tests and benchmarks
/// that drive the simulator without the operator.
pub fn helm_repository(namespace: &str, name: &str, url: &str) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "url": url, "interval": "10m" },
    }))?)
}

/// A minimal `HelmRelease` of `chart`@`version` from the HelmRepository `name`.
pub fn helm_release(
    namespace: &str,
    name: &str,
    chart: &str,
    version: &str,
) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "interval": "10m",
            "chart": { "spec": {
                "chart": chart,
                "version": version,
                "sourceRef": { "kind": "HelmRepository", "name": name },
            } },
        },
    }))?)
}

/// How the simulator runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxOptions {
    /// Objects of one kind (HelmRelease, HelmRepository) worked on at once; at least 1.
    pub max_in_flight: usize,
}

impl Default for FluxOptions {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// What the simulator has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FluxStats {
    /// Release generations brought to their verdict (Ready=True or a failure).
    pub releases: u64,
    /// Repository generations made Ready.
    pub repositories: u64,
    /// Status writes sent (including retries).
    pub writes: u64,
    /// Generations given up on after [`WRITE_ATTEMPTS`] failed writes.
    pub gave_up: u64,
}

#[derive(Debug, Default)]
struct Counters {
    releases: AtomicU64,
    repositories: AtomicU64,
    writes: AtomicU64,
    gave_up: AtomicU64,
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct FluxSimulator {
    failing: Arc<Mutex<HashMap<String, String>>>,
    counters: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
}

impl FluxSimulator {
    /// Start simulating in `namespace` (or the whole cluster with `None`), with the
    /// default [`FluxOptions`].
    pub fn start(client: Client, namespace: Option<&str>) -> Self {
        Self::start_with(client, namespace, FluxOptions::default())
    }

    /// Start simulating in `namespace` (or the whole cluster with `None`).
    pub fn start_with(client: Client, namespace: Option<&str>, options: FluxOptions) -> Self {
        let failing = Arc::new(Mutex::new(HashMap::new()));
        let counters = Arc::new(Counters::default());
        let max = options.max_in_flight.max(1);
        let releases = api(&client, namespace, &helm_release_resource());
        let repositories = api(&client, namespace, &helm_repository_resource());
        let release_work = {
            let (failing, counters) = (failing.clone(), counters.clone());
            move |job: Job| release_job(job, failing.clone(), counters.clone())
        };
        let repository_work = {
            let counters = counters.clone();
            move |job: Job| repository_job(job, counters.clone())
        };
        let tasks = vec![
            tokio::spawn(drive(
                releases,
                client.clone(),
                max,
                is_suspended,
                release_work,
            )),
            tokio::spawn(drive(repositories, client, max, |_| false, repository_work)),
        ];
        Self {
            failing,
            counters,
            tasks,
        }
    }

    /// Make every install or upgrade to chart `version` fail with `message`.
    pub fn fail_version(&self, version: &str, message: &str) {
        if let Ok(mut failing) = self.failing.lock() {
            failing.insert(version.to_owned(), message.to_owned());
        }
    }

    /// Counts of what was done so far.
    pub fn stats(&self) -> FluxStats {
        let c = &self.counters;
        FluxStats {
            releases: c.releases.load(Ordering::Relaxed),
            repositories: c.repositories.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            gave_up: c.gave_up.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FluxSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn api(client: &Client, namespace: Option<&str>, resource: &ApiResource) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn is_suspended(obj: &DynamicObject) -> bool {
    obj.data["spec"]["suspend"].as_bool() == Some(true)
}

/// Objects (with their generation) whose status has not caught up with their spec:
/// what a Flux controller would pick up. Watch errors are retried by the watcher.
fn pending_generations(
    api: Api<DynamicObject>,
) -> futures::stream::BoxStream<'static, (DynamicObject, i64)> {
    watcher::watcher(api, watcher::Config::default())
        .filter_map(|event| async move {
            let obj = match event {
                Ok(Event::Apply(obj) | Event::InitApply(obj)) => obj,
                Ok(_) => return None,
                Err(err) => {
                    tracing::debug!(%err, "flux simulator: watch error");
                    return None;
                }
            };
            let generation = obj.metadata.generation.unwrap_or_default();
            let observed = obj.data["status"]["observedGeneration"].as_i64();
            (observed != Some(generation)).then_some((obj, generation))
        })
        .boxed()
}

/// One object to work on.
struct Job {
    /// The object as last seen.
    obj: DynamicObject,
    /// Whether `obj` may be older than the object's latest status (it was seen while
    /// an earlier generation was in flight, or observes less than was written since)
    /// and must be read again first.
    stale: bool,
    client: Client,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// This generation's status is written.
    Done(i64),
    /// Gone, suspended or already up to date.
    Nothing,
    /// The writes kept failing; the next event for the object tries again.
    GaveUp,
}

/// Feed the pending generations of `api` to `work`, at most `max` objects at once and
/// one job per object at a time.
async fn drive<W, Fut>(
    api: Api<DynamicObject>,
    client: Client,
    max: usize,
    skip: fn(&DynamicObject) -> bool,
    work: W,
) where
    W: Fn(Job) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    // Our own status patches come back as watch events carrying a generation already
    // handled (or in flight); remembering it keeps one job per generation.
    let mut handled: HashMap<String, i64> = HashMap::new();
    // uid → the newest generation whose status a job of ours has written. An event
    // observing less was sent before that write: its status is stale.
    let mut written: HashMap<String, i64> = HashMap::new();
    // uid → the newest object seen while a job for it was running.
    let mut queued: HashMap<String, DynamicObject> = HashMap::new();
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut running_uid: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut stream = pending_generations(api);
    let start = |obj: DynamicObject,
                 stale: bool,
                 uid: String,
                 running: &mut JoinSet<Outcome>,
                 running_uid: &mut HashMap<tokio::task::Id, String>| {
        let job = Job {
            obj,
            stale,
            client: client.clone(),
        };
        let handle = running.spawn(work(job));
        running_uid.insert(handle.id(), uid);
    };
    loop {
        tokio::select! {
            done = running.join_next_with_id(), if !running.is_empty() => {
                let (id, outcome) = match done {
                    Some(Ok((id, outcome))) => (id, outcome),
                    Some(Err(err)) => (err.id(), Outcome::GaveUp),
                    None => continue,
                };
                let Some(uid) = running_uid.remove(&id) else { continue };
                match outcome {
                    Outcome::Done(g) => {
                        for map in [&mut handled, &mut written] {
                            let seen = map.entry(uid.clone()).or_insert(g);
                            *seen = (*seen).max(g);
                        }
                    }
                    Outcome::Nothing => {}
                    Outcome::GaveUp => {
                        handled.remove(&uid);
                    }
                }
                if let Some(obj) = queued.remove(&uid) {
                    let generation = obj.metadata.generation.unwrap_or_default();
                    if handled.get(&uid).is_none_or(|h| *h < generation) {
                        handled.insert(uid.clone(), generation);
                        start(obj, true, uid, &mut running, &mut running_uid);
                    }
                }
            }
            next = stream.next(), if running.len() < max => {
                let Some((obj, generation)) = next else { break };
                if skip(&obj) {
                    continue;
                }
                let uid = obj.uid().unwrap_or_default();
                if running_uid.values().any(|u| *u == uid) {
                    queued.insert(uid, obj);
                    continue;
                }
                if handled.get(&uid).is_some_and(|h| *h >= generation) {
                    continue;
                }
                let observed = obj.data["status"]["observedGeneration"].as_i64();
                let stale = written
                    .get(&uid)
                    .is_some_and(|w| observed.is_none_or(|o| o < *w));
                handled.insert(uid.clone(), generation);
                start(obj, stale, uid, &mut running, &mut running_uid);
            }
        }
    }
}

/// The object to work on: `job.obj`, or a fresh read of it when that may be stale.
/// `None` when it is gone, suspended, or already up to date.
async fn current(
    job: &Job,
    resource: &ApiResource,
    skip: fn(&DynamicObject) -> bool,
) -> Option<(DynamicObject, i64)> {
    let obj = if job.stale {
        let ns = job.obj.namespace().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(job.client.clone(), &ns, resource);
        match api.get_opt(&job.obj.name_any()).await {
            Ok(Some(obj)) => obj,
            Ok(None) => return None,
            Err(err) => {
                tracing::debug!(%err, "flux simulator: re-reading an object");
                return None;
            }
        }
    } else {
        job.obj.clone()
    };
    let generation = obj.metadata.generation.unwrap_or_default();
    let observed = obj.data["status"]["observedGeneration"].as_i64();
    (!skip(&obj) && observed != Some(generation)).then_some((obj, generation))
}

async fn repository_job(job: Job, counters: Arc<Counters>) -> Outcome {
    let resource = helm_repository_resource();
    let Some((obj, generation)) = current(&job, &resource, |_| false).await else {
        return Outcome::Nothing;
    };
    let client = job.client;
    let url = obj.data["spec"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let status = json!({
        "observedGeneration": generation,
        "url": url,
        "conditions": [condition("Ready", "True", "Succeeded",
            &format!("stored artifact: index of {url}"), generation)]
    });
    match patch_status(&client, &resource, &obj, status, &counters).await {
        Ok(()) => {
            counters.repositories.fetch_add(1, Ordering::Relaxed);
            Outcome::Done(generation)
        }
        Err(err) if is_gone(&err) => Outcome::Nothing,
        Err(err) => {
            tracing::debug!(%err, "flux simulator: repository status");
            counters.gave_up.fetch_add(1, Ordering::Relaxed);
            Outcome::GaveUp
        }
    }
}

async fn release_job(
    job: Job,
    failing: Arc<Mutex<HashMap<String, String>>>,
    counters: Arc<Counters>,
) -> Outcome {
    let resource = helm_release_resource();
    let Some((obj, generation)) = current(&job, &resource, is_suspended).await else {
        return Outcome::Nothing;
    };
    let client = job.client;
    let version = obj.data["spec"]["chart"]["spec"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let failure = failing.lock().ok().and_then(|f| f.get(&version).cloned());
    match release(&client, &resource, &obj, generation, failure, &counters).await {
        Ok(()) => {
            counters.releases.fetch_add(1, Ordering::Relaxed);
            Outcome::Done(generation)
        }
        Err(err) if is_gone(&err) => Outcome::Nothing,
        Err(err) => {
            tracing::debug!(%err, "flux simulator: release status");
            counters.gave_up.fetch_add(1, Ordering::Relaxed);
            Outcome::GaveUp
        }
    }
}

async fn release(
    client: &Client,
    resource: &ApiResource,
    obj: &DynamicObject,
    generation: i64,
    failure: Option<String>,
    counters: &Counters,
) -> Result<()> {
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let chart = obj.data["spec"]["chart"]["spec"]["chart"]
        .as_str()
        .unwrap_or_default();
    let version = obj.data["spec"]["chart"]["spec"]["version"]
        .as_str()
        .unwrap_or_default();
    let mut history: Vec<Value> = obj.data["status"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let installed = history
        .iter()
        .any(|h| h["status"] == "deployed" || h["status"] == "superseded");
    let action = if installed { "upgrade" } else { "install" };

    // Step 1: what helm-controller shows while it works.
    // A merge patch of the conditions alone keeps the rest of the status as it is.
    let progressing = json!({ "conditions": [
        condition(
            "Reconciling",
            "True",
            "Progressing",
            &format!("Fulfilling prerequisites for {action}"),
            generation
        ),
        condition(
            "Ready",
            "Unknown",
            "Progressing",
            "Reconciliation in progress",
            generation
        ),
    ] });
    patch_status(client, resource, obj, progressing, counters).await?;

    // Step 2: the verdict, with a new history entry on top (newest first, as Flux keeps it).
    let revision = history
        .first()
        .and_then(|h| h["version"].as_i64())
        .unwrap_or(0)
        + 1;
    let now = now_rfc3339();
    let (entry_status, ready, reason, message) = match &failure {
        None => {
            for h in &mut history {
                if h["status"] == "deployed" {
                    h["status"] = json!("superseded");
                }
            }
            let verb = if installed { "upgrade" } else { "install" };
            let reason = if installed {
                "UpgradeSucceeded"
            } else {
                "InstallSucceeded"
            };
            let message = format!(
                "Helm {verb} succeeded for release {namespace}/{name}.v{revision} with chart {chart}@{version}"
            );
            ("deployed", "True", reason, message)
        }
        Some(why) => {
            let verb = if installed { "upgrade" } else { "install" };
            let reason = if installed {
                "UpgradeFailed"
            } else {
                "InstallFailed"
            };
            let message = format!(
                "Helm {verb} failed for release {namespace}/{name} with chart {chart}@{version}: {why}"
            );
            ("failed", "False", reason, message)
        }
    };
    history.insert(
        0,
        json!({
            "name": name,
            "namespace": namespace,
            "version": revision,
            "status": entry_status,
            "chartName": chart,
            "chartVersion": version,
            "digest": format!("sha256:{:016x}", fnv(&format!("{namespace}/{name}/{revision}/{version}"))),
            "firstDeployed": now,
            "lastDeployed": now,
        }),
    );
    history.truncate(5);
    let status = json!({
        "observedGeneration": generation,
        "lastAttemptedGeneration": generation,
        "lastAttemptedRevision": version,
        "lastAttemptedReleaseAction": action,
        "history": history,
        "conditions": [
            condition("Ready", ready, reason, &message, generation),
            condition("Released", ready, reason, &message, generation),
        ],
    });
    patch_status(client, resource, obj, status, counters).await
}

/// Whether `err` says the object no longer exists.
fn is_gone(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 404)
}

/// A merge patch of the status subresource, retried with a short backoff unless the
/// object is gone.
async fn patch_status(
    client: &Client,
    resource: &ApiResource,
    obj: &DynamicObject,
    status: Value,
    counters: &Counters,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &obj.namespace().unwrap_or_default(),
        resource,
    );
    let patch = Patch::Merge(json!({ "status": status }));
    let mut attempt = 0;
    loop {
        attempt += 1;
        counters.writes.fetch_add(1, Ordering::Relaxed);
        match api
            .patch_status(&obj.name_any(), &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(kube::Error::Api(status).into());
            }
            Err(err) if attempt >= WRITE_ATTEMPTS => return Err(err.into()),
            Err(err) => {
                tracing::debug!(%err, attempt, "flux simulator: status write failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now_rfc3339(),
    })
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
