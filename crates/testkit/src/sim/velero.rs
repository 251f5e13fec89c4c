//! A simulated Velero server: the backup and restore controllers for `velero.io/v1`
//! `Backup` and `Restore`, driving their status the way Velero 1.14 does.
//!
//! A Backup or Restore is picked up when its phase is empty or `New`:
//!
//! * `New` is written first; then validation — a Backup without
//!   `spec.includedNamespaces`, or a Restore without `spec.backupName`, ends in
//!   `FailedValidation` with `status.validationErrors` (the real Velero backs up every
//!   namespace when the list is empty; the operator always names one, so here an empty
//!   list is a mistake worth surfacing);
//! * `InProgress`, with `startTimestamp`, `expiration` (Backup: start + `spec.ttl`,
//!   720h by default) and `progress` (`totalItems`, and `itemsBackedUp` or
//!   `itemsRestored` rising in [`VeleroOptions::steps`] writes over the duration);
//! * then by outcome: [`Outcome::Succeeded`] → `Finalizing` → `Completed`;
//!   [`Outcome::PartiallyFailed`] → `FinalizingPartiallyFailed` → `PartiallyFailed`
//!   with `errors`; [`Outcome::Failed`] or [`Outcome::Error`] → `Failed` with
//!   `failureReason` (progress stops half way). Every end but `FailedValidation` sets
//!   `completionTimestamp`; `warnings` is set when [`VeleroOptions::warnings`] is not 0.
//!
//! Size: like Velero, the Backup's status counts items, not bytes. Bytes are reported
//! where Velero's node agent reports them, on one `PodVolumeBackup` per pod volume
//! ([`VeleroOptions::pod_volumes`]) in the Backup's namespace: labelled
//! `velero.io/backup-name` and `velero.io/backup-uid`, owned by the Backup, `status.phase`
//! `Completed` and `status.progress.totalBytes` / `bytesDone`, together
//! [`VeleroOptions::backup_size_bytes`]. They are written before the Backup leaves
//! `InProgress` for a successful or partially failed end (as Velero waits for its pod
//! volume backups before it finalizes); a failing Backup gets none. A cluster without the
//! PodVolumeBackup CRD gets none either.
//!
//! [`VeleroSimulator::restart`] plays a Velero server restart: the running work stops,
//! every Backup and Restore still `InProgress` is marked `Failed` with Velero's own
//! start-up wording ([`RESTART_BACKUP_REASON`], [`RESTART_RESTORE_REASON`]) and a
//! `completionTimestamp`, and the controllers come back for new objects (and, like
//! Velero's finalizer controller, finish objects left in a `Finalizing` phase).
//!
//! Invariants: status only (through the status subresource); each object is worked on
//! once per server "run" (between restarts); see [`super::engine`] for the rest.

use std::sync::Arc;

use anyhow::Result;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::engine::{
    Control, Drivers, Job, Outcome, Shared, SimOptions, SimStats, WriteError, now, now_rfc3339,
    parse_go_duration, patch_status, rfc3339,
};

/// `failureReason` of a Backup that was `InProgress` when the server restarted.
pub const RESTART_BACKUP_REASON: &str =
    "found a backup with status \"InProgress\" during the server starting, mark it as \"Failed\"";
/// `failureReason` of a Restore that was `InProgress` when the server restarted.
pub const RESTART_RESTORE_REASON: &str =
    "found a restore with status \"InProgress\" during the server starting, mark it as \"Failed\"";

/// Velero's default backup TTL (30 days).
const DEFAULT_TTL_SECONDS: i64 = 720 * 3600;

/// `velero.io/v1` `Backup`.
pub fn backup_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("velero.io", "v1", "Backup"),
        "backups",
    )
}

/// `velero.io/v1` `ServerStatusRequest`.
pub fn server_status_request_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("velero.io", "v1", "ServerStatusRequest"),
        "serverstatusrequests",
    )
}

/// `velero.io/v1` `Restore`.
pub fn restore_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("velero.io", "v1", "Restore"),
        "restores",
    )
}

/// A minimal Backup of `included_namespaces`, for tests that drive the simulator
/// without the operator.
pub fn backup(namespace: &str, name: &str, included_namespaces: &[&str]) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "velero.io/v1",
        "kind": "Backup",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "includedNamespaces": included_namespaces, "ttl": "720h0m0s" },
    }))?)
}

/// A minimal Restore from the Backup `backup_name`.
pub fn restore(namespace: &str, name: &str, backup_name: &str) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "velero.io/v1",
        "kind": "Restore",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "backupName": backup_name, "restorePVs": true },
    }))?)
}

