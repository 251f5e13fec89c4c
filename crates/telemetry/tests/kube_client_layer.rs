//! The rest-client metrics layer inside a real `kube::Client`, against a loopback
//! HTTP server standing in for the API server.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use vworkspace_telemetry::metrics::{RestClientMetrics, encode};

async fn fake_api_server() -> String {
    let app = Router::new()
        .route(
            "/version",
            get(|| async { r#"{"major":"1","minor":"36"}"# }),
        )
        .route(
            "/api/v1/namespaces/default/events",
            post(|| async { (StatusCode::CREATED, "{}") }),
        );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn client_for(url: &str, metrics: &RestClientMetrics) -> kube::Client {
    let mut config = kube::Config::new(url.parse().expect("valid URL"));
    config.connect_timeout = Some(Duration::from_secs(2));
    let layer = metrics.layer(&config.cluster_url);
    kube::client::ClientBuilder::try_from(config)
        .expect("client builder")
        .with_layer(&layer)
        .build()
}

fn request(method: &str, path: &str) -> http::Request<Vec<u8>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(Vec::new())
        .expect("request")
}

#[tokio::test]
async fn counts_requests_made_through_a_kube_client() {
    let url = fake_api_server().await;
    let host = url.trim_start_matches("http://").to_owned();
    let mut registry = Registry::default();
    let metrics = RestClientMetrics::register(&mut registry);
    let client = client_for(&url, &metrics);

    client
        .request_text(request("GET", "/version"))
        .await
        .expect("GET /version");
    client
        .request_text(request("GET", "/version"))
        .await
        .expect("GET /version");
    client
        .request_text(request("POST", "/api/v1/namespaces/default/events"))
        .await
        .expect("POST event");
    client
        .request_text(request("GET", "/apis/velero.io/v1"))
        .await
        .expect_err("404 is an API error");

    // Nothing listens on port 9 of loopback: a transport error.
    let unreachable = client_for("http://127.0.0.1:9", &metrics);
    unreachable
        .request_text(request("GET", "/version"))
        .await
        .expect_err("connection refused");

    let text = encode(&registry);
    for line in [
        format!("rest_client_requests_total{{code=\"200\",host=\"{host}\",method=\"GET\"}} 2"),
        format!("rest_client_requests_total{{code=\"201\",host=\"{host}\",method=\"POST\"}} 1"),
        format!("rest_client_requests_total{{code=\"404\",host=\"{host}\",method=\"GET\"}} 1"),
        "rest_client_requests_total{code=\"<error>\",host=\"127.0.0.1:9\",method=\"GET\"} 1"
            .to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
}
