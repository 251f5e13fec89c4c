//! The ApplicationInstance controller: I/O around the pure pipeline in
//! `vworkspace_reconcile::application_instance`.
//!
//! observe (the instance from cache; which `valuesFrom` sources exist — metadata only,
//! a Secret's data is never fetched) → validate (pure) → plan children (pure) → apply
//! (server-side apply, field manager `vworkspace-operator`) → plan status from the
//! HelmRelease the apply returned (pure) → write status if it changed → publish the
//! transitions. Deletion needs no work: the children carry controller owner
//! references and the garbage collector removes them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::Instrument;
use vworkspace_api::EventSubject;
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSourceKind};
use vworkspace_api::labels::FIELD_MANAGER_OPERATOR;
use vworkspace_api::thirdparty::flux::{HelmRelease, HelmRepository};
use vworkspace_reconcile::application_instance::{self as plan, EventKey, Observed, PlannedEvent};
use vworkspace_runtime::{Action, ErrorCategory, Event};

use crate::publisher::{Announcement, Publisher};

/// Name of this controller (metric label, log field).
pub const NAME: &str = "applicationinstance";

/// How often to look again while Flux works, in case a watch event is missed.
const WAITING_RECHECK: Duration = Duration::from_secs(60);

/// What the reconciler needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Transition publisher.
    pub publisher: Publisher,
}

/// Reconcile failures. Each has a stable category (metric label and log field).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying a child failed.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Kind of the child.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading a values source's metadata failed.
    #[error("checking {kind} {name}: {source}")]
    Lookup {
        /// Secret or ConfigMap.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// Reading the instance failed.
    #[error("reading the instance: {0}")]
    Read(#[source] kube::Error),
}

impl ErrorCategory for Error {
    fn category(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "ApplyFailed",
            Self::Lookup { .. } => "LookupFailed",
            Self::Status(_) => "StatusWriteFailed",
            Self::Read(_) => "ReadFailed",
        }
    }
}

/// Reconcile one ApplicationInstance.
pub async fn reconcile(
    event: Event<ApplicationInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let Event::Apply(obj) = event else {
        // Deleted: the garbage collector removes the owned children.
        return Ok(Action::Done);
    };
    let span = tracing::info_span!("application_instance", application_instance = %obj.name_any());
    reconcile_instance(obj, ctx).instrument(span).await
}

async fn reconcile_instance(
    cached: Arc<ApplicationInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    // Decide on a fresh read, not the cache: a HelmRelease event can arrive before the
    // watch has delivered our own last status write, and deciding on that stale status
    // would repeat or lose a transition (and its Event).
    let api: Api<ApplicationInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(obj) = api.get_opt(&name).await.map_err(Error::Read)? else {
        return Ok(Action::Done);
    };
    tracing::info!(generation = obj.metadata.generation, "reconcile started");
    let now = Time(Timestamp::now());

    let status_plan = match plan::validate(&obj) {
        Err(why) => {
            tracing::warn!(reason = why.category(), "invalid spec: {why}");
            plan::plan_status(&obj, Observed::Invalid(&why), &now)
        }
        Ok(spec) => {
            let mut absent = Vec::new();
            for source in &spec.values_from {
                if !source_exists(&ctx.client, &namespace, source.kind, &source.name).await? {
                    absent.push((source.kind, source.name.clone()));
                }
            }
            let missing = plan::missing_sources(&spec, |s| {
                !absent
                    .iter()
                    .any(|(kind, name)| *kind == s.kind && *name == s.name)
            });
            if missing.is_empty() {
                let (repository, release) = plan::desired_children(&obj, &spec);
                apply(&ctx.client, &namespace, &repository).await?;
                let live = apply(&ctx.client, &namespace, &release).await?;
                plan::plan_status(
                    &obj,
                    Observed::Applied {
                        spec: &spec,
                        release: &live,
                    },
                    &now,
                )
            } else {
                plan::plan_status(&obj, Observed::MissingSources(&missing), &now)
            }
        }
    };

    if status_plan.changed {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status_plan.status })),
        )
        .await
        .map_err(Error::Status)?;
    }
    let uid = obj.uid().unwrap_or_default();
    for event in &status_plan.events {
        announce(&ctx.publisher, &obj, &uid, event).await;
    }
    tracing::info!(
        changed = status_plan.changed,
        waiting = status_plan.waiting,
        "reconcile finished"
    );
    Ok(if status_plan.waiting {
        Action::RequeueAfter(WAITING_RECHECK)
    } else {
        Action::Done
    })
}

async fn announce(
    publisher: &Publisher,
    obj: &ApplicationInstance,
    uid: &str,
    event: &PlannedEvent,
) {
    let subject = match &event.key {
        EventKey::Generation(generation) => EventSubject::Generation {
            uid,
            generation: *generation,
        },
        EventKey::Revision(revision) => EventSubject::Revision {
            uid,
            revision: *revision,
        },
        EventKey::Transition(generation, at) => EventSubject::GenerationTransition {
            uid,
            generation: *generation,
            at,
        },
    };
    let name = obj.name_any();
    publisher
        .publish(
            obj,
            &Announcement {
                event_reason: event.event_reason,
                reason: &event.reason,
                message: &event.message,
                warning: event.warning,
                action: "Reconcile",
                subject,
                application_instance: Some(&name),
            },
        )
        .await;
}

/// Whether a values source exists. Only metadata is read: the operator never loads a
/// Secret's data, so chart-value secrets cannot leak into logs, Events or audit events.
async fn source_exists(
    client: &Client,
    namespace: &str,
    kind: ValuesSourceKind,
    name: &str,
) -> Result<bool, Error> {
    let found = match kind {
        ValuesSourceKind::Secret => Api::<Secret>::namespaced(client.clone(), namespace)
            .get_metadata_opt(name)
            .await
            .map(|m| m.is_some()),
        ValuesSourceKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_metadata_opt(name)
            .await
            .map(|m| m.is_some()),
    };
    found.map_err(|source| Error::Lookup {
        kind: kind.as_str(),
        name: name.to_owned(),
        source,
    })
}

trait Child:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Clone
    + std::fmt::Debug
{
    const KIND: &'static str;
}

impl Child for HelmRepository {
    const KIND: &'static str = "HelmRepository";
}

impl Child for HelmRelease {
    const KIND: &'static str = "HelmRelease";
}

async fn apply<C: Child>(client: &Client, namespace: &str, child: &C) -> Result<C, Error> {
    let name = child.name_any();
    let api: Api<C> = Api::namespaced(client.clone(), namespace);
    let mut body = serde_json::to_value(child).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("apiVersion".into(), json!(C::api_version(&())));
        obj.insert("kind".into(), json!(C::kind(&())));
        obj.remove("status");
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER_OPERATOR).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: C::KIND,
            name: name.clone(),
            source,
        })?;
    tracing::info!(kind = C::KIND, child = %name, "applied");
    Ok(applied)
}
