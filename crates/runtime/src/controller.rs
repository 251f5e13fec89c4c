//! A controller runner in the shape of controller-runtime's: informers (watch + cache)
//! feed object keys into a [`WorkQueue`]; a fixed pool of workers takes keys out and
//! reconciles the cached object; the result decides how the key is requeued.
//!
//! Invariants:
//! * a key (namespace/name) is never reconciled by two workers at once — the queue
//!   guarantees it, however many events arrive meanwhile;
//! * workers start only after every watched kind has completed its initial list, so a
//!   reconcile never mistakes "not cached yet" for "deleted";
//! * every event about an object, or about a child mapped to it, leads to at least one
//!   reconcile that starts after the event was cached;
//! * a deleted object is reconciled once more as [`Event::Cleanup`] (also when the
//!   deletion was only noticed by a re-list); it carries only the key, since no state of
//!   a deleted object is kept in memory — a controller that needs the last state to
//!   clean up holds the object back with a finalizer and cleans up on its `Apply`;
//! * a panicking reconcile is an error (counted in `controller_runtime_reconcile_panics_total`
//!   too), never a dead worker or a key stuck "processing";
//! * shutdown stops the watches and hands out no new key; in-flight reconciles finish
//!   before [`Controller::run`] returns (bound it with a timeout if needed).
//!
//! Results map onto the queue exactly as in controller-runtime:
//!
//! | reconcile returns            | queue                         | `result` label  |
//! |------------------------------|-------------------------------|-----------------|
//! | `Ok(Action::Done)`           | `forget`                      | `success`       |
//! | `Ok(Action::Requeue)`        | `add_rate_limited`            | `requeue`       |
//! | `Ok(Action::RequeueAfter(d))`| `forget` + `add_after(d)`     | `requeue_after` |
//! | `Err(_)` or a panic          | `add_rate_limited`            | `error`         |
//! | `Err(e)`, `e.is_terminal()`  | `forget` (no retry)           | `error`         |
//!
//! `RequeueAfter(Duration::ZERO)` is treated as `Requeue` (controller-runtime ignores a
//! zero `RequeueAfter`; requeueing at once without backoff could spin).

use std::collections::{HashMap, HashSet};
use std::collections::hash_map::RandomState;
use std::fmt::{self, Debug};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::metrics::{QueueMetrics, ReconcileMetrics, RuntimeMetrics};
use crate::workqueue::{RateLimiterConfig, WorkQueue};

/// The kinds a [`Controller`] can watch: typed, statically known Kubernetes resources.
pub trait WatchedKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}
impl<T> WatchedKind for T where
    T: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// A stable, low-cardinality name for an error, used as a metric label and Event reason.
pub trait ErrorCategory {
    /// e.g. `"ApiError"`, `"InvalidSpec"`; never contains per-object data.
    fn category(&self) -> &'static str;

    /// Whether retrying cannot help (controller-runtime's `reconcile.TerminalError`), e.g.
    /// an invalid spec: the key is not requeued and only a new event reconciles it again.
    /// Counted in `controller_runtime_terminal_reconcile_errors_total` as well.
    fn is_terminal(&self) -> bool {
        false
    }
}

/// What to do with the key after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next event.
    Done,
    /// Again, after the key's rate-limited backoff.
    Requeue,
    /// Again, after this long (the backoff is reset).
    RequeueAfter(Duration),
}

/// What a reconcile is asked to do.
#[derive(Debug)]
pub enum Event<K: WatchedKind> {
    /// The object exists; this is its cached state. Drive the world toward its spec.
    Apply(Arc<K>),
    /// The object is not in the cache: it was deleted, or the key came from a child whose
    /// owner never existed. Clean up what finalizers do not; an error retries the cleanup.
    Cleanup(ObjectRef<K>),
}

impl<K: WatchedKind> Event<K> {
    /// The key of the object this event is about.
    pub fn key(&self) -> ObjectRef<K> {
        match self {
            Self::Apply(obj) => ObjectRef::from_obj(obj.as_ref()),
            Self::Cleanup(key) => key.clone(),
        }
    }

    /// The cached object of an `Apply`; `None` for a cleanup.
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            Self::Apply(obj) => Some(obj),
            Self::Cleanup(_) => None,
        }
    }
}

