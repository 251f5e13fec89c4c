//! Integration: every job type applied through [`JobApplier::apply`] against the real API
//! server, idempotency (applying twice changes nothing, not even `resourceVersion`, also
//! from a fresh applier as after a crash), and each rejection reason that needs the
//! cluster (unmanaged or missing namespace, reused job id, conflicts with another field
//! manager, the API server's own validation).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vworkspace_agent::client::LinkError;
use vworkspace_agent::jobs::{
    JOB_DIGEST, JobApplier, JobLoopConfig, JobObserver, JobOutcome, JobSource, document_digest,
    run_job_loop,
};
use vworkspace_agent::shipper::Backoff;
use vworkspace_api::agent_api::{Ack, Job, JobList, JobState, JobStatusReport};
use vworkspace_api::labels::{ALLOWED_OPERATION_TEMPLATES, JOB_ID, MANAGED_BY, ORG_ID};
use vworkspace_api::{ApplicationInstance, Operation};
use vworkspace_telemetry::metrics::AgentMetrics;
use vworkspace_testkit::env::{TestEnv, unique_suffix};
use vworkspace_testkit::fixtures::{apply_crds, operator_crd_files};

const CLUSTER: &str = "cluster-agent-test";

async fn setup(prefix: &str) -> Result<(TestEnv, String)> {
    let env = TestEnv::shared().await?;
    apply_crds(&env.client, &operator_crd_files()?).await?;
    let ns = env.fresh_namespace(prefix).await?;
    Ok((env, ns))
}

fn job(id: &str, document: serde_json::Value) -> Job {
    Job {
        id: id.to_owned(),
        created_at: "2026-12-01T10:00:00Z".to_owned(),
        document: document.to_string(),
    }
}

fn instance_doc(ns: &str, name: &str, version: &str) -> serde_json::Value {
    json!({
        "type": "ApplyApplicationInstance", "cluster_id": CLUSTER, "namespace": ns, "name": name,
        "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": version },
                  "values": { "adminPassword": "canary-secret-value" } }
    })
}

fn operation_doc(ns: &str, name: &str, template: &str) -> serde_json::Value {
    json!({
        "type": "CreateOperation", "cluster_id": CLUSTER, "namespace": ns, "name": name,
        "spec": { "type": "Backup", "template": template, "applicationInstance": "nextcloud" }
    })
}

async fn apply(applier: &JobApplier, job: &Job) -> Result<JobOutcome> {
    applier.apply(job).await.context("transient failure")
}

fn expect_applied(outcome: &JobOutcome) -> Result<()> {
    let report = outcome.report();
    ensure!(
        report.state == JobState::Applied,
        "expected applied, got {report:?}"
    );
    Ok(())
}

fn expect_rejected(outcome: &JobOutcome, reason: &str) -> Result<String> {
    let report = outcome.report();
    match outcome {
        JobOutcome::Rejected { rejection, .. } if rejection.category() == reason => {
            ensure!(report.state == JobState::Rejected);
            ensure!(
                !report.message.contains("canary-secret-value"),
                "a spec value leaked: {}",
                report.message
            );
            Ok(report.message)
        }
        other => bail!("expected {reason}, got {other:?}"),
    }
}

fn owned_by_agent(obj: &impl ResourceExt) -> bool {
    obj.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some("vworkspace-agent") && m.operation.as_deref() == Some("Apply")
    })
}

