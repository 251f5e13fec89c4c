//! The condition vocabulary: every condition type, condition reason and Event reason the
//! operator uses, and the one pure rule that decides when a condition *transitions*.
//!
//! Invariants:
//! * These constants are the only spelling of a type or reason anywhere in the project; code
//!   never writes a reason as a string literal. `docs/conditions.md` documents each of them.
//! * Every reason is a valid metav1.Condition reason (CamelCase, `[A-Za-z][A-Za-z0-9_,:]*`).
//! * [`set_condition`] keeps `lastTransitionTime` unless `status` changes (the Kubernetes
//!   convention) and reports a transition when `status` or `reason` changes, so the event
//!   publisher emits exactly one Kubernetes Event and one audit event per real transition and
//!   nothing on a mere message refresh.
//! * Which transition is announced with which Event reason is decided in exactly one place,
//!   `vworkspace_reconcile::transitions`; the audit event's `kind` is that same Event reason
//!   and its `reason` is the condition's reason, so the two surfaces can never diverge.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// `status` of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`.
    Unknown,
}

impl ConditionStatus {
    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }

    /// Parses the wire spelling; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "True" => Some(Self::True),
            "False" => Some(Self::False),
            "Unknown" => Some(Self::Unknown),
            _ => None,
        }
    }
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Event reasons: the spec's Event table, plus `OperationCancelled` (ours: a cancelled
/// Operation is a terminal outcome and every terminal outcome must leave a record).
///
/// The audit event's `kind` is always one of these (or, for the few transitions the spec's
/// table does not name, the condition's own reason or an [`errors`] category).
pub mod events {
    /// ApplicationInstance: the reconciler begins a generation.
    pub const RECONCILE_STARTED: &str = "ReconcileStarted";
    /// ApplicationInstance: a generation completes with Ready=True.
    pub const RECONCILE_SUCCEEDED: &str = "ReconcileSucceeded";
    /// ApplicationInstance: a generation completes with Failed=True; the message is the reason.
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    /// ApplicationInstance: the HelmRelease moved to a new revision (a status change, not a
    /// condition transition: emitted when `status.helmRelease.revision` grows).
    pub const HELM_RELEASE_UPGRADED: &str = "HelmReleaseUpgraded";
    /// Operation: validation passed; child resource creation imminent.
    pub const OPERATION_ACCEPTED: &str = "OperationAccepted";
    /// Operation: a precondition is unmet; the message names the precondition.
    pub const OPERATION_BLOCKED: &str = "OperationBlocked";
    /// Operation: the child resource is running.
    pub const OPERATION_RUNNING: &str = "OperationRunning";
    /// Operation: the child resource succeeded; outputs are recorded on the Operation.
    pub const OPERATION_SUCCEEDED: &str = "OperationSucceeded";
    /// Operation: the child resource failed (or the deadline passed); the message carries the
    /// engine-specific reason.
    pub const OPERATION_FAILED: &str = "OperationFailed";
    /// Operation: cancelled through `spec.cancel` (not in the spec's table; see module docs).
    pub const OPERATION_CANCELLED: &str = "OperationCancelled";
    /// Cluster: the link to the control plane was established or re-established.
    pub const CONNECTIVITY_CONNECTED: &str = "ConnectivityConnected";
    /// Cluster: the link has been failing for the configured grace period.
    pub const CONNECTIVITY_LOST: &str = "ConnectivityLost";
    /// Cluster: the bootstrap credential was rotated (an occurrence, not a condition
    /// transition: emitted by the agent when a rotated token has worked).
    pub const CREDENTIAL_ROTATED: &str = "CredentialRotated";
    /// Cluster: the audit-event buffer overflowed and the oldest events were dropped.
    pub const CLUSTER_EVENT_BUFFER_OVERFLOW: &str = "ClusterEventBufferOverflow";

    /// Every Event reason above.
    pub const ALL: &[&str] = &[
        RECONCILE_STARTED,
        RECONCILE_SUCCEEDED,
        RECONCILE_FAILED,
        HELM_RELEASE_UPGRADED,
        OPERATION_ACCEPTED,
        OPERATION_BLOCKED,
        OPERATION_RUNNING,
        OPERATION_SUCCEEDED,
        OPERATION_FAILED,
        OPERATION_CANCELLED,
        CONNECTIVITY_CONNECTED,
        CONNECTIVITY_LOST,
        CREDENTIAL_ROTATED,
        CLUSTER_EVENT_BUFFER_OVERFLOW,
    ];
}

