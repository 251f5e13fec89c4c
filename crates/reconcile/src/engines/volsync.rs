//! volsync: `backup.volsync`, a ReplicationSource in the target's namespace with a manual
//! trigger; done when `status.lastManualSync` equals the trigger.
//!
//! Invariants:
//! * the trigger is the child's own name (from the Operation's uid), so it is the same
//!   value on every reconcile and VolSync syncs exactly once for the Operation;
//! * parameters: `sourcePVC` (required) and exactly one mover mapping (`restic`, `rclone`
//!   or `rsyncTLS`), passed through to VolSync as written;
//! * a failed mover run is not terminal (VolSync retries it): the Operation shows the
//!   failure while it waits, and a deadline reached after one reports `VolSyncSyncFailed`
//!   with the mover's log tail instead of a bare `Timeout`;
//! * cancel and timeout delete the ReplicationSource (VolSync stops its mover).

use serde_json::{Map, Value};
use vworkspace_api::conditions::operation::reasons;
use vworkspace_api::operation::child_name;
use vworkspace_api::thirdparty::volsync::{
    ReplicationSource, ReplicationSourceSpec, Trigger, mover_result,
};

use super::{Child, Observation, Params, Stop, StopSupport, child_meta, outputs};
use crate::operation::Identity;

/// Parameters of `backup.volsync`.
pub const PARAMETERS: &[&str] = &["sourcePVC", "restic", "rclone", "rsyncTLS"];

/// Which mover and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mover {
    /// `spec.restic`.
    Restic(Map<String, Value>),
    /// `spec.rclone`.
    Rclone(Map<String, Value>),
    /// `spec.rsyncTLS`.
    RsyncTls(Map<String, Value>),
}

/// Checked parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolsyncParams {
    /// The PVC to back up.
    pub source_pvc: String,
    /// The mover.
    pub mover: Mover,
}

/// Checks parameters.
pub fn params(p: &Params<'_>) -> Result<VolsyncParams, String> {
    let source_pvc = p
        .name("sourcePVC")?
        .ok_or_else(|| "parameter sourcePVC is required".to_owned())?;
    let movers: Vec<Mover> = [
        p.object("restic")?.map(Mover::Restic),
        p.object("rclone")?.map(Mover::Rclone),
        p.object("rsyncTLS")?.map(Mover::RsyncTls),
    ]
    .into_iter()
    .flatten()
    .collect();
    let [mover] = <[Mover; 1]>::try_from(movers).map_err(|m| {
        format!(
            "exactly one of the parameters restic, rclone or rsyncTLS is required ({} given)",
            m.len()
        )
    })?;
    Ok(VolsyncParams { source_pvc, mover })
}

/// The manual trigger value of the Operation's ReplicationSource.
pub fn trigger(id: &Identity) -> String {
    child_name(&id.uid)
}

/// The ReplicationSource to create.
pub fn child(id: &Identity, target: &str, params: &VolsyncParams) -> Child {
    let (restic, rclone, rsync_tls) = match &params.mover {
        Mover::Restic(m) => (Some(m.clone()), None, None),
        Mover::Rclone(m) => (None, Some(m.clone()), None),
        Mover::RsyncTls(m) => (None, None, Some(m.clone())),
    };
    let mut rs = ReplicationSource::new(
        &child_name(&id.uid),
        ReplicationSourceSpec {
            source_pvc: Some(params.source_pvc.clone()),
            trigger: Some(Trigger {
                schedule: None,
                manual: Some(trigger(id)),
            }),
            restic,
            rclone,
            rsync_tls,
        },
    );
    rs.metadata = child_meta(id, target, child_name(&id.uid), &id.namespace);
    Child::ReplicationSource(rs)
}

/// True when the latest mover run failed (VolSync retries it).
pub fn mover_failed(rs: &ReplicationSource) -> Option<String> {
    let m = rs.status.as_ref()?.latest_mover_status.as_ref()?;
    (m.result.as_deref() == Some(mover_result::FAILED)).then(|| {
        let logs = m.logs.as_deref().unwrap_or("").trim();
        let tail: String = logs
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        tail
    })
}

