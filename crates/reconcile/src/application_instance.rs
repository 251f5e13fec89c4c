//! The ApplicationInstance pipeline's pure steps: validate → desired children →
//! status and transitions.
//!
//! The controller (crates/operator) observes the instance, applies what
//! [`desired_children`] returns with server-side apply, and then calls [`plan_status`]
//! with the HelmRelease *as the apply returned it*. Deciding on the post-apply object
//! matters: a HelmRelease that was Ready for the previous spec must not make a new
//! generation look Ready before Flux has seen it.
//!
//! Invariants:
//! * the plan never reads chart-value secrets: `valuesFrom` is passed through by name,
//!   and only the *existence* of each source is an input;
//! * Events follow real transitions only — `ReconcileStarted` once per generation,
//!   `ReconcileSucceeded` / `ReconcileFailed` when Ready / Failed become True,
//!   `HelmReleaseUpgraded` when the deployed revision rises above a known one (the
//!   first install is not an upgrade) — so a reconcile that changes nothing emits nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use vworkspace_api::application_instance::{
    ApplicationInstance, ApplicationInstanceStatus, HelmReleaseSummary, ValuesReference,
};
use vworkspace_api::conditions::{
    ConditionStatus, application_instance as ai, events, find_condition, new_condition,
    set_condition,
};
use vworkspace_api::labels;
use vworkspace_api::thirdparty::flux::{
    self, CrossNamespaceObjectReference, HelmChartTemplate, HelmChartTemplateSpec, HelmRelease,
    HelmReleaseSpec, HelmRepository, HelmRepositorySpec,
};

/// Label on the children naming their ApplicationInstance.
pub const INSTANCE_LABEL: &str = "app.vworkspace.io/application-instance";

/// A spec that passed validation; everything after this reads typed, checked values.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    /// Chart repository URL.
    pub repository: String,
    /// `oci` for OCI registries, `default` for HTTP(S) indexes (Flux's `spec.type`).
    pub repository_type: &'static str,
    /// Chart name.
    pub chart: String,
    /// Chart version.
    pub version: String,
    /// Flux interval, as a Go duration.
    pub interval: String,
    /// Values (not secret: they live in the spec).
    pub values: Option<serde_json::Map<String, serde_json::Value>>,
    /// Values sources, by name only.
    pub values_from: Vec<ValuesReference>,
    /// `spec.suspend`.
    pub suspend: bool,
}

/// Why a spec cannot be applied although the schema accepted it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    /// The chart version is blank.
    #[error("spec.chart.version is blank")]
    BlankVersion,
    /// The same source appears twice in valuesFrom.
    #[error("spec.valuesFrom lists {kind}/{name} key {key} twice")]
    DuplicateValuesSource {
        /// Secret or ConfigMap.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A targetPath with an empty segment.
    #[error("spec.valuesFrom[{index}].targetPath {path:?} has an empty segment")]
    BadTargetPath {
        /// Position in valuesFrom.
        index: usize,
        /// The path.
        path: String,
    },
}

impl InvalidSpec {
    /// Stable category (metric label, condition reason).
    pub fn category(&self) -> &'static str {
        ai::reasons::INVALID_SPEC
    }
}

/// Check what the schema cannot express.
pub fn validate(obj: &ApplicationInstance) -> Result<ValidSpec, InvalidSpec> {
    let spec = &obj.spec;
    if spec.chart.version.trim().is_empty() {
        return Err(InvalidSpec::BlankVersion);
    }
    for (index, source) in spec.values_from.iter().enumerate() {
        if let Some(path) = &source.target_path
            && path.split('.').any(str::is_empty)
        {
            return Err(InvalidSpec::BadTargetPath {
                index,
                path: path.clone(),
            });
        }
        let duplicate = spec.values_from[..index].iter().any(|earlier| {
            earlier.kind == source.kind
                && earlier.name == source.name
                && earlier.values_key == source.values_key
                && earlier.target_path == source.target_path
        });
        if duplicate {
            return Err(InvalidSpec::DuplicateValuesSource {
                kind: source.kind.as_str(),
                name: source.name.clone(),
                key: source.values_key.clone(),
            });
        }
    }
    let repository_type = if spec.chart.repository.starts_with("oci://") {
        "oci"
    } else {
        "default"
    };
    Ok(ValidSpec {
        repository: spec.chart.repository.clone(),
        repository_type,
        chart: spec.chart.name.clone(),
        version: spec.chart.version.trim().to_owned(),
        interval: spec.interval.as_str().to_owned(),
        values: spec.values.clone(),
        values_from: spec.values_from.clone(),
        suspend: spec.suspend,
    })
}