#[tokio::test]
async fn application_instances_apply_idempotently_update_and_delete() -> Result<()> {
    let (env, ns) = setup("agent-ai").await?;
    let applier = JobApplier::new(env.client.clone(), CLUSTER);
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);

    let create = job("job-ai-1", instance_doc(&ns, "nextcloud", "1.0.0"));
    expect_applied(&apply(&applier, &create).await?)?;
    let first = api.get("nextcloud").await?;
    assert_eq!(
        first.labels().get(JOB_ID).map(String::as_str),
        Some("job-ai-1")
    );
    assert_eq!(
        first.annotations().get(JOB_DIGEST),
        Some(&document_digest(&create.document))
    );
    assert!(owned_by_agent(&first), "{:?}", first.managed_fields());
    assert_eq!(first.spec.chart.version, "1.0.0");

    // Again, from this applier and from a fresh one (a restarted operator): no change.
    for applier in [
        applier.clone(),
        JobApplier::new(env.client.clone(), CLUSTER),
    ] {
        expect_applied(&apply(&applier, &create).await?)?;
        let again = api.get("nextcloud").await?;
        assert_eq!(again.resource_version(), first.resource_version());
    }
    let list = api.list(&Default::default()).await?;
    assert_eq!(list.items.len(), 1);

    // A later job updates the instance and takes over the job label.
    let update = job("job-ai-2", instance_doc(&ns, "nextcloud", "1.1.0"));
    expect_applied(&apply(&applier, &update).await?)?;
    let updated = api.get("nextcloud").await?;
    assert_eq!(updated.spec.chart.version, "1.1.0");
    assert_eq!(
        updated.labels().get(JOB_ID).map(String::as_str),
        Some("job-ai-2")
    );

    // The same id with other content: refused by this process's memory and, after a
    // restart, by the digest on the object.
    let reused = job("job-ai-2", instance_doc(&ns, "nextcloud", "9.9.9"));
    expect_rejected(&apply(&applier, &reused).await?, "JobIdReused")?;
    let fresh = JobApplier::new(env.client.clone(), CLUSTER);
    expect_rejected(&apply(&fresh, &reused).await?, "JobIdReused")?;
    assert_eq!(api.get("nextcloud").await?.spec.chart.version, "1.1.0");

    let delete = job(
        "job-ai-3",
        json!({ "type": "DeleteApplicationInstance", "cluster_id": CLUSTER, "namespace": ns, "name": "nextcloud" }),
    );
    expect_applied(&apply(&applier, &delete).await?)?;
    ensure!(api.get_opt("nextcloud").await?.is_none(), "still there");
    // Deleting what is gone is applied too (a redelivery after the delete went through).
    expect_applied(&apply(&JobApplier::new(env.client.clone(), CLUSTER), &delete).await?)?;
    Ok(())
}

#[tokio::test]
async fn operations_are_created_once_and_cancelled_without_losing_fields() -> Result<()> {
    let (env, ns) = setup("agent-op").await?;
    let applier = JobApplier::new(env.client.clone(), CLUSTER);
    let api: Api<Operation> = Api::namespaced(env.client.clone(), &ns);

    let create = job("job-op-1", operation_doc(&ns, "backup-1", "backup.velero"));
    expect_applied(&apply(&applier, &create).await?)?;
    let first = api.get("backup-1").await?;
    assert_eq!(
        first.labels().get(JOB_ID).map(String::as_str),
        Some("job-op-1")
    );
    assert!(owned_by_agent(&first));
    expect_applied(&apply(&JobApplier::new(env.client.clone(), CLUSTER), &create).await?)?;
    assert_eq!(
        api.get("backup-1").await?.resource_version(),
        first.resource_version()
    );

    let cancel = job(
        "job-op-2",
        json!({ "type": "CancelOperation", "cluster_id": CLUSTER, "namespace": ns, "name": "backup-1" }),
    );
    expect_applied(&apply(&applier, &cancel).await?)?;
    let cancelled = api.get("backup-1").await?;
    assert!(cancelled.spec.cancel);
    assert_eq!(cancelled.spec.template, "backup.velero");
    assert_eq!(cancelled.spec.application_instance, "nextcloud");
    assert_eq!(
        cancelled.labels().get(JOB_ID).map(String::as_str),
        Some("job-op-1")
    );
    // Cancelling again, or re-running the create job, changes nothing.
    expect_applied(&apply(&JobApplier::new(env.client.clone(), CLUSTER), &cancel).await?)?;
    expect_applied(&apply(&JobApplier::new(env.client.clone(), CLUSTER), &create).await?)?;
    assert_eq!(
        api.get("backup-1").await?.resource_version(),
        cancelled.resource_version()
    );

    // The API server's own validation: the CRD's template pattern.
    let invalid = job("job-op-3", operation_doc(&ns, "backup-2", "NOT A TEMPLATE"));
    let message = expect_rejected(&apply(&applier, &invalid).await?, "RejectedByAPIServer")?;
    assert!(message.contains("Rejected by the API server"), "{message}");
    ensure!(api.get_opt("backup-2").await?.is_none());

    // An Operation that exists but was not created by a job is not taken over.
    let foreign: Operation = serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": { "name": "manual" },
        "spec": { "type": "Backup", "template": "backup.velero", "applicationInstance": "nextcloud" }
    }))?;
    api.create(&Default::default(), &foreign).await?;
    let clash = job("job-op-4", operation_doc(&ns, "manual", "backup.velero"));
    expect_rejected(&apply(&applier, &clash).await?, "Conflict")?;

    let missing = job(
        "job-op-5",
        json!({ "type": "CancelOperation", "cluster_id": CLUSTER, "namespace": ns, "name": "nope" }),
    );
    expect_rejected(&apply(&applier, &missing).await?, "NotFound")?;
    Ok(())
}

