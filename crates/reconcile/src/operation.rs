//! The Operation state machine, pure: classify (Operation, observed world) into a phase,
//! then return the one next step.
//!
//! The controller (crates/operator) reads the Operation and the world around it into a
//! [`World`], calls [`validate`] and [`plan`], carries out [`Plan::step`], publishes
//! [`Plan::transitions`], and writes [`Plan::status`] when [`Plan::changed`]. When the step
//! fails it writes nothing and retries (everything here is recomputed from the same inputs
//! with the same result); when the API server rejects a child for good it reports
//! [`plan_child_create_failed`]. An Operation that does not validate is reported by
//! [`plan_invalid`].
//!
//! # The state machine
//!
//! ```text
//! Pending ─▶ Blocked ⇄ Accepted ─▶ (child created) ─▶ Running ─▶ Succeeded | Failed | Cancelled
//! ```
//!
//! * Pending is the phase of an Operation nobody has looked at; the first plan leaves it.
//! * Every precondition (below) holds → **Accepted**, and nothing else happens in that
//!   reconcile: the status is written first, and the *next* reconcile checks the
//!   preconditions again and only then creates the child (or, for `upgrade.helm`, sets the
//!   chart version). Accepting is a claim others can see before any work is handed out,
//!   which is what makes the mutating rule hold between concurrent Operations. An
//!   Operation the rule does not apply to (a Backup) needs no claim:
//!   [`plan_through_acceptance`] makes both plans at once, so the controller accepts it
//!   and hands out its work in one reconcile and one status write.
//! * A precondition unmet → **Blocked**, the reason naming the precondition; Blocked is
//!   re-evaluated (every [`BLOCKED_RECHECK`] and on any watched change) and proceeds when it
//!   clears. An Accepted Operation whose preconditions fail before its child exists goes
//!   back to Blocked (each re-entry is a new `OperationBlocked`).
//! * Once the child exists, preconditions are not evaluated again: the engine's status
//!   decides (see [`crate::engines`]). Pending words keep the phase Accepted, working
//!   words make it **Running**, final words end it.
//! * Terminal phases never change; a terminal Operation only waits for deletion.
//!
//! # Preconditions (→ Blocked), checked in this order; the first unmet one is reported
//!
//! 1. `NamespaceNotManaged`: the namespace lacks `app.vworkspace.io/managed-by=vworkspace`;
//! 2. `TemplateNotAllowed`: the template is not in the namespace's
//!    `app.vworkspace.io/allowed-operation-templates`;
//! 3. `TemplateTypeMismatch`: the template's type differs from `spec.type`;
//! 4. `EngineNotInstalled`: the CRD of the engine's child is not served;
//! 5. `ApplicationInstanceNotFound` / `ApplicationInstanceNotReady`: the target;
//! 6. `SourceOperationNotSucceeded` (`restore.velero` with `fromOperation`): the named
//!    Backup Operation does not exist, is not a Backup, or has not succeeded with a
//!    `backupName` output;
//! 7. `MutatingOperationRunning`: the mutating rule below.
//!
//! A template that is not in the catalog, or parameters the template's engine rejects,
//! are not preconditions: the spec is immutable, so waiting cannot help; the Operation
//! fails at once (`TemplateUnknown`, `InvalidParameters`).
//!
//! # The mutating rule
//!
//! Operations that mutate the application (every type but Backup, see
//! [`crate::catalog::mutates_application`]) run one at a time per ApplicationInstance.
//! Among the other non-terminal mutating Operations on the same instance ("peers"),
//! ordered by (creationTimestamp, name):
//!
//! * a peer that is **Running** holds the instance: this Operation is blocked;
//! * a peer that is **Accepted** holds it too — except that between two Accepted
//!   Operations (both accepted from stale views) the older one keeps it and the younger
//!   goes back to Blocked before it creates anything;
//! * when nobody holds it, the oldest Operation that waits only for the instance may
//!   start: an older peer that is Pending, or Blocked for `MutatingOperationRunning`,
//!   `ApplicationInstanceNotReady` or `ApplicationInstanceNotFound`, is ahead in line. A
//!   peer blocked for a reason of its own (template not allowed, engine missing, ...) is
//!   not in line, so it cannot hold others up until its deadline.
//!
//! The rule depends only on the peers' persisted phases, reasons and creation order, so
//! every Operation reaches the same verdict whichever is reconciled first. The
//! controller must plan a create step on peers at least as new as the Operation's own
//! persisted claim (a cache that holds the claim, or a fresh list), so that the Accepted
//! claim of another Operation persisted before it is seen.
//!
//! # Deadlines
//!
//! The timeout is `spec.timeout`, or the template's default (catalog; Backup 30 minutes).
//! It counts from `status.startedAt` (the first acceptance), or, before acceptance, from
//! `metadata.creationTimestamp`; `status.deadline` shows the result.
//! * Still blocked at the deadline → Failed, reason `BlockedTimeout`, outcome `blocked`.
//! * Accepted or Running at the deadline → Failed, reason `Timeout` (`SnapshotTimeout`
//!   for snapshots; `VolSyncSyncFailed` when the last VolSync mover run failed), and the
//!   child is stopped where the engine allows it (table below).
//!
//! # Cancel (`spec.cancel: true`) and what each engine can stop
//!
//! Before a child exists, cancel ends the Operation Cancelled at once. Afterwards:
//!
//! | template | cancel / timeout does |
//! |---|---|
//! | backup.velero, restore.velero | deletes the Backup / Restore while Velero has not started it (`New`); afterwards Velero cannot stop it: `CancelRequested=True` (`CancelNotSupported`, Warning Event) and the Operation ends with Velero's outcome; a timeout fails the Operation and Velero still finishes |
//! | backup.volsync | deletes the ReplicationSource |
//! | backup.snapshot | deletes the Operation's VolumeSnapshots |
//! | upgrade.helm | before the chart version is set: nothing to stop; afterwards Flux cannot be stopped half-way: `CancelRequested=True` (`CancelNotSupported`) and the release finishes |
//! | upgrade.helmHookJob | during the hook Job: deletes the Job (with its pods), the upgrade never starts; afterwards as upgrade.helm |
//! | migration.workflow, runbook.workflow | sets `spec.shutdown: Terminate` on the Workflow |
//! | runcommand.job | deletes the Job with its pods |
//!
//! A cancelled or timed-out Operation whose engine cannot stop keeps its child; the
//! engine's final words arriving before the deadline still decide the outcome.
//!
//! # Conditions and Events
//!
//! The conditions follow `vworkspace_api::conditions::operation`;
//! [`crate::transitions::announce`] turns their changes into Events: entering Blocked →
//! `OperationBlocked` (again on each re-entry), Accepted → `OperationAccepted`, Running →
//! `OperationRunning`, terminal → `OperationSucceeded` / `OperationFailed` /
//! `OperationCancelled`. [`Plan::outcome`] (the `operation_total` label) is set only on
//! the plan that enters a terminal phase, so each Operation is counted once.
//!
//! Invariants:
//! * pure: every input is in [`ValidOperation`], the previous [`OperationStatus`] and the
//!   [`World`]; time is `World::now`;
//! * exactly one [`Step`] per plan;
//! * the children are named from the uid ([`vworkspace_api::operation::child_name`]) and
//!   `status.childRef` is only recorded with the step that creates them, so a child found
//!   by name after a restart is the one this Operation created.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube_core::{GroupVersionKind, Resource};
use serde_json::{Map, Value};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::conditions::{
    ConditionStatus, application_instance as ai, find_condition, new_condition, operation as cond,
    set_condition,
};
use vworkspace_api::labels;
use vworkspace_api::operation::{
    ChildRef, Engine, Operation, OperationPhase, OperationStatus, OperationType, child_name,
};
use vworkspace_api::thirdparty::flux::{self, HelmRelease};
use vworkspace_api::thirdparty::{Backup, ReplicationSource, Restore, VolumeSnapshot, Workflow};
use vworkspace_api::transition::TransitionRecord;