/// The `result` of one reconcile, as in `controller_runtime_reconcile_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconcileResult {
    /// `Ok(Done)`.
    Success,
    /// `Err(_)` or a panic.
    Error,
    /// `Ok(Requeue)`.
    Requeue,
    /// `Ok(RequeueAfter(_))`.
    RequeueAfter,
}

impl ReconcileResult {
    /// The label value: `success`, `error`, `requeue` or `requeue_after`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Requeue => "requeue",
            Self::RequeueAfter => "requeue_after",
        }
    }
}

/// What an [`on_reconcile`](Controller::on_reconcile) observer learns about each reconcile.
/// Observers run inside the reconcile's span, after the queue was updated.
#[derive(Debug, Clone)]
pub struct ReconcileOutcome<'a> {
    /// The controller name.
    pub controller: &'a str,
    /// The object's namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// The per-reconcile correlation id (the span's `reconcileID`).
    pub reconcile_id: &'a str,
    /// How it ended.
    pub result: ReconcileResult,
    /// The error's [`ErrorCategory::category`], or `"panic"`, when `result` is `Error`.
    pub error_category: Option<&'static str>,
    /// Wall time of the reconcile.
    pub duration: Duration,
}

type Observer = Arc<dyn Fn(&ReconcileOutcome<'_>) + Send + Sync>;
type Source<K> = Box<dyn FnOnce(Feed<K>) -> BoxFuture<'static, ()> + Send>;

/// A controller for kind `K`, built step by step and then [`run`](Self::run).
///
/// ```ignore
/// let metrics = RuntimeMetrics::register(&mut registry);
/// let controller = Controller::new("applicationinstance", Api::<ApplicationInstance>::all(client.clone()), &metrics)
///     .owns(Api::<HelmRelease>::all(client.clone()), watcher::Config::default())
///     .max_concurrent_reconciles(4)
///     .on_reconcile(|outcome| spec_metrics.observe(outcome));
/// let synced = controller.synced(); // for /readyz
/// controller.run(reconcile, Arc::new(ctx), shutdown_signal).await;
/// ```
pub struct Controller<K: WatchedKind> {
    name: Arc<str>,
    api: Api<K>,
    watcher_config: watcher::Config,
    writer: Writer<K>,
    reader: Store<K>,
    sources: Vec<Source<K>>,
    max_concurrent_reconciles: usize,
    rate_limiter: RateLimiterConfig,
    queue_metrics: QueueMetrics,
    metrics: ReconcileMetrics,
    observers: Vec<Observer>,
    synced_tx: watch::Sender<bool>,
}

impl<K: WatchedKind> Debug for Controller<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("kind", &K::kind(&()))
            .field("related_watches", &self.sources.len())
            .field("max_concurrent_reconciles", &self.max_concurrent_reconciles)
            .field("synced", &*self.synced_tx.borrow())
            .finish_non_exhaustive()
    }
}

impl<K: WatchedKind> Controller<K> {
    /// A controller named `name` (the `controller` label of its metrics) reconciling the
    /// objects of `api`. Creates all of its metric series at zero.
    pub fn new(name: impl Into<String>, api: Api<K>, metrics: &RuntimeMetrics) -> Self {
        let name: String = name.into();
        let writer = Writer::default();
        let reader = writer.as_reader();
        let reconcile_metrics = metrics.controller.for_controller(&name);
        reconcile_metrics.max_concurrent_reconciles.set(1);
        Self {
            queue_metrics: metrics.workqueue.for_queue(&name),
            name: name.into(),
            api,
            watcher_config: watcher::Config::default(),
            writer,
            reader,
            sources: Vec::new(),
            max_concurrent_reconciles: 1,
            rate_limiter: RateLimiterConfig::default(),
            metrics: reconcile_metrics,
            observers: Vec::new(),
            synced_tx: watch::Sender::new(false),
        }
    }

    /// Restrict the watch of `K` (label/field selectors, timeouts).
    pub fn watcher_config(mut self, config: watcher::Config) -> Self {
        self.watcher_config = config;
        self
    }

    /// Reconcile the controller-owner of each `C` when the `C` changes: the object named
    /// by the child's ownerReference with `controller: true` whose kind is `K`.
    pub fn owns<C: WatchedKind>(self, api: Api<C>, config: watcher::Config) -> Self {
        self.watches_with(api, config, controller_owner::<K, C>)
    }

