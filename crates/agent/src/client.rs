//! The agent API client: one reqwest client, a base URL, a bearer token, and a typed error
//! for every answer that is not a success.
//!
//! Invariants:
//! * the token is reachable only through [`Token::expose`], which is private to this crate;
//!   `Debug` and `Display` of [`Token`], [`HttpClient`] and every [`LinkError`] print no
//!   token, and the `Authorization` header is marked sensitive so hyper never logs it;
//! * a [`LinkError`] is bounded: at most [`MAX_ERROR_BODY`] bytes of an error answer are
//!   read, and the texts kept from it are cut to [`MAX_ERROR_TEXT`] characters, so a
//!   misbehaving server cannot blow up a log line or a condition message;
//! * every round-trip (events, jobs, status reports, heartbeats) is reported to the
//!   [`ConnectivityHandle`] the client was given, so connectivity follows whatever traffic
//!   there is; the mapping from an outcome to a connectivity input is
//!   [`LinkError::connectivity`];
//! * the client never installs a TLS provider behind the binary's back unless none is
//!   installed yet: the operator installs ring at start-up (DESIGN §6); tests and tools
//!   that build a client first get ring here, never a second provider.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vworkspace_api::AuditEvent;
use vworkspace_api::agent_api::{
    Ack, ApiError, EVENTS_PATH, EventsAccepted, HEARTBEAT_PATH, Heartbeat, HeartbeatAck, JOBS_PATH,
    JobList, JobStatusReport,
};
use vworkspace_telemetry::SecretString;

use crate::connectivity::{ConnectivityHandle, FailureKind};

/// At most this many bytes of an error answer are read.
pub const MAX_ERROR_BODY: usize = 16 * 1024;
/// Texts taken from an error answer are cut to this many characters.
pub const MAX_ERROR_TEXT: usize = 512;
/// Longest `Retry-After` honoured; a larger value is capped (a broken header must not
/// park the stream for a day).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// `Retry-After` assumed when a 429 carries none (or one in the HTTP-date form).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The bearer token: printed as `[REDACTED]`, never serialised.
#[derive(Clone)]
pub struct Token(SecretString);

impl Token {
    /// Wraps a token read from the credentials Secret (surrounding whitespace, such as a
    /// trailing newline from `kubectl create secret --from-file`, is dropped).
    pub fn new(token: impl Into<String>) -> Self {
        let token: String = token.into();
        Token(SecretString::new(token.trim().to_owned()))
    }

    pub(crate) fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", vworkspace_telemetry::REDACTED)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(vworkspace_telemetry::REDACTED)
    }
}

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Base URL of the agent API, e.g. `https://vworkspace.example.com` (`Cluster.spec.controlPlane.url`).
    pub base_url: String,
    /// The bearer token.
    pub token: Token,
    /// Per-request timeout (a long-poll gets its wait on top).
    pub timeout: Duration,
    /// PEM CA certificates trusted in addition to the system roots.
    pub ca_bundle_pem: Option<String>,
}

/// Why a client could not be built. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// The base URL does not parse or is not http(s).
    #[error("invalid control-plane URL: {0}")]
    InvalidUrl(String),
    /// The token holds characters an HTTP header cannot carry.
    #[error("the bearer token contains characters an HTTP header cannot carry")]
    InvalidToken,
    /// The CA bundle is not PEM.
    #[error("invalid CA bundle: {0}")]
    InvalidCaBundle(String),
    /// reqwest refused the configuration.
    #[error("building the HTTP client failed: {0}")]
    Build(String),
}

/// Why a round-trip with the control plane failed.
///
/// `Display` is bounded and never contains the token; [`LinkError::category`] is the
/// stable label for logs and conditions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    /// 401: the control plane does not know the token.
    #[error("the control plane refused the credential (401)")]
    Unauthorized,
    /// 413: the body is too large.
    #[error("the control plane refused the request as too large (413)")]
    PayloadTooLarge,
    /// 429: wait before sending again.
    #[error("rate limited by the control plane (429); retry after {}s", retry_after.as_secs())]
    RateLimited {
        /// From `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Duration,
    },
    /// 400: the control plane refused the content.
    #[error("the control plane refused the request (400 {}): {}", .0.error, .0.message)]
    BadRequest(ApiError),
    /// Another 4xx (404 unknown job, 409 conflicting status, ...).
    #[error("the control plane refused the request ({status} {}): {}", error.error, error.message)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body (or a stand-in when it was not an [`ApiError`]).
        error: ApiError,
    },
    /// 5xx (or any status this client does not expect).
    #[error("the control plane answered {0}")]
    Server(u16),
    /// No answer: DNS, connect, TLS, timeout, reset.
    #[error("could not reach the control plane: {0}")]
    Network(String),
    /// A success status with a body that is not the expected JSON.
    #[error("could not decode the control plane's answer: {0}")]
    Decode(String),
}

