//! `rest_client_requests_total{code,host,method}` and the tower layer that records it
//! around a kube client's HTTP service.
//!
//! Invariants, mirroring client-go's `RequestResult` metric:
//! - one increment per request whose response (or transport error) has arrived:
//!   `code` is the numeric status as a string, or `<error>` when the inner service
//!   failed without a response; a request future dropped before completion is not
//!   counted;
//! - `method` is the uppercase HTTP method (`GET`, `POST`, `PATCH`, …);
//! - `host` is `host:port` of the API server (the port is made explicit from the
//!   scheme when the URL omits it), never a path, so cardinality stays tiny.
//!
//! The series appear at the first request (as in client-go): there is no meaningful
//! zero-initialisation for status codes.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum CodeLabel {
    Status(u16),
    TransportError,
}

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            CodeLabel::Status(code) => write!(encoder, "{code}"),
            // client-go's spelling for "no response": dashboards filter on it.
            CodeLabel::TransportError => encoder.write_str("<error>"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct MethodLabel(Method);

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        // `http::Method` standard methods are already uppercase; extension methods
        // are case-sensitive tokens, uppercased here to match client-go's verbs.
        let method = self.0.as_str();
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            encoder.write_str(&method.to_ascii_uppercase())
        } else {
            encoder.write_str(method)
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    code: CodeLabel,
    host: Arc<str>,
    method: MethodLabel,
}

/// Handle to `rest_client_requests_total`.
#[derive(Clone, Debug)]
pub struct RestClientMetrics {
    requests_total: Family<RequestLabels, Counter>,
    /// Counts 403 answers, for whoever wants to re-check permissions when one comes.
    forbidden: Arc<tokio::sync::watch::Sender<u64>>,
}

impl RestClientMetrics {
    /// Registers `rest_client_requests_total` into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RestClientMetrics {
            requests_total: Family::default(),
            forbidden: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        registry.register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host",
            metrics.requests_total.clone(),
        );
        metrics
    }

    /// A layer recording every request sent through it against `api_server`
    /// (`kube::Config::cluster_url`).
    pub fn layer(&self, api_server: &Uri) -> RestClientMetricsLayer {
        RestClientMetricsLayer::new(self.clone(), api_server)
    }

    #[cfg(test)]
    pub(super) fn record_status(&self, status: u16, method: Method, host: &str) {
        self.record(CodeLabel::Status(status), method, Arc::from(host));
    }

    /// Changes (counts up) on every 403 answer the client gets: the operator's RBAC
    /// readiness check runs again when it does.
    pub fn forbidden(&self) -> tokio::sync::watch::Receiver<u64> {
        self.forbidden.subscribe()
    }

    fn record(&self, code: CodeLabel, method: Method, host: Arc<str>) {
        if matches!(code, CodeLabel::Status(403)) {
            self.forbidden.send_modify(|n| *n += 1);
        }
        self.requests_total
            .get_or_create(&RequestLabels {
                code,
                host,
                method: MethodLabel(method),
            })
            .inc();
    }
}

/// `host:port` of an authority, with the scheme's default port when it is omitted.
fn host_port(authority: &Authority, scheme: Option<&Scheme>) -> String {
    let port = authority.port_u16().unwrap_or_else(|| {
        if scheme == Some(&Scheme::HTTP) {
            80
        } else {
            // The API server is HTTPS unless explicitly told otherwise.
            443
        }
    });
    format!("{}:{port}", authority.host())
}

/// A [`tower::Layer`] that counts requests in `rest_client_requests_total`.
///
/// Insert it with `kube::client::ClientBuilder::with_layer`. kube's own stack sets the
/// API server's base URI *inside* the builder's service, so the requests this layer
/// sees carry only a path; the host label therefore comes from the URL given at
/// construction, and an absolute request URI (if the layer is placed elsewhere)
/// takes precedence.
#[derive(Clone, Debug)]
pub struct RestClientMetricsLayer {
    metrics: RestClientMetrics,
    host: Arc<str>,
}

impl RestClientMetricsLayer {
    /// A layer labelling requests with `api_server`'s `host:port`.
    pub fn new(metrics: RestClientMetrics, api_server: &Uri) -> Self {
        let host = match api_server.authority() {
            Some(authority) => host_port(authority, api_server.scheme()),
            // A URL without authority cannot reach any server; keep the label
            // non-empty so the series is still recognisable.
            None => "<unknown>".to_owned(),
        };
        RestClientMetricsLayer {
            metrics,
            host: Arc::from(host),
        }
    }

