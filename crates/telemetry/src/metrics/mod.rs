//! The operator's Prometheus metrics.
//!
//! The `controller_runtime_*` and `workqueue_*` families are not here: the operator's
//! controller runtime (`crates/runtime/src/metrics.rs`) registers them.
//!
//! Each component registers its own metrics into one
//! [`prometheus_client::registry::Registry`] owned by `main`, then `main` hands the
//! registry (behind an `Arc`) to [`crate::health::serve_metrics`]. The spec's nine
//! `vworkspace_operator_*` metrics come in four sets, one per owner, registered once each:
//!
//! | set | owner | metrics |
//! |---|---|---|
//! | [`ReconcileMetrics`] | the controllers' reconcile hook | `reconcile_total`, `reconcile_duration_seconds` |
//! | [`OperationMetrics`] | the Operation controller | `operation_total` (zero-initialised for the catalog's (type, engine) pairs) |
//! | [`AgentMetrics`] | the control-plane agent | `pull_job_lag_seconds`, `connectivity_state`, `applied_jobs_total`, `event_buffer_occupancy`, `credential_age_seconds` |
//! | [`ClusterMetrics`] | the Cluster controller | `managed_namespaces` |
//!
//! Registering the same set twice into one registry would expose a family twice, which
//! Prometheus rejects; `main` registers each set exactly once and clones the handles.
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

mod agent;
mod cluster;
mod labels;
mod leader_election;
mod operation;
mod process;
mod reconcile;
mod rest_client;

use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::registry::Registry;

pub use agent::AgentMetrics;
pub use cluster::ClusterMetrics;
pub use labels::{
    ConnectivityMode, ConnectivityState, Controller, Engine, OperationOutcome, OperationType,
    ParseLabelError, ReconcileResult,
};
pub use leader_election::LeaderElectionMetrics;
pub use operation::OperationMetrics;
pub use process::ProcessCollector;
pub use reconcile::{RECONCILE_DURATION_BUCKETS, ReconcileMetrics};
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

/// Creates the series for `labels` (at the metric's initial value) if it does not exist.
fn init_series<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    // The returned read guard is released right away; only the insertion matters.
    drop(family.get_or_create(labels));
}

/// A count as a gauge value (a `usize` beyond `i64::MAX` cannot occur in practice).
fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
