//! The engines of the operation catalog: for each, the child objects an Operation creates
//! (ready for server-side apply), the reading of the engine's own status vocabulary into one
//! [`Observation`], and how the engine can be stopped.
//!
//! Invariants:
//! * every child is named from the Operation's uid ([`vworkspace_api::operation::child_name`],
//!   plus a suffix where one Operation has several children), labelled
//!   `app.vworkspace.io/operation-id=<uid>`, `app.vworkspace.io/application-instance=<target>`
//!   and `app.kubernetes.io/managed-by=vworkspace-operator`; so a restarted operator finds
//!   the child it created instead of creating a second one, and the finalizer path finds
//!   every child by label;
//! * a child in the Operation's namespace carries a controller owner reference to it
//!   (garbage-collected with it); a child in another namespace (Velero's) cannot, and is
//!   deleted through the Operation's finalizer;
//! * observing is pure and total: every value of the engine's status vocabulary, including
//!   an absent status and values this code does not know, maps to exactly one
//!   [`Observation`]; only the engine's *final* words are terminal, so an unknown phase
//!   waits (and the Operation's deadline bounds the wait);
//! * reasons come from `vworkspace_api::conditions::operation::reasons`; messages carry the
//!   engine's numbers (items, sizes, steps) or its own reason, never a timestamp.

pub mod helm;
pub mod job;
pub mod snapshot;
pub mod velero;
pub mod volsync;
pub mod workflow;

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube_core::{ObjectMeta, Resource};
use serde_json::{Map, Value};
use vworkspace_api::Operation;
use vworkspace_api::labels;
use vworkspace_api::operation::{ChildRef, Engine, OperationType};
use vworkspace_api::thirdparty::{Backup, ReplicationSource, Restore, VolumeSnapshot, Workflow};

use crate::operation::Identity;

/// What the engine says about the work it was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Accepted by the engine, not started (Velero `New`, Workflow `Pending`, a Job
    /// without an active pod).
    Pending {
        /// What it waits for.
        message: String,
    },
    /// Working.
    Running {
        /// Progress in the engine's words (items, steps, errors it retries).
        message: String,
    },
    /// Finished successfully.
    Succeeded {
        /// Engine-specific reason, e.g. `VeleroBackupCompleted`.
        reason: &'static str,
        /// With the engine's numbers, e.g. "velero.io/Backup completed; 412 items, 18.4 GiB".
        message: String,
        /// What goes to `status.outputs`.
        outputs: BTreeMap<String, String>,
    },
    /// Finished unsuccessfully.
    Failed {
        /// Engine-specific reason, e.g. `JobBackoffLimitExceeded`.
        reason: &'static str,
        /// The engine's own reason or message.
        message: String,
        /// What the engine still reported (e.g. a partially failed backup's name).
        outputs: BTreeMap<String, String>,
    },
    /// The engine lost the work (the child vanished, or the engine marked it failed on
    /// its own restart): the Operation fails, it is never left waiting.
    Lost {
        /// What was lost.
        message: String,
    },
}

impl Observation {
    /// Succeeded, Failed or Lost.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded { .. } | Self::Failed { .. } | Self::Lost { .. }
        )
    }
}

/// A child object to create with server-side apply (field manager
/// `vworkspace-operator`, force), typed.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per Operation; boxing buys nothing here
pub enum Child {
    /// velero.io/v1 Backup (in Velero's namespace).
    Backup(Backup),
    /// velero.io/v1 Restore (in Velero's namespace).
    Restore(Restore),
    /// argoproj.io/v1alpha1 Workflow.
    Workflow(Workflow),
    /// batch/v1 Job.
    Job(Job),
    /// volsync.backube/v1alpha1 ReplicationSource.
    ReplicationSource(ReplicationSource),
    /// snapshot.storage.k8s.io/v1 VolumeSnapshot.
    VolumeSnapshot(VolumeSnapshot),
}

impl Child {
    /// The reference recorded in `status.childRef`.
    pub fn child_ref(&self) -> ChildRef {
        fn of<K: Resource<DynamicType = ()>>(k: &K) -> ChildRef {
            let meta = k.meta();
            ChildRef {
                api_version: K::api_version(&()).into_owned(),
                kind: K::kind(&()).into_owned(),
                name: meta.name.clone().unwrap_or_default(),
                namespace: meta.namespace.clone(),
            }
        }
        match self {
            Self::Backup(o) => of(o),
            Self::Restore(o) => of(o),
            Self::Workflow(o) => of(o),
            Self::Job(o) => of(o),
            Self::ReplicationSource(o) => of(o),
            Self::VolumeSnapshot(o) => of(o),
        }
    }
}

