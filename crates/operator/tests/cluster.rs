//! The Cluster controller of the built binary: the status it writes, the identity
//! taken from the Cluster, the readiness sub-check `cluster` (exactly one Cluster,
//! agreeing with the flags), and the Events of its transitions.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vworkspace_api::Cluster;
use vworkspace_api::labels;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::sim::velero::VeleroSimulator;

mod common;

use common::{CLUSTER_ID, OPERATOR, create_cluster, install_crds, spawn_operator};
use vworkspace_testkit::fixtures::OperatorProcess;

const LIMIT: Duration = Duration::from_secs(60);

fn condition(c: &Cluster, type_: &str) -> Option<(String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.clone(), x.reason.clone()))
}

#[tokio::test]
async fn cluster_status_reports_namespaces_controllers_crds_and_versions() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("cluster").await?;
    // Another managed namespace, with allowed templates: it must be listed with them.
    let other = env.fresh_namespace("cluster-other").await?;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .patch(
            &other,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                labels::ALLOWED_OPERATION_TEMPLATES: "upgrade.helm, backup.velero"
            } } })),
        )
        .await?;
    create_cluster(&env, &ns, "push").await?;
    // Velero, simulated, answers ServerStatusRequests in its own namespace.
    let velero_ns = env.fresh_unmanaged_namespace("velero").await?;
    let _velero = VeleroSimulator::start(env.client.clone(), Some(&velero_ns));
    let velero_flag = format!("--velero-namespace={velero_ns}");
    let mut op = spawn_operator(
        &env,
        &ns,
        &format!("op-{}", unique_suffix()),
        &["--cluster-resync=1s", &velero_flag],
    )?;
    let api: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);

    let cluster = poll_until(LIMIT, "a Cluster status with every condition", || async {
        let c = api.get(CLUSTER_ID).await.ok()?;
        let s = c.status.as_ref()?;
        (s.conditions.len() == 7
            && condition(&c, "ControllersHealthy")
                == Some(("True".into(), "AllControllersReady".into()))
            && condition(&c, "CRDsRegistered") == Some(("True".into(), "SchemaMatches".into()))
            && s.managed_namespaces.iter().any(|n| n.name == other))
        .then_some(c)
    })
    .await?;
    let s = cluster.status.clone().unwrap_or_default();
    ensure!(s.observed_generation == cluster.metadata.generation);
    ensure!(
        s.operator_version
            .as_deref()
            .is_some_and(|v| v.starts_with('v')),
        "operatorVersion: {:?}",
        s.operator_version
    );
    let listed = s
        .managed_namespaces
        .iter()
        .find(|n| n.name == other)
        .map(|n| n.allowed_operation_templates.clone());
    ensure!(
        listed == Some(vec!["backup.velero".into(), "upgrade.helm".into()]),
        "allowed templates parsed and sorted: {listed:?}"
    );
    ensure!(condition(&cluster, "CRDsRegistered") == Some(("True".into(), "SchemaMatches".into())));
    ensure!(
        condition(&cluster, "Connected") == Some(("Unknown".into(), "NotApplicable".into())),
        "push mode has no link in this version: {:?}",
        condition(&cluster, "Connected")
    );
    ensure!(
        condition(&cluster, "EventBufferOverflow")
            == Some(("False".into(), "BufferWithinCapacity".into()))
    );
    poll_until(
        LIMIT,
        "veleroVersion from a ServerStatusRequest",
        || async {
            let v = api.get(CLUSTER_ID).await.ok()?.status?.velero_version?;
            (v == "v1.14.0").then_some(())
        },
    )
    .await?;
    ensure!(s.audit_stream.is_some(), "auditStream summary present");

    // The managed-namespaces gauge counts what the status lists.
    let metrics = op.metrics().await?;
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vworkspace_operator_managed_namespaces "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    ensure!(
        gauge.is_some_and(|g| g >= 2.0),
        "managed_namespaces gauge: {gauge:?}"
    );

    // Unmanaging a namespace removes it from the status.
    namespaces
        .patch(
            &other,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { labels::MANAGED_BY: null } } })),
        )
        .await?;
    poll_until(
        LIMIT,
        "the unmanaged namespace to leave the list",
        || async {
            let c = api.get(CLUSTER_ID).await.ok()?;
            (!c.status?.managed_namespaces.iter().any(|n| n.name == other)).then_some(())
        },
    )
    .await?;

    // Settled, a resync writes nothing: the resourceVersion stays put.
    let before_obj = api.get(CLUSTER_ID).await?;
    let before = before_obj.metadata.resource_version.clone();
    let settled_reconciles = reconciles(&op.metrics().await?);
    poll_until(LIMIT, "three more resyncs", || async {
        (reconciles(&op.metrics().await.ok()?) >= settled_reconciles + 3.0).then_some(())
    })
    .await?;
    let after_obj = api.get(CLUSTER_ID).await?;
    let after = after_obj.metadata.resource_version.clone();
    ensure!(
        before == after,
        "an idle resync rewrote the status ({before:?} -> {after:?}): {} -> {}",
        serde_json::to_string(&before_obj.status)?,
        serde_json::to_string(&after_obj.status)?
    );
    op.ensure_running()?;
    Ok(())
}

