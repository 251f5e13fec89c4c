//! A simulated CSI snapshotter (snapshot-controller plus csi-snapshotter sidecar) for
//! `snapshot.storage.k8s.io/v1` `VolumeSnapshot`, driving `status` the way they do.
//!
//! A VolumeSnapshot that is neither ready nor in error is picked up:
//!
//! * at once: `boundVolumeSnapshotContentName` (`snapcontent-<uid>` for a dynamic
//!   snapshot of `spec.source.persistentVolumeClaimName`, or the named content of a
//!   static one) and `readyToUse: false`;
//! * after the duration, on success: `creationTime`, `restoreSize`
//!   ([`SnapshotOptions::restore_size`]) and `readyToUse: true`;
//! * on failure (any outcome but [`Outcome::Succeeded`](super::engine::Outcome)):
//!   `status.error { message, time }` and `readyToUse: false` (the real snapshotter
//!   retries; this one does not, so a test sees a stable error);
//! * a snapshot whose source names neither or both fails at once with the snapshot
//!   controller's validation message.
//!
//! No VolumeSnapshotContent object is created: the operator only reads the snapshot.
//!
//! Invariants: status only (through the status subresource); each VolumeSnapshot is
//! worked on once per simulator; see [`super::engine`] for the rest.

use std::sync::Arc;

use anyhow::Result;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::engine::{Control, Drivers, Job, Shared, SimOptions, SimStats, WriteError, now_rfc3339};

/// `snapshot.storage.k8s.io/v1` `VolumeSnapshot`.
pub fn volume_snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// A minimal dynamic VolumeSnapshot of `pvc`, for tests that drive the simulator
/// without the operator.
pub fn volume_snapshot(namespace: &str, name: &str, pvc: &str) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "source": { "persistentVolumeClaimName": pvc },
            "volumeSnapshotClassName": "csi-sim",
        },
    }))?)
}

/// How the simulated snapshotter runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Duration, outcome, failure reason, concurrency.
    pub sim: SimOptions,
    /// `status.restoreSize` of a ready snapshot (a Kubernetes quantity).
    pub restore_size: String,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            sim: SimOptions::default(),
            restore_size: "1Gi".to_owned(),
        }
    }
}

/// A running simulated snapshotter; stops when dropped.
#[derive(Debug)]
pub struct SnapshotSimulator {
    shared: Arc<Shared>,
    drivers: Drivers,
}

impl SnapshotSimulator {
    /// Start in `namespace` (or every namespace with `None`) with the default options.
    pub fn start(client: Client, namespace: Option<&str>) -> Self {
        Self::start_with(client, namespace, SnapshotOptions::default())
    }

    /// Start in `namespace` (or every namespace with `None`).
    pub fn start_with(client: Client, namespace: Option<&str>, options: SnapshotOptions) -> Self {
        let shared = Shared::new(options.sim);
        let restore_size = Arc::new(options.restore_size);
        let mut drivers = Drivers::new();
        drivers.spawn(
            &client,
            namespace,
            volume_snapshot_resource(),
            shared.clone(),
            wants,
            move |job| run(job, restore_size.clone()),
        );
        Self { shared, drivers }
    }

    /// Steer the VolumeSnapshot named `name`.
    pub fn set_for_name(&self, name: &str, control: Control) {
        self.shared.set_for_name(name, control);
    }

    /// Steer the VolumeSnapshots labelled `app.vworkspace.io/operation-id: <operation_id>`.
    pub fn set_for_operation(&self, operation_id: &str, control: Control) {
        self.shared.set_for_operation(operation_id, control);
    }

    /// Forget every override set by name or operation.
    pub fn clear_overrides(&self) {
        self.shared.clear_overrides();
    }

    /// Counts of what was done so far.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Stop, waiting until no job runs any more (dropping stops too, without waiting);
    /// [`stats`](Self::stats) stays readable.
    pub async fn stop(&mut self) {
        self.drivers.shutdown().await;
    }
}

fn wants(obj: &DynamicObject) -> Option<String> {
    let status = &obj.data["status"];
    let done = status["readyToUse"].as_bool() == Some(true) || status["error"].is_object();
    (!done).then(|| "snapshot".to_owned())
}

async fn run(mut job: Job, restore_size: Arc<String>) -> Result<(), WriteError> {
    let source = &job.obj.data["spec"]["source"];
    let pvc = source["persistentVolumeClaimName"].as_str();
    let content = source["volumeSnapshotContentName"].as_str();
    let bound = match (pvc, content) {
        (Some(_), None) => format!("snapcontent-{}", job.obj.uid().unwrap_or_default()),
        (None, Some(content)) => content.to_owned(),
        _ => {
            return job
                .write(json!({
                    "readyToUse": false,
                    "error": {
                        "message": "Exactly one of PersistentVolumeClaimName and VolumeSnapshotContentName should be specified",
                        "time": now_rfc3339(),
                    },
                }))
                .await;
        }
    };
    job.write(json!({ "boundVolumeSnapshotContentName": bound, "readyToUse": false }))
        .await?;
    job.wait(job.plan.duration).await;
    if job.plan.outcome.is_success() {
        job.write(json!({
            "creationTime": now_rfc3339(),
            "restoreSize": restore_size.as_str(),
            "readyToUse": true,
        }))
        .await
    } else {
        let reason = job.plan.reason_or(
            "Failed to check and update snapshot content: rpc error: code = Internal desc = simulated snapshot failure",
        );
        job.write(json!({
            "readyToUse": false,
            "error": { "message": reason, "time": now_rfc3339() },
        }))
        .await
    }
}
