//! Pure reconcile decisions: plans and state machines, engine child builders and the
//! operation catalog. No Kubernetes client and no I/O live here — the crate depends on
//! kube-core and k8s-openapi only, so the compiler keeps it that way — and every decision
//! is table-tested without a cluster.

pub mod application_instance;
pub mod catalog;
pub mod cluster;
pub mod engines;
pub mod names;
pub mod operation;
pub mod transitions;