#[tokio::test]
async fn namespaces_are_managed_and_unmanaged() -> Result<()> {
    let env = TestEnv::shared().await?;
    apply_crds(&env.client, &operator_crd_files()?).await?;
    let client: Client = env.client.clone();
    let applier = JobApplier::new(client.clone(), CLUSTER);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = format!("t-agent-ns-{}", unique_suffix());

    let manage = job(
        "job-ns-1",
        json!({ "type": "ManageNamespace", "cluster_id": CLUSTER, "namespace": name, "org_id": "org-a",
                "allowed_operation_templates": ["backup.velero", "upgrade.helm"] }),
    );
    expect_applied(&apply(&applier, &manage).await?)?;
    let ns = namespaces.get(&name).await?;
    assert_eq!(
        ns.labels().get(MANAGED_BY).map(String::as_str),
        Some("vworkspace")
    );
    assert_eq!(ns.labels().get(ORG_ID).map(String::as_str), Some("org-a"));
    assert_eq!(
        ns.annotations()
            .get(ALLOWED_OPERATION_TEMPLATES)
            .map(String::as_str),
        Some("backup.velero,upgrade.helm")
    );
    expect_applied(&apply(&JobApplier::new(client.clone(), CLUSTER), &manage).await?)?;
    assert_eq!(
        namespaces.get(&name).await?.resource_version(),
        ns.resource_version()
    );

    // Jobs now reach it.
    let instance = job("job-ns-2", instance_doc(&name, "app", "1.0.0"));
    expect_applied(&apply(&applier, &instance).await?)?;

    let unmanage = job(
        "job-ns-3",
        json!({ "type": "UnmanageNamespace", "cluster_id": CLUSTER, "namespace": name }),
    );
    expect_applied(&apply(&applier, &unmanage).await?)?;
    let ns = namespaces.get(&name).await?;
    for key in [MANAGED_BY, ORG_ID] {
        ensure!(
            !ns.labels().contains_key(key),
            "{key} left: {:?}",
            ns.labels()
        );
    }
    ensure!(!ns.annotations().contains_key(ALLOWED_OPERATION_TEMPLATES));
    expect_applied(&apply(&JobApplier::new(client.clone(), CLUSTER), &unmanage).await?)?;
    assert_eq!(
        namespaces.get(&name).await?.resource_version(),
        ns.resource_version()
    );

    // Unmanaged now: jobs in it are refused.
    let refused = job("job-ns-4", instance_doc(&name, "app", "1.2.0"));
    expect_rejected(&apply(&applier, &refused).await?, "NamespaceNotManaged")?;

    // A namespace labelled by someone else (the test harness) is unmanaged as well.
    let other = env.fresh_namespace("agent-unmanage").await?;
    let unmanage_other = job(
        "job-ns-5",
        json!({ "type": "UnmanageNamespace", "cluster_id": CLUSTER, "namespace": other }),
    );
    expect_applied(&apply(&applier, &unmanage_other).await?)?;
    ensure!(
        !namespaces
            .get(&other)
            .await?
            .labels()
            .contains_key(MANAGED_BY)
    );

    // A namespace another org's labels were put on by someone else is not taken over.
    let foreign = env.fresh_namespace("agent-foreign").await?;
    let take = job(
        "job-ns-6",
        json!({ "type": "ManageNamespace", "cluster_id": CLUSTER, "namespace": foreign, "org_id": "org-b" }),
    );
    expect_rejected(&apply(&applier, &take).await?, "Conflict")?;
    assert_eq!(
        namespaces
            .get(&foreign)
            .await?
            .labels()
            .get(ORG_ID)
            .map(String::as_str),
        Some("org-e2e")
    );
    namespaces.delete(&name, &Default::default()).await?;
    Ok(())
}