/// The required `valuesFrom` sources that do not exist (optional ones are tolerated).
pub fn missing_sources(
    spec: &ValidSpec,
    exists: impl Fn(&ValuesReference) -> bool,
) -> Vec<&ValuesReference> {
    spec.values_from
        .iter()
        .filter(|s| !s.optional && !exists(s))
        .collect()
}

fn owner_reference(obj: &ApplicationInstance) -> Option<OwnerReference> {
    let mut owner = obj.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

fn child_meta(obj: &ApplicationInstance) -> ObjectMeta {
    ObjectMeta {
        name: Some(obj.name_any()),
        namespace: obj.namespace(),
        labels: Some(
            [
                (INSTANCE_LABEL.to_owned(), obj.name_any()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    labels::FIELD_MANAGER_OPERATOR.to_owned(),
                ),
            ]
            .into(),
        ),
        owner_references: owner_reference(obj).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The HelmRepository and HelmRelease to apply, both named after the instance and
/// owned by it (so deleting the instance garbage-collects them).
pub fn desired_children(
    obj: &ApplicationInstance,
    spec: &ValidSpec,
) -> (HelmRepository, HelmRelease) {
    let repository = HelmRepository {
        metadata: child_meta(obj),
        spec: HelmRepositorySpec {
            url: spec.repository.clone(),
            interval: Some(spec.interval.clone()),
            type_: Some(spec.repository_type.to_owned()),
        },
        status: None,
    };
    let release = HelmRelease {
        metadata: child_meta(obj),
        spec: HelmReleaseSpec {
            interval: spec.interval.clone(),
            chart: Some(HelmChartTemplate {
                spec: HelmChartTemplateSpec {
                    chart: spec.chart.clone(),
                    version: Some(spec.version.clone()),
                    source_ref: CrossNamespaceObjectReference {
                        kind: "HelmRepository".to_owned(),
                        name: obj.name_any(),
                        namespace: obj.namespace(),
                    },
                },
            }),
            values: spec.values.clone(),
            values_from: spec
                .values_from
                .iter()
                .map(|s| flux::ValuesReference {
                    kind: s.kind.as_str().to_owned(),
                    name: s.name.clone(),
                    values_key: Some(s.values_key.clone()),
                    target_path: s.target_path.clone(),
                    optional: Some(s.optional),
                })
                .collect(),
            suspend: Some(spec.suspend),
        },
        status: None,
    };
    (repository, release)
}

/// What the controller found, as far as status is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    /// The spec is invalid; nothing was applied.
    Invalid(&'a InvalidSpec),
    /// Required values sources are missing; nothing was applied.
    MissingSources(&'a [&'a ValuesReference]),
    /// The children were applied; this is the HelmRelease the apply returned.
    Applied {
        /// The validated spec.
        spec: &'a ValidSpec,
        /// The live HelmRelease.
        release: &'a HelmRelease,
    },
}

/// An Event (and audit event) to publish for a transition.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEvent {
    /// Event reason = audit `kind`.
    pub event_reason: &'static str,
    /// Condition reason = audit `reason`.
    pub reason: String,
    /// Human-readable; never carries secret values or timestamps.
    pub message: String,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// What makes the event unique (its idempotency key's subject).
    pub key: EventKey,
}

/// The subject of a [`PlannedEvent`]'s idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKey {
    /// Once per generation.
    Generation(i64),
    /// Once per HelmRelease revision.
    Revision(i64),
    /// Once per condition transition of a generation (its lastTransitionTime).
    Transition(i64, Time),
}

