//! The ApplicationInstance controller: I/O around the pure pipeline in
//! `vworkspace_reconcile::application_instance`.
//!
//! observe (the instance from the cache when the cache holds our last write, else a
//! GET; which `valuesFrom` sources exist — metadata only, a Secret's data is never
//! fetched) → validate (pure) → plan children (pure) → apply each child whose cached
//! state does not already hold it (server-side apply, field manager
//! `vworkspace-operator`) → plan status and transitions from the live HelmRelease
//! (pure) → publish the transitions → persist the status (server-side apply).
//!
//! Publishing comes before persisting on purpose: the transitions are recorded in the
//! status being written, and their ids depend only on the status before, so a crash or a
//! failed status write in between makes the next reconcile publish the same ids again —
//! which the publisher turns into no-ops — instead of losing the transition.
//!
//! Every request counts (the API server is the bottleneck): a reconcile that finds
//! nothing to change sends nothing; the controller's own status writes are recognised by
//! their resourceVersion ([`WrittenVersions`]) and trigger no reconcile; children are
//! read from label-selected caches shared with other controllers.
//!
//! A reconcile that fails is reported on the object through the runtime's report path
//! ([`reporter`]): a condition with the error's category as reason and the error chain
//! as message, and the Warning Event the transition model announces for it. Deletion
//! needs no work: the children carry controller owner references and the garbage
//! collector removes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::runtime::reflector::{ObjectRef, Store};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::Instrument;
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSourceKind};
use vworkspace_api::conditions::application_instance as ai_conditions;
use vworkspace_api::conditions::errors;
use vworkspace_api::conditions::{EventType, events};
use vworkspace_api::labels::FIELD_MANAGER_OPERATOR;
use vworkspace_api::thirdparty::flux::{HelmRelease, HelmRepository};
use vworkspace_api::transition::TransitionRecord;
use vworkspace_reconcile::application_instance::{self as plan, Observed, StatusPlan};
use vworkspace_runtime::KindName;
use vworkspace_runtime::decode::{Decoded, Undecodable};
use vworkspace_runtime::report::error_chain;
use vworkspace_runtime::{Action, ErrorCategory, ErrorReport, Event};

use crate::publisher::{AuditContext, Publisher};

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
    /// Cached managed namespaces (only those carrying the managed-by label).
    pub namespaces: Store<Namespace>,
    /// Cached HelmReleases (the operator's children only).
    pub releases: Store<HelmRelease>,
    /// Cached HelmRepositories (the operator's children only).
    pub repositories: Store<HelmRepository>,
    /// The resourceVersions of the controller's own status writes.
    pub written: WrittenVersions,
    /// HelmReleases just applied, until the cache has caught up with them.
    pub applied_releases: Applied<HelmRelease>,
    /// HelmRepositories just applied, until the cache has caught up with them.
    pub applied_repositories: Applied<HelmRepository>,
}

/// The children this controller applied whose watch event the cache may not have seen
/// yet: without them, a reconcile that runs right after an apply would find the cache
/// without the child (or with the older copy) and apply again. An entry leaves as soon
/// as the cache holds a resourceVersion at least as new.
///
/// It also knows which children are being applied right now: the watch event of a
/// create can arrive before the apply's response, and a child new to the cache while
/// its apply is in flight is that create.
#[derive(Debug)]
pub struct Applied<C: kube::Resource<DynamicType = ()>>(Arc<Mutex<AppliedState<C>>>);

#[derive(Debug)]
struct AppliedState<C: kube::Resource<DynamicType = ()>> {
    recent: HashMap<ObjectRef<C>, Arc<C>>,
    in_flight: HashMap<ObjectRef<C>, usize>,
}

impl<C: kube::Resource<DynamicType = ()>> Default for AppliedState<C> {
    fn default() -> Self {
        Self {
            recent: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }
}

impl<C: kube::Resource<DynamicType = ()>> Clone for Applied<C> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<C: kube::Resource<DynamicType = ()>> Default for Applied<C> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

/// Marks one apply of a child as in flight until dropped.
struct InFlight<C: kube::Resource<DynamicType = ()>> {
    applied: Applied<C>,
    key: ObjectRef<C>,
}

impl<C: kube::Resource<DynamicType = ()>> Drop for InFlight<C> {
    fn drop(&mut self) {
        let mut state = self.applied.lock();
        if let Some(n) = state.in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.in_flight.remove(&self.key);
            }
        }
    }
}

