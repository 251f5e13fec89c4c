//! End-to-end: the built operator binary runs Operations against the real local
//! Kubernetes, with simulated Velero, Argo and Flux and the real job controller (pods on
//! kwok). Each test has its own namespace and its own operator (`--watch-namespace`), so
//! the tests run concurrently without seeing each other.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::labels;
use vworkspace_api::operation::{Operation, OperationPhase};
use vworkspace_api::thirdparty::{Backup, Workflow};
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::fixtures::OperatorProcess;
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::argo::{ArgoOptions, ArgoSimulator};
use vworkspace_testkit::sim::engine::{Outcome, SimOptions};
use vworkspace_testkit::sim::flux::FluxSimulator;
use vworkspace_testkit::sim::velero::{VeleroOptions, VeleroSimulator};

mod common;

use common::{condition, deny_in_namespace, install_crds, remove_admission_policy, spawn_operator};

const LIMIT: Duration = Duration::from_secs(90);

/// A managed namespace allowing `templates`, a Ready ApplicationInstance `app` in it
/// (Flux simulated) and an operator for it.
struct Setup {
    env: TestEnv,
    ns: String,
    op: OperatorProcess,
    _flux: FluxSimulator,
}

async fn setup(prefix: &str, templates: &str, with_instance: bool) -> Result<Setup> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace(prefix).await?;
    allow(&env, &ns, templates).await?;
    let flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    if with_instance {
        create_instance(&env, &ns, "app").await?;
    }
    Ok(Setup {
        env,
        ns,
        op,
        _flux: flux,
    })
}

async fn allow(env: &TestEnv, ns: &str, templates: &str) -> Result<()> {
    Api::<Namespace>::all(env.client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": { "annotations": { labels::ALLOWED_OPERATION_TEMPLATES: templates } }
            })),
        )
        .await?;
    Ok(())
}

async fn create_instance(env: &TestEnv, ns: &str, name: &str) -> Result<()> {
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "ApplicationInstance",
            "metadata": { "name": name },
            "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } }
        }))?,
    )
    .await?;
    poll_until(LIMIT, &format!("{name} Ready"), || async {
        let obj = api.get(name).await.ok()?;
        condition(&obj, "Ready")
            .is_some_and(|c| c.0 == "True")
            .then_some(())
    })
    .await
}

async fn create_operation(
    env: &TestEnv,
    ns: &str,
    name: &str,
    type_: &str,
    template: &str,
    extra: Value,
) -> Result<Operation> {
    let mut spec = json!({ "type": type_, "template": template, "applicationInstance": "app" });
    if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
        spec.extend(extra);
    }
    let api: Api<Operation> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1",
                "kind": "Operation",
                "metadata": { "name": name },
                "spec": spec,
            }))?,
        )
        .await?)
}

/// Delete every Operation of `ns` while its operator runs, and wait until they are
/// gone: a Velero Operation carries a finalizer that only the operator removes, and one
/// left behind would keep its namespace (and the CRD) from ever being deleted.
async fn delete_operations(env: &TestEnv, ns: &str) -> Result<()> {
    let ops: Api<Operation> = Api::namespaced(env.client.clone(), ns);
    ops.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    poll_until(LIMIT, "every Operation deleted", || async {
        ops.list(&ListParams::default())
            .await
            .ok()
            .filter(|l| l.items.is_empty())
            .map(|_| ())
    })
    .await
}

fn phase(op: &Operation) -> Option<OperationPhase> {
    op.status.as_ref()?.phase
}

async fn wait_phase(
    env: &TestEnv,
    ns: &str,
    name: &str,
    want: OperationPhase,
) -> Result<Operation> {
    let api: Api<Operation> = Api::namespaced(env.client.clone(), ns);
    let last = std::sync::Mutex::new(None);
    let found = poll_until(LIMIT, &format!("{name} {want}"), || async {
        let obj = api.get(name).await.ok()?;
        let seen = phase(&obj);
        *last.lock().ok()? = obj.status.clone();
        (seen == Some(want)).then_some(obj)
    })
    .await;
    found.with_context(|| format!("last status of {name}: {:?}", last.lock().ok()))
}