/// How the simulated Velero runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeleroOptions {
    /// Duration, outcome, failure reason, concurrency.
    pub sim: SimOptions,
    /// `status.progress.totalItems` of every Backup and Restore.
    pub total_items: i64,
    /// Bytes of all the PodVolumeBackups of a Backup (see the module documentation).
    pub backup_size_bytes: i64,
    /// PodVolumeBackups per Backup (0: the Backup copies no pod volume).
    pub pod_volumes: u32,
    /// `status.errors` of a PartiallyFailed Backup or Restore.
    pub partial_errors: i64,
    /// `status.warnings` at the end (left out when 0, as Velero does).
    pub warnings: i64,
    /// Progress writes while `InProgress` (at least 1; the last one is the end).
    pub steps: u32,
    /// The version a `ServerStatusRequest` is answered with.
    pub server_version: String,
}

impl Default for VeleroOptions {
    fn default() -> Self {
        Self {
            sim: SimOptions::default(),
            total_items: 412,
            backup_size_bytes: 19_756_849_562, // 18.4 GiB
            pod_volumes: 2,
            partial_errors: 2,
            warnings: 0,
            server_version: "v1.14.0".to_owned(),
            steps: 4,
        }
    }
}

/// Settings a job needs besides its plan.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    total_items: i64,
    backup_size_bytes: i64,
    pod_volumes: u32,
    partial_errors: i64,
    warnings: i64,
    steps: u32,
}

/// A running simulated Velero; stops when dropped.
pub struct VeleroSimulator {
    client: Client,
    namespace: Option<String>,
    sizes: Sizes,
    server_version: String,
    shared: Arc<Shared>,
    drivers: Drivers,
}

impl std::fmt::Debug for VeleroSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VeleroSimulator")
            .field("namespace", &self.namespace)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl VeleroSimulator {
    /// Start in `namespace` (Velero's own, e.g. `velero`; `None` for every namespace)
    /// with the default [`VeleroOptions`].
    pub fn start(client: Client, namespace: Option<&str>) -> Self {
        Self::start_with(client, namespace, VeleroOptions::default())
    }

    /// Start in `namespace` (or every namespace with `None`).
    pub fn start_with(client: Client, namespace: Option<&str>, options: VeleroOptions) -> Self {
        let sizes = Sizes {
            total_items: options.total_items.max(0),
            backup_size_bytes: options.backup_size_bytes.max(0),
            pod_volumes: options.pod_volumes,
            partial_errors: options.partial_errors.max(1),
            warnings: options.warnings.max(0),
            steps: options.steps.max(1),
        };
        let mut sim = Self {
            client,
            namespace: namespace.map(str::to_owned),
            sizes,
            server_version: options.server_version,
            shared: Shared::new(options.sim),
            drivers: Drivers::new(),
        };
        sim.spawn();
        sim
    }

    fn spawn(&mut self) {
        let mut drivers = Drivers::new();
        for kind in [Kind::Backup, Kind::Restore] {
            let sizes = self.sizes;
            drivers.spawn(
                &self.client,
                self.namespace.as_deref(),
                kind.resource(),
                self.shared.clone(),
                wants,
                move |job| run(job, kind, sizes),
            );
        }
        // The server answers ServerStatusRequests with its version, as Velero does.
        let version = self.server_version.clone();
        drivers.spawn(
            &self.client,
            self.namespace.as_deref(),
            server_status_request_resource(),
            self.shared.clone(),
            unanswered,
            move |job| {
                let version = version.clone();
                async move {
                    job.write(json!({
                        "phase": "Processed",
                        "serverVersion": version,
                        "processedTimestamp": now_rfc3339(),
                    }))
                    .await
                }
            },
        );
        self.drivers = drivers;
    }

    /// Steer the Backup or Restore named `name` (in any namespace watched).
    pub fn set_for_name(&self, name: &str, control: Control) {
        self.shared.set_for_name(name, control);
    }

    /// Steer the Backups and Restores labelled `app.vworkspace.io/operation-id:
    /// <operation_id>` (the operator's children of that Operation).
    pub fn set_for_operation(&self, operation_id: &str, control: Control) {
        self.shared.set_for_operation(operation_id, control);
    }

    /// Forget every override set by name or operation.
    pub fn clear_overrides(&self) {
        self.shared.clear_overrides();
    }

    /// Counts of what was done so far (across restarts).
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Restart the server: stop the running work, mark every `InProgress` Backup and
    /// Restore `Failed` as Velero does at start-up, and start again. Returns how many
    /// objects were marked.
    pub async fn restart(&mut self) -> Result<usize> {
        self.drivers.shutdown().await;
        let mut marked = 0;
        for kind in [Kind::Backup, Kind::Restore] {
            let resource = kind.resource();
            let api: Api<DynamicObject> = match &self.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
                None => Api::all_with(self.client.clone(), &resource),
            };
            for obj in api.list(&ListParams::default()).await? {
                if phase(&obj) != "InProgress" {
                    continue;
                }
                let status = json!({
                    "phase": "Failed",
                    "failureReason": kind.restart_reason(),
                    "completionTimestamp": now_rfc3339(),
                });
                let ns = obj.namespace().unwrap_or_default();
                match patch_status(
                    &self.client,
                    &resource,
                    &ns,
                    &obj.name_any(),
                    status,
                    &self.shared,
                )
                .await
                {
                    Ok(()) => marked += 1,
                    Err(WriteError::Gone) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        self.spawn();
        Ok(marked)
    }

    /// Stop, waiting until no job runs any more (dropping stops too, without waiting);
    /// [`stats`](Self::stats) stays readable.
    pub async fn stop(&mut self) {
        self.drivers.shutdown().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Backup,
    Restore,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Self::Backup => backup_resource(),
            Self::Restore => restore_resource(),
        }
    }

    fn restart_reason(self) -> &'static str {
        match self {
            Self::Backup => RESTART_BACKUP_REASON,
            Self::Restore => RESTART_RESTORE_REASON,
        }
    }

    /// The progress field that counts items done.
    fn done_field(self) -> &'static str {
        match self {
            Self::Backup => "itemsBackedUp",
            Self::Restore => "itemsRestored",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
        }
    }
}

