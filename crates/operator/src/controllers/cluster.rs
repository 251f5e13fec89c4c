//! The Cluster controller: the only writer of `Cluster.status`, I/O around the pure
//! plan in `vworkspace_reconcile::cluster`.
//!
//! It reconciles the one Cluster of this operator (`<namespace>/<cluster-id>`) whenever
//! something it reports changes: the Cluster itself, a managed namespace, a controller's
//! health, the control-plane link or the audit stream (both reported in process through
//! watch channels: the agent never writes the Cluster), and at least every
//! `resync` to refresh the ages in messages and what discovery finds (CRD schemas, the
//! Flux version).
//!
//! Invariants:
//! * transitions are published before the status that records them is written (as in
//!   every controller: a crash in between repeats the publish, which is idempotent);
//! * the controller's own status writes are recognised by their resourceVersion and
//!   trigger no reconcile;
//! * discovery (CRDs, versions) runs at most once per `discovery_interval`, so a burst
//!   of triggers costs no extra requests;
//! * a reconcile that finds nothing changed sends nothing.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use vworkspace_api::cluster::{Cluster, ManagedNamespace};
use vworkspace_api::conditions::errors;
use vworkspace_api::labels::{ALLOWED_OPERATION_TEMPLATES, FIELD_MANAGER_OPERATOR};
use vworkspace_api::thirdparty::velero::ServerStatusRequest;
use vworkspace_reconcile::catalog;
use vworkspace_reconcile::cluster::{
    self as plan, AuditView, CatalogView, CrdCheck, LinkView, Observed,
};
use vworkspace_runtime::report::error_chain;
use vworkspace_runtime::{Action, ErrorCategory, ErrorReport, Event, Readiness};
use vworkspace_telemetry::metrics::ClusterMetrics;

use crate::checks;
use crate::publisher::{AuditContext, Publisher};

/// Name of this controller (metric label, log field).
pub const NAME: &str = "cluster";

/// The label Flux puts on the objects of its installation, CRDs included.
const FLUX_VERSION_LABEL: &str = "app.kubernetes.io/version";
/// A CRD every Flux installation the operator works with has.
const FLUX_CRD: &str = "helmreleases.helm.toolkit.fluxcd.io";

/// What the reconciler needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Transition publisher.
    pub publisher: Publisher,
    /// The Cluster this operator reports on.
    pub key: ObjectRef<Cluster>,
    /// This binary's version.
    pub operator_version: String,
    /// The managed namespaces.
    pub namespaces: Store<Namespace>,
    /// Every controller of the process.
    pub readiness: Readiness,
    /// The link (Pull mode); `None` while there is none.
    pub link: watch::Receiver<Option<LinkView>>,
    /// The audit stream.
    pub audit: watch::Receiver<AuditView>,
    /// Discovery results, refreshed at most every `discovery_interval`.
    pub discovery: Discovery,
    /// Longest time between two reconciles.
    pub resync: Duration,
    /// The resourceVersion of the last status write.
    pub written: Arc<Mutex<Option<String>>>,
    /// `vworkspace_operator_managed_namespaces`.
    pub metrics: ClusterMetrics,
    /// The catalog ConfigMap's cache (shared with the Operation controller).
    pub catalog_config: Store<ConfigMap>,
}

/// Cached discovery: the CRD comparison and the engine versions.
#[derive(Debug)]
pub struct Discovery {
    interval: Duration,
    velero_namespace: String,
    last: Mutex<Option<(Instant, Found)>>,
    velero: Mutex<VeleroProbe>,
}

#[derive(Debug, Clone)]
struct Found {
    crds: CrdCheck,
    flux_version: Option<String>,
    velero_version: Option<String>,
}

/// Velero tells its version only in answer to a ServerStatusRequest: one is created,
/// read back at the next discovery, and deleted once answered.
#[derive(Debug, Default)]
struct VeleroProbe {
    pending: Option<String>,
    version: Option<String>,
    answered_at: Option<Instant>,
}