/// Conditions of the `Cluster` resource.
pub mod cluster {
    /// The link to the control plane works (pull: round-trips succeed; push: the control
    /// plane consumes AuditBatches; gitops: the Flux source is Ready).
    pub const CONNECTED: &str = "Connected";
    /// The control plane accepts the bootstrap credential.
    pub const AUTHENTICATED: &str = "Authenticated";
    /// All three controllers and the agent are running.
    pub const CONTROLLERS_HEALTHY: &str = "ControllersHealthy";
    /// The operator's CRDs are installed and match the schema this binary was built with.
    pub const CRDS_REGISTERED: &str = "CRDsRegistered";
    /// The link has been down for longer than `spec.connectivity.gracePeriod`.
    pub const DISCONNECTED: &str = "Disconnected";
    /// The audit-event buffer overflowed; the oldest events were dropped and are replayed
    /// from CR status.
    pub const EVENT_BUFFER_OVERFLOW: &str = "EventBufferOverflow";
    /// The Operation catalog in force is the one the catalog ConfigMap asks for (beyond
    /// the spec's set: issue 8 asks for the ConfigMap's parse result on the Cluster).
    pub const OPERATION_CATALOG_VALID: &str = "OperationCatalogValid";

    /// Every condition type of a Cluster.
    pub const TYPES: &[&str] = &[
        CONNECTED,
        AUTHENTICATED,
        CONTROLLERS_HEALTHY,
        CRDS_REGISTERED,
        DISCONNECTED,
        EVENT_BUFFER_OVERFLOW,
        OPERATION_CATALOG_VALID,
    ];

    /// Reasons of Cluster conditions.
    pub mod reasons {
        /// Connected=True: the last round-trip to the control plane succeeded.
        pub const CONTROL_PLANE_REACHABLE: &str = "ControlPlaneReachable";
        /// Connected=False: round-trips have failed for the whole grace period.
        pub const CONTROL_PLANE_UNREACHABLE: &str = "ControlPlaneUnreachable";
        /// Connected=False: round-trips are failing, still within the grace period
        /// (`connectivity_state` 0, "reconnecting"); Connected=Unknown: the first
        /// round-trip is pending.
        pub const RECONNECTING: &str = "Reconnecting";
        /// Connected=True (push mode): the control plane consumes the AuditBatches we write.
        pub const AUDIT_BATCHES_CONSUMED: &str = "AuditBatchesConsumed";
        /// Connected=False (push mode): AuditBatches stay unconsumed past the grace period.
        pub const AUDIT_BATCHES_NOT_CONSUMED: &str = "AuditBatchesNotConsumed";
        /// Connected=True (gitops mode): the Flux source named in `spec.gitopsSource` is Ready.
        pub const GITOPS_SOURCE_READY: &str = "GitOpsSourceReady";
        /// Connected=False (gitops mode): that Flux source is missing or not Ready.
        pub const GITOPS_SOURCE_NOT_READY: &str = "GitOpsSourceNotReady";
        /// Authenticated=True: the control plane accepted the credential.
        pub const CREDENTIAL_VALID: &str = "CredentialValid";
        /// Authenticated=False: the control plane answered 401.
        pub const CREDENTIAL_REJECTED: &str = "CredentialRejected";
        /// Authenticated=False: the Secret or key in `credentialsSecretRef` does not exist.
        pub const CREDENTIAL_MISSING: &str = "CredentialMissing";
        /// Authenticated=True: rotation failed but the current credential still works; the
        /// message names the failure and the agent retries before expiry.
        pub const CREDENTIAL_ROTATION_FAILED: &str = "CredentialRotationFailed";
        /// ControllersHealthy=True.
        pub const ALL_CONTROLLERS_READY: &str = "AllControllersReady";
        /// ControllersHealthy=False: the message names the controllers that are not running.
        pub const CONTROLLERS_NOT_READY: &str = "ControllersNotReady";
        /// CRDsRegistered=True: every CRD is installed and matches this binary's schema.
        pub const SCHEMA_MATCHES: &str = "SchemaMatches";
        /// CRDsRegistered=False: a CRD is missing; the message names it.
        pub const CRDS_MISSING: &str = "CRDsMissing";
        /// CRDsRegistered=False: an installed CRD differs from this binary's schema (version skew).
        pub const SCHEMA_MISMATCH: &str = "SchemaMismatch";
        /// Disconnected=False (also any condition that does not apply in the current mode).
        pub const NOT_APPLICABLE: &str = "NotApplicable";
        /// Disconnected=True: the link has been down for longer than the grace period.
        pub const GRACE_PERIOD_EXCEEDED: &str = "GracePeriodExceeded";
        /// EventBufferOverflow=True: events were dropped; the message gives the count.
        pub const BUFFER_OVERFLOWED: &str = "BufferOverflowed";
        /// EventBufferOverflow=False: the buffer holds everything not yet delivered.
        pub const BUFFER_WITHIN_CAPACITY: &str = "BufferWithinCapacity";
        /// OperationCatalogValid=True: there is no catalog ConfigMap; the built-in
        /// catalog is in force.
        pub const BUILTIN_CATALOG: &str = "BuiltinCatalog";
        /// OperationCatalogValid=True: the catalog ConfigMap's overrides are in force.
        pub const CATALOG_OVERRIDES_APPLIED: &str = "CatalogOverridesApplied";
        /// OperationCatalogValid=False: the catalog ConfigMap does not parse; the
        /// built-in catalog stays in force (the same reason as the Warning Event on the
        /// ConfigMap).
        pub const OPERATION_CATALOG_INVALID: &str = "OperationCatalogInvalid";

