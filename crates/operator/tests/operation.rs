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

use common::{condition, install_crds, spawn_operator};

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
    assert!(message.contains("412 items"), "{message}");
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
    assert!(got[2].1.contains("412 items"), "{got:?}");

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

/// SIGKILL the operator again and again while Operations run: every Operation still ends,
/// with one child, one terminal Event, and never a terminal audit event twice.
#[tokio::test]
async fn operations_survive_operator_kills() -> Result<()> {
    const N: usize = 24;
    let mut s = setup("opkill", "backup.velero", true).await?;
    let identity = format!("op-{}", unique_suffix());
    // The operator of `setup` is replaced by one whose identity (and so audit file) is
    // reused across restarts.
    s.op.kill();
    let mut op = spawn_operator(&s.env, &s.ns, &identity, &[])?;
    let velero_ns = s.env.fresh_unmanaged_namespace("velero").await?;
    let _velero = VeleroSimulator::start_with(
        s.env.client.clone(),
        Some(&velero_ns),
        slow_velero(Outcome::Succeeded, Duration::from_millis(1500)),
    );
    for i in 0..N {
        create_operation(
            &s.env,
            &s.ns,
            &format!("bk-{i:02}"),
            "Backup",
            "backup.velero",
            json!({ "parameters": { "veleroNamespace": velero_ns } }),
        )
        .await?;
    }
    let ops: Api<Operation> = Api::namespaced(s.env.client.clone(), &s.ns);
    let terminal = || async {
        let list = ops.list(&ListParams::default()).await.ok()?;
        Some(
            list.items
                .iter()
                .filter(|o| phase(o).is_some_and(OperationPhase::is_terminal))
                .count(),
        )
    };
    // Kill whenever some progress was made, until every Operation is terminal.
    let mut kills = 0;
    let mut seen = 0;
    while seen < N {
        let now = poll_until(LIMIT, "progress", || async {
            terminal().await.filter(|&n| n > seen || n == N)
        })
        .await?;
        seen = now;
        if seen < N && kills < 4 {
            op.kill();
            kills += 1;
            op = spawn_operator(&s.env, &s.ns, &identity, &[])?;
        }
    }
    ensure!(kills >= 1, "the operator was killed at least once");

    let list = ops.list(&ListParams::default()).await?;
    ensure!(list.items.len() == N);
    let backups: Api<Backup> = Api::namespaced(s.env.client.clone(), &velero_ns);
    let all_events = Api::<Event>::namespaced(s.env.client.clone(), &s.ns)
        .list(&ListParams::default())
        .await?
        .items;
    let mut uids = Vec::new();
    for o in &list.items {
        let name = o.name_any();
        let uid = o.uid().context("uid")?;
        ensure!(
            phase(o) == Some(OperationPhase::Succeeded),
            "{name}: {:?}",
            o.status
        );
        let children = backups
            .list(&ListParams::default().labels(&format!("{}={uid}", labels::OPERATION_ID)))
            .await?;
        ensure!(
            children.items.len() == 1,
            "{name}: {} Backups",
            children.items.len()
        );
        let reasons: Vec<&str> = all_events
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name))
            .filter_map(|e| e.reason.as_deref())
            .collect();
        let terminal_events = reasons
            .iter()
            .filter(|r| {
                matches!(
                    **r,
                    "OperationSucceeded" | "OperationFailed" | "OperationCancelled"
                )
            })
            .count();
        ensure!(terminal_events == 1, "{name}: events {reasons:?}");
        uids.push((name, uid));
    }
    delete_operations(&s.env, &s.ns).await?;
    // Let the last operator hand its audit events to the file.
    op.terminate();
    let audit = op.audit_events()?;
    for (name, uid) in &uids {
        let terminal_audit = audit
            .iter()
            .filter(|e| e["operation_id"] == uid.as_str() && e["kind"] == "OperationSucceeded")
            .count();
        ensure!(
            terminal_audit <= 1,
            "{name}: {terminal_audit} terminal audit events"
        );
    }
    let mut ids = std::collections::BTreeSet::new();
    for e in &audit {
        let id = e["event_id"].as_str().context("event_id")?;
        ensure!(ids.insert(id.to_owned()), "audit event {id} twice");
    }
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

    maps.patch(
        "vworkspace-operation-catalog",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "no.such.template": null, "runcommand.job": "image: busybox:1.36" } })),
    )
    .await?;
    // The patched ConfigMap reaches the operator's cache on its own watch, with no
    // ordering against the Operation's: an Operation created at once may still see the
    // old catalog (and fail InvalidParameters, for good). Create one until one runs
    // under the new catalog; that one must then have the overridden image.
    let api: Api<Operation> = Api::namespaced(s.env.client.clone(), &s.ns);
    let mut attempt = 0u32;
    let done = poll_until(LIMIT, "an Operation under the overridden catalog", || {
        attempt += 1;
        let name = format!("withimage-{attempt}");
        let (env, ns, api) = (&s.env, &s.ns, &api);
        async move {
            create_operation(
                env,
                ns,
                &name,
                "RunCommand",
                "runcommand.job",
                json!({ "parameters": { "command": "echo hi" } }),
            )
            .await
            .ok()?;
            let end = poll_until(LIMIT, &format!("{name} terminal"), || async {
                let obj = api.get(&name).await.ok()?;
                phase(&obj).filter(|p| p.is_terminal()).map(|p| (p, obj))
            })
            .await
            .ok()?;
            (end.0 == OperationPhase::Succeeded).then_some(end.1)
        }
    })
    .await?;
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