    /// Reconcile the objects `mapper` names when a `C` changes. On an update, the keys of
    /// both the previous and the new state of the `C` are reconciled, so a moved
    /// reference reaches its old target too.
    pub fn watches_with<C, I, M>(mut self, api: Api<C>, config: watcher::Config, mapper: M) -> Self
    where
        C: WatchedKind,
        I: IntoIterator<Item = ObjectRef<K>>,
        M: Fn(&C) -> I + Send + Sync + 'static,
    {
        let mapper = move |obj: &C| -> Vec<ObjectRef<K>> { mapper(obj).into_iter().collect() };
        self.sources.push(Box::new(move |feed| {
            watch_related(api, config, mapper, feed).boxed()
        }));
        self
    }

    /// How many keys are reconciled in parallel (default 1; at least 1).
    pub fn max_concurrent_reconciles(mut self, workers: usize) -> Self {
        self.max_concurrent_reconciles = workers.max(1);
        self.metrics
            .max_concurrent_reconciles
            .set(i64::try_from(self.max_concurrent_reconciles).unwrap_or(i64::MAX));
        self
    }

    /// Replace controller-runtime's default requeue rate limiter.
    pub fn rate_limiter(mut self, config: RateLimiterConfig) -> Self {
        self.rate_limiter = config;
        self
    }

