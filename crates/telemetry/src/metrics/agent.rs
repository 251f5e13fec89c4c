//! The control-plane agent's spec metrics: `vworkspace_operator_pull_job_lag_seconds`,
//! `vworkspace_operator_connectivity_state{mode}`, `vworkspace_operator_applied_jobs_total`,
//! `vworkspace_operator_event_buffer_occupancy` and
//! `vworkspace_operator_credential_age_seconds`, and one metric beyond the spec,
//! `vworkspace_operator_event_buffer_dropped_total`.
//!
//! Invariants: the five families are registered exactly once per
//! [`AgentMetrics::register`] call; the applied-jobs counter, the buffer occupancy and the
//! pull lag exist (at 0) from registration on; at most one `mode` series of the
//! connectivity gauge exists at a time; the two age gauges are computed at scrape time
//! from a stored timestamp, so a stuck job or a stale credential keeps growing on the
//! dashboard even when nobody updates the metric. The dropped-events counter is not a
//! spec family, so [`AgentMetrics::register`] leaves it out (the spec set stays exactly the
//! spec's); [`AgentMetrics::register_beyond_spec`] adds it, at 0, to a registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{ConnectivityMode, ConnectivityState};
use super::saturating_i64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: ConnectivityMode,
}

/// Handles to the agent's spec metrics, registered for the control-plane agent.
///
/// Cloning is cheap; every clone updates the same series.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    pull_job_lag: AgeGauge,
    connectivity_state: Family<ModeLabels, Gauge>,
    applied_jobs_total: Counter,
    event_buffer_occupancy: Gauge,
    credential_age: AgeGauge,
    event_buffer_dropped_total: Counter,
}

impl AgentMetrics {
    /// Registers the agent's five spec metrics into `registry`.
    ///
    /// `vworkspace_operator_connectivity_state` is deliberately *not* initialised:
    /// it is exposed only for the mode the cluster actually runs in (see
    /// [`AgentMetrics::set_connectivity`]), because a 0 ("reconnecting") series for
    /// an unused mode would drag `avg_over_time(...)` SLOs down for no reason.
    /// `vworkspace_operator_credential_age_seconds` appears once the credential has
    /// been loaded; `vworkspace_operator_pull_job_lag_seconds` is 0 while nothing is
    /// pending.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = AgentMetrics {
            pull_job_lag: AgeGauge::new(Some(0.0)),
            connectivity_state: Family::default(),
            applied_jobs_total: Counter::default(),
            event_buffer_occupancy: Gauge::default(),
            credential_age: AgeGauge::new(None),
            event_buffer_dropped_total: Counter::default(),
        };
        registry.register(
            "vworkspace_operator_pull_job_lag_seconds",
            "Age in seconds of the oldest job the operator has fetched but not yet applied",
            metrics.pull_job_lag.clone(),
        );
        registry.register(
            "vworkspace_operator_connectivity_state",
            "Control-plane connectivity: 1 connected, 0 reconnecting, -1 disconnected",
            metrics.connectivity_state.clone(),
        );
        registry.register(
            "vworkspace_operator_applied_jobs",
            "Pull-mode jobs applied successfully",
            metrics.applied_jobs_total.clone(),
        );
        registry.register(
            "vworkspace_operator_event_buffer_occupancy",
            "Current depth of the outbound audit-event buffer",
            metrics.event_buffer_occupancy.clone(),
        );
        registry.register(
            "vworkspace_operator_credential_age_seconds",
            "Seconds since the bootstrap credentials Secret was last updated or rotated",
            metrics.credential_age.clone(),
        );
        metrics
    }

    /// Sets when the oldest fetched-but-not-applied job was fetched (`None` when no job
    /// is pending). The exposed lag is `now - fetched_at`, computed at each scrape.
    pub fn set_oldest_pending_job(&self, fetched_at: Option<SystemTime>) {
        self.pull_job_lag.set_since(fetched_at);
    }

    /// Registers the agent's metrics that the spec does not list:
    /// `vworkspace_operator_event_buffer_dropped_total` (audit events dropped because the
    /// outbound buffer was full). Call once, next to the spec registration; until then
    /// [`AgentMetrics::add_event_buffer_dropped`] counts into a series nobody scrapes.
    pub fn register_beyond_spec(&self, registry: &mut Registry) {
        registry.register(
            "vworkspace_operator_event_buffer_dropped",
            "Audit events dropped from the outbound buffer (oldest first) because it was full",
            self.event_buffer_dropped_total.clone(),
        );
    }

    /// Counts `n` audit events dropped from the outbound buffer.
    pub fn add_event_buffer_dropped(&self, n: u64) {
        self.event_buffer_dropped_total.inc_by(n);
    }

    /// Sets the connectivity gauge of the cluster's mode and removes the series of
    /// every other mode, so exactly one `mode` series exists once the agent has
    /// reported (a mode change on the Cluster moves the series, it does not add one).
    pub fn set_connectivity(&self, mode: ConnectivityMode, state: ConnectivityState) {
        for other in ConnectivityMode::ALL.iter().filter(|m| **m != mode) {
            self.connectivity_state.remove(&ModeLabels { mode: *other });
        }
        self.connectivity_state
            .get_or_create(&ModeLabels { mode })
            .set(state.value());
    }

    /// Counts one Pull-mode job applied successfully.
    pub fn inc_applied_jobs(&self) {
        self.applied_jobs_total.inc();
    }

    /// Sets the current depth of the outbound event buffer (on enqueue, flush, requeue).
    pub fn set_event_buffer_occupancy(&self, depth: usize) {
        self.event_buffer_occupancy.set(saturating_i64(depth));
    }

    /// Records when the credentials Secret was last updated or rotated (call on load,
    /// persist and rotation). The exposed age is computed at each scrape.
    pub fn set_credential_updated_at(&self, updated_at: SystemTime) {
        self.credential_age.set_since(Some(updated_at));
    }
}