use crate::catalog::{Catalog, Template, mutates_application};
use crate::engines::{
    self, Child, Observation, Params, Stop, StopSupport, helm, job, snapshot, velero, volsync,
    workflow,
};
use crate::transitions::{self, Resource as Announced, StatusView};

use cond::reasons;

/// How often a Blocked Operation is re-evaluated without a watched change.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(30);
/// How often a running child is looked at without a watched change (a safety net: the
/// controller watches children).
pub const RUNNING_RECHECK: Duration = Duration::from_secs(60);

/// Who the Operation is, read once by [`validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `metadata.creationTimestamp`.
    pub created_at: Time,
}

/// The engine's parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineParams {
    /// backup.velero.
    VeleroBackup(velero::BackupParams),
    /// restore.velero.
    VeleroRestore(velero::RestoreParams),
    /// migration.workflow, runbook.workflow.
    Workflow(workflow::WorkflowParams),
    /// runcommand.job.
    Job(job::JobParams),
    /// upgrade.helm.
    Helm {
        /// The chart version to set.
        version: String,
    },
    /// upgrade.helmHookJob.
    HelmHookJob {
        /// The chart version to set after the hook.
        version: String,
        /// The pre-upgrade Job.
        hook: job::JobParams,
    },
    /// backup.volsync.
    Volsync(volsync::VolsyncParams),
    /// backup.snapshot.
    Snapshot(snapshot::SnapshotParams),
}

/// An Operation that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOperation {
    /// Who it is.
    pub identity: Identity,
    /// `spec.type`.
    pub type_: OperationType,
    /// The catalog entry of `spec.template` (with the catalog's overrides).
    pub template: Template,
    /// `spec.applicationInstance`.
    pub target: String,
    /// `spec.timeout` or the template's default.
    pub timeout: Duration,
    /// The template's default parameters with `spec.parameters` over them.
    pub parameters: Map<String, Value>,
    /// The same, checked and typed for the engine.
    pub params: EngineParams,
    /// `spec.cancel`.
    pub cancel: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// [`Catalog::revision`] of the catalog it was validated under.
    pub catalog_revision: String,
}

impl ValidOperation {
    /// The engine carrying it out.
    pub fn engine(&self) -> Engine {
        self.template.engine()
    }

    /// Whether the mutating rule applies to it.
    pub fn mutates(&self) -> bool {
        mutates_application(self.type_)
    }

    /// Whether it creates children outside its namespace, and so must carry
    /// [`vworkspace_api::operation::FINALIZER`] before its first child is created.
    pub fn needs_finalizer(&self) -> bool {
        self.engine() == Engine::Velero
    }

    /// The kinds the cluster must serve for the engine to be installed (what
    /// [`World::engine_installed`] answers): the child's kind, and for the helm engines
    /// Flux's HelmRelease (their "child" is the ApplicationInstance, always served).
    pub fn required_kinds(&self) -> Vec<GroupVersionKind> {
        let helm_release = || {
            GroupVersionKind::gvk(
                &HelmRelease::group(&()),
                &HelmRelease::version(&()),
                &HelmRelease::kind(&()),
            )
        };
        match self.engine() {
            Engine::Helm => vec![helm_release()],
            Engine::HelmHookJob => vec![self.template.child().clone(), helm_release()],
            _ => vec![self.template.child().clone()],
        }
    }

    /// The namespace children live in when it is not the Operation's (Velero's).
    pub fn foreign_namespace(&self) -> Option<&str> {
        match &self.params {
            EngineParams::VeleroBackup(p) => Some(&p.velero_namespace),
            EngineParams::VeleroRestore(p) => Some(&p.velero_namespace),
            _ => None,
        }
    }

    /// The Backup Operation a Restore reads its backup from (`fromOperation`): the
    /// controller reads it into [`World::source`].
    pub fn source_operation(&self) -> Option<&str> {
        match &self.params {
            EngineParams::VeleroRestore(velero::RestoreParams {
                source: velero::RestoreSource::Operation(name),
                ..
            }) => Some(name),
            _ => None,
        }
    }
}

/// Why an Operation cannot be carried out whatever the world looks like (→ Failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Server-set metadata is missing (never the case for an object from the API server).
    #[error("metadata.{0} is not set")]
    MissingMetadata(&'static str),
    /// `spec.template` is not in the catalog.
    #[error("template {template:?} is not in the operation catalog (known: {known})")]
    TemplateUnknown {
        /// The template named.
        template: String,
        /// The catalog's templates, comma-separated.
        known: String,
    },
    /// The parameters do not suit the template.
    #[error("{template}: {why}")]
    InvalidParameters {
        /// The template.
        template: String,
        /// Names the parameter.
        why: String,
    },
}

impl Invalid {
    /// The condition reason it is reported with.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TemplateUnknown { .. } => reasons::TEMPLATE_UNKNOWN,
            Self::MissingMetadata(_) | Self::InvalidParameters { .. } => {
                reasons::INVALID_PARAMETERS
            }
        }
    }
}

