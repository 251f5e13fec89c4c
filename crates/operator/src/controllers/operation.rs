//! The Operation controller: I/O around the pure state machine in
//! `vworkspace_reconcile::operation`.
//!
//! observe (the Operation from the cache when the cache holds our last status write;
//! otherwise nothing is decided until the watch brings that write, whose event then
//! reconciles it, or a GET after [`CACHE_WAIT`]; its namespace, target, peers, children
//! from label-selected shared caches merged with what our own applies returned) →
//! validate (pure) → plan (pure, [`machine::plan_through_acceptance`]: a Backup is
//! accepted and handed out by one plan) → carry out the one step → publish the plan's
//! transitions → persist the status (server-side apply, field manager
//! `vworkspace-operator`) → count the outcome.
//!
//! Invariants:
//! * the step comes first: a failed step writes nothing, and the unchanged inputs give the
//!   same plan on the retry; `status.childRef` is written only after the create it
//!   records succeeded, so a recorded child that is absent really was lost;
//! * "absent" is never decided from a cache that may lag behind our own create: every
//!   child an apply returned is kept ([`Applied`]) until the cache has caught up;
//! * a mutating Operation hands out work only on a view of the namespace's Operations at
//!   least as new as its own Accepted claim, so every claim persisted before it is seen:
//!   the cache, when the Operation was decided on the cache (its claim is in it, and one
//!   watch delivers every earlier change first), else a fresh LIST;
//! * a Backup accepted and handed out in one reconcile announces the acceptance before
//!   the create, as a reconcile of its own would; when the create fails, the acceptance
//!   alone ([`machine::Chained::claim`]) is recorded before the error is retried or
//!   reported (a crash in between announces it again, under the same id);
//! * a child outside the Operation's namespace (Velero's) exists only while the
//!   Operation carries [`FINALIZER`]: the finalizer is added before the first create, and
//!   removed only after every child labelled with the Operation's uid was deleted;
//! * `operation_total` is incremented once per Operation: on the plan that enters a
//!   terminal phase, and only after the status write recording it succeeded (a plan
//!   retried after a failed write counts once);
//! * the catalog is the built-in one, overridden by the catalog ConfigMap; a ConfigMap
//!   that does not parse keeps the built-in catalog in force and is reported (error log
//!   and Warning Event on the ConfigMap) once per resourceVersion;
//! * an Operation's first plan is made under a catalog at least as recent as the
//!   Operation ([`fresh_catalog`]), so a catalog change made before it was created
//!   always applies to it; `status.catalogRevision` says which catalog it was.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::conditions::errors;
use vworkspace_api::conditions::operation::reasons;
use vworkspace_api::labels::{self, FIELD_MANAGER_OPERATOR};
use vworkspace_api::operation::{
    ChildRef, FIELD_MANAGER_UPGRADE, FINALIZER, Operation, OperationPhase,
};
use vworkspace_api::thirdparty::flux::HelmRelease;
use vworkspace_api::thirdparty::{Backup, ReplicationSource, Restore, VolumeSnapshot, Workflow};
use vworkspace_api::transition::TransitionRecord;
use vworkspace_reconcile::catalog::{self, Catalog};
use vworkspace_reconcile::engines::{Child, Stop, snapshot};
use vworkspace_reconcile::operation::{
    self as machine, Children, NamespaceView, Peer, Plan, Step, TargetView, ValidOperation, World,
};
use vworkspace_runtime::{Action, ErrorCategory, Event, SharedWatch, SyncState};
use vworkspace_telemetry::metrics::OperationMetrics;

use crate::publisher::{AuditContext, Publisher, REPORTING_CONTROLLER};

/// Name of this controller (metric label, log field).
pub const NAME: &str = "operation";

/// How often the controller looks whether an engine's CRD appeared (cheap: it reads the
/// state of the optional watches, no request).
const ENGINE_POLL: Duration = Duration::from_secs(1);

/// The label-selected shared watches of every child kind (Velero's cluster-wide: its
/// children live in Velero's namespace).
#[derive(Clone)]
pub struct ChildWatches {
    /// velero.io Backups.
    pub backups: SharedWatch<Backup>,
    /// velero.io Restores.
    pub restores: SharedWatch<Restore>,
    /// Argo Workflows.
    pub workflows: SharedWatch<Workflow>,
    /// batch/v1 Jobs.
    pub jobs: SharedWatch<Job>,
    /// VolSync ReplicationSources.
    pub replication_sources: SharedWatch<ReplicationSource>,
    /// CSI VolumeSnapshots.
    pub snapshots: SharedWatch<VolumeSnapshot>,
}

impl ChildWatches {
    /// One watch per child kind, selected on the `operation-id` label; `namespace` limits
    /// the kinds that live beside the Operation (`--watch-namespace`).
    pub fn new(client: &Client, namespace: Option<&str>) -> Self {
        let ours = kube::runtime::watcher::Config::default().labels(labels::OPERATION_ID);
        let local = |c: &Client| match namespace {
            Some(ns) => (c.clone(), Some(ns.to_owned())),
            None => (c.clone(), None),
        };
        fn api<K>(c: (Client, Option<String>)) -> Api<K>
        where
            K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        {
            match c.1 {
                Some(ns) => Api::namespaced(c.0, &ns),
                None => Api::all(c.0),
            }
        }
        let recheck = Duration::from_secs(10);
        Self {
            backups: SharedWatch::optional(Api::all(client.clone()), ours.clone())
                .recheck_interval(recheck),
            restores: SharedWatch::optional(Api::all(client.clone()), ours.clone())
                .recheck_interval(recheck),
            workflows: SharedWatch::optional(api(local(client)), ours.clone())
                .recheck_interval(recheck),
            jobs: SharedWatch::new(api(local(client)), ours.clone()),
            replication_sources: SharedWatch::optional(api(local(client)), ours.clone())
                .recheck_interval(recheck),
            snapshots: SharedWatch::optional(api(local(client)), ours).recheck_interval(recheck),
        }
    }