        /// Every Cluster reason.
        pub const ALL: &[&str] = &[
            CONTROL_PLANE_REACHABLE,
            CONTROL_PLANE_UNREACHABLE,
            RECONNECTING,
            AUDIT_BATCHES_CONSUMED,
            AUDIT_BATCHES_NOT_CONSUMED,
            GITOPS_SOURCE_READY,
            GITOPS_SOURCE_NOT_READY,
            CREDENTIAL_VALID,
            CREDENTIAL_REJECTED,
            CREDENTIAL_MISSING,
            CREDENTIAL_ROTATION_FAILED,
            BUILTIN_CATALOG,
            CATALOG_OVERRIDES_APPLIED,
            OPERATION_CATALOG_INVALID,
            ALL_CONTROLLERS_READY,
            CONTROLLERS_NOT_READY,
            SCHEMA_MATCHES,
            CRDS_MISSING,
            SCHEMA_MISMATCH,
            NOT_APPLICABLE,
            GRACE_PERIOD_EXCEEDED,
            BUFFER_OVERFLOWED,
            BUFFER_WITHIN_CAPACITY,
        ];
    }
}

/// Conditions of the `ApplicationInstance` resource.
///
/// Convention that makes every generation's outcome a transition (and so an Event): when a
/// new generation starts, the reconciler sets `Reconciling=True` (`Reconciling`),
/// `Ready=Unknown` (`HelmReleaseProgressing`) and `Failed=False` (`Reconciling`); it ends
/// with `Ready=True` (ReconcileSucceeded) or `Failed=True` + `Ready=False` (ReconcileFailed),
/// and `Reconciling=False` (`ReconcileSucceeded`, or the failure reason).
pub mod application_instance {
    /// The HelmRelease is installed/upgraded at the desired chart version and healthy.
    pub const READY: &str = "Ready";
    /// The current generation cannot become Ready without a change (spec, values source, or
    /// chart); the message says what.
    pub const FAILED: &str = "Failed";
    /// The operator or Flux is working on the current generation.
    pub const RECONCILING: &str = "Reconciling";

    /// Every condition type of an ApplicationInstance.
    pub const TYPES: &[&str] = &[READY, FAILED, RECONCILING];

    /// Reasons of ApplicationInstance conditions.
    pub mod reasons {
        /// Reconciling=True: a new generation is being applied (also Failed=False meanwhile).
        pub const RECONCILING: &str = "Reconciling";
        /// Reconciling=False and Failed=False: the generation completed successfully.
        pub const RECONCILE_SUCCEEDED: &str = "ReconcileSucceeded";
        /// Ready=Unknown: children applied, Flux has not reported on this generation yet.
        pub const HELM_RELEASE_PROGRESSING: &str = "HelmReleaseProgressing";
        /// Ready=True: Flux reports the HelmRelease Ready at the desired version.
        pub const HELM_RELEASE_READY: &str = "HelmReleaseReady";
        /// Ready=False, Failed=True: Flux reports the release failed (other than the cases below).
        pub const HELM_RELEASE_FAILED: &str = "HelmReleaseFailed";
        /// Ready=False, Failed=True: the first install failed.
        pub const INSTALL_FAILED: &str = "InstallFailed";
        /// Ready=False, Failed=True: an upgrade failed (Flux may have rolled back).
        pub const UPGRADE_FAILED: &str = "UpgradeFailed";
        /// Ready=False: the chart repository cannot be fetched (HelmRepository not Ready).
        pub const HELM_REPOSITORY_NOT_READY: &str = "HelmRepositoryNotReady";
        /// Ready=False, Failed=True: the spec is valid by schema but cannot be applied.
        pub const INVALID_SPEC: &str = "InvalidSpec";
        /// Ready=False, Failed=True: a non-optional `valuesFrom` Secret/ConfigMap or key is missing.
        pub const VALUES_SOURCE_MISSING: &str = "ValuesSourceMissing";
        /// Reconciling=False: `spec.suspend` is true; nothing is applied until it is cleared.
        pub const SUSPENDED: &str = "Suspended";
        /// Ready=False, Failed=True: the namespace lacks
        /// `app.vworkspace.io/managed-by=vworkspace`; nothing is created there.
        pub const NAMESPACE_NOT_MANAGED: &str = "NamespaceNotManaged";