/// Parse once: identity, template, timeout and the engine's parameters.
pub fn validate(op: &Operation, catalog: &Catalog) -> Result<ValidOperation, Invalid> {
    let meta = op.meta();
    let identity = Identity {
        name: meta.name.clone().ok_or(Invalid::MissingMetadata("name"))?,
        namespace: meta
            .namespace
            .clone()
            .ok_or(Invalid::MissingMetadata("namespace"))?,
        uid: meta.uid.clone().ok_or(Invalid::MissingMetadata("uid"))?,
        generation: meta.generation.unwrap_or(1),
        created_at: meta
            .creation_timestamp
            .clone()
            .ok_or(Invalid::MissingMetadata("creationTimestamp"))?,
    };
    let spec = &op.spec;
    let template =
        catalog
            .get(&spec.template)
            .cloned()
            .ok_or_else(|| Invalid::TemplateUnknown {
                template: spec.template.clone(),
                known: catalog
                    .templates()
                    .map(Template::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    let invalid = |why: String| Invalid::InvalidParameters {
        template: template.name().to_owned(),
        why,
    };
    let mut parameters = template.parameters().clone();
    for (k, v) in spec.parameters.iter().flatten() {
        parameters.insert(k.clone(), v.clone());
    }
    let own = engines::parameter_names(template.operation_type(), template.engine());
    if let Some(known) = own
        && let Some(name) = parameters.keys().find(|k| !known.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "parameter {name:?} is not a parameter of {} (known: {})",
            template.name(),
            known.join(", ")
        )));
    }
    let p = Params(&parameters);
    let params = match (template.operation_type(), template.engine()) {
        (OperationType::Restore, Engine::Velero) => {
            velero::restore_params(&p).map(EngineParams::VeleroRestore)
        }
        (_, Engine::Velero) => velero::backup_params(&p).map(EngineParams::VeleroBackup),
        (_, Engine::Workflow) => workflow::params(&p).map(EngineParams::Workflow),
        (_, Engine::Job) => job::params(&p, template.image()).map(EngineParams::Job),
        (_, Engine::Helm) => helm::version(&p).map(|version| EngineParams::Helm { version }),
        (_, Engine::HelmHookJob) => helm::version(&p).and_then(|version| {
            let mut hook_map = parameters.clone();
            hook_map.remove("version");
            job::params(&Params(&hook_map), template.image())
                .map(|hook| EngineParams::HelmHookJob { version, hook })
        }),
        (_, Engine::Volsync) => volsync::params(&p).map(EngineParams::Volsync),
        (_, Engine::Snapshot) => snapshot::params(&p).map(EngineParams::Snapshot),
    }
    .map_err(invalid)?;
    let timeout = spec
        .timeout
        .as_ref()
        .map_or(template.default_timeout(), |t| t.as_duration());
    Ok(ValidOperation {
        identity,
        type_: spec.type_,
        template,
        target: spec.application_instance.clone(),
        timeout,
        parameters,
        params,
        cancel: spec.cancel,
        deleting: meta.deletion_timestamp.is_some(),
        catalog_revision: catalog.revision().to_owned(),
    })
}

/// The Operation's namespace, as far as preconditions go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceView {
    /// Labelled `app.vworkspace.io/managed-by=vworkspace`.
    pub managed: bool,
    /// Its `app.vworkspace.io/allowed-operation-templates`.
    pub allowed_templates: BTreeSet<String>,
}

impl NamespaceView {
    /// Reads a Namespace.
    pub fn of(ns: &Namespace) -> Self {
        let meta = &ns.metadata;
        NamespaceView {
            managed: meta.labels.as_ref().is_some_and(labels::is_managed),
            allowed_templates: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::ALLOWED_OPERATION_TEMPLATES))
                .map(|v| labels::parse_allowed_templates(v))
                .unwrap_or_default(),
        }
    }
}

/// The target ApplicationInstance and its HelmRelease, as far as Operations go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    /// Its `Ready` status.
    pub ready: ConditionStatus,
    /// Its `Ready` reason.
    pub ready_reason: String,
    /// Its `Ready` message.
    pub ready_message: String,
    /// `Failed=True` (reason, message), if so.
    pub failed: Option<(String, String)>,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `spec.chart.version`.
    pub chart_version: String,
    /// The HelmRelease's name (the release's `app.kubernetes.io/instance`).
    pub release_name: String,
    /// Revision of the latest history entry.
    pub release_revision: Option<i64>,
    /// Chart version of the latest history entry.
    pub release_chart_version: Option<String>,
    /// The HelmRelease's Ready reason (Flux's word).
    pub flux_ready_reason: Option<String>,
    /// The HelmRelease's Ready message.
    pub flux_ready_message: Option<String>,
    /// The HelmRelease's `status.lastAttemptedRevision`.
    pub flux_last_attempted_revision: Option<String>,
}

impl TargetView {
    /// Reads an ApplicationInstance and (if the controller has it) its HelmRelease.
    pub fn of(instance: &ApplicationInstance, release: Option<&HelmRelease>) -> Self {
        let status = instance.status.clone().unwrap_or_default();
        let ready = find_condition(&status.conditions, ai::READY);
        let failed = find_condition(&status.conditions, ai::FAILED)
            .filter(|c| c.status == ConditionStatus::True.as_str())
            .map(|c| (c.reason.clone(), c.message.clone()));
        let summary = status.helm_release.clone().unwrap_or_default();
        let history = release
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.latest());
        let flux_ready = release
            .and_then(|r| r.status.as_ref())
            .and_then(|s| find_condition(&s.conditions, flux::condition_types::READY));
        TargetView {
            ready: ready
                .and_then(|c| ConditionStatus::parse(&c.status))
                .unwrap_or(ConditionStatus::Unknown),
            ready_reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
            ready_message: ready.map(|c| c.message.clone()).unwrap_or_default(),
            failed,
            generation: instance.metadata.generation.unwrap_or(1),
            observed_generation: status.observed_generation,
            chart_version: instance.spec.chart.version.clone(),
            release_name: summary
                .name
                .clone()
                .or_else(|| release.and_then(|r| r.metadata.name.clone()))
                .or_else(|| instance.metadata.name.clone())
                .unwrap_or_default(),
            release_revision: history.and_then(|h| h.version).or(summary.revision),
            release_chart_version: history
                .and_then(|h| h.chart_version.clone())
                .or(summary.chart_version),
            flux_ready_reason: flux_ready.map(|c| c.reason.clone()),
            flux_ready_message: flux_ready.map(|c| c.message.clone()),
            flux_last_attempted_revision: release
                .and_then(|r| r.status.as_ref())
                .and_then(|s| s.last_attempted_revision.clone()),
        }
    }
}

/// Another Operation in the namespace (the mutating rule reads these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.creationTimestamp`.
    pub created_at: Time,
    /// `spec.type`.
    pub type_: OperationType,
    /// `spec.applicationInstance`.
    pub target: String,
    /// `status.phase` (Pending when unset).
    pub phase: OperationPhase,
    /// `status.reason`.
    pub reason: Option<String>,
    /// `status.outputs.backupName` (a Restore's `fromOperation` reads it).
    pub backup_name: Option<String>,
}

impl Peer {
    /// Reads another Operation; `None` without a name or creation time.
    pub fn of(op: &Operation) -> Option<Self> {
        let status = op.status.clone().unwrap_or_default();
        Some(Peer {
            name: op.metadata.name.clone()?,
            created_at: op.metadata.creation_timestamp.clone()?,
            type_: op.spec.type_,
            target: op.spec.application_instance.clone(),
            phase: status.phase.unwrap_or_default(),
            reason: status.reason.clone(),
            backup_name: status.outputs.get("backupName").cloned(),
        })
    }
}

/// The children found for the Operation (by the `operation-id` label, in its namespace
/// and in Velero's); the plan picks each by its deterministic name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Children {
    /// velero.io Backups.
    pub backups: Vec<Backup>,
    /// velero.io Restores.
    pub restores: Vec<Restore>,
    /// Argo Workflows.
    pub workflows: Vec<Workflow>,
    /// batch/v1 Jobs (the command, or the pre-upgrade hook).
    pub jobs: Vec<Job>,
    /// VolSync ReplicationSources.
    pub replication_sources: Vec<ReplicationSource>,
    /// CSI VolumeSnapshots.
    pub snapshots: Vec<VolumeSnapshot>,
    /// Bytes of volume data Velero moved for the Backup (the sum of its PodVolumeBackups' /
    /// DataUploads' `status.progress.totalBytes`), when known.
    pub velero_volume_bytes: Option<u64>,
}

fn named<'a, K: Resource>(objects: &'a [K], name: &str) -> Option<&'a K> {
    objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
}

