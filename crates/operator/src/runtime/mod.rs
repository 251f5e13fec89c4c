//! The operator's own small controller runtime.
//!
//! kube-runtime's `Controller` hides its queue, but the specification requires the
//! controller-runtime metrics with their true meaning — above all `workqueue_depth` as the
//! exact number of objects waiting for a reconcile. This module therefore re-implements
//! the two pieces of controller-runtime that carry those metrics, on top of kube-runtime's
//! watcher and reflector cache:
//!
//! * [`workqueue`] — client-go's rate-limited work queue (de-duplication, "dirty while
//!   processing", delayed and rate-limited adds) with the `workqueue_*` metrics;
//! * [`controller`] — informers feeding that queue and a pool of workers reconciling from
//!   the cache, with the `controller_runtime_*` metrics, a tracing span per reconcile and
//!   a cache-synced signal for readiness;
//! * [`metrics`] — the metric families, registered once per registry;
//! * [`gate`] — a hold-back point that lets tests freeze reconciles to observe the queue.
//!
//! The module only depends on external crates, so integration tests can compile it in
//! (the operator is a binary crate).

pub mod controller;
pub mod gate;
pub mod metrics;
pub mod workqueue;

// The re-exports are the runtime's API for `main`; until it is wired they are unused.
#[allow(unused_imports)]
pub use controller::{
    Action, Controller, ErrorCategory, Event, ReconcileOutcome, ReconcileResult, WatchedKind,
};
#[allow(unused_imports)]
pub use gate::Gate;
#[allow(unused_imports)]
pub use metrics::{ControllerMetrics, RuntimeMetrics, WorkqueueMetrics};
#[allow(unused_imports)]
pub use workqueue::{RateLimiterConfig, WorkQueue};
