//! The probe server (`--health-probe-bind-address`, default `:8081`) and the metrics
//! server (`--metrics-bind-address`, default `:8080`).
//!
//! Invariants:
//!
//! - `/healthz` and `/livez` answer `200 ok` for as long as the process can serve
//!   HTTP; they run no checks, so a slow dependency can never get the pod restarted.
//! - `/readyz` is 200 only when every registered readiness check passes (minus
//!   `?exclude=<name>`, repeatable, as kube-apiserver does); otherwise 503. The body
//!   is always JSON, `{"status":"ok"|"failed","checks":[…]}`, and on failure (or with
//!   `?verbose`) lists every check with `ok` and, for failures, `reason`.
//!   `/readyz/<name>` evaluates just that check (404 for an unknown name).
//! - A readiness check never blocks the probe for long: async checks run
//!   concurrently, each bounded by a timeout (2s by default) after which it counts
//!   as failed; a panicking check counts as failed too.
//! - Metrics are served by a separate server that knows nothing about readiness,
//!   so scraping keeps working while the pod is unready.
//! - A bind address of `0` (or empty) disables a server, as in controller-runtime.

mod bind;

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;

pub use bind::{BindAddress, InvalidBindAddress};

/// Default upper bound for one async readiness check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Reason reported by a [`CheckHandle`] nobody has set yet.
pub const NOT_YET_REPORTED: &str = "not yet reported";

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// A readiness state that any task can flip; cheap to clone, all clones share it.
///
/// A new handle is failing with [`NOT_YET_REPORTED`], so the pod is never ready
/// before its owner has said so.
#[derive(Clone, Debug)]
pub struct CheckHandle {
    state: Arc<RwLock<Result<(), String>>>,
}

impl Default for CheckHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckHandle {
    /// A handle failing with [`NOT_YET_REPORTED`].
    pub fn new() -> Self {
        CheckHandle {
            state: Arc::new(RwLock::new(Err(NOT_YET_REPORTED.to_owned()))),
        }
    }

    /// Marks the check as passing.
    pub fn set_ok(&self) {
        self.set(Ok(()));
    }

    /// Marks the check as failing with a human-readable `reason` (shown in the 503
    /// body; keep secrets out of it).
    pub fn set_failing(&self, reason: impl Into<String>) {
        self.set(Err(reason.into()));
    }

    /// Sets the state from a result.
    pub fn set(&self, state: Result<(), String>) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// The current state.
    pub fn status(&self) -> Result<(), String> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the check currently passes.
    pub fn is_ok(&self) -> bool {
        self.status().is_ok()
    }
}

#[derive(Clone)]
enum Check {
    Handle(CheckHandle),
    Async(CheckFn),
}

#[derive(Clone)]
struct NamedCheck {
    name: String,
    check: Check,
}

