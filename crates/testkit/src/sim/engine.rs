//! What the simulated Velero, Argo Workflows, VolSync and CSI snapshotter share: how a
//! test steers them ([`SimOptions`], [`Control`], the `sim.vworkspace.io/*`
//! annotations), the status writer, and the driver that feeds watched objects to
//! per-object jobs.
//!
//! Invariants:
//! * a simulator only writes the status subresource (a JSON merge patch of `status`),
//!   never spec or metadata;
//! * at most [`SimOptions::max_in_flight`] jobs run at once per kind, and never two for
//!   the same object: a job is keyed by the object's uid and a *work key* chosen by the
//!   engine (a constant for one-shot engines, the manual trigger for VolSync), and a key
//!   is worked on once per simulator — our own status writes come back as watch events
//!   carrying a key already handled and are ignored;
//! * while a job runs, every newer version of its object is handed to it (so a job can
//!   notice `spec.shutdown`), and the newest is re-examined when the job ends;
//! * what a job does is fixed when it starts, from, in this order of precedence: the
//!   object's annotations, an override for its name, an override for its
//!   `app.vworkspace.io/operation-id` label, the simulator's options;
//! * a watch that fails (for instance because the CRD is not installed yet) is retried
//!   every [`WATCH_RETRY`], so a simulator started before its CRD begins to act once the
//!   CRD appears; a failed status write is retried a few times, not when the object is
//!   gone.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Annotation choosing an object's outcome: `succeeded` (also `completed`),
/// `partiallyfailed` (also `partially-failed`), `failed` or `error`.
pub const OUTCOME_ANNOTATION: &str = "sim.vworkspace.io/outcome";
/// Annotation setting how long an object's work takes, in milliseconds.
pub const DURATION_ANNOTATION: &str = "sim.vworkspace.io/duration-ms";
/// Annotation setting the failure message an engine reports when the outcome is not
/// success.
pub const FAILURE_REASON_ANNOTATION: &str = "sim.vworkspace.io/failure-reason";
/// The label the operator puts on an Operation's children (`crates/api` `labels::OPERATION_ID`;
/// repeated here because testkit does not depend on the API crate).
pub const OPERATION_ID_LABEL: &str = "app.vworkspace.io/operation-id";

/// How long an object's work takes unless told otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_millis(100);
/// Objects of one kind worked on at once, by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// Pause before a failed watch is polled again.
pub const WATCH_RETRY: Duration = Duration::from_millis(500);
/// Attempts of one status write before a job gives up.
const WRITE_ATTEMPTS: u32 = 5;

/// How an object's work ends. Each engine maps it onto its own vocabulary (see the
/// engine's module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Velero `Completed`, Argo `Succeeded`, a finished sync, a ready snapshot.
    #[default]
    Succeeded,
    /// Velero `PartiallyFailed`; a plain failure for the other engines.
    PartiallyFailed,
    /// Velero `Failed`, Argo `Failed`, a failed sync, a snapshot error.
    Failed,
    /// Argo `Error`; a plain failure for the other engines.
    Error,
}

impl Outcome {
    /// Parse an [`OUTCOME_ANNOTATION`] value (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "succeeded" | "success" | "completed" => Some(Self::Succeeded),
            "partiallyfailed" | "partially-failed" | "partial" => Some(Self::PartiallyFailed),
            "failed" | "failure" => Some(Self::Failed),
            "error" => Some(Self::Error),
            _ => None,
        }
    }

    /// Whether this is [`Outcome::Succeeded`].
    pub fn is_success(self) -> bool {
        self == Self::Succeeded
    }
}

/// A per-object override; unset fields fall back to the next source (see the module
/// documentation for the order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// How the work ends.
    pub outcome: Option<Outcome>,
    /// How long it takes.
    pub duration: Option<Duration>,
    /// The failure message the engine reports.
    pub failure_reason: Option<String>,
}

impl Control {
    /// Succeed.
    pub fn succeed() -> Self {
        Self {
            outcome: Some(Outcome::Succeeded),
            ..Self::default()
        }
    }

