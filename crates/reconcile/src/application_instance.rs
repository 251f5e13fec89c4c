//! The ApplicationInstance pipeline's pure steps: validate → desired children →
//! status and transitions.
//!
//! The controller (crates/operator) observes the instance, applies what
//! [`desired_children`] returns with server-side apply (skipping a child whose cached
//! state already holds it, [`child_up_to_date`]), and then calls [`plan_status`] with
//! the HelmRelease *as the apply returned it* (or as cached when nothing was applied).
//! Deciding on the post-apply object matters: a HelmRelease that was Ready for the
//! previous spec must not make a new generation look Ready before Flux has seen it.
//! A reconcile that fails is reported by [`plan_error`].
//!
//! Invariants:
//! * the plan never reads chart-value secrets: `valuesFrom` is passed through by name,
//!   and only the *existence* of each source is an input;
//! * which transitions are announced is decided by [`crate::transitions::announce`] and
//!   nothing else; this module only computes the status;
//! * after [`validate`], nothing reads an `Option` of the object again: the identity
//!   (name, namespace, uid, generation) travels in [`ValidSpec`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube_core::{ObjectMeta, Resource};
use vworkspace_api::application_instance::{
    ApplicationInstance, ApplicationInstanceStatus, HelmReleaseSummary, ValuesReference,
};
use vworkspace_api::conditions::{
    ConditionStatus, application_instance as ai, find_condition, new_condition, set_condition,
};
use vworkspace_api::labels;
use vworkspace_api::thirdparty::flux::{
    self, CrossNamespaceObjectReference, HelmChartTemplate, HelmChartTemplateSpec, HelmRelease,
    HelmReleaseSpec, HelmRepository, HelmRepositorySpec,
};
use vworkspace_api::transition::TransitionRecord;

use crate::names;
use crate::transitions::{self, ChildChange, Resource as Announced, StatusView};

/// Shortest `spec.interval` passed to Flux: shorter intervals make Flux hammer the chart
/// repository and the API server for no benefit.
pub const MIN_INTERVAL_SECS: u64 = 10;

/// Who the instance is: read once by [`validate`], so nothing downstream defaults an
/// `Option` of the object's metadata.
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
}

/// A spec that passed validation; everything after this reads typed, checked values.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    /// The object this spec belongs to.
    pub identity: Identity,
    /// Chart repository URL.
    pub repository: String,
    /// `oci` for OCI registries, `default` for HTTP(S) indexes (Flux's `spec.type`).
    pub repository_type: &'static str,
    /// Chart name.
    pub chart: String,
    /// Chart version (exact semver or a semver range).
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