    /// Whether the cluster serves `kind` (a child kind, or Flux's HelmRelease through
    /// `releases`): its watch is not `Missing`.
    fn serves(&self, kind: &str, releases: &SharedWatch<HelmRelease>) -> bool {
        let state = match kind {
            "Backup" => self.backups.state(),
            "Restore" => self.restores.state(),
            "Workflow" => self.workflows.state(),
            "Job" => self.jobs.state(),
            "ReplicationSource" => self.replication_sources.state(),
            "VolumeSnapshot" => self.snapshots.state(),
            "HelmRelease" => releases.state(),
            _ => SyncState::Missing,
        };
        state != SyncState::Missing
    }

    fn states(&self) -> [SyncState; 5] {
        [
            self.backups.state(),
            self.restores.state(),
            self.workflows.state(),
            self.replication_sources.state(),
            self.snapshots.state(),
        ]
    }
}

/// What the reconciler needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Transition publisher.
    pub publisher: Publisher,
    /// `operation_total`.
    pub metrics: OperationMetrics,
    /// The Operations (the controller's own cache).
    pub operations: Store<Operation>,
    /// Cached managed namespaces.
    pub namespaces: Store<Namespace>,
    /// Cached ApplicationInstances (the targets).
    pub instances: Store<ApplicationInstance>,
    /// The shared HelmRelease watch (the targets' releases; its state says whether Flux
    /// is installed).
    pub releases: SharedWatch<HelmRelease>,
    /// The children's watches.
    pub children: ChildWatches,
    /// The catalog ConfigMap's cache (one object at most).
    pub catalog_config: Store<ConfigMap>,
    /// The namespace of the catalog ConfigMap (the operator's own).
    pub catalog_namespace: String,
    /// The catalog in force, and the resourceVersions already reported as invalid.
    pub catalog: CatalogState,
    /// The resourceVersions of the controller's own status writes.
    pub written: WrittenVersions<Operation>,
    /// Children just applied, until the caches caught up.
    pub applied: AppliedChildren,
    /// Keys to reconcile again (peers of an Operation that changed phase).
    pub requeue: mpsc::UnboundedSender<ObjectRef<Operation>>,
}

/// The catalog in force, rebuilt when the ConfigMap's resourceVersion changes.
#[derive(Default)]
pub struct CatalogState(Mutex<CatalogInner>);

#[derive(Default)]
struct CatalogInner {
    /// resourceVersion of the ConfigMap it was built from (`None`: no ConfigMap).
    version: Option<String>,
    /// Built from a fresh read rather than the cache: kept while the cache lags behind it.
    fetched: bool,
    /// The API server's resourceVersion of the latest fresh read: the catalog in force
    /// holds every ConfigMap change up to it.
    fresh_as_of: u64,
    catalog: Option<Arc<Catalog>>,
    reported: HashSet<String>,
}

/// A resourceVersion as a number (etcd revision); `None` or not a number counts as 0.
fn revision_number(version: Option<&String>) -> u64 {
    version.and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub use super::written::WrittenVersions;
use super::written::version_of;

/// The children this controller applied, by (kind, namespace, name), until the cache
/// holds a resourceVersion at least as new. Without it a reconcile right after a create
/// could find the child missing in the cache and fail the Operation for lost work.
#[derive(Clone, Default)]
pub struct AppliedChildren(Arc<Mutex<HashMap<ChildKey, Child>>>);

/// (kind, namespace, name).
type ChildKey = (&'static str, String, String);

fn child_meta(child: &Child) -> &ObjectMeta {
    match child {
        Child::Backup(o) => &o.metadata,
        Child::Restore(o) => &o.metadata,
        Child::Workflow(o) => &o.metadata,
        Child::Job(o) => &o.metadata,
        Child::ReplicationSource(o) => &o.metadata,
        Child::VolumeSnapshot(o) => &o.metadata,
    }
}

fn child_kind(child: &Child) -> &'static str {
    match child {
        Child::Backup(_) => "Backup",
        Child::Restore(_) => "Restore",
        Child::Workflow(_) => "Workflow",
        Child::Job(_) => "Job",
        Child::ReplicationSource(_) => "ReplicationSource",
        Child::VolumeSnapshot(_) => "VolumeSnapshot",
    }
}

impl AppliedChildren {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChildKey, Child>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, child: Child) {
        let meta = child_meta(&child);
        let key = (
            child_kind(&child),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        self.lock().insert(key, child);
    }

    /// `cached` (the Operation's objects of one kind from the cache) with every applied
    /// object of that kind and uid that the cache does not hold yet, or holds older.
    fn merge<K: Resource<DynamicType = ()> + Clone>(
        &self,
        kind: &'static str,
        uid: &str,
        mut cached: Vec<K>,
        pick: fn(&Child) -> Option<&K>,
    ) -> Vec<K> {
        let mut applied = self.lock();
        applied.retain(|key, child| {
            if key.0 != kind {
                return true;
            }
            let Some(obj) = pick(child) else {
                return true;
            };
            if obj.labels().get(labels::OPERATION_ID).map(String::as_str) != Some(uid) {
                return true;
            }
            let same = |c: &K| {
                c.meta().name == obj.meta().name && c.meta().namespace == obj.meta().namespace
            };
            match cached.iter().position(same) {
                Some(i) if version_of(&cached[i]) >= version_of(obj) => false,
                Some(i) => {
                    cached[i] = obj.clone();
                    true
                }
                None => {
                    cached.push(obj.clone());
                    true
                }
            }
        });
        cached
    }

    fn forget_uid(&self, uid: &str) {
        self.lock().retain(|_, child| {
            child_meta(child)
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::OPERATION_ID))
                .map(String::as_str)
                != Some(uid)
        });
    }
}

/// Reconcile failures. Each has a stable category (metric label, log field); `Display`
/// says what was being done, the source says why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating a child (or setting the target's chart version) failed.
    #[error("applying {kind} {name}")]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Stopping or deleting a child failed.
    #[error("deleting or stopping {kind} {name}")]
    Delete {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("updating the finalizer")]
    Finalizer(#[source] kube::Error),
    /// Writing status failed.
    #[error("writing the status")]
    Status(#[source] kube::Error),
    /// Reading the Operation, its peers or the target's PVCs failed.
    #[error("reading {0}")]
    Read(&'static str, #[source] kube::Error),
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
            Self::Delete { .. } | Self::Finalizer(_) => errors::APPLY_FAILED,
            Self::Status(_) => errors::STATUS_WRITE_FAILED,
            Self::Read(..) => errors::READ_FAILED,
        }
    }
}

