//! A rate-limited work queue with the semantics of client-go's
//! `workqueue.TypedRateLimitingInterface`, instrumented with its exact metrics.
//!
//! An item moves through three sets:
//! * **dirty** — it needs processing (it was added and not yet handed out since);
//! * **queue** — the dirty items that are not being processed, in FIFO order;
//! * **processing** — handed out by [`WorkQueue::get`] and not yet [`WorkQueue::done`].
//!
//! Invariants (all changes happen under one lock):
//! * an item is in the queue at most once: adding a dirty item again is a no-op;
//! * an item is never processed by two workers at once: adding an item that is being
//!   processed only marks it dirty, and `done` puts it back in the queue;
//! * `workqueue_depth` is exactly the number of dirty items, i.e. the objects waiting
//!   for a reconcile (including one that was re-added while it is being processed);
//!   items waiting in `add_after` are not counted until their delay has passed, as in
//!   client-go;
//! * after [`WorkQueue::shutdown`], adds are ignored and `get` returns `None` at once
//!   (unlike client-go, the queue is not drained: a stopping controller, e.g. one that
//!   lost its leader lease, must not start new work), while `done` keeps working so
//!   in-flight items finish cleanly.
//!
//! Deviations from client-go are deliberate and limited to the shutdown behaviour above.
//! `workqueue_retries_total` counts every delayed add (including `add_after` from a
//! `RequeueAfter`), exactly like client-go, whose `AddRateLimited` is an `AddAfter`.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use crate::metrics::QueueMetrics;

/// How often the "unfinished work" gauges are refreshed (client-go's period).
pub const UNFINISHED_WORK_UPDATE_PERIOD: Duration = Duration::from_millis(500);

/// The bound every queue item satisfies.
pub trait QueueKey: Clone + Eq + Hash + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Send + Sync + 'static> QueueKey for T {}

/// Parameters of controller-runtime's default rate limiter: the maximum of a per-item
/// exponential backoff and an overall token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimiterConfig {
    /// The first per-item delay; each further failure doubles it.
    pub base_delay: Duration,
    /// The per-item delay never exceeds this.
    pub max_delay: Duration,
    /// Token bucket refill rate across all items (requeues per second); `0` disables it.
    pub qps: f64,
    /// Token bucket size.
    pub burst: u32,
}

impl Default for RateLimiterConfig {
    /// controller-runtime's `DefaultTypedControllerRateLimiter`: 5ms·2ⁿ capped at 1000s,
    /// and 10 qps with a burst of 100.
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1000),
            qps: 10.0,
            burst: 100,
        }
    }
}

/// The state of [`RateLimiterConfig`]: per-item failure counts and the token bucket.
#[derive(Debug)]
struct RateLimiter<T> {
    config: RateLimiterConfig,
    failures: HashMap<T, u32>,
    tokens: f64,
    last: Instant,
}

impl<T: QueueKey> RateLimiter<T> {
    fn new(config: RateLimiterConfig, now: Instant) -> Self {
        Self {
            config,
            failures: HashMap::new(),
            tokens: f64::from(config.burst),
            last: now,
        }
    }

    /// The delay before `item` may be retried, counting this as one more failure.
    fn when(&mut self, item: &T, now: Instant) -> Duration {
        let exponent = match self.failures.entry(item.clone()) {
            Entry::Occupied(mut e) => {
                let n = *e.get();
                *e.get_mut() = n.saturating_add(1);
                n
            }
            Entry::Vacant(e) => *e.insert(1) - 1,
        };
        self.backoff(exponent).max(self.reserve(now))
    }

    fn backoff(&self, exponent: u32) -> Duration {
        let factor = 1u32.checked_shl(exponent).unwrap_or(u32::MAX);
        self.config
            .base_delay
            .saturating_mul(factor)
            .min(self.config.max_delay)
    }