/// Everything outside the Operation that a plan depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// The time of this reconcile.
    pub now: Time,
    /// The Operation's namespace.
    pub namespace: NamespaceView,
    /// The CRD of the engine's child kind is served (`upgrade.helm`: Flux's HelmRelease).
    pub engine_installed: bool,
    /// The target ApplicationInstance, if it exists.
    pub target: Option<TargetView>,
    /// The other Operations of the namespace (all of them; the plan filters).
    pub peers: Vec<Peer>,
    /// `restore.velero` with `fromOperation`: that Operation, if it exists.
    pub source: Option<Peer>,
    /// `backup.snapshot`: names of the target's PVCs (labelled
    /// `app.kubernetes.io/instance=<release name>`).
    pub pvcs: Vec<String>,
    /// The Operation's children.
    pub children: Children,
}

/// The one thing the controller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create these children (server-side apply, field manager `vworkspace-operator`).
    CreateChildren(Vec<Child>),
    /// Set `spec.chart.version` of the target ApplicationInstance, with field manager
    /// [`vworkspace_api::operation::FIELD_MANAGER_UPGRADE`].
    PatchTarget {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The chart version to set.
        chart_version: String,
    },
    /// Stop the child (cancel, timeout).
    StopChild(Stop),
    /// The Operation is being deleted: delete every object labelled with its
    /// `operation-id` (in its namespace and [`ValidOperation::foreign_namespace`]), then
    /// remove the finalizer.
    DeleteChildren,
    /// Nothing to do until a watched change, or until `requeue_after` (`ZERO`: requeue
    /// at once, after the status write).
    Wait {
        /// When to look again.
        requeue_after: Option<Duration>,
    },
    /// Terminal: nothing more, ever (but deletion).
    Done,
}

/// The `outcome` label of `vworkspace_operator_operation_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded.
    Succeeded,
    /// Failed (but not while blocked).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Failed at its deadline while still Blocked.
    Blocked,
}

impl Outcome {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Blocked => "blocked",
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write (when `changed`).
    pub status: OperationStatus,
    /// The step to carry out first.
    pub step: Step,
    /// Set on the plan that enters a terminal phase, and only then.
    pub outcome: Option<Outcome>,
    /// The transitions to publish (already recorded in `status.transitions`).
    pub transitions: Vec<TransitionRecord>,
    /// `status` differs from the one passed in.
    pub changed: bool,
}

fn secs(t: &Time) -> i64 {
    t.0.as_second()
}

fn at_second(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap_or(Timestamp::MAX))
}

/// Builds the next status from the previous one.
struct Next<'a> {
    op: &'a ValidOperation,
    prev: &'a OperationStatus,
    status: OperationStatus,
    now: Time,
}

impl<'a> Next<'a> {
    fn new(op: &'a ValidOperation, prev: &'a OperationStatus, now: &Time) -> Self {
        let mut status = prev.clone();
        status.engine = Some(op.engine());
        status.observed_generation = Some(op.identity.generation);
        clear_error(&mut status, op.identity.generation, now);
        if !started(prev) {
            // Until work is handed out, each plan is made under the catalog in force;
            // the plan that hands it out fixes the record.
            status.catalog_revision = Some(op.catalog_revision.clone());
        }
        let mut next = Next {
            op,
            prev,
            status,
            now: now.clone(),
        };
        next.status.deadline = Some(next.deadline());
        next
    }

    fn deadline(&self) -> Time {
        let base = self
            .status
            .started_at
            .as_ref()
            .unwrap_or(&self.op.identity.created_at);
        let timeout = i64::try_from(self.op.timeout.as_secs()).unwrap_or(i64::MAX / 2);
        at_second(secs(base).saturating_add(timeout))
    }

    fn overdue(&self) -> bool {
        secs(&self.now) >= secs(&self.deadline())
    }

    fn until_deadline(&self, cap: Duration) -> Duration {
        let left = secs(&self.deadline()) - secs(&self.now);
        Duration::from_secs(u64::try_from(left).unwrap_or(0).max(1)).min(cap)
    }

    fn set(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            new_condition(
                type_,
                status,
                reason,
                message,
                Some(self.op.identity.generation),
                &self.now,
            ),
            &self.now,
        );
    }

    fn headline(&mut self, phase: OperationPhase, reason: &str, message: &str) {
        self.status.phase = Some(phase);
        self.status.reason = Some(reason.to_owned());
        self.status.message = Some(message.to_owned());
    }

    fn blocked(&mut self, reason: &str, message: &str) {
        self.set(cond::ACCEPTED, ConditionStatus::False, reason, message);
        self.headline(OperationPhase::Blocked, reason, message);
    }

    fn accepted(&mut self) {
        let message = format!("preconditions met; {} will start", self.op.template.name());
        self.set(
            cond::ACCEPTED,
            ConditionStatus::True,
            reasons::PRECONDITIONS_MET,
            &message,
        );
        self.set(
            cond::SUCCEEDED,
            ConditionStatus::Unknown,
            reasons::IN_PROGRESS,
            "in progress",
        );
        if self.status.started_at.is_none() {
            self.status.started_at = Some(at_second(secs(&self.now)));
            self.status.deadline = Some(self.deadline());
        }
        self.headline(
            OperationPhase::Accepted,
            reasons::PRECONDITIONS_MET,
            &message,
        );
    }

    fn waiting(&mut self, message: &str) {
        self.status.message = Some(message.to_owned());
    }

    fn running(&mut self, message: &str) {
        self.set(
            cond::RUNNING,
            ConditionStatus::True,
            reasons::ENGINE_RUNNING,
            message,
        );
        self.headline(OperationPhase::Running, reasons::ENGINE_RUNNING, message);
    }

    fn cancel_not_supported(&mut self, why: &str) {
        self.set(
            cond::CANCEL_REQUESTED,
            ConditionStatus::True,
            reasons::CANCEL_NOT_SUPPORTED,
            why,
        );
    }

    fn terminal(
        &mut self,
        phase: OperationPhase,
        reason: &str,
        message: &str,
        outputs: BTreeMap<String, String>,
    ) {
        if find_condition(&self.status.conditions, cond::RUNNING).is_some() {
            self.set(
                cond::RUNNING,
                ConditionStatus::False,
                reasons::FINISHED,
                "finished",
            );
        }
        let status = if phase == OperationPhase::Succeeded {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        self.set(cond::SUCCEEDED, status, reason, message);
        self.status.outputs.extend(outputs);
        self.status.completed_at = Some(at_second(secs(&self.now)));
        self.headline(phase, reason, message);
    }

    fn finish(mut self, step: Step) -> Plan {
        let was_terminal = self.prev.phase.is_some_and(OperationPhase::is_terminal);
        let outcome = match self.status.phase {
            Some(p) if p.is_terminal() && !was_terminal => Some(match p {
                OperationPhase::Succeeded => Outcome::Succeeded,
                OperationPhase::Cancelled => Outcome::Cancelled,
                _ if self.status.reason.as_deref() == Some(reasons::BLOCKED_TIMEOUT) => {
                    Outcome::Blocked
                }
                _ => Outcome::Failed,
            }),
            _ => None,
        };
        let transitions = transitions::announce(
            Announced::Operation,
            self.op.identity.generation,
            StatusView {
                observed_generation: self.prev.observed_generation,
                conditions: &self.prev.conditions,
            },
            StatusView {
                observed_generation: self.status.observed_generation,
                conditions: &self.status.conditions,
            },
            None,
            &mut self.status.transitions,
            &self.now,
        );
        let changed = self.status != *self.prev;
        Plan {
            status: self.status,
            step,
            outcome,
            transitions,
            changed,
        }
    }
}

