//! One watch and one cache of a kind, serving every controller that subscribes to it.
//!
//! Several controllers relate to the same kind (the ApplicationInstance and Cluster
//! controllers both look at HelmReleases; Operation and Cluster at Velero Backups). A
//! [`SharedWatch`] opens one watch and keeps one reflector [`Store`] for all of them;
//! each subscribed controller maps the changed objects to its own keys
//! ([`Controller::owns_shared`](crate::Controller::owns_shared),
//! [`Controller::watches_shared`](crate::Controller::watches_shared)) and may read the
//! objects from [`SharedWatch::store`].
//!
//! Invariants:
//! * the watch runs while at least one subscribed controller runs: the first one to start
//!   starts it, the last one to stop stops it (a later start re-lists);
//! * every event is applied to the store and handed to every subscriber under one lock,
//!   so a subscriber's reconcile triggered by an event sees at least that state, and a
//!   subscriber that joins late is handed every cached object once and then every
//!   later event, with no gap and no event twice;
//! * on an update, a subscriber's keys of both the previous and the new state are
//!   enqueued (a moved reference reaches its old target too); on a re-list, objects that
//!   vanished meanwhile reach the keys they mapped to;
//! * a subscriber counts the watch as synced from the shared watch's first complete list
//!   (or while an optional kind is missing), whenever it subscribed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kube::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::task::JoinHandle;

use crate::controller::WatchedKind;
use crate::source::{self, WatchSink};
use crate::status::{KindName, SyncState};

/// How often an optional kind that is not served is looked for again, unless configured.
pub const DEFAULT_RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// A watch and cache of `C` shared by several controllers; clones share one watch.
///
/// ```ignore
/// let releases = SharedWatch::new(Api::<HelmRelease>::all(client.clone()), watcher::Config::default());
/// let instances = Controller::new("applicationinstance", instances_api, &metrics).owns_shared(&releases);
/// let clusters = Controller::new("cluster", clusters_api, &metrics)
///     .watches_shared(&releases, |release: &HelmRelease| cluster_of(release));
/// let cached = releases.store(); // what both reconcile from
/// ```
pub struct SharedWatch<C: WatchedKind> {
    inner: Arc<Inner<C>>,
}

impl<C: WatchedKind> Clone for SharedWatch<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: WatchedKind> fmt::Debug for SharedWatch<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hub = self.inner.lock();
        f.debug_struct("SharedWatch")
            .field("kind", &self.inner.kind)
            .field("optional", &self.inner.optional)
            .field("state", &hub.state)
            .field("subscribers", &hub.subscribers.len())
            .field("running", &hub.task.is_some())
            .finish()
    }
}

struct Inner<C: WatchedKind> {
    kind: KindName,
    api: Api<C>,
    config: watcher::Config,
    optional: bool,
    recheck: Mutex<Duration>,
    reader: Store<C>,
    hub: Mutex<Hub<C>>,
}

/// What one subscribed controller does with the shared watch's changes.
pub(crate) trait Subscriber<C>: Send {
    /// An object changed; `states` are its previous and its current state (either may be
    /// absent: created, deleted, or both known; a deletion seen by the watch carries the
    /// object's final state as the current one, with `deleted` set). Enqueue the keys
    /// they map to.
    fn touched(&mut self, states: [Option<&C>; 2], deleted: bool);
    /// The shared watch's state.
    fn state(&mut self, state: SyncState);
    /// The shared watch's trouble (see `WatchSink::trouble`).
    fn trouble(&mut self, trouble: Option<&str>);
}

struct Hub<C: WatchedKind> {
    writer: Writer<C>,
    state: SyncState,
    trouble: Option<String>,
    subscribers: BTreeMap<u64, Box<dyn Subscriber<C>>>,
    next_id: u64,
    task: Option<JoinHandle<()>>,
    /// Bumped for every watch task started, so a stopped task that still gets to the
    /// lock once changes nothing.
    generation: u64,
    /// During a (re-)list: the cache before it, and each listed key with its old state.
    before_relist: Option<HashMap<ObjectRef<C>, Arc<C>>>,
    listed: Vec<(ObjectRef<C>, Option<Arc<C>>)>,
}

