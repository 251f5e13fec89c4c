//! snapshot: `backup.snapshot`, one CSI VolumeSnapshot per PersistentVolumeClaim of the
//! application (the PVCs labelled `app.kubernetes.io/instance=<release name>` in the
//! target's namespace), done when every one is `readyToUse`.
//!
//! Invariants:
//! * the set of PVCs is fixed when the Operation is accepted: the snapshot names are
//!   recorded in `status.outputs.volumeSnapshots`, and a recorded snapshot that vanishes
//!   is lost work;
//! * a snapshot's name is the Operation's child name and the PVC's name
//!   ([`snapshot_name`]), at most 253 characters;
//! * an error on a snapshot (`status.error`) is not terminal by itself — the CSI
//!   snapshotter retries — the deadline is: it ends the Operation `SnapshotTimeout`, naming
//!   the errors;
//! * cancel and timeout delete the Operation's snapshots.

use std::collections::BTreeMap;

use vworkspace_api::conditions::operation::reasons;
use vworkspace_api::operation::{ChildRef, child_name};
use vworkspace_api::thirdparty::snapshot::{
    VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec,
};

use super::{Child, Observation, Params, Stop, StopSupport, child_meta};
use crate::operation::Identity;

/// Parameters of `backup.snapshot`.
pub const PARAMETERS: &[&str] = &["volumeSnapshotClassName"];

/// The label that selects the application's PVCs (Helm's instance label).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Output key listing the snapshot names, comma-separated.
pub const OUTPUT_SNAPSHOTS: &str = "volumeSnapshots";

/// Checked parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotParams {
    /// `spec.volumeSnapshotClassName`.
    pub class: Option<String>,
}

/// Checks parameters.
pub fn params(p: &Params<'_>) -> Result<SnapshotParams, String> {
    Ok(SnapshotParams {
        class: p.name("volumeSnapshotClassName")?,
    })
}

/// The snapshot name for `pvc`: `<child name>-<pvc>`, cut to 253 characters without a
/// trailing `-` or `.`.
pub fn snapshot_name(id: &Identity, pvc: &str) -> String {
    let mut name = format!("{}-{pvc}", child_name(&id.uid));
    name.truncate(253);
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name
}

/// One VolumeSnapshot per PVC, in the order of `pvcs` (sorted by the caller).
pub fn children(
    id: &Identity,
    target: &str,
    params: &SnapshotParams,
    pvcs: &[String],
) -> Vec<Child> {
    pvcs.iter()
        .map(|pvc| {
            let name = snapshot_name(id, pvc);
            let mut vs = VolumeSnapshot::new(
                &name,
                VolumeSnapshotSpec {
                    source: VolumeSnapshotSource {
                        persistent_volume_claim_name: Some(pvc.clone()),
                        volume_snapshot_content_name: None,
                    },
                    volume_snapshot_class_name: params.class.clone(),
                },
            );
            vs.metadata = child_meta(id, target, name, &id.namespace);
            Child::VolumeSnapshot(vs)
        })
        .collect()
}