/// The keys of the Operations `f` selects from the cache.
pub fn operations_where(
    store: &Store<Operation>,
    f: impl Fn(&Operation) -> bool,
) -> Vec<ObjectRef<Operation>> {
    store
        .state()
        .iter()
        .filter(|op| f(op))
        .map(|op| ObjectRef::from_obj(op.as_ref()))
        .collect()
}

/// The Operation a child belongs to: its controller owner, or (outside the Operation's
/// namespace, where no owner reference can point) the Operation with the uid of its
/// `operation-id` label.
pub fn owner_of<C: Resource>(store: &Store<Operation>, child: &C) -> Option<ObjectRef<Operation>> {
    let uid = child.meta().labels.as_ref()?.get(labels::OPERATION_ID)?;
    store
        .state()
        .iter()
        .find(|op| op.metadata.uid.as_deref() == Some(uid.as_str()))
        .map(|op| ObjectRef::from_obj(op.as_ref()))
}

/// A watch mapper: [`owner_of`] over `store`.
pub fn owner_mapper<C: Resource>(
    store: &Store<Operation>,
) -> impl Fn(&C) -> Option<ObjectRef<Operation>> + Send + Sync + 'static {
    let store = store.clone();
    move |child: &C| owner_of(&store, child)
}

/// Keys of the Operations blocked for a missing engine, each time an optional child
/// watch leaves `Missing` (its CRD appeared): their engine may be installed now.
pub fn engine_appeared(
    watches: ChildWatches,
    store: Store<Operation>,
) -> impl futures::Stream<Item = ObjectRef<Operation>> + Send + 'static {
    let ticks = tokio_interval(ENGINE_POLL);
    let mut last = watches.states();
    ticks
        .map(move |()| {
            let now = watches.states();
            let appeared = last
                .iter()
                .zip(now.iter())
                .any(|(before, after)| *before == SyncState::Missing && *after != *before);
            last = now;
            if appeared {
                operations_where(&store, |op| {
                    op.status.as_ref().and_then(|s| s.reason.as_deref())
                        == Some(reasons::ENGINE_NOT_INSTALLED)
                })
            } else {
                Vec::new()
            }
        })
        .flat_map(futures::stream::iter)
}

fn tokio_interval(period: Duration) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(tokio::time::interval(period), |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}

/// The requeue channel's receiving side as a trigger stream.
pub fn requeue_channel() -> (
    mpsc::UnboundedSender<ObjectRef<Operation>>,
    mpsc::UnboundedReceiver<ObjectRef<Operation>>,
) {
    mpsc::unbounded()
}

/// Reconcile one Operation.
pub async fn reconcile(event: Event<Operation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let obj = match event {
        Event::Apply(obj) => obj,
        Event::Cleanup(key) => {
            ctx.written.forget(&key);
            // A deleted Operation may have held its instance: let the others look again.
            if let Some(ns) = key.namespace.as_deref() {
                for peer in operations_where(&ctx.operations, |op| {
                    op.metadata.namespace.as_deref() == Some(ns) && !is_terminal(op)
                }) {
                    let _ = ctx.requeue.unbounded_send(peer);
                }
            }
            return Ok(Action::Done);
        }
    };
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let span = tracing::info_span!("operation", operation_id = %uid, operation = %obj.name_any());
    reconcile_operation(&obj, &ctx).instrument(span).await
}

fn is_terminal(op: &Operation) -> bool {
    op.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(OperationPhase::is_terminal)
}