/// (reason, note) of the Events on one object, oldest first.
async fn events(env: &TestEnv, ns: &str, name: &str) -> Result<Vec<(String, String)>> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), ns);
    let mut list = api
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
        let got = events(env, ns, name).await?;
        let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        if reasons == want {
            return Ok(got);
        }
        if std::time::Instant::now() > deadline {
            bail!("events on {name}: want {want:?}, have {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Events on `name` once one has reason `last` (Events about one Operation are
/// written in order, so the earlier ones are there too).
async fn wait_until_event(
    env: &TestEnv,
    ns: &str,
    name: &str,
    last: &str,
) -> Result<Vec<(String, String)>> {
    poll_until(LIMIT, &format!("{last} on {name}"), || async {
        let got = events(env, ns, name).await.ok()?;
        got.iter().any(|(r, _)| r == last).then_some(got)
    })
    .await
}

/// The audit events about Operation `uid`, as (kind, reason).
fn audit_of(op: &OperatorProcess, uid: &str) -> Result<Vec<Value>> {
    Ok(op
        .audit_events()?
        .into_iter()
        .filter(|e| e["operation_id"] == uid)
        .collect())
}

async fn operation_total(
    op: &OperatorProcess,
    type_: &str,
    engine: &str,
    outcome: &str,
) -> Result<f64> {
    let text = op.metrics().await?;
    let expo = Exposition::parse(&text)?;
    expo.value(
        "vworkspace_operator_operation_total",
        &[("type", type_), ("engine", engine), ("outcome", outcome)],
    )
    .with_context(|| format!("no operation_total series for {type_}/{engine}/{outcome}"))
}

fn slow_velero(outcome: Outcome, duration: Duration) -> VeleroOptions {
    VeleroOptions {
        sim: SimOptions {
            duration,
            outcome,
            ..SimOptions::default()
        },
        ..VeleroOptions::default()
    }
}

#[tokio::test]
async fn backup_velero_succeeds_and_deletion_removes_the_backup() -> Result<()> {
    let s = setup("opbk", "backup.velero", true).await?;
    let velero_ns = s.env.fresh_unmanaged_namespace("velero").await?;
    let _velero = VeleroSimulator::start_with(
        s.env.client.clone(),
        Some(&velero_ns),
        slow_velero(Outcome::Succeeded, Duration::from_secs(2)),
    );
    let created = create_operation(
        &s.env,
        &s.ns,
        "nightly",
        "Backup",
        "backup.velero",
        json!({ "parameters": { "veleroNamespace": velero_ns } }),
    )
    .await?;
    let uid = created.uid().context("uid")?;
    let done = wait_phase(&s.env, &s.ns, "nightly", OperationPhase::Succeeded).await?;
    let status = done.status.clone().context("status")?;
    assert_eq!(status.reason.as_deref(), Some("VeleroBackupCompleted"));
    let message = status.message.clone().unwrap_or_default();
    // Items from the Backup, bytes summed over its PodVolumeBackups (2 by default).
    assert_eq!(message, "velero.io/Backup completed; 412 items, 18.4 GiB");
    assert_eq!(
        status.outputs.get("sizeBytes").map(String::as_str),
        Some("19756849562")
    );
    assert!(
        status.outputs.contains_key("backupName"),
        "{:?}",
        status.outputs
    );

    let got = wait_events(
        &s.env,
        &s.ns,
        "nightly",
        &[
            "OperationAccepted",
            "OperationRunning",
            "OperationSucceeded",
        ],
    )
    .await?;
    assert!(got[2].1.contains("412 items, 18.4 GiB"), "{got:?}");

    let backups: Api<Backup> = Api::namespaced(s.env.client.clone(), &velero_ns);
    let ours = backups
        .list(&ListParams::default().labels(&format!("{}={uid}", labels::OPERATION_ID)))
        .await?;
    assert_eq!(ours.items.len(), 1, "exactly one Backup for the Operation");

    let kinds = poll_until(LIMIT, "three audit events", || async {
        let audit = audit_of(&s.op, &uid).ok()?;
        (audit.len() >= 3).then_some(audit)
    })
    .await?;
    let kinds: Vec<&str> = kinds
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "OperationAccepted",
            "OperationRunning",
            "OperationSucceeded"
        ]
    );
    for e in audit_of(&s.op, &uid)? {
        assert_eq!(e["application_instance"], "app", "{e}");
    }
    assert_eq!(
        operation_total(&s.op, "Backup", "velero", "succeeded").await?,
        1.0
    );
    assert_eq!(
        operation_total(&s.op, "Backup", "velero", "failed").await?,
        0.0
    );

    // Deleting the Operation deletes the Backup in Velero's namespace (the finalizer).
    assert!(
        done.finalizers()
            .iter()
            .any(|f| f == vworkspace_api::operation::FINALIZER)
    );
    let ops: Api<Operation> = Api::namespaced(s.env.client.clone(), &s.ns);
    ops.delete("nightly", &DeleteParams::default()).await?;
    poll_until(LIMIT, "the Backup and the Operation gone", || async {
        let b = backups.list(&ListParams::default()).await.ok()?;
        let o = ops.get_opt("nightly").await.ok()?;
        (b.items.is_empty() && o.is_none()).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn engine_failures_end_the_operation_failed() -> Result<()> {
    let s = setup("opfail", "backup.velero,runbook.workflow", true).await?;
    let velero_ns = s.env.fresh_unmanaged_namespace("velero").await?;
    let _velero = VeleroSimulator::start_with(
        s.env.client.clone(),
        Some(&velero_ns),
        VeleroOptions {
            sim: SimOptions {
                outcome: Outcome::Failed,
                failure_reason: Some("object storage unreachable".to_owned()),
                ..SimOptions::default()
            },
            ..VeleroOptions::default()
        },
    );
    let _argo = ArgoSimulator::start_with(
        s.env.client.clone(),
        Some(&s.ns),
        ArgoOptions {
            sim: SimOptions {
                outcome: Outcome::Failed,
                failure_reason: Some("step migrate exited 3".to_owned()),
                ..SimOptions::default()
            },
            ..ArgoOptions::default()
        },
    );
    create_operation(
        &s.env,
        &s.ns,
        "bk",
        "Backup",
        "backup.velero",
        json!({ "parameters": { "veleroNamespace": velero_ns } }),
    )
    .await?;
    create_operation(
        &s.env,
        &s.ns,
        "wf",
        "Runbook",
        "runbook.workflow",
        json!({ "parameters": { "workflowTemplate": "rotate-keys" } }),
    )
    .await?;
    let bk = wait_phase(&s.env, &s.ns, "bk", OperationPhase::Failed).await?;
    let bk_status = bk.status.clone().context("status")?;
    assert_eq!(bk_status.reason.as_deref(), Some("VeleroBackupFailed"));
    let last = events(&s.env, &s.ns, "bk").await?;
    let failed = last
        .iter()
        .find(|(r, _)| r == "OperationFailed")
        .context("OperationFailed")?;
    assert!(failed.1.contains("object storage unreachable"), "{last:?}");

    let wf = wait_phase(&s.env, &s.ns, "wf", OperationPhase::Failed).await?;
    assert_eq!(
        wf.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("WorkflowFailed")
    );
    poll_until(LIMIT, "failed counted", || async {
        let v = operation_total(&s.op, "Backup", "velero", "failed")
            .await
            .ok()?;
        let w = operation_total(&s.op, "Runbook", "workflow", "failed")
            .await
            .ok()?;
        (v == 1.0 && w == 1.0).then_some(())
    })
    .await?;
    delete_operations(&s.env, &s.ns).await?;
    Ok(())
}

#[tokio::test]
async fn runcommand_job_runs_for_real() -> Result<()> {
    let s = setup("opjob", "runcommand.job", true).await?;
    create_operation(
        &s.env,
        &s.ns,
        "cmd",
        "RunCommand",
        "runcommand.job",
        json!({ "parameters": { "image": "busybox:1.36", "command": "echo done" } }),
    )
    .await?;
    let done = wait_phase(&s.env, &s.ns, "cmd", OperationPhase::Succeeded).await?;
    let status = done.status.clone().context("status")?;
    let child = status.child_ref.clone().context("childRef")?;
    assert_eq!(child.kind, "Job");
    let job = Api::<Job>::namespaced(s.env.client.clone(), &s.ns)
        .get(&child.name)
        .await?;
    ensure!(
        job.status.as_ref().and_then(|s| s.succeeded) == Some(1),
        "the Job itself completed: {:?}",
        job.status
    );
    assert!(!status.outputs.is_empty(), "outputs recorded: {status:?}");
    // Running may be skipped when the pod finishes before the operator saw it active;
    // acceptance and success are always announced, once each.
    let got = events(&s.env, &s.ns, "cmd").await?;
    let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    ensure!(
        reasons
            == [
                "OperationAccepted",
                "OperationRunning",
                "OperationSucceeded"
            ]
            || reasons == ["OperationAccepted", "OperationSucceeded"],
        "events on cmd: {got:?}"
    );

    // A command whose pod exits 3 (kwok, steered by a pod annotation) with no retries:
    // the Job fails with BackoffLimitExceeded and so does the Operation, in those words.
    create_operation(
        &s.env,
        &s.ns,
        "cmd-fails",
        "RunCommand",
        "runcommand.job",
        json!({ "parameters": {
            "image": "busybox:1.36",
            "command": "exit 3",
            "backoffLimit": 0,
            "podAnnotations": { vworkspace_testkit::cluster::EXIT_CODE_ANNOTATION: "3" },
        } }),
    )
    .await?;
    let failed = wait_phase(&s.env, &s.ns, "cmd-fails", OperationPhase::Failed).await?;
    let status = failed.status.context("status")?;
    ensure!(
        status.reason.as_deref() == Some("JobBackoffLimitExceeded"),
        "reason: {status:?}"
    );
    let got = events(&s.env, &s.ns, "cmd-fails").await?;
    ensure!(
        got.last().is_some_and(|(r, _)| r == "OperationFailed"),
        "events on cmd-fails: {got:?}"
    );
    Ok(())
}

#[tokio::test]
async fn preconditions_block_and_clear() -> Result<()> {
    // Nothing allowed yet, and no instance.
    let s = setup("oppre", "restore.velero", false).await?;
    let velero_ns = s.env.fresh_unmanaged_namespace("velero").await?;
    let _velero = VeleroSimulator::start(s.env.client.clone(), Some(&velero_ns));
    create_operation(
        &s.env,
        &s.ns,
        "bk",
        "Backup",
        "backup.velero",
        json!({ "parameters": { "veleroNamespace": velero_ns } }),
    )
    .await?;
    let blocked = wait_phase(&s.env, &s.ns, "bk", OperationPhase::Blocked).await?;
    assert_eq!(
        blocked.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("TemplateNotAllowed")
    );
    let got = wait_events(&s.env, &s.ns, "bk", &["OperationBlocked"]).await?;
    assert!(got[0].1.contains("backup.velero"), "{got:?}");

    allow(&s.env, &s.ns, "backup.velero,runbook.workflow").await?;
    let api: Api<Operation> = Api::namespaced(s.env.client.clone(), &s.ns);
    poll_until(LIMIT, "blocked for the missing instance", || async {
        let o = api.get("bk").await.ok()?;
        (o.status.as_ref()?.reason.as_deref() == Some("ApplicationInstanceNotFound")).then_some(())
    })
    .await?;
    create_instance(&s.env, &s.ns, "app").await?;
    wait_phase(&s.env, &s.ns, "bk", OperationPhase::Succeeded).await?;
    let got = events(&s.env, &s.ns, "bk").await?;
    let blocked: Vec<&String> = got
        .iter()
        .filter(|(r, _)| r == "OperationBlocked")
        .map(|(_, n)| n)
        .collect();
    // A new reason while still Blocked is not a new transition: one OperationBlocked,
    // then the way to success.
    assert_eq!(blocked.len(), 1, "{got:?}");
    let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(reasons.first(), Some(&"OperationBlocked"), "{got:?}");
    assert_eq!(reasons.get(1), Some(&"OperationAccepted"), "{got:?}");
    assert_eq!(reasons.last(), Some(&"OperationSucceeded"), "{got:?}");

    // Two mutating Operations on one instance: the second waits for the first.
    let _argo = ArgoSimulator::start_with(
        s.env.client.clone(),
        Some(&s.ns),
        ArgoOptions {
            sim: SimOptions {
                duration: Duration::from_secs(3),
                ..SimOptions::default()
            },
            ..ArgoOptions::default()
        },
    );
    let params = json!({ "parameters": { "workflowTemplate": "rotate-keys" } });
    create_operation(
        &s.env,
        &s.ns,
        "first",
        "Runbook",
        "runbook.workflow",
        params.clone(),
    )
    .await?;
    create_operation(
        &s.env,
        &s.ns,
        "second",
        "Runbook",
        "runbook.workflow",
        params,
    )
    .await?;
    let second = wait_phase(&s.env, &s.ns, "second", OperationPhase::Blocked).await?;
    assert_eq!(
        second.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("MutatingOperationRunning")
    );
    let first = wait_phase(&s.env, &s.ns, "first", OperationPhase::Succeeded).await?;
    let second = wait_phase(&s.env, &s.ns, "second", OperationPhase::Succeeded).await?;
    let started = |o: &Operation| {
        o.status
            .as_ref()
            .and_then(|s| s.started_at.clone())
            .map(|t| t.0)
    };
    let completed = |o: &Operation| {
        o.status
            .as_ref()
            .and_then(|s| s.completed_at.clone())
            .map(|t| t.0)
    };
    assert!(
        started(&second) >= completed(&first),
        "the second started only after the first ended"
    );
    let audit = audit_of(&s.op, &second.uid().context("uid")?)?;
    let blocked_ids: Vec<&Value> = audit
        .iter()
        .filter(|e| e["kind"] == "OperationBlocked")
        .map(|e| &e["event_id"])
        .collect();
    ensure!(!blocked_ids.is_empty(), "audit of the second: {audit:?}");
    delete_operations(&s.env, &s.ns).await?;
    Ok(())
}

#[tokio::test]
async fn timeout_and_cancel() -> Result<()> {
    let s = setup("opstop", "backup.velero,runbook.workflow", true).await?;
    let velero_ns = s.env.fresh_unmanaged_namespace("velero").await?;
    let _velero = VeleroSimulator::start_with(
        s.env.client.clone(),
        Some(&velero_ns),
        slow_velero(Outcome::Succeeded, Duration::from_secs(60)),
    );
    let _argo = ArgoSimulator::start_with(
        s.env.client.clone(),
        Some(&s.ns),
        ArgoOptions {
            sim: SimOptions {
                duration: Duration::from_secs(60),
                ..SimOptions::default()
            },
            ..ArgoOptions::default()
        },
    );
    create_operation(
        &s.env,
        &s.ns,
        "late",
        "Backup",
        "backup.velero",
        json!({ "timeout": "5s", "parameters": { "veleroNamespace": velero_ns } }),
    )
    .await?;
    create_operation(
        &s.env,
        &s.ns,
        "wf",
        "Runbook",
        "runbook.workflow",
        json!({ "parameters": { "workflowTemplate": "rotate-keys" } }),
    )
    .await?;
    let late = wait_phase(&s.env, &s.ns, "late", OperationPhase::Failed).await?;
    assert_eq!(
        late.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("Timeout")
    );

    let wf = wait_phase(&s.env, &s.ns, "wf", OperationPhase::Running).await?;
    let child = wf
        .status
        .as_ref()
        .and_then(|s| s.child_ref.clone())
        .context("childRef")?;
    let ops: Api<Operation> = Api::namespaced(s.env.client.clone(), &s.ns);
    ops.patch(
        "wf",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "cancel": true } })),
    )
    .await?;
    wait_phase(&s.env, &s.ns, "wf", OperationPhase::Cancelled).await?;
    let workflows: Api<Workflow> = Api::namespaced(s.env.client.clone(), &s.ns);
    let w = workflows.get(&child.name).await?;
    let shutdown = serde_json::to_value(&w)?["spec"]["shutdown"].clone();
    assert_eq!(shutdown, "Terminate");
    delete_operations(&s.env, &s.ns).await?;
    Ok(())
}