impl<C: kube::Resource<DynamicType = ()>> Applied<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, AppliedState<C>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self, key: &ObjectRef<C>) -> InFlight<C> {
        *self.lock().in_flight.entry(key.clone()).or_default() += 1;
        InFlight {
            applied: self.clone(),
            key: key.clone(),
        }
    }

    /// The newer of the cached child and the one this controller last applied.
    fn newest(&self, key: &ObjectRef<C>, cached: Option<Arc<C>>) -> Option<Arc<C>> {
        let version = |obj: &C| obj.meta().resource_version.as_deref()?.parse::<u64>().ok();
        let mut applied = self.lock();
        let Some(recent) = applied.recent.get(key).cloned() else {
            return cached;
        };
        match cached {
            Some(cached) if version(&cached) >= version(&recent) => {
                applied.recent.remove(key);
                Some(cached)
            }
            _ => Some(recent),
        }
    }

    fn record(&self, obj: C) {
        self.lock()
            .recent
            .insert(ObjectRef::from_obj(&obj), Arc::new(obj));
    }

    /// The change of a cached child from `old` (`None`: new to the cache) to `new` is
    /// this controller's own apply coming back: `new` is the state the last apply
    /// returned, or the child is new to the cache while an apply of it is in flight (its
    /// create, whose response has not been read yet).
    ///
    /// The watch calls it once the cache holds `new`, so it also drops the copy kept of
    /// the last apply when `new` is at least as recent (see [`Applied::caught_up`]).
    pub fn is_own_write(&self, old: Option<&C>, new: &C) -> bool {
        let key = ObjectRef::from_obj(new);
        let own = {
            let applied = self.lock();
            let returned = applied.recent.get(&key).is_some_and(|recent| {
                recent.meta().resource_version.is_some()
                    && recent.meta().resource_version == new.meta().resource_version
            });
            returned || (old.is_none() && applied.in_flight.contains_key(&key))
        };
        self.caught_up(new);
        own
    }

    /// The cache now holds `new`: the copy of the last apply is no longer needed once
    /// the cache is at least as recent. Without this, a child whose instance is not
    /// reconciled again would stay in memory twice.
    pub fn caught_up(&self, new: &C) {
        let version = |obj: &C| obj.meta().resource_version.as_deref()?.parse::<u64>().ok();
        let key = ObjectRef::from_obj(new);
        let mut applied = self.lock();
        if applied
            .recent
            .get(&key)
            .is_some_and(|recent| version(new) >= version(recent))
        {
            applied.recent.remove(&key);
        }
    }

    fn forget(&self, namespace: Option<&str>, name: &str) {
        self.lock()
            .recent
            .retain(|key, _| !(key.name == name && key.namespace.as_deref() == namespace));
    }
}

/// Whether a cached HelmRelease changing from `old` to `new` can change what a
/// reconcile of its instance does: the parts `child_up_to_date` compares (the spec, by
/// its generation, the labels and the owner references) and the reading the status plan
/// takes of its status. Flux's intermediate status writes ("Progressing") change none of
/// them, so they reconcile nothing.
pub fn release_change_matters(old: &HelmRelease, new: &HelmRelease) -> bool {
    old.metadata.generation != new.metadata.generation
        || old.metadata.labels != new.metadata.labels
        || old.metadata.owner_references != new.metadata.owner_references
        || vworkspace_reconcile::application_instance::read_release(old)
            != vworkspace_reconcile::application_instance::read_release(new)
}

/// The resourceVersion each instance's last status write returned.
pub type WrittenVersions = super::written::WrittenVersions<ApplicationInstance>;