/// Sentinel for "no timestamp stored".
const UNSET: i64 = i64::MIN;

/// A gauge whose value is the age of a stored wall-clock timestamp, evaluated when
/// the registry is encoded.
///
/// Wall-clock (not monotonic) time, because the timestamps come from outside the
/// process (a Secret's update time, a job's fetch time that must survive a restart).
/// A timestamp in the future (clock skew) reads as age 0, never negative.
#[derive(Clone, Debug)]
struct AgeGauge {
    since_unix_millis: Arc<AtomicI64>,
    /// Value exposed while no timestamp is stored; `None` hides the metric.
    when_unset: Option<f64>,
}

impl AgeGauge {
    fn new(when_unset: Option<f64>) -> Self {
        AgeGauge {
            since_unix_millis: Arc::new(AtomicI64::new(UNSET)),
            when_unset,
        }
    }

    fn set_since(&self, since: Option<SystemTime>) {
        let millis = since.map_or(UNSET, unix_millis);
        self.since_unix_millis.store(millis, Ordering::Relaxed);
    }

    fn seconds_at(&self, now: SystemTime) -> Option<f64> {
        let since = self.since_unix_millis.load(Ordering::Relaxed);
        if since == UNSET {
            return self.when_unset;
        }
        let age_millis = unix_millis(now).saturating_sub(since).max(0);
        // Millisecond resolution is far below any scrape interval; the cast is exact
        // for any realistic age (< 2^53 ms).
        Some(age_millis as f64 / 1000.0)
    }
}

fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

impl EncodeMetric for AgeGauge {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // `is_empty` and `encode` are separate calls; if the timestamp was cleared in
        // between, 0 is the least surprising value to expose.
        let seconds = self.seconds_at(SystemTime::now()).unwrap_or(0.0);
        encoder.encode_gauge(&seconds)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.when_unset.is_none() && self.since_unix_millis.load(Ordering::Relaxed) == UNSET
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn age_gauge_is_clamped_and_reports_unset_value() {
        let gauge = AgeGauge::new(Some(0.0));
        let now = SystemTime::now();
        assert_eq!(gauge.seconds_at(now), Some(0.0));
        gauge.set_since(Some(now - Duration::from_millis(90_500)));
        assert_eq!(gauge.seconds_at(now), Some(90.5));
        gauge.set_since(Some(now + Duration::from_secs(10)));
        assert_eq!(gauge.seconds_at(now), Some(0.0));
        gauge.set_since(None);
        assert_eq!(gauge.seconds_at(now), Some(0.0));

        let hidden = AgeGauge::new(None);
        assert!(hidden.is_empty());
        hidden.set_since(Some(now));
        assert!(!hidden.is_empty());
    }

    #[test]
    fn dropped_events_counter_is_registered_beyond_the_spec_set() {
        let mut registry = Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        assert!(!crate::metrics::encode(&registry).contains("event_buffer_dropped"));
        metrics.register_beyond_spec(&mut registry);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains("vworkspace_operator_event_buffer_dropped_total 0"),
            "{text}"
        );
        metrics.add_event_buffer_dropped(3);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains("vworkspace_operator_event_buffer_dropped_total 3"),
            "{text}"
        );
    }
}
