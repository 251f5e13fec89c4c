//! The controller-runtime and client-go metric families, with their exact names, labels,
//! help texts and buckets, so dashboards and alerts written for a kubebuilder operator
//! work unchanged.
//!
//! Invariants:
//! * every family is registered exactly once per registry ([`RuntimeMetrics::register`]);
//!   controllers get per-name handles from it, so two controllers never register twice;
//! * asking for a controller's handles creates all of its series at zero (including every
//!   `result` value of `controller_runtime_reconcile_total`), so `rate()` and absence
//!   alerts work from the first scrape;
//! * no label ever carries a per-object value: labels are the controller name and the
//!   result kind only.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// controller-runtime's workqueue latency buckets: `prometheus.ExponentialBuckets(10e-9, 10, 12)`,
/// written out so the exported `le` values are the exact decimal ones.
pub const WORKQUEUE_BUCKETS: [f64; 12] = [
    1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0,
];

/// controller-runtime's `controller_runtime_reconcile_time_seconds` buckets.
pub const RECONCILE_TIME_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0,
];

/// A gauge holding seconds as a float.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// Labels of the `workqueue_*` families. controller-runtime sets both to the controller
/// name; fields are in the order client_golang prints them (sorted).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    controller: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn workqueue_histogram() -> Histogram {
    Histogram::new(WORKQUEUE_BUCKETS)
}

fn reconcile_time_histogram() -> Histogram {
    Histogram::new(RECONCILE_TIME_BUCKETS)
}

/// The client-go `workqueue_*` families, shared by every queue of a process.
#[derive(Clone, Debug)]
pub struct WorkqueueMetrics {
    depth: Family<QueueLabels, Gauge>,
    adds: Family<QueueLabels, Counter>,
    retries: Family<QueueLabels, Counter>,
    queue_duration: HistogramFamily<QueueLabels>,
    work_duration: HistogramFamily<QueueLabels>,
    unfinished_work: Family<QueueLabels, SecondsGauge>,
    longest_running: Family<QueueLabels, SecondsGauge>,
}

impl Default for WorkqueueMetrics {
    /// Families that belong to no registry: useful for queues whose metrics nobody reads.
    fn default() -> Self {
        Self {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            queue_duration: Family::new_with_constructor(workqueue_histogram),
            work_duration: Family::new_with_constructor(workqueue_histogram),
            unfinished_work: Family::default(),
            longest_running: Family::default(),
        }
    }
}

impl WorkqueueMetrics {
    /// Create the families and register each of them once in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // Help texts are client-go's (prometheus-client appends the final full stop).
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            metrics.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            metrics.adds.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            metrics.retries.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            metrics.queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            metrics.work_duration.clone(),
        );
        registry.register(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been \
             observed by work_duration. Large values indicate stuck threads. One can deduce \
             the number of stuck threads by observing the rate at which this increases",
            metrics.unfinished_work.clone(),
        );
        registry.register(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            metrics.longest_running.clone(),
        );
        metrics
    }

    /// The handles of the queue named `name` (labels `name` = `controller` = `name`), with
    /// every series created at zero.
    pub fn for_queue(&self, name: &str) -> QueueMetrics {
        let labels = QueueLabels {
            controller: name.to_owned(),
            name: name.to_owned(),
        };
        // Cloning a metric out of its family shares the underlying atomic, so the handle
        // updates the exported series without going through the family's lock again.
        QueueMetrics {
            depth: self.depth.get_or_create_owned(&labels),
            adds: self.adds.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            queue_duration: self.queue_duration.get_or_create_owned(&labels),
            work_duration: self.work_duration.get_or_create_owned(&labels),
            unfinished_work: self.unfinished_work.get_or_create_owned(&labels),
            longest_running: self.longest_running.get_or_create_owned(&labels),
        }
    }
}

/// The `workqueue_*` series of one queue.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    pub(crate) depth: Gauge,
    pub(crate) adds: Counter,
    pub(crate) retries: Counter,
    pub(crate) queue_duration: Histogram,
    pub(crate) work_duration: Histogram,
    pub(crate) unfinished_work: SecondsGauge,
    pub(crate) longest_running: SecondsGauge,
}

