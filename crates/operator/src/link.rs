//! Pull mode: runs the control-plane link of `vworkspace_agent` for the leader, from the
//! settings in the Cluster, and reports it to the Cluster controller in process.
//!
//! The audit stream exists from start-up: [`ShipperSink`] is the publisher's sink and
//! buffers everything (bounded, oldest dropped first) until the link is configured and
//! this replica leads. The [`supervise`] task then, for as long as the process leads:
//!
//! 1. waits for the Cluster (`<namespace>/<cluster-id>`) in Pull mode, reads the bearer
//!    token from the Secret it names (a missing Secret or key is reported as
//!    `Authenticated=False` / `CredentialMissing`, and retried);
//! 2. points the shipper at the control plane and starts it, the heartbeat link and the
//!    job loop;
//! 3. replays the transitions recorded in status since the watermark the Cluster keeps
//!    (`status.auditStream.deliveredWatermark`) — which recovers what a killed process
//!    lost from its buffer — and does the same after every overflow, then acknowledges it;
//! 4. mirrors connectivity and the stream's state into the watch channels the Cluster
//!    controller reads, and restarts from 1. when the control-plane settings change.
//!
//! Invariants:
//! * the token is read from the Secret into a `Token`, which never prints; nothing here
//!   logs a Secret's data;
//! * the reconcilers never wait on the link: publishing only pushes into the buffer;
//! * replayed events are built by the same function as live ones
//!   ([`crate::replay::events_since`]), so the control plane deduplicates them by
//!   `event_id`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use vworkspace_agent::client::{HttpClient, HttpConfig, LinkError, Token};
use vworkspace_agent::connectivity::{
    ConnectivityHandle, ConnectivitySnapshot, LinkState as AgentState,
};
use vworkspace_agent::jobs::{
    JobApplier, JobLoopConfig, JobObserver, Rejection, rejection_event, run_job_loop,
};
use vworkspace_agent::link::{Link, LinkConfig};
use vworkspace_agent::shipper::{AuditTransport, Shipper, ShipperConfig};
use vworkspace_api::agent_api::{EventsAccepted, Job, JobDocument};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::cluster::{AuditStreamSpec, Cluster, ControlPlane, Mode};
use vworkspace_api::{AuditEvent, AuditSource, Operation};
use vworkspace_reconcile::cluster::{AuditView, Credential, LinkState, LinkView};
use vworkspace_runtime::Readiness;
use vworkspace_telemetry::health::CheckHandle;
use vworkspace_telemetry::metrics::{AgentMetrics, ConnectivityMode};

use crate::publisher::AuditSink;
use crate::replay::{self, Recorded};

/// The shipper's transport: the HTTP client of the current control-plane settings, once
/// there are any.
#[derive(Debug, Clone, Default)]
pub struct Transport(Arc<Mutex<Option<HttpClient>>>);

impl Transport {
    fn set(&self, client: Option<HttpClient>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = client;
    }

    fn current(&self) -> Option<HttpClient> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl AuditTransport for Transport {
    async fn send(&self, events: &[AuditEvent]) -> Result<EventsAccepted, LinkError> {
        match self.current() {
            Some(client) => client.post_events(events).await,
            // Never reached while the shipper only runs with a configured client; if it
            // is, the batch stays buffered and is retried.
            None => Err(LinkError::Network(
                "no control plane configured yet".to_owned(),
            )),
        }
    }
}

/// The publisher's audit sink for the control plane: the shipper's buffer. It keeps
/// events from start-up until the Cluster is known; once the Cluster says there is no
/// Pull-mode link, it stops keeping them (nothing would ever ship them).
#[derive(Debug, Clone)]
pub struct ShipperSink {
    shipper: Shipper<Transport>,
    enabled: Arc<AtomicBool>,
}

impl ShipperSink {
    /// A sink feeding `shipper`, keeping events until told otherwise.
    pub fn new(shipper: Shipper<Transport>) -> Self {
        Self {
            shipper,
            enabled: Arc::new(AtomicBool::new(true)),
        }
    }

    fn set_enabled(&self, enabled: bool) {
        if self.enabled.swap(enabled, Ordering::Relaxed) != enabled {
            tracing::info!(
                enabled,
                "control-plane audit stream {}",
                if enabled {
                    "enabled"
                } else {
                    "disabled: the Cluster has no Pull-mode link"
                }
            );
        }
    }
}

impl AuditSink for ShipperSink {
    fn submit(&self, event: AuditEvent) {
        if self.enabled.load(Ordering::Relaxed) {
            self.shipper.submit(event);
        }
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.shipper.status().running
                && let Err(err) = self.shipper.flush().await
            {
                tracing::warn!(error = %err, "audit events not delivered at flush");
            }
        })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.shipper.status().running {
                let left = self.shipper.close().await;
                if left > 0 {
                    tracing::warn!(
                        undelivered = left,
                        "audit events left undelivered at shutdown; the next start replays them from status"
                    );
                }
            }
        })
    }
}