fn reconciles(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("controller_runtime_reconcile_total{")
                && l.contains("controller=\"cluster\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn readiness_needs_exactly_one_agreeing_cluster() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("cluster-ready").await?;
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;

    // Polls until the check answers `want` with every one of `says` in its body: right
    // after start-up it answers 503 "listing the Clusters" before the first list is in.
    let probe = |want: u16, says: &'static [&'static str]| {
        let op = &op;
        async move {
            poll_until(
                LIMIT,
                &format!("/readyz/cluster {want} {says:?}"),
                || async {
                    let (code, body) = op.probe("/readyz/cluster").await.ok()?;
                    (code == want && says.iter().all(|s| body.contains(s))).then_some(body)
                },
            )
            .await
        }
    };
    // Says what to create.
    probe(503, &["no Cluster in", CLUSTER_ID]).await?;

    create_cluster(&env, &ns, "push").await?;
    probe(200, &[]).await?;

    // A second Cluster: not silently ignored.
    let api: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    let second: Cluster = serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "Cluster",
        "metadata": { "name": "cluster-other" },
        "spec": { "orgId": "org-e2e", "mode": "push" },
    }))?;
    api.create(&PostParams::default(), &second).await?;
    // Names both.
    probe(503, &["2 Clusters", "cluster-other"]).await?;
    api.delete("cluster-other", &DeleteParams::default())
        .await?;
    probe(200, &[]).await?;

    // An orgId that disagrees with --org-id.
    api.patch(
        CLUSTER_ID,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "orgId": "someone-else" } })),
    )
    .await?;
    probe(503, &["someone-else", "--org-id"]).await?;
    api.patch(
        CLUSTER_ID,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "orgId": "org-e2e" } })),
    )
    .await?;
    probe(200, &[]).await?;

    // The Cluster's Events are written in its namespace; healthy first reports announce
    // nothing (a condition first added as True is silent).
    let events: Api<Event> = Api::namespaced(env.client.clone(), &ns);
    let listed = events.list(&ListParams::default()).await?;
    ensure!(
        !listed
            .items
            .iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Cluster")),
        "no Event for a healthy first report"
    );
    op.ensure_running()?;
    Ok(())
}

/// An operator started in `ns` without `--cluster-id` and `--org-id`.
fn spawn_without_ids(env: &TestEnv, ns: &str, identity: &str) -> Result<OperatorProcess> {
    let dir = std::env::temp_dir().join(format!("vws-e2e-{ns}-{identity}"));
    OperatorProcess::spawn(
        Path::new(OPERATOR),
        &env.kubeconfig,
        &dir,
        &[
            &format!("--watch-namespace={ns}"),
            &format!("--namespace={ns}"),
            &format!("--identity={identity}"),
        ],
    )
}

fn cluster_named(name: &str, org: &str) -> Result<Cluster> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "Cluster",
        "metadata": { "name": name },
        "spec": { "orgId": org, "mode": "push" },
    }))?)
}