/// The new status and what to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPlan {
    /// The status to write.
    pub status: ApplicationInstanceStatus,
    /// Whether it differs from the current one.
    pub changed: bool,
    /// Events in the order they should appear.
    pub events: Vec<PlannedEvent>,
    /// Flux has not finished: look again later even without a watch event.
    pub waiting: bool,
}

/// Verdict on one generation.
struct Verdict {
    ready: (ConditionStatus, &'static str, String),
    failed: (ConditionStatus, &'static str, String),
    reconciling: (ConditionStatus, &'static str, String),
    release: Option<HelmReleaseSummary>,
    waiting: bool,
}

fn judge(obj: &ApplicationInstance, observed: Observed<'_>) -> Verdict {
    use ConditionStatus::{False, True};
    let previous_release = obj.status.as_ref().and_then(|s| s.helm_release.clone());
    match observed {
        Observed::Invalid(why) => {
            let msg = why.to_string();
            Verdict {
                ready: (False, ai::reasons::INVALID_SPEC, msg.clone()),
                failed: (True, ai::reasons::INVALID_SPEC, msg.clone()),
                reconciling: (False, ai::reasons::INVALID_SPEC, msg),
                release: previous_release,
                waiting: false,
            }
        }
        Observed::MissingSources(missing) => {
            let names: Vec<String> = missing
                .iter()
                .map(|s| format!("{} {}", s.kind.as_str(), s.name))
                .collect();
            let msg = format!("values source not found: {}", names.join(", "));
            Verdict {
                ready: (False, ai::reasons::VALUES_SOURCE_MISSING, msg.clone()),
                failed: (True, ai::reasons::VALUES_SOURCE_MISSING, msg.clone()),
                reconciling: (False, ai::reasons::VALUES_SOURCE_MISSING, msg),
                release: previous_release,
                waiting: true,
            }
        }
        Observed::Applied { spec, release } => judge_release(obj, spec, release, previous_release),
    }
}

fn judge_release(
    obj: &ApplicationInstance,
    spec: &ValidSpec,
    release: &HelmRelease,
    previous: Option<HelmReleaseSummary>,
) -> Verdict {
    use ConditionStatus::{False, True, Unknown};
    let name = release.name_any();
    let status = release.status.clone().unwrap_or_default();
    let deployed = status
        .history
        .first()
        .filter(|h| h.status.as_deref() == Some(flux::release_status::DEPLOYED));
    let summary = deployed
        .map(|h| HelmReleaseSummary {
            name: Some(name.clone()),
            revision: h.version,
            chart_version: h.chart_version.clone(),
        })
        .or(previous);
    if spec.suspend {
        let msg = "spec.suspend is true; the HelmRelease is suspended".to_owned();
        let ready = obj
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, ai::READY))
            .and_then(|c| ConditionStatus::parse(&c.status))
            .unwrap_or(Unknown);
        return Verdict {
            ready: (ready, ai::reasons::SUSPENDED, msg.clone()),
            failed: (False, ai::reasons::SUSPENDED, msg.clone()),
            reconciling: (False, ai::reasons::SUSPENDED, msg),
            release: summary,
            waiting: false,
        };
    }
    let generation = release.metadata.generation.unwrap_or_default();
    let caught_up = status.observed_generation == Some(generation);
    let flux_ready = find_condition(&status.conditions, flux::condition_types::READY);
    let progressing = || {
        let msg = format!(
            "waiting for Flux to release {}@{}",
            spec.chart, spec.version
        );
        Verdict {
            ready: (Unknown, ai::reasons::HELM_RELEASE_PROGRESSING, msg.clone()),
            failed: (False, ai::reasons::RECONCILING, msg.clone()),
            reconciling: (True, ai::reasons::RECONCILING, msg),
            release: summary.clone(),
            waiting: true,
        }
    };
    let Some(ready) = flux_ready.filter(|_| caught_up) else {
        return progressing();
    };
    match ConditionStatus::parse(&ready.status) {
        Some(True) if deployed.and_then(|h| h.chart_version.as_deref()) == Some(&spec.version) => {
            let msg = format!(
                "{}@{} released: {}",
                spec.chart, spec.version, ready.message
            );
            Verdict {
                ready: (True, ai::reasons::HELM_RELEASE_READY, msg.clone()),
                failed: (False, ai::reasons::RECONCILE_SUCCEEDED, msg.clone()),
                reconciling: (False, ai::reasons::RECONCILE_SUCCEEDED, msg),
                release: summary,
                waiting: false,
            }
        }
        Some(False) => {
            let reason = match ready.reason.as_str() {
                flux::reasons::INSTALL_FAILED => ai::reasons::INSTALL_FAILED,
                flux::reasons::UPGRADE_FAILED => ai::reasons::UPGRADE_FAILED,
                flux::reasons::ARTIFACT_FAILED => ai::reasons::HELM_REPOSITORY_NOT_READY,
                flux::reasons::PROGRESSING => return progressing(),
                _ => ai::reasons::HELM_RELEASE_FAILED,
            };
            let msg = if ready.message.is_empty() {
                format!("HelmRelease {name} is not ready ({})", ready.reason)
            } else {
                ready.message.clone()
            };
            Verdict {
                ready: (False, reason, msg.clone()),
                failed: (True, reason, msg.clone()),
                reconciling: (False, reason, msg),
                release: summary,
                waiting: false,
            }
        }
        _ => progressing(),
    }
}

/// Compute the status for `observed` and the Events its transitions call for.
pub fn plan_status(obj: &ApplicationInstance, observed: Observed<'_>, now: &Time) -> StatusPlan {
    let current = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let verdict = judge(obj, observed);
    let mut status = current.clone();
    status.observed_generation = generation;
    let mut events = Vec::new();

    let new_generation = current.observed_generation != generation;
    if new_generation {
        events.push(PlannedEvent {
            event_reason: events::RECONCILE_STARTED,
            reason: ai::reasons::RECONCILING.to_owned(),
            message: format!("reconciling generation {}", generation.unwrap_or_default()),
            warning: false,
            key: EventKey::Generation(generation.unwrap_or_default()),
        });
    }

    let mut set = |type_: &str, (st, reason, msg): (ConditionStatus, &'static str, String)| {
        let before = find_condition(&status.conditions, type_).map(|c| c.status.clone());
        let t = set_condition(
            &mut status.conditions,
            new_condition(type_, st, reason, msg, generation, now),
            now,
        );
        let became_true = st == ConditionStatus::True && before.as_deref() != Some("True");
        (t, became_true)
    };
    let (_, ready_became_true) = set(ai::READY, verdict.ready.clone());
    let (_, failed_became_true) = set(ai::FAILED, verdict.failed.clone());
    set(ai::RECONCILING, verdict.reconciling.clone());

    let old_revision = current.helm_release.as_ref().and_then(|r| r.revision);
    let new_revision = verdict.release.as_ref().and_then(|r| r.revision);
    if let (Some(old), Some(new)) = (old_revision, new_revision)
        && new > old
    {
        let version = verdict
            .release
            .as_ref()
            .and_then(|r| r.chart_version.clone())
            .unwrap_or_default();
        events.push(PlannedEvent {
            event_reason: events::HELM_RELEASE_UPGRADED,
            reason: flux::reasons::UPGRADE_SUCCEEDED.to_owned(),
            message: format!(
                "HelmRelease moved from revision {old} to {new} (chart version {version})"
            ),
            warning: false,
            key: EventKey::Revision(new),
        });
    }
    status.helm_release = verdict.release;

    let transition_time = |type_: &str| {
        find_condition(&status.conditions, type_)
            .map(|c: &Condition| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone())
    };
    if ready_became_true {
        events.push(PlannedEvent {
            event_reason: events::RECONCILE_SUCCEEDED,
            reason: verdict.ready.1.to_owned(),
            message: verdict.ready.2.clone(),
            warning: false,
            key: EventKey::Transition(generation.unwrap_or_default(), transition_time(ai::READY)),
        });
    }
    if failed_became_true {
        events.push(PlannedEvent {
            event_reason: events::RECONCILE_FAILED,
            reason: verdict.failed.1.to_owned(),
            message: verdict.failed.2.clone(),
            warning: true,
            key: EventKey::Transition(generation.unwrap_or_default(), transition_time(ai::FAILED)),
        });
    }
    let changed = status != current;
    StatusPlan {
        status,
        changed,
        events,
        waiting: verdict.waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(1_780_000_000 + second).expect("valid time"))
    }

