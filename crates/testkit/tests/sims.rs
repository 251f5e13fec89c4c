//! The simulated Velero, Argo Workflows, VolSync and CSI snapshotter on their own
//! against the shared cluster: the status sequences they write, their failure modes
//! and how a test steers them (options, annotations, overrides by name and by
//! operation id), Velero's restart, Workflow shutdown, VolSync's trigger rule, and the
//! in-flight bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use vworkspace_testkit::env::{TestEnv, poll_until};
use vworkspace_testkit::fixtures::{apply_crds, third_party_crd_files};
use vworkspace_testkit::sim::argo::{ArgoOptions, ArgoSimulator, workflow, workflow_resource};
use vworkspace_testkit::sim::engine::{
    Control, DURATION_ANNOTATION, FAILURE_REASON_ANNOTATION, OPERATION_ID_LABEL,
    OUTCOME_ANNOTATION, Outcome, SimOptions,
};
use vworkspace_testkit::sim::snapshot::{
    SnapshotOptions, SnapshotSimulator, volume_snapshot, volume_snapshot_resource,
};
use vworkspace_testkit::sim::velero::{
    RESTART_BACKUP_REASON, RESTART_RESTORE_REASON, VeleroOptions, VeleroSimulator, backup,
    backup_resource, pod_volume_backup_resource, restore, restore_resource,
};
use vworkspace_testkit::sim::volsync::{
    VolSyncOptions, VolSyncSimulator, replication_source, replication_source_resource,
};

const LIMIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> Result<(TestEnv, String)> {
    let env = TestEnv::shared().await?;
    apply_crds(&env.client, &third_party_crd_files()?).await?;
    let ns = env.fresh_namespace(prefix).await?;
    Ok((env, ns))
}

fn api(env: &TestEnv, ns: &str, resource: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(env.client.clone(), ns, resource)
}

fn sim(duration_ms: u64) -> SimOptions {
    SimOptions {
        duration: Duration::from_millis(duration_ms),
        ..SimOptions::default()
    }
}