#[tokio::test]
async fn spec_is_immutable_except_cancel() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("opcel").await?;
    create_operation(&env, &ns, "x", "Backup", "backup.velero", json!({})).await?;
    let ops: Api<Operation> = Api::namespaced(env.client.clone(), &ns);
    let err = ops
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "template": "backup.volsync" } })),
        )
        .await
        .err()
        .context("changing the template must be refused")?;
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 422, "{status:?}"),
        other => bail!("unexpected error {other}"),
    }
    ops.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "cancel": true } })),
    )
    .await
    .context("cancel is allowed")?;
    Ok(())
}

/// The catalog ConfigMap: an invalid one is reported on itself and the built-in catalog
/// stays in force; a valid one overrides (here: the image a command runs in).
#[tokio::test]
async fn the_catalog_configmap_overrides_or_is_reported() -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let s = setup("opcat", "runcommand.job", true).await?;
    let maps: Api<ConfigMap> = Api::namespaced(s.env.client.clone(), &s.ns);
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": { "name": "vworkspace-operation-catalog" },
            "data": { "no.such.template": "timeout: 5m" }
        }))?,
    )
    .await?;
    // Without an image (the built-in catalog pins none) the command cannot run.
    create_operation(
        &s.env,
        &s.ns,
        "noimage",
        "RunCommand",
        "runcommand.job",
        json!({ "parameters": { "command": "echo hi" } }),
    )
    .await?;
    let failed = wait_phase(&s.env, &s.ns, "noimage", OperationPhase::Failed).await?;
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("InvalidParameters")
    );
    let warned = poll_until(LIMIT, "the Warning Event on the ConfigMap", || async {
        let got = events(&s.env, &s.ns, "vworkspace-operation-catalog")
            .await
            .ok()?;
        got.into_iter()
            .find(|(r, _)| r == "OperationCatalogInvalid")
    })
    .await?;
    assert!(warned.1.contains("no.such.template"), "{warned:?}");

    let patched = maps
        .patch(
            "vworkspace-operation-catalog",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "no.such.template": null, "runcommand.job": "image: busybox:1.36" } })),
        )
        .await?;
    // Created right after the change, with no waiting: the Operation's first look reads
    // the catalog fresh, so the change applies to it although the ConfigMap's watch
    // event may not have reached the operator yet.
    create_operation(
        &s.env,
        &s.ns,
        "withimage",
        "RunCommand",
        "runcommand.job",
        json!({ "parameters": { "command": "echo hi" } }),
    )
    .await?;
    let done = wait_phase(&s.env, &s.ns, "withimage", OperationPhase::Succeeded).await?;
    assert_eq!(
        done.status
            .as_ref()
            .and_then(|s| s.catalog_revision.clone()),
        patched.resource_version(),
        "the Operation records the catalog it ran under"
    );
    assert_eq!(
        failed
            .status
            .as_ref()
            .and_then(|s| s.catalog_revision.as_deref()),
        Some("builtin"),
        "an invalid ConfigMap leaves the built-in catalog in force"
    );
    let child = done.status.and_then(|s| s.child_ref).context("childRef")?;
    let job = Api::<Job>::namespaced(s.env.client.clone(), &s.ns)
        .get(&child.name)
        .await?;
    let image = job
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(image.as_deref(), Some("busybox:1.36"));
    Ok(())
}

