//! The HTTP server: the agent API, the admin endpoints and the org timeline.
//!
//! The accept loop is our own (hyper's HTTP/1 connection per socket) rather than
//! `axum::serve`, for one reason: a `refuse` fault must drop the connection without
//! any answer, which only a service returning an error to hyper can do.
//!
//! Invariants:
//! * agent requests are handled in this order: faults, body (bounded by
//!   `max_body_bytes`; an oversized body is read and discarded up to a cap so the
//!   client sees the 413 instead of a reset), token, rate limit, validation, database;
//! * a token is only ever hashed and compared as a digest; it is never logged, and the
//!   cache from digest to cluster holds digests only;
//! * every database call runs on the blocking pool, so a slow disk never stalls the
//!   async workers (and a long-poll waiting costs no thread);
//! * a long-poll re-reads the database every [`POLL_INTERVAL`], which is what lets a
//!   job enqueued by the CLI (another process, same file) reach a waiting agent within
//!   a fraction of a second.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use vworkspace_api::AuditEvent;
use vworkspace_api::agent_api::{
    Ack, EVENTS_PATH, EventBatch, EventsAccepted, HEARTBEAT_PATH, Heartbeat, HeartbeatAck,
    JOBS_PATH, JobList, JobStatusReport,
};

use crate::error::ApiFailure;
use crate::faults::{FaultSpec, Faults, Injected, route_of};
use crate::store::{ClusterRef, StatusOutcome, Store, StoreError, TimelineFilter};
use crate::{Config, token};

/// How often a waiting long-poll looks for new jobs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Jobs per answer when the agent does not say.
pub const DEFAULT_JOB_LIMIT: u32 = 100;
/// The most jobs one answer carries.
pub const MAX_JOB_LIMIT: u32 = 1000;
/// Timeline rows per answer when the reader does not say, and the most.
const DEFAULT_TIMELINE_LIMIT: u32 = 200;
const MAX_TIMELINE_LIMIT: u32 = 5000;
/// How much of an oversized body is read (and discarded) before answering 413.
const DRAIN_CAP: usize = 64 << 20;

pub(crate) struct AppState {
    store: Arc<Mutex<Store>>,
    max_body_bytes: usize,
    long_poll_max: Duration,
    admin_digest: Option<[u8; 32]>,
    pub(crate) faults: Faults,
    limiter: RateLimiter,
    tokens: Mutex<HashMap<[u8; 32], ClusterRef>>,
}

impl AppState {
    pub(crate) fn new(config: &Config, store: Store) -> Self {
        let faults = Faults::default();
        for spec in &config.faults {
            faults.add(spec.clone());
        }
        Self {
            store: Arc::new(Mutex::new(store)),
            max_body_bytes: config.max_body_bytes,
            long_poll_max: config.long_poll_max,
            admin_digest: config.admin_token.as_deref().map(token::hash),
            faults,
            limiter: RateLimiter::new(config.rate_limit_per_second),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    async fn db<T, F>(&self, f: F) -> Result<T, ApiFailure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut store)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "database task failed");
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the database task failed",
            )
        })?
        .map_err(ApiFailure::from)
    }

    /// The cluster of the request's bearer token, rate limited.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<ClusterRef, ApiFailure> {
        let digest = bearer(headers)
            .map(token::hash)
            .ok_or_else(ApiFailure::unauthorized)?;
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned();
        let cluster = match cached {
            Some(cluster) => cluster,
            None => {
                let cluster = self
                    .db(move |s| s.cluster_for_token(&digest))
                    .await?
                    .ok_or_else(ApiFailure::unauthorized)?;
                // Only known tokens are cached: clusters are never deleted or re-keyed
                // behind the server's back, and unknown digests must not fill memory.
                self.tokens
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(digest, cluster.clone());
                cluster
            }
        };
        self.limiter
            .check(&digest)
            .map_err(ApiFailure::rate_limited)?;
        Ok(cluster)
    }

    /// Admin endpoints and the timeline: with an admin token configured, the request
    /// must present it (bearer header or `admin_token` query parameter); without one,
    /// only loopback peers are served.
    fn authorize_admin(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        peer: SocketAddr,
    ) -> Result<(), ApiFailure> {
        let allowed = match &self.admin_digest {
            Some(want) => bearer(headers)
                .or(query_token)
                .is_some_and(|t| token::hash(t) == *want),
            None => peer.ip().is_loopback(),
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "admin access needs the admin token (or, without one configured, a loopback client)",
            ))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A token bucket per token digest: `rate` requests per second, bursts of `rate`.
struct RateLimiter {
    rate: Option<f64>,
    buckets: Mutex<HashMap<[u8; 32], (f64, Instant)>>,
}

impl RateLimiter {
    fn new(per_second: Option<u32>) -> Self {
        Self {
            rate: per_second.map(|r| f64::from(r.max(1))),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when the bucket is empty.
    fn check(&self, key: &[u8; 32]) -> Result<(), u32> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = buckets.entry(*key).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / rate).ceil();
            // At most a minute by construction (rate >= 1); the cast cannot truncate.
            Err((wait as u32).max(1))
        }
    }
}

