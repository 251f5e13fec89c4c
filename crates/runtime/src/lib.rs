//! The operator's own small controller runtime.
//!
//! kube-runtime's `Controller` hides its queue, but the specification requires the
//! controller-runtime metrics with their true meaning — above all `workqueue_depth` as the
//! exact number of objects waiting for a reconcile. This crate therefore re-implements
//! the pieces of controller-runtime that carry those metrics, on top of kube-runtime's
//! watcher and reflector cache, and the manager-level plumbing the operator's three
//! controllers share in one process:
//!
//! * [`workqueue`] — client-go's rate-limited work queue (de-duplication, "dirty while
//!   processing", delayed and rate-limited adds) with the `workqueue_*` metrics;
//! * [`controller`] — informers feeding that queue and a pool of workers reconciling from
//!   the cache, with the `controller_runtime_*` metrics, a tracing span per reconcile, an
//!   error-report hook, and private, shared and optional watches of related kinds;
//! * [`decode`] — objects decoded one by one: one undecodable object is skipped and
//!   reported, never a failed list or watch;
//! * [`shared`] — one watch and cache of a kind serving several controllers;
//! * [`status`] — each controller's per-watch sync state and missing optional kinds, and
//!   the process-wide [`Readiness`] list behind `/readyz`;
//! * [`shutdown`] — graceful stop with a bounded drain, and abort (leadership lost);
//! * [`manager`] — several controllers run together under one shutdown;
//! * [`report`] — what a controller's error reporter is told;
//! * [`metrics`] — the metric families, registered once per registry;
//! * `gate` (feature `test-gate`) — a hold-back point that lets tests freeze reconciles
//!   to observe the queue.
//!
//! ```ignore
//! let metrics = RuntimeMetrics::register(&mut registry);
//! let releases = SharedWatch::new(Api::<HelmRelease>::all(client.clone()), watcher::Config::default());
//! let mut manager = Manager::new();
//! manager.add(
//!     Controller::new("applicationinstance", Api::all(client.clone()), &metrics).owns_shared(&releases),
//!     application_instance::reconcile,
//!     ai_ctx,
//! );
//! manager.add(
//!     Controller::new("cluster", Api::all(client.clone()), &metrics)
//!         .watches_shared(&releases, cluster_of_release)
//!         .watches_optional(Api::<Backup>::all(client.clone()), watcher::Config::default(), cluster_of_backup),
//!     cluster::reconcile,
//!     cluster_ctx,
//! );
//! let readiness = manager.readiness(); // `/readyz` informers: readiness.unsynced_message()
//! manager.run(Shutdown::new(sigterm).abort_on(lost_leadership)).await;
//! ```

pub mod controller;
pub mod decode;
#[cfg(any(test, feature = "test-gate"))]
pub mod gate;
pub mod manager;
pub mod metrics;
pub mod report;
pub mod shared;
pub mod shutdown;
mod source;
pub mod status;
pub mod workqueue;

pub use controller::{
    Action, Controller, ErrorCategory, Event, ReconcileOutcome, ReconcileResult, WatchedKind,
};
#[cfg(any(test, feature = "test-gate"))]
pub use gate::Gate;
pub use manager::Manager;
pub use metrics::{ControllerMetrics, RuntimeMetrics, WorkqueueMetrics};
pub use report::ErrorReport;
pub use shared::SharedWatch;
pub use shutdown::{Shutdown, StopReason, Stopped};
pub use status::{
    ControllerState, ControllerStatus, KindName, Readiness, SyncState, WatchStatus,
    informers_message, unsynced_message,
};
pub use workqueue::{RateLimiterConfig, WorkQueue};
