//! `/readyz` of the built binary before and after the CRDs exist.
//!
//! This test removes our CRDs from the shared cluster, so it is the only test in its
//! binary, and it reinstalls them before it ends; cargo runs test binaries one after
//! another, so no other test sees the gap.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use serde_json::Value;
use vworkspace_testkit::env::{TestEnv, poll_until};
mod common;

use common::{create_cluster, install_crds, spawn_operator};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn readyz_names_crds_until_they_are_installed() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.fresh_namespace("ready").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    // Ours, and the Flux kinds the controller writes.
    let removed = [
        "applicationinstances.vworkspace.io",
        "operations.vworkspace.io",
        "clusters.vworkspace.io",
        "helmreleases.helm.toolkit.fluxcd.io",
        "helmrepositories.source.toolkit.fluxcd.io",
    ];
    for name in removed {
        let _ = crds.delete(name, &DeleteParams::default()).await;
    }
    poll_until(LIMIT, "the CRDs to be gone", || async {
        let list = crds.list(&Default::default()).await.ok()?;
        let ours = removed;
        (!list.items.iter().any(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| ours.contains(&n))
        }))
        .then_some(())
    })
    .await?;

    let mut op = spawn_operator(&env, &ns, "ready", &[])?;
    // The checks answer from background results: wait for their first verdicts.
    let (code, body) = poll_until(LIMIT, "/readyz to answer with verdicts", || async {
        let (code, body) = op.probe("/readyz").await.ok()?;
        (!body.contains("not read yet") && !body.contains("not verified yet"))
            .then_some((code, body))
    })
    .await?;
    ensure!(code == 503, "not ready without CRDs: {code} {body}");
    let report: Value =
        serde_json::from_str(&body).with_context(|| format!("JSON body: {body}"))?;
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(
        failed.contains(&"crds") && failed.contains(&"flux"),
        "crds and flux named among failed checks: {body}"
    );
    ensure!(
        body.contains("install Flux"),
        "flux says what to do: {body}"
    );
    ensure!(
        body.contains("applicationinstances.vworkspace.io is not installed"),
        "reason given: {body}"
    );
    let (code, _) = op.probe("/readyz/crds").await?;
    ensure!(code == 503);
    let (code, _) = op
        .probe("/readyz?exclude=crds&exclude=flux&exclude=informers&exclude=cluster")
        .await?;
    ensure!(code == 200, "excluding the failing checks makes it ready");
    let (code, _) = op.probe("/healthz").await?;
    ensure!(code == 200, "alive while unready");
    ensure!(
        op.metrics()
            .await?
            .contains("vworkspace_operator_reconcile_total"),
        "metrics served while unready"
    );

    install_crds(&env).await?;
    create_cluster(&env, &ns, "push").await?;
    let (code, body) = poll_until(Duration::from_secs(120), "/readyz 200", || async {
        let (code, body) = op.probe("/readyz").await.ok()?;
        (code == 200).then_some((code, body))
    })
    .await?;
    ensure!(code == 200, "{body}");
    op.ensure_running()?;
    Ok(())
}
