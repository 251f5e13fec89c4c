//! End-to-end: the built operator binary against the real local Kubernetes, with the
//! simulated Flux playing helm-controller. Each test runs its own operator restricted
//! to a fresh namespace (`--watch-namespace`), so tests do not see each other.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::flux::{
    FluxSimulator, helm_release_resource, helm_repository_resource,
};

const LIMIT: Duration = Duration::from_secs(60);
/// Events of an install followed by one successful upgrade, in order.
const AFTER_UPGRADE: [&str; 5] = [
    "ReconcileStarted",
    "ReconcileSucceeded",
    "ReconcileStarted",
    "HelmReleaseUpgraded",
    "ReconcileSucceeded",
];
mod common;

use common::{condition, install_crds, spawn_operator};

async fn setup(prefix: &str) -> Result<(TestEnv, String)> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace(prefix).await?;
    Ok((env, ns))
}

fn instance(name: &str, version: &str, secret: Option<&str>) -> Result<ApplicationInstance> {
    let mut spec = json!({
        "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": version },
        "values": { "replicas": 1 }
    });
    if let Some(secret) = secret {
        spec["valuesFrom"] = json!([{ "kind": "Secret", "name": secret }]);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": { "name": name },
        "spec": spec
    }))?)
}

async fn wait_condition(
    api: &Api<ApplicationInstance>,
    name: &str,
    type_: &str,
    status: &str,
) -> Result<ApplicationInstance> {
    poll_until(LIMIT, &format!("{name} {type_}={status}"), || async {
        let obj = api.get(name).await.ok()?;
        let gen_seen = obj.status.as_ref()?.observed_generation == obj.metadata.generation;
        (gen_seen && condition(&obj, type_).is_some_and(|c| c.0 == status)).then_some(obj)
    })
    .await
}

