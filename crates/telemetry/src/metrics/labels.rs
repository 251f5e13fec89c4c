//! Typed label values.
//!
//! Every label value that can appear in a series is a variant of one of these enums;
//! `as_str` is the exact exposed spelling from the spec (mixed case where the spec
//! says so, e.g. `helmHookJob`, `RunCommand`). `FromStr` accepts exactly the same
//! spelling, so other crates can map their own types through strings without the
//! telemetry crate depending on them.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// A string that is not the spelling of any variant of the label enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {label} label value {value:?}")]
pub struct ParseLabelError {
    label: &'static str,
    value: String,
}

macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($label:literal) {
            $( $(#[$vmeta:meta])* $variant:ident => $value:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order (used to zero-initialise series).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact label value exposed to Prometheus.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $value ),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseLabelError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $value => Ok($name::$variant), )+
                    other => Err(ParseLabelError { label: $label, value: other.to_owned() }),
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// The operator's three controllers (`controller` label, also the log field).
    Controller("controller") {
        /// The ApplicationInstance reconciler.
        ApplicationInstance => "applicationinstance",
        /// The Operation reconciler.
        Operation => "operation",
        /// The Cluster reconciler.
        Cluster => "cluster",
    }
}

label_enum! {
    /// `result` of `vworkspace_operator_reconcile_total`.
    ReconcileResult("result") {
        /// The reconcile asked to run again (explicit requeue or requeue-after).
        Requeue => "requeue",
        /// The reconcile finished without error and without asking to requeue.
        Success => "success",
        /// The reconcile returned an error (the runtime retries with backoff).
        Error => "error",
    }
}

label_enum! {
    /// `type` of `vworkspace_operator_operation_total` (Operation.spec.type).
    OperationType("type") {
        /// Backup.
        Backup => "Backup",
        /// Restore.
        Restore => "Restore",
        /// Upgrade.
        Upgrade => "Upgrade",
        /// Migration.
        Migration => "Migration",
        /// RunCommand.
        RunCommand => "RunCommand",
        /// Runbook.
        Runbook => "Runbook",
    }
}

label_enum! {
    /// `engine` of `vworkspace_operator_operation_total` (the catalog's engine column).
    Engine("engine") {
        /// Velero Backup / Restore.
        Velero => "velero",
        /// Argo Workflow.
        Workflow => "workflow",
        /// batch/v1 Job.
        Job => "job",
        /// Flux HelmRelease upgrade.
        Helm => "helm",
        /// Pre-upgrade Job followed by a HelmRelease upgrade.
        HelmHookJob => "helmHookJob",
        /// VolSync ReplicationSource.
        Volsync => "volsync",
        /// CSI VolumeSnapshot.
        Snapshot => "snapshot",
    }
}

label_enum! {
    /// `outcome` of `vworkspace_operator_operation_total`.
    OperationOutcome("outcome") {
        /// The child resource succeeded.
        Succeeded => "succeeded",
        /// The child resource failed, or the deadline passed.
        Failed => "failed",
        /// `spec.cancel` was honoured.
        Cancelled => "cancelled",
        /// A precondition is unmet.
        Blocked => "blocked",
    }
}

label_enum! {
    /// `mode` of `vworkspace_operator_connectivity_state` (Cluster.spec.mode).
    ConnectivityMode("mode") {
        /// The agent polls the control plane.
        Pull => "pull",
        /// The control plane writes through the Kubernetes API.
        Push => "push",
        /// Desired state arrives through Flux.
        Gitops => "gitops",
    }
}

/// Value of `vworkspace_operator_connectivity_state`: 1 connected, 0 reconnecting,
/// -1 disconnected (the spec's encoding; the same signal as `Cluster` `Connected`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// The last round-trip succeeded.
    Connected,
    /// Failing, but still inside the grace period.
    Reconnecting,
    /// Failing for longer than the grace period.
    Disconnected,
}

impl ConnectivityState {
    /// The gauge value.
    pub const fn value(self) -> i64 {
        match self {
            ConnectivityState::Connected => 1,
            ConnectivityState::Reconnecting => 0,
            ConnectivityState::Disconnected => -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_spellings_round_trip() {
        for c in Controller::ALL {
            assert_eq!(c.as_str().parse::<Controller>(), Ok(*c));
        }
        for e in Engine::ALL {
            assert_eq!(e.as_str().parse::<Engine>(), Ok(*e));
        }
        assert_eq!(Engine::HelmHookJob.as_str(), "helmHookJob");
        assert_eq!(OperationType::RunCommand.to_string(), "RunCommand");
        assert_eq!(ConnectivityMode::Gitops.as_str(), "gitops");
        let err = "Helm".parse::<Engine>().expect_err("case-sensitive");
        assert_eq!(err.to_string(), "unknown engine label value \"Helm\"");
    }
}
