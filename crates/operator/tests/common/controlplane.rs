//! The reference control plane for the Pull-mode end-to-end tests: a real HTTP server on
//! loopback with its own SQLite file, the test org and this cluster registered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;
use vworkspace_api::{AuditEvent, Cluster};
use vworkspace_controlplane::store::TimelineFilter;
use vworkspace_controlplane::{Config, FaultSpec, Running, Store};
use vworkspace_testkit::env::TestEnv;

use super::{CLUSTER_ID, ORG_ID};

/// A control plane with its own database, the org and this cluster registered.
pub struct ControlPlane {
    pub db: PathBuf,
    pub addr: SocketAddr,
    running: Option<Running>,
    /// The cluster's bootstrap token.
    pub token: String,
}

impl ControlPlane {
    /// A fresh database in `dir` (an old one is removed) and a server on a free port.
    pub async fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = dir.join("controlplane.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        let store = Store::open(&db)?;
        store.create_org(ORG_ID)?;
        let token = store.create_cluster(ORG_ID, CLUSTER_ID)?;
        drop(store);
        let running =
            vworkspace_controlplane::serve(Config::new(&db, "127.0.0.1:0".parse()?)).await?;
        Ok(Self {
            db,
            addr: running.addr,
            running: Some(running),
            token,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Serve again on the same address.
    pub async fn resume(&mut self) -> Result<()> {
        self.resume_with_faults(Vec::new()).await
    }

    /// Serve again on the same address, with `faults` in place before the first request.
    pub async fn resume_with_faults(&mut self, faults: Vec<FaultSpec>) -> Result<()> {
        let mut config = Config::new(&self.db, self.addr);
        config.faults = faults;
        self.running = Some(vworkspace_controlplane::serve(config).await?);
        Ok(())
    }

    pub fn store(&self) -> Result<Store> {
        Ok(Store::open(&self.db)?)
    }

    pub fn enqueue(&self, id: &str, document: &str) -> Result<()> {
        self.store()?.enqueue_job(CLUSTER_ID, Some(id), document)?;
        Ok(())
    }

    /// `(state, message)` of the job `id`, once it exists.
    pub fn job_state(&self, id: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .store()?
            .list_jobs(Some(CLUSTER_ID))?
            .into_iter()
            .find(|j| j.id == id)
            .map(|j| (j.state, j.message)))
    }

    /// Every stored audit event of the org (the store keeps each `event_id` once).
    pub fn timeline(&self) -> Result<Vec<AuditEvent>> {
        Ok(self
            .store()?
            .timeline(ORG_ID, &TimelineFilter::default(), 100_000)?
            .into_iter()
            .map(|e| e.event)
            .collect())
    }

    /// A request to the control plane's admin API (faults, stats); its JSON answer.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status.is_success(), "{path}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }
}

/// The Secret `controlplane-token` in `ns` holding the bootstrap `token`.
pub async fn create_token_secret(env: &TestEnv, ns: &str, token: &str) -> Result<()> {
    Api::<Secret>::namespaced(env.client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "controlplane-token" },
                "stringData": { "token": token },
            }))?,
        )
        .await?;
    Ok(())
}

/// A Pull-mode Cluster pointing at `url` with the token of [`create_token_secret`] and
/// short connectivity timings (3 s grace, 1 s heartbeat); `audit` sets the buffer
/// capacity and the largest batch, `None` keeps the defaults.
pub fn pull_cluster(url: &str, audit: Option<(u32, u32)>) -> Result<Cluster> {
    let mut spec = json!({
        "orgId": ORG_ID,
        "mode": "pull",
        "controlPlane": {
            "url": url,
            "credentialsSecretRef": { "name": "controlplane-token", "key": "token" },
        },
        "connectivity": { "gracePeriod": "3s", "heartbeatInterval": "1s" },
    });
    if let Some((capacity, max_batch)) = audit {
        spec["auditStream"] =
            json!({ "bufferCapacity": capacity, "maxBatchSize": max_batch, "flushInterval": "1s" });
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1", "kind": "Cluster",
        "metadata": { "name": CLUSTER_ID },
        "spec": spec,
    }))?)
}

/// The token Secret and a Pull-mode Cluster in `ns`, pointing at `url`, with an audit
/// buffer of `capacity` events sent in batches of at most `max_batch`.
pub async fn create_pull_cluster(
    env: &TestEnv,
    ns: &str,
    url: &str,
    token: &str,
    capacity: u32,
    max_batch: u32,
) -> Result<()> {
    create_token_secret(env, ns, token).await?;
    Api::<Cluster>::namespaced(env.client.clone(), ns)
        .create(
            &PostParams::default(),
            &pull_cluster(url, Some((capacity, max_batch)))?,
        )
        .await?;
    Ok(())
}