    /// Call `observer` after every reconcile (e.g. to feed the operator's own metrics).
    pub fn on_reconcile(
        mut self,
        observer: impl Fn(&ReconcileOutcome<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// The controller name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cache of `K` the reconciles read from.
    pub fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// Becomes `true` once every watched kind has been listed (the readiness check
    /// "caches synced"), and stays `true`.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced_tx.subscribe()
    }

    /// Watch, and reconcile with `reconcile` and `ctx` until `shutdown` completes; then stop
    /// the watches, let in-flight reconciles finish and return.
    pub async fn run<Ctx, F, Fut, E, S>(self, reconcile: F, ctx: Arc<Ctx>, shutdown: S)
    where
        Ctx: Send + Sync + 'static,
        F: Fn(Event<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: std::error::Error + ErrorCategory + Send + 'static,
        S: Future,
    {
        let Self {
            name,
            api,
            watcher_config,
            writer,
            reader,
            sources,
            max_concurrent_reconciles,
            rate_limiter,
            queue_metrics,
            metrics,
            observers,
            synced_tx,
        } = self;
        let queue = WorkQueue::new(queue_metrics, rate_limiter);
        let sync = SyncTracker::new(1 + sources.len(), synced_tx);
        let feed = Feed {
            controller: Arc::clone(&name),
            queue: queue.clone(),
            sync: sync.clone(),
        };

        info!(controller = %name, kind = %K::kind(&()), "Starting EventSource");
        let mut watches = JoinSet::new();
        watches.spawn(watch_primary(
            api,
            watcher_config,
            writer,
            reader.clone(),
            feed.clone(),
        ));
        for source in sources {
            watches.spawn(source(feed.clone()));
        }

        let mut shutdown = std::pin::pin!(shutdown);
        let mut synced = sync.subscribe();
        let caches_synced = tokio::select! {
            _ = &mut shutdown => false,
            result = synced.wait_for(|synced| *synced) => result.is_ok(),
        };

        let mut workers = JoinSet::new();
        if caches_synced {
            info!(controller = %name, worker_count = max_concurrent_reconciles, "Starting workers");
            let shared = Arc::new(Workers {
                name: Arc::clone(&name),
                queue: queue.clone(),
                store: reader,
                reconcile,
                ctx,
                metrics,
                observers,
            });
            for _ in 0..max_concurrent_reconciles {
                workers.spawn(Arc::clone(&shared).work());
            }
            shutdown.await;
        }

        info!(controller = %name, "Shutdown signal received, waiting for all workers to finish");
        queue.shutdown();
        watches.abort_all();
        while let Some(joined) = workers.join_next().await {
            if let Err(err) = joined {
                error!(controller = %name, error = %err, "worker task failed");
            }
        }
        while watches.join_next().await.is_some() {}
        info!(controller = %name, "All workers finished");
    }
}

/// The keys of the controller-owners of `child` that are of kind `K`.
fn controller_owner<K: WatchedKind, C: WatchedKind>(child: &C) -> Vec<ObjectRef<K>> {
    let namespace = child.namespace();
    child
        .owner_references()
        .iter()
        .filter(|owner| owner.controller == Some(true))
        .filter_map(|owner| ObjectRef::from_owner_ref(namespace.as_deref(), owner, ()))
        .collect()
}

/// What a watch needs to feed the controller.
struct Feed<K: WatchedKind> {
    controller: Arc<str>,
    queue: WorkQueue<ObjectRef<K>>,
    sync: SyncTracker,
}

impl<K: WatchedKind> Clone for Feed<K> {
    fn clone(&self) -> Self {
        Self {
            controller: Arc::clone(&self.controller),
            queue: self.queue.clone(),
            sync: self.sync.clone(),
        }
    }
}

/// Counts watches that have not finished their first list yet; publishes `true` when
/// none is left.
#[derive(Clone)]
struct SyncTracker {
    pending: Arc<AtomicUsize>,
    tx: Arc<watch::Sender<bool>>,
}

impl SyncTracker {
    fn new(watches: usize, tx: watch::Sender<bool>) -> Self {
        if watches == 0 {
            tx.send_replace(true);
        }
        Self {
            pending: Arc::new(AtomicUsize::new(watches)),
            tx: Arc::new(tx),
        }
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// One watch finished its first list; each watch calls this once.
    fn listed(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tx.send_replace(true);
        }
    }
}

/// Watch `K` into the cache and enqueue every touched key once the cache holds the
/// event's state.
async fn watch_primary<K: WatchedKind>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<K>,
    reader: Store<K>,
    feed: Feed<K>,
) {
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    // During a (re-)list: the cache as it was before it, to find objects that vanished
    // while the watch was down (they get no Delete event), and the listed keys, which are
    // enqueued only when the new list is swapped into the cache at InitDone.
    let mut before_relist: Option<HashSet<ObjectRef<K>>> = None;
    let mut listed: Vec<ObjectRef<K>> = Vec::new();
    let mut first_list = true;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(controller = %feed.controller, kind = %K::kind(&()), error = %err, "watch failed; retrying");
                continue;
            }
        };
        match &event {
            watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                let key = ObjectRef::from_obj(obj);
                // Cache first: the reconcile the key leads to must see this state.
                writer.apply_watcher_event(&event);
                feed.queue.add(key);
            }
            watcher::Event::Init => {
                before_relist = Some(
                    reader
                        .state()
                        .iter()
                        .map(|obj| ObjectRef::from_obj(obj.as_ref()))
                        .collect(),
                );
                listed.clear();
                writer.apply_watcher_event(&event);
            }
            watcher::Event::InitApply(obj) => {
                let key = ObjectRef::from_obj(obj);
                if let Some(before) = before_relist.as_mut() {
                    before.remove(&key);
                }
                listed.push(key);
                writer.apply_watcher_event(&event);
            }
            watcher::Event::InitDone => {
                writer.apply_watcher_event(&event);
                // Vanished while the watch was down: they get their cleanup reconcile.
                for key in before_relist.take().unwrap_or_default() {
                    feed.queue.add(key);
                }
                for key in listed.drain(..) {
                    feed.queue.add(key);
                }
                if std::mem::take(&mut first_list) {
                    debug!(controller = %feed.controller, kind = %K::kind(&()), "cache synced");
                    feed.sync.listed();
                }
            }
        }
    }
}

