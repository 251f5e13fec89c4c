//! Running one watch and turning its events into queue keys.
//!
//! [`drive`] runs kube-runtime's watcher for one kind and hands every event to a
//! [`WatchSink`]: the primary cache of a controller, the key mapper of a related kind,
//! or the hub of a [`SharedWatch`](crate::SharedWatch). For an optional kind it first
//! asks discovery whether the kind is served and, while it is not, reports
//! [`SyncState::Missing`] and asks again every recheck interval.
//!
//! Invariants:
//! * a sink sees `Synced` only after the `InitDone` of a complete list was handed to it;
//! * when an optional kind stops being served (its CRD was deleted), the sink is handed
//!   an empty re-list (`Init`, `InitDone`) — every object it knew vanished — before the
//!   watch goes back to waiting for the kind;
//! * keys are enqueued only once the cache (if any) holds the state they were derived
//!   from, so the reconcile they lead to sees it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::controller::WatchedKind;
use crate::decode::{self, Decoded, SkipHook, Undecodable};
use crate::status::{KindName, StatusCell, SyncState};
use crate::workqueue::WorkQueue;

/// What a watch needs to feed a controller.
pub(crate) struct Feed<K: WatchedKind> {
    pub(crate) controller: Arc<str>,
    pub(crate) queue: WorkQueue<ObjectRef<K>>,
    pub(crate) status: StatusCell,
}

impl<K: WatchedKind> Clone for Feed<K> {
    fn clone(&self) -> Self {
        Self {
            controller: Arc::clone(&self.controller),
            queue: self.queue.clone(),
            status: self.status.clone(),
        }
    }
}

/// The receiving end of [`drive`].
pub(crate) trait WatchSink<C: WatchedKind>: Send {
    /// One watcher event, in order.
    fn event(&mut self, event: watcher::Event<C>);
    /// The watch's state changed (or was confirmed).
    fn state(&mut self, state: SyncState);
    /// The watch's health after its first sync: `Some("re-listing")`, `Some("failing:
    /// <error>")`, or `None` when it follows the API server again.
    fn trouble(&mut self, trouble: Option<&str>);
    /// An object changed or was deleted into a state that cannot be decoded: forget it
    /// (as if it was deleted) until a decodable version arrives.
    fn skipped(&mut self, key: ObjectRef<C>);
}