/// Label that makes the admission policy of [`deny_operation_updates`] refuse updates of
/// an Operation's metadata (its finalizer).
const DENY_UPDATES: &str = "e2e.vworkspace.io/deny-updates";

/// Make the API server deny updates (not status writes) of the Operations in `ns` that
/// carry [`DENY_UPDATES`], and wait until the policy is in force. Scoped to `ns` by the
/// binding, so concurrent tests are not affected. Returns the policy's name.
async fn deny_operation_updates(env: &TestEnv, ns: &str) -> Result<String> {
    let name = format!("vws-deny-op-updates-{ns}");
    deny_in_namespace(
        env,
        ns,
        &name,
        json!({ "apiGroups": ["vworkspace.io"], "apiVersions": ["v1alpha1"], "operations": ["UPDATE"], "resources": ["operations"] }),
        &format!("!has(object.metadata.labels) || !('{DENY_UPDATES}' in object.metadata.labels)"),
        "updates of this Operation are denied by the test",
    )
    .await?;
    // In force once an update of a labelled probe is denied (no operator runs yet).
    let api: Api<Operation> = Api::namespaced(env.client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "Operation",
            "metadata": { "name": "probe", "labels": { DENY_UPDATES: "true" } },
            "spec": { "type": "Backup", "template": "backup.velero", "applicationInstance": "app" },
        }))?,
    )
    .await?;
    poll_until(LIMIT, "the admission policy to deny updates", || async {
        let write = api
            .patch(
                "probe",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { "probe": "x" } } })),
            )
            .await;
        matches!(write, Err(kube::Error::Api(ref s)) if s.code == 422 || s.code == 403)
            .then_some(())
    })
    .await?;
    api.delete("probe", &DeleteParams::default()).await?;
    poll_until(LIMIT, "the probe gone", || async {
        api.get_opt("probe").await.ok()?.is_none().then_some(())
    })
    .await?;
    Ok(name)
}

