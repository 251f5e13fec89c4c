//! helm: `upgrade.helm` sets a new chart version on the target ApplicationInstance (field
//! manager `vworkspace-operation`); the ApplicationInstance controller carries it to the
//! HelmRelease and Flux upgrades. `upgrade.helmHookJob` first runs a pre-upgrade Job
//! ([`super::job`]) and only then does the same.
//!
//! Invariants:
//! * `version` must be an exact semver version: success is "the instance is Ready with a
//!   new release revision at that version", which a range cannot be compared with;
//! * the release the upgrade starts from is recorded (`status.upgrade`) when the version is
//!   set, and success needs a revision newer than that one at the asked version, with the
//!   instance Ready for its current generation: a Ready left over from before the change
//!   never counts;
//! * Flux's failure words are only believed for the version asked
//!   (`lastAttemptedRevision`): `UpgradeFailed`, `RollbackSucceeded`, `InstallFailed`, or
//!   the instance's `Failed=True`, end the Operation Failed with Flux's reason;
//! * once the version is set, neither cancel nor timeout can stop Flux half-way; both say
//!   so and the release finishes (a timeout still ends the Operation Failed).

use vworkspace_api::conditions::{ConditionStatus, operation::reasons};
use vworkspace_api::operation::UpgradeRecord;
use vworkspace_api::thirdparty::flux;

use super::{Observation, Params, StopSupport, outputs};
use crate::operation::TargetView;

/// Parameters of `upgrade.helm`.
pub const PARAMETERS: &[&str] = &["version"];
/// Parameters of `upgrade.helmHookJob`: the version and the hook Job's.
pub const HOOK_PARAMETERS: &[&str] = &[
    "version",
    "command",
    "image",
    "backoffLimit",
    "serviceAccountName",
    "env",
    "podAnnotations",
];

/// Checks the `version` parameter: an exact semver version.
pub fn version(p: &Params<'_>) -> Result<String, String> {
    let v = p.required("version")?;
    crate::names::semver_constraint(&v).map_err(|why| format!("parameter version {v:?}: {why}"))?;
    let exact = v
        .strip_prefix('v')
        .unwrap_or(&v)
        .starts_with(|c: char| c.is_ascii_digit())
        && !v.contains(|c: char| c.is_whitespace() || "<>=~^*|,xX".contains(c));
    if !exact {
        return Err(format!(
            "parameter version {v:?} must be an exact version such as 1.2.3, not a range"
        ));
    }
    Ok(v)
}

/// What to record when the version is set on `target`.
pub fn record(target: &TargetView, version: &str) -> UpgradeRecord {
    UpgradeRecord {
        from_chart_version: Some(target.chart_version.clone()),
        from_revision: target.release_revision,
        to_chart_version: version.to_owned(),
    }
}

/// True when `target` already runs `version` (nothing to upgrade).
pub fn already_at(target: &TargetView, version: &str) -> bool {
    target.chart_version == version
        && target.release_chart_version.as_deref() == Some(version)
        && target.ready == ConditionStatus::True
}

const FLUX_FAILURES: &[&str] = &[
    flux::reasons::UPGRADE_FAILED,
    flux::reasons::ROLLBACK_SUCCEEDED,
    flux::reasons::INSTALL_FAILED,
];

/// Reads the upgrade's progress from the target.
pub fn observe(record: &UpgradeRecord, target: &TargetView) -> Observation {
    let to = &record.to_chart_version;
    if target.chart_version != *to {
        if record.from_chart_version.as_deref() == Some(target.chart_version.as_str()) {
            return Observation::Pending {
                message: format!("waiting for the ApplicationInstance to show chart version {to}"),
            };
        }
        return Observation::Lost {
            message: format!(
                "the ApplicationInstance's chart version was changed to {} while upgrading to {to}",
                target.chart_version
            ),
        };
    }
    let caught_up = target.observed_generation == Some(target.generation);
    let attempted_ours = target.flux_last_attempted_revision.as_deref() == Some(to.as_str());
    if caught_up && attempted_ours {
        let flux_reason = target.flux_ready_reason.clone().unwrap_or_default();
        if FLUX_FAILURES.contains(&flux_reason.as_str()) {
            return Observation::Failed {
                reason: reasons::HELM_UPGRADE_FAILED,
                message: format!(
                    "Flux {flux_reason} upgrading to chart version {to}: {}",
                    target.flux_ready_message.clone().unwrap_or_default()
                ),
                outputs: Default::default(),
            };
        }
        if let Some((reason, message)) = &target.failed {
            return Observation::Failed {
                reason: reasons::HELM_UPGRADE_FAILED,
                message: format!("{reason} upgrading to chart version {to}: {message}"),
                outputs: Default::default(),
            };
        }
    }
    let newer = match (record.from_revision, target.release_revision) {
        (Some(from), Some(now)) => now > from,
        (None, Some(_)) => true,
        (_, None) => false,
    };
    if caught_up
        && target.ready == ConditionStatus::True
        && newer
        && target.release_chart_version.as_deref() == Some(to.as_str())
    {
        let from = record.from_chart_version.clone().unwrap_or_default();
        let from_rev = record
            .from_revision
            .map(|r| format!(" (revision {r})"))
            .unwrap_or_default();
        let rev = target.release_revision.unwrap_or_default();
        return Observation::Succeeded {
            reason: reasons::HELM_UPGRADE_SUCCEEDED,
            message: format!(
                "HelmRelease upgraded from chart version {from}{from_rev} to {to} (revision {rev})"
            ),
            outputs: outputs([
                ("fromChartVersion", record.from_chart_version.clone()),
                ("fromRevision", record.from_revision.map(|r| r.to_string())),
                ("chartVersion", Some(to.clone())),
                ("revision", Some(rev.to_string())),
            ]),
        };
    }
    let flux = target
        .flux_ready_reason
        .as_deref()
        .map(|r| format!(" (Flux: {r})"))
        .unwrap_or_default();
    Observation::Running {
        message: format!("Flux is upgrading the release to chart version {to}{flux}"),
    }
}

