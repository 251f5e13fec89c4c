//! `cargo xtask demo`: everything a newcomer needs to see the operator work.
//!
//! Starts the local Kubernetes, installs the CRDs, runs the reference control plane
//! (its built binary, on a fresh SQLite file), the simulated Flux and the operator (its
//! built binary, in Pull mode against that control plane), creates one
//! ApplicationInstance directly and one through a control-plane job — then upgrades the
//! first to a version Flux fails — and prints the panes a person reads: the Cluster, the
//! applications, the operations, the Events, the operator's own metrics and the org's
//! timeline on the control plane. Everything stays up until Ctrl-C.

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
        .args([
            "build",
            "-q",
            "-p",
            "vworkspace-operator",
            "-p",
            "vworkspace-controlplane",
        ])
        .status()?;
    anyhow::ensure!(status.success(), "building the operator failed");
    let operator = repo_root().join("target/debug/vworkspace-operator");
    let controlplane = repo_root().join("target/debug/vworkspace-controlplane");

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

    // The reference control plane, with this org and cluster registered.
    let cp_dir = dir.join("controlplane");
    let _ = std::fs::remove_dir_all(&cp_dir);
    std::fs::create_dir_all(&cp_dir)?;
    let db = cp_dir.join("controlplane.db");
    let cp = |args: &[&str]| -> Result<String> {
        let out = Command::new(&controlplane)
            .args(args)
            .arg(format!("--db={}", db.display()))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "vworkspace-controlplane {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    cp(&["org", "create", "demo"])?;
    let token = cp(&["cluster", "create", "--org", "demo", "cluster-demo"])?;
    let mut server = Command::new(&controlplane)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(format!("--db={}", db.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(cp_dir.join("server.log"))?)
        .spawn()
        .context("starting the control plane")?;
    let url = {
        use std::io::BufRead;
        let stdout = server.stdout.take().context("control plane stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from the control plane: {line:?}"))?
            .to_owned();
        format!("http://{addr}")
    };
    kubectl(&["create", "namespace", "vworkspace-system"])?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "vworkspace-system");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "controlplane-token" },
                "stringData": { "token": token.trim() },
            }))?,
        )
        .await?;
    let clusters: Api<vworkspace_api::Cluster> =
        Api::namespaced(client.clone(), "vworkspace-system");
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": { "name": "cluster-demo" },
                "spec": {
                    "orgId": "demo", "mode": "pull",
                    "controlPlane": { "url": url, "credentialsSecretRef": { "name": "controlplane-token", "key": "token" } },
                    "connectivity": { "gracePeriod": "30s", "heartbeatInterval": "5s" },
                },
            }))?,
        )
        .await?;

    let flux = FluxSimulator::start(client.clone(), None);
    flux.fail_version(
        "28.0.0",
        "pre-upgrade hook job db-migrate failed (simulated)",
    );
    let mut op = OperatorProcess::spawn(
        &operator,
        cluster.kubeconfig(),
        &dir.join("operator"),
        &[
            "--cluster-id=cluster-demo",
            "--org-id=demo",
            "--cluster-resync=5s",
        ],
    )?;

    let api: Api<ApplicationInstance> = Api::namespaced(client.clone(), NAMESPACE);
    // One application created directly, one through a control-plane job.
    let obj: ApplicationInstance = serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": { "name": "nextcloud" },
        "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "27.0.1" } }
    }))?;
    api.create(&PostParams::default(), &obj)
        .await
        .context("creating nextcloud")?;
    let job = cp_dir.join("job-wiki.json");
    std::fs::write(
        &job,
        json!({
            "type": "ApplyApplicationInstance", "cluster_id": "cluster-demo",
            "namespace": NAMESPACE, "name": "wiki",
            "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "wikijs", "version": "2.5.0" } },
        })
        .to_string(),
    )?;
    cp(&[
        "job",
        "enqueue",
        "--cluster",
        "cluster-demo",
        "--id",
        "demo-wiki",
        "--file",
        &job.display().to_string(),
    ])?;
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
        "Cluster — kubectl get cluster -n vworkspace-system",
        &format!(
            "{}\n{}",
            kubectl(&["get", "cluster", "-n", "vworkspace-system"])?,
            kubectl(&[
                "get",
                "cluster",
                "-n",
                "vworkspace-system",
                "cluster-demo",
                "-o",
                "jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}) {.message}{\"\\n\"}{end}",
            ])?
        ),
    );
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
    // The audit stream delivers within a flush interval or so: wait for the failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cp(&["timeline", "--org", "demo", "--kind", "ReconcileFailed"])?.contains("nextcloud")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pane(
        "Control-plane timeline — vworkspace-controlplane timeline --org demo",
        &cp(&["timeline", "--org", "demo", "--limit", "20"])?,
    );
    pane(
        "Control-plane jobs — vworkspace-controlplane job list",
        &cp(&["job", "list"])?,
    );

    println!(
        "\nThe cluster, the control plane, the simulated Flux and the operator keep running. Try:"
    );
    println!("  open {url}/orgs/demo/timeline   (the live timeline page)");
    println!(
        "  {} timeline --org demo --db {}",
        controlplane.display(),
        db.display()
    );
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
    let _ = server.kill();
    let _ = server.wait();
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