impl Default for QueueMetrics {
    /// Series that belong to no registry.
    fn default() -> Self {
        WorkqueueMetrics::default().for_queue("unregistered")
    }
}

/// The `controller_runtime_*` families, shared by every controller of a process.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    terminal_reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_panics: Family<ControllerLabels, Counter>,
    reconcile_time: HistogramFamily<ControllerLabels>,
    active_workers: Family<ControllerLabels, Gauge>,
    max_concurrent_reconciles: Family<ControllerLabels, Gauge>,
}

impl Default for ControllerMetrics {
    /// Families that belong to no registry.
    fn default() -> Self {
        Self {
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            terminal_reconcile_errors: Family::default(),
            reconcile_panics: Family::default(),
            reconcile_time: Family::new_with_constructor(reconcile_time_histogram),
            active_workers: Family::default(),
            max_concurrent_reconciles: Family::default(),
        }
    }
}

/// The `result` label values of `controller_runtime_reconcile_total`.
pub const RECONCILE_RESULTS: [&str; 4] = ["success", "error", "requeue", "requeue_after"];

impl ControllerMetrics {
    /// Create the families and register each of them once in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            metrics.reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_terminal_reconcile_errors",
            "Total number of terminal reconciliation errors per controller",
            metrics.terminal_reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_panics",
            "Total number of reconciliation panics per controller",
            metrics.reconcile_panics.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            metrics.reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            metrics.active_workers.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            metrics.max_concurrent_reconciles.clone(),
        );
        metrics
    }

    /// The handles of the controller named `name`, with every series created at zero.
    pub fn for_controller(&self, name: &str) -> ReconcileMetrics {
        let labels = ControllerLabels {
            controller: name.to_owned(),
        };
        let by_result = |result: &'static str| {
            self.reconcile_total.get_or_create_owned(&ResultLabels {
                controller: name.to_owned(),
                result,
            })
        };
        ReconcileMetrics {
            success: by_result(RECONCILE_RESULTS[0]),
            error: by_result(RECONCILE_RESULTS[1]),
            requeue: by_result(RECONCILE_RESULTS[2]),
            requeue_after: by_result(RECONCILE_RESULTS[3]),
            errors: self.reconcile_errors.get_or_create_owned(&labels),
            terminal_errors: self.terminal_reconcile_errors.get_or_create_owned(&labels),
            panics: self.reconcile_panics.get_or_create_owned(&labels),
            time: self.reconcile_time.get_or_create_owned(&labels),
            active_workers: self.active_workers.get_or_create_owned(&labels),
            max_concurrent_reconciles: self.max_concurrent_reconciles.get_or_create_owned(&labels),
        }
    }
}

/// The `controller_runtime_*` series of one controller.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    pub(crate) success: Counter,
    pub(crate) error: Counter,
    pub(crate) requeue: Counter,
    pub(crate) requeue_after: Counter,
    pub(crate) errors: Counter,
    pub(crate) terminal_errors: Counter,
    pub(crate) panics: Counter,
    pub(crate) time: Histogram,
    pub(crate) active_workers: Gauge,
    pub(crate) max_concurrent_reconciles: Gauge,
}

/// Both metric sets of the runtime, registered together. `main` creates one per process
/// and hands a reference to every [`Controller`](crate::Controller).
#[derive(Clone, Debug, Default)]
pub struct RuntimeMetrics {
    /// `controller_runtime_*`.
    pub controller: ControllerMetrics,
    /// `workqueue_*`.
    pub workqueue: WorkqueueMetrics,
}

impl RuntimeMetrics {
    /// Register every family of the runtime once in `registry`.
    /// Also registers `vworkspace_operator_undecodable_objects_total` (see
    /// [`crate::decode`]).
    pub fn register(registry: &mut Registry) -> Self {
        crate::decode::register(registry);
        Self {
            controller: ControllerMetrics::register(registry),
            workqueue: WorkqueueMetrics::register(registry),
        }
    }
}

/// Test helpers: the registry as a scrape sees it, raw or parsed by the project's one
/// exposition parser.
#[cfg(test)]
pub(crate) mod scrape {
    use prometheus_client::registry::Registry;
    use vworkspace_testkit::prom::Exposition;