/// How long a version Velero told stays trusted before asking again (an upgrade of
/// Velero shows within this; asking costs a create and a delete).
const VELERO_REPROBE: Duration = Duration::from_secs(600);

/// Prefix of the ServerStatusRequests the operator creates.
const SERVER_STATUS_REQUEST_PREFIX: &str = "vworkspace-operator-";
/// The CRD that says Velero is installed.
const VELERO_CRD: &str = "serverstatusrequests.velero.io";

impl Discovery {
    /// Discovery refreshed at most every `interval`; Velero looked for in
    /// `velero_namespace`.
    pub fn new(interval: Duration, velero_namespace: impl Into<String>) -> Self {
        Self {
            interval,
            velero_namespace: velero_namespace.into(),
            last: Mutex::new(None),
            velero: Mutex::new(VeleroProbe::default()),
        }
    }

    /// Velero's version: `None` while Velero is not installed (its CRD is absent) or has
    /// not answered yet. Failures leave the last known version in place.
    async fn velero_version(&self, client: &Client) -> Option<String> {
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        let installed = match crds.get_metadata_opt(VELERO_CRD).await {
            Ok(crd) => crd.is_some(),
            Err(err) => {
                tracing::debug!(error = %err, "cannot look for Velero's CRD");
                return self
                    .velero
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .version
                    .clone();
            }
        };
        let mut probe = {
            let mut guard = self.velero.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *guard)
        };
        if !installed {
            return None;
        }
        let api: Api<ServerStatusRequest> = Api::namespaced(client.clone(), &self.velero_namespace);
        match probe.pending.clone() {
            Some(name) => match api.get_opt(&name).await {
                Ok(Some(answered))
                    if answered.status.as_ref().and_then(|s| s.phase.as_deref())
                        == Some("Processed") =>
                {
                    probe.version = answered.status.and_then(|s| s.server_version);
                    probe.pending = None;
                    probe.answered_at = Some(Instant::now());
                    let _ = api.delete(&name, &Default::default()).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => probe.pending = None,
                Err(err) => tracing::debug!(error = %err, "cannot read the ServerStatusRequest"),
            },
            None if probe.version.is_some()
                && probe
                    .answered_at
                    .is_some_and(|at| at.elapsed() < VELERO_REPROBE) => {}
            None => {
                let request = ServerStatusRequest {
                    metadata: kube::api::ObjectMeta {
                        generate_name: Some(SERVER_STATUS_REQUEST_PREFIX.to_owned()),
                        ..Default::default()
                    },
                    spec: Default::default(),
                    status: None,
                };
                match api.create(&Default::default(), &request).await {
                    Ok(created) => probe.pending = created.metadata.name,
                    Err(err) => tracing::debug!(
                        error = %err,
                        namespace = %self.velero_namespace,
                        "cannot ask Velero for its version"
                    ),
                }
            }
        }
        let version = probe.version.clone();
        *self.velero.lock().unwrap_or_else(PoisonError::into_inner) = probe;
        version
    }

    async fn get(&self, client: &Client) -> Result<Found, Error> {
        if let Some((at, found)) = &*self.last.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < self.interval
        {
            return Ok(found.clone());
        }
        let crds = checks::crd_check(client.clone())
            .await
            .map_err(Error::Discovery)?;
        let flux_version = Api::<CustomResourceDefinition>::all(client.clone())
            .get_metadata_opt(FLUX_CRD)
            .await
            .map_err(Error::Discovery)?
            .and_then(|crd| crd.labels().get(FLUX_VERSION_LABEL).cloned());
        let velero_version = self.velero_version(client).await;
        let found = Found {
            crds,
            flux_version,
            velero_version,
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), found.clone()));
        Ok(found)
    }
}

