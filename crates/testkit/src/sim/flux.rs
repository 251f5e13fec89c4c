//! A simulated Flux: source-controller for `HelmRepository` and helm-controller for
//! `HelmRelease`, driving their status the way the real controllers do.
//!
//! The operator never runs Helm; it writes a HelmRelease and reads Flux's verdict from
//! its status. This simulator produces that verdict without Helm or a chart:
//!
//! * a `HelmRepository` becomes `Ready=True` (reason `Succeeded`);
//! * a `HelmRelease` whose `metadata.generation` is ahead of `status.observedGeneration`
//!   first shows `Reconciling=True` / `Ready=Unknown` (reason `Progressing`), then either
//!   succeeds — a new entry (revision n+1, `deployed`) on top of `status.history`,
//!   `Ready=True` with reason `InstallSucceeded` or `UpgradeSucceeded` — or, when the
//!   chart version is marked failing with [`FluxSimulator::fail_version`], fails with
//!   `Ready=False`, reason `InstallFailed` or `UpgradeFailed`, and a `failed` history
//!   entry, as helm-controller does when an upgrade's hooks or resources fail;
//! * a suspended HelmRelease (`spec.suspend: true`) is left alone.
//!
//! The simulator only writes status (through the status subresource), never spec.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// `helm.toolkit.fluxcd.io/v2` `HelmRelease`.
pub fn helm_release_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
        "helmreleases",
    )
}

/// `source.toolkit.fluxcd.io/v1` `HelmRepository`.
pub fn helm_repository_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", "HelmRepository"),
        "helmrepositories",
    )
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct FluxSimulator {
    failing: Arc<Mutex<HashMap<String, String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl FluxSimulator {
    /// Start simulating in `namespace` (or the whole cluster with `None`).
    pub fn start(client: Client, namespace: Option<&str>) -> Self {
        let failing = Arc::new(Mutex::new(HashMap::new()));
        let releases = api(&client, namespace, &helm_release_resource());
        let repositories = api(&client, namespace, &helm_repository_resource());
        let tasks = vec![
            tokio::spawn(run_releases(releases, client.clone(), failing.clone())),
            tokio::spawn(run_repositories(repositories, client)),
        ];
        Self { failing, tasks }
    }

    /// Make every install or upgrade to chart `version` fail with `message`.
    pub fn fail_version(&self, version: &str, message: &str) {
        if let Ok(mut failing) = self.failing.lock() {
            failing.insert(version.to_owned(), message.to_owned());
        }
    }
}

impl Drop for FluxSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn api(client: &Client, namespace: Option<&str>, resource: &ApiResource) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// Objects (with their generation) whose status has not caught up with their spec:
/// what a Flux controller would pick up. Watch errors are retried by the watcher.
fn pending_generations(
    api: Api<DynamicObject>,
) -> futures::stream::BoxStream<'static, (DynamicObject, i64)> {
    watcher::watcher(api, watcher::Config::default())
        .filter_map(|event| async move {
            let obj = match event {
                Ok(Event::Apply(obj) | Event::InitApply(obj)) => obj,
                Ok(_) => return None,
                Err(err) => {
                    tracing::debug!(%err, "flux simulator: watch error");
                    return None;
                }
            };
            let generation = obj.metadata.generation.unwrap_or_default();
            let observed = obj.data["status"]["observedGeneration"].as_i64();
            (observed != Some(generation)).then_some((obj, generation))
        })
        .boxed()
}

async fn run_repositories(api: Api<DynamicObject>, client: Client) {
    let resource = helm_repository_resource();
    let mut stream = pending_generations(api);
    while let Some((obj, generation)) = stream.next().await {
        let url = obj.data["spec"]["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let status = json!({
            "observedGeneration": generation,
            "url": url,
            "conditions": [condition("Ready", "True", "Succeeded",
                &format!("stored artifact: index of {url}"), generation)]
        });
        if let Err(err) = patch_status(&client, &resource, &obj, status).await {
            tracing::debug!(%err, "flux simulator: repository status");
        }
    }
}