async fn reconcile_operation(cached: &Operation, ctx: &Context) -> Result<Action, Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let api: Api<Operation> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = match current_object(ctx, &api, cached).await? {
        Look::Decide(current) => current,
        // The write's watch event reconciles it; this is the bound.
        Look::Wait(left) => return Ok(Action::RequeueAfter(left)),
        Look::Gone => return Ok(Action::Done),
    };
    let obj = current.object();
    let now = Time(Timestamp::now());
    let prev = obj.status.clone().unwrap_or_default();
    let first_look = prev.catalog_revision.is_none()
        && !is_terminal(obj)
        && obj.metadata.deletion_timestamp.is_none();
    let catalog = if first_look {
        fresh_catalog(ctx, obj).await?
    } else {
        current_catalog(ctx).await
    };
    let valid = match machine::validate(obj, &catalog) {
        Ok(valid) => valid,
        Err(invalid) => {
            tracing::warn!(reason = invalid.reason(), "invalid Operation: {invalid}");
            let plan = machine::plan_invalid(obj, &invalid, &catalog, &now);
            if plan.step == Step::DeleteChildren {
                remove_finalizer(&api, obj).await?;
                return Ok(Action::Done);
            }
            let typed = None;
            persist(ctx, &api, obj, &plan, typed).await?;
            return Ok(Action::Done);
        }
    };
    tracing::debug!(phase = ?prev.phase, "reconcile started");

    let mut world = observe(ctx, &valid, &prev, now.clone()).await?;
    let mut chained = machine::plan_through_acceptance(&valid, &prev, &world);
    if valid.mutates()
        && !current.is_cached()
        && matches!(
            chained.plan.step,
            Step::CreateChildren(_) | Step::PatchTarget { .. }
        )
    {
        // About to hand out work on an Operation read fresh: the cache may lack claims
        // that peers persisted before ours, so decide on a fresh list of them. (Decided on
        // the cache, our own Accepted claim is in it, and with it every earlier write of
        // the namespace's Operations: one watch delivers them in order.)
        world.peers = list_peers(&ctx.client, &namespace).await?;
        chained = machine::plan_through_acceptance(&valid, &prev, &world);
    }
    let machine::Chained { mut plan, claim } = chained;
    // Accepted and handed out in one reconcile: the acceptance is announced first, as it
    // would be by a reconcile of its own ("child creation imminent"); a crash before the
    // status write announces it again under the same id.
    let announced = match &claim {
        Some(claim) => {
            publish(ctx, obj, &claim.transitions).await;
            claim.transitions.len()
        }
        None => 0,
    };

    let action = match carry_out(ctx, &api, obj, &valid, &prev, &plan.step).await {
        Ok(action) => action,
        Err(err)
            if err.category() == errors::APPLY_REJECTED
                || err.category() == errors::APPLY_FORBIDDEN =>
        {
            // The API server refused the child for good: the spec is immutable, so
            // retrying cannot help.
            let message = match &err {
                Error::Apply { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            tracing::error!(error = %message, "the child was rejected");
            plan = match &claim {
                // Accepted and refused in one reconcile: the failure follows the
                // acceptance, as it would have in a reconcile of its own.
                Some(claim) => {
                    let mut failed =
                        machine::plan_child_create_failed(&valid, &claim.status, &message, &now);
                    let mut transitions = claim.transitions.clone();
                    transitions.append(&mut failed.transitions);
                    failed.transitions = transitions;
                    failed.changed = failed.status != prev;
                    failed
                }
                None => machine::plan_child_create_failed(&valid, &prev, &message, &now),
            };
            Action::Done
        }
        Err(err) => {
            if let Some(claim) = &claim {
                // The hand-out failed (it is retried): the acceptance announced above is
                // recorded, as if it had been a reconcile of its own.
                if let Err(write_err) =
                    persist_after(ctx, &api, obj, claim, Some(&valid), announced).await
                {
                    tracing::warn!(error = %write_err, "cannot record the acceptance");
                }
            }
            return Err(err);
        }
    };
    if plan.step == Step::DeleteChildren {
        return Ok(Action::Done);
    }
    persist_after(ctx, &api, obj, &plan, Some(&valid), announced).await?;
    Ok(action)
}

/// How long a reconcile that found the cached Operation older than our own last status
/// write waits for the watch to bring that write before it reads the Operation instead.
/// The write's watch event reconciles it as soon as it arrives (normally milliseconds);
/// this bound only matters when the watch is slow or down.
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// The Operation a reconcile decides on.
enum Current<'a> {
    /// The cached copy, which holds our last status write (the worker's, or the store's
    /// newer one).
    Cached(&'a Operation),
    /// The store's copy, newer than the worker's.
    Store(Arc<Operation>),
    /// Read fresh from the API server.
    Fresh(Box<Operation>),
}

impl Current<'_> {
    fn object(&self) -> &Operation {
        match self {
            Current::Cached(obj) => obj,
            Current::Store(obj) => obj,
            Current::Fresh(obj) => obj,
        }
    }

    /// Decided on the controller's cache: every write of the Operations' watch up to
    /// this object's resourceVersion is in the cache too.
    fn is_cached(&self) -> bool {
        !matches!(self, Current::Fresh(_))
    }
}

/// What [`current_object`] found.
enum Look<'a> {
    /// Decide on this copy.
    Decide(Current<'a>),
    /// Decide nothing yet: the watch has not brought our last write; look again at the
    /// latest after this long.
    Wait(Duration),
    /// The Operation no longer exists.
    Gone,
}

/// A copy of the Operation at least as new as our last status write of it, so that a
/// plan never recomputes what was already announced and written: the cached one when it
/// is; otherwise nothing while the watch has not brought the write yet (the write's watch
/// event then reconciles it again, see [`WrittenVersions::await_cache`]), and a GET once
/// that took longer than [`CACHE_WAIT`].
async fn current_object<'a>(
    ctx: &Context,
    api: &Api<Operation>,
    cached: &'a Operation,
) -> Result<Look<'a>, Error> {
    let key = ObjectRef::from_obj(cached);
    if ctx.written.is_current(cached) {
        ctx.written.caught_up(&key);
        return Ok(Look::Decide(Current::Cached(cached)));
    }
    let waited = ctx.written.await_cache(cached);
    // The watch may have brought the write since the worker took its copy (the mark
    // above is set first, so an event applied after this read is not ignored).
    if let Some(stored) = ctx.operations.get(&key)
        && ctx.written.is_current(&stored)
    {
        ctx.written.caught_up(&key);
        return Ok(Look::Decide(Current::Store(stored)));
    }
    if waited < CACHE_WAIT {
        tracing::debug!(
            waited_ms = waited.as_millis(),
            "the cache lacks our last status write; waiting for the watch"
        );
        return Ok(Look::Wait(CACHE_WAIT - waited));
    }
    let fresh = api
        .get_opt(&cached.name_any())
        .await
        .map_err(|e| Error::Read("the Operation", e))?;
    ctx.written.caught_up(&key);
    Ok(fresh.map_or(Look::Gone, |obj| {
        Look::Decide(Current::Fresh(Box::new(obj)))
    }))
}

/// Publish the plan's transitions, persist its status, and count its outcome once the
/// status recording it was written.
async fn persist(
    ctx: &Context,
    api: &Api<Operation>,
    obj: &Operation,
    plan: &Plan,
    valid: Option<&ValidOperation>,
) -> Result<(), Error> {
    persist_after(ctx, api, obj, plan, valid, 0).await
}

/// Publish `records` (Event and audit event each).
async fn publish(ctx: &Context, obj: &Operation, records: &[TransitionRecord]) {
    for record in records {
        ctx.publisher
            .publish(
                obj,
                record,
                "Operation",
                AuditContext {
                    application_instance: Some(&obj.spec.application_instance),
                    operation_id: obj.metadata.uid.as_deref(),
                },
            )
            .await;
    }
}