        /// Every ApplicationInstance reason.
        pub const ALL: &[&str] = &[
            RECONCILING,
            RECONCILE_SUCCEEDED,
            HELM_RELEASE_PROGRESSING,
            HELM_RELEASE_READY,
            HELM_RELEASE_FAILED,
            INSTALL_FAILED,
            UPGRADE_FAILED,
            HELM_REPOSITORY_NOT_READY,
            INVALID_SPEC,
            VALUES_SOURCE_MISSING,
            SUSPENDED,
            NAMESPACE_NOT_MANAGED,
        ];
    }
}

/// Conditions of the `Operation` resource, and the reasons also used in `status.reason`.
///
/// An Operation's conditions follow its phase (`vworkspace_reconcile::operation` decides
/// them, `vworkspace_reconcile::transitions::announce` the Events):
///
/// | phase | Accepted | Running | Succeeded |
/// |---|---|---|---|
/// | Pending | – | – | – |
/// | Blocked | False `<precondition>` | – | (Unknown `InProgress` if accepted before) |
/// | Accepted | True `PreconditionsMet` | – | Unknown `InProgress` |
/// | Running | True | True `EngineRunning` | Unknown `InProgress` |
/// | Succeeded | True | False `Finished` | True `<engine outcome>` |
/// | Failed | True / False | False `Finished` | False `<failure>` (`BlockedTimeout` from Blocked) |
/// | Cancelled | True / False | False `Finished` | False `Cancelled` |
///
/// `CancelRequested=True` (`CancelNotSupported`) is added when `spec.cancel` is set but the
/// engine cannot stop the work it was handed; the Operation then runs to the engine's end.
pub mod operation {
    /// Preconditions are met (True) or one is unmet (False: the Operation is Blocked).
    pub const ACCEPTED: &str = "Accepted";
    /// The engine's child resource is running.
    pub const RUNNING: &str = "Running";
    /// Outcome: Unknown until the end, then True (succeeded) or False (failed or cancelled).
    pub const SUCCEEDED: &str = "Succeeded";

    /// `spec.cancel` is set but the engine cannot stop the work already handed to it (True,
    /// `CancelNotSupported`); the Operation finishes with the engine's own outcome.
    pub const CANCEL_REQUESTED: &str = "CancelRequested";

    /// A reconcile of the Operation failed and is retried (True, the error category as
    /// reason, the error chain as message); False (`ReconcileSucceeded`) once a later
    /// reconcile succeeded. Absent on an Operation whose reconciles never failed.
    pub const RECONCILING: &str = "Reconciling";

    /// Every condition type of an Operation.
    pub const TYPES: &[&str] = &[ACCEPTED, RUNNING, SUCCEEDED, CANCEL_REQUESTED, RECONCILING];

    /// Reasons of Operation conditions and of `status.reason`.
    pub mod reasons {
        // --- Pending / Blocked (Accepted=Unknown/False) ---
        /// Accepted=Unknown: not evaluated yet.
        pub const PENDING: &str = "Pending";
        /// Accepted=False: a precondition is unmet (generic; the message names it).
        pub const PRECONDITION_UNMET: &str = "PreconditionUnmet";
        /// Accepted=False: the namespace lacks `app.vworkspace.io/managed-by=vworkspace`.
        pub const NAMESPACE_NOT_MANAGED: &str = "NamespaceNotManaged";
        /// Accepted=False: the template is not in the namespace's allowed-operation-templates.
        pub const TEMPLATE_NOT_ALLOWED: &str = "TemplateNotAllowed";
        /// Accepted=False: the template is not in the operation catalog.
        pub const TEMPLATE_UNKNOWN: &str = "TemplateUnknown";
        /// Accepted=False: the template's type differs from `spec.type`.
        pub const TEMPLATE_TYPE_MISMATCH: &str = "TemplateTypeMismatch";
        /// Accepted=False: the engine's CRD is not installed on the cluster.
        pub const ENGINE_NOT_INSTALLED: &str = "EngineNotInstalled";
        /// Accepted=False: the target ApplicationInstance does not exist.
        pub const APPLICATION_INSTANCE_NOT_FOUND: &str = "ApplicationInstanceNotFound";
        /// Accepted=False: the target ApplicationInstance is not Ready.
        pub const APPLICATION_INSTANCE_NOT_READY: &str = "ApplicationInstanceNotReady";
        /// Accepted=False: another mutating Operation holds (or is ahead in line for) the
        /// same ApplicationInstance; the message names it.
        pub const MUTATING_OPERATION_RUNNING: &str = "MutatingOperationRunning";
        /// Accepted=False: a Restore names a Backup Operation (`fromOperation`) that does
        /// not exist or has not succeeded.
        pub const SOURCE_OPERATION_NOT_SUCCEEDED: &str = "SourceOperationNotSucceeded";