/// The shipper, stopped, with the capacity of the Cluster CRD's defaults (the
/// supervisor applies the Cluster's own settings when it starts it).
pub fn new_shipper(metrics: &AgentMetrics) -> Shipper<Transport> {
    Shipper::new(
        Transport::default(),
        ShipperConfig::from_spec(&AuditStreamSpec::default()),
        Some(metrics.clone()),
    )
}

/// What the supervisor needs.
pub struct Supervisor {
    /// API client.
    pub client: Client,
    /// The Cluster cache (of the Cluster controller).
    pub clusters: Store<Cluster>,
    /// This operator's Cluster.
    pub key: ObjectRef<Cluster>,
    /// Audit source of the operator.
    pub source: AuditSource,
    /// The audit stream.
    pub shipper: Shipper<Transport>,
    /// The publisher's end of it.
    pub sink: ShipperSink,
    /// The instances (for the replay).
    pub instances: Store<ApplicationInstance>,
    /// The Operations (for the replay), when the Operation controller runs.
    pub operations: Option<Store<Operation>>,
    /// Agent metrics.
    pub metrics: AgentMetrics,
    /// The `controlplane` readiness sub-check.
    pub readiness: CheckHandle,
    /// To the Cluster controller: the link.
    pub link_tx: watch::Sender<Option<LinkView>>,
    /// To the Cluster controller: the audit stream.
    pub audit_tx: watch::Sender<AuditView>,
    /// Settings of the job loop (tests shorten the long-poll).
    pub jobs: JobLoopConfig,
    /// The controllers: the replay waits until their caches have synced.
    pub readiness_of_controllers: Readiness,
}

/// How often the supervisor looks at the Cluster's settings.
const SETTINGS_RECHECK: Duration = Duration::from_secs(2);

/// The link settings a restart of the link depends on.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    control_plane: ControlPlane,
    grace_period: Duration,
    heartbeat_interval: Duration,
    audit: AuditStreamSpec,
}

fn settings(cluster: &Cluster) -> Option<Settings> {
    (cluster.spec.mode == Mode::Pull).then_some(())?;
    Some(Settings {
        control_plane: cluster.spec.control_plane.clone()?,
        grace_period: cluster.spec.connectivity.grace_period.as_duration(),
        heartbeat_interval: cluster.spec.connectivity.heartbeat_interval.as_duration(),
        audit: cluster.spec.audit_stream.clone(),
    })
}

