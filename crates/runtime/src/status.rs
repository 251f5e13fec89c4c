//! What each controller reports about its watches, and the process-wide [`Readiness`]
//! that lists every controller for `/readyz` (and, later, the Cluster status).
//!
//! Invariants:
//! * a controller's watches are listed in the order they were added to its builder, the
//!   primary kind first; the list is complete before the controller runs, so readiness
//!   names every watch that has not synced yet, including those of a controller that has
//!   not started;
//! * a watch is [`SyncState::Synced`] from its first complete list on; re-lists after
//!   watch errors do not make it pending again (as controller-runtime's `HasSynced`);
//!   instead its `trouble` says it is failing (with the error) or re-listing, until its
//!   next complete list, and [`informers_message`] names it;
//! * an optional kind that is not served is [`SyncState::Missing`], which counts as
//!   synced; when it appears it is [`SyncState::Pending`] until its first list is done;
//! * [`ControllerStatus::synced`] and the controller's `synced()` signal agree: every
//!   watch is synced or missing.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use kube::Resource;
use tokio::sync::watch;

/// A Kubernetes kind, as the runtime names it in status and messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindName {
    /// API group; empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Backup`.
    pub kind: String,
    /// Resource (plural) name, e.g. `backups`.
    pub plural: String,
}

impl KindName {
    /// The name of the statically typed kind `K`.
    pub fn of<K: Resource<DynamicType = ()>>() -> Self {
        Self {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
        }
    }

    /// `group/version`, or only `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name a CustomResourceDefinition of this kind has: `<plural>.<group>`.
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

impl fmt::Display for KindName {
    /// `velero.io/v1 Backup`, `v1 ConfigMap`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind)
    }
}

/// Where one watch of a controller stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// The first complete list has not arrived yet.
    Pending,
    /// The cache holds a complete list and follows the watch.
    Synced,
    /// An optional kind that the API server does not serve (its CRD is not installed);
    /// counts as synced. The runtime re-checks and starts the watch when it appears.
    Missing,
}

impl SyncState {
    /// Whether this state lets the controller start (and stay ready).
    pub fn counts_as_synced(self) -> bool {
        matches!(self, Self::Synced | Self::Missing)
    }
}

/// One watch of a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStatus {
    /// The watched kind.
    pub kind: KindName,
    /// Whether the controller starts without this kind being served.
    pub optional: bool,
    /// Whether the watch is a [`SharedWatch`](crate::SharedWatch) that other
    /// controllers may subscribe to as well.
    pub shared: bool,
    /// Where it stands.
    pub state: SyncState,
    /// Why a watch that has synced does not follow the API server right now: it is
    /// re-listing, or failing (with the error); `None` while it is healthy.
    pub trouble: Option<String>,
}

/// A snapshot of one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerState {
    /// The controller name.
    pub name: String,
    /// Every watch: the primary kind first, then the related ones in builder order.
    pub watches: Vec<WatchStatus>,
    /// Whether the workers have started (once every watch counted as synced).
    pub workers_started: bool,
}

impl ControllerState {
    /// Every watch is synced or missing.
    pub fn is_synced(&self) -> bool {
        self.watches.iter().all(|w| w.state.counts_as_synced())
    }

    /// The watches still waiting for their first list.
    pub fn unsynced(&self) -> impl Iterator<Item = &WatchStatus> {
        self.watches.iter().filter(|w| !w.state.counts_as_synced())
    }