impl<C: WatchedKind> Inner<C> {
    fn lock(&self) -> MutexGuard<'_, Hub<C>> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: WatchedKind> SharedWatch<C> {
    /// A shared watch of `api` with `config` (selectors). It starts when the first
    /// subscribed controller runs.
    pub fn new(api: Api<C>, config: watcher::Config) -> Self {
        Self::build(api, config, false)
    }

    /// A shared watch of a kind that may not be installed: while the API server does not
    /// serve it, it counts as synced for its subscribers and is reported missing; it is
    /// looked for again every [`recheck_interval`](Self::recheck_interval) and watched as
    /// soon as it appears.
    pub fn optional(api: Api<C>, config: watcher::Config) -> Self {
        Self::build(api, config, true)
    }

    fn build(api: Api<C>, config: watcher::Config, optional: bool) -> Self {
        let writer = Writer::default();
        let reader = writer.as_reader();
        Self {
            inner: Arc::new(Inner {
                kind: KindName::of::<C>(),
                api,
                config,
                optional,
                recheck: Mutex::new(DEFAULT_RECHECK_INTERVAL),
                reader,
                hub: Mutex::new(Hub {
                    writer,
                    state: SyncState::Pending,
                    trouble: None,
                    subscribers: BTreeMap::new(),
                    next_id: 0,
                    task: None,
                    generation: 0,
                    before_relist: None,
                    listed: Vec::new(),
                }),
            }),
        }
    }

    /// How often a missing optional kind is looked for (default
    /// [`DEFAULT_RECHECK_INTERVAL`]); takes effect when the watch (re)starts.
    pub fn recheck_interval(self, interval: Duration) -> Self {
        *self
            .inner
            .recheck
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = interval;
        self
    }

    /// The cache: every object of the kind the watch has seen, as of its last event.
    pub fn store(&self) -> Store<C> {
        self.inner.reader.clone()
    }

    /// The watched kind.
    pub fn kind(&self) -> &KindName {
        &self.inner.kind
    }

    /// Whether the kind may be missing.
    pub fn is_optional(&self) -> bool {
        self.inner.optional
    }

    /// Where the watch stands (`Pending` while it is not running).
    pub fn state(&self) -> SyncState {
        self.inner.lock().state
    }

    /// Add a subscriber; it is handed every cached object and the current state first.
    /// Starts the watch if it is not running. Dropping the subscription removes it.
    pub(crate) fn subscribe(&self, mut subscriber: Box<dyn Subscriber<C>>) -> Subscription<C> {
        let mut hub = self.inner.lock();
        if hub.state != SyncState::Pending {
            for obj in self.inner.reader.state() {
                subscriber.touched([Some(obj.as_ref()), None], false);
            }
        }
        subscriber.state(hub.state);
        subscriber.trouble(hub.trouble.as_deref());
        let id = hub.next_id;
        hub.next_id += 1;
        hub.subscribers.insert(id, subscriber);
        if hub.task.is_none() {
            hub.generation += 1;
            let sink = HubSink {
                inner: Arc::clone(&self.inner),
                generation: hub.generation,
            };
            let recheck = self.inner.optional.then(|| {
                *self
                    .inner
                    .recheck
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            });
            hub.task = Some(tokio::spawn(source::drive(
                self.inner.api.clone(),
                self.inner.config.clone(),
                recheck,
                Arc::from("shared"),
                None,
                sink,
            )));
        }
        Subscription {
            inner: Arc::clone(&self.inner),
            id,
        }
    }
}

/// A subscriber's place in a [`SharedWatch`]; dropping it unsubscribes, and the last one
/// dropped stops the watch.
pub(crate) struct Subscription<C: WatchedKind> {
    inner: Arc<Inner<C>>,
    id: u64,
}