    /// The `host` label value this layer records.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl<S> Layer<S> for RestClientMetricsLayer {
    type Service = RestClientMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RestClientMetricsService {
            inner,
            metrics: self.metrics.clone(),
            host: self.host.clone(),
        }
    }
}

/// The service produced by [`RestClientMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RestClientMetricsService<S> {
    inner: S,
    metrics: RestClientMetrics,
    host: Arc<str>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RestClientMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RestClientResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let host = match request.uri().authority() {
            Some(authority) => Arc::from(host_port(authority, request.uri().scheme())),
            None => self.host.clone(),
        };
        let pending = PendingRecord {
            metrics: self.metrics.clone(),
            method: request.method().clone(),
            host,
        };
        RestClientResponseFuture {
            // Boxed so the future is `Unpin` without pin projection (the crate forbids
            // `unsafe`); one allocation per API request is negligible next to the I/O.
            inner: Box::pin(self.inner.call(request)),
            pending: Some(pending),
        }
    }
}

#[derive(Debug)]
struct PendingRecord {
    metrics: RestClientMetrics,
    method: Method,
    host: Arc<str>,
}

/// Response future of [`RestClientMetricsService`]: records the outcome once.
pub struct RestClientResponseFuture<F> {
    inner: Pin<Box<F>>,
    pending: Option<PendingRecord>,
}

impl<F> std::fmt::Debug for RestClientResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClientResponseFuture")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for RestClientResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let output = ready!(this.inner.as_mut().poll(cx));
        if let Some(pending) = this.pending.take() {
            let code = match &output {
                Ok(response) => CodeLabel::Status(response.status().as_u16()),
                Err(_) => CodeLabel::TransportError,
            };
            pending.metrics.record(code, pending.method, pending.host);
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Ready, ready};

    use super::*;

    /// A fake API server: answers every request with `status`, or fails like a
    /// refused connection.
    #[derive(Clone)]
    struct Fake(Option<u16>);

    impl Service<Request<()>> for Fake {
        type Response = Response<()>;
        type Error = std::io::Error;
        type Future = Ready<Result<Response<()>, std::io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            ready(match self.0 {
                Some(status) => Response::builder()
                    .status(status)
                    .body(())
                    .map_err(std::io::Error::other),
                None => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            })
        }
    }

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("test request")
    }

    #[tokio::test]
    async fn layer_counts_status_codes_and_transport_errors() {
        let mut registry = Registry::default();
        let metrics = RestClientMetrics::register(&mut registry);
        let api: Uri = "https://10.96.0.1:443".parse().expect("test URL");
        let layer = metrics.layer(&api);

        let mut ok = layer.layer(Fake(Some(201)));
        let mut missing = layer.layer(Fake(Some(404)));
        let mut down = layer.layer(Fake(None));
        ok.call(request(Method::POST, "/api/v1/namespaces/x/events"))
            .await
            .expect("201");
        ok.call(request(Method::POST, "/api/v1/namespaces/x/events"))
            .await
            .expect("201");
        missing
            .call(request(Method::GET, "/apis/velero.io/v1"))
            .await
            .expect("404 is a response");
        down.call(request(Method::PATCH, "/api/v1/namespaces/x"))
            .await
            .expect_err("transport error");
        // An absolute URI names its own host.
        missing
            .call(request(Method::DELETE, "http://127.0.0.1:8001/api"))
            .await
            .expect("404 is a response");

        let text = crate::metrics::encode(&registry);
        for line in [
            "rest_client_requests_total{code=\"201\",host=\"10.96.0.1:443\",method=\"POST\"} 2",
            "rest_client_requests_total{code=\"404\",host=\"10.96.0.1:443\",method=\"GET\"} 1",
            "rest_client_requests_total{code=\"<error>\",host=\"10.96.0.1:443\",method=\"PATCH\"} 1",
            "rest_client_requests_total{code=\"404\",host=\"127.0.0.1:8001\",method=\"DELETE\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn host_label_always_has_a_port() {
        let layer = |url: &str| {
            let mut registry = Registry::default();
            let uri: Uri = url.parse().expect("test URL");
            RestClientMetrics::register(&mut registry)
                .layer(&uri)
                .host()
                .to_owned()
        };
        assert_eq!(layer("https://10.96.0.1:443"), "10.96.0.1:443");
        assert_eq!(
            layer("https://kubernetes.default.svc"),
            "kubernetes.default.svc:443"
        );
        assert_eq!(layer("http://127.0.0.1"), "127.0.0.1:80");
        assert_eq!(layer("https://[::1]:6443/"), "[::1]:6443");
    }
}