/// Every status each object of a kind shows, in order, as a watch sees it.
struct Recorder {
    seen: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start(api: Api<DynamicObject>) -> Self {
        let seen = Arc::new(Mutex::new(HashMap::<String, Vec<Value>>::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
                while let Some(event) = events.next().await {
                    if let Ok(Event::Apply(obj) | Event::InitApply(obj)) = event
                        && let Ok(mut seen) = seen.lock()
                    {
                        let statuses = seen.entry(obj.name_any()).or_default();
                        if statuses.last() != Some(&obj.data["status"]) {
                            statuses.push(obj.data["status"].clone());
                        }
                    }
                }
            }
        });
        Self { seen, task }
    }

    fn statuses(&self, name: &str) -> Result<Vec<Value>> {
        let seen = self.seen.lock().map_err(|_| anyhow!("poisoned"))?;
        Ok(seen.get(name).cloned().unwrap_or_default())
    }

    /// The distinct values of `status.<field>` in the order they appeared, once the
    /// watch has seen `last` (the recorder may lag behind a poll of the object).
    async fn sequence(&self, name: &str, field: &str, last: &str) -> Result<Vec<String>> {
        poll_until(
            LIMIT,
            &format!("the watch to see {name} {last}"),
            || async {
                let statuses = self.statuses(name).ok()?;
                let mut values: Vec<String> = Vec::new();
                for s in &statuses {
                    if let Some(v) = s[field].as_str()
                        && values.last().map(String::as_str) != Some(v)
                    {
                        values.push(v.to_owned());
                    }
                }
                (values.last().map(String::as_str) == Some(last)).then_some(values)
            },
        )
        .await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until `status.<field>` of `name` is one of `values`; the object then.
async fn until_field(
    api: &Api<DynamicObject>,
    name: &str,
    field: &str,
    values: &[&str],
) -> Result<DynamicObject> {
    poll_until(LIMIT, &format!("{name} {field} in {values:?}"), || async {
        let obj = api.get(name).await.ok()?;
        let value = obj.data["status"][field].as_str()?.to_owned();
        values.contains(&value.as_str()).then_some(obj)
    })
    .await
}

fn with_annotations(mut obj: DynamicObject, annotations: &[(&str, &str)]) -> DynamicObject {
    for (k, v) in annotations {
        obj.annotations_mut()
            .insert((*k).to_owned(), (*v).to_owned());
    }
    obj
}

fn with_operation(mut obj: DynamicObject, operation_id: &str) -> DynamicObject {
    obj.labels_mut()
        .insert(OPERATION_ID_LABEL.to_owned(), operation_id.to_owned());
    obj
}

fn timestamp(v: &Value) -> Result<k8s_openapi::jiff::Timestamp> {
    let text = v.as_str().ok_or_else(|| anyhow!("not a timestamp: {v}"))?;
    Ok(text.parse()?)
}

#[tokio::test]
async fn velero_backup_goes_new_in_progress_finalizing_completed() -> Result<()> {
    let (env, ns) = setup("sim-velero").await?;
    let backups = api(&env, &ns, &backup_resource());
    let recorder = Recorder::start(backups.clone());
    let mut velero = VeleroSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        VeleroOptions {
            sim: sim(800),
            total_items: 100,
            backup_size_bytes: 4000,
            steps: 4,
            ..VeleroOptions::default()
        },
    );
    backups
        .create(&PostParams::default(), &backup(&ns, "daily", &["app-ns"])?)
        .await?;
    let done = until_field(&backups, "daily", "phase", &["Completed"]).await?;
    let phases = recorder.sequence("daily", "phase", "Completed").await?;
    ensure!(
        phases == ["New", "InProgress", "Finalizing", "Completed"],
        "{phases:?}"
    );

    // Progress rises while InProgress and ends complete.
    let items: Vec<i64> = recorder
        .statuses("daily")?
        .iter()
        .filter_map(|s| s["progress"]["itemsBackedUp"].as_i64())
        .collect();
    ensure!(items.windows(2).all(|w| w[0] <= w[1]), "rising: {items:?}");
    ensure!(items.first() == Some(&0) && items.last() == Some(&100));
    ensure!(
        items.iter().any(|i| *i > 0 && *i < 100),
        "seen part way: {items:?}"
    );

    let status = &done.data["status"];
    ensure!(status["progress"]["totalItems"] == 100, "{status}");
    // Bytes are not on the Backup (as with Velero) but on its PodVolumeBackups.
    ensure!(status["progress"]["totalBytes"].is_null(), "{status}");
    let uid = done.uid().unwrap_or_default();
    let pvbs = api(&env, &ns, &pod_volume_backup_resource())
        .list(&kube::api::ListParams::default().labels(&format!("velero.io/backup-uid={uid}")))
        .await?
        .items;
    ensure!(
        pvbs.len() == 2,
        "two pod volumes by default: {}",
        pvbs.len()
    );
    let bytes: i64 = pvbs
        .iter()
        .map(|p| {
            p.data["status"]["progress"]["totalBytes"]
                .as_i64()
                .unwrap_or(0)
        })
        .sum();
    ensure!(bytes == 4000, "the volumes add up to the size: {bytes}");
    for p in &pvbs {
        ensure!(p.data["status"]["phase"] == "Completed", "{:?}", p.data);
        ensure!(p.labels().get("velero.io/backup-name").map(String::as_str) == Some("daily"));
        ensure!(
            p.owner_references()
                .iter()
                .any(|o| o.kind == "Backup" && o.uid == uid),
            "owned by the Backup"
        );
    }
    let start = timestamp(&status["startTimestamp"])?;
    let end = timestamp(&status["completionTimestamp"])?;
    let expiration = timestamp(&status["expiration"])?;
    ensure!(start <= end, "{status}");
    ensure!(
        expiration.duration_since(start) == k8s_openapi::jiff::SignedDuration::from_hours(720),
        "expiration = start + ttl: {status}"
    );
    ensure!(status["failureReason"].is_null() && status["errors"].is_null());
    ensure!(velero.stats().finished == 1, "{:?}", velero.stats());
    velero.stop().await;
    Ok(())
}

