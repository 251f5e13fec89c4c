//! The audit shipper: a bounded, ordered buffer of audit events and the task that delivers
//! it through an [`AuditTransport`].
//!
//! Invariants:
//! * [`Shipper::submit`] never waits: it is a synchronous call that takes a lock for a
//!   queue push, so a reconciler never blocks on the network. On overflow the *oldest*
//!   events are dropped, counted (`vworkspace_operator_event_buffer_dropped_total`,
//!   [`ShipperStatus::dropped_total`]) and flagged
//!   ([`ShipperStatus::overflowed_since_last_check`]) until [`Shipper::acknowledge_overflow`];
//! * order: events go out in submission order; a batch is retried until it is delivered
//!   (or an event in it is found undeliverable and dropped) before any later event is sent;
//! * a batch holds at most `max_batch` events; it is sent at every `flush_interval` tick while
//!   events wait, at once when `max_batch` events wait, and at once on [`Shipper::flush`];
//! * failures: 413 and 400 halve the batch (bisecting to the offending event, which is then
//!   dropped with an error log naming its `event_id`, so one bad event can never block the
//!   stream); 429 waits `Retry-After`; 401, 5xx, network and anything else wait a capped
//!   exponential backoff with jitter (`[base/2, base]`, `base = min·2^n ≤ max`);
//! * `vworkspace_operator_event_buffer_occupancy` equals the buffer depth after every
//!   enqueue, delivery (flush) and failed attempt (requeue);
//! * the task runs only between [`Shipper::start`] and [`Shipper::stop`] (the operator starts
//!   it when it gains leadership): events submitted while stopped are kept, with the same
//!   capacity and overflow rule, and shipped once started — a replica that is not leader
//!   publishes nothing, so in practice this covers the short window around a hand-over;
//! * the watermark ([`ShipperStatus::watermark`]) is the `occurred_at` such that every
//!   transition recorded at or after it is either delivered, still buffered here, or must be
//!   replayed: it is the newest delivered `occurred_at`, lowered to the oldest `occurred_at`
//!   still buffered and to the oldest one dropped since the last
//!   [`Shipper::acknowledge_overflow`]. Persisted in `Cluster.status.auditStream`, it tells
//!   the operator where to replay from after an overflow *or* a restart (the receiver
//!   deduplicates by `event_id`, so replaying too much is harmless, too little is not).
//!
//! After an overflow the operator reads the watermark, submits every transition recorded at
//! or after it, and then calls [`Shipper::acknowledge_overflow`]; the resubmitted events keep
//! the watermark low until they are delivered.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use vworkspace_api::AuditEvent;
use vworkspace_api::agent_api::EventsAccepted;
use vworkspace_api::cluster::{AuditStreamSpec, AuditStreamStatus};
use vworkspace_telemetry::metrics::AgentMetrics;

use crate::client::{HttpClient, LinkError};

/// Where audit batches go: the HTTP agent API in Pull mode; AuditBatch objects in Push mode
/// (later).
pub trait AuditTransport: Send + Sync + 'static {
    /// Delivers `events` (oldest first) as one batch.
    fn send(
        &self,
        events: &[AuditEvent],
    ) -> impl Future<Output = Result<EventsAccepted, LinkError>> + Send;
}

impl AuditTransport for HttpClient {
    fn send(
        &self,
        events: &[AuditEvent],
    ) -> impl Future<Output = Result<EventsAccepted, LinkError>> + Send {
        self.post_events(events)
    }
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay (before jitter).
    pub min: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): uniformly in `[base/2, base]`,
    /// `base = min(min·2^attempt, max)`. Jitter keeps a fleet of operators from retrying in
    /// lock-step after a control-plane outage.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.max)
            .max(self.min.min(self.max));
        let half = base / 2;
        let spread = u64::try_from((base - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=spread))
    }
}

/// The shipper's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipperConfig {
    /// Events held at most (`spec.auditStream.bufferCapacity`).
    pub capacity: usize,
    /// Events per batch at most (`spec.auditStream.maxBatchSize`).
    pub max_batch: usize,
    /// Send at least this often while events wait (`spec.auditStream.flushInterval`).
    pub flush_interval: Duration,
    /// Retry delays after a failure.
    pub backoff: Backoff,
    /// How long [`Shipper::close`] keeps delivering before giving up.
    pub shutdown_bound: Duration,
}

