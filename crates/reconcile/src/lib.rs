//! Pure reconcile decisions: plans and state machines, engine child builders and the
//! operation catalog. No Kubernetes client and no I/O live here, so every decision is
//! table-tested without a cluster.

pub mod application_instance;