/// [`persist`], when the first `announced` of the plan's transitions were published
/// already.
async fn persist_after(
    ctx: &Context,
    api: &Api<Operation>,
    obj: &Operation,
    plan: &Plan,
    valid: Option<&ValidOperation>,
    announced: usize,
) -> Result<(), Error> {
    publish(
        ctx,
        obj,
        plan.transitions.get(announced..).unwrap_or_default(),
    )
    .await;
    if !plan.changed {
        return Ok(());
    }
    let body = json!({
        "apiVersion": vworkspace_api::API_VERSION,
        "kind": "Operation",
        "status": plan.status,
    });
    let mut expected = obj.clone();
    expected.status = Some(plan.status.clone());
    let in_flight = ctx.written.begin(&expected);
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER_OPERATOR).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::Status)?;
    ctx.written.record(&written);
    drop(in_flight);
    tracing::info!(phase = ?plan.status.phase, reason = ?plan.status.reason, "status written");
    if let Some(outcome) = plan.outcome {
        let engine = valid.map_or_else(
            || {
                catalog::builtin()
                    .get(&obj.spec.template)
                    .map(|t| t.engine())
            },
            |v| Some(v.engine()),
        );
        record_outcome(&ctx.metrics, obj, engine, outcome);
    }
    let phase_changed = plan.status.phase != obj.status.as_ref().and_then(|s| s.phase);
    if phase_changed {
        // The mutating rule reads the phases of the other Operations on the instance:
        // give them a look at this one's new phase without waiting for their recheck.
        let ns = obj.metadata.namespace.clone();
        let me = obj.metadata.uid.clone();
        for peer in operations_where(&ctx.operations, |op| {
            op.metadata.namespace == ns
                && op.metadata.uid != me
                && op.spec.application_instance == obj.spec.application_instance
                && !is_terminal(op)
        }) {
            let _ = ctx.requeue.unbounded_send(peer);
        }
    }
    Ok(())
}

fn record_outcome(
    metrics: &OperationMetrics,
    obj: &Operation,
    engine: Option<vworkspace_api::operation::Engine>,
    outcome: machine::Outcome,
) {
    let Some(engine) = engine else {
        // A template that is not in the catalog has no engine label to count under.
        return;
    };
    let labels = (
        obj.spec.type_.as_str().parse(),
        engine.as_str().parse(),
        outcome.as_str().parse(),
    );
    match labels {
        (Ok(t), Ok(e), Ok(o)) => metrics.record_operation(t, e, o),
        _ => tracing::error!("operation_total has no series for this type, engine or outcome"),
    }
}

/// Everything outside the Operation the plan reads.
async fn observe(
    ctx: &Context,
    op: &ValidOperation,
    prev: &vworkspace_api::operation::OperationStatus,
    now: Time,
) -> Result<World, Error> {
    let ns = &op.identity.namespace;
    let namespace = ctx
        .namespaces
        .get(&ObjectRef::new(ns))
        .map(|n| NamespaceView::of(&n))
        .unwrap_or_default();
    let engine_installed = op
        .required_kinds()
        .iter()
        .all(|gvk| ctx.children.serves(&gvk.kind, &ctx.releases));
    let target = ctx
        .instances
        .get(&ObjectRef::new(&op.target).within(ns))
        .map(|instance| {
            let release_name = instance
                .status
                .as_ref()
                .and_then(|s| s.helm_release.as_ref())
                .and_then(|h| h.name.clone())
                .unwrap_or_else(|| op.target.clone());
            let release = ctx
                .releases
                .store()
                .get(&ObjectRef::new(&release_name).within(ns));
            TargetView::of(&instance, release.as_deref())
        });
    let peers = ctx
        .operations
        .state()
        .iter()
        .filter(|o| o.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter_map(|o| Peer::of(o))
        .collect();
    let source = op.source_operation().and_then(|name| {
        ctx.operations
            .get(&ObjectRef::new(name).within(ns))
            .and_then(|o| Peer::of(&o))
    });
    let started = prev.child_ref.is_some() || prev.upgrade.is_some();
    let pvcs = match (&op.params, &target) {
        (machine::EngineParams::Snapshot(_), Some(t)) if !started => {
            let selector = format!("{}={}", snapshot::INSTANCE_LABEL, t.release_name);
            Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| Error::Read("the target's PersistentVolumeClaims", e))?
                .items
                .into_iter()
                .filter_map(|m| m.metadata.name)
                .collect()
        }
        _ => Vec::new(),
    };
    let mut children = children_of(ctx, op);
    children.velero_volume_bytes = backup_volume_bytes(&ctx.client, &children).await?;
    Ok(World {
        now,
        namespace,
        engine_installed,
        target,
        peers,
        source,
        pvcs,
        children,
    })
}

/// The bytes Velero moved for the Operation's Backup, once it ended in a phase that
/// reports them: one LIST of its PodVolumeBackups (by Velero's backup-uid label), on the
/// reconcile that records the outcome. `None` while the Backup runs, when it copied no
/// pod volume, or when the cluster does not serve PodVolumeBackups.
async fn backup_volume_bytes(client: &Client, children: &Children) -> Result<Option<u64>, Error> {
    use vworkspace_api::thirdparty::velero::{BACKUP_UID_LABEL, PodVolumeBackup};
    use vworkspace_reconcile::engines::velero;
    let Some(backup) = children
        .backups
        .iter()
        .find(|b| velero::wants_volume_bytes(b))
    else {
        return Ok(None);
    };
    let Some(uid) = backup.uid() else {
        return Ok(None);
    };
    let ns = backup.namespace().unwrap_or_default();
    let selector = format!("{BACKUP_UID_LABEL}={uid}");
    match Api::<PodVolumeBackup>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => Ok(velero::volume_bytes(&list.items)),
        Err(e) if api_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(Error::Read("the Backup's PodVolumeBackups", e)),
    }
}

async fn list_peers(client: &Client, ns: &str) -> Result<Vec<Peer>, Error> {
    let list = Api::<Operation>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Read("the namespace's Operations", e))?;
    Ok(list.items.iter().filter_map(Peer::of).collect())
}