/// Event reasons on one object, oldest first.
async fn event_reasons(env: &TestEnv, ns: &str, name: &str) -> Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    let mut list = events
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
        .await?
        .items;
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    Ok(list
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

async fn wait_events(
    env: &TestEnv,
    ns: &str,
    name: &str,
    want: &[&str],
) -> Result<Vec<(String, String)>> {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let got = event_reasons(env, ns, name).await?;
        let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        if reasons == want {
            return Ok(got);
        }
        if std::time::Instant::now() > deadline {
            bail!("events on {name}: want {want:?}, have {reasons:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `rest_client_requests_total{code="201",method="POST"}` to the test cluster.
fn created_posts(m: &Exposition) -> f64 {
    m.series(
        "rest_client_requests_total",
        &[("code", "201"), ("method", "POST")],
    )
    .filter(|s| s.label("host").is_some_and(|h| h.starts_with("127.0.0.1:")))
    .map(|s| s.value)
    .sum()
}

#[tokio::test]
async fn lifecycle_events_metrics_logs_and_secrets() -> Result<()> {
    let (env, ns) = setup("ai").await?;
    let flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    // The RBAC readiness check's SelfSubjectAccessReviews (POST 201) run once at
    // start-up: count the POSTs from when they are done.
    poll_until(LIMIT, "/readyz/rbac 200", || async {
        (op.probe("/readyz/rbac").await.ok()?.0 == 200).then_some(())
    })
    .await?;
    let posts_at_start = created_posts(&Exposition::parse(&op.metrics().await?)?);
    let canary = format!("canary-{}-s3cr3t", unique_suffix());

    // The chart-value secret whose content must never leave the Secret.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "app-values" },
                "stringData": { "values.yaml": format!("adminPassword: {canary}\n") }
            }))?,
        )
        .await?;

    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    let created = api
        .create(
            &PostParams::default(),
            &instance("app", "1.0.0", Some("app-values"))?,
        )
        .await?;
    let uid = created.uid().context("uid")?;

    // Children appear, owned by the instance.
    let releases: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &ns, &helm_release_resource());
    let repos: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &ns, &helm_repository_resource());
    for api in [&releases, &repos] {
        let child = poll_until(LIMIT, "a child", || async { api.get("app").await.ok() }).await?;
        let owner = child
            .owner_references()
            .first()
            .cloned()
            .context("owner reference")?;
        ensure!(
            owner.uid == uid && owner.controller == Some(true),
            "owned by the instance: {owner:?}"
        );
    }
    let hr = releases.get("app").await?;
    ensure!(
        hr.data["spec"]["valuesFrom"][0]["name"] == "app-values",
        "valuesFrom passed through by name"
    );

    let ready = wait_condition(&api, "app", "Ready", "True").await?;
    ensure!(
        ready
            .status
            .as_ref()
            .and_then(|s| s.helm_release.as_ref())
            .and_then(|h| h.revision)
            == Some(1)
    );
    wait_events(
        &env,
        &ns,
        "app",
        &["ReconcileStarted", "ReconcileSucceeded"],
    )
    .await?;

    // A new chart version is a new revision.
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "chart": { "version": "1.1.0" } } })),
    )
    .await?;
    poll_until(LIMIT, "revision 2", || async {
        let obj = api.get("app").await.ok()?;
        (obj.status?.helm_release?.revision == Some(2)).then_some(())
    })
    .await?;
    wait_events(&env, &ns, "app", &AFTER_UPGRADE).await?;

    // Flux fails the next upgrade.
    flux.fail_version("2.0.0", "pre-upgrade hook failed: job db-migrate timed out");
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "chart": { "version": "2.0.0" } } })),
    )
    .await?;
    let failed = wait_condition(&api, "app", "Failed", "True").await?;
    let (_, reason, message) = condition(&failed, "Failed").context("Failed")?;
    ensure!(reason == "UpgradeFailed", "reason {reason}");
    ensure!(
        message.contains("db-migrate timed out"),
        "message {message}"
    );
    let events = wait_events(
        &env,
        &ns,
        "app",
        &[&AFTER_UPGRADE[..], &["ReconcileStarted", "ReconcileFailed"]].concat(),
    )
    .await?;
    ensure!(
        events[6].1.contains("db-migrate timed out"),
        "ReconcileFailed carries the reason: {:?}",
        events[6]
    );

    // Metrics: the spec histogram and counters agree with controller-runtime's, exactly.
    op.ensure_running()?;
    let metrics = op.metrics().await?;
    let m = Exposition::parse(&metrics)?;
    const AI: (&str, &str) = ("controller", "applicationinstance");
    let ai = |result: &str| {
        m.value(
            "vworkspace_operator_reconcile_total",
            &[AI, ("result", result)],
        )
        .unwrap_or(-1.0)
    };
    let total = ai("success") + ai("requeue") + ai("error");
    ensure!(
        ai("success") >= 3.0,
        "at least one successful reconcile per generation: {metrics}"
    );
    ensure!(ai("error") == 0.0, "no reconcile failed");
    let count = m.value(
        "vworkspace_operator_reconcile_duration_seconds_count",
        &[AI],
    );
    ensure!(
        count == Some(total),
        "histogram count {count:?} == reconciles {total}"
    );
    let cr_total: f64 = ["success", "error", "requeue", "requeue_after"]
        .iter()
        .filter_map(|r| m.value("controller_runtime_reconcile_total", &[AI, ("result", r)]))
        .sum();
    ensure!(
        cr_total == total,
        "controller_runtime_reconcile_total {cr_total} == {total}"
    );
    let les: Vec<String> = m
        .series(
            "vworkspace_operator_reconcile_duration_seconds_bucket",
            &[AI],
        )
        .filter_map(|s| s.label("le").map(str::to_owned))
        .collect();
    ensure!(
        les == [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
            "+Inf"
        ] || les
            == [
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
                "+Inf"
            ],
        "spec buckets, got {les:?}"
    );
    let inf = m.value(
        "vworkspace_operator_reconcile_duration_seconds_bucket",
        &[AI, ("le", "+Inf")],
    );
    ensure!(inf == Some(total), "+Inf bucket counts every reconcile");
    for controller in ["operation", "cluster"] {
        for result in ["success", "requeue", "error"] {
            let v = m.value(
                "vworkspace_operator_reconcile_total",
                &[("controller", controller), ("result", result)],
            );
            ensure!(
                v == Some(0.0),
                "{controller}/{result} starts at 0, got {v:?}"
            );
        }
    }
    ensure!(m.value("workqueue_depth", &[AI, ("name", "applicationinstance")]) == Some(0.0));
    // Every Event was a POST answered 201, counted by the client layer with the API
    // server's host:port.
    let posts_created = created_posts(&m) - posts_at_start;
    // After its start-up access reviews the operator POSTs nothing but Events here, so
    // the count is exact.
    ensure!(
        posts_created == events.len() as f64,
        "rest_client POST 201s {posts_created} == {} Events",
        events.len()
    );
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        ensure!(
            m.value(name, &[]).is_some_and(|v| v > 0.0),
            "{name} exposed"
        );
    }
    ensure!(
        m.value(
            "leader_election_master_status",
            &[("name", "vworkspace-operator")]
        ) == Some(1.0)
    );
    ensure!(
        !metrics.contains(&ns),
        "no per-object label (namespace) in metrics"
    );
    ensure!(!metrics.contains(&canary));
    promtool_accepts(&metrics)?;

    // Logs: every line is JSON with zap's keys and the always-set fields.
    let lines = op.log_lines()?;
    ensure!(!lines.is_empty(), "the operator logged");
    let mut saw_reconcile_fields = false;
    for line in &lines {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        for key in [
            "level",
            "ts",
            "msg",
            "cluster_id",
            "org_id",
            "operator_version",
        ] {
            ensure!(v.get(key).is_some(), "{key} missing in {line}");
        }
        ensure!(
            ["debug", "info", "warn", "error"].contains(&v["level"].as_str().unwrap_or("")),
            "level in {line}"
        );
        ensure!(v["cluster_id"] == "cluster-e2e" && v["org_id"] == "org-e2e");
        if v["msg"] == "reconcile started" {
            for key in [
                "controller",
                "reconcileID",
                "namespace",
                "application_instance",
            ] {
                ensure!(
                    v.get(key).is_some(),
                    "{key} missing in reconcile line {line}"
                );
            }
            saw_reconcile_fields = true;
        }
    }
    ensure!(
        saw_reconcile_fields,
        "reconcile lines carry the reconcile fields"
    );

    // Audit events mirror the Kubernetes Events, one per transition, with stable ids.
    let audit = op.audit_events()?;
    let kinds: Vec<&str> = audit.iter().filter_map(|e| e["kind"].as_str()).collect();
    ensure!(
        kinds == events.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        "audit {kinds:?}"
    );
    let ids: BTreeSet<&str> = audit
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    ensure!(ids.len() == audit.len(), "event ids are unique");
    for e in &audit {
        ensure!(
            e["cluster_id"] == "cluster-e2e"
                && e["org_id"] == "org-e2e"
                && e["namespace"] == ns.as_str()
        );
        ensure!(
            e["application_instance"] == "app"
                && e["operator_version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with('v'))
        );
    }

    // The ids of the transitions still recorded in status, recomputed from the status
    // alone (what the control-plane link's replay does), are the ids published live.
    let recorded = api.get("app").await?;
    let transitions = &recorded.status.as_ref().context("status")?.transitions;
    ensure!(
        transitions.len() >= 3,
        "status records the announced kinds: {transitions:?}"
    );
    for record in transitions {
        let id = record.event_id("cluster-e2e", &uid);
        let live = audit
            .iter()
            .find(|e| e["event_id"] == id.as_str())
            .with_context(|| {
                format!("recorded {record:?} has id {id}, which was never published")
            })?;
        ensure!(live["kind"] == record.kind.as_str() && live["reason"] == record.reason.as_str());
    }

    // The canary never left the Secret.
    let all_logs = std::fs::read_to_string(&op.log)?;
    let all_audit = std::fs::read_to_string(&op.audit_log)?;
    ensure!(!all_logs.contains(&canary), "canary in logs");
    ensure!(!all_audit.contains(&canary), "canary in audit events");
    ensure!(
        events.iter().all(|(_, note)| !note.contains(&canary)),
        "canary in Events"
    );

    // Deleting the instance garbage-collects its children.
    api.delete("app", &DeleteParams::background()).await?;
    for api in [&releases, &repos] {
        poll_until(LIMIT, "children to be garbage-collected", || async {
            matches!(api.get_opt("app").await, Ok(None)).then_some(())
        })
        .await?;
    }
    op.ensure_running()?;
    let status = op.terminate();
    ensure!(
        status.is_some_and(|s| s.success()),
        "clean shutdown on SIGTERM: {status:?}"
    );
    drop(flux);
    Ok(())
}