impl Supervisor {
    /// Runs the link until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut replayed_once = false;
        let mut pending_replay: Option<(Option<Time>, &'static str)> = None;
        let mut overflow_unrecovered = false;
        loop {
            if *stop.borrow() {
                break;
            }
            let Some(cluster) = self.clusters.get(&self.key) else {
                self.link_tx.send_replace(None);
                if wait(&mut stop, SETTINGS_RECHECK).await {
                    break;
                }
                continue;
            };
            let Some(wanted) = settings(&cluster) else {
                // Not Pull mode (or no control plane): no link in this version.
                self.sink.set_enabled(false);
                self.readiness.set_ok();
                self.link_tx.send_replace(None);
                if wait(&mut stop, SETTINGS_RECHECK).await {
                    break;
                }
                continue;
            };
            self.sink.set_enabled(true);
            let token = match self.token(&cluster, &wanted.control_plane).await {
                Ok(token) => token,
                Err(why) => {
                    tracing::error!("cannot read the control-plane credential: {why}");
                    self.readiness.set_failing(why.clone());
                    self.link_tx.send_replace(Some(LinkView {
                        state: LinkState::Pending,
                        credential: Credential::Missing,
                        since_success: None,
                        last_heartbeat: None,
                        grace_period: wanted.grace_period,
                        last_error: Some(why),
                    }));
                    if wait(&mut stop, SETTINGS_RECHECK).await {
                        break;
                    }
                    continue;
                }
            };
            let connectivity = ConnectivityHandle::new(
                ConnectivityMode::Pull,
                wanted.grace_period,
                Some(self.metrics.clone()),
            );
            let http = match HttpClient::new(HttpConfig {
                base_url: wanted.control_plane.url.clone(),
                token,
                timeout: Duration::from_secs(30),
                ca_bundle_pem: wanted.control_plane.ca_bundle.clone(),
            }) {
                Ok(client) => client.with_connectivity(connectivity.clone()),
                Err(err) => {
                    tracing::error!(error = %err, "cannot build the control-plane client");
                    self.link_tx.send_replace(Some(LinkView {
                        state: LinkState::Pending,
                        credential: Credential::Untested,
                        since_success: None,
                        last_heartbeat: None,
                        grace_period: wanted.grace_period,
                        last_error: Some(err.to_string()),
                    }));
                    if wait(&mut stop, SETTINGS_RECHECK).await {
                        break;
                    }
                    continue;
                }
            };
            tracing::info!(url = %wanted.control_plane.url, "starting the control-plane link");
            self.shipper.transport().set(Some(http.clone()));
            self.shipper
                .reconfigure(ShipperConfig::from_spec(&wanted.audit));
            self.shipper.start();

            let (tasks_stop_tx, tasks_stop) = watch::channel(false);
            let link = Link::new(
                http.clone(),
                connectivity.clone(),
                LinkConfig {
                    cluster_id: self.source.cluster_id.clone(),
                    operator_version: self.source.operator_version.clone(),
                    heartbeat_interval: wanted.heartbeat_interval,
                },
                {
                    let shipper = self.shipper.clone();
                    Arc::new(move || shipper.status().pending as u64)
                },
                Some(self.readiness.clone()),
            );
            let link_task = tokio::spawn(link.run(tasks_stop.clone()));
            let jobs_task = tokio::spawn(run_job_loop(
                http.clone(),
                JobApplier::new(self.client.clone(), self.source.cluster_id.clone()),
                Arc::new(AuditingObserver {
                    source: self.source.clone(),
                    shipper: self.shipper.clone(),
                }),
                Some(self.metrics.clone()),
                self.jobs,
                tasks_stop.clone(),
            ));

            // What must be replayed, from which watermark: after a restart, what the last
            // process may have lost; after an overflow, what was dropped.
            let mut persisted_watermark = cluster
                .status
                .as_ref()
                .and_then(|s| s.audit_stream.as_ref())
                .and_then(|a| a.delivered_watermark.clone());
            if !replayed_once {
                pending_replay = Some((persisted_watermark.clone(), "start-up"));
                replayed_once = true;
            }
            let capacity = usize::try_from(wanted.audit.buffer_capacity)
                .unwrap_or(1)
                .max(1);

            // Mirror the link and the stream until the settings change or we stop.
            let mut conn_rx = connectivity.subscribe();
            let mut stream_rx = self.shipper.subscribe();
            let mut recheck = tokio::time::interval(SETTINGS_RECHECK);
            loop {
                let snapshot = connectivity.current();
                self.link_tx.send_replace(Some(link_view(
                    &snapshot,
                    connectivity.last_success_at(),
                    wanted.grace_period,
                )));
                let status = self.shipper.status();
                if status.overflowed_since_last_check {
                    // Replay from the watermark the Cluster holds, lowered to the shipper's
                    // (which is at or before the oldest event dropped).
                    let from = earliest(persisted_watermark.clone(), status.watermark.clone());
                    let from = match pending_replay.take() {
                        Some((earlier, _)) => earliest(earlier, from),
                        None => from,
                    };
                    pending_replay = Some((from, "buffer overflow"));
                    overflow_unrecovered = true;
                    self.shipper.acknowledge_overflow();
                }
                if let Some(w) = status.watermark.clone() {
                    persisted_watermark = Some(w);
                }
                self.audit_tx.send_replace(AuditView {
                    stream: status.to_api(),
                    overflow_unrecovered,
                });
                // Replay only over a working link and with complete caches; a replay into
                // a buffer that cannot drain would only overflow it again.
                if let Some((from, why)) = pending_replay.clone()
                    && snapshot.state == AgentState::Connected
                    && self.caches_synced()
                {
                    match self.replay(from.as_ref(), why, capacity).await {
                        Ok(()) => {
                            pending_replay = None;
                            if !self.shipper.status().overflowed_since_last_check {
                                overflow_unrecovered = false;
                            }
                            continue;
                        }
                        Err(resume_from) => pending_replay = Some((resume_from, why)),
                    }
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    r = conn_rx.changed() => { if r.is_err() { break; } }
                    r = stream_rx.changed() => { if r.is_err() { break; } }
                    _ = recheck.tick() => {
                        let current = self.clusters.get(&self.key);
                        if current.as_deref().and_then(settings).as_ref() != Some(&wanted) {
                            tracing::info!("control-plane settings changed; restarting the link");
                            break;
                        }
                    }
                }
                if *stop.borrow() {
                    break;
                }
            }
            tasks_stop_tx.send_replace(true);
            let _ = tokio::join!(link_task, jobs_task);
            self.shipper.stop().await;
        }
        self.link_tx.send_replace(None);
    }