    fn instance(generation: i64, version: &str) -> ApplicationInstance {
        serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "ApplicationInstance",
            "metadata": { "name": "nextcloud", "namespace": "org-a", "uid": "uid-1", "generation": generation },
            "spec": {
                "chart": { "repository": "https://charts.example.org", "name": "nextcloud", "version": version },
                "values": { "replicas": 2 },
                "valuesFrom": [{ "kind": "Secret", "name": "nextcloud-secrets" }]
            }
        }))
        .expect("valid instance")
    }

    fn release(
        generation: i64,
        observed: Option<i64>,
        ready: Option<(&str, &str, &str)>,
        history: &[(i64, &str, &str)],
    ) -> HelmRelease {
        let mut status = json!({
            "history": history.iter().map(|(rev, version, st)| json!({
                "version": rev, "chartVersion": version, "chartName": "nextcloud", "status": st
            })).collect::<Vec<_>>(),
        });
        if let Some(observed) = observed {
            status["observedGeneration"] = json!(observed);
        }
        if let Some((st, reason, message)) = ready {
            status["conditions"] = json!([{
                "type": "Ready", "status": st, "reason": reason, "message": message,
                "lastTransitionTime": "2026-05-28T10:00:00Z"
            }]);
        }
        serde_json::from_value(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease",
            "metadata": { "name": "nextcloud", "namespace": "org-a", "generation": generation },
            "spec": { "interval": "5m" },
            "status": status,
        }))
        .expect("valid release")
    }

    /// Generation 1 of the HelmRelease, installed with chart 1.0.0 as revision 1.
    fn installed_release() -> HelmRelease {
        release(
            1,
            Some(1),
            Some(("True", "InstallSucceeded", "ok")),
            &[(1, "1.0.0", "deployed")],
        )
    }

    fn reasons(plan: &StatusPlan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.event_reason).collect()
    }

    fn status_of(plan: &StatusPlan, type_: &str) -> (String, String) {
        let c = find_condition(&plan.status.conditions, type_).expect("condition set");
        (c.status.clone(), c.reason.clone())
    }

    /// Runs one reconcile's status step and stores the result on the instance.
    fn step(obj: &mut ApplicationInstance, hr: &HelmRelease, now: &Time) -> StatusPlan {
        let spec = validate(obj).expect("valid");
        let plan = plan_status(
            obj,
            Observed::Applied {
                spec: &spec,
                release: hr,
            },
            now,
        );
        obj.status = Some(plan.status.clone());
        plan
    }

    #[test]
    fn install_emits_started_then_succeeded_and_nothing_when_unchanged() {
        let mut obj = instance(1, "1.0.0");
        let pending = release(1, None, None, &[]);
        let plan = step(&mut obj, &pending, &at(0));
        assert_eq!(reasons(&plan), [events::RECONCILE_STARTED]);
        assert_eq!(
            status_of(&plan, ai::READY),
            (
                "Unknown".into(),
                ai::reasons::HELM_RELEASE_PROGRESSING.into()
            )
        );
        assert_eq!(status_of(&plan, ai::RECONCILING).0, "True");
        assert!(plan.waiting);

        let ready = release(
            1,
            Some(1),
            Some(("True", "InstallSucceeded", "installed")),
            &[(1, "1.0.0", "deployed")],
        );
        let plan = step(&mut obj, &ready, &at(5));
        assert_eq!(reasons(&plan), [events::RECONCILE_SUCCEEDED]);
        assert_eq!(
            status_of(&plan, ai::READY),
            ("True".into(), ai::reasons::HELM_RELEASE_READY.into())
        );
        assert_eq!(status_of(&plan, ai::FAILED).0, "False");
        assert_eq!(status_of(&plan, ai::RECONCILING).0, "False");
        let hr = plan.status.helm_release.clone().expect("summary");
        assert_eq!(
            (hr.revision, hr.chart_version.as_deref()),
            (Some(1), Some("1.0.0"))
        );
        assert!(!plan.waiting);

        let again = step(&mut obj, &ready, &at(9));
        assert!(again.events.is_empty(), "a no-op reconcile emits nothing");
        assert!(!again.changed, "a no-op reconcile writes nothing");
    }

    #[test]
    fn version_bump_emits_started_upgraded_succeeded() {
        let mut obj = instance(1, "1.0.0");
        let installed = step(&mut obj, &installed_release(), &at(0));
        obj.metadata.generation = Some(2);
        obj.spec.chart.version = "2.0.0".into();
        // Flux has not seen the new HelmRelease generation: Ready must not stay True.
        let stale = release(
            2,
            Some(1),
            Some(("True", "InstallSucceeded", "ok")),
            &[(1, "1.0.0", "deployed")],
        );
        // All three steps fall in the same second, as they do on a fast cluster.
        let plan = step(&mut obj, &stale, &at(0));
        assert_eq!(reasons(&plan), [events::RECONCILE_STARTED]);
        assert_eq!(status_of(&plan, ai::READY).0, "Unknown");

        let upgraded = release(
            2,
            Some(2),
            Some(("True", "UpgradeSucceeded", "upgraded")),
            &[(2, "2.0.0", "deployed"), (1, "1.0.0", "superseded")],
        );
        let plan = step(&mut obj, &upgraded, &at(0));
        assert_eq!(
            reasons(&plan),
            [events::HELM_RELEASE_UPGRADED, events::RECONCILE_SUCCEEDED]
        );
        assert_eq!(plan.events[0].key, EventKey::Revision(2));
        // Both generations' outcomes can fall in one second; their keys still differ, so
        // the second ReconcileSucceeded is never deduplicated into the first.
        assert!(matches!(
            installed.events[1].key,
            EventKey::Transition(1, _)
        ));
        assert!(matches!(plan.events[1].key, EventKey::Transition(2, _)));
        assert_ne!(installed.events[1].key, plan.events[1].key);
    }

    #[test]
    fn caught_up_but_deployed_version_differs_is_still_progressing() {
        let mut obj = instance(1, "2.0.0");
        let plan = step(
            &mut obj,
            &release(
                1,
                Some(1),
                Some(("True", "x", "y")),
                &[(1, "1.0.0", "deployed")],
            ),
            &at(0),
        );
        assert_eq!(status_of(&plan, ai::READY).0, "Unknown");
        assert!(plan.waiting);
    }

    #[test]
    fn flux_failure_emits_reconcile_failed_with_the_reason_as_message() {
        let mut obj = instance(1, "1.0.0");
        step(&mut obj, &release(1, None, None, &[]), &at(0));
        let failed = release(
            1,
            Some(1),
            Some((
                "False",
                "UpgradeFailed",
                "Helm upgrade failed: hook timed out",
            )),
            &[(2, "1.0.0", "failed")],
        );
        let plan = step(&mut obj, &failed, &at(3));
        assert_eq!(reasons(&plan), [events::RECONCILE_FAILED]);
        assert!(plan.events[0].warning);
        assert_eq!(
            plan.events[0].message,
            "Helm upgrade failed: hook timed out"
        );
        assert_eq!(
            status_of(&plan, ai::FAILED),
            ("True".into(), ai::reasons::UPGRADE_FAILED.into())
        );
        assert_eq!(status_of(&plan, ai::READY).0, "False");
    }

    #[test]
    fn flux_progressing_reason_is_not_a_failure() {
        let mut obj = instance(1, "1.0.0");
        let plan = step(
            &mut obj,
            &release(1, Some(1), Some(("False", "Progressing", "working")), &[]),
            &at(0),
        );
        assert_eq!(status_of(&plan, ai::FAILED).0, "False");
        assert!(plan.waiting);
    }

    #[test]
    fn invalid_spec_fails_with_a_reason() {
        let mut obj = instance(1, " ");
        let why = validate(&obj).expect_err("blank version");
        let plan = plan_status(&obj, Observed::Invalid(&why), &at(0));
        obj.status = Some(plan.status.clone());
        assert_eq!(
            reasons(&plan),
            [events::RECONCILE_STARTED, events::RECONCILE_FAILED]
        );
        assert_eq!(
            status_of(&plan, ai::FAILED),
            ("True".into(), ai::reasons::INVALID_SPEC.into())
        );
        assert_eq!(plan.events[1].message, "spec.chart.version is blank");
    }

    #[test]
    fn duplicate_and_malformed_values_sources_are_invalid() {
        let mut obj = instance(1, "1.0.0");
        obj.spec.values_from.push(obj.spec.values_from[0].clone());
        assert!(matches!(
            validate(&obj),
            Err(InvalidSpec::DuplicateValuesSource { .. })
        ));
        let mut obj = instance(1, "1.0.0");
        obj.spec.values_from[0].target_path = Some("auth..password".into());
        assert!(matches!(
            validate(&obj),
            Err(InvalidSpec::BadTargetPath { index: 0, .. })
        ));
    }

    #[test]
    fn missing_values_source_names_it_without_values() {
        let obj = instance(1, "1.0.0");
        let spec = validate(&obj).expect("valid");
        let missing = missing_sources(&spec, |_| false);
        assert_eq!(missing.len(), 1);
        let plan = plan_status(&obj, Observed::MissingSources(&missing), &at(0));
        let (_, reason) = status_of(&plan, ai::FAILED);
        assert_eq!(reason, ai::reasons::VALUES_SOURCE_MISSING);
        assert_eq!(
            plan.events[1].message,
            "values source not found: Secret nextcloud-secrets"
        );
        let mut optional = obj.clone();
        optional.spec.values_from[0].optional = true;
        let spec = validate(&optional).expect("valid");
        assert!(missing_sources(&spec, |_| false).is_empty());
    }

    #[test]
    fn suspend_keeps_ready_and_stops_reconciling() {
        let mut obj = instance(1, "1.0.0");
        step(&mut obj, &installed_release(), &at(0));
        obj.spec.suspend = true;
        obj.metadata.generation = Some(2);
        let plan = step(
            &mut obj,
            &release(2, Some(1), None, &[(1, "1.0.0", "deployed")]),
            &at(4),
        );
        assert_eq!(
            status_of(&plan, ai::READY),
            ("True".into(), ai::reasons::SUSPENDED.into())
        );
        assert_eq!(
            status_of(&plan, ai::RECONCILING),
            ("False".into(), ai::reasons::SUSPENDED.into())
        );
        assert_eq!(reasons(&plan), [events::RECONCILE_STARTED]);
    }

    #[test]
    fn children_are_owned_and_pass_values_from_through() {
        let obj = instance(1, "1.0.0");
        let spec = validate(&obj).expect("valid");
        let (repo, hr) = desired_children(&obj, &spec);
        for meta in [&repo.metadata, &hr.metadata] {
            let owner = &meta.owner_references.as_ref().expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("ApplicationInstance", "nextcloud", "uid-1")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("org-a"));
        }
        assert_eq!(repo.spec.url, "https://charts.example.org");
        assert_eq!(repo.spec.type_.as_deref(), Some("default"));
        let chart = &hr.spec.chart.as_ref().expect("chart").spec;
        assert_eq!(
            (chart.chart.as_str(), chart.version.as_deref()),
            ("nextcloud", Some("1.0.0"))
        );
        assert_eq!(chart.source_ref.name, "nextcloud");
        assert_eq!(hr.spec.values_from[0].name, "nextcloud-secrets");
        assert_eq!(
            hr.spec.values_from[0].values_key.as_deref(),
            Some("values.yaml")
        );
        assert_eq!(
            hr.spec.values.as_ref().and_then(|v| v.get("replicas")),
            Some(&json!(2))
        );
    }
}