/// How to stop a child (cancel, timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Delete these objects; a Job with `propagationPolicy: Foreground`, so its pods go
    /// with it.
    Delete(Vec<ChildRef>),
    /// Set `spec.shutdown: Terminate` on this Workflow (Argo stops its pods, skipping exit
    /// handlers).
    TerminateWorkflow(ChildRef),
}

/// Whether an engine can stop the work in its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopSupport {
    /// Yes, like this.
    Stop(Stop),
    /// No; the reason is said on the Operation (`CancelRequested=True`, and in the
    /// timeout's message), and the engine runs to its end.
    NotSupported(String),
}

/// The parameter names an engine reads for a type of Operation, or `None` when any name
/// is accepted (workflow: unknown names are the Workflow's arguments).
pub fn parameter_names(type_: OperationType, engine: Engine) -> Option<&'static [&'static str]> {
    match (type_, engine) {
        (OperationType::Restore, Engine::Velero) => Some(velero::RESTORE_PARAMETERS),
        (_, Engine::Velero) => Some(velero::BACKUP_PARAMETERS),
        (_, Engine::Workflow) => None,
        (_, Engine::Job) => Some(job::PARAMETERS),
        (_, Engine::Helm) => Some(helm::PARAMETERS),
        (_, Engine::HelmHookJob) => Some(helm::HOOK_PARAMETERS),
        (_, Engine::Volsync) => Some(volsync::PARAMETERS),
        (_, Engine::Snapshot) => Some(snapshot::PARAMETERS),
    }
}

/// Metadata of a child named `name` in `namespace`; owned by the Operation when it lives
/// in the Operation's namespace.
pub(crate) fn child_meta(id: &Identity, target: &str, name: String, namespace: &str) -> ObjectMeta {
    let owner_references = (namespace == id.namespace).then(|| {
        vec![OwnerReference {
            api_version: Operation::api_version(&()).into_owned(),
            kind: Operation::kind(&()).into_owned(),
            name: id.name.clone(),
            uid: id.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    });
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        labels: Some(child_labels(id, target)),
        owner_references,
        ..ObjectMeta::default()
    }
}

/// The labels every child carries (and a Job's pods too).
pub(crate) fn child_labels(id: &Identity, target: &str) -> BTreeMap<String, String> {
    [
        (labels::OPERATION_ID.to_owned(), id.uid.clone()),
        (labels::APPLICATION_INSTANCE.to_owned(), target.to_owned()),
        (
            labels::K8S_MANAGED_BY.to_owned(),
            labels::FIELD_MANAGER_OPERATOR.to_owned(),
        ),
    ]
    .into()
}

/// What kind of JSON value `value` is, in words, for messages. Messages about a parameter
/// of the wrong type name its type, never its value: parameters can hold secrets (a
/// password in `env`), and the message goes to status, Events, logs and audit events.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The merged parameters of an Operation, read typed; each error names the parameter.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a>(pub &'a Map<String, Value>);

impl Params<'_> {
    pub(crate) fn string(&self, name: &str) -> Result<Option<String>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(format!("parameter {name} is empty"))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "parameter {name} must be a string, not {}",
                kind_of(other)
            )),
        }
    }

    pub(crate) fn required(&self, name: &str) -> Result<String, String> {
        self.string(name)?
            .ok_or_else(|| format!("parameter {name} is required"))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(other) => Err(format!(
                "parameter {name} must be true or false, not {}",
                kind_of(other)
            )),
        }
    }

    pub(crate) fn count(&self, name: &str) -> Result<Option<i32>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| i32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| format!("parameter {name} must be a whole number ≥ 0, not {n}")),
            Some(other) => Err(format!(
                "parameter {name} must be a whole number, not {}",
                kind_of(other)
            )),
        }
    }

    pub(crate) fn object(&self, name: &str) -> Result<Option<Map<String, Value>>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o.clone())),
            Some(other) => Err(format!(
                "parameter {name} must be a mapping, not {}",
                kind_of(other)
            )),
        }
    }

    pub(crate) fn name(&self, name: &str) -> Result<Option<String>, String> {
        let value = self.string(name)?;
        if let Some(v) = &value {
            crate::names::subdomain(v).map_err(|why| format!("parameter {name} {v:?}: {why}"))?;
        }
        Ok(value)
    }
}

/// `n` bytes in binary units, one decimal: `18.4 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut whole = n;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{n} B");
    }
    // Tenths without floating point: n * 10 / 1024^unit, rounded to nearest.
    let scale = 1024u128.pow(u32::try_from(unit).unwrap_or(0));
    let tenths = (u128::from(n) * 10 + scale / 2) / scale;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// Outputs from `(key, value)` pairs, skipping absent values.
pub(crate) fn outputs<const N: usize>(
    pairs: [(&str, Option<String>); N],
) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units_with_one_decimal() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (19_756_849_561, "18.4 GiB"),
            (5 * 1024 * 1024 * 1024 * 1024, "5.0 TiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }
}
