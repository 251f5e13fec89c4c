//! The shared cluster of a test run, as integration tests see it.
//!
//! `cargo xtask test` starts one [`LocalCluster`](crate::cluster::LocalCluster) per run
//! and passes it to every test binary through `VWORKSPACE_TEST_KUBECONFIG` and
//! `VWORKSPACE_K8S_BIN`. Without those, tests fall back to the cluster of
//! `cargo xtask cluster up`, so a developer can iterate with plain `cargo test`.
//! Each test isolates itself in a fresh namespace from [`TestEnv::fresh_namespace`].

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::binaries::cache_root;
use crate::cluster::{client_for, read_state};

/// Environment variable naming the admin kubeconfig of the shared test cluster.
pub const KUBECONFIG_ENV: &str = "VWORKSPACE_TEST_KUBECONFIG";
/// Environment variable naming the directory of the Kubernetes binaries.
pub const BIN_ENV: &str = "VWORKSPACE_K8S_BIN";

/// Where `cargo xtask cluster up` keeps its cluster.
/// `VWORKSPACE_CLUSTER_DIR` overrides it, so that two checkouts can each run their own
/// cluster side by side.
pub fn dev_cluster_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CLUSTER_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    Ok(cache_root()?.join("cluster"))
}

/// Environment variable naming the directory of the `cargo xtask cluster up` cluster.
pub const CLUSTER_DIR_ENV: &str = "VWORKSPACE_CLUSTER_DIR";

/// A handle on the shared cluster.
#[derive(Clone)]
pub struct TestEnv {
    /// Admin client (`O=system:masters`).
    pub client: Client,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory holding kubectl and the other binaries.
    pub bin_dir: PathBuf,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("kubeconfig", &self.kubeconfig)
            .finish()
    }
}

impl TestEnv {
    /// Connect to the shared cluster, or explain how to get one.
    pub async fn shared() -> Result<Self> {
        let (kubeconfig, bin_dir) = match (std::env::var(KUBECONFIG_ENV), std::env::var(BIN_ENV)) {
            (Ok(kc), Ok(bin)) => (PathBuf::from(kc), PathBuf::from(bin)),
            _ => match read_state(&dev_cluster_dir()?)? {
                Some(state) => (state.kubeconfig, state.bin_dir),
                None => bail!(
                    "no test cluster: run the suite with `cargo xtask test`, or start one with \
                     `cargo xtask cluster up` and use plain `cargo test`"
                ),
            },
        };
        let client = client_for(&kubeconfig).await?;
        Ok(Self {
            client,
            kubeconfig,
            bin_dir,
        })
    }

    /// Create a namespace `t-<prefix>-<unique>`, managed by vWorkspace (labelled
    /// `app.vworkspace.io/managed-by=vworkspace`), and wait until its default service
    /// account exists (so Pods can be admitted in it).
    pub async fn fresh_namespace(&self, prefix: &str) -> Result<String> {
        self.namespace_with(prefix, true).await
    }

    /// Like [`fresh_namespace`](Self::fresh_namespace), but without the managed-by label.
    pub async fn fresh_unmanaged_namespace(&self, prefix: &str) -> Result<String> {
        self.namespace_with(prefix, false).await
    }

    async fn namespace_with(&self, prefix: &str, managed: bool) -> Result<String> {
        let name = format!("t-{prefix}-{}", unique_suffix());
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let mut labels = serde_json::json!({ "testkit.vworkspace.io/test": prefix });
        if managed {
            labels["app.vworkspace.io/managed-by"] = serde_json::json!("vworkspace");
            labels["app.vworkspace.io/org-id"] = serde_json::json!("org-e2e");
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels }
        }))?;
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        poll_until(
            Duration::from_secs(60),
            "the default service account",
            || async { sas.get_opt("default").await.ok().flatten().map(|_| ()) },
        )
        .await?;
        Ok(name)
    }

    /// A kubeconfig that authenticates as service account `ns/name` (created if missing)
    /// with a fresh bound token: how a test runs the operator under an identity with
    /// exactly the permissions it grants (RBAC is the test's to write).
    pub async fn kubeconfig_for_service_account(&self, ns: &str, name: &str) -> Result<PathBuf> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        if sas.get_opt(name).await?.is_none() {
            let sa: ServiceAccount =
                serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?;
            sas.create(&PostParams::default(), &sa).await?;
        }
        let request: k8s_openapi::api::authentication::v1::TokenRequest =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": { "expirationSeconds": 3600 }
            }))?;
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for {ns}/{name}"))?
            .status
            .map(|s| s.token)
            .context("the token request returned no token")?;
        let admin = std::fs::read_to_string(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let mut kc: serde_json::Value = serde_yaml::from_str(&admin)?;
        kc["users"] = serde_json::json!([{ "name": "sa", "user": { "token": token } }]);
        if let Some(contexts) = kc["contexts"].as_array_mut() {
            for context in contexts {
                context["context"]["user"] = serde_json::json!("sa");
            }
        }
        let path = std::env::temp_dir().join(format!("vws-sa-{ns}-{name}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&kc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The built kubectl, pointed at the shared cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }
}

/// Poll `check` every 100ms until it yields `Some(value)` or `limit` passes.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A short suffix unique within a run: time, process and a counter.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = nanos ^ std::process::id().rotate_left(16) ^ n.wrapping_mul(0x9e37_79b9);
    format!("{:06x}{n}", mixed & 0xff_ffff)
}
