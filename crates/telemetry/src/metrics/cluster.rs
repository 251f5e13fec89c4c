//! `vworkspace_operator_managed_namespaces`: the namespaces carrying
//! `app.vworkspace.io/managed-by=vworkspace`, as counted by the Cluster controller.
//!
//! Invariant: the gauge exists from registration on, at 0 until the first count.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::saturating_i64;

/// Handles to the Cluster controller's spec metrics.
///
/// Cloning is cheap; every clone updates the same series.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    managed_namespaces: Gauge,
}

impl ClusterMetrics {
    /// Registers `vworkspace_operator_managed_namespaces` into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ClusterMetrics {
            managed_namespaces: Gauge::default(),
        };
        registry.register(
            "vworkspace_operator_managed_namespaces",
            "Namespaces labelled app.vworkspace.io/managed-by=vworkspace",
            metrics.managed_namespaces.clone(),
        );
        metrics
    }

    /// Sets the number of namespaces carrying `app.vworkspace.io/managed-by=vworkspace`.
    pub fn set_managed_namespaces(&self, count: usize) {
        self.managed_namespaces.set(saturating_i64(count));
    }
}
