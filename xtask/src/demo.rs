//! `cargo xtask demo`: everything a newcomer needs to see the operator work.
//!
//! Starts the local Kubernetes, installs the CRDs, runs the simulated Flux and the
//! operator (as its built binary), creates a few ApplicationInstances — one of which
//! Flux fails to upgrade — and prints the panes a person reads: the applications, the
//! operations, the Events, the operator's own metrics and its audit stream. The
//! cluster stays up until Ctrl-C. The Cluster pane and the reference control plane
//! appear here once their issues land.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::binaries::{self, K8sBinaries};
use vworkspace_testkit::cluster::{Lifetime, LocalCluster};
use vworkspace_testkit::fixtures::{
    OperatorProcess, apply_crds, operator_crd_files, repo_root, third_party_crd_files,
};
use vworkspace_testkit::sim::flux::FluxSimulator;

const NAMESPACE: &str = "org-demo";

pub async fn run() -> Result<()> {
    let bins = K8sBinaries::ensure()?;
    let status = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args(["build", "-q", "-p", "vworkspace-operator"])
        .status()?;
    anyhow::ensure!(status.success(), "building the operator failed");
    let operator = repo_root().join("target/debug/vworkspace-operator");

    let dir = binaries::cache_root()?.join("demo");
    let cluster = LocalCluster::start(bins.clone(), &dir, Lifetime::Attached).await?;
    let client = cluster.client().await?;
    apply_crds(&client, &operator_crd_files()?).await?;
    apply_crds(&client, &third_party_crd_files()?).await?;
    let kubectl = |args: &[&str]| -> Result<String> {
        let out = Command::new(bins.path("kubectl"))
            .env("KUBECONFIG", cluster.kubeconfig())
            .args(args)
            .output()?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    kubectl(&["create", "namespace", NAMESPACE])?;
    kubectl(&[
        "label",
        "namespace",
        NAMESPACE,
        "app.vworkspace.io/managed-by=vworkspace",
        "app.vworkspace.io/org-id=demo",
    ])?;

    let flux = FluxSimulator::start(client.clone(), None);
    flux.fail_version(
        "28.0.0",
        "pre-upgrade hook job db-migrate failed (simulated)",
    );
    let mut op = OperatorProcess::spawn(
        &operator,
        cluster.kubeconfig(),
        &dir.join("operator"),
        &["--cluster-id=cluster-demo", "--org-id=demo"],
    )?;

    let api: Api<ApplicationInstance> = Api::namespaced(client.clone(), NAMESPACE);
    for (name, chart, version) in [
        ("nextcloud", "nextcloud", "27.0.1"),
        ("wiki", "wikijs", "2.5.0"),
    ] {
        let obj: ApplicationInstance = serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": { "name": name },
            "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": chart, "version": version } }
        }))?;
        api.create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    wait_condition(&api, &["nextcloud", "wiki"], "Ready").await?;
    // An upgrade that Flux fails, so the panes show a failure and its reason.
    api.patch(
        "nextcloud",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "chart": { "version": "28.0.0" } } })),
    )
    .await?;
    wait_condition(&api, &["nextcloud"], "Failed").await?;
    op.ensure_running()?;

    pane(
        "Applications — kubectl get applicationinstance -A",
        &kubectl(&["get", "applicationinstance", "-A"])?,
    );
    pane(
        "Operations — kubectl get operation -A",
        &kubectl(&["get", "operation", "-A"])?,
    );
    pane(
        &format!("What happened — kubectl get events -n {NAMESPACE} (events.k8s.io)"),
        &kubectl(&[
            "get",
            "events.events.k8s.io",
            "-n",
            NAMESPACE,
            "--sort-by=.eventTime",
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,OBJECT:.regarding.name,MESSAGE:.note",
        ])?,
    );
    let metrics = op.metrics().await?;
    let interesting: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with("vworkspace_operator_reconcile_total{controller=\"applicationinstance\"")
                || l.starts_with("vworkspace_operator_reconcile_duration_seconds_count")
                || l.starts_with("workqueue_depth")
                || l.starts_with("leader_election_master_status")
                || l.starts_with("process_resident_memory_bytes")
        })
        .collect();
    pane(
        &format!(
            "Operator metrics — curl http://127.0.0.1:{}/metrics (excerpt)",
            op.metrics_port
        ),
        &interesting.join("\n"),
    );
    let audit: Vec<String> = op
        .audit_events()?
        .iter()
        .map(|e| {
            format!(
                "{}  {:<20} {:<12} {}",
                e["occurred_at"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                e["application_instance"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    pane(
        &format!("Audit stream — jq . {}", op.audit_log.display()),
        &audit.join("\n"),
    );

    println!("\nThe cluster, the simulated Flux and the operator keep running. Try:");
    println!("  export KUBECONFIG={}", cluster.kubeconfig().display());
    println!("  export PATH={}:$PATH", bins.dir().display());
    println!("  kubectl describe applicationinstance -n {NAMESPACE} nextcloud");
    println!(
        "  curl -s http://127.0.0.1:{}/readyz?verbose | jq",
        op.probe_port
    );
    println!(
        "  tail -f {} | jq -c '{{level,msg,controller,application_instance}}'",
        op.log.display()
    );
    println!("Press Ctrl-C to stop everything.");
    tokio::signal::ctrl_c().await?;
    op.terminate();
    drop(flux);
    drop(cluster);
    Ok(())
}

/// Wait until condition `type_` is True on every named instance.
async fn wait_condition(api: &Api<ApplicationInstance>, names: &[&str], type_: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in names {
        loop {
            let reached = api
                .get(name)
                .await
                .ok()
                .and_then(|o| o.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == type_ && c.status == "True")
                });
            if reached {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} did not reach {type_}=True within 60s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

fn pane(title: &str, body: &str) {
    println!("\n=== {title} ===\n{}", body.trim_end());
}