/// Reconcile failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading CRDs failed.
    #[error("reading CustomResourceDefinitions")]
    Discovery(#[source] kube::Error),
    /// Writing status failed.
    #[error("writing the status")]
    Status(#[source] kube::Error),
}

impl ErrorCategory for Error {
    fn category(&self) -> &'static str {
        match self {
            Self::Discovery(_) => errors::READ_FAILED,
            Self::Status(_) => errors::STATUS_WRITE_FAILED,
        }
    }
    fn is_terminal(&self) -> bool {
        false
    }
}

/// The triggers that are not API objects: link, audit stream and controller health
/// changes all reconcile the one Cluster — once it exists (before, there is nothing to
/// report on, and its creation reconciles it).
pub fn triggers(
    clusters: Store<Cluster>,
    key: ObjectRef<Cluster>,
    link: watch::Receiver<Option<LinkView>>,
    audit: watch::Receiver<AuditView>,
    readiness: &Readiness,
) -> impl futures::Stream<Item = ObjectRef<Cluster>> + Send + 'static {
    let link = tokio_stream_from(link);
    let audit = tokio_stream_from(audit);
    let health = readiness
        .statuses()
        .into_iter()
        .map(|s| tokio_stream_from(s.subscribe()))
        .collect::<Vec<_>>();
    futures::stream::select_all([link, audit].into_iter().chain(health).collect::<Vec<_>>())
        .filter_map(move |()| {
            let key = key.clone();
            let exists = clusters.get(&key).is_some();
            async move { exists.then_some(key) }
        })
}

/// A stream that yields once per change of `rx` (changes in between coalesce).
fn tokio_stream_from<T: Send + Sync + 'static>(
    rx: watch::Receiver<T>,
) -> futures::stream::BoxStream<'static, ()> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
    .boxed()
}

/// The Cluster's status write, when `obj` is it: no reconcile needed.
pub fn is_own_write(written: &Mutex<Option<String>>, obj: &Cluster) -> bool {
    let written = written.lock().unwrap_or_else(PoisonError::into_inner);
    written.is_some() && *written == obj.metadata.resource_version
}

/// Reconcile the Cluster.
pub async fn reconcile(event: Event<Cluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let obj = match event {
        Event::Apply(obj) => obj,
        Event::Cleanup(_) => return Ok(Action::Done),
    };
    if ObjectRef::from_obj(obj.as_ref()) != ctx.key {
        // Another Cluster in the namespace: the readiness check `cluster` reports it.
        return Ok(Action::Done);
    }
    let found = ctx.discovery.get(&ctx.client).await?;
    let observed = Observed {
        generation: obj.metadata.generation,
        operator_version: ctx.operator_version.clone(),
        flux_version: found.flux_version,
        velero_version: found.velero_version,
        managed_namespaces: ctx
            .namespaces
            .state()
            .iter()
            .map(|ns| {
                ManagedNamespace::from_annotation(
                    ns.name_any(),
                    ns.annotations()
                        .get(ALLOWED_OPERATION_TEMPLATES)
                        .map(String::as_str),
                )
            })
            .collect(),
        link: ctx.link.borrow().clone(),
        unhealthy_controllers: unhealthy(&ctx.readiness),
        crds: found.crds,
        audit: ctx.audit.borrow().clone(),
        catalog: catalog_view(&ctx.catalog_config),
    };
    ctx.metrics
        .set_managed_namespaces(observed.managed_namespaces.len());
    let now = Time(Timestamp::now());
    let p = plan::plan(obj.status.as_ref(), &observed, &now);
    publish_and_persist(&ctx, &obj, &p).await?;
    Ok(Action::RequeueAfter(ctx.resync))
}