        // --- Accepted / Running ---
        /// Accepted=True: every precondition holds.
        pub const PRECONDITIONS_MET: &str = "PreconditionsMet";
        /// Succeeded=Unknown: accepted, outcome not known yet.
        pub const IN_PROGRESS: &str = "InProgress";
        /// Running=True: the child resource exists and the engine reports progress.
        pub const ENGINE_RUNNING: &str = "EngineRunning";
        /// Running=False: the child finished (the outcome is on Succeeded).
        pub const FINISHED: &str = "Finished";

        // --- Failed / Cancelled (Succeeded=False), engine-independent ---
        /// `spec.timeout` (or the catalog default) elapsed before the engine finished.
        pub const TIMEOUT: &str = "Timeout";
        /// The deadline passed while the Operation was still Blocked (outcome `blocked`).
        pub const BLOCKED_TIMEOUT: &str = "BlockedTimeout";
        /// CancelRequested=True: the engine cannot stop work already handed to it.
        pub const CANCEL_NOT_SUPPORTED: &str = "CancelNotSupported";
        /// Warning Event on the `vworkspace-operation-catalog` ConfigMap: it does not parse;
        /// the built-in catalog stays in force.
        pub const CATALOG_INVALID: &str = "OperationCatalogInvalid";
        /// `spec.cancel` was set; the child was stopped or deleted.
        pub const CANCELLED: &str = "Cancelled";
        /// `spec.parameters` are invalid for the template (not re-evaluated: Failed, not Blocked).
        pub const INVALID_PARAMETERS: &str = "InvalidParameters";
        /// The child resource disappeared, or the engine lost in-flight work (e.g. Velero marks
        /// an in-progress backup Failed after a restart).
        pub const ENGINE_LOST_WORK: &str = "EngineLostWork";
        /// The child could not be created (rejected by the API server).
        pub const CHILD_CREATE_FAILED: &str = "ChildCreateFailed";
        /// Reconciling=False: the reconcile after a failed one succeeded.
        pub const RECONCILE_SUCCEEDED: &str = "ReconcileSucceeded";

        // --- Engine outcomes (Succeeded=True / False) ---
        /// velero Backup phase Completed.
        pub const VELERO_BACKUP_COMPLETED: &str = "VeleroBackupCompleted";
        /// velero Backup phase PartiallyFailed.
        pub const VELERO_BACKUP_PARTIALLY_FAILED: &str = "VeleroBackupPartiallyFailed";
        /// velero Backup phase Failed or FailedValidation.
        pub const VELERO_BACKUP_FAILED: &str = "VeleroBackupFailed";
        /// velero Restore phase Completed.
        pub const VELERO_RESTORE_COMPLETED: &str = "VeleroRestoreCompleted";
        /// velero Restore phase PartiallyFailed.
        pub const VELERO_RESTORE_PARTIALLY_FAILED: &str = "VeleroRestorePartiallyFailed";
        /// velero Restore phase Failed or FailedValidation.
        pub const VELERO_RESTORE_FAILED: &str = "VeleroRestoreFailed";
        /// VolSync ReplicationSource reports `lastManualSync` equal to our trigger.
        pub const VOLSYNC_SYNC_COMPLETED: &str = "VolSyncSyncCompleted";
        /// VolSync reports the mover failed.
        pub const VOLSYNC_SYNC_FAILED: &str = "VolSyncSyncFailed";
        /// Every VolumeSnapshot reports `readyToUse: true`.
        pub const SNAPSHOT_READY: &str = "SnapshotReady";
        /// A VolumeSnapshot reports `status.error`.
        pub const SNAPSHOT_FAILED: &str = "SnapshotFailed";
        /// Flux reports the HelmRelease Ready at the new chart version.
        pub const HELM_UPGRADE_SUCCEEDED: &str = "HelmUpgradeSucceeded";
        /// Flux reports the upgrade failed.
        pub const HELM_UPGRADE_FAILED: &str = "HelmUpgradeFailed";
        /// The pre-upgrade hook Job failed (the HelmRelease was not touched).
        pub const HOOK_JOB_FAILED: &str = "HookJobFailed";
        /// Argo Workflow phase Succeeded.
        pub const WORKFLOW_SUCCEEDED: &str = "WorkflowSucceeded";
        /// Argo Workflow phase Failed or Error.
        pub const WORKFLOW_FAILED: &str = "WorkflowFailed";
        /// batch/v1 Job condition Complete.
        pub const JOB_SUCCEEDED: &str = "JobSucceeded";
        /// batch/v1 Job condition Failed (a reason other than the two below).
        pub const JOB_FAILED: &str = "JobFailed";
        /// batch/v1 Job condition Failed, reason BackoffLimitExceeded.
        pub const JOB_BACKOFF_LIMIT_EXCEEDED: &str = "JobBackoffLimitExceeded";
        /// batch/v1 Job condition Failed, reason DeadlineExceeded.
        pub const JOB_DEADLINE_EXCEEDED: &str = "JobDeadlineExceeded";
        /// The deadline passed before every VolumeSnapshot was ready.
        pub const SNAPSHOT_TIMEOUT: &str = "SnapshotTimeout";