/// The Operation's children: the cached objects with its uid label in its namespace and
/// in Velero's, with whatever our own applies returned that the caches lack.
fn children_of(ctx: &Context, op: &ValidOperation) -> Children {
    let uid = op.identity.uid.as_str();
    let mut namespaces = vec![op.identity.namespace.clone()];
    if let Some(foreign) = op.foreign_namespace() {
        namespaces.push(foreign.to_owned());
    }
    fn of<K: Resource<DynamicType = ()> + Clone>(
        store: &Store<K>,
        uid: &str,
        namespaces: &[String],
    ) -> Vec<K> {
        store
            .state()
            .iter()
            .filter(|o| {
                o.labels().get(labels::OPERATION_ID).map(String::as_str) == Some(uid)
                    && o.meta()
                        .namespace
                        .as_ref()
                        .is_some_and(|n| namespaces.contains(n))
            })
            .map(|o| K::clone(o))
            .collect()
    }
    let w = &ctx.children;
    let a = &ctx.applied;
    Children {
        backups: a.merge(
            "Backup",
            uid,
            of(&w.backups.store(), uid, &namespaces),
            |c| match c {
                Child::Backup(o) => Some(o),
                _ => None,
            },
        ),
        restores: a.merge(
            "Restore",
            uid,
            of(&w.restores.store(), uid, &namespaces),
            |c| match c {
                Child::Restore(o) => Some(o),
                _ => None,
            },
        ),
        workflows: a.merge(
            "Workflow",
            uid,
            of(&w.workflows.store(), uid, &namespaces),
            |c| match c {
                Child::Workflow(o) => Some(o),
                _ => None,
            },
        ),
        jobs: a.merge(
            "Job",
            uid,
            of(&w.jobs.store(), uid, &namespaces),
            |c| match c {
                Child::Job(o) => Some(o),
                _ => None,
            },
        ),
        replication_sources: a.merge(
            "ReplicationSource",
            uid,
            of(&w.replication_sources.store(), uid, &namespaces),
            |c| match c {
                Child::ReplicationSource(o) => Some(o),
                _ => None,
            },
        ),
        snapshots: a.merge(
            "VolumeSnapshot",
            uid,
            of(&w.snapshots.store(), uid, &namespaces),
            |c| match c {
                Child::VolumeSnapshot(o) => Some(o),
                _ => None,
            },
        ),
        velero_volume_bytes: None,
    }
}

/// Carry out the plan's one step.
async fn carry_out(
    ctx: &Context,
    api: &Api<Operation>,
    obj: &Operation,
    op: &ValidOperation,
    prev: &vworkspace_api::operation::OperationStatus,
    step: &Step,
) -> Result<Action, Error> {
    match step {
        Step::CreateChildren(children) => {
            if op.needs_finalizer() {
                add_finalizer(api, obj).await?;
            }
            for child in children {
                apply_child(ctx, child).await?;
            }
            // The children's watch events bring the engine's progress.
            Ok(Action::RequeueAfter(machine::RUNNING_RECHECK))
        }
        Step::PatchTarget {
            namespace,
            name,
            chart_version,
        } => {
            let body = json!({
                "apiVersion": vworkspace_api::API_VERSION,
                "kind": "ApplicationInstance",
                "metadata": { "name": name, "namespace": namespace },
                "spec": { "chart": { "version": chart_version } },
            });
            Api::<ApplicationInstance>::namespaced(ctx.client.clone(), namespace)
                .patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER_UPGRADE).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map_err(|source| Error::Apply {
                    kind: "ApplicationInstance",
                    name: name.clone(),
                    source,
                })?;
            tracing::info!(application_instance = %name, chart_version = %chart_version, "chart version set");
            Ok(Action::RequeueAfter(machine::RUNNING_RECHECK))
        }
        Step::StopChild(stop) => {
            stop_child(&ctx.client, stop).await?;
            Ok(Action::Done)
        }
        Step::DeleteChildren => {
            let _ = prev;
            if obj.finalizers().iter().any(|f| f == FINALIZER) {
                delete_children(ctx, op).await?;
                remove_finalizer(api, obj).await?;
            }
            ctx.applied.forget_uid(&op.identity.uid);
            Ok(Action::Done)
        }
        Step::Wait { requeue_after } => Ok(match requeue_after {
            Some(d) if d.is_zero() => Action::Requeue,
            Some(d) => Action::RequeueAfter(*d),
            None => Action::Done,
        }),
        Step::Done => Ok(Action::Done),
    }
}

async fn add_finalizer(api: &Api<Operation>, obj: &Operation) -> Result<(), Error> {
    if obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    // The resourceVersion makes it a compare-and-swap: a concurrent change of the list
    // fails this write (409) and the retry reads it again.
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": obj.resource_version(),
        }
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::Finalizer)?;
    tracing::info!(finalizer = FINALIZER, "finalizer added");
    Ok(())
}

async fn remove_finalizer(api: &Api<Operation>, obj: &Operation) -> Result<(), Error> {
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let finalizers: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": obj.resource_version(),
        }
    });
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if api_code(&e) == Some(404) => {}
        Err(e) => return Err(Error::Finalizer(e)),
    }
    tracing::info!(finalizer = FINALIZER, "finalizer removed");
    Ok(())
}

async fn apply_child(ctx: &Context, child: &Child) -> Result<(), Error> {
    async fn apply<K>(client: &Client, obj: &K) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let name = obj.name_any();
        let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
        let mut live = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER_OPERATOR).force(),
                &Patch::Apply(obj),
            )
            .await
            .map_err(|source| Error::Apply {
                kind: kind_name::<K>(),
                name: name.clone(),
                source,
            })?;
        live.meta_mut().managed_fields = None;
        tracing::info!(kind = %K::kind(&()), child = %name, namespace = ?obj.namespace(), "child created");
        Ok(live)
    }
    let c = &ctx.client;
    let live = match child {
        Child::Backup(o) => Child::Backup(apply(c, o).await?),
        Child::Restore(o) => Child::Restore(apply(c, o).await?),
        Child::Workflow(o) => Child::Workflow(apply(c, o).await?),
        Child::Job(o) => Child::Job(apply(c, o).await?),
        Child::ReplicationSource(o) => Child::ReplicationSource(apply(c, o).await?),
        Child::VolumeSnapshot(o) => Child::VolumeSnapshot(apply(c, o).await?),
    };
    ctx.applied.record(live);
    Ok(())
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Backup" => "Backup",
        "Restore" => "Restore",
        "Workflow" => "Workflow",
        "Job" => "Job",
        "ReplicationSource" => "ReplicationSource",
        "VolumeSnapshot" => "VolumeSnapshot",
        _ => "child",
    }
}

