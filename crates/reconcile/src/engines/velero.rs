//! velero: `backup.velero` (a Velero Backup) and `restore.velero` (a Velero Restore), both
//! created in Velero's namespace (parameter `veleroNamespace`, default `velero`) with
//! `includedNamespaces` = the target's namespace.
//!
//! Invariants:
//! * Velero's namespace is never the Operation's, so these children carry no owner
//!   reference; the Operation's finalizer deletes them;
//! * a Restore reads its backup from `backupName`, or from the `backupName` output of a
//!   succeeded Backup Operation named by `fromOperation` (exactly one of the two);
//! * the phases, in Velero's words: `New` is pending; `InProgress`,
//!   `WaitingForPluginOperations[PartiallyFailed]` and `Finalizing[PartiallyFailed]` run;
//!   `Completed` succeeds; `PartiallyFailed`, `Failed` and `FailedValidation` fail;
//!   `Deleting` (a Backup being removed) and a `Failed` whose failure reason says Velero
//!   restarted under it are lost work;
//! * Velero cannot stop a Backup or Restore once it left `New`: cancel and timeout say so
//!   and let it finish; in `New` the object is deleted before Velero picks it up.

use std::collections::BTreeMap;

use vworkspace_api::conditions::operation::reasons;
use vworkspace_api::operation::child_name;
use vworkspace_api::thirdparty::velero::{
    self as v, Backup, BackupSpec, PodVolumeBackup, Restore, RestoreSpec,
};

use super::{Child, Observation, Params, Stop, StopSupport, child_meta, human_bytes, outputs};
use crate::operation::Identity;

/// Parameters of `backup.velero`.
pub const BACKUP_PARAMETERS: &[&str] = &[
    "veleroNamespace",
    "storageLocation",
    "ttl",
    "snapshotVolumes",
    "defaultVolumesToFsBackup",
];
/// Parameters of `restore.velero`.
pub const RESTORE_PARAMETERS: &[&str] = &[
    "veleroNamespace",
    "backupName",
    "fromOperation",
    "restorePVs",
    "existingResourcePolicy",
];

/// Velero's namespace when `veleroNamespace` is not given.
pub const DEFAULT_NAMESPACE: &str = "velero";

/// What Velero writes in `failureReason` when it finds its own in-flight work after a
/// restart ("found a backup with status "InProgress" during the server starting, mark it
/// as "Failed"").
const RESTART_MARK: &str = "during the server starting";

/// `backup.velero` parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupParams {
    /// Velero's namespace.
    pub velero_namespace: String,
    /// `spec.storageLocation`.
    pub storage_location: Option<String>,
    /// `spec.ttl`.
    pub ttl: Option<String>,
    /// `spec.snapshotVolumes`.
    pub snapshot_volumes: Option<bool>,
    /// `spec.defaultVolumesToFsBackup`.
    pub default_volumes_to_fs_backup: Option<bool>,
}

/// Where a restore takes its backup from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreSource {
    /// A Velero Backup by name.
    Backup(String),
    /// The `backupName` output of this Backup Operation (same namespace).
    Operation(String),
}

/// `restore.velero` parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreParams {
    /// Velero's namespace.
    pub velero_namespace: String,
    /// The backup to restore.
    pub source: RestoreSource,
    /// `spec.restorePVs`.
    pub restore_pvs: Option<bool>,
    /// `spec.existingResourcePolicy` (`none` or `update`).
    pub existing_resource_policy: Option<String>,
}

fn namespace(p: &Params<'_>) -> Result<String, String> {
    Ok(p.name("veleroNamespace")?
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()))
}

/// Checks `backup.velero` parameters.
pub fn backup_params(p: &Params<'_>) -> Result<BackupParams, String> {
    Ok(BackupParams {
        velero_namespace: namespace(p)?,
        storage_location: p.string("storageLocation")?,
        ttl: p.string("ttl")?,
        snapshot_volumes: p.bool("snapshotVolumes")?,
        default_volumes_to_fs_backup: p.bool("defaultVolumesToFsBackup")?,
    })
}