async fn run_releases(
    api: Api<DynamicObject>,
    client: Client,
    failing: Arc<Mutex<HashMap<String, String>>>,
) {
    let resource = helm_release_resource();
    // Our own status patches come back as watch events carrying a stale generation;
    // remembering what was handled keeps one release per generation.
    let mut handled: HashMap<String, i64> = HashMap::new();
    let mut stream = pending_generations(api);
    while let Some((obj, generation)) = stream.next().await {
        if obj.data["spec"]["suspend"].as_bool() == Some(true) {
            continue;
        }
        let uid = obj.uid().unwrap_or_default();
        if handled.get(&uid) == Some(&generation) {
            continue;
        }
        handled.insert(uid, generation);
        let version = obj.data["spec"]["chart"]["spec"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let failure = failing.lock().ok().and_then(|f| f.get(&version).cloned());
        if let Err(err) = release(&client, &resource, &obj, generation, failure).await {
            tracing::debug!(%err, "flux simulator: release status");
        }
    }
}

async fn release(
    client: &Client,
    resource: &ApiResource,
    obj: &DynamicObject,
    generation: i64,
    failure: Option<String>,
) -> Result<()> {
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let chart = obj.data["spec"]["chart"]["spec"]["chart"]
        .as_str()
        .unwrap_or_default();
    let version = obj.data["spec"]["chart"]["spec"]["version"]
        .as_str()
        .unwrap_or_default();
    let mut history: Vec<Value> = obj.data["status"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let installed = history
        .iter()
        .any(|h| h["status"] == "deployed" || h["status"] == "superseded");
    let action = if installed { "upgrade" } else { "install" };

    // Step 1: what helm-controller shows while it works.
    let mut progressing = obj.data["status"].clone();
    if !progressing.is_object() {
        progressing = json!({});
    }
    progressing["conditions"] = json!([
        condition(
            "Reconciling",
            "True",
            "Progressing",
            &format!("Fulfilling prerequisites for {action}"),
            generation
        ),
        condition(
            "Ready",
            "Unknown",
            "Progressing",
            "Reconciliation in progress",
            generation
        ),
    ]);
    patch_status(client, resource, obj, progressing).await?;

    // Step 2: the verdict, with a new history entry on top (newest first, as Flux keeps it).
    let revision = history
        .first()
        .and_then(|h| h["version"].as_i64())
        .unwrap_or(0)
        + 1;
    let now = now_rfc3339();
    let (entry_status, ready, reason, message) = match &failure {
        None => {
            for h in &mut history {
                if h["status"] == "deployed" {
                    h["status"] = json!("superseded");
                }
            }
            let verb = if installed { "upgrade" } else { "install" };
            let reason = if installed {
                "UpgradeSucceeded"
            } else {
                "InstallSucceeded"
            };
            let message = format!(
                "Helm {verb} succeeded for release {namespace}/{name}.v{revision} with chart {chart}@{version}"
            );
            ("deployed", "True", reason, message)
        }
        Some(why) => {
            let verb = if installed { "upgrade" } else { "install" };
            let reason = if installed {
                "UpgradeFailed"
            } else {
                "InstallFailed"
            };
            let message = format!(
                "Helm {verb} failed for release {namespace}/{name} with chart {chart}@{version}: {why}"
            );
            ("failed", "False", reason, message)
        }
    };
    history.insert(
        0,
        json!({
            "name": name,
            "namespace": namespace,
            "version": revision,
            "status": entry_status,
            "chartName": chart,
            "chartVersion": version,
            "digest": format!("sha256:{:016x}", fnv(&format!("{namespace}/{name}/{revision}/{version}"))),
            "firstDeployed": now,
            "lastDeployed": now,
        }),
    );
    history.truncate(5);
    let status = json!({
        "observedGeneration": generation,
        "lastAttemptedGeneration": generation,
        "lastAttemptedRevision": version,
        "lastAttemptedReleaseAction": action,
        "history": history,
        "conditions": [
            condition("Ready", ready, reason, &message, generation),
            condition("Released", ready, reason, &message, generation),
        ],
    });
    patch_status(client, resource, obj, status).await
}

async fn patch_status(
    client: &Client,
    resource: &ApiResource,
    obj: &DynamicObject,
    status: Value,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &obj.namespace().unwrap_or_default(),
        resource,
    );
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now_rfc3339(),
    })
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