/// Reads the body, at most `max` bytes. A longer one is read on (discarded) up to
/// [`DRAIN_CAP`] so the client finishes sending and reads our 413.
async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiFailure> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiFailure::bad_request(format!("reading the body failed: {e}")))?;
        total += chunk.len();
        if total > max {
            if total > DRAIN_CAP {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if total > max {
        return Err(ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body has more than {max} bytes; split the batch"),
        ));
    }
    Ok(Bytes::from(buf))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiFailure::bad_request(format!("the body is not valid: {e}")))
}

fn parse_query(
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<BTreeMap<String, String>, ApiFailure> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiFailure::bad_request(format!("bad query string: {e}")))
}

fn number<T: std::str::FromStr>(
    query: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiFailure> {
    query
        .get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiFailure::bad_request(format!("{name} must be a non-negative integer"))
                    .with_details(BTreeMap::from([(
                        name.to_owned(),
                        format!("{v:?} is not a non-negative integer"),
                    )]))
            })
        })
        .transpose()
}

/// The agent API, the admin endpoints and the timeline.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(EVENTS_PATH, post(post_events))
        .route(JOBS_PATH, get(get_jobs))
        .route("/api/agent/jobs/{id}/status", post(post_status))
        .route(HEARTBEAT_PATH, post(post_heartbeat))
        .route("/api/orgs/{org}/timeline", get(timeline_json))
        .route("/orgs/{org}/timeline", get(timeline_page))
        .route(
            "/admin/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route("/admin/stats", get(get_stats).delete(reset_stats))
        .route("/admin/clusters", get(list_clusters))
        .fallback(|| async { ApiFailure::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

type Answer<T> = Result<Json<T>, ApiFailure>;

fn check_event(cluster: &ClusterRef, event: &AuditEvent) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let id = &event.event_id;
    if id.len() != 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        problems.push(("event_id", "must be 32 lowercase hex characters".to_owned()));
    }
    if event.cluster_id != cluster.id {
        problems.push((
            "cluster_id",
            format!("{:?} is not the token's cluster", event.cluster_id),
        ));
    }
    if event.org_id != cluster.org_id {
        problems.push((
            "org_id",
            format!("{:?} is not the cluster's org", event.org_id),
        ));
    }
    if event.kind.is_empty() {
        problems.push(("kind", "must not be empty".to_owned()));
    }
    problems
}

async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Answer<EventsAccepted> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let cluster = state.authenticate(&headers).await?;
    let batch: EventBatch = parse_json(&bytes)?;
    let mut details = BTreeMap::new();
    for (i, event) in batch.events.iter().enumerate() {
        for (field, problem) in check_event(&cluster, event) {
            details.insert(format!("events[{i}].{field}"), problem);
        }
    }
    if !details.is_empty() {
        return Err(ApiFailure::bad_request(format!(
            "{} field(s) of the batch are invalid; nothing was stored",
            details.len()
        ))
        .with_details(details));
    }
    let received_at = crate::store::now_millis();
    let (accepted, duplicates) = state
        .db(move |s| s.insert_events(&batch.events, &received_at))
        .await?;
    Ok(Json(EventsAccepted {
        accepted,
        duplicates,
    }))
}

async fn get_jobs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Answer<JobList> {
    let cluster = state.authenticate(&headers).await?;
    let query = parse_query(query)?;
    let wait = Duration::from_secs(number::<u64>(&query, "wait_seconds")?.unwrap_or(0))
        .min(state.long_poll_max);
    let limit = number::<u32>(&query, "limit")?.unwrap_or(DEFAULT_JOB_LIMIT);
    if !(1..=MAX_JOB_LIMIT).contains(&limit) {
        return Err(ApiFailure::bad_request(format!(
            "limit must be between 1 and {MAX_JOB_LIMIT}"
        )));
    }
    let deadline = Instant::now() + wait;
    loop {
        let id = cluster.id.clone();
        let jobs = state.db(move |s| s.fetch_jobs(&id, limit)).await?;
        let now = Instant::now();
        if !jobs.is_empty() || now >= deadline {
            return Ok(Json(JobList { jobs }));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

async fn post_status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer<Ack> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let cluster = state.authenticate(&headers).await?;
    let report: JobStatusReport = parse_json(&bytes)?;
    let job = id.clone();
    let outcome = state
        .db(move |s| s.report_status(&cluster.id, &job, &report))
        .await?;
    match outcome {
        StatusOutcome::Recorded | StatusOutcome::Unchanged => Ok(Json(Ack {})),
        StatusOutcome::NotFound => Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no job {id:?} for this cluster"),
        )),
        StatusOutcome::Conflict { state } => Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!("job {id:?} is already {state}"),
        )),
    }
}