#[tokio::test]
async fn velero_outcomes_follow_annotations_names_and_operations() -> Result<()> {
    let (env, ns) = setup("sim-velero-out").await?;
    let backups = api(&env, &ns, &backup_resource());
    let restores = api(&env, &ns, &restore_resource());
    let recorder = Recorder::start(backups.clone());
    let velero = VeleroSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        VeleroOptions {
            sim: sim(50),
            ..VeleroOptions::default()
        },
    );
    velero.set_for_name("by-name", Control::fail("disk full"));
    velero.set_for_operation("op-7", Control::fail("quota exceeded"));
    let pp = PostParams::default();
    let app = ["app-ns"];
    for obj in [
        backup(&ns, "ok", &app)?,
        with_annotations(
            backup(&ns, "partial", &app)?,
            &[(OUTCOME_ANNOTATION, "PartiallyFailed")],
        ),
        backup(&ns, "by-name", &app)?,
        with_operation(backup(&ns, "by-op", &app)?, "op-7"),
        // The annotation wins over the operation's override.
        with_annotations(
            with_operation(backup(&ns, "by-op-annotated", &app)?, "op-7"),
            &[(OUTCOME_ANNOTATION, "succeeded")],
        ),
        backup(&ns, "empty", &[])?,
    ] {
        backups.create(&pp, &obj).await?;
    }
    for obj in [
        restore(&ns, "r-ok", "ok")?,
        with_annotations(
            restore(&ns, "r-bad", "ok")?,
            &[
                (OUTCOME_ANNOTATION, "failed"),
                (FAILURE_REASON_ANNOTATION, "pvc conflict"),
            ],
        ),
        restore(&ns, "r-none", "")?,
    ] {
        restores.create(&pp, &obj).await?;
    }
    let ends = ["Completed", "PartiallyFailed", "Failed", "FailedValidation"];

    let ok = until_field(&backups, "ok", "phase", &ends).await?;
    ensure!(ok.data["status"]["phase"] == "Completed", "{}", ok.data);

    let partial = until_field(&backups, "partial", "phase", &ends).await?;
    let s = &partial.data["status"];
    ensure!(s["phase"] == "PartiallyFailed" && s["errors"] == 2, "{s}");
    ensure!(!s["completionTimestamp"].is_null(), "{s}");
    let phases = recorder
        .sequence("partial", "phase", "PartiallyFailed")
        .await?;
    ensure!(
        phases
            == [
                "New",
                "InProgress",
                "FinalizingPartiallyFailed",
                "PartiallyFailed"
            ],
        "{phases:?}"
    );

    for (name, reason) in [("by-name", "disk full"), ("by-op", "quota exceeded")] {
        let obj = until_field(&backups, name, "phase", &ends).await?;
        let s = &obj.data["status"];
        ensure!(
            s["phase"] == "Failed" && s["failureReason"] == reason,
            "{name}: {s}"
        );
        ensure!(!s["completionTimestamp"].is_null(), "{name}: {s}");
        let done = s["progress"]["itemsBackedUp"].as_i64().unwrap_or(-1);
        ensure!(
            done < s["progress"]["totalItems"].as_i64().unwrap_or(0),
            "{name} stopped part way: {s}"
        );
    }
    let annotated = until_field(&backups, "by-op-annotated", "phase", &ends).await?;
    ensure!(annotated.data["status"]["phase"] == "Completed");

    let empty = until_field(&backups, "empty", "phase", &ends).await?;
    let s = &empty.data["status"];
    ensure!(s["phase"] == "FailedValidation", "{s}");
    ensure!(
        s["validationErrors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{s}"
    );
    ensure!(s["startTimestamp"].is_null(), "never started: {s}");

    let r_ok = until_field(&restores, "r-ok", "phase", &ends).await?;
    let s = &r_ok.data["status"];
    ensure!(s["phase"] == "Completed", "{s}");
    ensure!(
        s["progress"]["itemsRestored"] == 412 && s["progress"]["totalItems"] == 412,
        "{s}"
    );
    let r_bad = until_field(&restores, "r-bad", "phase", &ends).await?;
    let s = &r_bad.data["status"];
    ensure!(
        s["phase"] == "Failed" && s["failureReason"] == "pvc conflict",
        "{s}"
    );
    let r_none = until_field(&restores, "r-none", "phase", &ends).await?;
    ensure!(r_none.data["status"]["phase"] == "FailedValidation");
    ensure!(velero.stats().finished == 9, "{:?}", velero.stats());
    Ok(())
}