    /// The text exposition of `registry`.
    pub(crate) fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry)
            .expect("encoding into a String cannot fail");
        out
    }

    /// `registry` scraped and parsed; a broken exposition fails the test.
    pub(crate) fn parsed(registry: &Registry) -> Exposition {
        Exposition::parse(&text(registry)).expect("a valid exposition")
    }
}

#[cfg(test)]
mod tests {
    use super::scrape::{parsed, text};
    use super::*;

    #[test]
    fn every_series_of_a_controller_starts_at_zero() {
        let mut registry = Registry::default();
        let metrics = RuntimeMetrics::register(&mut registry);
        let _reconcile = metrics.controller.for_controller("applicationinstance");
        let _queue = metrics.workqueue.for_queue("applicationinstance");
        let scraped = parsed(&registry);
        let c = ("controller", "applicationinstance");
        for result in RECONCILE_RESULTS {
            assert_eq!(
                scraped.value(
                    "controller_runtime_reconcile_total",
                    &[c, ("result", result)]
                ),
                Some(0.0),
                "{result}"
            );
        }
        for name in [
            "controller_runtime_reconcile_errors_total",
            "controller_runtime_terminal_reconcile_errors_total",
            "controller_runtime_reconcile_panics_total",
            "controller_runtime_active_workers",
            "controller_runtime_max_concurrent_reconciles",
            "controller_runtime_reconcile_time_seconds_count",
        ] {
            assert_eq!(scraped.value(name, &[c]), Some(0.0), "{name}");
        }
        let q = [c, ("name", "applicationinstance")];
        for name in [
            "workqueue_depth",
            "workqueue_adds_total",
            "workqueue_retries_total",
            "workqueue_unfinished_work_seconds",
            "workqueue_longest_running_processor_seconds",
            "workqueue_queue_duration_seconds_count",
            "workqueue_work_duration_seconds_count",
        ] {
            assert_eq!(scraped.value(name, &q), Some(0.0), "{name}");
        }
    }

    #[test]
    fn buckets_are_client_go_and_controller_runtime_ones() {
        let mut registry = Registry::default();
        let metrics = RuntimeMetrics::register(&mut registry);
        let _reconcile = metrics.controller.for_controller("c");
        let _queue = metrics.workqueue.for_queue("c");
        let scraped = parsed(&registry);
        // The `le` values as exposed (their text, not only the numbers, is what the
        // dashboards written for controller-runtime match on).
        let les = |metric: &str| -> Vec<String> {
            let bucket = format!("{metric}_bucket");
            scraped
                .series(&bucket, &[])
                .filter_map(|s| s.label("le").map(str::to_owned))
                .collect()
        };
        let queue_les = les("workqueue_queue_duration_seconds");
        let parsed: Vec<f64> = queue_les
            .iter()
            .filter_map(|le| le.parse().ok())
            .filter(|le: &f64| le.is_finite())
            .collect();
        assert_eq!(
            parsed,
            [
                1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0
            ]
        );
        assert_eq!(queue_les.last().map(String::as_str), Some("+Inf"));
        assert_eq!(les("workqueue_work_duration_seconds"), queue_les);
        let reconcile_les = les("controller_runtime_reconcile_time_seconds");
        assert_eq!(reconcile_les.len(), RECONCILE_TIME_BUCKETS.len() + 1);
        assert_eq!(reconcile_les.first().map(String::as_str), Some("0.005"));
        assert_eq!(reconcile_les.get(39).map(String::as_str), Some("60.0"));
    }

    #[test]
    fn families_are_registered_once_for_many_controllers() {
        let mut registry = Registry::default();
        let metrics = RuntimeMetrics::register(&mut registry);
        for name in ["applicationinstance", "operation", "cluster"] {
            let _ = metrics.controller.for_controller(name);
            let _ = metrics.workqueue.for_queue(name);
        }
        let type_lines = text(&registry)
            .lines()
            .filter(|l| l.starts_with("# TYPE workqueue_depth "))
            .count();
        assert_eq!(type_lines, 1);
        let scraped = parsed(&registry);
        for name in ["applicationinstance", "operation", "cluster"] {
            assert_eq!(
                scraped.value("workqueue_depth", &[("controller", name), ("name", name)]),
                Some(0.0)
            );
        }
    }
}
