//! End-to-end: the API server dies (SIGKILL) and comes back with the same command line.
//! The operator says so on `/readyz` (503 naming `informers`) during the outage, logs
//! little, turns ready within 10 s after the API server is back, and a change made right
//! after recovery is reconciled within 5 s (the limits, as polling deadlines).
//!
//! The test runs its own private cluster: restarting the shared one would break every
//! other test running at the same time.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::binaries::K8sBinaries;
use vworkspace_testkit::cluster::{Lifetime, LocalCluster};
use vworkspace_testkit::env::{poll_until, unique_suffix};
use vworkspace_testkit::fixtures::{
    OperatorProcess, apply_crds, operator_crd_files, third_party_crd_files,
};
use vworkspace_testkit::sim::flux::FluxSimulator;

mod common;

use common::{CLUSTER_ID, OPERATOR, ORG_ID, condition};

const LIMIT: Duration = Duration::from_secs(60);
const OUTAGE: Duration = Duration::from_secs(20);

async fn ready_generation(api: &Api<ApplicationInstance>, name: &str) -> Option<i64> {
    let obj = api.get(name).await.ok()?;
    let generation = obj.metadata.generation?;
    (obj.status.as_ref()?.observed_generation == Some(generation)
        && condition(&obj, "Ready")?.0 == "True")
        .then_some(generation)
}

#[tokio::test]
async fn an_api_server_restart_is_reported_and_recovered_from_quickly() -> Result<()> {
    let bins = K8sBinaries::cached()?.context("the Kubernetes binaries are not built")?;
    let dir = std::env::temp_dir().join(format!("vws-apiserver-restart-{}", unique_suffix()));
    let mut cluster = LocalCluster::start(bins, &dir, Lifetime::Attached).await?;
    let client = cluster.client().await?;
    apply_crds(&client, &operator_crd_files()?).await?;
    apply_crds(&client, &third_party_crd_files()?).await?;
    let ns = "restart";
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns, "labels": {
                "app.vworkspace.io/managed-by": "vworkspace", "app.vworkspace.io/org-id": ORG_ID } } }))?,
        )
        .await?;
    let clusters: Api<vworkspace_api::Cluster> = Api::namespaced(client.clone(), ns);
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": { "name": CLUSTER_ID }, "spec": { "orgId": ORG_ID, "mode": "push" },
            }))?,
        )
        .await?;
    let _flux = FluxSimulator::start(client.clone(), Some(ns));
    let op_dir = dir.join("operator");
    let mut op = OperatorProcess::spawn(
        std::path::Path::new(OPERATOR),
        cluster.kubeconfig(),
        &op_dir,
        &[
            &format!("--watch-namespace={ns}"),
            &format!("--namespace={ns}"),
            "--identity=restart",
            &format!("--cluster-id={CLUSTER_ID}"),
            &format!("--org-id={ORG_ID}"),
        ],
    )?;
    let api: Api<ApplicationInstance> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": { "name": "app" },
            "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } }
        }))?,
    )
    .await?;
    poll_until(LIMIT, "app Ready", || ready_generation(&api, "app")).await?;
    poll_until(LIMIT, "/readyz 200", || async {
        (op.probe("/readyz").await.ok()?.0 == 200).then_some(())
    })
    .await?;

    // The outage.
    let lines_before = op.log_lines()?.len();
    cluster.kill_component("kube-apiserver")?;
    let killed = Instant::now();
    let body = poll_until(LIMIT, "/readyz 503 naming informers", || async {
        let (code, body) = op.probe("/readyz").await.ok()?;
        (code == 503 && body.contains("informers")).then_some(body)
    })
    .await?;
    ensure!(body.contains("failing"), "informers says why: {body}");
    // It stays unready for the whole outage (the probes themselves cost nothing).
    while killed.elapsed() < OUTAGE {
        let (code, body) = op.probe("/readyz").await?;
        ensure!(code == 503, "ready while the API server is down: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outage_lines: Vec<String> = op.log_lines()?[lines_before..].to_vec();
    ensure!(
        outage_lines.len() <= 20,
        "{} log lines during a {OUTAGE:?} outage:\n{}",
        outage_lines.len(),
        outage_lines.join("\n")
    );

    // Back, with the same command line.
    cluster.restart_component("kube-apiserver")?;
    poll_until(LIMIT, "the API server back", || async {
        let request = http::Request::get("/readyz").body(Vec::new()).ok()?;
        (client.request_text(request).await.ok()?.trim() == "ok").then_some(())
    })
    .await?;
    let last = std::sync::Mutex::new(String::new());
    poll_until(
        Duration::from_secs(10),
        "/readyz 200 within 10 s",
        || async {
            let (code, body) = op.probe("/readyz").await.ok()?;
            *last.lock().ok()? = body;
            (code == 200).then_some(())
        },
    )
    .await
    .with_context(|| {
        format!(
            "last answer: {}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })?;

    // A change right after recovery.
    let changed = api
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "chart": { "version": "1.1.0" } } })),
        )
        .await?;
    let generation = changed.metadata.generation;
    poll_until(
        Duration::from_secs(5),
        "the change reconciled within 5 s",
        || async { (ready_generation(&api, "app").await == generation).then_some(()) },
    )
    .await?;
    op.ensure_running()?;
    drop(op);
    cluster.stop()?;
    Ok(())
}