/// Whether the API server serves `kind` (discovery of its group/version).
pub(crate) async fn is_served(client: &Client, kind: &KindName) -> Result<bool, kube::Error> {
    let resources = if kind.group.is_empty() {
        client.list_core_api_resources(&kind.version).await
    } else {
        client.list_api_group_resources(&kind.api_version()).await
    };
    match resources {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == kind.plural)),
        // An unknown group/version answers a plain-text 404, which kube turns into a
        // Status with only the code set (so `is_not_found()` does not see it).
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Watch `C` forever, feeding `sink`. With `recheck`, the kind is optional: wait for it
/// to be served (checking every `recheck`), and go back to waiting if it goes away.
pub(crate) async fn drive<C, S>(
    api: Api<C>,
    config: watcher::Config,
    recheck: Option<Duration>,
    owner: Arc<str>,
    on_skip: Option<SkipHook>,
    mut sink: S,
) where
    C: WatchedKind,
    S: WatchSink<C>,
{
    let kind = KindName::of::<C>();
    let client = api.clone().into_client();
    let mut logged_sync = false;
    let mut hooked = HashSet::new();
    let mut backoff = Backoff::default();
    let mut failures = FailureLog::default();
    let mut failing = false;
    'served: loop {
        if let Some(interval) = recheck {
            wait_until_served(&client, &kind, interval, &owner, &mut sink).await;
        }
        'stream: loop {
            // Items are decoded one by one: an undecodable object is skipped, not a failed list.
            // No backoff inside the stream: a failure ends it, and after our own backoff a
            // fresh stream lists again (below).
            let mut events = std::pin::pin!(watcher(decode::api_of(&api), config.clone()));
            loop {
                let Some(event) = events.next().await else {
                    return;
                };
                match event {
                    Ok(event) => {
                        // `Init` comes before the list request is sent: no sign of
                        // recovery yet.
                        if !matches!(event, watcher::Event::Init)
                            && let Some(failed) = failures.recovered()
                        {
                            failing = false;
                            info!(controller = %owner, kind = %kind, failures = failed, "watch recovered");
                        }
                        // No controller reads managedFields; they are often the largest part
                        // of an object, so the caches do without them (controller-runtime's
                        // TransformStripManagedFields).
                        let event = event.modify(|obj| obj.managed_fields_mut().clear());
                        let event = match decoded(event) {
                            Ok(event) => event,
                            Err(skipped) => {
                                let (bad, live) = *skipped;
                                // Logged and counted once per process (another watch of the
                                // kind may have met it first); the hook once per watch.
                                decode::report(&kind, &bad);
                                let version = (
                                    bad.metadata.uid.clone().unwrap_or_default(),
                                    bad.metadata.resource_version.clone().unwrap_or_default(),
                                );
                                if let Some(hook) = &on_skip
                                    && hooked.insert(version)
                                {
                                    hook(&kind, &bad);
                                }
                                if live {
                                    let meta = &bad.metadata;
                                    let key = ObjectRef::<C>::new(
                                        meta.name.as_deref().unwrap_or_default(),
                                    );
                                    let key = match meta.namespace.as_deref() {
                                        Some(ns) => key.within(ns),
                                        None => key,
                                    };
                                    sink.skipped(key);
                                }
                                continue;
                            }
                        };
                        let listed = matches!(event, watcher::Event::InitDone);
                        if matches!(event, watcher::Event::Init) && logged_sync && !failing {
                            sink.trouble(Some(RELISTING));
                        }
                        sink.event(event);
                        if listed {
                            if !std::mem::replace(&mut logged_sync, true) {
                                debug!(controller = %owner, kind = %kind, "cache synced");
                            }
                            sink.state(SyncState::Synced);
                            sink.trouble(None);
                            backoff.reset();
                        }
                    }
                    Err(err) => {
                        // Bounded: an error may quote a whole response body.
                        let text = err.to_string();
                        let error = text
                            .get(..text.floor_char_boundary(MAX_LOGGED_ERROR))
                            .unwrap_or(&text);
                        failing = true;
                        if failures.failed().is_some()
                            && let Some(suppressed) = process_failure_log()
                        {
                            warn!(controller = %owner, kind = %kind, error, suppressed, "watch failed; retrying with backoff (/readyz names every failing watch)");
                        }
                        let reason = error
                            .get(..error.floor_char_boundary(MAX_TROUBLE))
                            .unwrap_or(error);
                        sink.trouble(Some(&format!("failing: {reason}")));
                        if recheck.is_some() && matches!(is_served(&client, &kind).await, Ok(false))
                        {
                            info!(controller = %owner, kind = %kind, "optional kind is no longer served; forgetting its objects");
                            sink.event(watcher::Event::Init);
                            sink.event(watcher::Event::InitDone);
                            sink.trouble(None);
                            continue 'served;
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                        // A fresh list: whatever was missed while the watch was down is
                        // caught up at once, and readiness turns only once it has been.
                        continue 'stream;
                    }
                }
            }
        }
    }
}

/// Across every watch of the process, at most one failure line per [`FailureLog::EVERY`]:
/// an API server outage fails every watch at once, and one line says it (`/readyz`
/// names each failing watch and why). `Some(failures not logged since)` when due.
fn process_failure_log() -> Option<u64> {
    static LOG: std::sync::Mutex<FailureLog> = std::sync::Mutex::new(FailureLog {
        last_logged: None,
        suppressed: 0,
        total: 0,
    });
    let mut log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let due = log
        .last_logged
        .is_none_or(|at| at.elapsed() >= FailureLog::EVERY);
    if due {
        log.last_logged = Some(std::time::Instant::now());
        Some(std::mem::take(&mut log.suppressed))
    } else {
        log.suppressed += 1;
        None
    }
}

/// What `informers` says of a synced watch that is listing again.
const RELISTING: &str = "re-listing";

/// Longest error a watch's readiness trouble carries.
const MAX_TROUBLE: usize = 200;

