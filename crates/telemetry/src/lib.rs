//! Telemetry surfaces of the operator: the Prometheus metrics (the spec's
//! `vworkspace_operator_*`, `rest_client_requests_total`, `leader_election_master_status`
//! and `process_*`; the operator's controller runtime adds `controller_runtime_*` and
//! `workqueue_*` to the same registry), JSON logging with zap's keys, and the
//! health server (`/healthz`, `/readyz`).
//!
//! `spec/observability.md` is normative for every name in this crate: metric names,
//! label names and values, histogram buckets, log keys and endpoints. Tests pin the
//! exact exposed text, so a rename is a deliberate, reviewed change. The operator-facing
//! reference is `docs/observability.md`.
//!
//! Wiring, as `main` does it (each component registers its own metrics; `main` owns
//! the registry and freezes it behind an `Arc` before serving):
//!
//! ```no_run
//! use std::sync::Arc;
//! use prometheus_client::registry::Registry;
//! use vworkspace_telemetry::health::{BindAddress, Health, serve_metrics};
//! use vworkspace_telemetry::logging::{self, LogOptions};
//! use vworkspace_telemetry::metrics::{
//!     AgentMetrics, ClusterMetrics, Engine, LeaderElectionMetrics, OperationMetrics,
//!     OperationType, ProcessCollector, ReconcileMetrics, RestClientMetrics,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! logging::init(LogOptions {
//!     level: "info".parse()?,    // --zap-log-level
//!     encoder: "json".parse()?,  // --zap-encoder
//!     cluster_id: "cluster-prod-1".into(),
//!     org_id: "myteam".into(),
//!     operator_version: "v0.4.2".into(),
//!     filter: None, // RUST_LOG
//! })?;
//!
//! let mut registry = Registry::default();
//! // The spec's vworkspace_operator_* metrics, one set per owner.
//! let reconcile = ReconcileMetrics::register(&mut registry);
//! // main passes the operation catalog's pairs,
//! // `vworkspace_reconcile::catalog::builtin().kinds()`, mapped through `as_str().parse()`.
//! let kinds = [(OperationType::Backup, Engine::Velero), (OperationType::Restore, Engine::Velero)];
//! let operation = OperationMetrics::register(&mut registry, kinds);
//! let agent = AgentMetrics::register(&mut registry);
//! let cluster = ClusterMetrics::register(&mut registry);
//! // (the operator's runtime registers controller_runtime_* and workqueue_* here too)
//! let leader = LeaderElectionMetrics::register(&mut registry, "vworkspace-operator");
//! let rest = RestClientMetrics::register(&mut registry);
//! registry.register_collector(Box::new(ProcessCollector::new()));
//!
//! let config = kube::Config::infer().await?;
//! let layer = rest.layer(&config.cluster_url);
//! let client = kube::client::ClientBuilder::try_from(config)?
//!     .with_layer(&layer)
//!     .build();
//!
//! let health = Health::new();
//! let crds = health.readiness_handle("crds");
//! let rbac = health.readiness_handle("rbac");
//! let informers = health.readiness_handle("informers");
//! let controlplane = health.readiness_handle("controlplane");
//!
//! let registry = Arc::new(registry);
//! let metrics_addr: BindAddress = ":8080".parse()?; // --metrics-bind-address
//! let probe_addr: BindAddress = ":8081".parse()?;   // --health-probe-bind-address
//! let shutdown = || async { let _ = tokio::signal::ctrl_c().await; };
//! tokio::spawn(serve_metrics(metrics_addr, registry, shutdown()));
//! tokio::spawn(health.serve(probe_addr, shutdown()));
//! # let _ = (reconcile, operation, agent, cluster, leader, client);
//! # let _ = (crds, rbac, informers, controlplane);
//! # Ok(())
//! # }
//! ```

pub mod health;
pub mod logging;
pub mod metrics;
mod redact;

pub use redact::{REDACTED, Redacted, SecretString, without_quoted_values};