impl LinkError {
    /// Stable machine-readable name of the failure.
    pub fn category(&self) -> &'static str {
        match self {
            LinkError::Unauthorized => "unauthorized",
            LinkError::PayloadTooLarge => "payload_too_large",
            LinkError::RateLimited { .. } => "rate_limited",
            LinkError::BadRequest(_) => "bad_request",
            LinkError::Refused { .. } => "refused",
            LinkError::Server(_) => "server",
            LinkError::Network(_) => "network",
            LinkError::Decode(_) => "decode",
        }
    }

    /// What this outcome tells connectivity: `None` when the control plane answered
    /// deliberately (a 4xx other than 401 proves it is reachable and knows us, so it counts
    /// as a successful round-trip), otherwise the kind of failure.
    pub fn connectivity(&self) -> Option<FailureKind> {
        match self {
            LinkError::Unauthorized => Some(FailureKind::Unauthorized),
            LinkError::Server(_) | LinkError::Network(_) | LinkError::Decode(_) => {
                Some(FailureKind::Network)
            }
            LinkError::PayloadTooLarge
            | LinkError::RateLimited { .. }
            | LinkError::BadRequest(_)
            | LinkError::Refused { .. } => None,
        }
    }

    /// True when sending the same request again later may succeed without any change
    /// (5xx, network, 429, decode).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LinkError::Server(_)
                | LinkError::Network(_)
                | LinkError::Decode(_)
                | LinkError::RateLimited { .. }
        )
    }
}

/// Cuts `text` to [`MAX_ERROR_TEXT`] characters (on a char boundary), marking the cut.
pub(crate) fn bounded(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Maps a non-success answer to a [`LinkError`]: pure, so every status is table-tested.
/// `body` is at most [`MAX_ERROR_BODY`] bytes of the answer.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> LinkError {
    let api_error = || -> ApiError {
        match serde_json::from_slice::<ApiError>(body) {
            Ok(e) => ApiError {
                error: bounded(&e.error),
                message: bounded(&e.message),
                details: e
                    .details
                    .into_iter()
                    .take(16)
                    .map(|(k, v)| (bounded(&k), bounded(&v)))
                    .collect(),
            },
            Err(_) => ApiError {
                error: format!("http_{status}"),
                message: bounded(&String::from_utf8_lossy(body)),
                details: Default::default(),
            },
        }
    };
    match status {
        401 => LinkError::Unauthorized,
        413 => LinkError::PayloadTooLarge,
        429 => LinkError::RateLimited {
            retry_after: retry_after(headers),
        },
        400 => LinkError::BadRequest(api_error()),
        402..=499 => LinkError::Refused {
            status,
            error: api_error(),
        },
        _ => LinkError::Server(status),
    }
}

/// `Retry-After` in seconds, capped; [`DEFAULT_RETRY_AFTER`] when absent or not a number.
pub fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, |s| {
            Duration::from_secs(s).min(MAX_RETRY_AFTER)
        })
}

fn network_error(error: &reqwest::Error) -> LinkError {
    // reqwest's Display names only the outermost layer; the cause (refused, TLS, DNS)
    // is what a person needs. The URL carries no secret (the token is a header).
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    LinkError::Network(bounded(&text))
}