/// The readiness registry and probe server.
///
/// Cloning is cheap; checks added through any clone are seen by all.
#[derive(Clone)]
pub struct Health {
    checks: Arc<RwLock<Vec<NamedCheck>>>,
    check_timeout: Duration,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.check_names())
            .field("check_timeout", &self.check_timeout)
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// No checks yet: `/readyz` is 200 until a check is added.
    pub fn new() -> Self {
        Health {
            checks: Arc::new(RwLock::new(Vec::new())),
            check_timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }

    /// Sets the per-check timeout of async checks.
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Adds (or replaces, by name) an async readiness check, evaluated on every probe.
    pub fn add_readiness_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()) as CheckFuture);
        self.insert(name.into(), Check::Async(check));
    }

    /// Adds (or replaces, by name) a readiness check backed by `handle`.
    pub fn add_readiness_handle(&self, name: impl Into<String>, handle: CheckHandle) {
        self.insert(name.into(), Check::Handle(handle));
    }

    /// Creates a [`CheckHandle`] (failing until set), registers it under `name` and
    /// returns it. The operator uses `crds`, `rbac`, `informers` and `controlplane`.
    pub fn readiness_handle(&self, name: impl Into<String>) -> CheckHandle {
        let handle = CheckHandle::new();
        self.add_readiness_handle(name, handle.clone());
        handle
    }

    fn insert(&self, name: String, check: Check) {
        let mut checks = self.checks.write().unwrap_or_else(PoisonError::into_inner);
        match checks.iter_mut().find(|c| c.name == name) {
            Some(existing) => existing.check = check,
            None => checks.push(NamedCheck { name, check }),
        }
    }

    /// Names of the registered checks, in registration order.
    pub fn check_names(&self) -> Vec<String> {
        self.snapshot().into_iter().map(|c| c.name).collect()
    }

    fn snapshot(&self) -> Vec<NamedCheck> {
        self.checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Evaluates every check except those named in `exclude` (what `/readyz` serves;
    /// also usable for a `ControllersHealthy`-style condition).
    pub async fn readiness(&self, exclude: &[&str]) -> ReadinessReport {
        let checks = self.snapshot();
        let known: BTreeSet<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        let warnings = exclude
            .iter()
            .filter(|name| !known.contains(**name))
            .map(|name| format!("cannot exclude {name:?}: no such readiness check"))
            .collect();
        let checks = checks
            .into_iter()
            .map(|c| {
                let skip = exclude.contains(&c.name.as_str());
                (c, skip)
            })
            .collect();
        ReadinessReport::new(self.evaluate(checks).await, warnings)
    }

    /// Evaluates one check; `None` if no check has that name.
    pub async fn readiness_of(&self, name: &str) -> Option<ReadinessReport> {
        let check = self.snapshot().into_iter().find(|c| c.name == name)?;
        Some(ReadinessReport::new(
            self.evaluate(vec![(check, false)]).await,
            Vec::new(),
        ))
    }

    /// Evaluates `checks` (the `bool` marks excluded ones), keeping their order.
    async fn evaluate(&self, checks: Vec<(NamedCheck, bool)>) -> Vec<CheckResult> {
        let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
        let mut running = tokio::task::JoinSet::new();
        let mut names = Vec::with_capacity(checks.len());
        for (index, (NamedCheck { name, check }, excluded)) in checks.into_iter().enumerate() {
            match check {
                _ if excluded => {
                    results[index] = Some(CheckResult {
                        name: name.clone(),
                        ok: true,
                        reason: None,
                        excluded: true,
                    });
                }
                Check::Handle(handle) => {
                    results[index] = Some(CheckResult::from_status(name.clone(), handle.status()));
                }
                Check::Async(check) => {
                    let timeout = self.check_timeout;
                    running.spawn(async move {
                        let outcome = match tokio::time::timeout(timeout, check()).await {
                            Ok(outcome) => outcome,
                            Err(_) => Err(format!("check timed out after {timeout:?}")),
                        };
                        (index, outcome)
                    });
                }
            }
            names.push(name);
        }
        while let Some(joined) = running.join_next().await {
            // A panicking task loses its index; it is filled in below as failed.
            if let Ok((index, outcome)) = joined {
                results[index] = Some(CheckResult::from_status(names[index].clone(), outcome));
            }
        }
        results
            .into_iter()
            .zip(names)
            .map(|(result, name)| {
                result.unwrap_or_else(|| {
                    CheckResult::from_status(name, Err("check panicked".to_owned()))
                })
            })
            .collect()
    }

    /// The probe router: `/healthz`, `/livez`, `/readyz`, `/readyz/{check}`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(live))
            .route("/livez", get(live))
            .route("/readyz", get(readyz))
            .route("/readyz/{check}", get(readyz_one))
            .with_state(self.clone())
    }

    /// Serves the probe endpoints on `addr` until `shutdown` resolves; completes at
    /// once when `addr` is [`BindAddress::Disabled`]. The future owns everything it
    /// needs (`tokio::spawn` it directly).
    pub fn serve(
        &self,
        addr: BindAddress,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), ServeError>> + Send + 'static {
        let router = self.router();
        async move {
            let Some(listener) = bind_or_disabled(&addr).await? else {
                return Ok(());
            };
            serve_router(listener, router, shutdown)
                .await
                .map_err(ServeError::Serve)
        }
    }

    /// Serves the probe endpoints on an already-bound listener (tests bind port 0).
    pub fn serve_on(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        serve_router(listener, self.router(), shutdown)
    }
}

