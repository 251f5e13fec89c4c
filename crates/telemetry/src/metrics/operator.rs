//! The spec's operator-specific metrics (`vworkspace_operator_*`).
//!
//! Invariants: the nine metrics are registered exactly once per [`OperatorMetrics::register`]
//! call with the spec's names, types, labels and buckets; every counter series for a
//! known label combination exists (at 0) from registration on; the two age gauges are
//! computed at scrape time from a stored timestamp, so a stuck job or a stale
//! credential keeps growing on the dashboard even when nobody updates the metric.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::labels::{
    ConnectivityMode, ConnectivityState, Controller, Engine, OperationOutcome, OperationType,
    ReconcileResult,
};

/// Buckets of `vworkspace_operator_reconcile_duration_seconds` (spec: 5ms … 10s).
pub const RECONCILE_DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The (type, engine) pairs of the built-in operation catalog (DESIGN §2).
///
/// `vworkspace_operator_operation_total` is zero-initialised for each of these pairs
/// times every [`OperationOutcome`] (9 × 4 = 36 series) rather than for the full
/// 6 × 7 × 4 cartesian product: a pair outside the catalog (e.g. Restore × helm) can
/// never be counted, so its series would only be noise. Recording an off-catalog pair
/// still works; it simply starts existing at its first increment.
pub const CATALOG_OPERATION_KINDS: [(OperationType, Engine); 9] = [
    (OperationType::Backup, Engine::Velero),
    (OperationType::Restore, Engine::Velero),
    (OperationType::Backup, Engine::Volsync),
    (OperationType::Backup, Engine::Snapshot),
    (OperationType::Upgrade, Engine::Helm),
    (OperationType::Upgrade, Engine::HelmHookJob),
    (OperationType::Migration, Engine::Workflow),
    (OperationType::RunCommand, Engine::Job),
    (OperationType::Runbook, Engine::Workflow),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: Controller,
    result: ReconcileResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: Controller,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    engine: Engine,
    outcome: OperationOutcome,
    r#type: OperationType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: ConnectivityMode,
}

/// A histogram family whose constructor is a plain `fn`, so the family stays `Clone`.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn reconcile_duration_histogram() -> Histogram {
    Histogram::new(RECONCILE_DURATION_BUCKETS)
}

/// Handles to the spec's `vworkspace_operator_*` metrics.
///
/// Cloning is cheap; every clone updates the same series.
#[derive(Clone, Debug)]
pub struct OperatorMetrics {
    reconcile_total: Family<ReconcileLabels, Counter>,
    reconcile_duration: HistogramFamily<ControllerLabels>,
    operation_total: Family<OperationLabels, Counter>,
    pull_job_lag: AgeGauge,
    connectivity_state: Family<ModeLabels, Gauge>,
    applied_jobs_total: Counter,
    event_buffer_occupancy: Gauge,
    managed_namespaces: Gauge,
    credential_age: AgeGauge,
}

impl OperatorMetrics {
    /// Registers the nine spec metrics into `registry` and zero-initialises every
    /// known counter series (and the reconcile histogram of every controller).
    ///
    /// `vworkspace_operator_connectivity_state` is deliberately *not* initialised:
    /// it is exposed only for the mode the cluster actually runs in (see
    /// [`OperatorMetrics::set_connectivity`]), because a 0 ("reconnecting") series for
    /// an unused mode would drag `avg_over_time(...)` SLOs down for no reason.
    /// `vworkspace_operator_credential_age_seconds` appears once the credential has
    /// been loaded; `vworkspace_operator_pull_job_lag_seconds` is 0 while nothing is
    /// pending.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = OperatorMetrics {
            reconcile_total: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_duration_histogram),
            operation_total: Family::default(),
            pull_job_lag: AgeGauge::new(Some(0.0)),
            connectivity_state: Family::default(),
            applied_jobs_total: Counter::default(),
            event_buffer_occupancy: Gauge::default(),
            managed_namespaces: Gauge::default(),
            credential_age: AgeGauge::new(None),
        };

        for controller in Controller::ALL {
            for result in ReconcileResult::ALL {
                init_series(
                    &metrics.reconcile_total,
                    &ReconcileLabels {
                        controller: *controller,
                        result: *result,
                    },
                );
            }
            init_series(
                &metrics.reconcile_duration,
                &ControllerLabels {
                    controller: *controller,
                },
            );
        }
        for (r#type, engine) in CATALOG_OPERATION_KINDS {
            for outcome in OperationOutcome::ALL {
                init_series(
                    &metrics.operation_total,
                    &OperationLabels {
                        r#type,
                        engine,
                        outcome: *outcome,
                    },
                );
            }
        }

        registry.register(
            "vworkspace_operator_reconcile",
            "Reconciles per controller and outcome",
            metrics.reconcile_total.clone(),
        );
        registry.register(
            "vworkspace_operator_reconcile_duration_seconds",
            "Reconcile wall time in seconds per controller",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "vworkspace_operator_operation",
            "Operation completions per type, engine and outcome",
            metrics.operation_total.clone(),
        );
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
            "vworkspace_operator_managed_namespaces",
            "Namespaces labelled app.vworkspace.io/managed-by=vworkspace",
            metrics.managed_namespaces.clone(),
        );
        registry.register(
            "vworkspace_operator_credential_age_seconds",
            "Seconds since the bootstrap credentials Secret was last updated or rotated",
            metrics.credential_age.clone(),
        );
        metrics
    }

    /// Counts one finished reconcile and observes its wall time.
    pub fn record_reconcile(
        &self,
        controller: Controller,
        result: ReconcileResult,
        duration: Duration,
    ) {
        self.reconcile_total
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(duration.as_secs_f64());
    }

    /// Counts one Operation reaching `outcome` (call once per transition, not per reconcile).
    pub fn record_operation(
        &self,
        r#type: OperationType,
        engine: Engine,
        outcome: OperationOutcome,
    ) {
        self.operation_total
            .get_or_create(&OperationLabels {
                r#type,
                engine,
                outcome,
            })
            .inc();
    }

    /// Sets when the oldest fetched-but-not-applied job was fetched (`None` when no job
    /// is pending). The exposed lag is `now - fetched_at`, computed at each scrape.
    pub fn set_oldest_pending_job(&self, fetched_at: Option<SystemTime>) {
        self.pull_job_lag.set_since(fetched_at);
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

    /// Sets the number of namespaces carrying `app.vworkspace.io/managed-by=vworkspace`.
    pub fn set_managed_namespaces(&self, count: usize) {
        self.managed_namespaces.set(saturating_i64(count));
    }

    /// Records when the credentials Secret was last updated or rotated (call on load,
    /// persist and rotation). The exposed age is computed at each scrape.
    pub fn set_credential_updated_at(&self, updated_at: SystemTime) {
        self.credential_age.set_since(Some(updated_at));
    }
}

/// Creates the series for `labels` (at the metric's initial value) if it does not exist.
fn init_series<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    // The returned read guard is released right away; only the insertion matters.
    drop(family.get_or_create(labels));
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
}
