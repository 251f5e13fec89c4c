//! Unit tests of the shipper's logic against an in-process transport that records every
//! batch and answers from a script; all on paused tokio time, so delays are exact and no
//! test sleeps for real.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use vworkspace_api::agent_api::ApiError;

use super::*;

/// When a batch was attempted, and its event ids.
type Attempt = (Instant, Vec<String>);

#[derive(Clone, Default)]
struct Recorder {
    /// (when, event ids) of every attempt, successful or not.
    attempts: Arc<Mutex<Vec<Attempt>>>,
    /// Answers, in order; `Ok` once exhausted.
    script: Arc<Mutex<VecDeque<LinkError>>>,
    /// Any batch holding this event id is refused with 400.
    poison: Option<String>,
    /// Every attempt hangs (a control plane that accepts connections and never answers).
    hang: bool,
}

impl Recorder {
    fn scripted(errors: Vec<LinkError>) -> Self {
        Recorder {
            script: Arc::new(Mutex::new(errors.into())),
            ..Default::default()
        }
    }
    fn batches(&self) -> Vec<Vec<String>> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }
    fn times(&self) -> Vec<Instant> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }
}

impl AuditTransport for Recorder {
    async fn send(&self, events: &[AuditEvent]) -> Result<EventsAccepted, LinkError> {
        let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        self.attempts
            .lock()
            .unwrap()
            .push((Instant::now(), ids.clone()));
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.poison.as_ref().is_some_and(|bad| ids.contains(bad)) {
            return Err(bad_request());
        }
        if let Some(err) = self.script.lock().unwrap().pop_front() {
            return Err(err);
        }
        Ok(EventsAccepted {
            accepted: events.len() as u64,
            duplicates: 0,
        })
    }
}

fn bad_request() -> LinkError {
    LinkError::BadRequest(ApiError {
        error: "bad_request".into(),
        message: "invalid event".into(),
        details: Default::default(),
    })
}

fn event(id: &str, second: i64) -> AuditEvent {
    AuditEvent {
        event_id: id.to_owned(),
        cluster_id: "c1".into(),
        org_id: "o1".into(),
        occurred_at: Time(Timestamp::from_second(1_780_000_000 + second).unwrap()),
        namespace: None,
        application_instance: None,
        operation_id: None,
        kind: "OperationSucceeded".into(),
        reason: "R".into(),
        message: "m".into(),
        operator_version: "v0".into(),
    }
}

fn config(capacity: usize, max_batch: usize) -> ShipperConfig {
    ShipperConfig {
        capacity,
        max_batch,
        flush_interval: Duration::from_secs(1),
        backoff: Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(8),
        },
        shutdown_bound: Duration::from_secs(5),
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("e{i}")).collect()
}

/// Lets the worker run until it waits on time again.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn batches_go_in_order_at_the_threshold_at_once_and_otherwise_at_the_tick() {
    let transport = Recorder::default();
    let shipper = Shipper::new(transport.clone(), config(100, 3), None);
    shipper.start();
    settle().await;
    let t0 = Instant::now();
    for i in 0..7 {
        shipper.submit(event(&format!("e{i}"), i));
    }
    settle().await;
    // Two full batches went without waiting for the tick; the 7th waits for it.
    assert_eq!(transport.batches(), vec![ids(0..3), ids(3..6)]);
    assert!(transport.times().iter().all(|t| *t == t0));
    tokio::time::sleep(Duration::from_millis(1001)).await;
    assert_eq!(transport.batches(), vec![ids(0..3), ids(3..6), ids(6..7)]);
    let status = shipper.status();
    assert_eq!(status.pending, 0);
    assert!(status.last_delivered_at.is_some());
    assert_eq!(status.watermark, Some(event("x", 6).occurred_at));
}

#[tokio::test(start_paused = true)]
async fn flush_sends_now_and_resolves_when_delivered() {
    let transport = Recorder::default();
    let shipper = Shipper::new(transport.clone(), config(100, 50), None);
    shipper.start();
    settle().await;
    shipper.submit(event("e0", 0));
    shipper.submit(event("e1", 1));
    let t0 = Instant::now();
    shipper.flush().await.unwrap();
    assert_eq!(Instant::now(), t0, "flush does not wait for the tick");
    assert_eq!(transport.batches(), vec![ids(0..2)]);
    assert_eq!(shipper.status().pending, 0);
}