fn phase(obj: &DynamicObject) -> &str {
    obj.data["status"]["phase"].as_str().unwrap_or_default()
}

/// New objects get the whole run; objects left finalizing (by a restart) are finished.
/// One key for both: a run's own `Finalizing` write, seen after the run ended, must not
/// start a second job.
fn unanswered(obj: &DynamicObject) -> Option<String> {
    (phase(obj) != "Processed").then(|| "velero".to_owned())
}

fn wants(obj: &DynamicObject) -> Option<String> {
    match phase(obj) {
        "" | "New" | "Finalizing" | "FinalizingPartiallyFailed" => Some("velero".to_owned()),
        _ => None,
    }
}

async fn run(mut job: Job, kind: Kind, sizes: Sizes) -> Result<(), WriteError> {
    match phase(&job.obj) {
        "Finalizing" => return job.write(end(&job, kind, sizes, Outcome::Succeeded)).await,
        "FinalizingPartiallyFailed" => {
            return job
                .write(end(&job, kind, sizes, Outcome::PartiallyFailed))
                .await;
        }
        _ => {}
    }
    job.write(json!({ "phase": "New" })).await?;

    let spec = &job.obj.data["spec"];
    let validation_error = match kind {
        Kind::Backup
            if spec["includedNamespaces"]
                .as_array()
                .is_none_or(|a| a.is_empty()) =>
        {
            Some("spec.includedNamespaces must name at least one namespace")
        }
        Kind::Restore if spec["backupName"].as_str().is_none_or(str::is_empty) => Some(
            "Either a backup or schedule must be specified as a source for the restore, but not both",
        ),
        _ => None,
    };
    if let Some(error) = validation_error {
        return job
            .write(json!({ "phase": "FailedValidation", "validationErrors": [error] }))
            .await;
    }

    let started = now();
    let mut status = json!({
        "phase": "InProgress",
        "startTimestamp": rfc3339(started),
        "progress": progress(kind, sizes, 0),
    });
    if kind == Kind::Backup {
        let ttl = spec["ttl"]
            .as_str()
            .and_then(parse_go_duration)
            .unwrap_or(DEFAULT_TTL_SECONDS);
        let expiration = started
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(ttl))
            .unwrap_or(started);
        status["expiration"] = json!(rfc3339(expiration));
    }
    job.write(status).await?;

    // Progress rises in `steps` writes; a failure stops half way.
    let failing = matches!(job.plan.outcome, Outcome::Failed | Outcome::Error);
    let steps = sizes.steps;
    let step = job.plan.duration / steps;
    let last = if failing { steps.div_ceil(2) } else { steps };
    for i in 1..last {
        job.wait(step).await;
        let done = sizes.total_items * i64::from(i) / i64::from(steps);
        job.write(json!({ "progress": progress(kind, sizes, done) }))
            .await?;
    }
    job.wait(step).await;

    let outcome = job.plan.outcome;
    match outcome {
        Outcome::Succeeded | Outcome::PartiallyFailed => {
            let finalizing = if outcome.is_success() {
                "Finalizing"
            } else {
                "FinalizingPartiallyFailed"
            };
            if kind == Kind::Backup {
                record_pod_volumes(&job, sizes).await?;
            }
            let mut status = json!({
                "phase": finalizing,
                "progress": progress(kind, sizes, sizes.total_items),
            });
            if !outcome.is_success() {
                status["errors"] = json!(sizes.partial_errors);
            }
            job.write(status).await?;
            job.write(end(&job, kind, sizes, outcome)).await
        }
        Outcome::Failed | Outcome::Error => job.write(end(&job, kind, sizes, outcome)).await,
    }
}

