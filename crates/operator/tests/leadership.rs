//! Leader election between two replicas of the built binary: only the leader
//! reconciles, and when it dies the standby takes over.

use std::time::Duration;

use anyhow::{Result, ensure};
use kube::api::{Api, PostParams};
use serde_json::json;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
mod common;

use common::{create_cluster, install_crds, spawn_operator};
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::flux::FluxSimulator;

const LIMIT: Duration = Duration::from_secs(60);

fn is_leader(metrics: &str) -> Option<f64> {
    Exposition::parse(metrics)
        .ok()?
        .value("leader_election_master_status", &[("name", "LEASE")])
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("ha").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    create_cluster(&env, &ns, "push").await?;
    let lease = format!("vws-test-{}", unique_suffix());
    let flags = [
        "--leader-elect".to_owned(),
        format!("--leader-election-id={lease}"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a = spawn_operator(&env, &ns, "replica-a", &flags)?;
    let mut b = spawn_operator(&env, &ns, "replica-b", &flags)?;
    let series = |m: &str| is_leader(&m.replace(&lease, "LEASE"));

    let (mut leader, mut standby) = poll_until(LIMIT, "one leader", || async {
        let ma = a.metrics().await.ok()?;
        let mb = b.metrics().await.ok()?;
        match (series(&ma), series(&mb)) {
            (Some(1.0), Some(0.0)) => Some(("a", "b")),
            (Some(0.0), Some(1.0)) => Some(("b", "a")),
            _ => None,
        }
    })
    .await?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    let create = |name: &str| -> Result<ApplicationInstance> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": { "name": name },
            "spec": { "chart": { "repository": "https://charts.example.org", "name": "wiki", "version": "1.0.0" } }
        }))?)
    };
    let ready = |name: String| {
        let api = api.clone();
        async move {
            poll_until(LIMIT, &format!("{name} Ready"), || async {
                let obj = api.get(&name).await.ok()?;
                obj.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            })
            .await
        }
    };
    api.create(&PostParams::default(), &create("first")?)
        .await?;
    ready("first".into()).await?;

    let (lead, stand) = if leader == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let reconciles = |m: &str| -> f64 {
        let Ok(m) = Exposition::parse(m) else {
            return f64::NAN;
        };
        ["success", "error", "requeue", "requeue_after"]
            .iter()
            .filter_map(|r| {
                m.value(
                    "controller_runtime_reconcile_total",
                    &[("controller", "applicationinstance"), ("result", r)],
                )
            })
            .sum()
    };
    ensure!(
        reconciles(&lead.metrics().await?) > 0.0,
        "the leader reconciled"
    );
    ensure!(
        reconciles(&stand.metrics().await?) == 0.0,
        "the standby did not reconcile"
    );
    // A standby is ready (healthy, waiting) once its background checks have their
    // first verdicts (the RBAC reviews take a moment).
    poll_until(LIMIT, "the standby's /readyz 200", || async {
        matches!(stand.probe("/readyz").await, Ok((200, _))).then_some(())
    })
    .await?;

    // The leader dies without releasing the Lease; the standby takes over after expiry.
    lead.kill();
    poll_until(Duration::from_secs(90), "the standby to lead", || async {
        (series(&stand.metrics().await.ok()?) == Some(1.0)).then_some(())
    })
    .await?;
    api.create(&PostParams::default(), &create("second")?)
        .await?;
    ready("second".into()).await?;
    ensure!(
        reconciles(&stand.metrics().await?) > 0.0,
        "the new leader reconciles"
    );
    stand.ensure_running()?;
    std::mem::swap(&mut leader, &mut standby);
    Ok(())
}