/// Classify and decide: the next status and the one step.
pub fn plan(op: &ValidOperation, prev: &OperationStatus, world: &World) -> Plan {
    if op.deleting {
        return unchanged(prev, Step::DeleteChildren);
    }
    if prev.phase.is_some_and(OperationPhase::is_terminal) {
        let mut status = prev.clone();
        if clear_error(&mut status, op.identity.generation, &world.now) {
            // An error reported after the terminal write (a failed read, say) is cleared
            // by the next reconcile that succeeds; nothing else changes.
            return Plan {
                status,
                step: Step::Done,
                outcome: None,
                transitions: Vec::new(),
                changed: true,
            };
        }
        return unchanged(prev, Step::Done);
    }
    let mut next = Next::new(op, prev, &world.now);
    let step = if started(prev) {
        follow(&mut next, world)
    } else {
        start(&mut next, world)
    };
    next.finish(step)
}

/// [`plan`] carried through the acceptance of an Operation that does not mutate the
/// application; see [`plan_through_acceptance`].
#[derive(Debug, Clone, PartialEq)]
pub struct Chained {
    /// The plan to carry out.
    pub plan: Plan,
    /// When `plan` accepts *and* hands out work: the acceptance alone (the first plan),
    /// to persist instead when the hand-out step fails, so the acceptance is announced
    /// and recorded like any other transition while the step is retried.
    pub claim: Option<Plan>,
}

/// [`plan`], and when that plan only accepts an Operation that does not mutate the
/// application (the Accepted claim only matters to the mutating rule, which such an
/// Operation neither obeys nor holds up), also the plan the next reconcile would make on
/// the accepted status: the hand-out. The result has the hand-out's step and status and
/// the transitions of both, in order, so one reconcile and one status write accept and
/// start a Backup. Mutating Operations, and every plan that is not an acceptance, are
/// [`plan`] unchanged: for them the claim is written before any work is handed out.
pub fn plan_through_acceptance(
    op: &ValidOperation,
    prev: &OperationStatus,
    world: &World,
) -> Chained {
    let first = plan(op, prev, world);
    let accepts = first.status.phase == Some(OperationPhase::Accepted)
        && prev.phase != Some(OperationPhase::Accepted)
        && first.step
            == Step::Wait {
                requeue_after: Some(Duration::ZERO),
            };
    if op.mutates() || !accepts {
        return Chained {
            plan: first,
            claim: None,
        };
    }
    let second = plan(op, &first.status, world);
    let mut transitions = first.transitions.clone();
    transitions.extend(second.transitions.iter().cloned());
    let hands_out = matches!(
        second.step,
        Step::CreateChildren(_) | Step::PatchTarget { .. }
    );
    let combined = Plan {
        changed: second.status != *prev,
        status: second.status,
        step: second.step,
        outcome: first.outcome.or(second.outcome),
        transitions,
    };
    Chained {
        plan: combined,
        claim: hands_out.then_some(first),
    }
}

fn unchanged(prev: &OperationStatus, step: Step) -> Plan {
    Plan {
        status: prev.clone(),
        step,
        outcome: None,
        transitions: Vec::new(),
        changed: false,
    }
}

/// Work was handed to the engine: a child was created or the chart version set.
fn started(prev: &OperationStatus) -> bool {
    prev.child_ref.is_some() || prev.upgrade.is_some()
}

/// Before any work: preconditions, then accept, then (next reconcile) create.
fn start(next: &mut Next<'_>, world: &World) -> Step {
    let op = next.op;
    if op.cancel {
        next.terminal(
            OperationPhase::Cancelled,
            reasons::CANCELLED,
            "cancelled through spec.cancel before anything was started",
            BTreeMap::new(),
        );
        return Step::Done;
    }
    let ready = match preconditions(op, next.prev, world) {
        Err((reason, message)) => {
            if next.overdue() {
                next.terminal(
                    OperationPhase::Failed,
                    reasons::BLOCKED_TIMEOUT,
                    &format!(
                        "still blocked at the deadline (timeout {}s): {message}",
                        op.timeout.as_secs()
                    ),
                    BTreeMap::new(),
                );
                return Step::Done;
            }
            next.blocked(reason, &message);
            return Step::Wait {
                requeue_after: Some(next.until_deadline(BLOCKED_RECHECK)),
            };
        }
        Ok(ready) => ready,
    };
    if next.overdue() {
        next.terminal(
            OperationPhase::Failed,
            reasons::TIMEOUT,
            &format!(
                "timeout {}s passed before {} started",
                op.timeout.as_secs(),
                op.template.name()
            ),
            BTreeMap::new(),
        );
        return Step::Done;
    }
    if next.prev.phase != Some(OperationPhase::Accepted) {
        // Claim first (visible to peers), hand out work on the next reconcile.
        next.accepted();
        return Step::Wait {
            requeue_after: Some(Duration::ZERO),
        };
    }
    next.accepted();
    hand_out(next, world, ready)
}

/// What the preconditions resolved.
struct Ready {
    backup_name: Option<String>,
}

fn preconditions(
    op: &ValidOperation,
    prev: &OperationStatus,
    world: &World,
) -> Result<Ready, (&'static str, String)> {
    let id = &op.identity;
    let template = op.template.name();
    if !world.namespace.managed {
        return Err((
            reasons::NAMESPACE_NOT_MANAGED,
            format!(
                "namespace {} is not managed: it lacks the label {}={}",
                id.namespace,
                labels::MANAGED_BY,
                labels::MANAGED_BY_VALUE
            ),
        ));
    }
    if !world.namespace.allowed_templates.contains(template) {
        let allowed: Vec<&str> = world
            .namespace
            .allowed_templates
            .iter()
            .map(String::as_str)
            .collect();
        return Err((
            reasons::TEMPLATE_NOT_ALLOWED,
            format!(
                "template {template} is not allowed in namespace {}: its annotation {} lists [{}]",
                id.namespace,
                labels::ALLOWED_OPERATION_TEMPLATES,
                allowed.join(", ")
            ),
        ));
    }
    if op.template.operation_type() != op.type_ {
        return Err((
            reasons::TEMPLATE_TYPE_MISMATCH,
            format!(
                "template {template} implements {}, but spec.type is {}",
                op.template.operation_type(),
                op.type_
            ),
        ));
    }
    if !world.engine_installed {
        let kinds: Vec<String> = op
            .required_kinds()
            .iter()
            .map(|k| format!("{} {}", k.api_version(), k.kind))
            .collect();
        return Err((
            reasons::ENGINE_NOT_INSTALLED,
            format!(
                "engine {} is not installed: the cluster does not serve {} (its CRD is missing)",
                op.engine(),
                kinds.join(" / ")
            ),
        ));
    }
    let Some(target) = &world.target else {
        return Err((
            reasons::APPLICATION_INSTANCE_NOT_FOUND,
            format!(
                "ApplicationInstance {}/{} does not exist",
                id.namespace, op.target
            ),
        ));
    };
    if target.ready != ConditionStatus::True {
        return Err((
            reasons::APPLICATION_INSTANCE_NOT_READY,
            format!(
                "ApplicationInstance {} is not Ready (Ready={}, {}: {})",
                op.target, target.ready, target.ready_reason, target.ready_message
            ),
        ));
    }
    let backup_name = match &op.params {
        EngineParams::VeleroRestore(p) => Some(match &p.source {
            velero::RestoreSource::Backup(name) => name.clone(),
            velero::RestoreSource::Operation(name) => source_backup(name, world.source.as_ref())?,
        }),
        _ => None,
    };
    if op.mutates()
        && let Some(message) = lock_holder(op, prev, &world.peers)
    {
        return Err((reasons::MUTATING_OPERATION_RUNNING, message));
    }
    Ok(Ready { backup_name })
}