fn promtool_accepts(metrics: &str) -> Result<()> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(promtool) = promtool else {
        if std::env::var("VWORKSPACE_REQUIRE_PROMTOOL").is_ok() {
            bail!("promtool is required (apt-get install prometheus)");
        }
        eprintln!("promtool not installed; skipping its check");
        return Ok(());
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(metrics.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_instances_are_rejected_or_failed_and_others_keep_reconciling() -> Result<()> {
    let (env, ns) = setup("bad").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let _op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);

    // The schema rejects what it can express: another scheme, and credentials in the
    // URL (they belong in a Secret; a URL is logged and shown in status).
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &ns,
        &kube::core::ApiResource::erase::<ApplicationInstance>(&()),
    );
    for (name, url) in [
        ("ftp", "ftp://example.org/charts"),
        ("creds", "https://deploy:hunter2@charts.example.org/stable"),
    ] {
        let mut bad = serde_json::to_value(instance(name, "1.0.0", None)?)?;
        bad["spec"]["chart"]["repository"] = json!(url);
        match dynamic
            .create(&PostParams::default(), &serde_json::from_value(bad)?)
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 422 => {
                ensure!(s.message.contains("spec.chart.repository"), "{}", s.message);
            }
            other => bail!("{url}: expected 422 from the schema, got {other:?}"),
        }
    }

    // What the schema cannot express ends Failed with a reason.
    let mut dup = instance("dup", "1.0.0", Some("s"))?;
    dup.spec.values_from.push(dup.spec.values_from[0].clone());
    api.create(&PostParams::default(), &dup).await?;
    let missing = instance("missing", "1.0.0", Some("does-not-exist"))?;
    api.create(&PostParams::default(), &missing).await?;
    api.create(&PostParams::default(), &instance("good", "1.0.0", None)?)
        .await?;

    let dup = wait_condition(&api, "dup", "Failed", "True").await?;
    ensure!(condition(&dup, "Failed").is_some_and(|c| c.1 == "InvalidSpec"));
    let missing = wait_condition(&api, "missing", "Failed", "True").await?;
    let (_, reason, message) = condition(&missing, "Failed").context("Failed")?;
    ensure!(
        reason == "ValuesSourceMissing" && message.contains("does-not-exist"),
        "{reason}: {message}"
    );
    wait_condition(&api, "good", "Ready", "True").await?;
    Ok(())
}