        /// Every Operation reason.
        pub const ALL: &[&str] = &[
            PENDING,
            PRECONDITION_UNMET,
            NAMESPACE_NOT_MANAGED,
            TEMPLATE_NOT_ALLOWED,
            TEMPLATE_UNKNOWN,
            TEMPLATE_TYPE_MISMATCH,
            ENGINE_NOT_INSTALLED,
            APPLICATION_INSTANCE_NOT_FOUND,
            APPLICATION_INSTANCE_NOT_READY,
            MUTATING_OPERATION_RUNNING,
            SOURCE_OPERATION_NOT_SUCCEEDED,
            PRECONDITIONS_MET,
            IN_PROGRESS,
            ENGINE_RUNNING,
            FINISHED,
            TIMEOUT,
            BLOCKED_TIMEOUT,
            CANCEL_NOT_SUPPORTED,
            CATALOG_INVALID,
            CANCELLED,
            INVALID_PARAMETERS,
            ENGINE_LOST_WORK,
            CHILD_CREATE_FAILED,
            RECONCILE_SUCCEEDED,
            VELERO_BACKUP_COMPLETED,
            VELERO_BACKUP_PARTIALLY_FAILED,
            VELERO_BACKUP_FAILED,
            VELERO_RESTORE_COMPLETED,
            VELERO_RESTORE_PARTIALLY_FAILED,
            VELERO_RESTORE_FAILED,
            VOLSYNC_SYNC_COMPLETED,
            VOLSYNC_SYNC_FAILED,
            SNAPSHOT_READY,
            SNAPSHOT_FAILED,
            HELM_UPGRADE_SUCCEEDED,
            HELM_UPGRADE_FAILED,
            HOOK_JOB_FAILED,
            WORKFLOW_SUCCEEDED,
            WORKFLOW_FAILED,
            JOB_SUCCEEDED,
            JOB_FAILED,
            JOB_BACKOFF_LIMIT_EXCEEDED,
            JOB_DEADLINE_EXCEEDED,
            SNAPSHOT_TIMEOUT,
        ];
    }
}

/// Error categories: the stable `category()` of every reconcile error. A category is the
/// `reason` of the condition that reports the error (`Reconciling=True` while it is retried,
/// `Failed=True` when retrying cannot help), the reason of its Warning Event and audit
/// `kind`, and the `error` field of the log line. docs/conditions.md lists what each means
/// and what to do about it.
pub mod errors {
    /// The API server refused a child apply for lack of permission (403).
    pub const APPLY_FORBIDDEN: &str = "ApplyForbidden";
    /// The API server rejected a child as invalid (400/422); not retried.
    pub const APPLY_REJECTED: &str = "ApplyRejected";
    /// A child apply failed otherwise (server error, timeout, connection); retried.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Reading a values source (its metadata) failed; retried.
    pub const LOOKUP_FAILED: &str = "LookupFailed";
    /// Writing the object's status failed; retried.
    pub const STATUS_WRITE_FAILED: &str = "StatusWriteFailed";
    /// Reading the object itself failed; retried.
    pub const READ_FAILED: &str = "ReadFailed";
    /// The reconcile panicked (a bug); retried.
    pub const PANIC: &str = "Panic";
    /// A child's name is taken by an object this instance did not create; it is left
    /// untouched and the instance is not retried until it changes.
    pub const CHILD_CONFLICT: &str = "ChildConflict";

    /// Every category.
    pub const ALL: &[&str] = &[
        APPLY_FORBIDDEN,
        APPLY_REJECTED,
        APPLY_FAILED,
        LOOKUP_FAILED,
        STATUS_WRITE_FAILED,
        READ_FAILED,
        PANIC,
        CHILD_CONFLICT,
    ];