fn source_backup(name: &str, source: Option<&Peer>) -> Result<String, (&'static str, String)> {
    let fail = |why: String| {
        Err((
            reasons::SOURCE_OPERATION_NOT_SUCCEEDED,
            format!("fromOperation {name}: {why}"),
        ))
    };
    let Some(s) = source else {
        return fail("no such Operation in this namespace".to_owned());
    };
    if s.type_ != OperationType::Backup {
        return fail(format!("it is a {} Operation, not a Backup", s.type_));
    }
    if s.phase != OperationPhase::Succeeded {
        return fail(format!("it has not succeeded (phase {})", s.phase));
    }
    match &s.backup_name {
        Some(b) => Ok(b.clone()),
        None => fail("it has no backupName output".to_owned()),
    }
}

/// Reasons for which a Blocked peer waits only for the instance (it is in line).
const IN_LINE: &[&str] = &[
    reasons::MUTATING_OPERATION_RUNNING,
    reasons::APPLICATION_INSTANCE_NOT_READY,
    reasons::APPLICATION_INSTANCE_NOT_FOUND,
];

/// The mutating rule (module docs): the message naming the peer that holds the instance
/// or is ahead in line, if any.
fn lock_holder(op: &ValidOperation, prev: &OperationStatus, peers: &[Peer]) -> Option<String> {
    let me = (secs(&op.identity.created_at), op.identity.name.as_str());
    let key = |p: &Peer| (secs(&p.created_at), p.name.clone());
    let mut peers: Vec<&Peer> = peers
        .iter()
        .filter(|p| {
            p.name != op.identity.name
                && p.target == op.target
                && mutates_application(p.type_)
                && !p.phase.is_terminal()
        })
        .collect();
    peers.sort_by_key(|p| key(p));
    let older = |p: &Peer| (secs(&p.created_at), p.name.as_str()) < me;
    let holds = |p: &Peer| {
        format!(
            "Operation {} ({}, {}) holds ApplicationInstance {}; mutating Operations on one instance run one at a time",
            p.name, p.type_, p.phase, op.target
        )
    };
    if let Some(p) = peers.iter().find(|p| p.phase == OperationPhase::Running) {
        return Some(holds(p));
    }
    let i_am_accepted = prev.phase == Some(OperationPhase::Accepted);
    if let Some(p) = peers
        .iter()
        .find(|p| p.phase == OperationPhase::Accepted && (!i_am_accepted || older(p)))
    {
        return Some(holds(p));
    }
    peers
        .iter()
        .find(|p| {
            older(p)
                && (p.phase == OperationPhase::Pending
                    || (p.phase == OperationPhase::Blocked
                        && p.reason.as_deref().is_some_and(|r| IN_LINE.contains(&r))))
        })
        .map(|p| {
            format!(
                "Operation {} ({}, {}) was created earlier and is ahead in line for ApplicationInstance {}",
                p.name, p.type_, p.phase, op.target
            )
        })
}

/// Accepted and rechecked: create the child (or set the chart version).
fn hand_out(next: &mut Next<'_>, world: &World, ready: Ready) -> Step {
    let op = next.op;
    let id = &op.identity;
    let create = |next: &mut Next<'_>, children: Vec<Child>| {
        if let Some(first) = children.first() {
            let r = first.child_ref();
            next.waiting(&format!("creating {} {}", r.kind, r.name));
            next.status.child_ref = Some(r);
        }
        Step::CreateChildren(children)
    };
    match &op.params {
        EngineParams::VeleroBackup(p) => create(next, vec![velero::backup(id, &op.target, p)]),
        EngineParams::VeleroRestore(p) => {
            let backup = ready.backup_name.unwrap_or_default();
            create(next, vec![velero::restore(id, &op.target, p, &backup)])
        }
        EngineParams::Workflow(p) => {
            create(next, vec![workflow::child(id, &op.target, p, op.timeout)])
        }
        EngineParams::Job(p) => create(
            next,
            vec![job::child(
                id,
                &op.target,
                p,
                child_name(&id.uid),
                op.timeout,
            )],
        ),
        EngineParams::Volsync(p) => create(next, vec![volsync::child(id, &op.target, p)]),
        EngineParams::Snapshot(p) => {
            let mut pvcs = world.pvcs.clone();
            pvcs.sort();
            pvcs.dedup();
            if pvcs.is_empty() {
                let release = world
                    .target
                    .as_ref()
                    .map(|t| t.release_name.clone())
                    .unwrap_or_default();
                next.terminal(
                    OperationPhase::Failed,
                    reasons::SNAPSHOT_FAILED,
                    &format!(
                        "no PersistentVolumeClaim labelled {}={release} in namespace {}: nothing to snapshot",
                        snapshot::INSTANCE_LABEL,
                        id.namespace
                    ),
                    BTreeMap::new(),
                );
                return Step::Done;
            }
            let names: Vec<String> = pvcs
                .iter()
                .map(|p| snapshot::snapshot_name(id, p))
                .collect();
            next.status
                .outputs
                .insert(snapshot::OUTPUT_SNAPSHOTS.to_owned(), names.join(","));
            create(next, snapshot::children(id, &op.target, p, &pvcs))
        }
        EngineParams::Helm { version } | EngineParams::HelmHookJob { version, .. } => {
            let Some(target) = &world.target else {
                // Preconditions guarantee a target; keep the plan total anyway.
                return Step::Wait {
                    requeue_after: Some(BLOCKED_RECHECK),
                };
            };
            if helm::already_at(target, version) {
                next.terminal(
                    OperationPhase::Succeeded,
                    reasons::HELM_UPGRADE_SUCCEEDED,
                    &format!(
                        "ApplicationInstance {} already runs chart version {version}; nothing to upgrade",
                        op.target
                    ),
                    BTreeMap::from([("chartVersion".to_owned(), version.clone())]),
                );
                return Step::Done;
            }
            match &op.params {
                EngineParams::HelmHookJob { hook, .. } => create(
                    next,
                    vec![job::child(id, &op.target, hook, hook_name(id), op.timeout)],
                ),
                _ => patch_target(next, target, version),
            }
        }
    }
}

fn hook_name(id: &Identity) -> String {
    format!("{}-hook", child_name(&id.uid))
}