    /// The optional kinds that are not served right now (each once).
    pub fn missing_kinds(&self) -> Vec<KindName> {
        let mut kinds: Vec<KindName> = self
            .watches
            .iter()
            .filter(|w| w.state == SyncState::Missing)
            .map(|w| w.kind.clone())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

/// A live view of one controller's [`ControllerState`]; clones share it.
#[derive(Debug, Clone)]
pub struct ControllerStatus {
    rx: watch::Receiver<ControllerState>,
}

impl ControllerStatus {
    /// The controller name.
    pub fn name(&self) -> String {
        self.rx.borrow().name.clone()
    }

    /// The state now.
    pub fn state(&self) -> ControllerState {
        self.rx.borrow().clone()
    }

    /// Every watch is synced or missing.
    pub fn synced(&self) -> bool {
        self.rx.borrow().is_synced()
    }

    /// The optional kinds that are not served right now.
    pub fn missing_kinds(&self) -> Vec<KindName> {
        self.rx.borrow().missing_kinds()
    }

    /// A receiver that wakes on every change (e.g. to write the Cluster status).
    pub fn subscribe(&self) -> watch::Receiver<ControllerState> {
        self.rx.clone()
    }
}

/// Every controller of the process, for readiness; clones share one list.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    controllers: Arc<Mutex<Vec<ControllerStatus>>>,
}

impl Readiness {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// List `status` (a controller's [`status`](crate::Controller::status)).
    pub fn add(&self, status: ControllerStatus) {
        self.controllers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(status);
    }