/// Watch `C` and enqueue the keys `mapper` derives from each touched `C` (from its old and
/// its new state).
async fn watch_related<K, C, M>(api: Api<C>, config: watcher::Config, mapper: M, feed: Feed<K>)
where
    K: WatchedKind,
    C: WatchedKind,
    M: Fn(&C) -> Vec<ObjectRef<K>> + Send + Sync + 'static,
{
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    // The keys each known child mapped to when last seen: the "old object" side of an
    // update, without caching whole children.
    let mut mapped: HashMap<ObjectRef<C>, Vec<ObjectRef<K>>> = HashMap::new();
    let mut before_relist: Option<HashMap<ObjectRef<C>, Vec<ObjectRef<K>>>> = None;
    let mut pending: Vec<ObjectRef<K>> = Vec::new();
    let mut first_list = true;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(controller = %feed.controller, kind = %C::kind(&()), error = %err, "watch failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Apply(child) => {
                let keys = mapper(&child);
                let old = mapped.insert(ObjectRef::from_obj(&child), keys.clone());
                for key in keys.into_iter().chain(old.into_iter().flatten()) {
                    feed.queue.add(key);
                }
            }
            watcher::Event::Delete(child) => {
                let old = mapped.remove(&ObjectRef::from_obj(&child));
                for key in mapper(&child).into_iter().chain(old.into_iter().flatten()) {
                    feed.queue.add(key);
                }
            }
            watcher::Event::Init => {
                before_relist = Some(std::mem::take(&mut mapped));
                pending.clear();
            }
            watcher::Event::InitApply(child) => {
                let child_key = ObjectRef::from_obj(&child);
                let keys = mapper(&child);
                if let Some(old) = before_relist.as_mut().and_then(|b| b.remove(&child_key)) {
                    pending.extend(old);
                }
                pending.extend(keys.iter().cloned());
                mapped.insert(child_key, keys);
            }
            watcher::Event::InitDone => {
                // Children that vanished during the re-list still reach their old owners.
                for (_, old) in before_relist.take().unwrap_or_default() {
                    pending.extend(old);
                }
                for key in pending.drain(..) {
                    feed.queue.add(key);
                }
                if std::mem::take(&mut first_list) {
                    debug!(controller = %feed.controller, kind = %C::kind(&()), "cache synced");
                    feed.sync.listed();
                }
            }
        }
    }
}

/// What every worker of one controller shares.
struct Workers<K: WatchedKind, Ctx, F> {
    name: Arc<str>,
    queue: WorkQueue<ObjectRef<K>>,
    store: Store<K>,
    reconcile: F,
    ctx: Arc<Ctx>,
    metrics: ReconcileMetrics,
    observers: Vec<Observer>,
}