/// Make the API server refuse (422) every create of a Velero Backup in `ns`, and wait
/// until the policy is in force. Scoped to `ns` by the binding, so concurrent tests are
/// not affected. Returns the policy's name.
async fn deny_backup_creates(env: &TestEnv, ns: &str) -> Result<String> {
    let name = format!("vws-deny-backups-{ns}");
    deny_in_namespace(
        env,
        ns,
        &name,
        json!({ "apiGroups": ["velero.io"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["backups"] }),
        "false",
        "Backups are refused here by the test",
    )
    .await?;
    let backups: Api<Backup> = Api::namespaced(env.client.clone(), ns);
    poll_until(LIMIT, "the admission policy to refuse Backups", || async {
        let probe: Backup = serde_json::from_value(json!({
            "apiVersion": "velero.io/v1",
            "kind": "Backup",
            "metadata": { "name": "probe" },
            "spec": { "includedNamespaces": ["x"] },
        }))
        .ok()?;
        match backups.create(&PostParams::default(), &probe).await {
            Err(kube::Error::Api(ref s)) if s.code == 422 || s.code == 403 => Some(()),
            Ok(_) => {
                let _ = backups.delete("probe", &DeleteParams::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await?;
    Ok(name)
}

/// A Backup is accepted and handed out in one reconcile; when the API server refuses its
/// child for good, both the acceptance and the failure are announced (one Event and one
/// audit event each), the Operation ends Failed/ChildCreateFailed with the server's
/// words, and it is counted once.
#[tokio::test]
async fn a_backup_refused_at_its_create_is_accepted_then_failed() -> Result<()> {
    let s = setup("oprej", "backup.velero", true).await?;
    let velero_ns = s.env.fresh_unmanaged_namespace("velero").await?;
    let policy = deny_backup_creates(&s.env, &velero_ns).await?;
    let created = create_operation(
        &s.env,
        &s.ns,
        "refused",
        "Backup",
        "backup.velero",
        json!({ "parameters": { "veleroNamespace": velero_ns } }),
    )
    .await?;
    let uid = created.uid().context("uid")?;
    let failed = wait_phase(&s.env, &s.ns, "refused", OperationPhase::Failed).await;
    remove_policy(&s.env, &policy).await;
    let failed = failed?;
    let status = failed.status.clone().context("status")?;
    assert_eq!(status.reason.as_deref(), Some("ChildCreateFailed"));
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains("Backups are refused here by the test"),
        "the server's words: {message}"
    );
    assert!(status.started_at.is_some(), "it was accepted: {status:?}");
    let got = wait_events(
        &s.env,
        &s.ns,
        "refused",
        &["OperationAccepted", "OperationFailed"],
    )
    .await?;
    assert!(got[1].1.contains("refused here"), "{got:?}");
    let audit = poll_until(LIMIT, "two audit events", || async {
        let audit = audit_of(&s.op, &uid).ok()?;
        (audit.len() >= 2).then_some(audit)
    })
    .await?;
    let kinds: Vec<&str> = audit.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["OperationAccepted", "OperationFailed"]);
    for record in &status.transitions {
        let id = record.event_id(common::CLUSTER_ID, &uid);
        assert!(
            audit.iter().any(|e| e["event_id"] == id.as_str()),
            "recorded {record:?} was published with id {id}"
        );
    }
    assert_eq!(
        operation_total(&s.op, "Backup", "velero", "failed").await?,
        1.0
    );
    let backups: Api<Backup> = Api::namespaced(s.env.client.clone(), &velero_ns);
    assert!(
        backups.list(&ListParams::default()).await?.items.is_empty(),
        "no Backup was created"
    );
    delete_operations(&s.env, &s.ns).await?;
    Ok(())
}

async fn remove_policy(env: &TestEnv, name: &str) {
    let _ = remove_admission_policy(env, name).await;
}

/// `(status, reason, message)` of an Operation's condition `type_`.
fn op_condition(op: &Operation, type_: &str) -> Option<(String, String, String)> {
    op.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A reconcile that fails (the API server refuses the finalizer the Velero child needs)
/// is put on the Operation as `Reconciling=True/ApplyFailed` with one Warning Event and
/// one audit event, and cleared by the next successful reconcile. On the way the
/// Operation goes Blocked → Accepted → Blocked → Accepted: each entry is its own Event
/// and audit event with its own id.
#[tokio::test]
async fn errors_reach_the_operation_and_blocked_twice_is_announced_twice() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("operr").await?;
    let policy = deny_operation_updates(&env, &ns).await?;
    allow(&env, &ns, "runbook.workflow").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    create_instance(&env, &ns, "app").await?;
    let velero_ns = env.fresh_unmanaged_namespace("velero").await?;
    let _velero = VeleroSimulator::start_with(
        env.client.clone(),
        Some(&velero_ns),
        slow_velero(Outcome::Succeeded, Duration::from_secs(2)),
    );
    let api: Api<Operation> = Api::namespaced(env.client.clone(), &ns);
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1",
                "kind": "Operation",
                "metadata": { "name": "bk", "labels": { DENY_UPDATES: "true" } },
                "spec": {
                    "type": "Backup", "template": "backup.velero", "applicationInstance": "app",
                    "parameters": { "veleroNamespace": velero_ns }
                },
            }))?,
        )
        .await?;
    let uid = created.uid().context("uid")?;
    // 1. Blocked: the template is not allowed.
    wait_events(&env, &ns, "bk", &["OperationBlocked"]).await?;
    // 2. Accepted, then the create step fails on the finalizer, again and again.
    allow(&env, &ns, "backup.velero").await?;
    let reported = poll_until(LIMIT, "Reconciling=True/ApplyFailed", || async {
        let o = api.get("bk").await.ok()?;
        op_condition(&o, "Reconciling")
            .filter(|c| c.0 == "True" && c.1 == "ApplyFailed")
            .map(|c| (c.2, o))
    })
    .await?;
    ensure!(
        reported.0.contains("updating the finalizer") && reported.0.contains("denied by the test"),
        "the message says what failed and why: {}",
        reported.0
    );
    ensure!(
        phase(&reported.1) == Some(OperationPhase::Accepted),
        "the phase is kept: {:?}",
        reported.1.status
    );
    let got = wait_events(
        &env,
        &ns,
        "bk",
        &["OperationBlocked", "OperationAccepted", "ApplyFailed"],
    )
    .await?;
    ensure!(
        got[2].1 == reported.0,
        "the Event carries the condition's message"
    );
    // Let it retry against the denial: still one ApplyFailed Event.
    poll_until(LIMIT, "several denied finalizer updates", || async {
        let metrics = Exposition::parse(&op.metrics().await.ok()?).ok()?;
        let denied = ["422", "403"]
            .iter()
            .map(|code| {
                metrics.sum(
                    "rest_client_requests_total",
                    &[("method", "PATCH"), ("code", code)],
                )
            })
            .sum::<f64>();
        (denied >= 3.0).then_some(())
    })
    .await?;
    // 3. Blocked again: the template is no longer allowed (nothing was handed out yet).
    allow(&env, &ns, "runbook.workflow").await?;
    let blocked = poll_until(LIMIT, "Blocked again, error cleared", || async {
        let o = api.get("bk").await.ok()?;
        let cleared = op_condition(&o, "Reconciling").is_some_and(|c| c.0 == "False");
        (phase(&o) == Some(OperationPhase::Blocked) && cleared).then_some(o)
    })
    .await?;
    let reconciling = op_condition(&blocked, "Reconciling").context("Reconciling")?;
    ensure!(reconciling.1 == "ReconcileSucceeded", "{reconciling:?}");
    // 4. The fault is lifted and the template allowed: it runs to its end.
    api.patch(
        "bk",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { DENY_UPDATES: null } } })),
    )
    .await?;
    allow(&env, &ns, "backup.velero").await?;
    let done = wait_phase(&env, &ns, "bk", OperationPhase::Succeeded).await?;
    let reconciling = op_condition(&done, "Reconciling").context("Reconciling")?;
    ensure!(reconciling.0 == "False", "{reconciling:?}");
    let got = wait_events(
        &env,
        &ns,
        "bk",
        &[
            "OperationBlocked",
            "OperationAccepted",
            "ApplyFailed",
            "OperationBlocked",
            "OperationAccepted",
            "OperationRunning",
            "OperationSucceeded",
        ],
    )
    .await?;
    let audit = poll_until(LIMIT, "seven audit events", || async {
        let audit = audit_of(&op, &uid).ok()?;
        (audit.len() >= got.len()).then_some(audit)
    })
    .await?;
    let kinds: Vec<&str> = audit.iter().filter_map(|e| e["kind"].as_str()).collect();
    let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    ensure!(kinds == reasons, "audit {kinds:?} != events {reasons:?}");
    let ids = |kind: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|e| e["kind"] == kind)
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
            .collect()
    };
    for kind in ["OperationBlocked", "OperationAccepted"] {
        let ids = ids(kind);
        ensure!(
            ids.len() == 2 && ids[0] != ids[1],
            "{kind}: two distinct audit ids, got {ids:?}"
        );
    }
    // Every id recorded in status was published with that id.
    for record in &done.status.as_ref().context("status")?.transitions {
        let id = record.event_id(common::CLUSTER_ID, &uid);
        ensure!(
            audit.iter().any(|e| e["event_id"] == id.as_str()),
            "recorded {record:?} was published with id {id}"
        );
    }
    delete_operations(&env, &ns).await?;
    remove_policy(&env, &policy).await;
    Ok(())
}