    /// The live status of every listed controller, in the order they were added.
    pub fn statuses(&self) -> Vec<ControllerStatus> {
        self.controllers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A snapshot of every listed controller, in the order they were added.
    pub fn controllers(&self) -> Vec<ControllerState> {
        self.controllers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(ControllerStatus::state)
            .collect()
    }

    /// Every listed controller is synced.
    pub fn synced(&self) -> bool {
        self.controllers().iter().all(ControllerState::is_synced)
    }

    /// What is not synced yet, as one line (see [`unsynced_message`]); `None` when
    /// everything is.
    pub fn unsynced_message(&self) -> Option<String> {
        unsynced_message(&self.controllers())
    }

    /// What keeps the caches from being current, as one line (see [`informers_message`]);
    /// `None` when every watch has synced and is healthy.
    pub fn informers_message(&self) -> Option<String> {
        informers_message(&self.controllers())
    }

    /// Which optional kinds are missing, as one line (see [`missing_message`]).
    pub fn missing_message(&self) -> Option<String> {
        missing_message(&self.controllers())
    }
}

/// `operation: cache of velero.io/v1 Backup not synced; cluster: cache of v1 Node not
/// synced` — every watch that has not synced, by controller; `None` when there is none.
pub fn unsynced_message(controllers: &[ControllerState]) -> Option<String> {
    let parts: Vec<String> = controllers
        .iter()
        .flat_map(|c| {
            c.unsynced()
                .map(move |w| format!("{}: cache of {} not synced", c.name, w.kind))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// [`unsynced_message`] plus every synced watch in trouble: `applicationinstance: watch of
/// vworkspace.io/v1alpha1 ApplicationInstance failing: <error>` or `... re-listing`.
/// `None` when there is nothing to say.
pub fn informers_message(controllers: &[ControllerState]) -> Option<String> {
    let mut parts: Vec<String> = unsynced_message(controllers).into_iter().collect();
    for c in controllers {
        for w in &c.watches {
            if let (true, Some(trouble)) = (w.state == SyncState::Synced, &w.trouble) {
                parts.push(format!("{}: watch of {} {trouble}", c.name, w.kind));
            }
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `operation: velero.io/v1 Backup not installed (backups.velero.io)` — every missing
/// optional kind, by controller; `None` when there is none.
pub fn missing_message(controllers: &[ControllerState]) -> Option<String> {
    let parts: Vec<String> = controllers
        .iter()
        .flat_map(|c| {
            c.missing_kinds()
                .into_iter()
                .map(move |kind| format!("{}: {kind} not installed ({})", c.name, kind.crd_name()))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The writing side of a controller's status, shared by its watches and its runner.
#[derive(Debug, Clone)]
pub(crate) struct StatusCell {
    state: Arc<watch::Sender<ControllerState>>,
    synced: Arc<watch::Sender<bool>>,
}

impl StatusCell {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            state: Arc::new(watch::Sender::new(ControllerState {
                name: name.to_owned(),
                watches: Vec::new(),
                workers_started: false,
            })),
            synced: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Add a watch (builder time); returns its index.
    pub(crate) fn add_watch(&self, kind: KindName, optional: bool, shared: bool) -> usize {
        let mut index = 0;
        self.modify(|state| {
            index = state.watches.len();
            state.watches.push(WatchStatus {
                kind,
                optional,
                shared,
                state: SyncState::Pending,
                trouble: None,
            });
            true
        });
        index
    }

    pub(crate) fn set(&self, index: usize, sync: SyncState) {
        self.modify(|state| match state.watches.get_mut(index) {
            Some(watch) if watch.state != sync => {
                watch.state = sync;
                true
            }
            _ => false,
        });
    }

    pub(crate) fn set_trouble(&self, index: usize, trouble: Option<&str>) {
        self.modify(|state| match state.watches.get_mut(index) {
            Some(watch) if watch.trouble.as_deref() != trouble => {
                watch.trouble = trouble.map(str::to_owned);
                true
            }
            _ => false,
        });
    }

    pub(crate) fn workers_started(&self) {
        self.modify(|state| !std::mem::replace(&mut state.workers_started, true));
    }

    pub(crate) fn status(&self) -> ControllerStatus {
        ControllerStatus {
            rx: self.state.subscribe(),
        }
    }

    pub(crate) fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    fn modify(&self, change: impl FnOnce(&mut ControllerState) -> bool) {
        let mut synced = false;
        self.state.send_if_modified(|state| {
            let changed = change(state);
            synced = state.is_synced();
            changed
        });
        self.synced.send_if_modified(|current| {
            let changed = *current != synced;
            *current = synced;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn velero() -> KindName {
        KindName {
            group: "velero.io".into(),
            version: "v1".into(),
            kind: "Backup".into(),
            plural: "backups".into(),
        }
    }

    #[test]
    fn kinds_are_named_like_kubectl_and_their_crds() {
        assert_eq!(KindName::of::<ConfigMap>().to_string(), "v1 ConfigMap");
        assert_eq!(velero().to_string(), "velero.io/v1 Backup");
        assert_eq!(velero().crd_name(), "backups.velero.io");
    }

    #[test]
    fn the_messages_name_each_controller_and_watch() {
        let operation = StatusCell::new("operation");
        let primary = operation.add_watch(KindName::of::<ConfigMap>(), false, false);
        let backups = operation.add_watch(velero(), false, true);
        let cluster = StatusCell::new("cluster");
        let optional = cluster.add_watch(velero(), true, false);
        let readiness = Readiness::new();
        readiness.add(operation.status());
        readiness.add(cluster.status());
        let mut synced = operation.synced();
        assert!(!*synced.borrow_and_update());

        assert_eq!(
            readiness.unsynced_message().as_deref(),
            Some(
                "operation: cache of v1 ConfigMap not synced; \
                 operation: cache of velero.io/v1 Backup not synced; \
                 cluster: cache of velero.io/v1 Backup not synced"
            )
        );
        operation.set(primary, SyncState::Synced);
        cluster.set(optional, SyncState::Missing);
        assert_eq!(
            readiness.unsynced_message().as_deref(),
            Some("operation: cache of velero.io/v1 Backup not synced")
        );
        assert!(!readiness.synced());
        assert_eq!(
            readiness.missing_message().as_deref(),
            Some("cluster: velero.io/v1 Backup not installed (backups.velero.io)")
        );
        assert!(!synced.has_changed().unwrap_or(true));
        operation.set(backups, SyncState::Synced);
        assert!(*synced.borrow_and_update());
        assert!(readiness.synced());
        assert_eq!(readiness.unsynced_message(), None);
        assert_eq!(cluster.status().missing_kinds(), [velero()]);
        assert_eq!(readiness.informers_message(), None);
        operation.set_trouble(backups, Some("failing: connection refused"));
        assert!(readiness.synced(), "trouble does not undo the first sync");
        assert_eq!(
            readiness.informers_message().as_deref(),
            Some("operation: watch of velero.io/v1 Backup failing: connection refused")
        );
        operation.set_trouble(backups, None);
        assert_eq!(readiness.informers_message(), None);
        assert_eq!(
            readiness
                .controllers()
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["operation", "cluster"]
        );
    }
}