    /// End with `outcome`, reporting `reason`.
    pub fn ending(outcome: Outcome, reason: &str) -> Self {
        Self {
            outcome: Some(outcome),
            failure_reason: Some(reason.to_owned()),
            ..Self::default()
        }
    }

    /// Fail ([`Outcome::Failed`]) with `reason`.
    pub fn fail(reason: &str) -> Self {
        Self::ending(Outcome::Failed, reason)
    }

    /// The same, taking `duration`.
    pub fn taking(mut self, duration: Duration) -> Self {
        self.duration = Some(duration);
        self
    }

    fn or(self, fallback: &Control) -> Control {
        Control {
            outcome: self.outcome.or(fallback.outcome),
            duration: self.duration.or(fallback.duration),
            failure_reason: self
                .failure_reason
                .or_else(|| fallback.failure_reason.clone()),
        }
    }

    /// What the annotations of `obj` say; values that do not parse are ignored (and logged).
    fn from_annotations(obj: &DynamicObject) -> Control {
        let annotations = obj.annotations();
        let outcome = annotations.get(OUTCOME_ANNOTATION).and_then(|v| {
            let parsed = Outcome::parse(v);
            if parsed.is_none() {
                tracing::warn!(value = %v, "simulator: unknown {OUTCOME_ANNOTATION}; ignored");
            }
            parsed
        });
        let duration = annotations.get(DURATION_ANNOTATION).and_then(|v| {
            let parsed = v.trim().parse::<u64>().ok().map(Duration::from_millis);
            if parsed.is_none() {
                tracing::warn!(value = %v, "simulator: bad {DURATION_ANNOTATION}; ignored");
            }
            parsed
        });
        Control {
            outcome,
            duration,
            failure_reason: annotations.get(FAILURE_REASON_ANNOTATION).cloned(),
        }
    }
}

/// What every simulated engine takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    /// How long an object's work takes.
    pub duration: Duration,
    /// How it ends.
    pub outcome: Outcome,
    /// The failure message reported when it does not succeed (each engine has a
    /// realistic default).
    pub failure_reason: Option<String>,
    /// Objects of one kind worked on at once; at least 1.
    pub max_in_flight: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            duration: DEFAULT_DURATION,
            outcome: Outcome::Succeeded,
            failure_reason: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// What a simulator has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Jobs started (one per object, or per manual trigger for VolSync).
    pub started: u64,
    /// Jobs that wrote their final status.
    pub finished: u64,
    /// Status writes sent (including retries).
    pub writes: u64,
    /// Jobs given up on after repeated failed writes.
    pub gave_up: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    started: AtomicU64,
    finished: AtomicU64,
    writes: AtomicU64,
    gave_up: AtomicU64,
}

/// A job's resolved plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub outcome: Outcome,
    pub duration: Duration,
    pub failure_reason: Option<String>,
}

impl Plan {
    /// The failure message: the one asked for, or the engine's default.
    pub fn reason_or(&self, default: &str) -> String {
        self.failure_reason
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }
}

#[derive(Debug, Default)]
struct Overrides {
    by_name: HashMap<String, Control>,
    by_operation: HashMap<String, Control>,
}

/// State shared by a simulator handle, its drivers and their jobs.
#[derive(Debug)]
pub(crate) struct Shared {
    options: SimOptions,
    overrides: Mutex<Overrides>,
    counters: Counters,
}

impl Shared {
    pub fn new(options: SimOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            overrides: Mutex::new(Overrides::default()),
            counters: Counters::default(),
        })
    }

    pub fn set_for_name(&self, name: &str, control: Control) {
        if let Ok(mut o) = self.overrides.lock() {
            o.by_name.insert(name.to_owned(), control);
        }
    }

    pub fn set_for_operation(&self, operation_id: &str, control: Control) {
        if let Ok(mut o) = self.overrides.lock() {
            o.by_operation.insert(operation_id.to_owned(), control);
        }
    }

    pub fn clear_overrides(&self) {
        if let Ok(mut o) = self.overrides.lock() {
            *o = Overrides::default();
        }
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        SimStats {
            started: c.started.load(Ordering::Relaxed),
            finished: c.finished.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            gave_up: c.gave_up.load(Ordering::Relaxed),
        }
    }

    pub fn count_write(&self) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// The plan for `obj`, fixed when its job starts.
    fn plan(&self, obj: &DynamicObject) -> Plan {
        let mut control = Control::from_annotations(obj);
        if let Ok(o) = self.overrides.lock() {
            if let Some(c) = o.by_name.get(&obj.name_any()) {
                control = control.or(c);
            }
            if let Some(c) = obj
                .labels()
                .get(OPERATION_ID_LABEL)
                .and_then(|id| o.by_operation.get(id))
            {
                control = control.or(c);
            }
        }
        Plan {
            outcome: control.outcome.unwrap_or(self.options.outcome),
            duration: control.duration.unwrap_or(self.options.duration),
            failure_reason: control
                .failure_reason
                .or_else(|| self.options.failure_reason.clone()),
        }
    }
}