/// The HTTP implementation of the agent API (Pull mode).
///
/// Cloning is cheap and shares the connection pool, the token and the connectivity handle.
#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Arc<RwLock<Token>>,
    timeout: Duration,
    connectivity: Option<ConnectivityHandle>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("base", &self.base.as_str())
            .field("token", &vworkspace_telemetry::REDACTED)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    /// Builds the client. The TLS roots are the system's plus `ca_bundle_pem`.
    pub fn new(config: HttpConfig) -> Result<Self, ClientBuildError> {
        let base = reqwest::Url::parse(&config.base_url)
            .map_err(|e| ClientBuildError::InvalidUrl(format!("{}: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientBuildError::InvalidUrl(format!(
                "{}: expected an http(s) URL",
                config.base_url
            )));
        }
        bearer(&config.token)?;
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race against another installer is fine: one provider is in place.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect would carry the bearer token wherever it points; the agent API
            // never redirects, so a 3xx is an error (`Server`), not something to follow.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vworkspace-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_bundle_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ClientBuildError::InvalidCaBundle(bounded(&e.to_string())))?;
            if certs.is_empty() {
                return Err(ClientBuildError::InvalidCaBundle(
                    "no certificate in the bundle".to_owned(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ClientBuildError::Build(bounded(&e.to_string())))?;
        Ok(HttpClient {
            http,
            base,
            token: Arc::new(RwLock::new(config.token)),
            timeout: config.timeout,
            connectivity: None,
        })
    }

    /// Reports every round-trip of this client (and its clones made afterwards) to `handle`.
    pub fn with_connectivity(mut self, handle: ConnectivityHandle) -> Self {
        self.connectivity = Some(handle);
        self
    }

    /// Replaces the token (credential rotation); requests already under way keep the old one.
    pub fn set_token(&self, token: Token) -> Result<(), ClientBuildError> {
        bearer(&token)?;
        match self.token.write() {
            Ok(mut guard) => *guard = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
        Ok(())
    }

    /// `POST /api/agent/events`.
    pub async fn post_events(&self, events: &[AuditEvent]) -> Result<EventsAccepted, LinkError> {
        // `EventBatch`'s wire shape, serialised from the slice without cloning the events.
        #[derive(Serialize)]
        struct Body<'a> {
            events: &'a [AuditEvent],
        }
        self.send(
            reqwest::Method::POST,
            self.url(&[EVENTS_PATH]),
            Some(&Body { events }),
            &[],
            Duration::ZERO,
        )
        .await
    }

    /// `GET /api/agent/jobs?wait_seconds=..&limit=..` (long-poll).
    pub async fn fetch_jobs(&self, wait: Duration, limit: u32) -> Result<JobList, LinkError> {
        let wait_seconds = wait.as_secs().to_string();
        let limit = limit.to_string();
        self.send::<(), _>(
            reqwest::Method::GET,
            self.url(&[JOBS_PATH]),
            None,
            &[("wait_seconds", &wait_seconds), ("limit", &limit)],
            wait,
        )
        .await
    }

    /// `POST /api/agent/jobs/{id}/status`; the id is percent-encoded as one path segment.
    pub async fn report_job(&self, id: &str, report: &JobStatusReport) -> Result<Ack, LinkError> {
        let mut url = self.url(&[JOBS_PATH]);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(id).push("status");
        }
        self.send(
            reqwest::Method::POST,
            url,
            Some(report),
            &[],
            Duration::ZERO,
        )
        .await
    }

    /// `POST /api/agent/heartbeat`.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatAck, LinkError> {
        self.send(
            reqwest::Method::POST,
            self.url(&[HEARTBEAT_PATH]),
            Some(heartbeat),
            &[],
            Duration::ZERO,
        )
        .await
    }

    fn url(&self, paths: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
            for path in paths {
                for part in path.split('/').filter(|p| !p.is_empty()) {
                    segments.push(part);
                }
            }
        }
        url
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<&B>,
        query: &[(&str, &str)],
        extra_timeout: Duration,
    ) -> Result<T, LinkError> {
        let result = self
            .round_trip(method, url, body, query, extra_timeout)
            .await;
        if let Some(handle) = &self.connectivity {
            match result.as_ref().err().and_then(LinkError::connectivity) {
                None => handle.success(),
                Some(kind) => handle.failure(kind),
            }
        }
        result
    }

    async fn round_trip<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<&B>,
        query: &[(&str, &str)],
        extra_timeout: Duration,
    ) -> Result<T, LinkError> {
        let auth = {
            let token = match self.token.read() {
                Ok(guard) => guard.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            // Checked when the token was set; a failure here cannot happen, but must
            // not panic either.
            bearer(&token).map_err(|_| LinkError::Unauthorized)?
        };
        let mut url = url;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, auth)
            .timeout(self.timeout + extra_timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(|e| network_error(&e))?;
        let status = response.status();
        if status.is_success() {
            let bytes = response.bytes().await.map_err(|e| network_error(&e))?;
            return serde_json::from_slice(&bytes)
                .map_err(|e| LinkError::Decode(bounded(&e.to_string())));
        }
        let headers = response.headers().clone();
        let mut body = Vec::new();
        // Read at most MAX_ERROR_BODY bytes; an unreadable body is still a status answer.
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_ERROR_BODY - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Err(classify(status_u16(status), &headers, &body))
    }
}

fn status_u16(status: StatusCode) -> u16 {
    status.as_u16()
}