#[tokio::test]
async fn velero_restart_fails_in_progress_work_and_takes_new_work() -> Result<()> {
    let (env, ns) = setup("sim-velero-restart").await?;
    let backups = api(&env, &ns, &backup_resource());
    let restores = api(&env, &ns, &restore_resource());
    let mut velero = VeleroSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        VeleroOptions {
            sim: sim(120_000),
            ..VeleroOptions::default()
        },
    );
    let pp = PostParams::default();
    let quick = [(DURATION_ANNOTATION, "0")];
    backups
        .create(&pp, &with_annotations(backup(&ns, "done", &["a"])?, &quick))
        .await?;
    backups.create(&pp, &backup(&ns, "long", &["a"])?).await?;
    restores
        .create(&pp, &restore(&ns, "long-r", "done")?)
        .await?;
    until_field(&backups, "done", "phase", &["Completed"]).await?;
    until_field(&backups, "long", "phase", &["InProgress"]).await?;
    until_field(&restores, "long-r", "phase", &["InProgress"]).await?;

    let marked = velero.restart().await?;
    ensure!(marked == 2, "the two InProgress objects: {marked}");
    let long = backups.get("long").await?;
    let s = &long.data["status"];
    ensure!(
        s["phase"] == "Failed" && s["failureReason"] == RESTART_BACKUP_REASON,
        "{s}"
    );
    ensure!(!s["completionTimestamp"].is_null(), "{s}");
    let long_r = restores.get("long-r").await?;
    let s = &long_r.data["status"];
    ensure!(
        s["phase"] == "Failed" && s["failureReason"] == RESTART_RESTORE_REASON,
        "{s}"
    );
    ensure!(backups.get("done").await?.data["status"]["phase"] == "Completed");

    // The restarted server takes new work.
    backups
        .create(
            &pp,
            &with_annotations(backup(&ns, "after", &["a"])?, &quick),
        )
        .await?;
    until_field(&backups, "after", "phase", &["Completed"]).await?;
    ensure!(backups.get("long").await?.data["status"]["phase"] == "Failed");
    Ok(())
}

#[tokio::test]
async fn argo_workflow_runs_its_steps_and_fails_or_errors_on_demand() -> Result<()> {
    let (env, ns) = setup("sim-argo").await?;
    let workflows = api(&env, &ns, &workflow_resource());
    let recorder = Recorder::start(workflows.clone());
    let argo = ArgoSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        ArgoOptions {
            sim: sim(600),
            steps: 3,
            outputs: vec![("backupName".into(), "b-1".into())],
        },
    );
    argo.set_for_name("errs", Control::ending(Outcome::Error, "pod deleted"));
    let pp = PostParams::default();
    workflows
        .create(&pp, &workflow(&ns, "ok", "migrate", &[("to", "v2")])?)
        .await?;
    workflows
        .create(
            &pp,
            &with_annotations(
                workflow(&ns, "fails", "migrate", &[])?,
                &[(OUTCOME_ANNOTATION, "failed")],
            ),
        )
        .await?;
    workflows
        .create(&pp, &workflow(&ns, "errs", "migrate", &[])?)
        .await?;
    let ends = ["Succeeded", "Failed", "Error"];

    let ok = until_field(&workflows, "ok", "phase", &ends).await?;
    let s = &ok.data["status"];
    ensure!(s["phase"] == "Succeeded", "{s}");
    ensure!(
        s["outputs"]["parameters"] == json!([{ "name": "backupName", "value": "b-1" }]),
        "{s}"
    );
    ensure!(timestamp(&s["startedAt"])? <= timestamp(&s["finishedAt"])?);
    ensure!(
        s["conditions"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["type"] == "Completed" && c["status"] == "True")),
        "{s}"
    );
    let phases = recorder.sequence("ok", "phase", "Succeeded").await?;
    ensure!(phases == ["Pending", "Running", "Succeeded"], "{phases:?}");
    let progress = recorder.sequence("ok", "progress", "3/3").await?;
    ensure!(progress == ["0/3", "1/3", "2/3", "3/3"], "{progress:?}");

    let fails = until_field(&workflows, "fails", "phase", &ends).await?;
    let s = &fails.data["status"];
    ensure!(
        s["phase"] == "Failed" && s["message"] == "child 'step-3' failed",
        "{s}"
    );
    ensure!(!s["finishedAt"].is_null() && s["outputs"].is_null(), "{s}");
    let errs = until_field(&workflows, "errs", "phase", &ends).await?;
    let s = &errs.data["status"];
    ensure!(
        s["phase"] == "Error" && s["message"] == "pod deleted",
        "{s}"
    );
    Ok(())
}

