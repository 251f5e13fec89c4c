//! A controller runner in the shape of controller-runtime's: informers (watch + cache)
//! feed object keys into a [`WorkQueue`]; a fixed pool of workers takes keys out and
//! reconciles the cached object; the result decides how the key is requeued.
//!
//! A controller watches its primary kind `K` and any number of related kinds, each
//! mapped to keys of `K`:
//! * private watches ([`owns`](Controller::owns), [`watches_with`](Controller::watches_with))
//!   keep no cache of the related objects, only the keys they mapped to;
//! * [`SharedWatch`]es ([`owns_shared`](Controller::owns_shared),
//!   [`watches_shared`](Controller::watches_shared)) keep one watch and one cache of a
//!   kind for every controller that subscribes;
//! * optional watches ([`owns_optional`](Controller::owns_optional),
//!   [`watches_optional`](Controller::watches_optional), or an optional shared watch)
//!   are of kinds whose CRD may be absent: while it is, the watch counts as synced, is
//!   reported in [`status`](Controller::status), and is looked for again every
//!   [`optional_recheck_interval`](Controller::optional_recheck_interval); when the CRD
//!   appears the watch starts, without a restart.
//!
//! Invariants:
//! * a key (namespace/name) is never reconciled by two workers at once — the queue
//!   guarantees it, however many events arrive meanwhile;
//! * workers start only after every watch has completed its initial list (or its
//!   optional kind was found missing), so a reconcile never mistakes "not cached yet"
//!   for "deleted";
//! * every event about an object, or about a related object mapped to it, leads to at
//!   least one reconcile that starts after the event was cached;
//! * a deleted object is reconciled once more as [`Event::Cleanup`] (also when the
//!   deletion was only noticed by a re-list); it carries only the key, since no state of
//!   a deleted object is kept in memory — a controller that needs the last state to
//!   clean up holds the object back with a finalizer and cleans up on its `Apply`;
//! * a panicking reconcile is an error (counted in `controller_runtime_reconcile_panics_total`
//!   too), never a dead worker or a key stuck "processing";
//! * a failed reconcile of an existing object is handed to the
//!   [`report_errors`](Controller::report_errors) hook, awaited before the key is done;
//! * stopping ([`Shutdown`]) hands out no new key and stops the watches; a graceful stop
//!   lets in-flight reconciles finish within the drain timeout, an abort cuts them off.
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

use std::collections::hash_map::RandomState;
use std::fmt::{self, Debug};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::decode::{SkipHook, Undecodable};
use crate::metrics::{QueueMetrics, ReconcileMetrics, RuntimeMetrics};
use crate::report::{ErrorReport, error_chain};
use crate::shared::{DEFAULT_RECHECK_INTERVAL, SharedWatch, Subscriber};
use crate::shutdown::{Shutdown, StopReason, Stopped};
use crate::source::{self, Feed, PrimarySink, RelatedSink};
use crate::status::{ControllerStatus, KindName, StatusCell, SyncState};
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
type Reporter<K> = Arc<dyn Fn(Arc<K>, ErrorReport) -> BoxFuture<'static, ()> + Send + Sync>;

/// What a related watch gets when its controller starts running.
struct SourceCtx<K: WatchedKind> {
    feed: Feed<K>,
    recheck: Duration,
}

type Source<K> = Box<dyn FnOnce(SourceCtx<K>) -> BoxFuture<'static, ()> + Send>;

/// A controller for kind `K`, built step by step and then [`run`](Self::run).
///
/// ```ignore
/// let metrics = RuntimeMetrics::register(&mut registry);
/// let releases = SharedWatch::new(Api::<HelmRelease>::all(client.clone()), watcher::Config::default());
/// let controller = Controller::new("applicationinstance", Api::<ApplicationInstance>::all(client.clone()), &metrics)
///     .owns_shared(&releases)
///     .watches_optional(Api::<Backup>::all(client.clone()), watcher::Config::default(), backup_owner)
///     .max_concurrent_reconciles(4)
///     .on_reconcile(|outcome| spec_metrics.observe(outcome))
///     .report_errors(|instance, report| warn_event(instance, report).boxed());
/// readiness.add(controller.status()); // for /readyz
/// controller.run(reconcile, Arc::new(ctx), Shutdown::new(sigterm).abort_on(lost_lease)).await;
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
    optional_recheck: Duration,
    queue_metrics: QueueMetrics,
    metrics: ReconcileMetrics,
    observers: Vec<Observer>,
    reporter: Option<Reporter<K>>,
    status: StatusCell,
    ignore_primary: Option<ChangeFilter<K>>,
    on_skip: Option<SkipHook>,
    on_change: Vec<ChangeHook<K>>,
}

