//! `leader_election_master_status{name}`, as client-go's leader election exposes it.
//!
//! Invariant: the only `name` value is the lease name given at registration, so the
//! series exists (at 0, "backup") from start-up and cannot multiply.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    name: Arc<str>,
}

/// Handle to `leader_election_master_status{name="<lease>"}`: 1 while this replica
/// holds the lease, 0 otherwise.
#[derive(Clone, Debug)]
pub struct LeaderElectionMetrics {
    status: Family<LeaseLabels, Gauge>,
    labels: LeaseLabels,
}

impl LeaderElectionMetrics {
    /// Registers the gauge for `lease_name` (the Lease object's name) at 0.
    pub fn register(registry: &mut Registry, lease_name: &str) -> Self {
        let metrics = LeaderElectionMetrics {
            status: Family::default(),
            labels: LeaseLabels {
                name: Arc::from(lease_name),
            },
        };
        metrics.status.get_or_create(&metrics.labels).set(0);
        registry.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates \
             backup, 1 indicates master. 'name' is the string used to identify the lease. \
             Please make sure to group by name",
            metrics.status.clone(),
        );
        metrics
    }

    /// Records whether this replica currently holds the lease.
    pub fn set_leader(&self, is_leader: bool) {
        self.status
            .get_or_create(&self.labels)
            .set(i64::from(is_leader));
    }
}