    /// True when `reason` is an error category.
    pub fn is_category(reason: &str) -> bool {
        ALL.contains(&reason)
    }
}

/// What [`set_condition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The condition type was not present; it was appended.
    Added,
    /// `status` changed; `lastTransitionTime` is now `now`.
    StatusChanged,
    /// `status` is the same but `reason` changed; `lastTransitionTime` was kept.
    ReasonChanged,
    /// Only `message` and/or `observedGeneration` changed; not a transition.
    Refreshed,
    /// Nothing changed.
    Unchanged,
}

impl Transition {
    /// A real transition: the publisher emits an Event and an audit event.
    pub fn is_transition(self) -> bool {
        matches!(
            self,
            Self::Added | Self::StatusChanged | Self::ReasonChanged
        )
    }

    /// The list changed at all (the status needs writing).
    pub fn is_changed(self) -> bool {
        !matches!(self, Self::Unchanged)
    }
}

/// Builds a condition with `lastTransitionTime = now` (what a brand-new condition carries;
/// [`set_condition`] keeps the older time when the status did not change).
pub fn new_condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: truncate_to_seconds(now),
    }
}

/// Sets `new` in `conditions` (matched by `type`), following the Kubernetes convention
/// (`meta.SetStatusCondition`): `lastTransitionTime` becomes `now` when the condition is new
/// or its `status` changed, and is kept otherwise, whatever `new.last_transition_time` says.
/// Order is stable: an existing condition is replaced in place, a new one is appended.
///
/// `now` is truncated to whole seconds, the precision the API server stores, so the value in
/// memory equals the value read back (and the audit `event_id` derived from it is the same
/// before and after a restart).
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition, now: &Time) -> Transition {
    let now = truncate_to_seconds(now);
    let Some(existing) = conditions.iter_mut().find(|c| c.type_ == new.type_) else {
        conditions.push(Condition {
            last_transition_time: now,
            ..new
        });
        return Transition::Added;
    };
    let outcome = if existing.status != new.status {
        Transition::StatusChanged
    } else if existing.reason != new.reason {
        Transition::ReasonChanged
    } else if existing.message != new.message
        || existing.observed_generation != new.observed_generation
    {
        Transition::Refreshed
    } else {
        Transition::Unchanged
    };
    let last_transition_time = if outcome == Transition::StatusChanged {
        now
    } else {
        existing.last_transition_time.clone()
    };
    *existing = Condition {
        last_transition_time,
        ..new
    };
    outcome
}

/// Removes the condition of `type_`; true when one was removed.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The status of the condition of `type_`; absent or unparsable counts as `Unknown`.
pub fn condition_status(conditions: &[Condition], type_: &str) -> ConditionStatus {
    find_condition(conditions, type_)
        .and_then(|c| ConditionStatus::parse(&c.status))
        .unwrap_or(ConditionStatus::Unknown)
}

/// True when the condition of `type_` is present with status `"True"`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    condition_status(conditions, type_) == ConditionStatus::True
}

fn truncate_to_seconds(t: &Time) -> Time {
    Timestamp::from_second(t.0.as_second()).map_or_else(|_| t.clone(), Time)
}

/// Kubernetes Event type.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum EventType {
    /// Expected progress.
    Normal,
    /// Something a person may need to act on.
    Warning,
}