/// The target's `(spec chart version, deployed revision, deployed chart version)`.
async fn target_release(env: &TestEnv, ns: &str) -> Result<(String, Option<i64>, Option<String>)> {
    let ai = Api::<ApplicationInstance>::namespaced(env.client.clone(), ns)
        .get("app")
        .await?;
    let release = ai.status.as_ref().and_then(|s| s.helm_release.clone());
    Ok((
        ai.spec.chart.version.clone(),
        release.as_ref().and_then(|r| r.revision),
        release.and_then(|r| r.chart_version),
    ))
}

async fn wait_target_ready(env: &TestEnv, ns: &str) -> Result<()> {
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), ns);
    poll_until(LIMIT, "app Ready", || async {
        let obj = api.get("app").await.ok()?;
        condition(&obj, "Ready")
            .is_some_and(|c| c.0 == "True")
            .then_some(())
    })
    .await
}

/// `upgrade.helm` changes the target's chart version and succeeds once the instance is
/// Ready with a new release revision at that version; `upgrade.helmHookJob` runs its
/// Job first (for real, on kwok) and a failing hook stops before the upgrade; a Flux
/// UpgradeFailed ends the Operation Failed with Flux's words.
#[tokio::test]
async fn upgrades_through_flux_succeed_or_fail_with_fluxs_reason() -> Result<()> {
    let s = setup("opupg", "upgrade.helm,upgrade.helmHookJob", true).await?;
    let (version, before, _) = target_release(&s.env, &s.ns).await?;
    assert_eq!(version, "1.0.0");
    let before = before.context("a deployed revision before the upgrade")?;

    // 1. upgrade.helm to Succeeded.
    create_operation(
        &s.env,
        &s.ns,
        "up",
        "Upgrade",
        "upgrade.helm",
        json!({ "parameters": { "version": "1.1.0" } }),
    )
    .await?;
    let done = wait_phase(&s.env, &s.ns, "up", OperationPhase::Succeeded).await?;
    let status = done.status.clone().context("status")?;
    assert_eq!(status.reason.as_deref(), Some("HelmUpgradeSucceeded"));
    let (version, revision, deployed) = target_release(&s.env, &s.ns).await?;
    assert_eq!(
        version, "1.1.0",
        "the instance's spec carries the new version"
    );
    assert_eq!(deployed.as_deref(), Some("1.1.0"));
    let revision = revision.context("revision")?;
    ensure!(revision > before, "a new revision: {before} -> {revision}");
    let upgrade = status.upgrade.clone().context("status.upgrade")?;
    assert_eq!(upgrade.from_chart_version.as_deref(), Some("1.0.0"));
    assert_eq!(upgrade.from_revision, Some(before));
    let got = events(&s.env, &s.ns, "up").await?;
    let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    ensure!(
        reasons.first() == Some(&"OperationAccepted")
            && reasons.last() == Some(&"OperationSucceeded")
            && reasons.len() <= 3,
        "events on up: {got:?}"
    );
    ensure!(
        got.last().is_some_and(|(_, n)| n.contains("1.1.0")),
        "the message names the version: {got:?}"
    );

    // 2. upgrade.helmHookJob: the hook Job runs, then the upgrade.
    create_operation(
        &s.env,
        &s.ns,
        "hooked",
        "Upgrade",
        "upgrade.helmHookJob",
        json!({ "parameters": { "version": "1.1.5", "image": "busybox:1.36", "command": "echo migrate" } }),
    )
    .await?;
    let hooked = wait_phase(&s.env, &s.ns, "hooked", OperationPhase::Succeeded).await?;
    let uid = hooked.uid().context("uid")?;
    let jobs = Api::<Job>::namespaced(s.env.client.clone(), &s.ns)
        .list(&ListParams::default().labels(&format!("{}={uid}", labels::OPERATION_ID)))
        .await?;
    ensure!(jobs.items.len() == 1, "one hook Job: {}", jobs.items.len());
    ensure!(
        jobs.items[0].status.as_ref().and_then(|s| s.succeeded) == Some(1),
        "the hook Job completed"
    );
    assert_eq!(
        target_release(&s.env, &s.ns).await?.2.as_deref(),
        Some("1.1.5")
    );

    // 3. A hook that fails: the upgrade never starts.
    create_operation(
        &s.env,
        &s.ns,
        "hook-fails",
        "Upgrade",
        "upgrade.helmHookJob",
        json!({ "parameters": {
            "version": "1.1.9", "image": "busybox:1.36", "command": "exit 3", "backoffLimit": 0,
            "podAnnotations": { vworkspace_testkit::cluster::EXIT_CODE_ANNOTATION: "3" },
        } }),
    )
    .await?;
    let failed = wait_phase(&s.env, &s.ns, "hook-fails", OperationPhase::Failed).await?;
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("HookJobFailed")
    );
    assert_eq!(
        target_release(&s.env, &s.ns).await?.0,
        "1.1.5",
        "the chart version was not touched"
    );

    // 4. Flux fails the upgrade: Failed with Flux's reason and message.
    wait_target_ready(&s.env, &s.ns).await?;
    s._flux
        .fail_version("1.2.0", "post-upgrade hooks failed: job db-migrate failed");
    create_operation(
        &s.env,
        &s.ns,
        "up-bad",
        "Upgrade",
        "upgrade.helm",
        json!({ "parameters": { "version": "1.2.0" } }),
    )
    .await?;
    let bad = wait_phase(&s.env, &s.ns, "up-bad", OperationPhase::Failed).await?;
    let status = bad.status.clone().context("status")?;
    assert_eq!(status.reason.as_deref(), Some("HelmUpgradeFailed"));
    let message = status.message.unwrap_or_default();
    ensure!(
        message.contains("UpgradeFailed") && message.contains("job db-migrate failed"),
        "Flux's reason and message: {message}"
    );
    let got = wait_until_event(&s.env, &s.ns, "up-bad", "OperationFailed").await?;
    let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    ensure!(
        reasons == ["OperationAccepted", "OperationRunning", "OperationFailed"]
            || reasons == ["OperationAccepted", "OperationFailed"],
        "events on up-bad: {got:?}"
    );
    ensure!(got.last().is_some_and(|(_, n)| n == &message), "{got:?}");
    let audit = audit_of(&s.op, &bad.uid().context("uid")?)?;
    let last = audit.last().context("audit")?;
    assert_eq!(last["kind"], "OperationFailed");
    assert_eq!(last["reason"], "HelmUpgradeFailed");
    assert_eq!(
        operation_total(&s.op, "Upgrade", "helm", "succeeded").await?,
        1.0
    );
    assert_eq!(
        operation_total(&s.op, "Upgrade", "helm", "failed").await?,
        1.0
    );
    assert_eq!(
        operation_total(&s.op, "Upgrade", "helmHookJob", "failed").await?,
        1.0
    );
    delete_operations(&s.env, &s.ns).await?;
    Ok(())
}