#[tokio::test(start_paused = true)]
async fn payload_too_large_splits_the_batch_and_a_lone_refused_event_is_dropped() {
    let transport = Recorder::scripted(vec![
        LinkError::PayloadTooLarge, // 4 events
        LinkError::PayloadTooLarge, // first 2
        LinkError::PayloadTooLarge, // e0 alone: dropped
    ]);
    let shipper = Shipper::new(transport.clone(), config(100, 4), None);
    shipper.start();
    for i in 0..4 {
        shipper.submit(event(&format!("e{i}"), i));
    }
    shipper.flush().await.unwrap();
    assert_eq!(
        transport.batches(),
        vec![ids(0..4), ids(0..2), ids(0..1), ids(1..2), ids(2..4)]
    );
    let status = shipper.status();
    assert_eq!(status.refused_total, 1);
    assert_eq!(
        status.dropped_total, 0,
        "a refused event is not an overflow"
    );
    assert_eq!(status.pending, 0);
}

#[tokio::test(start_paused = true)]
async fn bad_request_bisects_to_the_bad_event_and_the_stream_goes_on() {
    let transport = Recorder {
        poison: Some("e5".into()),
        ..Default::default()
    };
    let shipper = Shipper::new(transport.clone(), config(100, 8), None);
    shipper.start();
    for i in 0..8 {
        shipper.submit(event(&format!("e{i}"), i));
    }
    shipper.flush().await.unwrap();
    let delivered: Vec<String> = transport
        .batches()
        .into_iter()
        .filter(|b| !b.contains(&"e5".to_owned()))
        .flatten()
        .collect();
    let mut want = ids(0..8);
    want.retain(|id| id != "e5");
    assert_eq!(delivered, want, "everything but e5, in order, each once");
    assert_eq!(shipper.status().refused_total, 1);
    // Bisection: a handful of attempts, not one per event, and e5 alone exactly once.
    assert!(transport.batches().len() <= 10, "{:?}", transport.batches());
    let alone = transport
        .batches()
        .iter()
        .filter(|b| **b == ["e5".to_owned()])
        .count();
    assert_eq!(alone, 1, "{:?}", transport.batches());
}