/// The final status for `outcome`.
fn end(job: &Job, kind: Kind, sizes: Sizes, outcome: Outcome) -> Value {
    let mut status = match outcome {
        Outcome::Succeeded => json!({
            "phase": "Completed",
            "progress": progress(kind, sizes, sizes.total_items),
        }),
        Outcome::PartiallyFailed => json!({
            "phase": "PartiallyFailed",
            // What an earlier run counted, when finishing one left finalizing.
            "errors": job.obj.data["status"]["errors"]
                .as_i64()
                .unwrap_or(sizes.partial_errors),
            "progress": progress(kind, sizes, sizes.total_items),
        }),
        Outcome::Failed | Outcome::Error => json!({
            "phase": "Failed",
            "failureReason": job.plan.reason_or(&format!(
                "the simulated {} failed (sim.vworkspace.io/outcome)",
                kind.noun()
            )),
        }),
    };
    status["completionTimestamp"] = json!(now_rfc3339());
    if sizes.warnings > 0 {
        status["warnings"] = json!(sizes.warnings);
    }
    status
}

fn progress(kind: Kind, sizes: Sizes, done: i64) -> Value {
    json!({ "totalItems": sizes.total_items, kind.done_field(): done })
}

/// `velero.io/v1` `PodVolumeBackup`.
pub fn pod_volume_backup_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("velero.io", "v1", "PodVolumeBackup"),
        "podvolumebackups",
    )
}

/// The byte counts of the `n` pod volumes of a backup of `total` bytes (the last takes
/// the remainder).
fn volume_shares(total: i64, n: u32) -> Vec<i64> {
    let n = i64::from(n);
    (0..n)
        .map(|i| {
            let share = total / n;
            if i == n - 1 {
                total - share * (n - 1)
            } else {
                share
            }
        })
        .collect()
}

/// Create the Backup's PodVolumeBackups, each `Completed` with its bytes (idempotent: a
/// job run again after a restart finds them and writes their status again).
async fn record_pod_volumes(job: &Job, sizes: Sizes) -> Result<(), WriteError> {
    let resource = pod_volume_backup_resource();
    let ns = job.obj.namespace().unwrap_or_default();
    let backup = job.obj.name_any();
    let uid = job.obj.uid().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(job.client().clone(), &ns, &resource);
    for (i, bytes) in volume_shares(sizes.backup_size_bytes, sizes.pod_volumes)
        .into_iter()
        .enumerate()
    {
        let name = format!("{backup}-v{i}");
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "velero.io/v1",
            "kind": "PodVolumeBackup",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": { "velero.io/backup-name": backup, "velero.io/backup-uid": uid },
                "ownerReferences": [{
                    "apiVersion": "velero.io/v1", "kind": "Backup", "name": backup,
                    "uid": uid, "controller": true
                }],
            },
            "spec": { "volume": format!("data-{i}") },
        }))
        .map_err(|e| WriteError::Failed(kube::Error::SerdeError(e)))?;
        job.shared().count_write();
        match api.create(&kube::api::PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // No PodVolumeBackup CRD on this cluster: Velero would not back up pod
            // volumes this way either.
            Err(kube::Error::Api(s)) if s.code == 404 && i == 0 => return Ok(()),
            Err(err) => return Err(WriteError::Failed(err)),
        }
        let status = json!({
            "phase": "Completed",
            "progress": { "totalBytes": bytes, "bytesDone": bytes },
            "completionTimestamp": now_rfc3339(),
        });
        patch_status(job.client(), &resource, &ns, &name, status, job.shared()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_wording_is_velero_s() {
        // Velero builds it as fmt.Sprintf("found a backup with status %q during the
        // server starting, mark it as %q", InProgress, Failed).
        assert_eq!(
            RESTART_BACKUP_REASON,
            format!(
                "found a backup with status {:?} during the server starting, mark it as {:?}",
                "InProgress", "Failed"
            )
        );
        assert!(RESTART_RESTORE_REASON.starts_with("found a restore with status"));
    }

    #[test]
    fn progress_counts_items_only_and_volumes_share_the_bytes() {
        let sizes = Sizes {
            total_items: 10,
            backup_size_bytes: 1000,
            pod_volumes: 3,
            partial_errors: 1,
            warnings: 0,
            steps: 2,
        };
        assert_eq!(
            progress(Kind::Backup, sizes, 5),
            json!({ "totalItems": 10, "itemsBackedUp": 5 })
        );
        assert_eq!(
            progress(Kind::Restore, sizes, 10),
            json!({ "totalItems": 10, "itemsRestored": 10 })
        );
        assert_eq!(volume_shares(1000, 3), [333, 333, 334]);
        assert_eq!(volume_shares(1000, 0), Vec::<i64>::new());
    }
}