/// Checks `restore.velero` parameters.
pub fn restore_params(p: &Params<'_>) -> Result<RestoreParams, String> {
    let source = match (p.name("backupName")?, p.name("fromOperation")?) {
        (Some(b), None) => RestoreSource::Backup(b),
        (None, Some(o)) => RestoreSource::Operation(o),
        (Some(_), Some(_)) => {
            return Err("parameters backupName and fromOperation exclude each other".to_owned());
        }
        (None, None) => {
            return Err(
                "parameter backupName (a Velero Backup) or fromOperation (a Backup Operation) is required"
                    .to_owned(),
            );
        }
    };
    let existing_resource_policy = p.string("existingResourcePolicy")?;
    if let Some(policy) = &existing_resource_policy
        && policy != "none"
        && policy != "update"
    {
        return Err(format!(
            "parameter existingResourcePolicy must be none or update, not {policy:?}"
        ));
    }
    Ok(RestoreParams {
        velero_namespace: namespace(p)?,
        source,
        restore_pvs: p.bool("restorePVs")?,
        existing_resource_policy,
    })
}

/// The Backup to create.
pub fn backup(id: &Identity, target: &str, params: &BackupParams) -> Child {
    let mut b = Backup::new(
        &child_name(&id.uid),
        BackupSpec {
            included_namespaces: vec![id.namespace.clone()],
            storage_location: params.storage_location.clone(),
            ttl: params.ttl.clone(),
            snapshot_volumes: params.snapshot_volumes,
            default_volumes_to_fs_backup: params.default_volumes_to_fs_backup,
        },
    );
    b.metadata = child_meta(id, target, child_name(&id.uid), &params.velero_namespace);
    Child::Backup(b)
}

/// The Restore to create, from the resolved backup name.
pub fn restore(id: &Identity, target: &str, params: &RestoreParams, backup_name: &str) -> Child {
    let mut r = Restore::new(
        &child_name(&id.uid),
        RestoreSpec {
            backup_name: Some(backup_name.to_owned()),
            included_namespaces: vec![id.namespace.clone()],
            restore_pvs: params.restore_pvs,
            existing_resource_policy: params.existing_resource_policy.clone(),
        },
    );
    r.metadata = child_meta(id, target, child_name(&id.uid), &params.velero_namespace);
    Child::Restore(r)
}

fn lost_on_restart(failure: Option<&str>) -> bool {
    failure.is_some_and(|f| f.contains(RESTART_MARK))
}

fn running(phase: &str) -> bool {
    matches!(
        phase,
        v::phase::IN_PROGRESS
            | v::phase::WAITING_FOR_PLUGIN_OPERATIONS
            | v::phase::WAITING_FOR_PLUGIN_OPERATIONS_PARTIALLY_FAILED
            | v::phase::FINALIZING
            | v::phase::FINALIZING_PARTIALLY_FAILED
    )
}

/// Whether the controller should total the Backup's volume bytes ([`volume_bytes`]) before
/// it plans: the Backup reached an end that reports them (Completed, PartiallyFailed).
pub fn wants_volume_bytes(b: &Backup) -> bool {
    let phase = b.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(
        phase,
        Some(v::phase::COMPLETED | v::phase::PARTIALLY_FAILED)
    )
}

/// The bytes of volume data Velero moved for a Backup: the sum of `status.progress.totalBytes`
/// of its PodVolumeBackups (found by [`v::BACKUP_UID_LABEL`]). `None` when the Backup
/// copied no pod volume (nothing to report, rather than "0 B"). A failed
/// PodVolumeBackup counts the bytes it did move (`bytesDone`).
pub fn volume_bytes(pvbs: &[PodVolumeBackup]) -> Option<u64> {
    if pvbs.is_empty() {
        return None;
    }
    let total = pvbs
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let progress = status.progress.unwrap_or_default();
            let bytes = if status.phase.as_deref() == Some(v::phase::FAILED) {
                progress.bytes_done
            } else {
                progress.total_bytes.or(progress.bytes_done)
            };
            u64::try_from(bytes.unwrap_or(0)).unwrap_or(0)
        })
        .fold(0u64, u64::saturating_add);
    Some(total)
}

