//! Real HTTP requests against the servers on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::metrics::{Controller, ReconcileMetrics, ReconcileResult};

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.0 GET: the server closes the connection after the response.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body: body.to_owned(),
    }
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server stops on shutdown")
            .expect("server task joined");
        result.expect("server exited cleanly");
    }
}

async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

async fn start_health(health: &Health) -> Running {
    let (listener, addr) = loopback().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(health.serve_on(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

#[tokio::test]
async fn liveness_is_independent_of_readiness() {
    let health = Health::new();
    let crds = health.readiness_handle("crds");
    crds.set_failing("CRD operations.vworkspace.io not established");
    let server = start_health(&health).await;

    for path in ["/healthz", "/livez"] {
        let reply = get(server.addr, path).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "{path}");
    }
    assert_eq!(get(server.addr, "/readyz").await.status, 503);
    server.stop().await;
}

#[tokio::test]
async fn readyz_names_each_failed_check_and_why() {
    let health = Health::new();
    let crds = health.readiness_handle("crds");
    let rbac = health.readiness_handle("rbac");
    let informers = health.readiness_handle("informers");
    let controlplane = health.readiness_handle("controlplane");
    rbac.set_ok();
    informers.set_ok();
    crds.set_failing("CRD operations.vworkspace.io not established");
    let server = start_health(&health).await;

    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.content_type.starts_with("application/json"),
        "{}",
        reply.content_type
    );
    assert_eq!(
        reply.json(),
        json!({
            "status": "failed",
            "checks": [
                {"name": "crds", "ok": false, "reason": "CRD operations.vworkspace.io not established"},
                {"name": "rbac", "ok": true},
                {"name": "informers", "ok": true},
                {"name": "controlplane", "ok": false, "reason": NOT_YET_REPORTED},
            ]
        })
    );

    crds.set_ok();
    controlplane.set_ok();
    let reply = get(server.addr, "/readyz").await;
    assert_eq!(
        (reply.status, reply.json()),
        (200, json!({"status": "ok", "checks": []}))
    );

    let reply = get(server.addr, "/readyz?verbose").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["checks"].as_array().map(Vec::len), Some(4));

    controlplane.set_failing("GET /api/agent/jobs: connection refused");
    let reply = get(server.addr, "/readyz/controlplane").await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            503,
            json!({"status": "failed", "checks": [
                {"name": "controlplane", "ok": false, "reason": "GET /api/agent/jobs: connection refused"}
            ]})
        )
    );
    let reply = get(server.addr, "/readyz/crds").await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            200,
            json!({"status": "ok", "checks": [{"name": "crds", "ok": true}]})
        )
    );
    let reply = get(server.addr, "/readyz/etcd").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"], "no readiness check named \"etcd\"");
    server.stop().await;
}

#[tokio::test]
async fn exclude_skips_checks_like_kube_apiserver() {
    let health = Health::new();
    health.readiness_handle("crds").set_ok();
    health
        .readiness_handle("controlplane")
        .set_failing("control plane unreachable");
    health
        .readiness_handle("informers")
        .set_failing("not synced");
    health.readiness_handle("rbac").set_ok();
    let server = start_health(&health).await;

    let reply = get(server.addr, "/readyz?exclude=controlplane").await;
    assert_eq!(reply.status, 503, "informers still fails: {}", reply.body);

    let reply = get(
        server.addr,
        "/readyz?exclude=controlplane&exclude=informers&verbose",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "checks": [
            {"name": "crds", "ok": true},
            {"name": "controlplane", "ok": true, "excluded": true},
            {"name": "informers", "ok": true, "excluded": true},
            {"name": "rbac", "ok": true},
        ]})
    );

    let reply = get(
        server.addr,
        "/readyz?exclude=controlplane&exclude=informers&exclude=etcd",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["warnings"],
        json!(["cannot exclude \"etcd\": no such readiness check"])
    );
    server.stop().await;
}

#[tokio::test]
async fn async_checks_time_out_and_panics_fail() {
    let health = Health::new().with_check_timeout(Duration::from_millis(100));
    health.add_readiness_check("fast", || async { Ok(()) });
    health.add_readiness_check("broken", || async { Err("leader lease lost".to_owned()) });
    health.add_readiness_check("slow", || async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    });
    health.add_readiness_check("panics", || async {
        let checks: Vec<Result<(), String>> = Vec::new();
        checks
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("bug in check"))
    });

    let report = health.readiness(&[]).await;
    assert!(!report.is_ready());
    let by_name = |n: &str| {
        report
            .checks
            .iter()
            .find(|c| c.name == n)
            .cloned()
            .unwrap_or_else(|| panic!("no {n}"))
    };
    assert!(by_name("fast").ok);
    assert_eq!(
        by_name("broken").reason.as_deref(),
        Some("leader lease lost")
    );
    assert_eq!(
        by_name("slow").reason.as_deref(),
        Some("check timed out after 100ms")
    );
    assert_eq!(by_name("panics").reason.as_deref(), Some("check panicked"));
    let order: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(order, ["fast", "broken", "slow", "panics"]);

    // Re-adding a name replaces the check.
    health.add_readiness_check("broken", || async { Ok(()) });
    let report = health.readiness(&["slow", "panics"]).await;
    assert!(report.is_ready(), "{report:?}");
}

#[tokio::test]
async fn metrics_are_served_while_unready() {
    let mut registry = Registry::default();
    let metrics = ReconcileMetrics::register(&mut registry);
    metrics.record_reconcile(
        Controller::Cluster,
        ReconcileResult::Success,
        Duration::from_millis(7),
    );
    let registry = Arc::new(registry);

    let health = Health::new();
    health.readiness_handle("crds");
    let probes = start_health(&health).await;

    let (listener, addr) = loopback().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_metrics_on(listener, registry, async move {
        let _ = stopped.await;
    }));
    let metrics_server = Running {
        addr,
        stop: Some(stop),
        task,
    };

    assert_eq!(get(probes.addr, "/readyz").await.status, 503);
    let reply = get(metrics_server.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        reply.body.lines().any(|l| l
            == "vworkspace_operator_reconcile_total{controller=\"cluster\",result=\"success\"} 1"),
        "{}",
        reply.body
    );
    assert_eq!(get(metrics_server.addr, "/readyz").await.status, 404);
    metrics_server.stop().await;
    probes.stop().await;
}

#[tokio::test]
async fn disabled_servers_return_immediately() {
    let registry = Arc::new(Registry::default());
    tokio::time::timeout(Duration::from_secs(1), async {
        serve_metrics(BindAddress::Disabled, registry, std::future::pending())
            .await
            .expect("disabled is not an error");
        Health::new()
            .serve(BindAddress::Disabled, std::future::pending())
            .await
            .expect("disabled is not an error");
    })
    .await
    .expect("returns at once");
}

#[tokio::test]
async fn serve_reports_bind_errors() {
    let (_held, addr) = loopback().await;
    let taken: BindAddress = addr.to_string().parse().expect("valid address");
    let error = Health::new()
        .serve(taken, std::future::ready(()))
        .await
        .expect_err("port is taken");
    assert!(matches!(error, ServeError::Bind { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot listen on {addr}"))
    );
}