/// `backup.volsync` sets a manual trigger on a ReplicationSource and is done when
/// VolSync reports `lastManualSync` equal to that trigger.
#[tokio::test]
async fn volsync_is_done_when_the_manual_sync_matches_the_trigger() -> Result<()> {
    use vworkspace_api::thirdparty::ReplicationSource;
    use vworkspace_testkit::sim::volsync::{VolSyncOptions, VolSyncSimulator};
    let s = setup("opvs", "backup.volsync", true).await?;
    let _volsync = VolSyncSimulator::start_with(
        s.env.client.clone(),
        Some(&s.ns),
        VolSyncOptions {
            sim: SimOptions {
                duration: Duration::from_secs(2),
                ..SimOptions::default()
            },
        },
    );
    create_operation(
        &s.env,
        &s.ns,
        "sync",
        "Backup",
        "backup.volsync",
        json!({ "parameters": { "sourcePVC": "data", "restic": { "repository": "restic-config" } } }),
    )
    .await?;
    let done = wait_phase(&s.env, &s.ns, "sync", OperationPhase::Succeeded).await?;
    let status = done.status.clone().context("status")?;
    assert_eq!(status.reason.as_deref(), Some("VolSyncSyncCompleted"));
    let child = status.child_ref.clone().context("childRef")?;
    assert_eq!(child.kind, "ReplicationSource");
    let rs = serde_json::to_value(
        Api::<ReplicationSource>::namespaced(s.env.client.clone(), &s.ns)
            .get(&child.name)
            .await?,
    )?;
    let trigger = rs["spec"]["trigger"]["manual"]
        .as_str()
        .context("trigger")?;
    assert_eq!(rs["status"]["lastManualSync"], trigger);
    assert_eq!(rs["spec"]["sourcePVC"], "data");
    assert_eq!(
        status.outputs.get("sourcePVC").map(String::as_str),
        Some("data")
    );
    let got = wait_until_event(&s.env, &s.ns, "sync", "OperationSucceeded").await?;
    ensure!(
        got.first().is_some_and(|(r, _)| r == "OperationAccepted"),
        "{got:?}"
    );
    assert_eq!(
        operation_total(&s.op, "Backup", "volsync", "succeeded").await?,
        1.0
    );
    delete_operations(&s.env, &s.ns).await?;
    Ok(())
}