/// Reads a Backup. `volume_bytes` is the size of the volume data Velero moved for it, when
/// the controller knows it (the sum of `status.progress.totalBytes` of the Backup's
/// PodVolumeBackups / DataUploads: the Backup itself reports items, not bytes).
pub fn observe_backup(b: &Backup, volume_bytes: Option<u64>) -> Observation {
    let name = b.metadata.name.clone().unwrap_or_default();
    let status = b.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("");
    let progress = status.progress.clone().unwrap_or_default();
    let done = progress.items_backed_up.unwrap_or(0);
    let total = progress.total_items.unwrap_or(done);
    let size = volume_bytes
        .map(|n| format!(", {}", human_bytes(n)))
        .unwrap_or_default();
    let counts = |errors: Option<i64>, warnings: Option<i64>| {
        format!(
            "{} errors, {} warnings",
            errors.unwrap_or(0),
            warnings.unwrap_or(0)
        )
    };
    let outs = || {
        outputs([
            ("backupName", Some(name.clone())),
            ("itemsBackedUp", Some(done.to_string())),
            ("totalItems", Some(total.to_string())),
            ("sizeBytes", volume_bytes.map(|n| n.to_string())),
            ("size", volume_bytes.map(human_bytes)),
            ("warnings", status.warnings.map(|n| n.to_string())),
            ("errors", status.errors.map(|n| n.to_string())),
        ])
    };
    match phase {
        "" | v::phase::NEW => Observation::Pending {
            message: format!("velero.io/Backup {name} is queued (phase New)"),
        },
        p if running(p) => Observation::Running {
            message: format!("velero.io/Backup {name} {p}; {done}/{total} items"),
        },
        v::phase::COMPLETED => Observation::Succeeded {
            reason: reasons::VELERO_BACKUP_COMPLETED,
            message: format!("velero.io/Backup completed; {done} items{size}"),
            outputs: outs(),
        },
        v::phase::PARTIALLY_FAILED => Observation::Failed {
            reason: reasons::VELERO_BACKUP_PARTIALLY_FAILED,
            message: format!(
                "velero.io/Backup partially failed; {done}/{total} items{size}, {}",
                counts(status.errors, status.warnings)
            ),
            outputs: outs(),
        },
        v::phase::FAILED if lost_on_restart(status.failure_reason.as_deref()) => {
            Observation::Lost {
                message: format!(
                    "velero.io/Backup {name} was in progress when Velero restarted: {}",
                    status.failure_reason.unwrap_or_default()
                ),
            }
        }
        v::phase::FAILED => Observation::Failed {
            reason: reasons::VELERO_BACKUP_FAILED,
            message: format!(
                "velero.io/Backup failed: {}",
                status
                    .failure_reason
                    .unwrap_or_else(|| "no failure reason given".to_owned())
            ),
            outputs: BTreeMap::new(),
        },
        v::phase::FAILED_VALIDATION => Observation::Failed {
            reason: reasons::VELERO_BACKUP_FAILED,
            message: format!(
                "velero.io/Backup failed validation: {}",
                status.validation_errors.join("; ")
            ),
            outputs: BTreeMap::new(),
        },
        v::phase::DELETING => Observation::Lost {
            message: format!("velero.io/Backup {name} is being deleted"),
        },
        other => Observation::Running {
            message: format!("velero.io/Backup {name} in phase {other}"),
        },
    }
}