async fn post_heartbeat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Answer<HeartbeatAck> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let cluster = state.authenticate(&headers).await?;
    let heartbeat: Heartbeat = parse_json(&bytes)?;
    if heartbeat.cluster_id != cluster.id {
        return Err(
            ApiFailure::bad_request("cluster_id is not the token's cluster").with_details(
                BTreeMap::from([(
                    "cluster_id".to_owned(),
                    format!("{:?} is not the token's cluster", heartbeat.cluster_id),
                )]),
            ),
        );
    }
    state
        .db(move |s| s.record_heartbeat(&cluster.id, &heartbeat))
        .await?;
    Ok(Json(HeartbeatAck {
        server_time: crate::store::now_seconds(),
    }))
}

async fn timeline_json(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(org): Path<String>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let query = parse_query(query)?;
    state.authorize_admin(&headers, query.get("admin_token").map(String::as_str), peer)?;
    let limit = number::<u32>(&query, "limit")?
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, MAX_TIMELINE_LIMIT);
    let pick = |name: &str| query.get(name).filter(|v| !v.is_empty()).cloned();
    let filter = TimelineFilter {
        cluster: pick("cluster"),
        namespace: pick("namespace"),
        application: pick("application"),
        operation: pick("operation"),
        kind: pick("kind"),
    };
    let org_id = org.clone();
    let events = state
        .db(move |s| {
            if !s.org_exists(&org_id)? {
                return Ok(None);
            }
            s.timeline(&org_id, &filter, limit).map(Some)
        })
        .await?
        .ok_or_else(|| ApiFailure::new(StatusCode::NOT_FOUND, format!("no org {org:?}")))?;
    let mut response = Json(serde_json::json!({ "org_id": org, "events": events })).into_response();
    // The page polls this every second; a cached answer would freeze it.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

async fn timeline_page(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Html<&'static str>, ApiFailure> {
    let query = parse_query(query)?;
    state.authorize_admin(&headers, query.get("admin_token").map(String::as_str), peer)?;
    Ok(Html(crate::page::TIMELINE_HTML))
}

async fn add_fault(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<FaultSpec>>, ApiFailure> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    state.authorize_admin(&headers, None, peer)?;
    let spec: FaultSpec = parse_json(&bytes)?;
    spec.validate().map_err(ApiFailure::bad_request)?;
    tracing::info!(?spec, "fault set");
    state.faults.add(spec);
    Ok(Json(state.faults.list()))
}

async fn list_faults(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Vec<FaultSpec>>, ApiFailure> {
    state.authorize_admin(&headers, None, peer)?;
    Ok(Json(state.faults.list()))
}

async fn clear_faults(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Vec<FaultSpec>>, ApiFailure> {
    state.authorize_admin(&headers, None, peer)?;
    state.faults.clear();
    tracing::info!("faults cleared");
    Ok(Json(Vec::new()))
}

async fn get_stats(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    state.authorize_admin(&headers, None, peer)?;
    Ok(Json(serde_json::json!({
        "requests": state.faults.stats(),
        "in_flight": state.faults.in_flight(),
    })))
}

async fn reset_stats(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    state.authorize_admin(&headers, None, peer)?;
    state.faults.reset_stats();
    Ok(Json(
        serde_json::json!({ "requests": {}, "in_flight": state.faults.in_flight() }),
    ))
}

async fn list_clusters(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    state.authorize_admin(&headers, None, peer)?;
    let clusters = state.db(|s| s.clusters()).await?;
    Ok(Json(serde_json::json!({ "clusters": clusters })))
}

/// The error hyper gets from a `refuse` fault: it closes the connection unanswered.
#[derive(Debug, thiserror::Error)]
#[error("connection refused by a fault switch")]
struct Refused;

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    router: Router,
    state: Arc<AppState>,
) -> Result<Response, Refused> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let route = route_of(&path);
    let _in_flight = state.faults.begin(&method, &route);
    let verdict = state.faults.verdict(&path);
    if !verdict.delay.is_zero() {
        tokio::time::sleep(verdict.delay).await;
    }
    let response = match verdict.outcome {
        Some(Injected::Refuse) => {
            state.faults.count(&method, &route, "refused");
            return Err(Refused);
        }
        Some(Injected::Status {
            status,
            retry_after,
        }) => {
            // Read the body first (bounded, as always), so the client reads the answer
            // rather than a reset.
            let _ = read_body(Body::new(req.into_body()), state.max_body_bytes).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            ApiFailure {
                retry_after,
                ..ApiFailure::new(status, "injected by a fault switch")
            }
            .into_response()
        }
        None => {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router;
            match tower::Service::call(&mut router, req).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    };
    state
        .faults
        .count(&method, &route, response.status().as_str());
    tracing::debug!(%method, %route, status = response.status().as_u16(), "request");
    Ok(response)
}

/// Accepts connections until `shutdown` turns true, then drops every connection (a
/// waiting long-poll included: its agent simply polls again).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = router(Arc::clone(&state));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let router = router.clone();
                    let state = Arc::clone(&state);
                    connections.spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let service = hyper::service::service_fn(move |req| {
                            handle(req, peer, router.clone(), Arc::clone(&state))
                        });
                        if let Err(err) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(error = %err, "connection ended");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