impl ShipperConfig {
    /// The settings of a Cluster's `spec.auditStream`, with the default backoff (1 s .. 60 s)
    /// and shutdown bound (5 s).
    pub fn from_spec(spec: &AuditStreamSpec) -> Self {
        ShipperConfig {
            capacity: usize::try_from(spec.buffer_capacity).unwrap_or(1).max(1),
            max_batch: usize::try_from(spec.max_batch_size).unwrap_or(1).max(1),
            flush_interval: spec.flush_interval.as_duration(),
            backoff: Backoff {
                min: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            shutdown_bound: Duration::from_secs(5),
        }
    }
}

/// Where the audit stream stands; published on [`Shipper::subscribe`] at every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipperStatus {
    /// Events buffered, not yet acknowledged.
    pub pending: usize,
    /// Events dropped on overflow, since the process started.
    pub dropped_total: u64,
    /// Events the control plane refused one by one (413 or 400 for a single event),
    /// dropped with an error log.
    pub refused_total: u64,
    /// When the control plane last acknowledged a batch.
    pub last_delivered_at: Option<Time>,
    /// See the module docs: replay transitions recorded at or after this time after an
    /// overflow or a restart. `None` until something was delivered (then the operator keeps
    /// the watermark it persisted before).
    pub watermark: Option<Time>,
    /// Events were dropped since the last [`Shipper::acknowledge_overflow`].
    pub overflowed_since_last_check: bool,
    /// The category of the last failed attempt while delivery is failing.
    pub failing: Option<&'static str>,
    /// Failed delivery attempts since the process started.
    pub failed_attempts: u64,
    /// The delivering task runs (this replica is leader).
    pub running: bool,
}

impl ShipperStatus {
    /// `Cluster.status.auditStream`.
    pub fn to_api(&self) -> AuditStreamStatus {
        AuditStreamStatus {
            pending: i64::try_from(self.pending).unwrap_or(i64::MAX),
            dropped: i64::try_from(self.dropped_total).unwrap_or(i64::MAX),
            last_delivered_at: self.last_delivered_at.clone(),
            delivered_watermark: self.watermark.clone(),
        }
    }
}

/// Why [`Shipper::flush`] returned before everything was delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// Delivery is failing; the events stay buffered and are retried.
    #[error("audit delivery is failing ({0}); events stay buffered")]
    LinkFailing(&'static str),
    /// The shipper is not started (this replica is not leader).
    #[error("the audit shipper is not running")]
    NotRunning,
}

/// The shipper handle. Cloning is cheap; every clone drives the same buffer.
#[derive(Debug)]
pub struct Shipper<T: AuditTransport> {
    shared: Arc<Shared>,
    transport: Arc<T>,
    task: Arc<Mutex<Option<Running>>>,
}

impl<T: AuditTransport> Clone for Shipper<T> {
    fn clone(&self) -> Self {
        Shipper {
            shared: self.shared.clone(),
            transport: self.transport.clone(),
            task: self.task.clone(),
        }
    }
}

/// The delivering task and its stop signal.
type Running = (JoinHandle<()>, watch::Sender<bool>);

#[derive(Debug)]
struct Shared {
    config: Mutex<ShipperConfig>,
    state: Mutex<State>,
    wake: Notify,
    status: watch::Sender<ShipperStatus>,
    metrics: Option<AgentMetrics>,
}

#[derive(Debug, Default)]
struct State {
    /// (sequence number, event), oldest first.
    queue: VecDeque<(u64, AuditEvent)>,
    next_seq: u64,
    /// Flushes want everything below this sequence number delivered now.
    flush_target: u64,
    dropped_total: u64,
    refused_total: u64,
    overflowed: bool,
    /// Oldest `occurred_at` dropped since the last acknowledgement.
    dropped_floor: Option<Time>,
    newest_delivered: Option<Time>,
    last_delivered_at: Option<Time>,
    failing: Option<&'static str>,
    failed_attempts: u64,
    running: bool,
}