fn parsed_log(op: &OperatorProcess) -> Result<Vec<serde_json::Value>> {
    Ok(op
        .log_lines()?
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[tokio::test]
async fn without_id_flags_the_identity_comes_from_the_one_cluster() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("cluster-id").await?;
    let api: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);

    // No Cluster: /readyz names `cluster` and why; no controller starts.
    let mut first = spawn_without_ids(&env, &ns, "op-none")?;
    let body = poll_until(LIMIT, "/readyz 503 naming cluster", || async {
        let (code, body) = first.probe("/readyz").await.ok()?;
        (code == 503 && body.contains("\"cluster\"") && body.contains("no Cluster in"))
            .then_some(body)
    })
    .await?;
    ensure!(body.contains(&ns), "names the namespace: {body}");
    poll_until(LIMIT, "the wait in the log", || async {
        parsed_log(&first)
            .ok()?
            .iter()
            .any(|l| {
                l["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("waiting for the Cluster"))
                    && l["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("no Cluster in"))
            })
            .then_some(())
    })
    .await?;
    first.ensure_running()?;
    let _ = first.terminate();
    ensure!(
        !parsed_log(&first)?
            .iter()
            .any(|l| l["msg"] == "starting controllers"),
        "controllers started without an identity"
    );

    // Two Clusters: still waiting, both named.
    api.create(
        &PostParams::default(),
        &cluster_named("cluster-cr", "org-cr")?,
    )
    .await?;
    api.create(
        &PostParams::default(),
        &cluster_named("cluster-extra", "org-cr")?,
    )
    .await?;
    let mut op = spawn_without_ids(&env, &ns, "op-cr")?;
    let body = poll_until(LIMIT, "/readyz 503 naming two Clusters", || async {
        let (code, body) = op.probe("/readyz").await.ok()?;
        (code == 503 && body.contains("\"cluster\"") && body.contains("2 Clusters")).then_some(body)
    })
    .await?;
    ensure!(
        body.contains("cluster-cr") && body.contains("cluster-extra"),
        "names both: {body}"
    );
    ensure!(
        !parsed_log(&op)?
            .iter()
            .any(|l| l["msg"] == "starting controllers"),
        "controllers started with two Clusters"
    );

    // One left: its name and orgId become the operator's ids.
    api.delete("cluster-extra", &DeleteParams::default())
        .await?;
    poll_until(LIMIT, "/readyz/cluster 200", || async {
        let (code, _) = op.probe("/readyz/cluster").await.ok()?;
        (code == 200).then_some(())
    })
    .await?;
    let instances: Api<vworkspace_api::application_instance::ApplicationInstance> =
        Api::namespaced(env.client.clone(), &ns);
    instances
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1",
                "kind": "ApplicationInstance",
                "metadata": { "name": "app" },
                "spec": { "chart": { "repository": "https://charts.example.org", "name": "wiki", "version": "1.0.0" } }
            }))?,
        )
        .await?;
    let event = poll_until(LIMIT, "an audit event of the instance", || async {
        op.audit_events()
            .ok()?
            .into_iter()
            .find(|e| e["kind"] == "ReconcileStarted")
    })
    .await?;
    ensure!(
        event["cluster_id"] == "cluster-cr" && event["org_id"] == "org-cr",
        "the audit event carries the Cluster's ids: {event}"
    );
    let lines = parsed_log(&op)?;
    let started = lines
        .iter()
        .position(|l| l["msg"] == "starting controllers")
        .context("the controllers started")?;
    let waited = lines
        .iter()
        .position(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("waiting for the Cluster"))
        })
        .context("the wait was logged")?;
    ensure!(waited < started, "waited before starting");
    ensure!(
        lines[waited]["cluster_id"] == "",
        "no id is invented while waiting: {}",
        lines[waited]
    );
    for line in &lines[started..] {
        ensure!(
            line["cluster_id"] == "cluster-cr" && line["org_id"] == "org-cr",
            "every line after the start carries the Cluster's ids: {line}"
        );
    }

    // The ids are fixed for the process: a changed orgId asks for a restart.
    api.patch(
        "cluster-cr",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "orgId": "org-renamed" } })),
    )
    .await?;
    let body = poll_until(
        LIMIT,
        "/readyz/cluster 503 after the orgId changed",
        || async {
            let (code, body) = op.probe("/readyz/cluster").await.ok()?;
            (code == 503).then_some(body)
        },
    )
    .await?;
    ensure!(
        body.contains("org-renamed") && body.contains("restart"),
        "{body}"
    );
    op.ensure_running()?;
    Ok(())
}