impl<C: WatchedKind> Drop for Subscription<C> {
    fn drop(&mut self) {
        let mut hub = self.inner.lock();
        hub.subscribers.remove(&self.id);
        if hub.subscribers.is_empty()
            && let Some(task) = hub.task.take()
        {
            task.abort();
            // The task may still get to the lock once before it is cancelled.
            hub.generation += 1;
            // Whoever starts it again waits for a fresh list.
            hub.state = SyncState::Pending;
            hub.trouble = None;
        }
    }
}

/// The shared watch's own [`WatchSink`]: store, then every subscriber.
struct HubSink<C: WatchedKind> {
    inner: Arc<Inner<C>>,
    generation: u64,
}

impl<C: WatchedKind> WatchSink<C> for HubSink<C> {
    fn event(&mut self, event: watcher::Event<C>) {
        let mut guard = self.inner.lock();
        if guard.generation != self.generation {
            return;
        }
        let hub = &mut *guard;
        let reader = &self.inner.reader;
        match &event {
            watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                let key = ObjectRef::from_obj(obj);
                let old = reader.get(&key);
                hub.writer.apply_watcher_event(&event);
                let new = match &event {
                    watcher::Event::Apply(obj) => Some(obj),
                    _ => None,
                };
                // A deleted object's final state maps like its previous one.
                let last = match &event {
                    watcher::Event::Delete(obj) => Some(obj),
                    _ => None,
                };
                for subscriber in hub.subscribers.values_mut() {
                    subscriber.touched([old.as_deref(), new.or(last)], last.is_some());
                }
            }
            watcher::Event::Init => {
                hub.before_relist = Some(
                    reader
                        .state()
                        .into_iter()
                        .map(|obj| (ObjectRef::from_obj(obj.as_ref()), obj))
                        .collect(),
                );
                hub.listed.clear();
                hub.writer.apply_watcher_event(&event);
            }
            watcher::Event::InitApply(obj) => {
                let key = ObjectRef::from_obj(obj);
                let old = hub.before_relist.as_mut().and_then(|b| b.remove(&key));
                hub.listed.push((key, old));
                hub.writer.apply_watcher_event(&event);
            }
            watcher::Event::InitDone => {
                hub.writer.apply_watcher_event(&event);
                let mut changes: Vec<[Option<Arc<C>>; 2]> = std::mem::take(&mut hub.listed)
                    .into_iter()
                    .map(|(key, old)| [old, reader.get(&key)])
                    .collect();
                // Vanished while the watch was down.
                changes.extend(
                    hub.before_relist
                        .take()
                        .unwrap_or_default()
                        .into_values()
                        .map(|old| [Some(old), None]),
                );
                for subscriber in hub.subscribers.values_mut() {
                    for [old, new] in &changes {
                        subscriber.touched([old.as_deref(), new.as_deref()], new.is_none());
                    }
                }
            }
        }
    }

    fn trouble(&mut self, trouble: Option<&str>) {
        let mut hub = self.inner.lock();
        if hub.generation != self.generation || hub.trouble.as_deref() == trouble {
            return;
        }
        hub.trouble = trouble.map(str::to_owned);
        for subscriber in hub.subscribers.values_mut() {
            subscriber.trouble(trouble);
        }
    }

    fn skipped(&mut self, key: ObjectRef<C>) {
        let mut guard = self.inner.lock();
        if guard.generation != self.generation {
            return;
        }
        let hub = &mut *guard;
        if let Some(old) = self.inner.reader.get(&key) {
            hub.writer
                .apply_watcher_event(&watcher::Event::Delete(C::clone(&old)));
            for subscriber in hub.subscribers.values_mut() {
                subscriber.touched([Some(old.as_ref()), None], true);
            }
        }
    }

    fn state(&mut self, state: SyncState) {
        let mut hub = self.inner.lock();
        if hub.generation != self.generation {
            return;
        }
        hub.state = state;
        for subscriber in hub.subscribers.values_mut() {
            subscriber.state(state);
        }
    }
}