#[tokio::test]
async fn rejections_name_their_reason_and_write_nothing() -> Result<()> {
    let (env, ns) = setup("agent-reject").await?;
    let unmanaged = env.fresh_unmanaged_namespace("agent-unmanaged").await?;
    let applier = JobApplier::new(env.client.clone(), CLUSTER).with_max_document_bytes(2048);
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);

    let cases: Vec<(Job, &str)> = vec![
        (job("r1", json!("not an object")), "MalformedJob"),
        (
            Job {
                document: "{broken".into(),
                ..job("r2", json!({}))
            },
            "MalformedJob",
        ),
        (
            job("r3", json!({ "type": "Reboot", "cluster_id": CLUSTER })),
            "UnknownJobType",
        ),
        (
            job(
                "r4",
                json!({ "type": "DeleteApplicationInstance", "cluster_id": CLUSTER, "namespace": ns }),
            ),
            "InvalidField",
        ),
        (
            job(
                "r5",
                json!({ "type": "DeleteApplicationInstance", "cluster_id": "another", "namespace": ns, "name": "a" }),
            ),
            "WrongCluster",
        ),
        (
            job("r6", instance_doc(&unmanaged, "app", "1.0.0")),
            "NamespaceNotManaged",
        ),
        (
            job("r7", instance_doc("t-no-such-namespace", "app", "1.0.0")),
            "NamespaceNotManaged",
        ),
        (
            job("r8", instance_doc(&ns, "Not_A_Name", "1.0.0")),
            "InvalidName",
        ),
        (
            job("r9", {
                let mut doc = instance_doc(&ns, "big", "1.0.0");
                doc["spec"]["values"]["blob"] = json!("x".repeat(4096));
                doc
            }),
            "PayloadTooLarge",
        ),
    ];
    for (j, reason) in &cases {
        let message = expect_rejected(&apply(&applier, j).await?, reason)?;
        assert!(message.starts_with(reason), "{message}");
    }
    assert!(api.list(&Default::default()).await?.items.is_empty());
    let other: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &unmanaged);
    assert!(other.list(&Default::default()).await?.items.is_empty());

    // Fields owned by another manager are never forced over: Conflict.
    let manual = json!({
        "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": { "name": "manual" },
        "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } }
    });
    api.patch(
        "manual",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(&manual),
    )
    .await?;
    let take = job("r10", instance_doc(&ns, "manual", "2.0.0"));
    expect_rejected(&apply(&applier, &take).await?, "Conflict")?;
    assert_eq!(api.get("manual").await?.spec.chart.version, "1.0.0");
    Ok(())
}

/// A scripted job source: hands out the listed batches in turn (then long-polls empty), and
/// fails the first `report_failures` reports of job `flaky` with a 503.
#[derive(Default)]
struct ScriptedSource {
    batches: std::sync::Mutex<std::collections::VecDeque<Vec<Job>>>,
    reports: std::sync::Mutex<Vec<(String, JobState, String, bool)>>,
    flaky: String,
    report_failures: std::sync::atomic::AtomicU32,
    drained: tokio::sync::Notify,
}