/// Exponential backoff with jitter between failed watch attempts: from 250 ms, doubling,
/// at most [`Backoff::MAX`] (so a watch is back within a few seconds of the API server),
/// reset by a complete list.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);

    fn next_delay(&mut self) -> Duration {
        let base = Self::FIRST
            .saturating_mul(1 << self.failures.min(8))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        // Jitter: 75%..125% of the base, from std's randomly seeded hasher.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(self.failures);
        let spread = (hasher.finish() % 501) as u32; // 0..=500 per mille
        base.mul_f64(0.75) + base.mul_f64(0.5) * spread / 500
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The event of decoded objects, or the undecodable object (and whether it came as a
/// change or deletion — `false` for a list item, which a re-list simply leaves out).
fn decoded<C>(
    event: watcher::Event<Decoded<C>>,
) -> Result<watcher::Event<C>, Box<(Undecodable, bool)>> {
    Ok(match event {
        watcher::Event::Apply(Decoded(obj)) => {
            watcher::Event::Apply(obj.map_err(|b| Box::new((b, true)))?)
        }
        watcher::Event::Delete(Decoded(obj)) => {
            watcher::Event::Delete(obj.map_err(|b| Box::new((b, true)))?)
        }
        watcher::Event::InitApply(Decoded(obj)) => {
            watcher::Event::InitApply(obj.map_err(|b| Box::new((b, false)))?)
        }
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}

/// Longest error text a watch failure log line carries.
const MAX_LOGGED_ERROR: usize = 512;

/// At most one log line per [`FailureLog::EVERY`] while a watch keeps failing, saying
/// how many failures it did not log; an outage costs a few lines, not one per retry.
#[derive(Debug, Default)]
struct FailureLog {
    last_logged: Option<std::time::Instant>,
    suppressed: u64,
    total: u64,
}

impl FailureLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(30);

    /// A failure: `Some(suppressed since the last line)` when it is to be logged.
    fn failed(&mut self) -> Option<u64> {
        self.total += 1;
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Self::EVERY);
        if due {
            self.last_logged = Some(std::time::Instant::now());
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// An event arrived: `Some(failures)` if there were any since the last success.
    fn recovered(&mut self) -> Option<u64> {
        let total = std::mem::take(&mut self.total);
        self.last_logged = None;
        self.suppressed = 0;
        (total > 0).then_some(total)
    }
}

/// Return once `kind` is served; report `Missing` while it is not, `Pending` when it
/// appears after having been missing.
async fn wait_until_served<C: WatchedKind, S: WatchSink<C>>(
    client: &Client,
    kind: &KindName,
    interval: Duration,
    owner: &str,
    sink: &mut S,
) {
    let mut missing = false;
    let mut crd = CrdPresence::watch(client, kind);
    loop {
        match is_served(client, kind).await {
            Ok(true) => break,
            Ok(false) => {
                if !std::mem::replace(&mut missing, true) {
                    info!(
                        controller = %owner,
                        kind = %kind,
                        crd = %kind.crd_name(),
                        recheck_seconds = interval.as_secs_f64(),
                        "optional kind is not installed; starting without it"
                    );
                    sink.state(SyncState::Missing);
                }
            }
            Err(err) => {
                warn!(controller = %owner, kind = %kind, error = %err, "cannot tell whether an optional kind is served; asking again");
            }
        }
        crd.next_look(interval).await;
    }
    if missing {
        info!(controller = %owner, kind = %kind, "optional kind is installed now; starting its watch");
        sink.state(SyncState::Pending);
    }
}

/// Whether the CRD of an optional kind exists, from a watch of that one CRD by name: while
/// the watch says it is absent, discovery is not asked again until the CRD appears, so a
/// missing kind costs one idle watch instead of a GET every `interval`. When the CRD exists
/// (it may not be served yet) or the watch cannot tell (an error, no permission to watch
/// CRDs, a core kind), discovery is asked every `interval` as before.
struct CrdPresence {
    events: Option<
        futures::stream::BoxStream<
            'static,
            watcher::Result<watcher::Event<CustomResourceDefinition>>,
        >,
    >,
    /// `Some(false)`: the last complete list or event showed no such CRD.
    present: Option<bool>,
    listed_one: bool,
}

impl CrdPresence {
    fn watch(client: &Client, kind: &KindName) -> Self {
        let events = (!kind.group.is_empty()).then(|| {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            let config =
                watcher::Config::default().fields(&format!("metadata.name={}", kind.crd_name()));
            watcher(api, config).boxed()
        });
        Self {
            events,
            present: None,
            listed_one: false,
        }
    }

    /// Wait until discovery is worth asking again.
    async fn next_look(&mut self, interval: Duration) {
        let Some(events) = self.events.as_mut() else {
            tokio::time::sleep(interval).await;
            return;
        };
        let deadline = tokio::time::Instant::now() + interval;
        loop {
            let absent = self.present == Some(false);
            let event = if absent {
                // Nothing to ask until the CRD appears.
                events.next().await
            } else {
                match tokio::time::timeout_at(deadline, events.next()).await {
                    Ok(event) => event,
                    Err(_) => return,
                }
            };
            match event {
                Some(Ok(watcher::Event::Init)) => self.listed_one = false,
                Some(Ok(watcher::Event::InitApply(_))) => self.listed_one = true,
                Some(Ok(watcher::Event::InitDone)) => {
                    self.present = Some(self.listed_one);
                    if self.listed_one && absent {
                        return;
                    }
                }
                Some(Ok(watcher::Event::Apply(_))) => {
                    self.present = Some(true);
                    return;
                }
                Some(Ok(watcher::Event::Delete(_))) => self.present = Some(false),
                Some(Err(_)) | None => {
                    // The watch cannot tell: back to asking discovery on the interval.
                    self.present = None;
                    if absent {
                        tokio::time::sleep(interval).await;
                        return;
                    }
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
    }
}

/// The primary kind of a controller: the cache its reconciles read, and one key per
/// touched object.
pub(crate) struct PrimarySink<K: WatchedKind> {
    writer: Writer<K>,
    reader: Store<K>,
    feed: Feed<K>,
    index: usize,
    /// During a (re-)list: the keys cached before it, to find objects that vanished while
    /// the watch was down (they get no Delete event).
    before_relist: Option<HashSet<ObjectRef<K>>>,
    /// The listed keys, enqueued only when the new list is swapped into the cache.
    listed: Vec<ObjectRef<K>>,
    /// Changes that need no reconcile (the controller's own writes).
    ignore: Option<crate::controller::ChangeFilter<K>>,
    /// Told of every change once the cache holds it.
    on_change: Vec<crate::controller::ChangeHook<K>>,
}

impl<K: WatchedKind> PrimarySink<K> {
    pub(crate) fn new(
        writer: Writer<K>,
        feed: Feed<K>,
        index: usize,
        ignore: Option<crate::controller::ChangeFilter<K>>,
        on_change: Vec<crate::controller::ChangeHook<K>>,
    ) -> Self {
        Self {
            reader: writer.as_reader(),
            writer,
            feed,
            index,
            before_relist: None,
            listed: Vec::new(),
            ignore,
            on_change,
        }
    }

    fn changed(&self, key: &ObjectRef<K>) {
        for hook in &self.on_change {
            hook(key);
        }
    }
}

impl<K: WatchedKind> WatchSink<K> for PrimarySink<K> {
    fn event(&mut self, event: watcher::Event<K>) {
        match &event {
            watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                let key = ObjectRef::from_obj(obj);
                // Cache first: the reconcile the key leads to must see this state.
                self.writer.apply_watcher_event(&event);
                let ignored = matches!(event, watcher::Event::Apply(_))
                    && self.ignore.as_ref().is_some_and(|ignore| ignore(obj));
                tracing::debug!(
                    kind = K::kind(&Default::default()).as_ref(),
                    object = %key,
                    resource_version = obj.meta().resource_version.as_deref().unwrap_or_default(),
                    ignored,
                    "primary changed"
                );
                self.changed(&key);
                if !ignored {
                    self.feed.queue.add(key);
                }
            }
            watcher::Event::Init => {
                self.before_relist = Some(
                    self.reader
                        .state()
                        .iter()
                        .map(|obj| ObjectRef::from_obj(obj.as_ref()))
                        .collect(),
                );
                self.listed.clear();
                self.writer.apply_watcher_event(&event);
            }
            watcher::Event::InitApply(obj) => {
                let key = ObjectRef::from_obj(obj);
                if let Some(before) = self.before_relist.as_mut() {
                    before.remove(&key);
                }
                self.listed.push(key);
                self.writer.apply_watcher_event(&event);
            }
            watcher::Event::InitDone => {
                self.writer.apply_watcher_event(&event);
                // Vanished while the watch was down: they get their cleanup reconcile.
                for key in self.before_relist.take().unwrap_or_default() {
                    self.changed(&key);
                    self.feed.queue.add(key);
                }
                for key in std::mem::take(&mut self.listed) {
                    self.changed(&key);
                    self.feed.queue.add(key);
                }
            }
        }
    }

    fn state(&mut self, state: SyncState) {
        self.feed.status.set(self.index, state);
    }

    fn trouble(&mut self, trouble: Option<&str>) {
        self.feed.status.set_trouble(self.index, trouble);
    }

    fn skipped(&mut self, key: ObjectRef<K>) {
        if let Some(cached) = self.reader.get(&key) {
            self.writer
                .apply_watcher_event(&watcher::Event::Delete(K::clone(&cached)));
            self.changed(&key);
            self.feed.queue.add(key);
        }
    }
}

/// A related kind watched by one controller alone: no cache of the related objects, only
/// the keys each one mapped to when last seen (the "old object" side of an update).
pub(crate) struct RelatedSink<K: WatchedKind, C: WatchedKind, M> {
    mapper: M,
    feed: Feed<K>,
    index: usize,
    mapped: HashMap<ObjectRef<C>, Vec<ObjectRef<K>>>,
    before_relist: Option<HashMap<ObjectRef<C>, Vec<ObjectRef<K>>>>,
    pending: Vec<ObjectRef<K>>,
}

impl<K: WatchedKind, C: WatchedKind, M> RelatedSink<K, C, M> {
    pub(crate) fn new(mapper: M, feed: Feed<K>, index: usize) -> Self {
        Self {
            mapper,
            feed,
            index,
            mapped: HashMap::new(),
            before_relist: None,
            pending: Vec::new(),
        }
    }
}

impl<K, C, M> WatchSink<C> for RelatedSink<K, C, M>
where
    K: WatchedKind,
    C: WatchedKind,
    M: Fn(&C) -> Vec<ObjectRef<K>> + Send,
{
    fn event(&mut self, event: watcher::Event<C>) {
        match event {
            watcher::Event::Apply(child) => {
                let keys = (self.mapper)(&child);
                let old = self
                    .mapped
                    .insert(ObjectRef::from_obj(&child), keys.clone());
                for key in keys.into_iter().chain(old.into_iter().flatten()) {
                    self.feed.queue.add(key);
                }
            }
            watcher::Event::Delete(child) => {
                let old = self.mapped.remove(&ObjectRef::from_obj(&child));
                for key in (self.mapper)(&child)
                    .into_iter()
                    .chain(old.into_iter().flatten())
                {
                    self.feed.queue.add(key);
                }
            }
            watcher::Event::Init => {
                self.before_relist = Some(std::mem::take(&mut self.mapped));
                self.pending.clear();
            }
            watcher::Event::InitApply(child) => {
                let child_key = ObjectRef::from_obj(&child);
                let keys = (self.mapper)(&child);
                if let Some(old) = self
                    .before_relist
                    .as_mut()
                    .and_then(|b| b.remove(&child_key))
                {
                    self.pending.extend(old);
                }
                self.pending.extend(keys.iter().cloned());
                self.mapped.insert(child_key, keys);
            }
            watcher::Event::InitDone => {
                // Children that vanished during the re-list still reach their old owners.
                for (_, old) in self.before_relist.take().unwrap_or_default() {
                    self.pending.extend(old);
                }
                for key in self.pending.drain(..) {
                    self.feed.queue.add(key);
                }
            }
        }
    }

    fn state(&mut self, state: SyncState) {
        self.feed.status.set(self.index, state);
    }

    fn trouble(&mut self, trouble: Option<&str>) {
        self.feed.status.set_trouble(self.index, trouble);
    }

    fn skipped(&mut self, key: ObjectRef<C>) {
        for key in self.mapped.remove(&key).into_iter().flatten() {
            self.feed.queue.add(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Backoff, FailureLog};

    #[test]
    fn backoff_grows_with_jitter_to_a_few_seconds_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(187) && delays[0] <= Duration::from_millis(313));
        assert!(delays[3] >= Duration::from_millis(1500), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(5)),
            "{delays:?}"
        );
        assert!(
            delays[9] >= Duration::from_secs(3),
            "capped, not reset: {delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(313));
    }

    #[test]
    fn failures_are_logged_once_per_interval_and_counted() {
        let mut log = FailureLog::default();
        assert_eq!(log.failed(), Some(0), "the first failure is logged");
        for _ in 0..5 {
            assert_eq!(log.failed(), None, "then held back");
        }
        assert_eq!(log.recovered(), Some(6));
        assert_eq!(log.recovered(), None, "nothing to report twice");
        assert_eq!(log.failed(), Some(0), "a new outage logs at once");
    }
}