/// Told the key of each primary object whose cached state changed; see
/// [`Controller::notify_changes`].
pub type ChangeHook<K> = Arc<dyn Fn(&ObjectRef<K>) + Send + Sync>;

/// Decides, from an object's new state, that its change needs no reconcile; see
/// [`Controller::ignore_primary_changes`].
pub type ChangeFilter<K> = Arc<dyn Fn(&K) -> bool + Send + Sync>;

/// Decides, from an object's previous cached state (`None` when it is new) and its new
/// state, that its change needs no reconcile; see [`Controller::owns_shared_ignoring`].
pub type TransitionFilter<K> = Arc<dyn Fn(Option<&K>, &K) -> bool + Send + Sync>;

impl<K: WatchedKind> Debug for Controller<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("kind", &K::kind(&()))
            .field("related_watches", &self.sources.len())
            .field("max_concurrent_reconciles", &self.max_concurrent_reconciles)
            .field("status", &self.status.status().state())
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
        let status = StatusCell::new(&name);
        status.add_watch(KindName::of::<K>(), false, false);
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
            optional_recheck: DEFAULT_RECHECK_INTERVAL,
            metrics: reconcile_metrics,
            observers: Vec::new(),
            reporter: None,
            status,
            ignore_primary: None,
            on_skip: None,
            on_change: Vec::new(),
        }
    }

    /// Call `hook` for each primary object the watch skips because it cannot be decoded,
    /// the first time this process sees that version of it (see [`crate::decode`]; the
    /// warn line and the counter need no hook). The object is not in the cache and gets
    /// no reconcile; the hook is where the controller tells its owner, e.g. with a
    /// Warning Event.
    pub fn on_undecodable(
        mut self,
        hook: impl Fn(&KindName, &Undecodable) + Send + Sync + 'static,
    ) -> Self {
        self.on_skip = Some(Arc::new(hook));
        self
    }

    /// Do not reconcile a changed primary object for which `filter` returns `true` (the
    /// cache is still updated). For changes the controller made itself and has already
    /// accounted for — typically its own status write, recognised by the resourceVersion
    /// the write returned — so they cost no reconcile. Deletions and re-lists are never
    /// filtered.
    pub fn ignore_primary_changes(
        mut self,
        filter: impl Fn(&K) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.ignore_primary = Some(Arc::new(filter));
        self
    }

    /// Call `hook` with the key of every primary object whose cached state has just
    /// changed — created, updated (the changes [`ignore_primary_changes`] filters out
    /// included), deleted, or (re)listed or gone after a relist — once this controller's
    /// cache holds the new state. For another controller that reads this one's cache
    /// (see [`store`](Self::store)) and must look again when it changes: it gets one
    /// watch of the kind instead of a second one, and never a notice the cache does not
    /// show yet. The hook runs on the watch task, so it must be quick (send to a
    /// channel).
    ///
    /// [`ignore_primary_changes`]: Self::ignore_primary_changes
    pub fn notify_changes(mut self, hook: impl Fn(&ObjectRef<K>) + Send + Sync + 'static) -> Self {
        self.on_change.push(Arc::new(hook));
        self
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
    pub fn watches_with<C, I, M>(self, api: Api<C>, config: watcher::Config, mapper: M) -> Self
    where
        C: WatchedKind,
        I: IntoIterator<Item = ObjectRef<K>>,
        M: Fn(&C) -> I + Send + Sync + 'static,
    {
        self.related(api, config, mapper, false)
    }

    /// [`owns`](Self::owns) for a kind whose CRD may not be installed (see
    /// [`watches_optional`](Self::watches_optional)).
    pub fn owns_optional<C: WatchedKind>(self, api: Api<C>, config: watcher::Config) -> Self {
        self.watches_optional(api, config, controller_owner::<K, C>)
    }

    /// [`watches_with`](Self::watches_with) for a kind whose CRD may not be installed:
    /// while the API server does not serve it, the controller starts and runs without it,
    /// reports it in [`status`](Self::status) as missing, and asks discovery again every
    /// [`optional_recheck_interval`](Self::optional_recheck_interval); once it is served,
    /// the watch starts and its objects are mapped and enqueued as usual.
    pub fn watches_optional<C, I, M>(self, api: Api<C>, config: watcher::Config, mapper: M) -> Self
    where
        C: WatchedKind,
        I: IntoIterator<Item = ObjectRef<K>>,
        M: Fn(&C) -> I + Send + Sync + 'static,
    {
        self.related(api, config, mapper, true)
    }

    fn related<C, I, M>(
        mut self,
        api: Api<C>,
        config: watcher::Config,
        mapper: M,
        optional: bool,
    ) -> Self
    where
        C: WatchedKind,
        I: IntoIterator<Item = ObjectRef<K>>,
        M: Fn(&C) -> I + Send + Sync + 'static,
    {
        let index = self.status.add_watch(KindName::of::<C>(), optional, false);
        let mapper = move |obj: &C| -> Vec<ObjectRef<K>> { mapper(obj).into_iter().collect() };
        self.sources.push(Box::new(move |ctx: SourceCtx<K>| {
            let owner = Arc::clone(&ctx.feed.controller);
            let recheck = optional.then_some(ctx.recheck);
            let sink = RelatedSink::new(mapper, ctx.feed, index);
            source::drive(api, config, recheck, owner, None, sink).boxed()
        }));
        self
    }

    /// Reconcile the controller-owner (of kind `K`) of each object of the shared watch
    /// when it changes; see [`owns`](Self::owns).
    pub fn owns_shared<C: WatchedKind>(self, shared: &SharedWatch<C>) -> Self {
        self.watches_shared(shared, controller_owner::<K, C>)
    }

    /// Reconcile the objects `mapper` names when an object of the shared watch changes
    /// (both its previous and its new state, as in [`watches_with`](Self::watches_with)).
    /// The shared watch runs once for every controller subscribed to it; this controller
    /// counts it as synced once it has listed (or, if optional, while it is missing).
    pub fn watches_shared<C, I, M>(self, shared: &SharedWatch<C>, mapper: M) -> Self
    where
        C: WatchedKind,
        I: IntoIterator<Item = ObjectRef<K>>,
        M: Fn(&C) -> I + Send + Sync + 'static,
    {
        self.subscribe_shared(shared, mapper, None)
    }

    /// [`owns_shared`](Self::owns_shared), except that a change `ignore` recognises
    /// reconciles nothing. It is called with the cached state before the change (`None`
    /// for a new object) and the new one; deletions always reconcile. Two uses: the
    /// controller's own writes to its children, recognised by the resourceVersion the
    /// write returned, and changes to parts of a child the reconcile does not read.
    pub fn owns_shared_ignoring<C: WatchedKind>(
        self,
        shared: &SharedWatch<C>,
        ignore: impl Fn(Option<&C>, &C) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.subscribe_shared(shared, controller_owner::<K, C>, Some(Arc::new(ignore)))
    }

    fn subscribe_shared<C, I, M>(
        mut self,
        shared: &SharedWatch<C>,
        mapper: M,
        ignore: Option<TransitionFilter<C>>,
    ) -> Self
    where
        C: WatchedKind,
        I: IntoIterator<Item = ObjectRef<K>>,
        M: Fn(&C) -> I + Send + Sync + 'static,
    {
        let index = self
            .status
            .add_watch(shared.kind().clone(), shared.is_optional(), true);
        let shared = shared.clone();
        self.sources.push(Box::new(move |ctx: SourceCtx<K>| {
            async move {
                let _subscription = shared.subscribe(Box::new(SharedFeed {
                    feed: ctx.feed,
                    index,
                    mapper,
                    ignore,
                }));
                // Subscribed until the controller stops its watches (drops this future).
                std::future::pending::<()>().await
            }
            .boxed()
        }));
        self
    }

    /// Reconcile the objects `triggers` yields, as they come: for changes the API server
    /// does not show — state held in process, like the control-plane link's
    /// connectivity, that the controller writes to status. The stream is polled for as
    /// long as the controller runs; when it ends, nothing else is triggered through it.
    pub fn triggered_by(
        mut self,
        triggers: impl futures::Stream<Item = ObjectRef<K>> + Send + 'static,
    ) -> Self {
        self.sources.push(Box::new(move |ctx: SourceCtx<K>| {
            async move {
                let mut triggers = std::pin::pin!(triggers);
                while let Some(key) = triggers.next().await {
                    ctx.feed.queue.add(key);
                }
                std::future::pending::<()>().await
            }
            .boxed()
        }));
        self
    }

    /// How often the controller's own optional watches look for their missing kinds
    /// again (default 30 s). Optional [`SharedWatch`]es have their own interval.
    pub fn optional_recheck_interval(mut self, interval: Duration) -> Self {
        self.optional_recheck = interval;
        self
    }

    /// How many reconciles may run at once (controller-runtime's
    /// `MaxConcurrentReconciles`; at least 1).
    pub fn max_concurrent_reconciles(mut self, n: usize) -> Self {
        self.max_concurrent_reconciles = n.max(1);
        self.metrics
            .max_concurrent_reconciles
            .set(i64::try_from(self.max_concurrent_reconciles).unwrap_or(i64::MAX));
        self
    }

    /// The requeue backoff parameters.
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

    /// After a reconcile of an existing object returned an error or panicked, await
    /// `reporter` with the object and an [`ErrorReport`] (e.g. to set a condition or
    /// emit a Warning Event). See [`report`](crate::report) for the guarantees.
    pub fn report_errors(
        mut self,
        reporter: impl Fn(Arc<K>, ErrorReport) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.reporter = Some(Arc::new(reporter));
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

    /// `true` while every watch counts as synced (listed, or optional and missing); the
    /// workers start the first time it is.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.status.synced()
    }

    /// The live status of every watch of this controller (for readiness and for
    /// reporting missing optional kinds).
    pub fn status(&self) -> ControllerStatus {
        self.status.status()
    }

    /// Watch, and reconcile with `reconcile` and `ctx` until `shutdown` says stop (see
    /// [`shutdown`](crate::shutdown) for graceful and abort semantics).
    pub async fn run<Ctx, F, Fut, E>(
        self,
        reconcile: F,
        ctx: Arc<Ctx>,
        shutdown: Shutdown,
    ) -> Stopped
    where
        Ctx: Send + Sync + 'static,
        F: Fn(Event<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: std::error::Error + ErrorCategory + Send + 'static,
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
            optional_recheck,
            queue_metrics,
            metrics,
            observers,
            reporter,
            status,
            ignore_primary,
            on_skip,
            on_change,
        } = self;
        let queue = WorkQueue::new(queue_metrics, rate_limiter);
        let feed = Feed {
            controller: Arc::clone(&name),
            queue: queue.clone(),
            status: status.clone(),
        };

        info!(controller = %name, kind = %K::kind(&()), "Starting EventSource");
        let mut watches = JoinSet::new();
        watches.spawn(source::drive(
            api,
            watcher_config,
            None,
            Arc::clone(&name),
            on_skip,
            PrimarySink::new(writer, feed.clone(), 0, ignore_primary, on_change),
        ));
        for source in sources {
            watches.spawn(source(SourceCtx {
                feed: feed.clone(),
                recheck: optional_recheck,
            }));
        }

        let Shutdown {
            graceful,
            abort,
            drain_timeout,
        } = shutdown;
        let mut synced = status.synced();
        let stopped_early = tokio::select! {
            biased;
            () = abort.clone() => Some(Stop::Abort),
            () = graceful.clone() => Some(Stop::Graceful),
            result = synced.wait_for(|synced| *synced) => result.err().map(|_| Stop::Graceful),
        };

        let workers = Arc::new(Workers {
            name: Arc::clone(&name),
            queue: queue.clone(),
            store: reader,
            reconcile,
            ctx,
            metrics,
            observers,
            reporter,
            cut_off: AtomicUsize::new(0),
            retry_logged: Default::default(),
        });
        let mut tasks = JoinSet::new();
        let stop = match stopped_early {
            Some(stop) => stop,
            None => {
                info!(controller = %name, worker_count = max_concurrent_reconciles, "Starting workers");
                status.workers_started();
                for _ in 0..max_concurrent_reconciles {
                    tasks.spawn(Arc::clone(&workers).work());
                }
                tokio::select! {
                    biased;
                    () = abort.clone() => Stop::Abort,
                    () = graceful => Stop::Graceful,
                }
            }
        };

        queue.shutdown();
        watches.abort_all();
        let reason = match stop {
            Stop::Graceful => {
                info!(
                    controller = %name,
                    drain_timeout_seconds = drain_timeout.as_secs_f64(),
                    "Shutdown signal received, waiting for all workers to finish"
                );
                tokio::select! {
                    biased;
                    () = abort => StopReason::Aborted,
                    drained = tokio::time::timeout(drain_timeout, join_workers(&mut tasks, &name)) => {
                        if drained.is_ok() { StopReason::Drained } else { StopReason::DrainTimedOut }
                    }
                }
            }
            Stop::Abort => StopReason::Aborted,
        };
        tasks.abort_all();
        join_workers(&mut tasks, &name).await;
        while watches.join_next().await.is_some() {}

        let cut_off = workers.cut_off.load(Ordering::SeqCst);
        match reason {
            StopReason::Drained => info!(controller = %name, "All workers finished"),
            StopReason::DrainTimedOut => warn!(
                controller = %name,
                cut_off,
                drain_timeout_seconds = drain_timeout.as_secs_f64(),
                "Drain timeout passed; cut off {cut_off} in-flight reconciles"
            ),
            StopReason::Aborted if cut_off > 0 => warn!(
                controller = %name,
                cut_off,
                "Stopped at once; cut off {cut_off} in-flight reconciles"
            ),
            StopReason::Aborted => {
                info!(controller = %name, "Stopped at once; no reconcile was in flight")
            }
        }
        Stopped { reason, cut_off }
    }
}