#[tokio::test]
async fn argo_workflow_shutdown_stops_it() -> Result<()> {
    let (env, ns) = setup("sim-argo-stop").await?;
    let workflows = api(&env, &ns, &workflow_resource());
    let recorder = Recorder::start(workflows.clone());
    // Far longer than the test's wait: only the shutdown can end these.
    let _argo = ArgoSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        ArgoOptions {
            sim: sim(600_000),
            ..ArgoOptions::default()
        },
    );
    let pp = PostParams::default();
    workflows
        .create(&pp, &workflow(&ns, "long", "migrate", &[])?)
        .await?;
    until_field(&workflows, "long", "phase", &["Running"]).await?;
    workflows
        .patch(
            "long",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "shutdown": "Terminate" } })),
        )
        .await?;
    let long = until_field(
        &workflows,
        "long",
        "phase",
        &["Succeeded", "Failed", "Error"],
    )
    .await?;
    let s = &long.data["status"];
    ensure!(
        s["phase"] == "Failed" && s["message"] == "Stopped with strategy 'Terminate'",
        "{s}"
    );
    ensure!(!s["finishedAt"].is_null(), "{s}");

    // Asked to stop before it ran: it never runs.
    let mut early = workflow(&ns, "early", "migrate", &[])?;
    early.data["spec"]["shutdown"] = json!("Stop");
    workflows.create(&pp, &early).await?;
    let early = until_field(
        &workflows,
        "early",
        "phase",
        &["Succeeded", "Failed", "Error"],
    )
    .await?;
    ensure!(early.data["status"]["message"] == "Stopped with strategy 'Stop'");
    let phases = recorder.sequence("early", "phase", "Failed").await?;
    ensure!(phases == ["Failed"], "{phases:?}");
    Ok(())
}

/// The `Synchronizing` condition of a ReplicationSource: status, reason, message.
fn synchronizing(obj: &DynamicObject) -> Option<(String, String, String)> {
    let c = obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Synchronizing")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str()?.to_owned(),
    ))
}