async fn stop_child(client: &Client, stop: &Stop) -> Result<(), Error> {
    match stop {
        Stop::Delete(refs) => {
            for r in refs {
                delete_ref(client, r).await?;
            }
            Ok(())
        }
        Stop::TerminateWorkflow(r) => {
            let ns = r.namespace.clone().unwrap_or_default();
            let patch = json!({ "spec": { "shutdown": "Terminate" } });
            match Api::<Workflow>::namespaced(client.clone(), &ns)
                .patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if api_code(&e) == Some(404) => {}
                Err(source) => {
                    return Err(Error::Delete {
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                        source,
                    });
                }
            }
            tracing::info!(kind = "Workflow", child = %r.name, "workflow shutdown: Terminate");
            Ok(())
        }
    }
}

async fn delete_ref(client: &Client, r: &ChildRef) -> Result<(), Error> {
    let ns = r.namespace.clone().unwrap_or_default();
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    async fn del<K>(client: &Client, ns: &str, name: &str, dp: &DeleteParams) -> kube::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(client.clone(), ns)
            .delete(name, dp)
            .await
            .map(|_| ())
    }
    let result = match r.kind.as_str() {
        "Backup" => del::<Backup>(client, &ns, &r.name, &dp).await,
        "Restore" => del::<Restore>(client, &ns, &r.name, &dp).await,
        "Workflow" => del::<Workflow>(client, &ns, &r.name, &dp).await,
        "Job" => del::<Job>(client, &ns, &r.name, &dp).await,
        "ReplicationSource" => del::<ReplicationSource>(client, &ns, &r.name, &dp).await,
        "VolumeSnapshot" => del::<VolumeSnapshot>(client, &ns, &r.name, &dp).await,
        _ => Ok(()),
    };
    match result {
        Ok(()) => {
            tracing::info!(kind = %r.kind, child = %r.name, namespace = %ns, "child deleted");
            Ok(())
        }
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: r.kind.clone(),
            name: r.name.clone(),
            source,
        }),
    }
}

/// Delete every object of the engine's kinds labelled with the Operation's uid, in its
/// namespace and in Velero's.
async fn delete_children(ctx: &Context, op: &ValidOperation) -> Result<(), Error> {
    let selector = format!("{}={}", labels::OPERATION_ID, op.identity.uid);
    let mut namespaces = vec![op.identity.namespace.clone()];
    if let Some(foreign) = op.foreign_namespace() {
        namespaces.push(foreign.to_owned());
    }
    let lp = ListParams::default().labels(&selector);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    async fn del_all<K>(
        client: &Client,
        ns: &str,
        lp: &ListParams,
        dp: &DeleteParams,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        match Api::<K>::namespaced(client.clone(), ns)
            .delete_collection(dp, lp)
            .await
        {
            Ok(_) => {
                tracing::info!(kind = %K::kind(&()), namespace = %ns, "children deleted");
                Ok(())
            }
            // The kind is not served (its CRD is gone): nothing of it to delete.
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(source) => Err(Error::Delete {
                kind: K::kind(&()).into_owned(),
                name: lp.label_selector.clone().unwrap_or_default(),
                source,
            }),
        }
    }
    let c = &ctx.client;
    for ns in &namespaces {
        match op.engine() {
            vworkspace_api::operation::Engine::Velero => {
                del_all::<Backup>(c, ns, &lp, &dp).await?;
                del_all::<Restore>(c, ns, &lp, &dp).await?;
            }
            vworkspace_api::operation::Engine::Workflow => {
                del_all::<Workflow>(c, ns, &lp, &dp).await?;
            }
            vworkspace_api::operation::Engine::Job
            | vworkspace_api::operation::Engine::HelmHookJob => {
                del_all::<Job>(c, ns, &lp, &dp).await?;
            }
            vworkspace_api::operation::Engine::Volsync => {
                del_all::<ReplicationSource>(c, ns, &lp, &dp).await?;
            }
            vworkspace_api::operation::Engine::Snapshot => {
                del_all::<VolumeSnapshot>(c, ns, &lp, &dp).await?;
            }
            vworkspace_api::operation::Engine::Helm => {}
        }
    }
    Ok(())
}

/// The catalog in force: the built-in one with the ConfigMap's overrides, rebuilt when
/// the ConfigMap's resourceVersion changes. An invalid ConfigMap keeps the built-in
/// catalog and is reported once per resourceVersion. A catalog read fresh
/// ([`fresh_catalog`]) stays in force while the cache holds an older ConfigMap.
async fn current_catalog(ctx: &Context) -> Arc<Catalog> {
    let config = ctx
        .catalog_config
        .state()
        .into_iter()
        .find(|cm| cm.metadata.name.as_deref() == Some(catalog::CONFIGMAP_NAME));
    install_catalog(ctx, config, false).await
}

/// A catalog that holds every ConfigMap change made before `op` was created (`op` has
/// never been looked at, so its resourceVersion is at most one of a metadata change
/// after its creation). When the latest fresh read is at least that recent, the catalog
/// in force is; otherwise a LIST of the ConfigMap (a quorum read, whose resourceVersion
/// says up to where it is current) is made and its catalog put in force. One LIST thus
/// serves every Operation created before it; that is what makes "a catalog change made
/// before an Operation was created applies to it" hold although the ConfigMap and
/// Operation watches are not ordered.
async fn fresh_catalog(ctx: &Context, op: &Operation) -> Result<Arc<Catalog>, Error> {
    let op_version = revision_number(op.metadata.resource_version.as_ref());
    let as_of = ctx
        .catalog
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .fresh_as_of;
    if op_version > 0 && op_version <= as_of {
        return Ok(current_catalog(ctx).await);
    }
    let list = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.catalog_namespace)
        .list(&ListParams::default().fields(&format!("metadata.name={}", catalog::CONFIGMAP_NAME)))
        .await
        .map_err(|e| Error::Read("the operation catalog ConfigMap", e))?;
    let read_at = revision_number(list.metadata.resource_version.as_ref());
    let config = list.items.into_iter().next().map(|mut cm| {
        cm.metadata.managed_fields = None;
        Arc::new(cm)
    });
    let catalog = install_catalog(ctx, config, true).await;
    let mut inner = ctx.catalog.0.lock().unwrap_or_else(PoisonError::into_inner);
    inner.fresh_as_of = inner.fresh_as_of.max(read_at);
    Ok(catalog)
}

