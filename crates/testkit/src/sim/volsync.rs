//! A simulated VolSync for `volsync.backube/v1alpha1` `ReplicationSource` with a manual
//! trigger, driving `status` the way VolSync's controller does.
//!
//! A ReplicationSource syncs when `spec.trigger.manual` is set and differs from
//! `status.lastManualSync` (nothing else makes this simulator act: a schedule-only
//! source is left alone):
//!
//! * at the start: `lastSyncStartTime`, and the `Synchronizing` condition `True`
//!   (reason `SyncInProgress`);
//! * on success, after the duration: `lastManualSync` = the trigger the sync started
//!   for, `lastSyncTime`, `lastSyncDuration` (a Go duration), `lastSyncStartTime`
//!   cleared, `latestMoverStatus.result: Successful`, and `Synchronizing` `False`
//!   (reason `WaitingForManual`);
//! * on failure (any outcome but [`Outcome::Succeeded`]): `Synchronizing` `False` with
//!   reason `Error` and the failure reason as its message,
//!   `latestMoverStatus.result: Failed`; `lastManualSync` is left as it was, so the
//!   operator's wait for it never ends on a failed sync. The same trigger is not tried
//!   again; a new trigger value is.
//!
//! A trigger changed while a sync runs is synced after it, from the new value (the real
//! VolSync records whatever the trigger is when the sync ends; recording the value the
//! sync started for keeps each trigger's sync observable).
//!
//! Invariants: status only (through the status subresource); one sync per trigger value
//! per simulator; see [`super::engine`] for the rest.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use kube::Client;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::engine::{
    Control, Drivers, Job, Shared, SimOptions, SimStats, WriteError, go_duration, now_rfc3339,
};

/// `volsync.backube/v1alpha1` `ReplicationSource`.
pub fn replication_source_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("volsync.backube", "v1alpha1", "ReplicationSource"),
        "replicationsources",
    )
}

/// A minimal restic ReplicationSource of `pvc`, with `trigger` as its manual trigger
/// when given, for tests that drive the simulator without the operator.
pub fn replication_source(
    namespace: &str,
    name: &str,
    pvc: &str,
    trigger: Option<&str>,
) -> Result<DynamicObject> {
    let mut spec = json!({
        "sourcePVC": pvc,
        "restic": { "repository": format!("{name}-restic"), "copyMethod": "Snapshot" },
    });
    if let Some(trigger) = trigger {
        spec["trigger"] = json!({ "manual": trigger });
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "volsync.backube/v1alpha1",
        "kind": "ReplicationSource",
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    }))?)
}

/// How the simulated VolSync runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolSyncOptions {
    /// Duration, outcome, failure reason, concurrency.
    pub sim: SimOptions,
}

/// A running simulated VolSync; stops when dropped.
#[derive(Debug)]
pub struct VolSyncSimulator {
    shared: Arc<Shared>,
    drivers: Drivers,
}

impl VolSyncSimulator {
    /// Start in `namespace` (or every namespace with `None`) with the default options.
    pub fn start(client: Client, namespace: Option<&str>) -> Self {
        Self::start_with(client, namespace, VolSyncOptions::default())
    }

    /// Start in `namespace` (or every namespace with `None`).
    pub fn start_with(client: Client, namespace: Option<&str>, options: VolSyncOptions) -> Self {
        let shared = Shared::new(options.sim);
        let mut drivers = Drivers::new();
        drivers.spawn(
            &client,
            namespace,
            replication_source_resource(),
            shared.clone(),
            wants,
            run,
        );
        Self { shared, drivers }
    }

    /// Steer the syncs of the ReplicationSource named `name` that start from now on.
    pub fn set_for_name(&self, name: &str, control: Control) {
        self.shared.set_for_name(name, control);
    }

    /// Steer the syncs of ReplicationSources labelled
    /// `app.vworkspace.io/operation-id: <operation_id>`.
    pub fn set_for_operation(&self, operation_id: &str, control: Control) {
        self.shared.set_for_operation(operation_id, control);
    }

    /// Forget every override set by name or operation.
    pub fn clear_overrides(&self) {
        self.shared.clear_overrides();
    }

    /// Counts of what was done so far (`started` counts syncs).
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Stop, waiting until no sync runs any more (dropping stops too, without waiting);
    /// [`stats`](Self::stats) stays readable.
    pub async fn stop(&mut self) {
        self.drivers.shutdown().await;
    }
}

/// The manual trigger still to sync, if any: the work key.
fn wants(obj: &DynamicObject) -> Option<String> {
    let trigger = obj.data["spec"]["trigger"]["manual"]
        .as_str()
        .filter(|t| !t.is_empty())?;
    let last = obj.data["status"]["lastManualSync"].as_str();
    (last != Some(trigger)).then(|| trigger.to_owned())
}

fn synchronizing(status: &str, reason: &str, message: &str) -> Value {
    json!([{
        "type": "Synchronizing",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339(),
    }])
}

async fn run(mut job: Job) -> Result<(), WriteError> {
    let trigger = job.key.clone();
    let began = Instant::now();
    job.write(json!({
        "lastSyncStartTime": now_rfc3339(),
        "conditions": synchronizing("True", "SyncInProgress", "Synchronization in-progress"),
    }))
    .await?;
    job.wait(job.plan.duration).await;
    if job.plan.outcome.is_success() {
        job.write(json!({
            "lastManualSync": trigger,
            "lastSyncTime": now_rfc3339(),
            "lastSyncDuration": go_duration(began.elapsed()),
            "lastSyncStartTime": null,
            "latestMoverStatus": {
                "result": "Successful",
                "logs": "Added to the repo: 1.000 MiB\nrestic forget --prune: done",
            },
            "conditions": synchronizing("False", "WaitingForManual", "Waiting for manual trigger"),
        }))
        .await
    } else {
        let reason = job
            .plan
            .reason_or("mover Job failed: BackoffLimitExceeded (simulated)");
        job.write(json!({
            "latestMoverStatus": { "result": "Failed", "logs": reason },
            "conditions": synchronizing("False", "Error", &reason),
        }))
        .await
    }
}