impl<K, Ctx, F, Fut, E> Workers<K, Ctx, F>
where
    K: WatchedKind,
    Ctx: Send + Sync + 'static,
    F: Fn(Event<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + ErrorCategory + Send + 'static,
{
    /// One worker: take a key, reconcile it, mark it done; until the queue shuts down.
    async fn work(self: Arc<Self>) {
        while let Some(key) = self.queue.get().await {
            self.metrics.active_workers.inc();
            self.reconcile_key(&key).await;
            self.queue.done(&key);
            self.metrics.active_workers.dec();
        }
    }

    async fn reconcile_key(&self, key: &ObjectRef<K>) {
        let event = match self.store.get(key) {
            Some(obj) => Event::Apply(obj),
            None => Event::Cleanup(key.clone()),
        };
        let reconcile_id = new_reconcile_id();
        let namespace = key.namespace.as_deref();
        let span = info_span!(
            "reconcile",
            controller = %self.name,
            reconcileID = %reconcile_id,
            namespace = %namespace.unwrap_or_default(),
            name = %key.name,
        );
        async {
            debug!("Reconciling");
            let started = Instant::now();
            let reconcile = (self.reconcile)(event, Arc::clone(&self.ctx));
            let outcome = AssertUnwindSafe(reconcile).catch_unwind().await;
            let duration = started.elapsed();

            let (result, error_category) = match outcome {
                Ok(Ok(Action::Done)) => {
                    self.queue.forget(key);
                    (ReconcileResult::Success, None)
                }
                Ok(Ok(Action::RequeueAfter(after))) if !after.is_zero() => {
                    self.queue.forget(key);
                    self.queue.add_after(key.clone(), after);
                    (ReconcileResult::RequeueAfter, None)
                }
                Ok(Ok(Action::Requeue | Action::RequeueAfter(_))) => {
                    self.queue.add_rate_limited(key.clone());
                    (ReconcileResult::Requeue, None)
                }
                Ok(Err(err)) => {
                    let category = err.category();
                    if err.is_terminal() {
                        // Not retried; forgetting also drops the key's backoff state.
                        self.queue.forget(key);
                        self.metrics.terminal_errors.inc();
                        error!(error = %err, category, terminal = true, "Reconciler error");
                    } else {
                        self.queue.add_rate_limited(key.clone());
                        // Retried with backoff: the spec logs retryable failures at warn
                        // and keeps error for what will not fix itself.
                        warn!(error = %err, category, "Reconciler error; retrying");
                    }
                    (ReconcileResult::Error, Some(category))
                }
                Err(panic) => {
                    self.queue.add_rate_limited(key.clone());
                    self.metrics.panics.inc();
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".to_owned());
                    error!(panic = %message, "Observed a panic in reconciler");
                    (ReconcileResult::Error, Some("panic"))
                }
            };

            self.metrics.time.observe(duration.as_secs_f64());
            match result {
                ReconcileResult::Success => self.metrics.success.inc(),
                ReconcileResult::Error => {
                    self.metrics.errors.inc();
                    self.metrics.error.inc()
                }
                ReconcileResult::Requeue => self.metrics.requeue.inc(),
                ReconcileResult::RequeueAfter => self.metrics.requeue_after.inc(),
            };
            debug!(
                result = result.as_str(),
                duration_seconds = duration.as_secs_f64(),
                "Reconcile finished"
            );

            let outcome = ReconcileOutcome {
                controller: &self.name,
                namespace,
                name: &key.name,
                reconcile_id: &reconcile_id,
                result,
                error_category,
                duration,
            };
            for observer in &self.observers {
                // An observer is the operator's code too; its panic must not kill the
                // worker and leave the key marked as processing forever.
                let observed = std::panic::catch_unwind(AssertUnwindSafe(|| observer(&outcome)));
                if observed.is_err() {
                    error!("Observed a panic in an on_reconcile observer");
                }
            }
        }
        .instrument(span)
        .await;
    }
}

/// A random id formatted like a UUID v4, without a UUID crate: std's `RandomState` is
/// seeded randomly per process, and the time and a counter make each call distinct.
pub fn new_reconcile_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let random = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(count);
        hasher.write_u64(salt);
        hasher.finish()
    };
    // Version 4 in the high nibble of the third group, variant 10 in the fourth.
    let high = (random(0) & !0xf000) | 0x4000;
    let low = (random(1) & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};

    use super::*;

    #[test]
    fn reconcile_ids_look_like_uuid_v4_and_differ() {
        let ids: HashSet<String> = (0..1000).map(|_| new_reconcile_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(
                matches!(groups[3].chars().next(), Some('8' | '9' | 'a' | 'b')),
                "{id}"
            );
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn result_labels_are_controller_runtime_ones() {
        let labels: Vec<&str> = [
            ReconcileResult::Success,
            ReconcileResult::Error,
            ReconcileResult::Requeue,
            ReconcileResult::RequeueAfter,
        ]
        .into_iter()
        .map(ReconcileResult::as_str)
        .collect();
        assert_eq!(labels, crate::metrics::RECONCILE_RESULTS);
    }

    type RecordedSpans = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;
    type Outcomes = Arc<Mutex<Vec<(ReconcileResult, Option<&'static str>)>>>;

    /// Records the fields of every span created while it is the default subscriber.
    #[derive(Default)]
    struct SpanRecorder {
        spans: RecordedSpans,
        next_id: AtomicU64,
    }

    struct FieldVisitor<'a>(&'a mut HashMap<String, String>);

    impl tracing::field::Visit for FieldVisitor<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
    }

    impl tracing::Subscriber for SpanRecorder {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut fields = HashMap::new();
            attrs.record(&mut FieldVisitor(&mut fields));
            self.spans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((attrs.metadata().name().to_owned(), fields));
            tracing::span::Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom {
        terminal: bool,
    }

    impl ErrorCategory for Boom {
        fn category(&self) -> &'static str {
            if self.terminal { "Invalid" } else { "Boom" }
        }
        fn is_terminal(&self) -> bool {
            self.terminal
        }
    }

    type Calls = Mutex<Vec<(String, bool, bool)>>;

    fn config_map(name: &str) -> k8s_openapi::api::core::v1::ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "ns" }
        }))
        .expect("valid configmap")
    }

    /// One reconcile at a time, without a cluster: the span, the Apply/Cleanup choice,
    /// the result mapping and panic recovery.
    #[tokio::test]
    async fn a_single_reconcile_is_spanned_classified_and_counted() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use prometheus_client::registry::Registry;

        use crate::metrics::testing::{encode, sample};

        let recorder = SpanRecorder::default();
        let spans = Arc::clone(&recorder.spans);
        let _default = tracing::subscriber::set_default(recorder);

        let mut registry = Registry::default();
        let metrics = RuntimeMetrics::register(&mut registry);
        let mut writer: Writer<ConfigMap> = Writer::default();
        writer.apply_watcher_event(&watcher::Event::Apply(config_map("present")));
        let outcomes: Outcomes = Arc::default();
        let workers = Workers {
            name: Arc::from("unit"),
            queue: WorkQueue::new(
                metrics.workqueue.for_queue("unit"),
                RateLimiterConfig::default(),
            ),
            store: writer.as_reader(),
            reconcile: |event: Event<ConfigMap>, calls: Arc<Calls>| async move {
                let key = event.key();
                let cleanup = matches!(event, Event::Cleanup(_));
                calls.lock().unwrap_or_else(PoisonError::into_inner).push((
                    key.name.clone(),
                    cleanup,
                    event.object().is_some(),
                ));
                match key.name.as_str() {
                    "failing" => Err(Boom { terminal: false }),
                    "invalid" => Err(Boom { terminal: true }),
                    "panicking" => panic!("reconcile panicked"),
                    _ => Ok(Action::Done),
                }
            },
            ctx: Arc::new(Calls::default()),
            metrics: metrics.controller.for_controller("unit"),
            observers: vec![{
                let outcomes = Arc::clone(&outcomes);
                Arc::new(move |o: &ReconcileOutcome<'_>| {
                    outcomes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((o.result, o.error_category));
                })
            }],
        };
        for name in ["present", "gone", "failing", "invalid", "panicking"] {
            workers
                .reconcile_key(&ObjectRef::new(name).within("ns"))
                .await;
        }

        let calls = workers
            .ctx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(
            calls,
            [
                ("present".to_owned(), false, true),
                ("gone".to_owned(), true, false),
                ("failing".to_owned(), true, false),
                ("invalid".to_owned(), true, false),
                ("panicking".to_owned(), true, false),
            ]
        );
        assert_eq!(
            *outcomes.lock().unwrap_or_else(PoisonError::into_inner),
            [
                (ReconcileResult::Success, None),
                (ReconcileResult::Success, None),
                (ReconcileResult::Error, Some("Boom")),
                (ReconcileResult::Error, Some("Invalid")),
                (ReconcileResult::Error, Some("panic")),
            ]
        );

        let text = encode(&registry);
        let c = ("controller", "unit");
        let total = |result| {
            sample(
                &text,
                "controller_runtime_reconcile_total",
                &[c, ("result", result)],
            )
        };
        assert_eq!(total("success"), Some(2.0));
        assert_eq!(total("error"), Some(3.0));
        assert_eq!(
            sample(&text, "controller_runtime_reconcile_errors_total", &[c]),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "controller_runtime_terminal_reconcile_errors_total",
                &[c]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "controller_runtime_reconcile_panics_total", &[c]),
            Some(1.0)
        );
        // The failing and the panicking reconcile are retried; the terminal one is not.
        assert_eq!(
            sample(&text, "workqueue_retries_total", &[c, ("name", "unit")]),
            Some(2.0)
        );

        let spans = spans.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let reconciles: Vec<_> = spans
            .iter()
            .filter(|(name, _)| name == "reconcile")
            .collect();
        assert_eq!(reconciles.len(), 5);
        let (_, fields) = reconciles[0];
        assert_eq!(fields.get("controller").map(String::as_str), Some("unit"));
        assert_eq!(fields.get("namespace").map(String::as_str), Some("ns"));
        assert_eq!(fields.get("name").map(String::as_str), Some("present"));
        let id = fields.get("reconcileID").expect("reconcileID field");
        assert_eq!(id.len(), 36, "{id}");
    }

    #[test]
    fn children_map_to_their_controller_owner_of_the_right_kind() {
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "child", "namespace": "ns",
                "ownerReferences": [
                    { "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": "1", "controller": true },
                    { "apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "2" },
                    { "apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "3", "controller": true }
                ]
            }
        }))
        .expect("valid secret");
        let owners = controller_owner::<ConfigMap, Secret>(&secret);
        assert_eq!(owners, vec![ObjectRef::new("parent").within("ns")]);
    }
}