    /// Take one token from the bucket, as `rate.Limiter.Reserve` does: the balance may go
    /// negative, and the delay is how long until it is back at zero.
    fn reserve(&mut self, now: Instant) -> Duration {
        let qps = self.config.qps;
        if qps <= 0.0 || !qps.is_finite() {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * qps).min(f64::from(self.config.burst));
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / qps)
        }
    }

    fn forget(&mut self, item: &T) {
        self.failures.remove(item);
    }

    fn num_requeues(&self, item: &T) -> u32 {
        self.failures.get(item).copied().unwrap_or(0)
    }
}

struct State<T> {
    /// Dirty items, each with the time it became dirty (for `queue_duration`).
    dirty: HashMap<T, Instant>,
    /// Dirty items that are not being processed, in the order they are handed out.
    queue: VecDeque<T>,
    /// Items handed out and not yet done, each with the time it was handed out.
    processing: HashMap<T, Instant>,
    /// Items waiting for their `add_after` delay, ordered by ready time (then insertion).
    waiting: BTreeMap<(Instant, u64), T>,
    /// The `waiting` entry of each waiting item, so an item waits at most once.
    waiting_index: HashMap<T, (Instant, u64)>,
    next_seq: u64,
    limiter: RateLimiter<T>,
    shutting_down: bool,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// Wakes workers blocked in `get`: one `notify_one` per item pushed into `queue`.
    ready: Notify,
    /// Wakes the housekeeping task (new earliest delayed item, or shutdown). Shared with
    /// that task by its own `Arc` so the task can hold it without keeping the queue alive.
    timer: Arc<Notify>,
    metrics: QueueMetrics,
}

/// A de-duplicating, rate-limited work queue; clones share one queue.
pub struct WorkQueue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("WorkQueue")
            .field("queued", &state.queue.len())
            .field("dirty", &state.dirty.len())
            .field("processing", &state.processing.len())
            .field("waiting", &state.waiting.len())
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock cannot leave the sets half-updated in a way that
        // matters more than stopping the controller would, so keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: QueueKey> Inner<T> {
    /// client-go's `Add`, with the lock held.
    fn add_locked(&self, state: &mut State<T>, item: T, now: Instant) {
        if state.shutting_down || state.dirty.contains_key(&item) {
            return;
        }
        self.metrics.adds.inc();
        let processing = state.processing.contains_key(&item);
        state.dirty.insert(item.clone(), now);
        if !processing {
            state.queue.push_back(item);
            self.ready.notify_one();
        }
        self.set_depth(state);
    }

    fn set_depth(&self, state: &State<T>) {
        self.metrics
            .depth
            .set(i64::try_from(state.dirty.len()).unwrap_or(i64::MAX));
    }

    /// Move every waiting item whose delay has passed into the queue; return the ready
    /// time of the next one still waiting.
    fn promote_ready(&self, state: &mut State<T>, now: Instant) -> Option<Instant> {
        while let Some(entry) = state.waiting.first_entry() {
            let (ready_at, _) = *entry.key();
            if ready_at > now {
                return Some(ready_at);
            }
            let item = entry.remove();
            state.waiting_index.remove(&item);
            self.add_locked(state, item, now);
        }
        None
    }

    fn update_unfinished_work(&self, state: &State<T>, now: Instant) {
        let (total, longest) = state
            .processing
            .values()
            .map(|started| now.saturating_duration_since(*started).as_secs_f64())
            .fold((0.0, 0.0_f64), |(total, longest), secs| {
                (total + secs, longest.max(secs))
            });
        self.metrics.unfinished_work.set(total);
        self.metrics.longest_running.set(longest);
    }
}