#[tokio::test]
async fn suspend_holds_the_release_until_cleared() -> Result<()> {
    let (env, ns) = setup("suspend").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let _op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    let releases: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &ns, &helm_release_resource());
    api.create(&PostParams::default(), &instance("held", "1.0.0", None)?)
        .await?;
    wait_condition(&api, "held", "Ready", "True").await?;

    // Suspend and bump the version in one change: Flux must be told to hold off.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": true, "chart": { "version": "1.1.0" } } })),
    )
    .await?;
    let held = wait_condition(&api, "held", "Reconciling", "False").await?;
    ensure!(
        condition(&held, "Reconciling").is_some_and(|c| c.1 == "Suspended"),
        "Reconciling=False/Suspended: {:?}",
        condition(&held, "Reconciling")
    );
    ensure!(
        condition(&held, "Ready").is_some_and(|c| c.0 == "True"),
        "Ready is kept while suspended"
    );
    let hr = releases.get("held").await?;
    ensure!(hr.data["spec"]["suspend"] == true, "HelmRelease suspended");
    ensure!(
        hr.data["status"]["history"][0]["chartVersion"] == "1.0.0",
        "nothing released while suspended"
    );

    // Resuming releases the pending version.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await?;
    poll_until(LIMIT, "the held version to be released", || async {
        let obj = api.get("held").await.ok()?;
        let hr = obj.status?.helm_release?;
        (hr.revision == Some(2) && hr.chart_version.as_deref() == Some("1.1.0")).then_some(())
    })
    .await?;
    wait_condition(&api, "held", "Ready", "True").await?;
    Ok(())
}