/// Make the catalog of `config` (a ConfigMap read from the cache, or fresh when
/// `fetched`) the one in force, unless it already is, or unless it comes from a cache
/// that lags behind a fresh read.
async fn install_catalog(
    ctx: &Context,
    config: Option<Arc<ConfigMap>>,
    fetched: bool,
) -> Arc<Catalog> {
    let version = config.as_ref().and_then(|c| c.resource_version());
    let report = {
        let mut inner = ctx.catalog.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(catalog) = inner.catalog.clone() {
            let lagging = !fetched
                && inner.fetched
                && revision_number(inner.version.as_ref()) > revision_number(version.as_ref());
            if inner.version == version || lagging {
                if inner.version == version && !fetched {
                    // The cache caught up with the fresh read.
                    inner.fetched = false;
                }
                return catalog;
            }
        }
        let builtin = catalog::builtin();
        let (catalog, report) = match &config {
            None => (builtin, None),
            Some(cm) => match builtin.with_overrides(&cm.data.clone().unwrap_or_default()) {
                Ok(catalog) => (
                    catalog.at_revision(version.as_deref().unwrap_or_default()),
                    None,
                ),
                Err(err) => {
                    let first = version
                        .as_ref()
                        .is_some_and(|v| inner.reported.insert(v.clone()));
                    (builtin, first.then(|| (Arc::clone(cm), err)))
                }
            },
        };
        let catalog = Arc::new(catalog);
        inner.catalog = Some(Arc::clone(&catalog));
        inner.version = version;
        inner.fetched = fetched;
        (catalog, report)
    };
    let (catalog, report) = report;
    if let Some((cm, err)) = report {
        tracing::error!(
            error = err.category(),
            configmap = %cm.name_any(),
            "the operation catalog ConfigMap is invalid; the built-in catalog stays in force: {err}"
        );
        warn_on(
            ctx,
            cm.as_ref(),
            "catalog",
            err.category(),
            &err.to_string(),
        )
        .await;
    }
    catalog
}

/// A Warning Event on `obj` (not a transition: no audit event), at most one per
/// (`tag`, resourceVersion of `obj`).
async fn warn_on<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    tag: &str,
    reason: &str,
    message: &str,
) {
    let namespace = obj
        .meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let rv = obj.meta().resource_version.clone().unwrap_or_default();
    let event = KubeEvent {
        metadata: ObjectMeta {
            // One per tag and resourceVersion: a repeat (another retry, a second
            // operator start) writes the same name and is answered 409.
            name: Some(format!(
                "{}.{}-{rv}",
                obj.meta().name.clone().unwrap_or_default(),
                tag.to_ascii_lowercase()
            )),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        action: Some("LoadCatalog".to_owned()),
        reason: Some(reason.to_owned()),
        note: Some(message.chars().take(1024).collect()),
        type_: Some("Warning".to_owned()),
        regarding: Some(ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: obj.meta().name.clone(),
            namespace: obj.meta().namespace.clone(),
            uid: obj.meta().uid.clone(),
            resource_version: obj.meta().resource_version.clone(),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(NAME.to_owned()),
        ..KubeEvent::default()
    };
    let api: Api<KubeEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => {}
        Err(e) if api_code(&e) == Some(409) => {}
        Err(e) => tracing::warn!(error = %e, "cannot write the catalog Warning Event"),
    }
}

/// The runtime's report path for this controller: a failed reconcile (the API server
/// refusing a step or a status write, after the retries the runtime schedules) is logged
/// by the runtime and put on the Operation by [`machine::plan_error`]: a fresh read, then
/// `Reconciling=True` with the error's category as reason, published (Warning Event and
/// audit event, once per entry into that category) and persisted like every other
/// transition. The next reconcile that succeeds sets `Reconciling=False`.
pub fn reporter(
    ctx: Arc<Context>,
) -> impl Fn(Arc<Operation>, vworkspace_runtime::ErrorReport) -> futures::future::BoxFuture<'static, ()>
+ Send
+ Sync {
    move |obj, report| {
        let ctx = Arc::clone(&ctx);
        Box::pin(async move {
            let uid = obj.metadata.uid.clone().unwrap_or_default();
            let span = tracing::info_span!("operation", operation_id = %uid);
            report_error(&ctx, obj.as_ref(), report.category, &report.message)
                .instrument(span)
                .await;
        })
    }
}

async fn report_error(ctx: &Context, cached: &Operation, category: &'static str, message: &str) {
    let api: Api<Operation> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let obj = match api.get_opt(&cached.name_any()).await {
        Ok(Some(obj)) => obj,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the Operation to report the error on it");
            return;
        }
    };
    let plan = machine::plan_error(&obj, category, message, &Time(Timestamp::now()));
    if let Err(err) = persist(ctx, &api, &obj, &plan, None).await {
        tracing::warn!(error = %err, "cannot report the error on the Operation");
    }
}

/// For the keys of the namespace's Operations (a managed namespace changed).
pub fn in_namespace(store: &Store<Operation>, ns: &Namespace) -> Vec<ObjectRef<Operation>> {
    let name = ns.metadata.name.clone();
    operations_where(store, |op| {
        op.metadata.namespace == name && !is_terminal(op)
    })
}

/// For the keys of the non-terminal Operations targeting an ApplicationInstance.
pub fn targeting(
    store: &Store<Operation>,
    namespace: Option<&str>,
    instance: &str,
) -> Vec<ObjectRef<Operation>> {
    operations_where(store, |op| {
        op.metadata.namespace.as_deref() == namespace
            && op.spec.application_instance == instance
            && !is_terminal(op)
    })
}
