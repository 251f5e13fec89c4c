//! Shared helpers of the control plane's tests: a server in-process on 127.0.0.1:0 with
//! a database in a fresh temporary directory, an org and a cluster, and an HTTP client.
#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vworkspace_api::AuditEvent;
use vworkspace_controlplane::{Config, Running, Store};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            &vworkspace_controlplane::token::generate()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const ORG: &str = "acme";
pub const CLUSTER: &str = "cluster-a";

/// A running server with org `acme` and cluster `cluster-a`.
pub struct Server {
    pub running: Running,
    pub token: String,
    pub dir: TempDir,
    pub http: reqwest::Client,
}

pub fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own (the workspace keeps ring
    // as the only one); plain HTTP needs none, but building the client checks for it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        let dir = TempDir::new("vwcp-test");
        let db = dir.path().join("cp.db");
        let token = {
            let store = Store::open(&db).unwrap();
            store.create_org(ORG).unwrap();
            store.create_cluster(ORG, CLUSTER).unwrap()
        };
        let mut config = Config::new(&db, SocketAddr::from(([127, 0, 0, 1], 0)));
        tune(&mut config);
        let running = vworkspace_controlplane::serve(config).await.unwrap();
        Self {
            running,
            token,
            dir,
            http: client(),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("cp.db")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url())
    }

    /// Another cluster of the same org (or of `org`, created when missing).
    pub fn add_cluster(&self, org: &str, id: &str) -> String {
        let store = Store::open(&self.db()).unwrap();
        if !store.org_exists(org).unwrap() {
            store.create_org(org).unwrap();
        }
        store.create_cluster(org, id).unwrap()
    }

    pub fn enqueue(&self, document: &str) -> String {
        Store::open(&self.db())
            .unwrap()
            .enqueue_job(CLUSTER, None, document)
            .unwrap()
            .id
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(self.url("/admin/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The count of `route` answered `status` in `/admin/stats`.
pub fn stat(stats: &Value, route: &str, status: &str) -> u64 {
    stats["requests"][route][status].as_u64().unwrap_or(0)
}

/// A valid event of `cluster-a` with id `n` (as 32 hex digits).
pub fn event(n: u64, kind: &str) -> Value {
    json!({
        "event_id": format!("{n:032x}"),
        "cluster_id": CLUSTER,
        "org_id": ORG,
        "occurred_at": format!("2026-05-28T10:{:02}:{:02}Z", (n / 60) % 60, n % 60),
        "namespace": "org-acme",
        "application_instance": format!("app-{}", n % 3),
        "kind": kind,
        "reason": "Tested",
        "message": format!("event {n}"),
        "operator_version": "v0.0.1-test",
    })
}

pub fn batch(events: &[Value]) -> Value {
    json!({ "events": events })
}

pub fn parse_event(value: &Value) -> AuditEvent {
    serde_json::from_value(value.clone()).unwrap()
}

/// Polls `check` until it yields a value or `limit` passes.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