/// `backup.snapshot` takes one VolumeSnapshot per PVC of the application and is done
/// when all are ready; a snapshot error alone ends nothing, the deadline does
/// (SnapshotTimeout, snapshots deleted).
#[tokio::test]
async fn snapshots_one_per_pvc_and_errors_wait_for_the_deadline() -> Result<()> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use vworkspace_api::thirdparty::VolumeSnapshot;
    use vworkspace_testkit::sim::snapshot::{SnapshotOptions, SnapshotSimulator};
    let s = setup("opsnap", "backup.snapshot", true).await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(s.env.client.clone(), &s.ns);
    for name in ["data", "db"] {
        pvcs.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": name, "labels": { "app.kubernetes.io/instance": "app" } },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
            }))?,
        )
        .await?;
    }
    // Another release's PVC is not the application's.
    pvcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": { "name": "other", "labels": { "app.kubernetes.io/instance": "other" } },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
        }))?,
    )
    .await?;
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(s.env.client.clone(), &s.ns);
    let of = |uid: String| {
        let snapshots = snapshots.clone();
        async move {
            snapshots
                .list(&ListParams::default().labels(&format!("{}={uid}", labels::OPERATION_ID)))
                .await
                .map(|l| l.items)
        }
    };

    let sim = SnapshotSimulator::start_with(
        s.env.client.clone(),
        Some(&s.ns),
        SnapshotOptions {
            sim: SimOptions {
                duration: Duration::from_secs(1),
                ..SimOptions::default()
            },
            ..SnapshotOptions::default()
        },
    );
    create_operation(
        &s.env,
        &s.ns,
        "snap",
        "Backup",
        "backup.snapshot",
        json!({}),
    )
    .await?;
    let done = wait_phase(&s.env, &s.ns, "snap", OperationPhase::Succeeded).await?;
    let status = done.status.clone().context("status")?;
    assert_eq!(status.reason.as_deref(), Some("SnapshotReady"));
    let mine = of(done.uid().context("uid")?).await?;
    let mut sources: Vec<String> = mine
        .iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .filter_map(|v| {
            v["spec"]["source"]["persistentVolumeClaimName"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        ["data", "db"],
        "one VolumeSnapshot per PVC of the application"
    );
    ensure!(
        mine.iter()
            .all(|v| v.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)),
        "all ready"
    );
    drop(sim);

    // Now the snapshotter reports an error on every snapshot.
    let _failing = SnapshotSimulator::start_with(
        s.env.client.clone(),
        Some(&s.ns),
        SnapshotOptions {
            sim: SimOptions {
                duration: Duration::from_millis(200),
                outcome: Outcome::Failed,
                failure_reason: Some("rpc error: code = Internal desc = disk busy".to_owned()),
                ..SimOptions::default()
            },
            ..SnapshotOptions::default()
        },
    );
    let created = create_operation(
        &s.env,
        &s.ns,
        "snap-err",
        "Backup",
        "backup.snapshot",
        json!({ "timeout": "12s" }),
    )
    .await?;
    let uid = created.uid().context("uid")?;
    poll_until(LIMIT, "errors on both snapshots", || async {
        let list = of(uid.clone()).await.ok()?;
        (list.len() == 2
            && list
                .iter()
                .all(|v| v.status.as_ref().is_some_and(|s| s.error.is_some())))
        .then_some(())
    })
    .await?;
    // The errors are seen (the operator's message counts them) and end nothing.
    let api: Api<Operation> = Api::namespaced(s.env.client.clone(), &s.ns);
    let running = poll_until(LIMIT, "the errors in the message", || async {
        let o = api.get("snap-err").await.ok()?;
        o.status
            .as_ref()?
            .message
            .as_deref()?
            .contains("disk busy")
            .then_some(o)
    })
    .await?;
    ensure!(
        !phase(&running).is_some_and(OperationPhase::is_terminal),
        "an error is not terminal by itself: {:?}",
        running.status
    );
    let failed = wait_phase(&s.env, &s.ns, "snap-err", OperationPhase::Failed).await?;
    let status = failed.status.clone().context("status")?;
    assert_eq!(status.reason.as_deref(), Some("SnapshotTimeout"));
    ensure!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("disk busy")),
        "the timeout names the errors: {status:?}"
    );
    poll_until(LIMIT, "the snapshots deleted", || async {
        of(uid.clone()).await.ok()?.is_empty().then_some(())
    })
    .await?;
    delete_operations(&s.env, &s.ns).await?;
    Ok(())
}