/// Why a status write did not land.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The object is gone.
    Gone,
    /// The API server kept refusing it.
    Failed(kube::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone => f.write_str("the object is gone"),
            Self::Failed(err) => write!(f, "status write failed: {err}"),
        }
    }
}

impl std::error::Error for WriteError {}

/// A merge patch of `status` on the status subresource of `name` in `namespace`,
/// retried with a short backoff unless the object is gone.
pub(crate) async fn patch_status(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
    status: Value,
    shared: &Shared,
) -> Result<(), WriteError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let patch = Patch::Merge(json!({ "status": status }));
    let mut attempt = 0;
    loop {
        attempt += 1;
        shared.count_write();
        match api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => return Err(WriteError::Gone),
            Err(err) if attempt >= WRITE_ATTEMPTS => return Err(WriteError::Failed(err)),
            Err(err) => {
                tracing::debug!(%err, attempt, "simulator: status write failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
}

/// One object's work, as an engine sees it.
pub(crate) struct Job {
    /// The object as seen when the job started.
    pub obj: DynamicObject,
    /// The work key the engine chose for it.
    pub key: String,
    /// What to do.
    pub plan: Plan,
    /// Newer versions of the object while the job runs.
    updates: watch::Receiver<DynamicObject>,
    client: Client,
    resource: ApiResource,
    shared: Arc<Shared>,
}

impl Job {
    /// The client the engine works with (to create the objects it makes for this one).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The engine's write counters (objects it makes count as writes too).
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Write `status` (merge patch) on this job's object.
    pub async fn write(&self, status: Value) -> Result<(), WriteError> {
        patch_status(
            &self.client,
            &self.resource,
            &self.obj.namespace().unwrap_or_default(),
            &self.obj.name_any(),
            status,
            &self.shared,
        )
        .await
    }

    /// Wait `duration`, or less if a version of the object arrives for which `stop`
    /// answers `Some`; that answer, if any. The object as the job started is checked
    /// first.
    pub async fn wait_unless<T>(
        &mut self,
        duration: Duration,
        stop: impl Fn(&DynamicObject) -> Option<T>,
    ) -> Option<T> {
        if let Some(t) = stop(&self.updates.borrow_and_update()) {
            return Some(t);
        }
        let sleep = tokio::time::sleep(duration);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return None,
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        // The driver is gone: nothing newer will come.
                        (&mut sleep).await;
                        return None;
                    }
                    if let Some(t) = stop(&self.updates.borrow_and_update()) {
                        return Some(t);
                    }
                }
            }
        }
    }

    /// Wait `duration`.
    pub async fn wait(&mut self, duration: Duration) {
        if !duration.is_zero() {
            tokio::time::sleep(duration).await;
        }
    }
}

/// Decides whether an object needs work: its work key, or `None`.
pub(crate) type WantsFn = fn(&DynamicObject) -> Option<String>;