impl<T: QueueKey> WorkQueue<T> {
    /// A new queue reporting into `metrics`.
    ///
    /// Spawns the queue's housekeeping task (delayed adds and the unfinished-work gauges),
    /// which ends on [`shutdown`](Self::shutdown) or when the last handle is dropped.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn new(metrics: QueueMetrics, rate_limiter: RateLimiterConfig) -> Self {
        let now = Instant::now();
        let timer = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                dirty: HashMap::new(),
                queue: VecDeque::new(),
                processing: HashMap::new(),
                waiting: BTreeMap::new(),
                waiting_index: HashMap::new(),
                next_seq: 0,
                limiter: RateLimiter::new(rate_limiter, now),
                shutting_down: false,
            }),
            ready: Notify::new(),
            timer: Arc::clone(&timer),
            metrics,
        });
        inner.set_depth(&inner.lock());
        tokio::spawn(housekeeping(Arc::downgrade(&inner), timer));
        Self { inner }
    }

    /// Mark `item` as needing processing. No-op if it is already waiting to be handed out;
    /// if it is being processed, it is handed out again after [`done`](Self::done).
    pub fn add(&self, item: T) {
        let mut state = self.inner.lock();
        self.inner.add_locked(&mut state, item, Instant::now());
    }

    /// [`add`](Self::add) `item` once `delay` has passed. An item already waiting keeps the
    /// earlier of its two ready times.
    pub fn add_after(&self, item: T, delay: Duration) {
        let now = Instant::now();
        let mut state = self.inner.lock();
        if state.shutting_down {
            return;
        }
        self.inner.metrics.retries.inc();
        if delay.is_zero() {
            self.inner.add_locked(&mut state, item, now);
            return;
        }
        let ready_at = now + delay;
        if let Some(&(existing, seq)) = state.waiting_index.get(&item) {
            if existing <= ready_at {
                return;
            }
            state.waiting.remove(&(existing, seq));
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.waiting.insert((ready_at, seq), item.clone());
        state.waiting_index.insert(item, (ready_at, seq));
        let earliest = state.waiting.first_key_value().map(|(k, _)| *k) == Some((ready_at, seq));
        drop(state);
        if earliest {
            self.inner.timer.notify_one();
        }
    }

    /// [`add_after`](Self::add_after) with the rate limiter's delay for `item`, counting
    /// one more failure for it.
    pub fn add_rate_limited(&self, item: T) {
        let delay = {
            let mut state = self.inner.lock();
            state.limiter.when(&item, Instant::now())
        };
        self.add_after(item, delay);
    }

    /// Drop `item`'s pending delayed add, if any (an `add_after` or a rate-limited retry
    /// that a later successful reconcile made stale). Not counted anywhere: the delayed
    /// add was counted as a retry when it was scheduled.
    pub fn cancel_delayed(&self, item: &T) {
        let mut state = self.inner.lock();
        if let Some(entry) = state.waiting_index.remove(item) {
            state.waiting.remove(&entry);
        }
    }

    /// Reset `item`'s backoff: its next rate-limited add waits the base delay again.
    pub fn forget(&self, item: &T) {
        self.inner.lock().limiter.forget(item);
    }

    /// How many rate-limited adds `item` has had since it was last forgotten.
    pub fn num_requeues(&self, item: &T) -> u32 {
        self.inner.lock().limiter.num_requeues(item)
    }

    /// Wait for the next item and mark it as being processed; the caller must call
    /// [`done`](Self::done) with it. `None` once the queue is shut down.
    pub async fn get(&self) -> Option<T> {
        loop {
            // Register for a wake-up before looking, so a push between the look and the
            // wait cannot be missed.
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.inner.lock();
                if state.shutting_down {
                    return None;
                }
                if let Some(item) = state.queue.pop_front() {
                    let now = Instant::now();
                    if let Some(added) = state.dirty.remove(&item) {
                        let waited = now.saturating_duration_since(added);
                        self.inner
                            .metrics
                            .queue_duration
                            .observe(waited.as_secs_f64());
                    }
                    state.processing.insert(item.clone(), now);
                    self.inner.set_depth(&state);
                    return Some(item);
                }
            }
            notified.await;
        }
    }

    /// Mark `item` as processed. If it was added again meanwhile, it goes back in the queue.
    pub fn done(&self, item: &T) {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let Some(started) = state.processing.remove(item) else {
            return;
        };
        let worked = now.saturating_duration_since(started);
        self.inner
            .metrics
            .work_duration
            .observe(worked.as_secs_f64());
        if !state.shutting_down && state.dirty.contains_key(item) {
            state.queue.push_back(item.clone());
            self.inner.ready.notify_one();
        }
    }

    /// Stop handing out items and ignore further adds; wakes every waiting `get`.
    pub fn shutdown(&self) {
        self.inner.lock().shutting_down = true;
        self.inner.ready.notify_waiters();
        self.inner.timer.notify_one();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.lock().shutting_down
    }

    /// The number of items ready to be handed out (client-go's `Len`). Differs from
    /// `workqueue_depth` only by items re-added while being processed.
    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Whether no item is ready to be handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refresh `workqueue_unfinished_work_seconds` and
    /// `workqueue_longest_running_processor_seconds` now (they are also refreshed every
    /// [`UNFINISHED_WORK_UPDATE_PERIOD`]), e.g. just before a scrape.
    pub fn update_unfinished_work(&self) {
        let state = self.inner.lock();
        self.inner.update_unfinished_work(&state, Instant::now());
    }
}