/// Reads a Restore.
pub fn observe_restore(r: &Restore) -> Observation {
    let name = r.metadata.name.clone().unwrap_or_default();
    let backup = r.spec.backup_name.clone().unwrap_or_default();
    let status = r.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("");
    let progress = status.progress.clone().unwrap_or_default();
    let done = progress.items_restored.unwrap_or(0);
    let total = progress.total_items.unwrap_or(done);
    let outs = || {
        outputs([
            ("restoreName", Some(name.clone())),
            ("backupName", Some(backup.clone())),
            ("itemsRestored", Some(done.to_string())),
            ("totalItems", Some(total.to_string())),
            ("warnings", status.warnings.map(|n| n.to_string())),
            ("errors", status.errors.map(|n| n.to_string())),
        ])
    };
    match phase {
        "" | v::phase::NEW => Observation::Pending {
            message: format!("velero.io/Restore {name} is queued (phase New)"),
        },
        p if running(p) => Observation::Running {
            message: format!("velero.io/Restore {name} {p}; {done}/{total} items"),
        },
        v::phase::COMPLETED => Observation::Succeeded {
            reason: reasons::VELERO_RESTORE_COMPLETED,
            message: format!(
                "velero.io/Restore completed; {done} items restored from backup {backup}"
            ),
            outputs: outs(),
        },
        v::phase::PARTIALLY_FAILED => Observation::Failed {
            reason: reasons::VELERO_RESTORE_PARTIALLY_FAILED,
            message: format!(
                "velero.io/Restore partially failed; {done}/{total} items from backup {backup}, {} errors, {} warnings",
                status.errors.unwrap_or(0),
                status.warnings.unwrap_or(0)
            ),
            outputs: outs(),
        },
        v::phase::FAILED if lost_on_restart(status.failure_reason.as_deref()) => {
            Observation::Lost {
                message: format!(
                    "velero.io/Restore {name} was in progress when Velero restarted: {}",
                    status.failure_reason.unwrap_or_default()
                ),
            }
        }
        v::phase::FAILED => Observation::Failed {
            reason: reasons::VELERO_RESTORE_FAILED,
            message: format!(
                "velero.io/Restore failed: {}",
                status
                    .failure_reason
                    .unwrap_or_else(|| "no failure reason given".to_owned())
            ),
            outputs: BTreeMap::new(),
        },
        v::phase::FAILED_VALIDATION => Observation::Failed {
            reason: reasons::VELERO_RESTORE_FAILED,
            message: format!(
                "velero.io/Restore failed validation: {}",
                status.validation_errors.join("; ")
            ),
            outputs: BTreeMap::new(),
        },
        other => Observation::Running {
            message: format!("velero.io/Restore {name} in phase {other}"),
        },
    }
}