/// A running set of drivers, with a signal that stops them gracefully.
#[derive(Debug)]
pub(crate) struct Drivers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drivers {
    pub fn new() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Start a driver feeding the objects of `resource` (in `namespace`, or all) that
    /// `wants` picks to `work`.
    pub fn spawn<W, Fut>(
        &mut self,
        client: &Client,
        namespace: Option<&str>,
        resource: ApiResource,
        shared: Arc<Shared>,
        wants: WantsFn,
        work: W,
    ) where
        W: Fn(Job) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), WriteError>> + Send + 'static,
    {
        let task = tokio::spawn(drive(
            client.clone(),
            namespace.map(str::to_owned),
            resource,
            shared,
            wants,
            work,
            self.stop.subscribe(),
        ));
        self.tasks.push(task);
    }

    /// Stop every driver and wait until none of their jobs runs any more.
    pub async fn shutdown(&mut self) {
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            if let Err(err) = task.await
                && err.is_panic()
            {
                tracing::warn!(%err, "simulator: a driver panicked");
            }
        }
    }
}

impl Drop for Drivers {
    fn drop(&mut self) {
        // Dropping a driver's JoinSet aborts its jobs.
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn watch_events(api: Api<DynamicObject>) -> BoxStream<'static, Event<DynamicObject>> {
    watcher::watcher(api, watcher::Config::default())
        .filter_map(|event| async move {
            match event {
                Ok(event) => Some(event),
                Err(err) => {
                    // Also what a missing CRD looks like; the next poll relists.
                    tracing::debug!(%err, "simulator: watch error");
                    tokio::time::sleep(WATCH_RETRY).await;
                    None
                }
            }
        })
        .boxed()
}

async fn drive<W, Fut>(
    client: Client,
    namespace: Option<String>,
    resource: ApiResource,
    shared: Arc<Shared>,
    wants: WantsFn,
    work: W,
    mut stop: watch::Receiver<bool>,
) where
    W: Fn(Job) -> Fut,
    Fut: Future<Output = Result<(), WriteError>> + Send + 'static,
{
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let max = shared.options.max_in_flight.max(1);
    // uid → the work key last started for it.
    let mut handled: HashMap<String, String> = HashMap::new();
    // uid → the newest version seen and not yet examined.
    let mut newest: HashMap<String, DynamicObject> = HashMap::new();
    // uids to examine when a slot is free, oldest first.
    let mut waiting: VecDeque<String> = VecDeque::new();
    // uid → where newer versions go while its job runs.
    let mut feeds: HashMap<String, watch::Sender<DynamicObject>> = HashMap::new();
    let mut running: JoinSet<Result<(), WriteError>> = JoinSet::new();
    let mut running_uid: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut events = watch_events(api);
    loop {
        while running.len() < max {
            let Some(uid) = waiting.pop_front() else {
                break;
            };
            let Some(obj) = newest.remove(&uid) else {
                continue;
            };
            let Some(key) = wants(&obj) else { continue };
            if handled.get(&uid) == Some(&key) {
                continue;
            }
            handled.insert(uid.clone(), key.clone());
            let (feed, updates) = watch::channel(obj.clone());
            feeds.insert(uid.clone(), feed);
            shared.counters.started.fetch_add(1, Ordering::Relaxed);
            let job = Job {
                plan: shared.plan(&obj),
                obj,
                key,
                updates,
                client: client.clone(),
                resource: resource.clone(),
                shared: shared.clone(),
            };
            let handle = running.spawn(work(job));
            running_uid.insert(handle.id(), uid);
        }
        tokio::select! {
            _ = stop.changed() => {
                running.shutdown().await;
                return;
            }
            done = running.join_next_with_id(), if !running.is_empty() => {
                let (id, result) = match done {
                    Some(Ok((id, result))) => (id, result),
                    Some(Err(err)) => (err.id(), Err(WriteError::Gone)),
                    None => continue,
                };
                let Some(uid) = running_uid.remove(&id) else { continue };
                feeds.remove(&uid);
                match result {
                    Ok(()) => {
                        shared.counters.finished.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(WriteError::Gone) => {}
                    Err(err @ WriteError::Failed(_)) => {
                        tracing::debug!(%err, "simulator: giving up on a job");
                        shared.counters.gave_up.fetch_add(1, Ordering::Relaxed);
                        // The next event for the object tries again.
                        handled.remove(&uid);
                    }
                }
                if newest.contains_key(&uid) && !waiting.contains(&uid) {
                    waiting.push_back(uid);
                }
            }
            event = events.next() => {
                let Some(event) = event else { return };
                match event {
                    Event::Apply(obj) | Event::InitApply(obj) => {
                        let uid = obj.uid().unwrap_or_default();
                        if let Some(feed) = feeds.get(&uid) {
                            feed.send_replace(obj.clone());
                            newest.insert(uid, obj);
                            continue;
                        }
                        let Some(key) = wants(&obj) else {
                            newest.remove(&uid);
                            continue;
                        };
                        if handled.get(&uid) == Some(&key) {
                            continue;
                        }
                        newest.insert(uid.clone(), obj);
                        if !waiting.contains(&uid) {
                            waiting.push_back(uid);
                        }
                    }
                    Event::Delete(obj) => {
                        let uid = obj.uid().unwrap_or_default();
                        newest.remove(&uid);
                        handled.remove(&uid);
                    }
                    Event::Init | Event::InitDone => {}
                }
            }
        }
    }
}

/// Now, to the second (the precision Kubernetes timestamps carry).
pub(crate) fn now() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.round(k8s_openapi::jiff::Unit::Second).unwrap_or(now)
}

/// RFC 3339 text of a timestamp, as the API server stores `metav1.Time`.
pub(crate) fn rfc3339(t: k8s_openapi::jiff::Timestamp) -> String {
    t.to_string()
}

/// Now, as RFC 3339 text.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(now())
}