fn bearer(token: &Token) -> Result<HeaderValue, ClientBuildError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ClientBuildError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let api = br#"{"error":"bad_request","message":"event 3 has no kind","details":{"events[3].kind":"required"}}"#;
        let cases: Vec<(u16, Option<&str>, &[u8], &str)> = vec![
            (401, None, b"{}", "unauthorized"),
            (413, None, b"", "payload_too_large"),
            (429, Some("7"), b"", "rate_limited"),
            (400, None, api, "bad_request"),
            (
                404,
                None,
                br#"{"error":"not_found","message":"no job j1"}"#,
                "refused",
            ),
            (409, None, b"not json", "refused"),
            (500, None, b"boom", "server"),
            (503, None, b"", "server"),
            (302, None, b"", "server"),
        ];
        for (status, retry, body, category) in cases {
            let err = classify(status, &headers(retry), body);
            assert_eq!(err.category(), category, "{status}: {err}");
        }
        match classify(400, &headers(None), api) {
            LinkError::BadRequest(e) => {
                assert_eq!(e.error, "bad_request");
                assert_eq!(e.details["events[3].kind"], "required");
            }
            other => panic!("{other:?}"),
        }
        match classify(409, &headers(None), b"not json") {
            LinkError::Refused { status, error } => {
                assert_eq!(status, 409);
                assert_eq!(error.error, "http_409");
                assert_eq!(error.message, "not json");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_is_honoured_capped_and_defaulted() {
        assert_eq!(retry_after(&headers(Some("7"))), Duration::from_secs(7));
        assert_eq!(retry_after(&headers(Some(" 0 "))), Duration::ZERO);
        assert_eq!(retry_after(&headers(Some("86400"))), MAX_RETRY_AFTER);
        assert_eq!(
            retry_after(&headers(Some("Wed, 21 Oct 2026 07:28:00 GMT"))),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(retry_after(&headers(None)), DEFAULT_RETRY_AFTER);
    }

    #[test]
    fn error_texts_are_bounded() {
        let huge = format!(
            r#"{{"error":"bad_request","message":"{}"}}"#,
            "é".repeat(10_000)
        );
        let err = classify(400, &headers(None), huge.as_bytes());
        assert!(
            err.to_string().len() < 2 * MAX_ERROR_TEXT + 100,
            "{}",
            err.to_string().len()
        );
        let raw = classify(404, &headers(None), "x".repeat(MAX_ERROR_BODY).as_bytes());
        assert!(raw.to_string().len() < MAX_ERROR_TEXT + 100);
    }

    #[test]
    fn connectivity_counts_deliberate_answers_as_reachable() {
        assert_eq!(
            LinkError::Unauthorized.connectivity(),
            Some(FailureKind::Unauthorized)
        );
        assert_eq!(
            LinkError::Server(502).connectivity(),
            Some(FailureKind::Network)
        );
        assert_eq!(
            LinkError::Network("refused".into()).connectivity(),
            Some(FailureKind::Network)
        );
        assert_eq!(LinkError::PayloadTooLarge.connectivity(), None);
        assert_eq!(
            LinkError::RateLimited {
                retry_after: Duration::from_secs(1)
            }
            .connectivity(),
            None
        );
    }

    const CANARY: &str = "canary-token-5f1e9d";

    #[test]
    fn the_token_never_prints() {
        let token = Token::new(format!("{CANARY}\n"));
        assert_eq!(token.expose(), CANARY);
        assert!(!format!("{token:?} {token}").contains(CANARY));
        let client = HttpClient::new(HttpConfig {
            base_url: "http://127.0.0.1:9/base/".into(),
            token: token.clone(),
            timeout: Duration::from_secs(1),
            ca_bundle_pem: None,
        })
        .unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains(CANARY), "{debug}");
        assert_eq!(
            client.url(&[JOBS_PATH]).as_str(),
            "http://127.0.0.1:9/base/api/agent/jobs"
        );
        let bad = HttpClient::new(HttpConfig {
            base_url: "http://127.0.0.1:9".into(),
            token: Token::new(format!("{CANARY}\u{7}x")),
            timeout: Duration::from_secs(1),
            ca_bundle_pem: None,
        })
        .unwrap_err();
        assert!(!bad.to_string().contains(CANARY));
        assert!(!format!("{bad:?}").contains(CANARY));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_bounded_network_error_without_the_token() {
        // Port 9 (discard) on loopback: nothing listens there, so connect fails at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = HttpClient::new(HttpConfig {
            base_url: format!("http://127.0.0.1:{port}"),
            token: Token::new(CANARY),
            timeout: Duration::from_secs(2),
            ca_bundle_pem: None,
        })
        .unwrap();
        let err = client
            .report_job(
                "a/b",
                &JobStatusReport {
                    state: vworkspace_api::agent_api::JobState::Applied,
                    message: String::new(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.category(), "network", "{err}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(CANARY), "{text}");
        // The id is one percent-encoded segment, never a path of its own.
        assert!(
            text.contains("a%2Fb/status") || !text.contains("a/b/status"),
            "{text}"
        );
    }

    #[test]
    fn ca_bundles_must_hold_a_certificate() {
        let err = HttpClient::new(HttpConfig {
            base_url: "https://cp.example".into(),
            token: Token::new("t"),
            timeout: Duration::from_secs(1),
            ca_bundle_pem: Some("not pem".into()),
        })
        .unwrap_err();
        assert!(matches!(err, ClientBuildError::InvalidCaBundle(_)), "{err}");
    }
}