fn patch_target(next: &mut Next<'_>, target: &TargetView, version: &str) -> Step {
    let op = next.op;
    next.status.upgrade = Some(helm::record(target, version));
    if next.status.child_ref.is_none() {
        next.status.child_ref = Some(ChildRef {
            api_version: ApplicationInstance::api_version(&()).into_owned(),
            kind: ApplicationInstance::kind(&()).into_owned(),
            name: op.target.clone(),
            namespace: Some(op.identity.namespace.clone()),
        });
    }
    next.waiting(&format!(
        "setting chart version {version} on ApplicationInstance {}",
        op.target
    ));
    Step::PatchTarget {
        namespace: op.identity.namespace.clone(),
        name: op.target.clone(),
        chart_version: version.to_owned(),
    }
}

/// What the engine says, and how it could be stopped now.
struct Seen {
    observation: Observation,
    stop: StopSupport,
    /// "velero.io/Backup velero/op-…", for messages.
    what: String,
    /// The reason a deadline ends with.
    timeout_reason: &'static str,
}

fn child_missing(r: &ChildRef) -> Seen {
    let what = describe(r);
    Seen {
        observation: Observation::Lost {
            message: format!("{what} disappeared"),
        },
        stop: StopSupport::NotSupported(format!("{what} no longer exists")),
        what,
        timeout_reason: reasons::TIMEOUT,
    }
}

fn describe(r: &ChildRef) -> String {
    let group = r.api_version.split('/').next().unwrap_or("");
    let ns = r
        .namespace
        .as_deref()
        .map(|n| format!("{n}/"))
        .unwrap_or_default();
    if r.api_version.contains('/') {
        format!("{group}/{} {ns}{}", r.kind, r.name)
    } else {
        format!("{} {ns}{}", r.kind, r.name)
    }
}

fn seen(op: &ValidOperation, prev: &OperationStatus, world: &World) -> Seen {
    let id = &op.identity;
    let c = &world.children;
    let main = child_name(&id.uid);
    let of = |child: Child, observation: Observation, stop: fn(&Child) -> StopSupport| Seen {
        what: describe(&child.child_ref()),
        stop: stop(&child),
        observation,
        timeout_reason: reasons::TIMEOUT,
    };
    let recorded = prev.child_ref.clone().unwrap_or(ChildRef {
        api_version: String::new(),
        kind: String::new(),
        name: main.clone(),
        namespace: None,
    });
    match &op.params {
        EngineParams::VeleroBackup(_) => match named(&c.backups, &main) {
            Some(b) => of(
                Child::Backup(b.clone()),
                velero::observe_backup(b, c.velero_volume_bytes),
                velero::stop,
            ),
            None => child_missing(&recorded),
        },
        EngineParams::VeleroRestore(_) => match named(&c.restores, &main) {
            Some(r) => of(
                Child::Restore(r.clone()),
                velero::observe_restore(r),
                velero::stop,
            ),
            None => child_missing(&recorded),
        },
        EngineParams::Workflow(_) => match named(&c.workflows, &main) {
            Some(w) => of(
                Child::Workflow(w.clone()),
                workflow::observe(w),
                workflow::stop,
            ),
            None => child_missing(&recorded),
        },
        EngineParams::Job(_) => match named(&c.jobs, &main) {
            Some(j) => of(Child::Job(j.clone()), job::observe(j, false), job::stop),
            None => child_missing(&recorded),
        },
        EngineParams::Volsync(_) => match named(&c.replication_sources, &main) {
            Some(rs) => {
                let mut s = of(
                    Child::ReplicationSource(rs.clone()),
                    volsync::observe(rs),
                    volsync::stop,
                );
                if volsync::mover_failed(rs).is_some() {
                    s.timeout_reason = reasons::VOLSYNC_SYNC_FAILED;
                }
                s
            }
            None => child_missing(&recorded),
        },
        EngineParams::Snapshot(_) => {
            let names = snapshot::recorded(&prev.outputs);
            let refs: Vec<ChildRef> = names
                .iter()
                .map(|n| ChildRef {
                    api_version: VolumeSnapshot::api_version(&()).into_owned(),
                    kind: VolumeSnapshot::kind(&()).into_owned(),
                    name: n.clone(),
                    namespace: Some(id.namespace.clone()),
                })
                .collect();
            Seen {
                observation: snapshot::observe(&names, &c.snapshots),
                stop: snapshot::stop(refs),
                what: format!("{} VolumeSnapshots", names.len()),
                timeout_reason: reasons::SNAPSHOT_TIMEOUT,
            }
        }
        EngineParams::Helm { .. } | EngineParams::HelmHookJob { .. } => {
            let what = format!("the upgrade of ApplicationInstance {}", op.target);
            match (&prev.upgrade, &world.target) {
                (Some(record), Some(target)) => Seen {
                    observation: helm::observe(record, target),
                    stop: helm::stop(),
                    what,
                    timeout_reason: reasons::TIMEOUT,
                },
                (Some(_), None) => Seen {
                    observation: Observation::Lost {
                        message: format!(
                            "ApplicationInstance {} was deleted during the upgrade",
                            op.target
                        ),
                    },
                    stop: helm::stop(),
                    what,
                    timeout_reason: reasons::TIMEOUT,
                },
                (None, _) => match named(&c.jobs, &hook_name(id)) {
                    Some(j) => of(Child::Job(j.clone()), job::observe(j, true), job::stop),
                    None => child_missing(&recorded),
                },
            }
        }
    }
}

