//! `vworkspace_operator_reconcile_total` and `vworkspace_operator_reconcile_duration_seconds`:
//! one count and one wall-time observation per finished reconcile, per controller.
//!
//! Invariants: both families exist from registration on with a series for every
//! [`Controller`] (every `result` of the counter at 0, an empty histogram), so the
//! spec's SLO queries return 0 instead of nothing before the first reconcile; the
//! histogram's buckets are exactly [`RECONCILE_DURATION_BUCKETS`].

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::init_series;
use super::labels::{Controller, ReconcileResult};

/// Buckets of `vworkspace_operator_reconcile_duration_seconds` (spec: 5ms … 10s).
pub const RECONCILE_DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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

/// A histogram family whose constructor is a plain `fn`, so the family stays `Clone`.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn reconcile_duration_histogram() -> Histogram {
    Histogram::new(RECONCILE_DURATION_BUCKETS)
}

/// Handles to the spec's reconcile metrics, registered by whoever runs the
/// controllers (the operator's `main` records from each controller's reconcile hook).
///
/// Cloning is cheap; every clone updates the same series.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    reconcile_total: Family<ReconcileLabels, Counter>,
    reconcile_duration: HistogramFamily<ControllerLabels>,
}

impl ReconcileMetrics {
    /// Registers `vworkspace_operator_reconcile_total` and
    /// `vworkspace_operator_reconcile_duration_seconds` into `registry`, with the
    /// counter at 0 for every (controller, result) and the histogram of every controller.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ReconcileMetrics {
            reconcile_total: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_duration_histogram),
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
}