/// How a Backup / Restore in `phase` can be stopped: deleted while still `New`, not at
/// all afterwards.
pub fn stop(child: &Child) -> StopSupport {
    let (phase, kind) = match child {
        Child::Backup(b) => (b.status.as_ref().and_then(|s| s.phase.clone()), "Backup"),
        Child::Restore(r) => (r.status.as_ref().and_then(|s| s.phase.clone()), "Restore"),
        _ => (None, "object"),
    };
    match phase.as_deref() {
        None | Some("" | v::phase::NEW) => StopSupport::Stop(Stop::Delete(vec![child.child_ref()])),
        Some(p) => StopSupport::NotSupported(format!(
            "Velero cannot stop a {kind} in phase {p}; it runs to its end"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;
    use vworkspace_api::thirdparty::velero::{BackupStatus, RestoreStatus};

    fn backup_in(status: serde_json::Value) -> Backup {
        let mut b = Backup::new("op-6b62a1f0c3d4", BackupSpec::default());
        b.status = Some(serde_json::from_value::<BackupStatus>(status).unwrap());
        b
    }

    fn restore_in(status: serde_json::Value) -> Restore {
        let mut r = Restore::new(
            "op-6b62a1f0c3d4",
            RestoreSpec {
                backup_name: Some("nightly".into()),
                ..RestoreSpec::default()
            },
        );
        r.status = Some(serde_json::from_value::<RestoreStatus>(status).unwrap());
        r
    }

    /// (phase, extra status, expected "Kind:reason", message fragment)
    fn check(obs: &Observation, want: &str, fragment: &str, case: &str) {
        let (kind, reason, message) = match obs {
            Observation::Pending { message } => ("Pending", "", message),
            Observation::Running { message } => ("Running", "", message),
            Observation::Succeeded {
                reason, message, ..
            } => ("Succeeded", *reason, message),
            Observation::Failed {
                reason, message, ..
            } => ("Failed", *reason, message),
            Observation::Lost { message } => ("Lost", "", message),
        };
        assert_eq!(format!("{kind}:{reason}"), want, "{case}");
        assert!(
            message.contains(fragment),
            "{case}: {message:?} lacks {fragment:?}"
        );
    }

    #[test]
    fn backup_vocabulary() {
        let progress = json!({"totalItems": 412, "itemsBackedUp": 200});
        let cases = [
            (json!({}), "Pending:", "queued"),
            (json!({"phase": "New"}), "Pending:", "queued"),
            (
                json!({"phase": "InProgress", "progress": progress}),
                "Running:",
                "InProgress; 200/412 items",
            ),
            (
                json!({"phase": "WaitingForPluginOperations"}),
                "Running:",
                "WaitingForPluginOperations",
            ),
            (
                json!({"phase": "WaitingForPluginOperationsPartiallyFailed"}),
                "Running:",
                "PartiallyFailed",
            ),
            (json!({"phase": "Finalizing"}), "Running:", "Finalizing"),
            (
                json!({"phase": "FinalizingPartiallyFailed"}),
                "Running:",
                "FinalizingPartiallyFailed",
            ),
            (
                json!({"phase": "Completed", "progress": {"totalItems": 412, "itemsBackedUp": 412}}),
                "Succeeded:VeleroBackupCompleted",
                "velero.io/Backup completed; 412 items, 18.4 GiB",
            ),
            (
                json!({"phase": "PartiallyFailed", "errors": 3, "warnings": 2, "progress": {"totalItems": 412, "itemsBackedUp": 409}}),
                "Failed:VeleroBackupPartiallyFailed",
                "409/412 items, 18.4 GiB, 3 errors, 2 warnings",
            ),
            (
                json!({"phase": "Failed", "failureReason": "object storage unreachable"}),
                "Failed:VeleroBackupFailed",
                "object storage unreachable",
            ),
            (
                json!({"phase": "Failed", "failureReason": "found a backup with status \"InProgress\" during the server starting, mark it as \"Failed\""}),
                "Lost:",
                "when Velero restarted",
            ),
            (
                json!({"phase": "FailedValidation", "validationErrors": ["bad ttl", "no location"]}),
                "Failed:VeleroBackupFailed",
                "bad ttl; no location",
            ),
            (json!({"phase": "Deleting"}), "Lost:", "being deleted"),
            (json!({"phase": "SomethingNew"}), "Running:", "SomethingNew"),
        ];
        for (status, want, fragment) in cases {
            let obs = observe_backup(&backup_in(status.clone()), Some(19_756_849_561));
            check(&obs, want, fragment, &status.to_string());
        }
    }

    #[test]
    fn a_completed_backup_reports_its_outputs() {
        let b = backup_in(
            json!({"phase": "Completed", "warnings": 1, "progress": {"totalItems": 12, "itemsBackedUp": 12}}),
        );
        let Observation::Succeeded {
            outputs, message, ..
        } = observe_backup(&b, None)
        else {
            panic!("not succeeded");
        };
        assert_eq!(message, "velero.io/Backup completed; 12 items");
        assert_eq!(outputs["backupName"], "op-6b62a1f0c3d4");
        assert_eq!(outputs["itemsBackedUp"], "12");
        assert_eq!(outputs["warnings"], "1");
        assert!(!outputs.contains_key("sizeBytes"));
        let Observation::Succeeded { outputs, .. } = observe_backup(&b, Some(2048)) else {
            panic!("not succeeded");
        };
        assert_eq!(
            (outputs["sizeBytes"].as_str(), outputs["size"].as_str()),
            ("2048", "2.0 KiB")
        );
    }

    #[test]
    fn restore_vocabulary() {
        let cases = [
            (json!({}), "Pending:", "queued"),
            (json!({"phase": "New"}), "Pending:", "queued"),
            (
                json!({"phase": "InProgress", "progress": {"totalItems": 10, "itemsRestored": 4}}),
                "Running:",
                "4/10 items",
            ),
            (
                json!({"phase": "WaitingForPluginOperations"}),
                "Running:",
                "WaitingForPluginOperations",
            ),
            (json!({"phase": "Finalizing"}), "Running:", "Finalizing"),
            (
                json!({"phase": "Completed", "progress": {"totalItems": 10, "itemsRestored": 10}}),
                "Succeeded:VeleroRestoreCompleted",
                "10 items restored from backup nightly",
            ),
            (
                json!({"phase": "PartiallyFailed", "errors": 1}),
                "Failed:VeleroRestorePartiallyFailed",
                "1 errors",
            ),
            (
                json!({"phase": "Failed", "failureReason": "backup not found"}),
                "Failed:VeleroRestoreFailed",
                "backup not found",
            ),
            (
                json!({"phase": "Failed", "failureReason": "found a restore with status \"InProgress\" during the server starting, mark it as \"Failed\""}),
                "Lost:",
                "restarted",
            ),
            (
                json!({"phase": "FailedValidation", "validationErrors": ["backup nightly not found"]}),
                "Failed:VeleroRestoreFailed",
                "nightly not found",
            ),
        ];
        for (status, want, fragment) in cases {
            check(
                &observe_restore(&restore_in(status.clone())),
                want,
                fragment,
                &status.to_string(),
            );
        }
    }

    #[test]
    fn only_a_new_backup_can_be_stopped() {
        let new = Child::Backup(backup_in(json!({"phase": "New"})));
        assert!(matches!(stop(&new), StopSupport::Stop(Stop::Delete(refs)) if refs.len() == 1));
        let running = Child::Backup(backup_in(json!({"phase": "InProgress"})));
        let StopSupport::NotSupported(why) = stop(&running) else {
            panic!("an in-progress backup cannot be stopped");
        };
        assert!(why.contains("InProgress"), "{why}");
    }

    #[test]
    fn restore_needs_exactly_one_source() {
        let p = |v: serde_json::Value| {
            restore_params(&Params(v.as_object().unwrap())).map(|r| r.source)
        };
        assert_eq!(
            p(json!({"backupName": "nightly"})),
            Ok(RestoreSource::Backup("nightly".into()))
        );
        assert_eq!(
            p(json!({"fromOperation": "b1"})),
            Ok(RestoreSource::Operation("b1".into()))
        );
        assert!(p(json!({})).unwrap_err().contains("backupName"));
        assert!(
            p(json!({"backupName": "a", "fromOperation": "b"}))
                .unwrap_err()
                .contains("exclude")
        );
        assert!(
            p(json!({"backupName": "Not_A_Name"}))
                .unwrap_err()
                .contains("backupName")
        );
        let bad_policy = restore_params(&Params(
            json!({"backupName": "a", "existingResourcePolicy": "merge"})
                .as_object()
                .unwrap(),
        ));
        assert!(bad_policy.unwrap_err().contains("existingResourcePolicy"));
    }

    #[test]
    fn volume_bytes_sum_the_pod_volume_backups() {
        let pvb = |phase: &str, total: i64, done: i64| -> PodVolumeBackup {
            let mut p = PodVolumeBackup::new("x", Default::default());
            p.status = Some(
                serde_json::from_value(
                    json!({"phase": phase, "progress": {"totalBytes": total, "bytesDone": done}}),
                )
                .unwrap(),
            );
            p
        };
        assert_eq!(volume_bytes(&[]), None);
        assert_eq!(
            volume_bytes(&[
                pvb("Completed", 19_000_000_000, 19_000_000_000),
                pvb("Completed", 756_849_562, 756_849_562),
            ]),
            Some(19_756_849_562)
        );
        assert_eq!(
            human_bytes(volume_bytes(&[pvb("Completed", 19_756_849_562, 19_756_849_562)]).unwrap()),
            "18.4 GiB"
        );
        // A failed one counts what it moved.
        assert_eq!(
            volume_bytes(&[pvb("Completed", 100, 100), pvb("Failed", 1000, 40)]),
            Some(140)
        );
        let b = |phase: &str| backup_in(json!({"phase": phase}));
        assert!(wants_volume_bytes(&b("Completed")));
        assert!(wants_volume_bytes(&b("PartiallyFailed")));
        assert!(!wants_volume_bytes(&b("InProgress")));
        assert!(!wants_volume_bytes(&b("Failed")));
    }
}