/// After work was handed out: the engine decides, bounded by cancel and the deadline.
fn follow(next: &mut Next<'_>, world: &World) -> Step {
    let op = next.op;
    let Seen {
        observation,
        stop,
        what,
        timeout_reason,
    } = seen(op, next.prev, world);
    let hook_stage =
        matches!(op.params, EngineParams::HelmHookJob { .. }) && next.prev.upgrade.is_none();
    match observation {
        Observation::Succeeded {
            reason,
            message,
            outputs,
        } if hook_stage => {
            // The pre-upgrade Job is done: now (unless cancelled or late) the upgrade.
            let _ = reason;
            next.status
                .outputs
                .extend(outputs.into_iter().map(|(k, v)| (format!("hook.{k}"), v)));
            if op.cancel {
                next.terminal(
                    OperationPhase::Cancelled,
                    reasons::CANCELLED,
                    &format!("cancelled through spec.cancel after the hook ({message}); the upgrade was not started"),
                    BTreeMap::new(),
                );
                return Step::Done;
            }
            if next.overdue() {
                next.terminal(
                    OperationPhase::Failed,
                    reasons::TIMEOUT,
                    &format!(
                        "timeout {}s passed before the upgrade started ({message})",
                        op.timeout.as_secs()
                    ),
                    BTreeMap::new(),
                );
                return Step::Done;
            }
            let EngineParams::HelmHookJob { version, .. } = &op.params else {
                return Step::Done;
            };
            let Some(target) = &world.target else {
                next.terminal(
                    OperationPhase::Failed,
                    reasons::ENGINE_LOST_WORK,
                    &format!(
                        "ApplicationInstance {} was deleted after the pre-upgrade hook",
                        op.target
                    ),
                    BTreeMap::new(),
                );
                return Step::Done;
            };
            next.running(&format!("{message}; upgrading"));
            patch_target(next, target, version)
        }
        Observation::Succeeded {
            reason,
            message,
            outputs,
        } => {
            next.terminal(OperationPhase::Succeeded, reason, &message, outputs);
            Step::Done
        }
        Observation::Failed {
            reason,
            message,
            outputs,
        } => {
            next.terminal(OperationPhase::Failed, reason, &message, outputs);
            Step::Done
        }
        Observation::Lost { message } => {
            next.terminal(
                OperationPhase::Failed,
                reasons::ENGINE_LOST_WORK,
                &message,
                BTreeMap::new(),
            );
            Step::Done
        }
        Observation::Pending { message } | Observation::Running { message }
            if op.cancel && matches!(stop, StopSupport::Stop(_)) =>
        {
            let StopSupport::Stop(s) = stop else {
                return Step::Done;
            };
            next.terminal(
                OperationPhase::Cancelled,
                reasons::CANCELLED,
                &format!(
                    "cancelled through spec.cancel; {what} is being stopped (it was: {message})"
                ),
                BTreeMap::new(),
            );
            Step::StopChild(s)
        }
        progress @ (Observation::Pending { .. } | Observation::Running { .. }) => {
            let not_supported = match &stop {
                StopSupport::NotSupported(why) => Some(why.clone()),
                StopSupport::Stop(_) => None,
            };
            if op.cancel
                && let Some(why) = &not_supported
            {
                next.cancel_not_supported(&format!("cancel requested, but {why}"));
            }
            let (message, is_running) = match progress {
                Observation::Running { message } => (message, true),
                Observation::Pending { message } => (message, false),
                _ => (String::new(), false),
            };
            if next.overdue() {
                let tail = not_supported
                    .map(|why| format!("; {why}"))
                    .unwrap_or_else(|| format!("; {what} is being stopped"));
                next.terminal(
                    OperationPhase::Failed,
                    timeout_reason,
                    &format!(
                        "timeout {}s passed before {what} finished: {message}{tail}",
                        op.timeout.as_secs()
                    ),
                    BTreeMap::new(),
                );
                return match stop {
                    StopSupport::Stop(s) => Step::StopChild(s),
                    StopSupport::NotSupported(_) => Step::Done,
                };
            }
            if is_running || next.prev.phase == Some(OperationPhase::Running) {
                next.running(&message);
            } else {
                next.waiting(&message);
            }
            Step::Wait {
                requeue_after: Some(next.until_deadline(RUNNING_RECHECK)),
            }
        }
    }
}

/// The plan for an Operation that did not validate under `catalog`: Failed with the
/// reason, once.
pub fn plan_invalid(op: &Operation, invalid: &Invalid, catalog: &Catalog, now: &Time) -> Plan {
    let prev = op.status.clone().unwrap_or_default();
    let generation = op.metadata.generation.unwrap_or(1);
    if op.metadata.deletion_timestamp.is_some() {
        return Plan {
            status: prev,
            step: Step::DeleteChildren,
            outcome: None,
            transitions: Vec::new(),
            changed: false,
        };
    }
    if prev.phase.is_some_and(OperationPhase::is_terminal) {
        return Plan {
            status: prev,
            step: Step::Done,
            outcome: None,
            transitions: Vec::new(),
            changed: false,
        };
    }
    let mut status = prev.clone();
    let message = invalid.to_string();
    status.observed_generation = Some(generation);
    set_condition(
        &mut status.conditions,
        new_condition(
            cond::SUCCEEDED,
            ConditionStatus::False,
            invalid.reason(),
            &message,
            Some(generation),
            now,
        ),
        now,
    );
    status.catalog_revision = Some(catalog.revision().to_owned());
    status.phase = Some(OperationPhase::Failed);
    status.reason = Some(invalid.reason().to_owned());
    status.message = Some(message);
    status.completed_at = Some(at_second(secs(now)));
    let transitions = transitions::announce(
        Announced::Operation,
        generation,
        StatusView {
            observed_generation: prev.observed_generation,
            conditions: &prev.conditions,
        },
        StatusView {
            observed_generation: status.observed_generation,
            conditions: &status.conditions,
        },
        None,
        &mut status.transitions,
        now,
    );
    Plan {
        changed: status != prev,
        status,
        step: Step::Done,
        outcome: Some(Outcome::Failed),
        transitions,
    }
}

/// Set `Reconciling=False` (`ReconcileSucceeded`) when an earlier failed reconcile left it
/// `True`; whether it did.
fn clear_error(status: &mut OperationStatus, generation: i64, now: &Time) -> bool {
    let failing = find_condition(&status.conditions, cond::RECONCILING)
        .is_some_and(|c| c.status == ConditionStatus::True.as_str());
    if failing {
        set_condition(
            &mut status.conditions,
            new_condition(
                cond::RECONCILING,
                ConditionStatus::False,
                reasons::RECONCILE_SUCCEEDED,
                "the last reconcile succeeded",
                Some(generation),
                now,
            ),
            now,
        );
    }
    failing
}

/// The status reporting a failed reconcile of `op` (read fresh): `Reconciling=True` with
/// the error's `category` as reason and the error chain as message. Phase, reason and the
/// other conditions keep what they said: the step that failed is retried, and the next
/// reconcile that succeeds sets `Reconciling=False` again. A new category (or the first
/// report) is announced as a Warning Event with the category as reason; another failure
/// with the same category is not announced again. An Operation being deleted gets no
/// report (nothing of it is kept).
pub fn plan_error(op: &Operation, category: &'static str, message: &str, now: &Time) -> Plan {
    let prev = op.status.clone().unwrap_or_default();
    let generation = op.metadata.generation.unwrap_or(1);
    if op.metadata.deletion_timestamp.is_some() {
        return unchanged(
            &prev,
            Step::Wait {
                requeue_after: None,
            },
        );
    }
    let mut status = prev.clone();
    set_condition(
        &mut status.conditions,
        new_condition(
            cond::RECONCILING,
            ConditionStatus::True,
            category,
            message,
            Some(generation),
            now,
        ),
        now,
    );
    let transitions = transitions::announce(
        Announced::Operation,
        generation,
        StatusView {
            observed_generation: prev.observed_generation,
            conditions: &prev.conditions,
        },
        StatusView {
            observed_generation: status.observed_generation,
            conditions: &status.conditions,
        },
        None,
        &mut status.transitions,
        now,
    );
    Plan {
        changed: status != prev,
        status,
        step: Step::Wait {
            requeue_after: None,
        },
        outcome: None,
        transitions,
    }
}

/// The plan when the API server rejected a child for good (400/422/403 on create):
/// Failed, `ChildCreateFailed`, with the server's message. `prev` is the status the
/// failed plan started from.
pub fn plan_child_create_failed(
    op: &ValidOperation,
    prev: &OperationStatus,
    message: &str,
    now: &Time,
) -> Plan {
    let mut next = Next::new(op, prev, now);
    next.terminal(
        OperationPhase::Failed,
        reasons::CHILD_CREATE_FAILED,
        &format!("the child could not be created: {message}"),
        BTreeMap::new(),
    );
    next.finish(Step::Done)
}

#[cfg(test)]
#[path = "operation/tests.rs"]
mod tests;