/// Why a spec cannot be applied although the schema accepted it. Each message names the
/// field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    /// The object lacks server-set metadata (never the case for an object read from the
    /// API server).
    #[error("metadata.{0} is not set")]
    MissingMetadata(&'static str),
    /// The name is used as a label value and does not fit one.
    #[error("metadata.name {name:?} cannot be used as the value of label {label}: {why}")]
    NameNotALabelValue {
        /// The instance name.
        name: String,
        /// The label it goes into.
        label: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The chart version is not semver.
    #[error("spec.chart.version {version:?} is not a semver version or range ({why})")]
    BadVersion {
        /// The version as written.
        version: String,
        /// What is wrong.
        why: String,
    },
    /// The chart name is not one path segment.
    #[error("spec.chart.name {0:?} must be a single chart name, without '/' or '..'")]
    BadChartName(String),
    /// The interval is below the minimum.
    #[error("spec.interval {0} is shorter than the minimum of {MIN_INTERVAL_SECS}s")]
    IntervalTooShort(String),
    /// A values source name is not an object name.
    #[error("spec.valuesFrom[{index}].name {name:?} is not a valid {kind} name: {why}")]
    BadSourceName {
        /// Position in valuesFrom.
        index: usize,
        /// Secret or ConfigMap.
        kind: &'static str,
        /// The name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The same source appears twice in valuesFrom.
    #[error("spec.valuesFrom[{index}] lists {kind}/{name} key {key} a second time")]
    DuplicateValuesSource {
        /// Position in valuesFrom.
        index: usize,
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

/// Check what the schema cannot express, and read the identity once.
pub fn validate(obj: &ApplicationInstance) -> Result<ValidSpec, InvalidSpec> {
    let meta = &obj.metadata;
    let identity = Identity {
        name: meta
            .name
            .clone()
            .ok_or(InvalidSpec::MissingMetadata("name"))?,
        namespace: meta
            .namespace
            .clone()
            .ok_or(InvalidSpec::MissingMetadata("namespace"))?,
        uid: meta
            .uid
            .clone()
            .ok_or(InvalidSpec::MissingMetadata("uid"))?,
        generation: meta
            .generation
            .ok_or(InvalidSpec::MissingMetadata("generation"))?,
    };
    if let Err(why) = names::label_value(&identity.name) {
        return Err(InvalidSpec::NameNotALabelValue {
            name: identity.name,
            label: labels::APPLICATION_INSTANCE,
            why,
        });
    }
    let spec = &obj.spec;
    let version = spec.chart.version.trim();
    names::semver_constraint(version).map_err(|why| InvalidSpec::BadVersion {
        version: spec.chart.version.clone(),
        why,
    })?;
    let chart = &spec.chart.name;
    if chart.contains('/') || chart == "." || chart.contains("..") {
        return Err(InvalidSpec::BadChartName(chart.clone()));
    }
    if spec.interval.as_duration().as_secs() < MIN_INTERVAL_SECS {
        return Err(InvalidSpec::IntervalTooShort(
            spec.interval.as_str().to_owned(),
        ));
    }
    for (index, source) in spec.values_from.iter().enumerate() {
        let kind = source.kind.as_str();
        if let Err(why) = names::subdomain(&source.name) {
            return Err(InvalidSpec::BadSourceName {
                index,
                kind,
                name: source.name.clone(),
                why,
            });
        }
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
                index,
                kind,
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
        identity,
        repository: spec.chart.repository.clone(),
        repository_type,
        chart: chart.clone(),
        version: version.to_owned(),
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

fn child_meta(id: &Identity) -> ObjectMeta {
    ObjectMeta {
        name: Some(id.name.clone()),
        namespace: Some(id.namespace.clone()),
        labels: Some(
            [
                (labels::APPLICATION_INSTANCE.to_owned(), id.name.clone()),
                (
                    labels::K8S_MANAGED_BY.to_owned(),
                    labels::FIELD_MANAGER_OPERATOR.to_owned(),
                ),
            ]
            .into(),
        ),
        owner_references: Some(vec![OwnerReference {
            api_version: ApplicationInstance::api_version(&()).into_owned(),
            kind: ApplicationInstance::kind(&()).into_owned(),
            name: id.name.clone(),
            uid: id.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..ObjectMeta::default()
    }
}

/// The HelmRepository and HelmRelease to apply, both named after the instance and
/// owned by it (so deleting the instance garbage-collects them).
pub fn desired_children(spec: &ValidSpec) -> (HelmRepository, HelmRelease) {
    let id = &spec.identity;
    let repository = HelmRepository {
        metadata: child_meta(id),
        spec: HelmRepositorySpec {
            url: spec.repository.clone(),
            interval: Some(spec.interval.clone()),
            type_: Some(spec.repository_type.to_owned()),
        },
        status: None,
    };
    let release = HelmRelease {
        metadata: child_meta(id),
        spec: HelmReleaseSpec {
            interval: spec.interval.clone(),
            chart: Some(HelmChartTemplate {
                spec: HelmChartTemplateSpec {
                    chart: spec.chart.clone(),
                    version: Some(spec.version.clone()),
                    source_ref: CrossNamespaceObjectReference {
                        kind: HelmRepository::kind(&()).into_owned(),
                        name: id.name.clone(),
                        namespace: Some(id.namespace.clone()),
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

/// The two children the operator applies; what [`child_up_to_date`] compares.
pub trait Child: Resource<DynamicType = ()> {
    /// The spec, as the typed model sees it (fields the model lacks are ignored).
    type Spec: PartialEq;
    /// The spec.
    fn spec(&self) -> &Self::Spec;
}

impl Child for HelmRelease {
    type Spec = HelmReleaseSpec;
    fn spec(&self) -> &HelmReleaseSpec {
        &self.spec
    }
}

impl Child for HelmRepository {
    type Spec = HelmRepositorySpec;
    fn spec(&self) -> &HelmRepositorySpec {
        &self.spec
    }
}

/// Whether `live` (from the cache) already holds everything `desired` would apply: the
/// same spec, our labels, and our controller owner reference. When it does, applying
/// again would be a no-op PATCH, and the controller skips it.
pub fn child_up_to_date<C: Child>(desired: &C, live: &C) -> bool {
    let (d, l) = (desired.meta(), live.meta());
    let labels_held = d.labels.iter().flatten().all(|(k, v)| {
        l.labels
            .as_ref()
            .and_then(|labels| labels.get(k))
            .is_some_and(|lv| lv == v)
    });
    let owners_held = d.owner_references.iter().flatten().all(|want| {
        l.owner_references
            .iter()
            .flatten()
            .any(|have| have.uid == want.uid && have.controller == want.controller)
    });
    labels_held && owners_held && desired.spec() == live.spec()
}

/// What the controller found, as far as status is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    /// The spec is invalid; nothing was applied.
    Invalid(&'a InvalidSpec),
    /// Required values sources are missing; nothing was applied.
    MissingSources(&'a [&'a ValuesReference]),
    /// The namespace is not managed by vWorkspace; nothing was applied.
    NamespaceNotManaged,
    /// The children are in place; this is the live HelmRelease.
    Applied {
        /// The validated spec.
        spec: &'a ValidSpec,
        /// The live HelmRelease.
        release: &'a HelmRelease,
    },
}

/// The new status and what to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPlan {
    /// The status to write (its `transitions` already record `transitions`).
    pub status: ApplicationInstanceStatus,
    /// Whether it differs from the current one.
    pub changed: bool,
    /// What to publish, in order, before writing the status.
    pub transitions: Vec<TransitionRecord>,
    /// Flux has not finished: look again later even without a watch event.
    pub waiting: bool,
}

type ConditionValue = (ConditionStatus, &'static str, String);

/// Verdict on one generation.
struct Verdict {
    ready: ConditionValue,
    failed: ConditionValue,
    reconciling: ConditionValue,
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
        Observed::NamespaceNotManaged => {
            let msg = format!(
                "namespace {} is not managed by vWorkspace (it lacks the label {}={}); nothing is created in it",
                obj.metadata.namespace.as_deref().unwrap_or_default(),
                labels::MANAGED_BY,
                labels::MANAGED_BY_VALUE,
            );
            Verdict {
                ready: (False, ai::reasons::NAMESPACE_NOT_MANAGED, msg.clone()),
                failed: (True, ai::reasons::NAMESPACE_NOT_MANAGED, msg.clone()),
                reconciling: (False, ai::reasons::NAMESPACE_NOT_MANAGED, msg),
                release: previous_release,
                waiting: false,
            }
        }
        Observed::Applied { spec, release } => judge_release(obj, spec, release, previous_release),
    }
}

/// Everything the status plan reads of a HelmRelease, reduced to what can change the
/// instance's status: two releases with equal readings give the same status. The
/// controller compares the readings of a cached release before and after a change to
/// skip reconciles that cannot change anything (Flux's "Progressing" write, for one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseReading {
    /// The newest history entry, when Helm reports it deployed.
    pub deployed: Option<HelmReleaseSummary>,
    /// Flux's verdict on the release's current generation.
    pub state: ReleaseState,
}

/// Flux's verdict on a HelmRelease's current generation, as the plan uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseState {
    /// Flux has not reconciled the current generation yet, or is still at it.
    Waiting,
    /// `Ready=True` for the current generation, with Flux's message.
    Ready {
        /// Flux's message.
        message: String,
    },
    /// `Ready=False` for the current generation.
    NotReady {
        /// The instance's reason for Flux's.
        reason: &'static str,
        /// Flux's message (or one naming Flux's reason when it gave none).
        message: String,
    },
}

/// The reading of `release`; see [`ReleaseReading`].
pub fn read_release(release: &HelmRelease) -> ReleaseReading {
    let name = release.metadata.name.clone().unwrap_or_default();
    let empty = Default::default();
    let status = release.status.as_ref().unwrap_or(&empty);
    let deployed = status
        .history
        .first()
        .filter(|h| h.status.as_deref() == Some(flux::release_status::DEPLOYED))
        .map(|h| HelmReleaseSummary {
            name: Some(name.clone()),
            revision: h.version,
            chart_version: h.chart_version.clone(),
        });
    let generation = release.metadata.generation.unwrap_or_default();
    let caught_up = status.observed_generation == Some(generation);
    let ready =
        find_condition(&status.conditions, flux::condition_types::READY).filter(|_| caught_up);
    let state = match ready.map(|c| (c, ConditionStatus::parse(&c.status))) {
        Some((ready, Some(ConditionStatus::True))) => ReleaseState::Ready {
            message: ready.message.clone(),
        },
        Some((ready, Some(ConditionStatus::False))) => {
            let reason = match ready.reason.as_str() {
                flux::reasons::INSTALL_FAILED => ai::reasons::INSTALL_FAILED,
                flux::reasons::UPGRADE_FAILED => ai::reasons::UPGRADE_FAILED,
                flux::reasons::ARTIFACT_FAILED => ai::reasons::HELM_REPOSITORY_NOT_READY,
                flux::reasons::PROGRESSING => {
                    return ReleaseReading {
                        deployed,
                        state: ReleaseState::Waiting,
                    };
                }
                _ => ai::reasons::HELM_RELEASE_FAILED,
            };
            let message = if ready.message.is_empty() {
                format!("HelmRelease {name} is not ready ({})", ready.reason)
            } else {
                ready.message.clone()
            };
            ReleaseState::NotReady { reason, message }
        }
        _ => ReleaseState::Waiting,
    };
    ReleaseReading { deployed, state }
}

fn judge_release(
    obj: &ApplicationInstance,
    spec: &ValidSpec,
    release: &HelmRelease,
    previous: Option<HelmReleaseSummary>,
) -> Verdict {
    use ConditionStatus::{False, True, Unknown};
    let ReleaseReading { deployed, state } = read_release(release);
    let deployed_version = deployed.as_ref().and_then(|h| h.chart_version.clone());
    let summary = deployed.or(previous);
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
    match state {
        ReleaseState::Ready { message } if deployed_version.as_deref() == Some(&spec.version) => {
            let msg = format!("{}@{} released: {message}", spec.chart, spec.version);
            Verdict {
                ready: (True, ai::reasons::HELM_RELEASE_READY, msg.clone()),
                failed: (False, ai::reasons::RECONCILE_SUCCEEDED, msg.clone()),
                reconciling: (False, ai::reasons::RECONCILE_SUCCEEDED, msg),
                release: summary,
                waiting: false,
            }
        }
        ReleaseState::NotReady { reason, message } => Verdict {
            ready: (False, reason, message.clone()),
            failed: (True, reason, message.clone()),
            reconciling: (False, reason, message),
            release: summary,
            waiting: false,
        },
        ReleaseState::Waiting | ReleaseState::Ready { .. } => {
            let msg = format!(
                "waiting for Flux to release {}@{}",
                spec.chart, spec.version
            );
            Verdict {
                ready: (Unknown, ai::reasons::HELM_RELEASE_PROGRESSING, msg.clone()),
                failed: (False, ai::reasons::RECONCILING, msg.clone()),
                reconciling: (True, ai::reasons::RECONCILING, msg),
                release: summary,
                waiting: true,
            }
        }
    }
}

/// Compute the status for `observed` and the transitions it announces.
pub fn plan_status(obj: &ApplicationInstance, observed: Observed<'_>, now: &Time) -> StatusPlan {
    let verdict = judge(obj, observed);
    let release = verdict.release.clone();
    let waiting = verdict.waiting;
    finish(
        obj,
        [
            (ai::READY, verdict.ready),
            (ai::FAILED, verdict.failed),
            (ai::RECONCILING, verdict.reconciling),
        ],
        release,
        waiting,
        now,
    )
}

/// The status reporting a failed reconcile: the error's `category` becomes the reason of
/// `Reconciling=True` while it is retried (Ready and Failed keep what they said), or of
/// `Failed=True` and `Ready=False` when retrying cannot help (`terminal`). `message` is
/// the error chain. The next successful reconcile replaces it.
pub fn plan_error(
    obj: &ApplicationInstance,
    category: &'static str,
    message: &str,
    terminal: bool,
    now: &Time,
) -> StatusPlan {
    use ConditionStatus::{False, True, Unknown};
    let current = obj.status.clone().unwrap_or_default();
    let keep = |type_: &str, default: ConditionValue| -> ConditionValue {
        find_condition(&current.conditions, type_)
            .and_then(|c| {
                let status = ConditionStatus::parse(&c.status)?;
                let reason = ai::reasons::ALL
                    .iter()
                    .chain(vworkspace_api::conditions::errors::ALL)
                    .find(|r| **r == c.reason)?;
                Some((status, *reason, c.message.clone()))
            })
            .unwrap_or(default)
    };
    let msg = message.to_owned();
    let conditions = if terminal {
        [
            (ai::READY, (False, category, msg.clone())),
            (ai::FAILED, (True, category, msg.clone())),
            (ai::RECONCILING, (False, category, msg)),
        ]
    } else {
        [
            (ai::READY, keep(ai::READY, (Unknown, category, msg.clone()))),
            (
                ai::FAILED,
                keep(ai::FAILED, (False, ai::reasons::RECONCILING, msg.clone())),
            ),
            (ai::RECONCILING, (True, category, msg)),
        ]
    };
    finish(obj, conditions, current.helm_release.clone(), false, now)
}

fn finish(
    obj: &ApplicationInstance,
    conditions: [(&str, ConditionValue); 3],
    release: Option<HelmReleaseSummary>,
    waiting: bool,
    now: &Time,
) -> StatusPlan {
    let current = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let mut status = current.clone();
    status.observed_generation = generation;
    for (type_, (st, reason, msg)) in conditions {
        set_condition(
            &mut status.conditions,
            new_condition(type_, st, reason, msg, generation, now),
            now,
        );
    }
    let child = match (
        current.helm_release.as_ref().and_then(|r| r.revision),
        release.as_ref().and_then(|r| r.revision),
    ) {
        (Some(from), Some(to)) if to > from => Some(ChildChange::HelmReleaseUpgraded {
            from,
            to,
            chart_version: release
                .as_ref()
                .and_then(|r| r.chart_version.clone())
                .unwrap_or_default(),
        }),
        _ => None,
    };
    status.helm_release = release;
    let transitions = transitions::announce(
        Announced::ApplicationInstance,
        generation.unwrap_or_default(),
        StatusView {
            observed_generation: current.observed_generation,
            conditions: &current.conditions,
        },
        StatusView {
            observed_generation: status.observed_generation,
            conditions: &status.conditions,
        },
        child.as_ref(),
        &mut status.transitions,
        now,
    );
    let changed = status != current;
    StatusPlan {
        status,
        changed,
        transitions,
        waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;
    use vworkspace_api::conditions::{EventType, errors, events};

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

    /// Flux's intermediate writes read the same as no status at all, so they cannot change
    /// the instance's status; a verdict, a new generation or a new revision can.
    #[test]
    fn release_readings_tell_apart_only_what_the_plan_uses() {
        let created = release(1, None, None, &[]);
        let progressing_unknown = release(
            1,
            Some(1),
            Some(("Unknown", "Progressing", "installing")),
            &[],
        );
        let progressing_false = release(
            1,
            Some(1),
            Some(("False", "Progressing", "installing")),
            &[],
        );
        let stale_ready = release(2, Some(1), Some(("True", "InstallSucceeded", "ok")), &[]);
        for waiting in [&progressing_unknown, &progressing_false, &stale_ready] {
            assert_eq!(read_release(waiting), read_release(&created));
        }
        let ready = installed_release();
        assert_ne!(read_release(&ready), read_release(&created));
        assert!(matches!(
            read_release(&ready).state,
            ReleaseState::Ready { .. }
        ));
        let failed = release(1, Some(1), Some(("False", "InstallFailed", "boom")), &[]);
        assert_eq!(
            read_release(&failed).state,
            ReleaseState::NotReady {
                reason: ai::reasons::INSTALL_FAILED,
                message: "boom".into()
            }
        );
        let upgraded = release(
            1,
            Some(1),
            Some(("True", "UpgradeSucceeded", "ok")),
            &[(2, "1.0.0", "deployed")],
        );
        assert_ne!(
            read_release(&upgraded),
            read_release(&ready),
            "a new revision is a change"
        );
        // Every pair that reads the same also plans the same status.
        let mut a = instance(1, "1.0.0");
        let mut b = instance(1, "1.0.0");
        assert_eq!(
            step(&mut a, &progressing_false, &at(1)).status,
            step(&mut b, &created, &at(1)).status
        );
    }

    fn reasons(plan: &StatusPlan) -> Vec<&str> {
        plan.transitions.iter().map(|t| t.kind.as_str()).collect()
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
        assert!(
            again.transitions.is_empty(),
            "a no-op reconcile emits nothing"
        );
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
        assert_eq!(plan.transitions[0].generation, 2);
        // Both generations' outcomes can fall in one second; their ids still differ, so
        // the second ReconcileSucceeded is never deduplicated into the first.
        assert_eq!(installed.transitions[1].kind, events::RECONCILE_SUCCEEDED);
        assert_ne!(
            installed.transitions[1].event_id("c", "uid-1"),
            plan.transitions[1].event_id("c", "uid-1")
        );
        // The ids just published are recorded in status and recompute from it alone.
        for published in &plan.transitions {
            let recorded = plan
                .status
                .transitions
                .iter()
                .find(|r| r.kind == published.kind)
                .expect("recorded");
            assert_eq!(
                recorded.event_id("c", "uid-1"),
                published.event_id("c", "uid-1")
            );
        }
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
        assert_eq!(plan.transitions[0].event_type, EventType::Warning);
        assert_eq!(
            plan.transitions[0].message,
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
        assert!(
            plan.transitions[1]
                .message
                .starts_with("spec.chart.version \" \" is not a semver"),
            "{}",
            plan.transitions[1].message
        );
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
            plan.transitions[1].message,
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
        let (repo, hr) = desired_children(&spec);
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

    #[test]
    fn a_retried_error_shows_on_reconciling_and_clears_on_success() {
        let mut obj = instance(1, "1.0.0");
        let ready = step(&mut obj, &installed_release(), &at(0));
        assert_eq!(status_of(&ready, ai::READY).0, "True");
        let plan = plan_error(
            &obj,
            errors::APPLY_FORBIDDEN,
            "applying HelmRelease nextcloud: forbidden",
            false,
            &at(1),
        );
        assert_eq!(reasons(&plan), [errors::APPLY_FORBIDDEN]);
        assert_eq!(plan.transitions[0].event_type, EventType::Warning);
        assert_eq!(
            status_of(&plan, ai::RECONCILING),
            ("True".into(), errors::APPLY_FORBIDDEN.into())
        );
        assert_eq!(status_of(&plan, ai::READY).0, "True", "the app still runs");
        obj.status = Some(plan.status.clone());
        // The same error again: nothing new to announce, nothing to write.
        let again = plan_error(
            &obj,
            errors::APPLY_FORBIDDEN,
            "applying HelmRelease nextcloud: forbidden",
            false,
            &at(2),
        );
        assert!(again.transitions.is_empty() && !again.changed);
        // Fixed: the next successful reconcile clears the reason.
        let fixed = step(&mut obj, &installed_release(), &at(3));
        assert_eq!(
            status_of(&fixed, ai::RECONCILING),
            ("False".into(), ai::reasons::RECONCILE_SUCCEEDED.into())
        );
        assert!(fixed.transitions.is_empty(), "Ready never left True");
    }

    #[test]
    fn a_terminal_error_fails_the_instance() {
        let obj = instance(1, "1.0.0");
        let plan = plan_error(&obj, errors::APPLY_REJECTED, "422: invalid", true, &at(0));
        assert_eq!(
            reasons(&plan),
            [events::RECONCILE_STARTED, errors::APPLY_REJECTED]
        );
        assert_eq!(
            status_of(&plan, ai::FAILED),
            ("True".into(), errors::APPLY_REJECTED.into())
        );
        assert_eq!(status_of(&plan, ai::READY).0, "False");
    }

    #[test]
    fn validation_names_the_field() {
        type Mutation = Box<dyn Fn(&mut ApplicationInstance)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "metadata.name",
                Box::new(|o| o.metadata.name = Some("n".repeat(64))),
            ),
            (
                "spec.chart.version",
                Box::new(|o| o.spec.chart.version = "latest".into()),
            ),
            (
                "spec.chart.name",
                Box::new(|o| o.spec.chart.name = "../etc".into()),
            ),
            (
                "spec.chart.name",
                Box::new(|o| o.spec.chart.name = "a/b".into()),
            ),
            (
                "spec.interval",
                Box::new(|o| {
                    o.spec.interval = vworkspace_api::GoDuration::parse("0s").expect("parses");
                }),
            ),
            (
                "spec.valuesFrom[0].name",
                Box::new(|o| o.spec.values_from[0].name = "Not_A_Name".into()),
            ),
            ("metadata.uid", Box::new(|o| o.metadata.uid = None)),
        ];
        for (field, mutate) in cases {
            let mut obj = instance(1, "1.0.0");
            mutate(&mut obj);
            let err = validate(&obj).expect_err(field).to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let mut range = instance(1, ">=1.0.0 <2.0.0");
        assert!(validate(&range).is_ok());
        range.spec.chart.version = " 1.2.3 ".into();
        assert_eq!(validate(&range).expect("trimmed").version, "1.2.3");
    }

    #[test]
    fn a_child_that_already_holds_the_desired_state_is_not_applied_again() {
        let obj = instance(1, "1.0.0");
        let spec = validate(&obj).expect("valid");
        let (repo, hr) = desired_children(&spec);
        let mut live = hr.clone();
        live.metadata.resource_version = Some("42".into());
        live.metadata
            .labels
            .get_or_insert_default()
            .insert("extra".into(), "x".into());
        live.status = Some(Default::default());
        assert!(child_up_to_date(&hr, &live));
        assert!(child_up_to_date(&repo, &repo.clone()));
        let mut drifted = live.clone();
        drifted.spec.suspend = Some(true);
        assert!(!child_up_to_date(&hr, &drifted), "spec drift is re-applied");
        let mut unowned = live.clone();
        unowned.metadata.owner_references = None;
        assert!(!child_up_to_date(&hr, &unowned));
        let mut unlabelled = live;
        unlabelled.metadata.labels = None;
        assert!(!child_up_to_date(&hr, &unlabelled));
    }

    #[test]
    fn an_unmanaged_namespace_fails_and_says_which_label_is_missing() {
        let obj = instance(1, "1.0.0");
        let plan = plan_status(&obj, Observed::NamespaceNotManaged, &at(0));
        assert_eq!(
            reasons(&plan),
            [events::RECONCILE_STARTED, events::RECONCILE_FAILED]
        );
        assert_eq!(
            status_of(&plan, ai::FAILED),
            ("True".into(), ai::reasons::NAMESPACE_NOT_MANAGED.into())
        );
        assert!(
            plan.transitions[1]
                .message
                .contains("org-a is not managed by vWorkspace (it lacks the label app.vworkspace.io/managed-by=vworkspace)"),
            "{}",
            plan.transitions[1].message
        );
        assert!(
            !plan.waiting,
            "the namespace watch reconciles it when it is labelled"
        );
    }
}
