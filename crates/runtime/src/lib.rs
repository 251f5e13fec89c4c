//! The operator's own small controller runtime.
//!
//! kube-runtime's `Controller` hides its queue, but the specification requires the
//! controller-runtime metrics with their true meaning — above all `workqueue_depth` as the
//! exact number of objects waiting for a reconcile. This crate therefore re-implements
//! the two pieces of controller-runtime that carry those metrics, on top of kube-runtime's
//! watcher and reflector cache:
//!
//! * [`workqueue`] — client-go's rate-limited work queue (de-duplication, "dirty while
//!   processing", delayed and rate-limited adds) with the `workqueue_*` metrics;
//! * [`controller`] — informers feeding that queue and a pool of workers reconciling from
//!   the cache, with the `controller_runtime_*` metrics, a tracing span per reconcile and
//!   a cache-synced signal for readiness;
//! * [`metrics`] — the metric families, registered once per registry;
//! * `gate` (feature `test-gate`) — a hold-back point that lets tests freeze reconciles
//!   to observe the queue.

pub mod controller;
#[cfg(any(test, feature = "test-gate"))]
pub mod gate;
pub mod metrics;
pub mod workqueue;

pub use controller::{
    Action, Controller, ErrorCategory, Event, ReconcileOutcome, ReconcileResult, WatchedKind,
};
#[cfg(any(test, feature = "test-gate"))]
pub use gate::Gate;
pub use metrics::{ControllerMetrics, RuntimeMetrics, WorkqueueMetrics};
pub use workqueue::{RateLimiterConfig, WorkQueue};