/// Reconcile failures. Each has a stable category (metric label, condition reason and
/// Event reason); `Display` says what was being done, the source says why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying a child failed.
    #[error("applying {kind} {name}")]
    Apply {
        /// Kind of the child.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading a values source's metadata failed.
    #[error("checking whether {kind} {name} exists")]
    Lookup {
        /// Secret or ConfigMap.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing status failed.
    #[error("writing the status")]
    Status(#[source] kube::Error),
    /// Reading the instance failed.
    #[error("reading the instance")]
    Read(#[source] kube::Error),
    /// A child's name is taken by an object this instance did not create.
    #[error(
        "{kind} {namespace}/{name} already exists, {owner}, and was not created by this instance; \
         it is left untouched: rename the instance or remove that object"
    )]
    Conflict {
        /// Kind of the child.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// Its namespace.
        namespace: String,
        /// Who owns it, in words.
        owner: String,
    },
}

fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

impl ErrorCategory for Error {
    fn category(&self) -> &'static str {
        match self {
            Self::Apply { source, .. } => match api_code(source) {
                Some(403) => errors::APPLY_FORBIDDEN,
                Some(400 | 422) => errors::APPLY_REJECTED,
                _ => errors::APPLY_FAILED,
            },
            Self::Lookup { .. } => errors::LOOKUP_FAILED,
            Self::Status(_) => errors::STATUS_WRITE_FAILED,
            Self::Read(_) => errors::READ_FAILED,
            Self::Conflict { .. } => errors::CHILD_CONFLICT,
        }
    }

    /// The API server calling the child invalid, or another object holding its name, does
    /// not change by retrying; a new
    /// generation of the instance (or a new event) reconciles it again.
    fn is_terminal(&self) -> bool {
        matches!(
            self.category(),
            errors::APPLY_REJECTED | errors::CHILD_CONFLICT
        )
    }
}

/// The condition reason of the Warning Event on an instance the operator cannot decode.
pub const UNDECODABLE: &str = "Undecodable";

/// The primary watch's report of an instance it skipped because it cannot be decoded
/// (see `vworkspace_runtime::decode`): a `ReconcileFailed` Warning Event on it, and its
/// audit event, naming the cause. Its id depends on uid and generation only, so a
/// restart that meets the same object again publishes nothing twice.
pub fn undecodable_reporter(ctx: Arc<Context>) -> impl Fn(&KindName, &Undecodable) + Send + Sync {
    move |_, bad| {
        let ctx = Arc::clone(&ctx);
        let record = TransitionRecord {
            kind: events::RECONCILE_FAILED.to_owned(),
            condition: ai_conditions::FAILED.to_owned(),
            reason: UNDECODABLE.to_owned(),
            generation: bad.metadata.generation.unwrap_or_default(),
            occurrence: 1,
            event_type: EventType::Warning,
            message: format!(
                "the operator cannot read this object and leaves it alone until it is fixed: {}",
                bad.error
            ),
            at: Time(Timestamp::now()),
        };
        let obj = Decoded::<ApplicationInstance>(Err(bad.clone()));
        tokio::spawn(async move {
            let name = obj.name_any();
            ctx.publisher
                .publish(
                    &obj,
                    &record,
                    "Decode",
                    AuditContext {
                        application_instance: Some(&name),
                        operation_id: None,
                    },
                )
                .await;
        });
    }
}

/// Reconcile one ApplicationInstance.
pub async fn reconcile(
    event: Event<ApplicationInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let obj = match event {
        Event::Apply(obj) => obj,
        Event::Cleanup(key) => {
            // Deleted: the garbage collector removes the owned children.
            ctx.written.forget(&key);
            ctx.applied_releases
                .forget(key.namespace.as_deref(), &key.name);
            ctx.applied_repositories
                .forget(key.namespace.as_deref(), &key.name);
            return Ok(Action::Done);
        }
    };
    let span = tracing::info_span!("application_instance", application_instance = %obj.name_any());
    reconcile_instance(&obj, &ctx).instrument(span).await
}

/// The runtime's report path for this controller: [`report_error`] for each failed
/// reconcile.
pub fn reporter(
    ctx: Arc<Context>,
) -> impl Fn(Arc<ApplicationInstance>, ErrorReport) -> BoxFuture<'static, ()> + Send + Sync {
    move |obj, report| {
        let ctx = Arc::clone(&ctx);
        async move {
            let span =
                tracing::info_span!("application_instance", application_instance = %obj.name_any());
            report_error(
                &ctx,
                &obj,
                report.category,
                &report.message,
                report.terminal,
            )
            .instrument(span)
            .await;
        }
        .boxed()
    }
}