/// A duration as Go's `time.Duration.String()` writes it (`250ms`, `1.5s`, `2m3s`),
/// to millisecond precision: how `metav1.Duration` fields appear in real status.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let seconds = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let frac = format!("{:03}", rest % 1000);
        format!("{}.{}s", rest / 1000, frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// A Go duration like `720h0m0s` or `90m`, to whole seconds; `None` when it does not
/// parse (only h, m and s units, as Velero's TTLs use).
pub(crate) fn parse_go_duration(text: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number.parse().ok()?;
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    number.is_empty().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_parse_case_insensitively() {
        assert_eq!(Outcome::parse("Failed"), Some(Outcome::Failed));
        assert_eq!(
            Outcome::parse("partially-failed"),
            Some(Outcome::PartiallyFailed)
        );
        assert_eq!(Outcome::parse(" completed "), Some(Outcome::Succeeded));
        assert_eq!(Outcome::parse("maybe"), None);
    }

    #[test]
    fn go_durations_read_like_go() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(123_040)), "2m3.04s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(parse_go_duration("720h0m0s"), Some(720 * 3600));
        assert_eq!(parse_go_duration("90m"), Some(5400));
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_go_duration("12"), None);
    }

    #[test]
    fn annotations_win_over_name_over_operation_over_options() {
        let shared = Shared::new(SimOptions {
            failure_reason: Some("from options".into()),
            ..SimOptions::default()
        });
        shared.set_for_operation(
            "op-1",
            Control::ending(Outcome::Error, "from operation").taking(Duration::from_secs(7)),
        );
        shared.set_for_name("b", Control::fail("from name"));
        let obj = |annotations: Value| -> DynamicObject {
            #[allow(clippy::unwrap_used)] // a fixed, valid object
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "X",
                "metadata": {
                    "name": "b",
                    "labels": { OPERATION_ID_LABEL: "op-1" },
                    "annotations": annotations,
                },
            }))
            .unwrap()
        };
        let plan = shared.plan(&obj(json!({})));
        assert_eq!(plan.outcome, Outcome::Failed);
        assert_eq!(plan.failure_reason.as_deref(), Some("from name"));
        assert_eq!(plan.duration, Duration::from_secs(7));
        let plan = shared.plan(&obj(json!({
            OUTCOME_ANNOTATION: "partiallyfailed",
            DURATION_ANNOTATION: "5",
        })));
        assert_eq!(plan.outcome, Outcome::PartiallyFailed);
        assert_eq!(plan.duration, Duration::from_millis(5));
        assert_eq!(plan.failure_reason.as_deref(), Some("from name"));
        shared.clear_overrides();
        let plan = shared.plan(&obj(json!({ DURATION_ANNOTATION: "soon" })));
        assert_eq!(plan.outcome, Outcome::Succeeded);
        assert_eq!(plan.duration, DEFAULT_DURATION);
        assert_eq!(plan.failure_reason.as_deref(), Some("from options"));
    }
}