impl State {
    /// Sequence number of the oldest event still buffered.
    fn front_seq(&self) -> u64 {
        self.queue.front().map_or(self.next_seq, |(seq, _)| *seq)
    }

    fn watermark(&self) -> Option<Time> {
        let newest = self.newest_delivered.as_ref()?;
        let oldest_buffered = self.queue.iter().map(|(_, e)| &e.occurred_at).min();
        [Some(newest), oldest_buffered, self.dropped_floor.as_ref()]
            .into_iter()
            .flatten()
            .min()
            .cloned()
    }

    fn status(&self) -> ShipperStatus {
        ShipperStatus {
            pending: self.queue.len(),
            dropped_total: self.dropped_total,
            refused_total: self.refused_total,
            last_delivered_at: self.last_delivered_at.clone(),
            watermark: self.watermark(),
            overflowed_since_last_check: self.overflowed,
            failing: self.failing,
            failed_attempts: self.failed_attempts,
            running: self.running,
        }
    }
}

fn now_time() -> Time {
    let now = Timestamp::try_from(SystemTime::now()).unwrap_or(Timestamp::UNIX_EPOCH);
    // Whole seconds, like every Kubernetes timestamp.
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

impl<T: AuditTransport> Shipper<T> {
    /// A stopped shipper with an empty buffer.
    pub fn new(transport: T, config: ShipperConfig, metrics: Option<AgentMetrics>) -> Self {
        let config = ShipperConfig {
            capacity: config.capacity.max(1),
            max_batch: config.max_batch.max(1),
            ..config
        };
        if let Some(m) = &metrics {
            m.set_event_buffer_occupancy(0);
        }
        let (status, _) = watch::channel(ShipperStatus::default());
        Shipper {
            shared: Arc::new(Shared {
                config: Mutex::new(config),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                status,
                metrics,
            }),
            transport: Arc::new(transport),
            task: Arc::new(Mutex::new(None)),
        }
    }

    /// Buffers `event`; never waits. Drops the oldest event when the buffer is full.
    pub fn submit(&self, event: AuditEvent) {
        let (dropped, wake) = {
            let mut state = self.shared.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.queue.push_back((seq, event));
            let mut dropped = Vec::new();
            while state.queue.len() > self.shared.config().capacity {
                if let Some((_, old)) = state.queue.pop_front() {
                    dropped.push(old.event_id.clone());
                    state.dropped_floor = Some(match state.dropped_floor.take() {
                        Some(floor) => floor.min(old.occurred_at),
                        None => old.occurred_at,
                    });
                }
            }
            if !dropped.is_empty() {
                state.dropped_total += dropped.len() as u64;
                state.overflowed = true;
            }
            let wake = state.queue.len() >= self.shared.config().max_batch;
            self.shared.publish(&state);
            (dropped, wake)
        };
        if !dropped.is_empty() {
            if let Some(m) = &self.shared.metrics {
                m.add_event_buffer_dropped(dropped.len() as u64);
            }
            tracing::warn!(
                dropped = dropped.len(),
                capacity = self.shared.config().capacity,
                oldest_event_id = %dropped[0],
                "audit-event buffer full: dropped the oldest events; they are replayed from CR status"
            );
        }
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Replaces the settings: the capacity applies from the next submit, the batch size,
    /// flush interval and backoff from the next [`start`](Self::start). A smaller
    /// capacity drops nothing at once; the next submit trims the buffer (oldest first,
    /// counted as overflow).
    pub fn reconfigure(&self, config: ShipperConfig) {
        let config = ShipperConfig {
            capacity: config.capacity.max(1),
            max_batch: config.max_batch.max(1),
            ..config
        };
        match self.shared.config.lock() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    /// The transport the batches go through.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The current status.
    pub fn status(&self) -> ShipperStatus {
        self.shared.lock().status()
    }

    /// A receiver that sees every status change (depth, drops, deliveries, failures).
    pub fn subscribe(&self) -> watch::Receiver<ShipperStatus> {
        self.shared.status.subscribe()
    }

    /// Clears the overflow flag and the oldest-dropped floor of the watermark: call after
    /// resubmitting the transitions recorded at or after the watermark read before.
    pub fn acknowledge_overflow(&self) {
        let mut state = self.shared.lock();
        state.overflowed = false;
        state.dropped_floor = None;
        self.shared.publish(&state);
    }

    /// Starts the delivering task (on gaining leadership); no-op when running. Needs a
    /// tokio runtime.
    pub fn start(&self) {
        let mut task = match self.task.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if task
            .as_ref()
            .is_some_and(|(handle, _)| !handle.is_finished())
        {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        {
            let mut state = self.shared.lock();
            state.running = true;
            self.shared.publish(&state);
        }
        let worker = Worker {
            shared: self.shared.clone(),
            transport: self.transport.clone(),
            stop: stop_rx,
        };
        *task = Some((tokio::spawn(worker.run()), stop_tx));
    }

    /// Stops the delivering task (on losing leadership) after its current attempt; the
    /// buffer is kept.
    pub async fn stop(&self) {
        let taken = match self.task.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((handle, stop)) = taken {
            let _ = stop.send(true);
            self.shared.wake.notify_one();
            let _ = handle.await;
        }
        let mut state = self.shared.lock();
        state.running = false;
        self.shared.publish(&state);
    }

    /// Resolves once every event submitted before the call is delivered (or dropped), or as
    /// soon as an attempt fails, or at once when the shipper is not running.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let mut rx = self.shared.status.subscribe();
        let (target, failures_before) = {
            let mut state = self.shared.lock();
            if !state.running {
                return if state.queue.is_empty() {
                    Ok(())
                } else {
                    Err(FlushError::NotRunning)
                };
            }
            let target = state.next_seq;
            state.flush_target = state.flush_target.max(target);
            (target, state.failed_attempts)
        };
        self.shared.wake.notify_one();
        loop {
            {
                let state = self.shared.lock();
                if state.front_seq() >= target {
                    return Ok(());
                }
                if !state.running {
                    return Err(FlushError::NotRunning);
                }
                // Only an attempt that failed after the flush began answers it.
                if state.failed_attempts > failures_before {
                    return Err(FlushError::LinkFailing(state.failing.unwrap_or("unknown")));
                }
            }
            if rx.changed().await.is_err() {
                return Err(FlushError::NotRunning);
            }
        }
    }

    /// Clean shutdown: delivers what it can within `shutdown_bound`, then stops. Returns
    /// how many events were left undelivered.
    pub async fn close(&self) -> usize {
        let bound = self.shared.config().shutdown_bound;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match tokio::time::timeout_at(deadline, self.flush()).await {
                Ok(Ok(())) | Ok(Err(FlushError::NotRunning)) | Err(_) => break,
                // The link fails: keep trying until the bound (the worker backs off).
                Ok(Err(FlushError::LinkFailing(_))) => {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let mut rx = self.shared.status.subscribe();
                    if tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        self.stop().await;
        let left = self.shared.lock().queue.len();
        if left > 0 {
            tracing::warn!(
                undelivered = left,
                "audit shipper closed with events undelivered; they are replayed from CR status on the next start"
            );
        }
        left
    }
}

impl Shared {
    fn config(&self) -> ShipperConfig {
        match self.config.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn publish(&self, state: &State) {
        if let Some(m) = &self.metrics {
            m.set_event_buffer_occupancy(state.queue.len());
        }
        let status = state.status();
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

struct Worker<T: AuditTransport> {
    shared: Arc<Shared>,
    transport: Arc<T>,
    stop: watch::Receiver<bool>,
}

enum Wait {
    Stop,
    Go,
}

impl<T: AuditTransport> Worker<T> {
    async fn run(mut self) {
        let config = self.shared.config();
        let mut ticker = tokio::time::interval(config.flush_interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch_limit = config.max_batch;
        let mut attempt: u32 = 0;
        let mut ready = false;
        loop {
            if *self.stop.borrow() {
                return;
            }
            // Wait until a batch is due: the tick, the threshold, or a flush.
            let due = {
                let state = self.shared.lock();
                if state.queue.is_empty() {
                    // A tick that found nothing to send does not carry over.
                    ready = false;
                }
                !state.queue.is_empty()
                    && (ready
                        || state.queue.len() >= config.max_batch
                        || state.flush_target > state.front_seq())
            };
            if !due {
                let woke = tokio::select! {
                    _ = ticker.tick() => { ready = true; Wait::Go }
                    _ = self.shared.wake.notified() => Wait::Go,
                    _ = self.stop.changed() => Wait::Stop,
                };
                if matches!(woke, Wait::Stop) {
                    return;
                }
                continue;
            }
            let batch: Vec<(u64, AuditEvent)> = {
                let state = self.shared.lock();
                state.queue.iter().take(batch_limit).cloned().collect()
            };
            let events: Vec<AuditEvent> = batch.iter().map(|(_, e)| e.clone()).collect();
            let Some(last_seq) = batch.last().map(|(seq, _)| *seq) else {
                ready = false;
                continue;
            };
            // Stopping abandons an attempt under way: the events stay buffered and go
            // again later (the receiver deduplicates by event_id if this one landed).
            let result = tokio::select! {
                r = self.transport.send(&events) => r,
                _ = self.stop.changed() => return,
            };
            let delay = match result {
                Ok(accepted) => {
                    attempt = 0;
                    batch_limit = (batch_limit.saturating_mul(2)).min(config.max_batch);
                    let mut state = self.shared.lock();
                    while state.queue.front().is_some_and(|(seq, _)| *seq <= last_seq) {
                        state.queue.pop_front();
                    }
                    let newest = events.iter().map(|e| &e.occurred_at).max().cloned();
                    state.newest_delivered = match (state.newest_delivered.take(), newest) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    state.last_delivered_at = Some(now_time());
                    state.failing = None;
                    let remaining = state.queue.len();
                    ready = remaining > 0 && state.flush_target > state.front_seq();
                    self.shared.publish(&state);
                    drop(state);
                    tracing::info!(
                        events = events.len(),
                        accepted = accepted.accepted,
                        duplicates = accepted.duplicates,
                        pending = remaining,
                        "audit events sent"
                    );
                    None
                }
                Err(LinkError::PayloadTooLarge | LinkError::BadRequest(_)) if events.len() > 1 => {
                    // Bisect: the first half goes next; the other half follows in turn.
                    batch_limit = events.len() / 2;
                    tracing::warn!(
                        events = events.len(),
                        next = batch_limit,
                        error = %result_error(&result),
                        "the control plane refused an audit batch; splitting it"
                    );
                    None
                }
                Err(ref error @ (LinkError::PayloadTooLarge | LinkError::BadRequest(_))) => {
                    let event_id = events
                        .first()
                        .map(|e| e.event_id.clone())
                        .unwrap_or_default();
                    tracing::error!(
                        %event_id,
                        error = %error,
                        category = error.category(),
                        "the control plane refuses this audit event on its own; dropping it"
                    );
                    // The limit stays where bisection left it (a 413 is often about size);
                    // each success doubles it back towards max_batch.
                    let mut state = self.shared.lock();
                    while state.queue.front().is_some_and(|(seq, _)| *seq <= last_seq) {
                        state.queue.pop_front();
                    }
                    state.refused_total += 1;
                    self.shared.publish(&state);
                    None
                }
                Err(ref error) => {
                    let delay = match error {
                        LinkError::RateLimited { retry_after } => *retry_after,
                        _ => {
                            let d = config.backoff.delay(attempt);
                            attempt = attempt.saturating_add(1);
                            d
                        }
                    };
                    tracing::warn!(
                        events = events.len(),
                        error = %error,
                        category = error.category(),
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "sending audit events failed; retrying the same batch"
                    );
                    let mut state = self.shared.lock();
                    state.failing = Some(error.category());
                    state.failed_attempts += 1;
                    self.shared.publish(&state);
                    Some(delay)
                }
            };
            if let Some(delay) = delay {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.stop.changed() => return,
                }
                ready = true;
            }
        }
    }
}

fn result_error(result: &Result<EventsAccepted, LinkError>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