impl JobSource for ScriptedSource {
    async fn fetch(&self, wait: Duration, _limit: u32) -> Result<JobList, LinkError> {
        let next = self.batches.lock().unwrap().pop_front();
        match next {
            Some(jobs) => Ok(JobList { jobs }),
            None => {
                self.drained.notify_one();
                tokio::time::sleep(wait).await;
                Ok(JobList { jobs: vec![] })
            }
        }
    }

    async fn report(&self, id: &str, report: &JobStatusReport) -> Result<Ack, LinkError> {
        use std::sync::atomic::Ordering;
        let fail = id == self.flaky
            && self
                .report_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        self.reports.lock().unwrap().push((
            id.to_owned(),
            report.state,
            report.message.clone(),
            !fail,
        ));
        if fail {
            Err(LinkError::Server(503))
        } else {
            Ok(Ack {})
        }
    }
}

#[derive(Default)]
struct Recorded {
    applied: std::sync::Mutex<Vec<String>>,
    rejected: std::sync::Mutex<Vec<(String, String)>>,
}

impl JobObserver for Recorded {
    fn applied(&self, job: &Job, _document: &vworkspace_api::agent_api::JobDocument) {
        self.applied.lock().unwrap().push(job.id.clone());
    }
    fn rejected(
        &self,
        job: &Job,
        _document: Option<&vworkspace_api::agent_api::JobDocument>,
        rejection: &vworkspace_agent::jobs::Rejection,
    ) {
        self.rejected
            .lock()
            .unwrap()
            .push((job.id.clone(), rejection.category().to_owned()));
    }
}

#[tokio::test]
async fn the_loop_applies_in_order_reports_retries_and_never_acts_twice() -> Result<()> {
    let (env, ns) = setup("agent-loop").await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let apply_job = job("loop-1", instance_doc(&ns, "looped", "1.0.0"));
    let wrong = job(
        "loop-2",
        json!({ "type": "UnmanageNamespace", "cluster_id": "elsewhere", "namespace": ns }),
    );
    let source = std::sync::Arc::new(ScriptedSource {
        // The second batch is the control plane redelivering loop-2, whose report failed.
        batches: std::sync::Mutex::new(
            vec![vec![apply_job.clone(), wrong.clone()], vec![wrong.clone()]].into(),
        ),
        flaky: "loop-2".into(),
        report_failures: std::sync::atomic::AtomicU32::new(2),
        ..Default::default()
    });
    let observer = std::sync::Arc::new(Recorded::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = JobLoopConfig {
        wait: Duration::from_millis(200),
        limit: 10,
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        },
        report_attempts: 2,
    };
    let task = tokio::spawn(run_job_loop(
        source.clone(),
        JobApplier::new(env.client.clone(), CLUSTER),
        observer.clone(),
        Some(metrics),
        config,
        stop_rx,
    ));
    tokio::time::timeout(Duration::from_secs(30), source.drained.notified())
        .await
        .context("the loop did not drain the script")?;
    stop_tx.send(true)?;
    task.await?;

    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    ensure!(
        api.get_opt("looped").await?.is_some(),
        "loop-1 was not applied"
    );
    assert_eq!(*observer.applied.lock().unwrap(), ["loop-1"]);
    assert_eq!(
        *observer.rejected.lock().unwrap(),
        [("loop-2".to_owned(), "WrongCluster".to_owned())],
        "a redelivered job is reported again, not observed (audited) again"
    );
    let reports = source.reports.lock().unwrap().clone();
    let summary: Vec<(&str, JobState, bool)> = reports
        .iter()
        .map(|(id, state, _, ok)| (id.as_str(), *state, *ok))
        .collect();
    assert_eq!(
        summary,
        [
            ("loop-1", JobState::Applied, true),
            ("loop-2", JobState::Rejected, false),
            ("loop-2", JobState::Rejected, false),
            ("loop-2", JobState::Rejected, true),
        ]
    );
    assert!(reports[1].2.starts_with("WrongCluster"), "{}", reports[1].2);
    let text = vworkspace_telemetry::metrics::encode(&registry);
    assert!(
        text.contains("vworkspace_operator_applied_jobs_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("vworkspace_operator_pull_job_lag_seconds 0.0\n"),
        "{text}"
    );
    Ok(())
}