impl EventType {
    /// The wire spelling (`Normal` / `Warning`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn cond(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: &str,
        generation: Option<i64>,
    ) -> Condition {
        // The time passed here must be ignored by set_condition.
        new_condition(type_, status, reason, message, generation, &at(999_999))
    }

    #[test]
    fn set_condition_table() {
        use ConditionStatus::{False, True};
        struct Case {
            name: &'static str,
            before: Vec<Condition>,
            new: Condition,
            want: Transition,
            want_time: i64,
        }
        let existing = |status, reason: &str, msg: &str, generation| {
            let mut c = cond("Ready", status, reason, msg, generation);
            c.last_transition_time = at(100);
            vec![c]
        };
        let cases = vec![
            Case {
                name: "absent is added with now",
                before: vec![],
                new: cond("Ready", True, "HelmReleaseReady", "", Some(1)),
                want: Transition::Added,
                want_time: 200,
            },
            Case {
                name: "status change moves the time",
                before: existing(False, "HelmReleaseFailed", "boom", Some(1)),
                new: cond("Ready", True, "HelmReleaseReady", "", Some(1)),
                want: Transition::StatusChanged,
                want_time: 200,
            },
            Case {
                name: "reason change keeps the time",
                before: existing(False, "HelmReleaseFailed", "boom", Some(1)),
                new: cond("Ready", False, "UpgradeFailed", "boom", Some(1)),
                want: Transition::ReasonChanged,
                want_time: 100,
            },
            Case {
                name: "message change is a refresh",
                before: existing(True, "HelmReleaseReady", "a", Some(1)),
                new: cond("Ready", True, "HelmReleaseReady", "b", Some(1)),
                want: Transition::Refreshed,
                want_time: 100,
            },
            Case {
                name: "generation change is a refresh",
                before: existing(True, "HelmReleaseReady", "a", Some(1)),
                new: cond("Ready", True, "HelmReleaseReady", "a", Some(2)),
                want: Transition::Refreshed,
                want_time: 100,
            },
            Case {
                name: "identical is unchanged",
                before: existing(True, "HelmReleaseReady", "a", Some(1)),
                new: cond("Ready", True, "HelmReleaseReady", "a", Some(1)),
                want: Transition::Unchanged,
                want_time: 100,
            },
        ];
        for case in cases {
            let mut conditions = case.before;
            let got = set_condition(&mut conditions, case.new.clone(), &at(200));
            assert_eq!(got, case.want, "{}", case.name);
            assert_eq!(conditions.len(), 1, "{}", case.name);
            let c = &conditions[0];
            assert_eq!(c.last_transition_time, at(case.want_time), "{}", case.name);
            assert_eq!(c.status, case.new.status, "{}", case.name);
            assert_eq!(c.reason, case.new.reason, "{}", case.name);
            assert_eq!(c.message, case.new.message, "{}", case.name);
            assert_eq!(
                c.observed_generation, case.new.observed_generation,
                "{}",
                case.name
            );
            assert_eq!(
                got.is_transition(),
                matches!(
                    case.want,
                    Transition::Added | Transition::StatusChanged | Transition::ReasonChanged
                ),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn set_condition_keeps_order_and_appends() {
        use ConditionStatus::{False, True};
        let mut conditions = vec![];
        set_condition(&mut conditions, cond("A", True, "R", "", None), &at(1));
        set_condition(&mut conditions, cond("B", True, "R", "", None), &at(1));
        set_condition(&mut conditions, cond("A", False, "R", "", None), &at(2));
        let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["A", "B"]);
        assert!(!is_true(&conditions, "A"));
        assert!(is_true(&conditions, "B"));
        assert_eq!(condition_status(&conditions, "C"), ConditionStatus::Unknown);
        assert!(remove_condition(&mut conditions, "A"));
        assert!(!remove_condition(&mut conditions, "A"));
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn set_condition_truncates_now_to_seconds() {
        let mut conditions = vec![];
        let now = Time(Timestamp::new(1_000, 123_456_789).unwrap());
        set_condition(
            &mut conditions,
            cond("A", ConditionStatus::True, "R", "", None),
            &now,
        );
        assert_eq!(conditions[0].last_transition_time, at(1_000));
    }

    /// metav1.Condition's reason rule: `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, ≤ 1024.
    fn is_valid_reason(r: &str) -> bool {
        let bytes = r.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return false;
        };
        r.len() <= 1024
            && first.is_ascii_alphabetic()
            && (last.is_ascii_alphanumeric() || *last == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b':'))
    }

    #[test]
    fn every_name_is_a_valid_reason_and_unique_per_resource() {
        let groups: &[(&str, &[&str])] = &[
            ("events", events::ALL),
            ("cluster types", cluster::TYPES),
            ("cluster reasons", cluster::reasons::ALL),
            ("ai types", application_instance::TYPES),
            ("ai reasons", application_instance::reasons::ALL),
            ("operation types", operation::TYPES),
            ("operation reasons", operation::reasons::ALL),
            ("error categories", errors::ALL),
        ];
        for (group, names) in groups {
            let mut seen = std::collections::BTreeSet::new();
            for name in *names {
                assert!(
                    is_valid_reason(name),
                    "{group}: {name:?} is not a valid reason"
                );
                assert!(seen.insert(*name), "{group}: {name:?} listed twice");
            }
        }
    }

    #[test]
    fn event_reasons_match_the_spec_table() {
        // The spec's Event table, verbatim, plus our OperationCancelled.
        let spec = [
            "ReconcileStarted",
            "ReconcileSucceeded",
            "ReconcileFailed",
            "HelmReleaseUpgraded",
            "OperationAccepted",
            "OperationBlocked",
            "OperationRunning",
            "OperationSucceeded",
            "OperationFailed",
            "OperationCancelled",
            "ConnectivityConnected",
            "ConnectivityLost",
            "CredentialRotated",
            "ClusterEventBufferOverflow",
        ];
        assert_eq!(events::ALL, spec);
    }
}