async fn reconcile_instance(cached: &ApplicationInstance, ctx: &Context) -> Result<Action, Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let api: Api<ApplicationInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    // Decide on the cache only when it holds our last write: an older status would make
    // the plan recompute (and re-send) what was already announced and written.
    let fresh;
    let obj = if ctx.written.is_current(cached) {
        cached
    } else {
        let Some(obj) = api.get_opt(&name).await.map_err(Error::Read)? else {
            return Ok(Action::Done);
        };
        fresh = obj;
        &fresh
    };
    tracing::info!(generation = obj.metadata.generation, "reconcile started");
    let now = Time(Timestamp::now());

    let managed = ctx.namespaces.get(&ObjectRef::new(&namespace)).is_some();
    let status_plan = match plan::validate(obj) {
        _ if !managed => plan::plan_status(obj, Observed::NamespaceNotManaged, &now),
        Err(why) => {
            tracing::warn!(reason = why.category(), "invalid spec: {why}");
            plan::plan_status(obj, Observed::Invalid(&why), &now)
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
                let (repository, release) = plan::desired_children(&spec);
                // The two applies are independent: one round-trip instead of two.
                let (_, live) = futures::try_join!(
                    ensure_child(
                        &ctx.client,
                        &ctx.repositories,
                        &ctx.applied_repositories,
                        &repository,
                    ),
                    ensure_child(&ctx.client, &ctx.releases, &ctx.applied_releases, &release),
                )?;
                plan::plan_status(
                    obj,
                    Observed::Applied {
                        spec: &spec,
                        release: &live,
                    },
                    &now,
                )
            } else {
                plan::plan_status(obj, Observed::MissingSources(&missing), &now)
            }
        }
    };
    publish_and_persist(ctx, &api, obj, &status_plan).await?;
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

/// Publish the plan's transitions, then persist the status that records them.
async fn publish_and_persist(
    ctx: &Context,
    api: &Api<ApplicationInstance>,
    obj: &ApplicationInstance,
    status_plan: &StatusPlan,
) -> Result<(), Error> {
    let name = obj.name_any();
    for record in &status_plan.transitions {
        ctx.publisher
            .publish(
                obj,
                record,
                "Reconcile",
                AuditContext {
                    application_instance: Some(&name),
                    operation_id: None,
                },
            )
            .await;
    }
    if status_plan.changed {
        let mut expected = obj.clone();
        expected.status = Some(status_plan.status.clone());
        let _in_flight = ctx.written.begin(&expected);
        let written = write_status(api, &name, status_plan).await?;
        ctx.written.record(&written);
    }
    Ok(())
}

async fn write_status(
    api: &Api<ApplicationInstance>,
    name: &str,
    status_plan: &StatusPlan,
) -> Result<ApplicationInstance, Error> {
    let body = json!({
        "apiVersion": vworkspace_api::API_VERSION,
        "kind": "ApplicationInstance",
        "status": status_plan.status,
    });
    let written = api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER_OPERATOR).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::Status)?;
    tracing::info!("status written");
    Ok(written)
}

/// Put a failed reconcile on the object: the error condition and its Warning Event. The
/// status is read fresh, so the transitions derive from what is persisted.
async fn report_error(
    ctx: &Context,
    cached: &ApplicationInstance,
    category: &'static str,
    message: &str,
    terminal: bool,
) {
    let api: Api<ApplicationInstance> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let obj = match api.get_opt(&cached.name_any()).await {
        Ok(Some(obj)) => obj,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the instance to report the error on it");
            return;
        }
    };
    let status_plan = plan::plan_error(&obj, category, message, terminal, &Time(Timestamp::now()));
    if let Err(err) = publish_and_persist(ctx, &api, &obj, &status_plan).await {
        tracing::warn!(error = %error_chain(&err), "cannot report the error on the instance");
    }
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