async fn set_trigger(api: &Api<DynamicObject>, name: &str, trigger: &str) -> Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "trigger": { "manual": trigger } } })),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn volsync_syncs_once_per_new_manual_trigger() -> Result<()> {
    let (env, ns) = setup("sim-volsync").await?;
    let sources = api(&env, &ns, &replication_source_resource());
    let volsync = VolSyncSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        VolSyncOptions { sim: sim(300) },
    );
    let pp = PostParams::default();
    let synced = |name: &'static str, trigger: &'static str| {
        let sources = sources.clone();
        async move {
            poll_until(LIMIT, &format!("{name} synced {trigger}"), || async {
                let obj = sources.get(name).await.ok()?;
                (obj.data["status"]["lastManualSync"] == trigger).then_some(obj)
            })
            .await
        }
    };

    // No trigger, no sync. The simulator handles events in order, so once the later
    // source's sync has started, the first one was looked at and left alone.
    sources
        .create(&pp, &replication_source(&ns, "idle", "data", None)?)
        .await?;
    sources
        .create(&pp, &replication_source(&ns, "busy", "data", Some("t1"))?)
        .await?;
    let busy = synced("busy", "t1").await?;
    let s = &busy.data["status"];
    ensure!(
        !s["lastSyncTime"].is_null() && s["lastSyncStartTime"].is_null(),
        "{s}"
    );
    ensure!(
        s["lastSyncDuration"]
            .as_str()
            .is_some_and(|d| d.ends_with('s')),
        "{s}"
    );
    ensure!(s["latestMoverStatus"]["result"] == "Successful", "{s}");
    let (status, reason, _) = synchronizing(&busy).ok_or_else(|| anyhow!("no condition: {s}"))?;
    ensure!(status == "False" && reason == "WaitingForManual", "{s}");
    ensure!(volsync.stats().started == 1, "{:?}", volsync.stats());
    ensure!(sources.get("idle").await?.data["status"].is_null());

    // A trigger syncs; a change that keeps the trigger does not; a new trigger does.
    set_trigger(&sources, "idle", "t1").await?;
    synced("idle", "t1").await?;
    sources
        .patch(
            "idle",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "sourcePVC": "data-2" } })),
        )
        .await?;
    set_trigger(&sources, "busy", "t2").await?;
    synced("busy", "t2").await?;
    ensure!(
        volsync.stats().started == 3,
        "busy t1, idle t1, busy t2: {:?}",
        volsync.stats()
    );

    // A failing sync says why and leaves lastManualSync alone; the next trigger syncs.
    volsync.set_for_name("idle", Control::fail("repository is locked"));
    set_trigger(&sources, "idle", "t2").await?;
    let failed = poll_until(LIMIT, "idle's sync to fail", || async {
        let obj = sources.get("idle").await.ok()?;
        let (status, reason, message) = synchronizing(&obj)?;
        (reason == "Error").then_some((obj, status, message))
    })
    .await?;
    let (obj, status, message) = failed;
    ensure!(status == "False" && message == "repository is locked");
    ensure!(obj.data["status"]["lastManualSync"] == "t1", "{}", obj.data);
    ensure!(obj.data["status"]["latestMoverStatus"]["result"] == "Failed");
    volsync.clear_overrides();
    set_trigger(&sources, "idle", "t3").await?;
    let idle = synced("idle", "t3").await?;
    let (_, reason, _) = synchronizing(&idle).ok_or_else(|| anyhow!("no condition"))?;
    ensure!(reason == "WaitingForManual");
    ensure!(volsync.stats().started == 5, "{:?}", volsync.stats());
    Ok(())
}

#[tokio::test]
async fn snapshots_become_ready_or_report_an_error() -> Result<()> {
    let (env, ns) = setup("sim-snap").await?;
    let snapshots = api(&env, &ns, &volume_snapshot_resource());
    let _csi = SnapshotSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        SnapshotOptions {
            sim: sim(200),
            restore_size: "8Gi".into(),
        },
    );
    let pp = PostParams::default();
    let created = snapshots
        .create(&pp, &volume_snapshot(&ns, "good", "data")?)
        .await?;
    snapshots
        .create(
            &pp,
            &with_annotations(
                volume_snapshot(&ns, "bad", "data")?,
                &[
                    (OUTCOME_ANNOTATION, "failed"),
                    (FAILURE_REASON_ANNOTATION, "no space left"),
                ],
            ),
        )
        .await?;
    let good = poll_until(LIMIT, "good to be ready", || async {
        let obj = snapshots.get("good").await.ok()?;
        (obj.data["status"]["readyToUse"] == true).then_some(obj)
    })
    .await?;
    let s = &good.data["status"];
    ensure!(
        s["restoreSize"] == "8Gi" && !s["creationTime"].is_null(),
        "{s}"
    );
    ensure!(
        s["boundVolumeSnapshotContentName"]
            == format!("snapcontent-{}", created.uid().unwrap_or_default()),
        "{s}"
    );
    ensure!(s["error"].is_null(), "{s}");
    let bad = poll_until(LIMIT, "bad to report an error", || async {
        let obj = snapshots.get("bad").await.ok()?;
        obj.data["status"]["error"].is_object().then_some(obj)
    })
    .await?;
    let s = &bad.data["status"];
    ensure!(
        s["readyToUse"] == false && s["error"]["message"] == "no space left",
        "{s}"
    );
    ensure!(!s["error"]["time"].is_null(), "{s}");
    Ok(())
}

