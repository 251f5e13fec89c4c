//! End-to-end: every API request counts. One instance on its way to Ready costs exactly
//! the writes it needs, and a reconcile that finds nothing to change sends nothing.
//! Counted by the operator's own `rest_client_requests_total`.

use std::time::Duration;

use anyhow::{Result, ensure};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::fixtures::OperatorProcess;
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::flux::FluxSimulator;

mod common;

use common::{install_crds, spawn_operator};

const LIMIT: Duration = Duration::from_secs(60);

async fn scrape(op: &OperatorProcess) -> Result<Exposition> {
    Ok(Exposition::parse(&op.metrics().await?)?)
}

fn requests(m: &Exposition, method: &str) -> f64 {
    m.sum("rest_client_requests_total", &[("method", method)])
}

fn reconciles(m: &Exposition) -> f64 {
    m.sum(
        "controller_runtime_reconcile_total",
        &[("controller", "applicationinstance")],
    )
}

#[tokio::test]
async fn an_instance_costs_six_writes_and_a_no_op_reconcile_costs_nothing() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("requests").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    // The readiness checks' own start-up requests (the RBAC check's
    // SelfSubjectAccessReviews are POSTs) are the process's, not the instance's: count
    // from once they are done.
    poll_until(LIMIT, "/readyz/rbac 200", || async {
        (op.probe("/readyz/rbac").await.ok()?.0 == 200).then_some(())
    })
    .await?;
    let start = scrape(&op).await?;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "ApplicationInstance",
            "metadata": { "name": "app" },
            "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } }
        }))?,
    )
    .await?;
    poll_until(LIMIT, "Ready=True", || async {
        let obj = api.get("app").await.ok()?;
        obj.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await?;
    // Settled: the workqueue is empty and nothing is being reconciled.
    let settled = poll_until(LIMIT, "an idle workqueue", || async {
        let m = scrape(&op).await.ok()?;
        let idle = m.value("workqueue_depth", &[("name", "applicationinstance")]) == Some(0.0)
            && m.value(
                "controller_runtime_active_workers",
                &[("controller", "applicationinstance")],
            ) == Some(0.0);
        idle.then_some(m)
    })
    .await?;
    // Two child applies and two status writes (Progressing, then Ready) are the PATCHes;
    // ReconcileStarted and ReconcileSucceeded are the POSTs. Nothing else is written, and
    // the instance is never read with a GET beyond the watches' list and watch.
    ensure!(
        requests(&settled, "PATCH") - requests(&start, "PATCH") == 4.0,
        "PATCHes: {}",
        requests(&settled, "PATCH") - requests(&start, "PATCH")
    );
    ensure!(
        requests(&settled, "POST") - requests(&start, "POST") == 2.0,
        "POSTs: {}",
        requests(&settled, "POST") - requests(&start, "POST")
    );
    ensure!(requests(&settled, "PUT") + requests(&settled, "DELETE") == 0.0);
    // Two reconciles: the one the create starts (children applied, Flux not done) and
    // the one Flux's Ready brings. The simulator's Progressing write in between changes
    // nothing the plan reads and reconciles nothing.
    ensure!(
        reconciles(&settled) == 2.0,
        "reconciles on the way to Ready: {}",
        reconciles(&settled)
    );
    let gets_before = requests(&settled, "GET");

    // A change that does not concern the plan (an annotation) is reconciled, and that
    // reconcile sends no request at all.
    let before = reconciles(&settled);
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "example.org/touched": "yes" } } })),
    )
    .await?;
    let after = poll_until(LIMIT, "the annotation's reconcile", || async {
        let m = scrape(&op).await.ok()?;
        (reconciles(&m) > before
            && m.value("workqueue_depth", &[("name", "applicationinstance")]) == Some(0.0)
            && m.value(
                "controller_runtime_active_workers",
                &[("controller", "applicationinstance")],
            ) == Some(0.0))
        .then_some(m)
    })
    .await?;
    for method in ["PATCH", "POST", "PUT", "DELETE"] {
        ensure!(
            requests(&after, method) == requests(&settled, method),
            "the no-op reconcile sent a {method}"
        );
    }
    ensure!(
        requests(&after, "GET") == gets_before,
        "the no-op reconcile read from the API server: {} GETs before, {} after",
        gets_before,
        requests(&after, "GET")
    );
    ensure!(
        reconciles(&after) == before + 1.0,
        "exactly one reconcile for the annotation: {before} -> {}",
        reconciles(&after)
    );
    op.ensure_running()?;
    let _ = op.terminate();
    Ok(())
}