async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Outcome of one readiness check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed (excluded checks count as passed).
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Skipped because of `?exclude=`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
}

impl CheckResult {
    fn from_status(name: String, status: Result<(), String>) -> Self {
        let (ok, reason) = match status {
            Ok(()) => (true, None),
            Err(reason) => (false, Some(reason)),
        };
        CheckResult {
            name,
            ok,
            reason,
            excluded: false,
        }
    }
}

/// `ok` or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessStatus {
    /// Every evaluated check passed.
    Ok,
    /// At least one evaluated check failed.
    Failed,
}

/// The `/readyz` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    /// Overall verdict.
    pub status: ReadinessStatus,
    /// Per-check results, in registration order.
    pub checks: Vec<CheckResult>,
    /// Problems with the request itself (e.g. excluding an unknown check).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl ReadinessReport {
    fn new(checks: Vec<CheckResult>, warnings: Vec<String>) -> Self {
        let status = if checks.iter().all(|c| c.ok) {
            ReadinessStatus::Ok
        } else {
            ReadinessStatus::Failed
        };
        ReadinessReport {
            status,
            checks,
            warnings,
        }
    }

    /// Whether the pod is ready.
    pub fn is_ready(&self) -> bool {
        self.status == ReadinessStatus::Ok
    }

    fn into_response(mut self, verbose: bool) -> Response {
        let code = if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        // A passing probe stays terse unless asked; a failing one always explains.
        if self.is_ready() && !verbose {
            self.checks.clear();
        }
        (code, axum::Json(self)).into_response()
    }
}

async fn live() -> &'static str {
    "ok"
}

/// Query pairs, kept as a list because `exclude` repeats.
type Pairs = Query<Vec<(String, String)>>;

fn is_verbose(pairs: &[(String, String)]) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == "verbose" && !matches!(v.as_str(), "false" | "0"))
}

async fn readyz(State(health): State<Health>, Query(pairs): Pairs) -> Response {
    let exclude: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    health
        .readiness(&exclude)
        .await
        .into_response(is_verbose(&pairs))
}

async fn readyz_one(State(health): State<Health>, Path(name): Path<String>) -> Response {
    match health.readiness_of(&name).await {
        // A single check always shows its own result.
        Some(report) => report.into_response(true),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "status": ReadinessStatus::Failed,
                "error": format!("no readiness check named {name:?}"),
                "checks": [],
            })),
        )
            .into_response(),
    }
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The configured address.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the server stopped")]
    Serve(#[source] io::Error),
}

/// Bind `addr` (`None` when it is [`BindAddress::Disabled`]). The operator binds both of
/// its servers this way before it starts anything else, so a port already in use stops
/// it at start-up with the address in the error.
pub async fn bind(addr: &BindAddress) -> Result<Option<TcpListener>, ServeError> {
    bind_or_disabled(addr).await
}

async fn bind_or_disabled(addr: &BindAddress) -> Result<Option<TcpListener>, ServeError> {
    addr.bind().await.map_err(|source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// The metrics router: `GET /metrics` in the Prometheus text format.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    // Encoding reads procfs (ProcessCollector): keep it off the async workers.
    match tokio::task::spawn_blocking(move || crate::metrics::encode(&registry)).await {
        Ok(body) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics encoding task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `/metrics` on `addr` (`--metrics-bind-address`) until `shutdown` resolves;
/// completes at once when `addr` is [`BindAddress::Disabled`].
pub async fn serve_metrics(
    addr: BindAddress,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Some(listener) = bind_or_disabled(&addr).await? else {
        return Ok(());
    };
    serve_metrics_on(listener, registry, shutdown)
        .await
        .map_err(ServeError::Serve)
}

/// Serves `/metrics` on an already-bound listener.
pub async fn serve_metrics_on(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_router(listener, metrics_router(registry), shutdown).await
}

#[cfg(test)]
mod tests;