/// Reads a ReplicationSource.
pub fn observe(rs: &ReplicationSource) -> Observation {
    let status = rs.status.clone().unwrap_or_default();
    let trigger = rs.spec.trigger.as_ref().and_then(|t| t.manual.clone());
    let pvc = rs.spec.source_pvc.clone().unwrap_or_default();
    if trigger.is_some() && status.last_manual_sync == trigger {
        return Observation::Succeeded {
            reason: reasons::VOLSYNC_SYNC_COMPLETED,
            message: format!("volsync.backube/ReplicationSource synced PVC {pvc}"),
            outputs: outputs([
                ("replicationSource", rs.metadata.name.clone()),
                ("sourcePVC", Some(pvc)),
                (
                    "lastSyncTime",
                    status.last_sync_time.map(|t| t.0.to_string()),
                ),
                ("lastSyncDuration", status.last_sync_duration),
            ]),
        };
    }
    if let Some(tail) = mover_failed(rs) {
        return Observation::Running {
            message: format!(
                "volsync.backube/ReplicationSource mover failed, VolSync retries: {tail}"
            ),
        };
    }
    if status.last_sync_start_time.is_some() {
        Observation::Running {
            message: format!("volsync.backube/ReplicationSource syncing PVC {pvc}"),
        }
    } else {
        Observation::Pending {
            message: format!("volsync.backube/ReplicationSource waiting to sync PVC {pvc}"),
        }
    }
}

/// A ReplicationSource is stopped by deleting it.
pub fn stop(child: &Child) -> StopSupport {
    StopSupport::Stop(Stop::Delete(vec![child.child_ref()]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;
    use vworkspace_api::thirdparty::volsync::ReplicationSourceStatus;

    fn rs(status: serde_json::Value) -> ReplicationSource {
        let mut r = ReplicationSource::new(
            "op-1",
            ReplicationSourceSpec {
                source_pvc: Some("data".into()),
                trigger: Some(Trigger {
                    schedule: None,
                    manual: Some("op-1".into()),
                }),
                ..ReplicationSourceSpec::default()
            },
        );
        r.status = Some(serde_json::from_value::<ReplicationSourceStatus>(status).unwrap());
        r
    }

    #[test]
    fn volsync_vocabulary() {
        let cases = [
            (json!({}), "Pending", "waiting"),
            (
                json!({"lastSyncStartTime": "2026-05-28T10:00:00Z"}),
                "Running",
                "syncing PVC data",
            ),
            (
                json!({"lastManualSync": "an-older-trigger", "lastSyncStartTime": "2026-05-28T10:00:00Z"}),
                "Running",
                "syncing",
            ),
            (
                json!({"latestMoverStatus": {"result": "Failed", "logs": "line1\nrepository locked"}}),
                "Running",
                "retries: repository locked",
            ),
            (
                json!({"latestMoverStatus": {"result": "Successful"}, "lastManualSync": "op-1", "lastSyncDuration": "1m2s"}),
                "Succeeded:VolSyncSyncCompleted",
                "synced PVC data",
            ),
        ];
        for (status, want, fragment) in cases {
            let o = observe(&rs(status.clone()));
            let (kind, message) = match &o {
                Observation::Pending { message } => ("Pending".to_owned(), message.clone()),
                Observation::Running { message } => ("Running".to_owned(), message.clone()),
                Observation::Succeeded {
                    reason, message, ..
                } => (format!("Succeeded:{reason}"), message.clone()),
                other => panic!("{other:?}"),
            };
            assert_eq!(kind, want, "{status}");
            assert!(message.contains(fragment), "{status}: {message}");
        }
        let Observation::Succeeded { outputs, .. } = observe(&rs(
            json!({"lastManualSync": "op-1", "lastSyncDuration": "1m2s"}),
        )) else {
            panic!("succeeded");
        };
        assert_eq!(outputs["lastSyncDuration"], "1m2s");
    }

    #[test]
    fn parameters_need_one_mover() {
        let p = |v: serde_json::Value| params(&Params(v.as_object().unwrap()));
        assert!(matches!(
            p(json!({"sourcePVC": "data", "restic": {"repository": "s"}}))
                .unwrap()
                .mover,
            Mover::Restic(_)
        ));
        assert!(
            p(json!({"sourcePVC": "data"}))
                .unwrap_err()
                .contains("0 given")
        );
        assert!(
            p(json!({"sourcePVC": "data", "restic": {}, "rclone": {}}))
                .unwrap_err()
                .contains("2 given")
        );
        assert!(p(json!({"restic": {}})).unwrap_err().contains("sourcePVC"));
    }
}