/// Once the version is set, Flux cannot be stopped.
pub fn stop() -> StopSupport {
    StopSupport::NotSupported(
        "Flux has started the upgrade and cannot be stopped half-way; the release runs to its end"
            .to_owned(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> TargetView {
        TargetView {
            ready: ConditionStatus::True,
            ready_reason: "HelmReleaseReady".into(),
            ready_message: String::new(),
            failed: None,
            generation: 2,
            observed_generation: Some(2),
            chart_version: "1.3.0".into(),
            release_name: "app".into(),
            release_revision: Some(4),
            release_chart_version: Some("1.3.0".into()),
            flux_ready_reason: Some(flux::reasons::UPGRADE_SUCCEEDED.into()),
            flux_ready_message: Some("Helm upgrade succeeded".into()),
            flux_last_attempted_revision: Some("1.3.0".into()),
        }
    }

    fn rec() -> UpgradeRecord {
        UpgradeRecord {
            from_chart_version: Some("1.2.0".into()),
            from_revision: Some(3),
            to_chart_version: "1.3.0".into(),
        }
    }

    fn kind(o: &Observation) -> String {
        match o {
            Observation::Pending { .. } => "Pending".into(),
            Observation::Running { .. } => "Running".into(),
            Observation::Succeeded { reason, .. } => format!("Succeeded:{reason}"),
            Observation::Failed { reason, .. } => format!("Failed:{reason}"),
            Observation::Lost { .. } => "Lost".into(),
        }
    }

    #[test]
    fn flux_vocabulary() {
        type Edit = fn(&mut TargetView);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "ready at the new revision",
                |_| {},
                "Succeeded:HelmUpgradeSucceeded",
            ),
            (
                "patch not visible yet",
                |t| t.chart_version = "1.2.0".into(),
                "Pending",
            ),
            (
                "someone else changed the version",
                |t| t.chart_version = "2.0.0".into(),
                "Lost",
            ),
            (
                "instance controller behind",
                |t| t.observed_generation = Some(1),
                "Running",
            ),
            (
                "same revision as before",
                |t| t.release_revision = Some(3),
                "Running",
            ),
            (
                "not ready yet",
                |t| t.ready = ConditionStatus::Unknown,
                "Running",
            ),
            (
                "release at another version",
                |t| t.release_chart_version = Some("1.2.0".into()),
                "Running",
            ),
            (
                "upgrade failed",
                |t| {
                    t.ready = ConditionStatus::False;
                    t.flux_ready_reason = Some("UpgradeFailed".into());
                },
                "Failed:HelmUpgradeFailed",
            ),
            (
                "rolled back",
                |t| {
                    t.release_chart_version = Some("1.2.0".into());
                    t.flux_ready_reason = Some("RollbackSucceeded".into());
                },
                "Failed:HelmUpgradeFailed",
            ),
            (
                "an old failure for another version is not believed",
                |t| {
                    t.ready = ConditionStatus::False;
                    t.flux_ready_reason = Some("UpgradeFailed".into());
                    t.flux_last_attempted_revision = Some("1.1.0".into());
                },
                "Running",
            ),
            (
                "instance Failed",
                |t| {
                    t.ready = ConditionStatus::False;
                    t.flux_ready_reason = Some("Progressing".into());
                    t.failed = Some(("UpgradeFailed".into(), "timed out waiting".into()));
                },
                "Failed:HelmUpgradeFailed",
            ),
            (
                "progressing",
                |t| {
                    t.ready = ConditionStatus::Unknown;
                    t.flux_ready_reason = Some("Progressing".into());
                },
                "Running",
            ),
        ];
        for (name, edit, want) in cases {
            let mut t = target();
            edit(&mut t);
            assert_eq!(kind(&observe(&rec(), &t)), *want, "{name}");
        }
    }

    #[test]
    fn success_and_failure_messages_carry_flux_words() {
        let Observation::Succeeded {
            message, outputs, ..
        } = observe(&rec(), &target())
        else {
            panic!("succeeded");
        };
        assert_eq!(
            message,
            "HelmRelease upgraded from chart version 1.2.0 (revision 3) to 1.3.0 (revision 4)"
        );
        assert_eq!(outputs["revision"], "4");
        let mut t = target();
        t.flux_ready_reason = Some("UpgradeFailed".into());
        t.flux_ready_message = Some("pre-upgrade hooks failed".into());
        let Observation::Failed { message, .. } = observe(&rec(), &t) else {
            panic!("failed");
        };
        assert!(
            message.contains("Flux UpgradeFailed") && message.contains("pre-upgrade hooks failed"),
            "{message}"
        );
    }

    #[test]
    fn version_must_be_exact() {
        let p = |v: serde_json::Value| version(&Params(v.as_object().unwrap()));
        assert_eq!(p(json!({"version": "1.3.0"})), Ok("1.3.0".into()));
        assert_eq!(
            p(json!({"version": "v1.3.0-rc.1"})),
            Ok("v1.3.0-rc.1".into())
        );
        for bad in [">=1.0.0", "1.x", "^1.2", "latest", "1.0.0 - 2.0.0"] {
            assert!(p(json!({"version": bad})).is_err(), "{bad}");
        }
        assert!(p(json!({})).unwrap_err().contains("version is required"));
    }
}