/// Which signal came first.
enum Stop {
    Graceful,
    Abort,
}

/// Wait for every worker task; cancelled ones (cut off) are expected.
async fn join_workers(tasks: &mut JoinSet<()>, name: &str) {
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined
            && !err.is_cancelled()
        {
            error!(controller = %name, error = %err, "worker task failed");
        }
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

/// One controller's subscription to a [`SharedWatch`].
struct SharedFeed<K: WatchedKind, C, M> {
    feed: Feed<K>,
    index: usize,
    mapper: M,
    /// Changes (by their previous and new state) that need no reconcile.
    ignore: Option<TransitionFilter<C>>,
}

impl<K, C, I, M> Subscriber<C> for SharedFeed<K, C, M>
where
    K: WatchedKind,
    C: WatchedKind,
    I: IntoIterator<Item = ObjectRef<K>>,
    M: Fn(&C) -> I + Send + Sync + 'static,
{
    fn touched(&mut self, states: [Option<&C>; 2], deleted: bool) {
        if let (false, Some(ignore), [old, Some(new)]) = (deleted, &self.ignore, states)
            && ignore(old, new)
        {
            tracing::debug!(
                kind = C::kind(&Default::default()).as_ref(),
                object = %ObjectRef::from_obj(new),
                resource_version = new.meta().resource_version.as_deref().unwrap_or_default(),
                "child change ignored"
            );
            return;
        }
        if let Some(obj) = states[1].or(states[0]) {
            tracing::debug!(
                kind = C::kind(&Default::default()).as_ref(),
                object = %ObjectRef::from_obj(obj),
                resource_version = obj.meta().resource_version.as_deref().unwrap_or_default(),
                deleted,
                "child changed"
            );
        }
        for obj in states.into_iter().flatten() {
            for key in (self.mapper)(obj) {
                self.feed.queue.add(key);
            }
        }
    }

    fn state(&mut self, state: SyncState) {
        self.feed.status.set(self.index, state);
    }

    fn trouble(&mut self, trouble: Option<&str>) {
        self.feed.status.set_trouble(self.index, trouble);
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
    reporter: Option<Reporter<K>>,
    /// Reconciles whose future was dropped before it finished (shutdown cut them off).
    cut_off: AtomicUsize,
    /// When each key's retryable error was last logged at warn (see [`RETRY_LOG_EVERY`]).
    retry_logged: std::sync::Mutex<std::collections::HashMap<ObjectRef<K>, (Instant, u64)>>,
}

/// A key that keeps failing with retryable errors (an API server outage) is logged at
/// warn at most this often, with the number of failures not logged; the others go to
/// debug.
const RETRY_LOG_EVERY: Duration = Duration::from_secs(30);

/// A key being worked on: marks it done and the worker idle however the work ends, and
/// counts it as cut off if it did not end by itself.
struct InFlight<'a, K: WatchedKind> {
    queue: &'a WorkQueue<ObjectRef<K>>,
    key: &'a ObjectRef<K>,
    active_workers: &'a Gauge,
    cut_off: &'a AtomicUsize,
    finished: bool,
}

impl<K: WatchedKind> Drop for InFlight<'_, K> {
    fn drop(&mut self) {
        self.queue.done(self.key);
        self.active_workers.dec();
        if !self.finished {
            self.cut_off.fetch_add(1, Ordering::SeqCst);
        }
    }
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
            let mut in_flight = InFlight {
                queue: &self.queue,
                key: &key,
                active_workers: &self.metrics.active_workers,
                cut_off: &self.cut_off,
                finished: false,
            };
            self.reconcile_key(&key).await;
            in_flight.finished = true;
        }
    }

    /// A retryable failure of `key`: `Some(failures not logged since the last warn)` when
    /// this one is to be logged at warn.
    fn retry_log(&self, key: &ObjectRef<K>) -> Option<u64> {
        let mut logged = self
            .retry_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match logged.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < RETRY_LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                logged.insert(key.clone(), (now, 0));
                Some(0)
            }
        }
    }

    fn retry_forget(&self, key: &ObjectRef<K>) {
        self.retry_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    async fn reconcile_key(&self, key: &ObjectRef<K>) {
        let event = match self.store.get(key) {
            Some(obj) => Event::Apply(obj),
            None => Event::Cleanup(key.clone()),
        };
        let applied = event.object().cloned();
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

            let (result, error_category, report) = match outcome {
                Ok(Ok(Action::Done)) => {
                    self.retry_forget(key);
                    // A success supersedes what an earlier reconcile scheduled (a
                    // RequeueAfter, a backoff retry): it is stale now.
                    self.queue.forget(key);
                    self.queue.cancel_delayed(key);
                    (ReconcileResult::Success, None, None)
                }
                Ok(Ok(Action::RequeueAfter(after))) if !after.is_zero() => {
                    self.queue.forget(key);
                    self.queue.cancel_delayed(key);
                    self.queue.add_after(key.clone(), after);
                    (ReconcileResult::RequeueAfter, None, None)
                }
                Ok(Ok(Action::Requeue | Action::RequeueAfter(_))) => {
                    self.queue.add_rate_limited(key.clone());
                    (ReconcileResult::Requeue, None, None)
                }
                Ok(Err(err)) => {
                    let category = err.category();
                    if err.is_terminal() {
                        // Not retried; forgetting also drops the key's backoff state.
                        self.queue.forget(key);
                        self.metrics.terminal_errors.inc();
                        error!(error = %error_chain(&err), category, terminal = true, "Reconciler error");
                    } else {
                        self.queue.add_rate_limited(key.clone());
                        // Retried with backoff: the spec logs retryable failures at warn
                        // and keeps error for what will not fix itself.
                        match self.retry_log(key) {
                            Some(suppressed) => warn!(error = %error_chain(&err), category, suppressed, "Reconciler error; retrying"),
                            None => debug!(error = %error_chain(&err), category, "Reconciler error; retrying"),
                        }
                    }
                    let report = self.reporter.is_some().then(|| ErrorReport::of(&err));
                    (ReconcileResult::Error, Some(category), report)
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
                    let report = Some(ErrorReport::panic(&message));
                    (ReconcileResult::Error, Some("panic"), report)
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

            if let (Some(reporter), Some(obj), Some(report)) = (&self.reporter, applied, report) {
                let reported = std::panic::catch_unwind(AssertUnwindSafe(|| reporter(obj, report)));
                let reported = match reported {
                    Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
                    Err(panic) => Err(panic),
                };
                if reported.is_err() {
                    error!("Observed a panic in the error reporter");
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
    use std::collections::{HashMap, HashSet};
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

        use crate::metrics::scrape::parsed;

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
            reporter: None,
            cut_off: AtomicUsize::new(0),
            retry_logged: Default::default(),
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

        let scraped = parsed(&registry);
        let c = ("controller", "unit");
        let total = |result| {
            scraped.value(
                "controller_runtime_reconcile_total",
                &[c, ("result", result)],
            )
        };
        assert_eq!(total("success"), Some(2.0));
        assert_eq!(total("error"), Some(3.0));
        assert_eq!(
            scraped.value("controller_runtime_reconcile_errors_total", &[c]),
            Some(3.0)
        );
        assert_eq!(
            scraped.value("controller_runtime_terminal_reconcile_errors_total", &[c]),
            Some(1.0)
        );
        assert_eq!(
            scraped.value("controller_runtime_reconcile_panics_total", &[c]),
            Some(1.0)
        );
        // The failing and the panicking reconcile are retried; the terminal one is not.
        assert_eq!(
            scraped.value("workqueue_retries_total", &[c, ("name", "unit")]),
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