#[tokio::test(start_paused = true)]
async fn rate_limits_wait_retry_after_then_resend_the_same_batch() {
    let transport = Recorder::scripted(vec![LinkError::RateLimited {
        retry_after: Duration::from_secs(7),
    }]);
    let shipper = Shipper::new(transport.clone(), config(100, 2), None);
    shipper.start();
    shipper.submit(event("e0", 0));
    shipper.submit(event("e1", 1));
    settle().await;
    shipper.submit(event("e2", 2));
    shipper.submit(event("e3", 3));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let batches = transport.batches();
    assert_eq!(batches, vec![ids(0..2), ids(0..2), ids(2..4)]);
    let times = transport.times();
    assert_eq!(times[1] - times[0], Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_exponentially_capped_with_jitter() {
    let errors = (0..7).map(|_| LinkError::Server(503)).collect();
    let transport = Recorder::scripted(errors);
    let shipper = Shipper::new(transport.clone(), config(100, 1), None);
    shipper.start();
    shipper.submit(event("e0", 0));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let times = transport.times();
    assert_eq!(times.len(), 8, "7 failures then the success");
    let bases = [1, 2, 4, 8, 8, 8, 8];
    for (i, base) in bases.iter().enumerate() {
        let gap = times[i + 1] - times[i];
        let base = Duration::from_secs(*base);
        assert!(
            gap >= base / 2 && gap <= base + Duration::from_millis(2),
            "retry {i}: {gap:?} vs base {base:?}"
        );
    }
    assert!(transport.batches().iter().all(|b| *b == ids(0..1)));
    assert_eq!(shipper.status().failing, None);
    assert_eq!(shipper.status().failed_attempts, 7);
}

#[test]
fn backoff_delays_stay_within_bounds() {
    let backoff = Backoff {
        min: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    for attempt in 0..100 {
        let base = Duration::from_millis(500)
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(Duration::from_secs(30));
        for _ in 0..20 {
            let d = backoff.delay(attempt);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn unauthorized_holds_the_batch_and_flush_reports_the_failure() {
    let errors = (0..3).map(|_| LinkError::Unauthorized).collect();
    let transport = Recorder::scripted(errors);
    let shipper = Shipper::new(transport.clone(), config(100, 10), None);
    shipper.start();
    shipper.submit(event("e0", 0));
    assert_eq!(
        shipper.flush().await,
        Err(FlushError::LinkFailing("unauthorized"))
    );
    assert_eq!(shipper.status().pending, 1, "held, not dropped");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(shipper.status().pending, 0);
    assert_eq!(transport.batches().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn overflow_drops_the_oldest_counts_flags_and_lowers_the_watermark() {
    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    metrics.register_beyond_spec(&mut registry);
    let transport = Recorder::default();
    let shipper = Shipper::new(transport.clone(), config(3, 3), Some(metrics));
    // Deliver one event first so there is a watermark.
    shipper.start();
    shipper.submit(event("e0", 100));
    shipper.flush().await.unwrap();
    assert_eq!(
        shipper.status().watermark,
        Some(event("x", 100).occurred_at)
    );
    // Not leader: events are kept, and the oldest dropped beyond capacity.
    shipper.stop().await;
    let rx = shipper.subscribe();
    for (i, second) in [(1, 50), (2, 120), (3, 130), (4, 140), (5, 150)] {
        shipper.submit(event(&format!("e{i}"), second));
    }
    assert!(rx.has_changed().unwrap());
    let status = shipper.status();
    assert_eq!(status.pending, 3);
    assert_eq!(status.dropped_total, 2);
    assert!(status.overflowed_since_last_check);
    // e1 (t=50) was dropped: the watermark goes back to it so the replay covers it.
    assert_eq!(status.watermark, Some(event("x", 50).occurred_at));
    let text = vworkspace_telemetry::metrics::encode(&registry);
    assert!(
        text.contains("vworkspace_operator_event_buffer_dropped_total 2"),
        "{text}"
    );
    assert!(
        text.contains("vworkspace_operator_event_buffer_occupancy 3"),
        "{text}"
    );
    assert_eq!(shipper.flush().await, Err(FlushError::NotRunning));

    shipper.acknowledge_overflow();
    let status = shipper.status();
    assert!(!status.overflowed_since_last_check);
    // Still buffered e3.. (t=130): the watermark stays at the delivered e0 (t=100).
    assert_eq!(status.watermark, Some(event("x", 100).occurred_at));

    shipper.start();
    shipper.flush().await.unwrap();
    assert_eq!(transport.batches(), vec![ids(0..1), ids(3..6)]);
    assert_eq!(
        shipper.status().watermark,
        Some(event("x", 150).occurred_at)
    );
    let text = vworkspace_telemetry::metrics::encode(&registry);
    assert!(
        text.contains("vworkspace_operator_event_buffer_occupancy 0"),
        "{text}"
    );
    let api = shipper.status().to_api();
    assert_eq!((api.pending, api.dropped), (0, 2));
    assert_eq!(api.delivered_watermark, Some(event("x", 150).occurred_at));
}

#[tokio::test(start_paused = true)]
async fn the_watermark_never_passes_a_buffered_event() {
    let transport = Recorder::scripted(vec![LinkError::Server(500)]);
    let shipper = Shipper::new(transport.clone(), config(10, 1), None);
    shipper.start();
    shipper.submit(event("e0", 10));
    shipper.flush().await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(shipper.status().watermark, Some(event("x", 10).occurred_at));
    // A replayed event with an older time, still buffered, pulls the watermark down.
    shipper.stop().await;
    shipper.submit(event("old", 3));
    assert_eq!(shipper.status().watermark, Some(event("x", 3).occurred_at));
}

#[tokio::test(start_paused = true)]
async fn close_delivers_within_the_bound_and_reports_what_is_left() {
    let transport = Recorder::default();
    let shipper = Shipper::new(transport.clone(), config(100, 10), None);
    shipper.start();
    shipper.submit(event("e0", 0));
    assert_eq!(shipper.close().await, 0);
    assert_eq!(transport.batches(), vec![ids(0..1)]);
    assert!(!shipper.status().running);

    let failing = Recorder::scripted(
        (0..1000)
            .map(|_| LinkError::Network("down".into()))
            .collect(),
    );
    let shipper = Shipper::new(failing.clone(), config(100, 10), None);
    shipper.start();
    shipper.submit(event("e0", 0));
    let t0 = Instant::now();
    assert_eq!(shipper.close().await, 1);
    let took = Instant::now() - t0;
    assert!(
        took <= Duration::from_secs(5) + Duration::from_millis(10),
        "{took:?}"
    );
    assert!(
        failing.batches().len() >= 2,
        "it kept trying within the bound"
    );
}

#[tokio::test(start_paused = true)]
async fn close_is_bounded_even_when_an_attempt_hangs() {
    let transport = Recorder {
        hang: true,
        ..Default::default()
    };
    let shipper = Shipper::new(transport.clone(), config(100, 1), None);
    shipper.start();
    shipper.submit(event("e0", 0));
    let t0 = Instant::now();
    assert_eq!(shipper.close().await, 1);
    assert_eq!(Instant::now() - t0, Duration::from_secs(5));
    assert_eq!(transport.batches(), vec![ids(0..1)]);
    assert_eq!(shipper.status().pending, 1, "kept for the next leader term");
}
