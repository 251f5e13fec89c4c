//! The operator's Prometheus metrics.
//!
//! The `controller_runtime_*` and `workqueue_*` families are not here: the operator's
//! controller runtime (`crates/runtime/src/metrics.rs`) registers them.
//!
//! Each component registers its own metrics into one
//! [`prometheus_client::registry::Registry`] owned by `main`, then `main` hands the
//! registry (behind an `Arc`) to [`crate::health::serve_metrics`].
//!
//! Invariants every type in this module upholds:
//!
//! - Exposed names, types, labels and histogram buckets are exactly those of
//!   `spec/observability.md` and of the Go libraries (controller-runtime, client-go,
//!   client_golang) whose names we reuse, so existing dashboards work unchanged.
//!   prometheus-client appends `_total` to counters itself, so counters are registered
//!   without the suffix (`vworkspace_operator_reconcile` is exposed as
//!   `vworkspace_operator_reconcile_total`); the tests pin the exposed text.
//! - Labels are printed in lexicographic order of their names, as client_golang
//!   prints them, so our series read exactly like a Go operator's.
//! - Label values are typed (enums, or values fixed at construction such as the lease
//!   name or the API server host), never free strings supplied per call, so no
//!   per-object label (namespace, object name, uid) can ever reach a series.
//! - Counters start at 0 for every known label value, so `rate()` and `increase()`
//!   see the first increment.
//! - Metric handles are cheap to clone (they are `Arc`s inside) and safe to use from
//!   any task.

mod labels;
mod leader_election;
mod operator;
mod process;
mod rest_client;

use prometheus_client::registry::Registry;

pub use labels::{
    ConnectivityMode, ConnectivityState, Controller, Engine, OperationOutcome, OperationType,
    ParseLabelError, ReconcileResult,
};
pub use leader_election::LeaderElectionMetrics;
pub use operator::{CATALOG_OPERATION_KINDS, OperatorMetrics, RECONCILE_DURATION_BUCKETS};
pub use process::ProcessCollector;
pub use rest_client::{
    RestClientMetrics, RestClientMetricsLayer, RestClientMetricsService, RestClientResponseFuture,
};

/// `Content-Type` of [`encode`]'s output: the Prometheus text exposition format 0.0.4.
///
/// We serve the classic text format rather than OpenMetrics because it is what every
/// Prometheus version scrapes, what `promtool check metrics` validates, and what the Go
/// operators whose dashboards we reuse serve by default; it also keeps counter
/// `# TYPE` lines on the `_total` name, exactly as client_golang writes them.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Encodes every metric of `registry` (including custom collectors such as
/// [`ProcessCollector`]) in the Prometheus text format 0.0.4 (see [`CONTENT_TYPE`]).
///
/// Encoding into a `String` can only fail if a metric's own encoder reports an error;
/// none of ours do, so a failure is turned into an empty body plus an error log rather
/// than a panic in the scrape handler.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(%error, "encoding the metrics registry failed");
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests;