/// The names recorded in `outputs` at acceptance.
pub fn recorded(outputs: &BTreeMap<String, String>) -> Vec<String> {
    outputs
        .get(OUTPUT_SNAPSHOTS)
        .map(|s| {
            s.split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The errors reported on the `observed` snapshots, as one sentence (empty if none).
pub fn errors(observed: &[VolumeSnapshot]) -> String {
    observed
        .iter()
        .filter_map(|vs| {
            let e = vs.status.as_ref()?.error.as_ref()?;
            Some(format!(
                "{}: {}",
                vs.metadata.name.as_deref().unwrap_or(""),
                e.message.as_deref().unwrap_or("error without message")
            ))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads the recorded snapshots among `observed`.
pub fn observe(names: &[String], observed: &[VolumeSnapshot]) -> Observation {
    let find = |n: &String| {
        observed
            .iter()
            .find(|vs| vs.metadata.name.as_ref() == Some(n))
    };
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| find(n).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Observation::Lost {
            message: format!(
                "snapshot.storage.k8s.io/VolumeSnapshot {} disappeared",
                missing.join(", ")
            ),
        };
    }
    let mine: Vec<VolumeSnapshot> = names.iter().filter_map(find).cloned().collect();
    let ready = mine
        .iter()
        .filter(|vs| vs.status.as_ref().and_then(|s| s.ready_to_use) == Some(true))
        .count();
    let total = names.len();
    if ready == total {
        let mut outputs = BTreeMap::from([(OUTPUT_SNAPSHOTS.to_owned(), names.join(","))]);
        let mut sizes = Vec::new();
        for vs in &mine {
            let name = vs.metadata.name.clone().unwrap_or_default();
            let status = vs.status.clone().unwrap_or_default();
            if let Some(content) = status.bound_volume_snapshot_content_name {
                outputs.insert(format!("{name}.content"), content);
            }
            if let Some(size) = status.restore_size {
                sizes.push(size.0.clone());
                outputs.insert(format!("{name}.restoreSize"), size.0);
            }
        }
        let sizes = if sizes.is_empty() {
            String::new()
        } else {
            format!(" ({})", sizes.join(", "))
        };
        return Observation::Succeeded {
            reason: reasons::SNAPSHOT_READY,
            message: format!(
                "snapshot.storage.k8s.io/VolumeSnapshot ready for {total} PVCs{sizes}"
            ),
            outputs,
        };
    }
    let errors = errors(&mine);
    let errors = if errors.is_empty() {
        String::new()
    } else {
        format!("; errors (retried): {errors}")
    };
    Observation::Running {
        message: format!("{ready}/{total} VolumeSnapshots ready{errors}"),
    }
}

/// Snapshots are stopped by deleting them.
pub fn stop(refs: Vec<ChildRef>) -> StopSupport {
    StopSupport::Stop(Stop::Delete(refs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;
    use vworkspace_api::thirdparty::snapshot::VolumeSnapshotStatus;

    fn vs(name: &str, status: serde_json::Value) -> VolumeSnapshot {
        let mut v = VolumeSnapshot::new(name, VolumeSnapshotSpec::default());
        v.status = Some(serde_json::from_value::<VolumeSnapshotStatus>(status).unwrap());
        v
    }

    fn names() -> Vec<String> {
        vec!["op-1-data".into(), "op-1-db".into()]
    }

    fn kind(o: &Observation) -> (String, String) {
        match o {
            Observation::Pending { message } => ("Pending".into(), message.clone()),
            Observation::Running { message } => ("Running".into(), message.clone()),
            Observation::Succeeded {
                reason, message, ..
            } => (format!("Succeeded:{reason}"), message.clone()),
            Observation::Failed {
                reason, message, ..
            } => (format!("Failed:{reason}"), message.clone()),
            Observation::Lost { message } => ("Lost".into(), message.clone()),
        }
    }

    #[test]
    fn snapshot_vocabulary() {
        let ready = json!({"readyToUse": true, "boundVolumeSnapshotContentName": "snapcontent-1", "restoreSize": "10Gi"});
        let cases = [
            (
                vec![vs("op-1-data", json!({}))],
                "Lost",
                "op-1-db disappeared",
            ),
            (
                vec![vs("op-1-data", json!({})), vs("op-1-db", json!({}))],
                "Running",
                "0/2 VolumeSnapshots ready",
            ),
            (
                vec![
                    vs("op-1-data", ready.clone()),
                    vs("op-1-db", json!({"readyToUse": false})),
                ],
                "Running",
                "1/2",
            ),
            (
                vec![
                    vs("op-1-data", ready.clone()),
                    vs("op-1-db", json!({"error": {"message": "quota exceeded"}})),
                ],
                "Running",
                "errors (retried): op-1-db: quota exceeded",
            ),
            (
                vec![vs("op-1-data", ready.clone()), vs("op-1-db", ready.clone())],
                "Succeeded:SnapshotReady",
                "ready for 2 PVCs (10Gi, 10Gi)",
            ),
        ];
        for (observed, want, fragment) in cases {
            let (k, message) = kind(&observe(&names(), &observed));
            assert_eq!(k, want, "{message}");
            assert!(message.contains(fragment), "{message}");
        }
        let Observation::Succeeded { outputs, .. } = observe(
            &names(),
            &[vs("op-1-data", ready.clone()), vs("op-1-db", ready)],
        ) else {
            panic!("succeeded");
        };
        assert_eq!(outputs[OUTPUT_SNAPSHOTS], "op-1-data,op-1-db");
        assert_eq!(outputs["op-1-db.content"], "snapcontent-1");
        assert_eq!(recorded(&outputs), names());
    }

    #[test]
    fn names_fit_and_are_deterministic() {
        let id = Identity {
            name: "b".into(),
            namespace: "ns".into(),
            uid: "6b62a1f0-c3d4-4e5f-8a9b-0c1d2e3f4a5b".into(),
            generation: 1,
            created_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        assert_eq!(snapshot_name(&id, "data"), "op-6b62a1f0c3d4-data");
        let long = snapshot_name(&id, &format!("{}-x", "a".repeat(236)));
        assert!(long.len() <= 253 && !long.ends_with('-'), "{long}");
    }
}