/// Moves delayed items into the queue when their time comes (client-go's waiting loop)
/// and refreshes the unfinished-work gauges (client-go's `updateUnfinishedWorkLoop`).
async fn housekeeping<T: QueueKey>(queue: Weak<Inner<T>>, timer: Arc<Notify>) {
    let mut tick = tokio::time::interval(UNFINISHED_WORK_UPDATE_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let notified = timer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next_ready = {
            // Only a weak handle is kept across waits: the queue's owners decide its life.
            let Some(inner) = queue.upgrade() else {
                return;
            };
            let mut state = inner.lock();
            if state.shutting_down {
                return;
            }
            let now = Instant::now();
            let next = inner.promote_ready(&mut state, now);
            inner.update_unfinished_work(&state, now);
            next
        };
        let sleep = async {
            match next_ready {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut notified => {}
            () = sleep => {}
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;
    use tokio::time::{Instant, timeout};

    use super::*;
    use crate::metrics::WorkqueueMetrics;
    use crate::metrics::scrape::parsed;

    const NAME: &str = "test-controller";

    fn queue() -> (WorkQueue<&'static str>, Registry) {
        let mut registry = Registry::default();
        let metrics = WorkqueueMetrics::register(&mut registry);
        let q = WorkQueue::new(metrics.for_queue(NAME), RateLimiterConfig::default());
        (q, registry)
    }

    fn metric(registry: &Registry, name: &str) -> f64 {
        parsed(registry)
            .value(name, &[("name", NAME), ("controller", NAME)])
            .unwrap_or_else(|| panic!("{name} not exported"))
    }

    /// `get` with a deadline far beyond any delay used here (time is paused, so waiting
    /// costs nothing); `None` if nothing came.
    async fn next(q: &WorkQueue<&'static str>) -> Option<&'static str> {
        timeout(Duration::from_secs(3600), q.get())
            .await
            .ok()
            .flatten()
    }

    async fn nothing_ready(q: &WorkQueue<&'static str>) -> bool {
        timeout(Duration::from_millis(1), q.get()).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn add_deduplicates_queued_items_and_depth_is_exact() {
        let (q, registry) = queue();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(metric(&registry, "workqueue_depth"), 2.0);
        assert_eq!(metric(&registry, "workqueue_adds_total"), 2.0);

        assert_eq!(next(&q).await, Some("a"));
        assert_eq!(metric(&registry, "workqueue_depth"), 1.0);
        assert_eq!(next(&q).await, Some("b"));
        assert_eq!(metric(&registry, "workqueue_depth"), 0.0);
        assert_eq!(
            metric(&registry, "workqueue_queue_duration_seconds_count"),
            2.0
        );
        q.done(&"a");
        q.done(&"b");
        assert_eq!(
            metric(&registry, "workqueue_work_duration_seconds_count"),
            2.0
        );
        assert!(nothing_ready(&q).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_added_while_processing_is_handed_out_again_only_after_done() {
        let (q, registry) = queue();
        q.add("a");
        assert_eq!(next(&q).await, Some("a"));
        q.add("a");
        q.add("a");
        // Waiting for a reconcile, so it counts in depth; but no second worker may get it.
        assert_eq!(metric(&registry, "workqueue_depth"), 1.0);
        assert_eq!(metric(&registry, "workqueue_adds_total"), 2.0);
        assert_eq!(q.len(), 0);
        assert!(nothing_ready(&q).await);

        q.done(&"a");
        assert_eq!(q.len(), 1);
        assert_eq!(next(&q).await, Some("a"));
        q.done(&"a");
        assert_eq!(metric(&registry, "workqueue_depth"), 0.0);
        assert!(nothing_ready(&q).await);
    }

    #[tokio::test(start_paused = true)]
    async fn done_for_an_item_not_processing_changes_nothing() {
        let (q, _registry) = queue();
        q.add("a");
        q.done(&"a");
        assert_eq!(q.len(), 1);
        assert_eq!(next(&q).await, Some("a"));
        assert!(nothing_ready(&q).await);
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_delays_and_keeps_the_earliest_ready_time() {
        let (q, registry) = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(2));
        q.add_after("a", Duration::from_secs(5));
        assert_eq!(metric(&registry, "workqueue_depth"), 0.0);
        assert_eq!(metric(&registry, "workqueue_retries_total"), 3.0);
        assert_eq!(next(&q).await, Some("a"));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        q.done(&"a");
        // The superseded later ready times do not add the item again.
        assert!(
            timeout(Duration::from_secs(60), q.get()).await.is_err(),
            "only one add"
        );
        assert_eq!(metric(&registry, "workqueue_adds_total"), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_delayed_add_never_arrives() {
        let (q, registry) = queue();
        q.add_after("a", Duration::from_secs(60));
        q.add_after("b", Duration::from_secs(60));
        q.cancel_delayed(&"a");
        q.cancel_delayed(&"c"); // nothing waiting: a no-op
        assert_eq!(next(&q).await, Some("b"));
        q.done(&"b");
        assert!(
            timeout(Duration::from_secs(600), q.get()).await.is_err(),
            "the cancelled item stays away"
        );
        assert_eq!(metric(&registry, "workqueue_adds_total"), 1.0);
        // Cancelling does not block a later add of the same item.
        q.add("a");
        assert_eq!(next(&q).await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_zero_adds_at_once() {
        let (q, _registry) = queue();
        q.add_after("a", Duration::ZERO);
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_adds_back_off_exponentially_until_forgotten() {
        let (q, registry) = queue();
        let mut expected = Duration::from_millis(5);
        for round in 0..5u32 {
            assert_eq!(q.num_requeues(&"a"), round);
            let start = Instant::now();
            q.add_rate_limited("a");
            assert_eq!(next(&q).await, Some("a"));
            let waited = start.elapsed();
            // Paused time fires timers on whole milliseconds.
            assert!(
                waited >= expected && waited <= expected + Duration::from_millis(1),
                "round {round}: waited {waited:?}, expected {expected:?}"
            );
            q.done(&"a");
            expected *= 2;
        }
        assert_eq!(metric(&registry, "workqueue_retries_total"), 5.0);
        q.forget(&"a");
        assert_eq!(q.num_requeues(&"a"), 0);
        let start = Instant::now();
        q.add_rate_limited("a");
        assert_eq!(next(&q).await, Some("a"));
        assert!(start.elapsed() <= Duration::from_millis(6));
    }

    #[test]
    fn exponential_backoff_is_capped_and_per_item() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(
            RateLimiterConfig {
                qps: 0.0,
                ..RateLimiterConfig::default()
            },
            now,
        );
        let delays: Vec<Duration> = (0..4).map(|_| limiter.when(&"a", now)).collect();
        assert_eq!(delays, [5, 10, 20, 40].map(Duration::from_millis).to_vec());
        assert_eq!(limiter.when(&"b", now), Duration::from_millis(5));
        for _ in 0..100 {
            limiter.when(&"a", now);
        }
        assert_eq!(limiter.when(&"a", now), Duration::from_secs(1000));
        limiter.forget(&"a");
        assert_eq!(limiter.when(&"a", now), Duration::from_millis(5));
    }

    #[test]
    fn the_token_bucket_limits_requeues_across_items() {
        let now = Instant::now();
        let mut limiter: RateLimiter<u32> = RateLimiter::new(RateLimiterConfig::default(), now);
        // The burst of 100 passes with only the per-item base delay...
        for item in 0..100 {
            assert_eq!(limiter.when(&item, now), Duration::from_millis(5));
        }
        // ...then each further requeue waits for a token at 10 per second.
        assert_eq!(limiter.when(&100, now), Duration::from_millis(100));
        assert_eq!(limiter.when(&101, now), Duration::from_millis(200));
        // Tokens refill with time.
        let later = now + Duration::from_secs(60);
        assert_eq!(limiter.when(&102, later), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_waiting_workers_and_ignores_adds() {
        let (q, registry) = queue();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::task::yield_now().await;
        q.add("a");
        q.add("b");
        assert_eq!(waiter.await.ok().flatten(), Some("a"));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move {
                let _b = q.get().await;
                q.get().await
            }
        });
        tokio::task::yield_now().await;
        q.shutdown();
        assert_eq!(waiter.await.ok().flatten(), None);
        assert!(q.is_shutting_down());
        q.add("c");
        q.add_after("d", Duration::from_millis(1));
        assert_eq!(q.get().await, None);
        // In-flight items can still be finished.
        q.done(&"a");
        assert_eq!(metric(&registry, "workqueue_adds_total"), 2.0);
        assert_eq!(metric(&registry, "workqueue_retries_total"), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn unfinished_work_gauges_track_in_flight_items() {
        let (q, registry) = queue();
        q.add("a");
        q.add("b");
        assert_eq!(next(&q).await, Some("a"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(next(&q).await, Some("b"));
        tokio::time::advance(Duration::from_secs(1)).await;
        q.update_unfinished_work();
        assert_eq!(metric(&registry, "workqueue_unfinished_work_seconds"), 4.0);
        assert_eq!(
            metric(&registry, "workqueue_longest_running_processor_seconds"),
            3.0
        );
        q.done(&"a");
        q.done(&"b");
        // The periodic refresh alone brings them back to zero.
        tokio::time::sleep(UNFINISHED_WORK_UPDATE_PERIOD * 2).await;
        assert_eq!(metric(&registry, "workqueue_unfinished_work_seconds"), 0.0);
        assert_eq!(
            metric(&registry, "workqueue_longest_running_processor_seconds"),
            0.0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_workers_never_share_an_item() {
        let (q, registry) = queue();
        let in_flight = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let q = q.clone();
            let in_flight = Arc::clone(&in_flight);
            workers.spawn(async move {
                let mut handled = 0u32;
                while let Some(item) = q.get().await {
                    let fresh = in_flight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(item);
                    assert!(fresh, "{item} processed twice at once");
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    in_flight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(item);
                    q.done(&item);
                    handled += 1;
                }
                handled
            });
        }
        for round in 0..50 {
            for item in ["a", "b", "c"] {
                q.add(item);
            }
            tokio::time::sleep(Duration::from_millis(1 + round % 3)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metric(&registry, "workqueue_depth"), 0.0);
        q.shutdown();
        let mut handled = 0;
        while let Some(result) = workers.join_next().await {
            handled += result.expect("worker panicked");
        }
        assert_eq!(
            f64::from(handled),
            metric(&registry, "workqueue_adds_total")
        );
    }
}