#[tokio::test]
async fn at_most_max_in_flight_snapshots_are_worked_on_at_once() -> Result<()> {
    let (env, ns) = setup("sim-snap-many").await?;
    let snapshots = api(&env, &ns, &volume_snapshot_resource());
    let csi = SnapshotSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        SnapshotOptions {
            sim: SimOptions {
                duration: Duration::from_millis(400),
                max_in_flight: 3,
                ..SimOptions::default()
            },
            ..SnapshotOptions::default()
        },
    );
    const N: usize = 12;
    let began = Instant::now();
    for i in 0..N {
        snapshots
            .create(
                &PostParams::default(),
                &volume_snapshot(&ns, &format!("s{i}"), "data")?,
            )
            .await?;
    }
    poll_until(LIMIT, "every snapshot ready", || async {
        let list = snapshots.list(&Default::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|s| s.data["status"]["readyToUse"] == true)
            .count();
        (ready == N).then_some(())
    })
    .await?;
    // 12 jobs of 400 ms, 3 at a time, take at least 4 rounds.
    let took = began.elapsed();
    ensure!(took >= Duration::from_millis(1600), "took only {took:?}");
    let stats = csi.stats();
    ensure!(
        stats.started == N as u64 && stats.finished == N as u64 && stats.gave_up == 0,
        "one job per snapshot: {stats:?}"
    );
    // Two writes per snapshot: bound, then ready.
    ensure!(stats.writes == 2 * N as u64, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_stopped_simulator_takes_no_new_work() -> Result<()> {
    let (env, ns) = setup("sim-stop").await?;
    let snapshots = api(&env, &ns, &volume_snapshot_resource());
    let ready = |name: String| {
        let snapshots = snapshots.clone();
        async move {
            poll_until(LIMIT, &format!("{name} to be ready"), || async {
                let obj = snapshots.get(&name).await.ok()?;
                (obj.data["status"]["readyToUse"] == true).then_some(())
            })
            .await
        }
    };
    let pp = PostParams::default();
    let mut first = SnapshotSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        SnapshotOptions {
            sim: sim(0),
            ..SnapshotOptions::default()
        },
    );
    snapshots
        .create(&pp, &volume_snapshot(&ns, "before", "data")?)
        .await?;
    ready("before".into()).await?;
    first.stop().await;
    let stopped = first.stats();
    ensure!(stopped.started == 1, "{stopped:?}");

    // A second simulator does the next snapshot; a first one still running would have
    // started a job for it too, on the same watch event.
    let second = SnapshotSimulator::start_with(
        env.client.clone(),
        Some(&ns),
        SnapshotOptions {
            sim: sim(300),
            ..SnapshotOptions::default()
        },
    );
    snapshots
        .create(&pp, &volume_snapshot(&ns, "after", "data")?)
        .await?;
    ready("after".into()).await?;
    ensure!(
        first.stats() == stopped,
        "the stopped simulator did nothing more: {:?}",
        first.stats()
    );
    ensure!(second.stats().started == 1, "{:?}", second.stats());
    Ok(())
}

#[tokio::test]
async fn velero_finishes_what_an_earlier_run_left_finalizing() -> Result<()> {
    let (env, ns) = setup("sim-velero-final").await?;
    let backups = api(&env, &ns, &backup_resource());
    let pp = PostParams::default();
    // What a server that stopped while finalizing leaves behind.
    for (name, status) in [
        ("left", json!({ "phase": "Finalizing" })),
        (
            "left-partial",
            json!({ "phase": "FinalizingPartiallyFailed", "errors": 5 }),
        ),
    ] {
        backups.create(&pp, &backup(&ns, name, &["a"])?).await?;
        backups
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
    }
    let velero = VeleroSimulator::start(env.client.clone(), Some(&ns));
    let ends = ["Completed", "PartiallyFailed", "Failed"];
    let left = until_field(&backups, "left", "phase", &ends).await?;
    ensure!(left.data["status"]["phase"] == "Completed", "{}", left.data);
    let partial = until_field(&backups, "left-partial", "phase", &ends).await?;
    let s = &partial.data["status"];
    ensure!(s["phase"] == "PartiallyFailed" && s["errors"] == 5, "{s}");
    // Finishing is one write: nothing of the run before it is redone.
    let stats = velero.stats();
    ensure!(stats.finished == 2 && stats.writes == 2, "{stats:?}");
    Ok(())
}