/// Publish the plan's transitions, then write its status when it changed.
async fn publish_and_persist(ctx: &Context, obj: &Cluster, p: &plan::Plan) -> Result<(), Error> {
    for record in &p.transitions {
        ctx.publisher
            .publish(obj, record, "Report", AuditContext::default())
            .await;
    }
    if p.changed {
        let api: Api<Cluster> =
            Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        let body = json!({
            "apiVersion": vworkspace_api::API_VERSION,
            "kind": "Cluster",
            "status": p.status,
        });
        let written = api
            .patch_status(
                &obj.name_any(),
                &PatchParams::apply(FIELD_MANAGER_OPERATOR).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(Error::Status)?;
        *ctx.written.lock().unwrap_or_else(PoisonError::into_inner) =
            written.metadata.resource_version;
        tracing::info!(cluster = %obj.name_any(), "cluster status written");
    }
    Ok(())
}

/// The error reporter: a failed reconcile of the Cluster sets `ControllersHealthy=False`
/// with the error's category as reason (a Warning Event with that reason, once per
/// entry), on a fresh read of the Cluster. When even that write fails, the Event has
/// been published and the log says why.
pub fn reporter(
    ctx: Arc<Context>,
) -> impl Fn(Arc<Cluster>, ErrorReport) -> BoxFuture<'static, ()> + Send + Sync {
    move |obj, report| {
        let ctx = Arc::clone(&ctx);
        async move {
            if ObjectRef::from_obj(obj.as_ref()) != ctx.key {
                return;
            }
            let api: Api<Cluster> = Api::namespaced(
                ctx.client.clone(),
                ctx.key.namespace.as_deref().unwrap_or_default(),
            );
            let fresh = match api.get_opt(&ctx.key.name).await {
                Ok(Some(fresh)) => fresh,
                Ok(None) => return,
                Err(err) => {
                    // The reconcile error itself is logged (rate-limited) by the runtime;
                    // when the Cluster cannot even be read, the API server is away and
                    // one more line per retry would only repeat that.
                    tracing::debug!(
                        error = %error_chain(&err),
                        "cannot read the Cluster to report the error on it"
                    );
                    return;
                }
            };
            let p = plan::plan_error(
                fresh.status.as_ref(),
                fresh.metadata.generation,
                report.category,
                &report.message,
                &Time(Timestamp::now()),
            );
            if let Err(err) = publish_and_persist(&ctx, &fresh, &p).await {
                tracing::warn!(
                    error = %error_chain(&err),
                    "cannot report the error on the Cluster"
                );
            }
        }
        .boxed()
    }
}

/// What the catalog ConfigMap makes of the catalog, by the same function the Operation
/// controller builds its catalog with (`Catalog::with_overrides`), on the same cache:
/// the two cannot disagree on whether it parses.
fn catalog_view(configs: &Store<ConfigMap>) -> CatalogView {
    let Some(cm) = configs
        .state()
        .into_iter()
        .find(|cm| cm.metadata.name.as_deref() == Some(catalog::CONFIGMAP_NAME))
    else {
        return CatalogView::Builtin;
    };
    match catalog::builtin().with_overrides(&cm.data.clone().unwrap_or_default()) {
        Ok(_) => CatalogView::Overridden(cm.name_any()),
        Err(err) => CatalogView::Invalid(cm.name_any(), err.to_string()),
    }
}

/// What is wrong with each controller that is not healthy: a cache that has not synced,
/// or a watch that is failing (its cache no longer follows the API server). A watch
/// that is only re-listing after a gap is not counted: that is brief and normal.
fn unhealthy(readiness: &Readiness) -> Vec<String> {
    readiness
        .controllers()
        .iter()
        .filter_map(|c| {
            let unsynced = c
                .unsynced()
                .map(|w| format!("cache of {} not synced", w.kind));
            let failing = c
                .watches
                .iter()
                .filter(|w| {
                    w.trouble
                        .as_deref()
                        .is_some_and(|t| t.starts_with("failing"))
                })
                .map(|w| format!("watch of {} failing", w.kind));
            let problems: Vec<String> = unsynced.chain(failing).collect();
            (!problems.is_empty()).then(|| format!("{}: {}", c.name, problems.join(", ")))
        })
        .collect()
}