/// The live child: the cached one when it already holds `desired`, else what a
/// server-side apply of the typed child returns (kube-derive writes apiVersion and
/// kind; the desired child has no status).
///
/// Never adopts: the caches hold only labelled children, so a cache miss means "absent
/// or not ours". The first apply therefore carries a `metadata.resourceVersion` no live
/// object has: when the name is free the API server creates the child (a create ignores
/// the version, and the field ownership is server-side apply's as for any apply); when
/// it is taken the optimistic-concurrency check refuses the apply (409) with nothing
/// written. Only then is the object's metadata read, to tell our own child that the
/// cache has not seen yet (its owner reference names this instance: applied normally)
/// from somebody else's ([`Error::Conflict`]). Force is used only on children the
/// instance owns. The happy path costs the one apply it always did.
async fn ensure_child<C>(
    client: &Client,
    cache: &Store<C>,
    applied: &Applied<C>,
    desired: &C,
) -> Result<C, Error>
where
    C: Child + plan::Child,
{
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let key = ObjectRef::new(&name).within(&namespace);
    let owner_uid = controller_uid(desired.meta()).unwrap_or_default();
    let api: Api<C> = Api::namespaced(client.clone(), &namespace);
    let apply_error = |source| Error::Apply {
        kind: C::KIND,
        name: name.clone(),
        source,
    };
    let live = applied.newest(&key, cache.get(&key));
    if let Some(live) = &live {
        if !owned_by(live.meta(), owner_uid) {
            // Labelled like ours, but another object's (or nobody's).
            return Err(conflict::<C>(live.meta()));
        }
        if plan::child_up_to_date(desired, live.as_ref()) {
            return Ok(C::clone(live));
        }
    }
    let _in_flight = applied.begin(&key);
    let response = if live.is_some() {
        apply(&api, &name, desired, true)
            .await
            .map_err(apply_error)?
    } else {
        let mut guarded = desired.clone();
        guarded.meta_mut().resource_version = Some(CREATE_ONLY_VERSION.to_owned());
        match apply(&api, &name, &guarded, false).await {
            Ok(created) => created,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing =
                    api.get_metadata_opt(&name)
                        .await
                        .map_err(|source| Error::Apply {
                            kind: C::KIND,
                            name: name.clone(),
                            source,
                        })?;
                match existing {
                    // Ours; the cache has not caught up with it yet.
                    Some(meta) if owned_by(&meta.metadata, owner_uid) => {
                        apply(&api, &name, desired, true)
                            .await
                            .map_err(apply_error)?
                    }
                    Some(meta) => return Err(conflict::<C>(&meta.metadata)),
                    // Gone meanwhile: the next reconcile creates it.
                    None => return Err(apply_error(kube::Error::Api(status))),
                }
            }
            Err(err) => return Err(apply_error(err)),
        }
    };
    tracing::info!(kind = C::KIND, child = %name, "applied");
    let mut remembered = response.clone();
    remembered.managed_fields_mut().clear();
    applied.record(remembered);
    Ok(response)
}

/// The resourceVersion the first apply of a child carries: etcd's first revision, which
/// no HelmRelease or HelmRepository holds (they are written long after the cluster
/// started), so the apply creates or fails, and never changes an existing object.
/// Checked against the real API server by `tests/hardening.rs`.
const CREATE_ONLY_VERSION: &str = "1";

async fn apply<C: Child>(
    api: &Api<C>,
    name: &str,
    child: &C,
    force: bool,
) -> Result<C, kube::Error> {
    let mut params = PatchParams::apply(FIELD_MANAGER_OPERATOR);
    params.force = force;
    api.patch(name, &params, &Patch::Apply(child)).await
}

/// The uid of the controller owner reference.
fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Whether the object names the instance with `uid` as an owner.
fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty() && meta.owner_references.iter().flatten().any(|r| r.uid == uid)
}

/// The conflict with an object that holds a child's name.
fn conflict<C: Child>(meta: &ObjectMeta) -> Error {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next());
    let owner = match controller {
        Some(r) => format!("owned by {} {}", r.kind, r.name),
        None => "with no owner".to_owned(),
    };
    Error::Conflict {
        kind: C::KIND,
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        owner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(rv: &str) -> HelmRepository {
        let mut repo: HelmRepository = serde_json::from_value(serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmRepository",
            "metadata": { "name": "app", "namespace": "team" },
            "spec": { "url": "https://charts.example.com" }
        }))
        .unwrap();
        repo.metadata.resource_version = Some(rv.into());
        repo
    }

    #[test]
    fn the_copy_of_an_apply_goes_once_the_cache_is_as_recent() {
        let applied = Applied::<HelmRepository>::default();
        applied.record(repo("7"));
        let key = ObjectRef::from_obj(&repo("7"));

        // An older cached copy keeps the applied one.
        applied.caught_up(&repo("6"));
        let newest = applied.newest(&key, Some(Arc::new(repo("6"))));
        assert_eq!(
            newest.and_then(|r| r.metadata.resource_version.clone()),
            Some("7".into())
        );

        // The watch delivering our own write: recognised, and the copy is dropped.
        assert!(applied.is_own_write(Some(&repo("6")), &repo("7")));
        assert!(applied.lock().recent.is_empty(), "copy dropped");
        assert!(!applied.is_own_write(Some(&repo("7")), &repo("7")));

        // A newer version than the apply also lets it go.
        applied.record(repo("9"));
        applied.caught_up(&repo("12"));
        assert!(applied.lock().recent.is_empty());
    }
}