    async fn token(&self, cluster: &Cluster, cp: &ControlPlane) -> Result<Token, String> {
        let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let secret = secrets
            .get_opt(&cp.credentials_secret_ref.name)
            .await
            .map_err(|e| {
                format!(
                    "reading Secret {namespace}/{}: {e}",
                    cp.credentials_secret_ref.name
                )
            })?
            .ok_or_else(|| {
                format!(
                    "Secret {namespace}/{} (spec.controlPlane.credentialsSecretRef) does not exist",
                    cp.credentials_secret_ref.name
                )
            })?;
        let key = &cp.credentials_secret_ref.key;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| {
                format!(
                    "Secret {namespace}/{} has no key {key:?}",
                    cp.credentials_secret_ref.name
                )
            })?;
        let token = String::from_utf8(bytes.0.clone())
            .map_err(|_| format!("the key {key:?} of the credentials Secret is not UTF-8"))?;
        Ok(Token::new(token.trim().to_owned()))
    }

    fn caches_synced(&self) -> bool {
        self.readiness_of_controllers
            .controllers()
            .iter()
            .all(|c| c.is_synced())
    }

    /// Resubmits every transition recorded at or after `watermark`, a buffer's worth at a
    /// time, waiting for each part to be delivered. On a delivery failure it stops and
    /// answers where to resume (the receiver deduplicates what was sent twice).
    async fn replay(
        &self,
        watermark: Option<&Time>,
        why: &str,
        capacity: usize,
    ) -> Result<(), Option<Time>> {
        let instances = self.instances.state();
        let operations = self
            .operations
            .as_ref()
            .map(Store::state)
            .unwrap_or_default();
        let cluster = self.clusters.get(&self.key);
        let events = replay::events_since(
            &self.source,
            Recorded {
                instances: &instances,
                operations: &operations,
                cluster: cluster.as_deref(),
            },
            watermark,
        );
        tracing::info!(
            events = events.len(),
            watermark = ?watermark.map(|w| w.0.to_string()),
            "replaying recorded transitions ({why})"
        );
        let mut rest = events.as_slice();
        while !rest.is_empty() {
            let free = capacity
                .saturating_sub(self.shipper.status().pending)
                .max(1);
            let (part, later) = rest.split_at(free.min(rest.len()));
            for event in part {
                self.shipper.submit(event.clone());
            }
            if let Err(err) = self.shipper.flush().await {
                tracing::warn!(error = %err, "replay paused until the link delivers again");
                return Err(part.first().map(|e| e.occurred_at.clone()));
            }
            rest = later;
        }
        Ok(())
    }
}

/// Now, in whole seconds (the precision of every recorded time).
fn now() -> Time {
    let t = Timestamp::now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `true` when `stop` turned true within `d`.
async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

fn link_view(
    snapshot: &ConnectivitySnapshot,
    last_success: Option<std::time::SystemTime>,
    grace_period: Duration,
) -> LinkView {
    LinkView {
        state: match (snapshot.state, last_success) {
            (AgentState::Connected, _) => LinkState::Connected,
            (AgentState::Reconnecting, None) => LinkState::Pending,
            (AgentState::Reconnecting, Some(_)) => LinkState::Reconnecting,
            (AgentState::Disconnected, _) => LinkState::Disconnected,
        },
        credential: match snapshot.authenticated {
            Some(true) => Credential::Valid,
            Some(false) => Credential::Rejected,
            None => Credential::Untested,
        },
        since_success: snapshot.since_success,
        last_heartbeat: last_success
            .and_then(|t| Timestamp::try_from(t).ok())
            .and_then(|t| Timestamp::from_second(t.as_second()).ok())
            .map(Time),
        grace_period,
        last_error: snapshot.failing.map(|f| format!("{} failure", f.as_str())),
    }
}

/// Publishes each rejected job as a `JobRejected` audit event and logs outcomes.
pub struct AuditingObserver {
    /// Audit source.
    pub source: AuditSource,
    /// Where the events go.
    pub shipper: Shipper<Transport>,
}

impl JobObserver for AuditingObserver {
    fn applied(&self, job: &Job, document: &JobDocument) {
        tracing::info!(
            job_id = %job.id,
            job_type = document.type_name(),
            namespace = document.namespace(),
            "job applied"
        );
    }

    fn rejected(&self, job: &Job, document: Option<&JobDocument>, rejection: &Rejection) {
        // The loop logged the rejection; this is its record in the audit stream.
        self.shipper.submit(rejection_event(
            &self.source,
            job,
            document.map(JobDocument::namespace),
            rejection,
            now(),
        ));
    }
}
