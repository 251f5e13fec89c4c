//! Connectivity: whether the control plane answers, derived from every round-trip.
//!
//! [`Connectivity`] is a pure state machine over an injected clock: it is fed
//! [`Connectivity::success`] and [`Connectivity::failure`] with the time they happened and
//! answers [`Connectivity::snapshot`] for any later time. [`ConnectivityHandle`] wraps it for
//! the tasks that share it (the HTTP client reports every round-trip of every endpoint),
//! publishes snapshots on a `watch` channel and sets the
//! `vworkspace_operator_connectivity_state{mode}` gauge.
//!
//! Invariants:
//! * `Connected` ⇔ the most recent round-trip succeeded; `Reconnecting` ⇔ round-trips have
//!   been failing (or none has succeeded yet) for less than `gracePeriod`; `Disconnected` ⇔
//!   for at least `gracePeriod`. The failing period starts at the first failure after a
//!   success, or when tracking started if nothing has succeeded yet;
//! * `authenticated` is `None` until the control plane has answered, `Some(false)` after a 401
//!   and `Some(true)` after any answer that is not a 401; a network failure never changes
//!   it (so a flaky network never fails readiness, a rejected credential does);
//! * the watch channel changes only when the state, `authenticated` or the failure kind
//!   changes, so a Cluster controller watching it writes status on transitions, not on every
//!   successful heartbeat; the message with its "…s ago" is computed for the time of the
//!   snapshot ([`ConnectivityHandle::current`] gives a fresh one);
//! * the gauge always equals the state of the latest snapshot.
//!
//! Push mode and gitops mode get their own source of round-trips (AuditBatch consumption,
//! the Flux source's readiness) feeding the same machine with their own `mode` label.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use vworkspace_api::conditions::cluster::reasons;
use vworkspace_telemetry::metrics::{AgentMetrics, ConnectivityMode, ConnectivityState};

/// What kind of failure a round-trip had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No usable answer: network, TLS, timeout, 5xx.
    Network,
    /// 401: the credential was refused.
    Unauthorized,
}

impl FailureKind {
    /// Stable name, as in [`crate::client::LinkError::category`].
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Network => "network",
            FailureKind::Unauthorized => "unauthorized",
        }
    }
}

/// The link's state (the gauge's 1 / 0 / -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// The last round-trip succeeded.
    Connected,
    /// Failing (or not yet succeeded) for less than the grace period.
    Reconnecting,
    /// Failing for at least the grace period.
    Disconnected,
}

impl LinkState {
    /// The gauge value.
    pub fn metric(self) -> ConnectivityState {
        match self {
            LinkState::Connected => ConnectivityState::Connected,
            LinkState::Reconnecting => ConnectivityState::Reconnecting,
            LinkState::Disconnected => ConnectivityState::Disconnected,
        }
    }
}

/// What connectivity looks like at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectivitySnapshot {
    /// Connected, reconnecting or disconnected.
    pub state: LinkState,
    /// `None` until the control plane answered; `Some(false)` after a 401.
    pub authenticated: Option<bool>,
    /// The kind of the most recent failure while failing; `None` while connected.
    pub failing: Option<FailureKind>,
    /// How long ago the last successful round-trip was, at the snapshot's time.
    pub since_success: Option<Duration>,
    /// How long round-trips have been failing, at the snapshot's time (`None` when connected).
    pub failing_for: Option<Duration>,
    /// For the Connected condition, e.g. "Last successful round-trip 4s ago".
    pub message: String,
}

impl ConnectivitySnapshot {
    /// Reason of the `Connected` condition.
    pub fn connected_reason(&self) -> &'static str {
        match self.state {
            LinkState::Connected => reasons::CONTROL_PLANE_REACHABLE,
            LinkState::Reconnecting => reasons::RECONNECTING,
            LinkState::Disconnected => reasons::CONTROL_PLANE_UNREACHABLE,
        }
    }

    /// Reason of the `Authenticated` condition (`None` while unknown).
    pub fn authenticated_reason(&self) -> Option<&'static str> {
        self.authenticated.map(|ok| {
            if ok {
                reasons::CREDENTIAL_VALID
            } else {
                reasons::CREDENTIAL_REJECTED
            }
        })
    }

    /// The `controlplane` readiness sub-check: failing only while the credential is refused.
    pub fn readiness(&self) -> Result<(), String> {
        if self.authenticated == Some(false) {
            Err(format!(
                "the control plane refused the credential (401): {}",
                reasons::CREDENTIAL_REJECTED
            ))
        } else {
            Ok(())
        }
    }

    /// The fields whose change is a transition (everything but the ages).
    fn key(&self) -> (LinkState, Option<bool>, Option<FailureKind>) {
        (self.state, self.authenticated, self.failing)
    }
}

/// The pure state machine; see the module docs.
#[derive(Debug, Clone)]
pub struct Connectivity {
    grace_period: Duration,
    started: Instant,
    last_success: Option<Instant>,
    failing_since: Option<Instant>,
    last_failure: Option<FailureKind>,
    authenticated: Option<bool>,
}

impl Connectivity {
    /// Starts tracking at `now`, before any round-trip.
    pub fn new(grace_period: Duration, now: Instant) -> Self {
        Connectivity {
            grace_period,
            started: now,
            last_success: None,
            failing_since: None,
            last_failure: None,
            authenticated: None,
        }
    }

    /// Changes the grace period (the Cluster spec changed); takes effect at the next snapshot.
    pub fn set_grace_period(&mut self, grace_period: Duration) {
        self.grace_period = grace_period;
    }

    /// A round-trip answered at `at`.
    pub fn success(&mut self, at: Instant) {
        self.last_success = Some(self.last_success.map_or(at, |prev| prev.max(at)));
        self.failing_since = None;
        self.last_failure = None;
        self.authenticated = Some(true);
    }

    /// A round-trip failed at `at`.
    pub fn failure(&mut self, at: Instant, kind: FailureKind) {
        if self.failing_since.is_none() {
            // Never answered: the failing period is the whole time since tracking began.
            self.failing_since = Some(if self.last_success.is_none() {
                self.started
            } else {
                at
            });
        }
        self.last_failure = Some(kind);
        if kind == FailureKind::Unauthorized {
            self.authenticated = Some(false);
        }
    }

    /// The state at `now`.
    pub fn snapshot(&self, now: Instant) -> ConnectivitySnapshot {
        let since_success = self.last_success.map(|t| now.saturating_duration_since(t));
        let failing_start = match (self.failing_since, self.last_success) {
            (Some(since), _) => Some(since),
            (None, Some(_)) => None,
            (None, None) => Some(self.started),
        };
        let failing_for = failing_start.map(|t| now.saturating_duration_since(t));
        let state = match failing_for {
            None => LinkState::Connected,
            Some(d) if d >= self.grace_period => LinkState::Disconnected,
            Some(_) => LinkState::Reconnecting,
        };
        let last = match since_success {
            Some(d) => format!("last successful round-trip {}s ago", d.as_secs()),
            None => "no successful round-trip yet".to_owned(),
        };
        let message = match (state, self.last_failure) {
            (LinkState::Connected, _) => match since_success {
                Some(d) => format!("Last successful round-trip {}s ago", d.as_secs()),
                None => "Connected".to_owned(),
            },
            (_, None) => format!("Waiting for the first round-trip; {last}"),
            (_, Some(FailureKind::Unauthorized)) => {
                format!("The control plane refuses the credential (401); {last}")
            }
            (_, Some(FailureKind::Network)) => {
                format!("The control plane does not answer; {last}")
            }
        };
        ConnectivitySnapshot {
            state,
            authenticated: self.authenticated,
            failing: if state == LinkState::Connected {
                None
            } else {
                self.last_failure
            },
            since_success,
            failing_for,
            message,
        }
    }

    /// When the state at the latest will change without any new input (Reconnecting turns
    /// Disconnected), so a ticker can publish it on time.
    pub fn next_deadline(&self) -> Option<Instant> {
        let start = match (self.failing_since, self.last_success) {
            (Some(since), _) => since,
            (None, Some(_)) => return None,
            (None, None) => self.started,
        };
        Some(start + self.grace_period)
    }
}

/// The shared connectivity of one mode: the machine, its watch channel and the gauge.
#[derive(Debug, Clone)]
pub struct ConnectivityHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mode: ConnectivityMode,
    machine: Mutex<Machine>,
    tx: watch::Sender<ConnectivitySnapshot>,
    metrics: Option<AgentMetrics>,
}

#[derive(Debug)]
struct Machine {
    connectivity: Connectivity,
    last_success_wall: Option<SystemTime>,
}

impl ConnectivityHandle {
    /// Starts tracking `mode` now; sets the gauge at once (reconnecting until a round-trip).
    pub fn new(
        mode: ConnectivityMode,
        grace_period: Duration,
        metrics: Option<AgentMetrics>,
    ) -> Self {
        let connectivity = Connectivity::new(grace_period, Instant::now());
        let snapshot = connectivity.snapshot(Instant::now());
        if let Some(m) = &metrics {
            m.set_connectivity(mode, snapshot.state.metric());
        }
        let (tx, _) = watch::channel(snapshot);
        ConnectivityHandle {
            inner: Arc::new(Inner {
                mode,
                machine: Mutex::new(Machine {
                    connectivity,
                    last_success_wall: None,
                }),
                tx,
                metrics,
            }),
        }
    }

    /// Reports a successful round-trip now.
    pub fn success(&self) {
        self.update(|m| {
            m.connectivity.success(Instant::now());
            m.last_success_wall = Some(SystemTime::now());
        });
    }

    /// Reports a failed round-trip now.
    pub fn failure(&self, kind: FailureKind) {
        self.update(|m| m.connectivity.failure(Instant::now(), kind));
    }

    /// Re-evaluates the state for the current time (Reconnecting → Disconnected happens by
    /// time passing alone); the [`Link`](crate::link::Link) task calls it.
    pub fn tick(&self) {
        self.update(|_| {});
    }

    /// Changes the grace period.
    pub fn set_grace_period(&self, grace_period: Duration) {
        self.update(|m| m.connectivity.set_grace_period(grace_period));
    }

    /// A fresh snapshot for now (its message's "…s ago" is current).
    pub fn current(&self) -> ConnectivitySnapshot {
        self.with_machine(|m| m.connectivity.snapshot(Instant::now()))
    }

    /// Wall-clock time of the last successful round-trip (for `status.lastHeartbeat`-like fields).
    pub fn last_success_at(&self) -> Option<SystemTime> {
        self.with_machine(|m| m.last_success_wall)
    }

    /// When the state changes next by time alone.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.with_machine(|m| m.connectivity.next_deadline())
    }

    /// Receives a snapshot at every transition (state, authenticated, failure kind).
    pub fn subscribe(&self) -> watch::Receiver<ConnectivitySnapshot> {
        self.inner.tx.subscribe()
    }

    /// The mode this handle tracks.
    pub fn mode(&self) -> ConnectivityMode {
        self.inner.mode
    }

    fn with_machine<T>(&self, f: impl FnOnce(&mut Machine) -> T) -> T {
        match self.inner.machine.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Machine)) {
        // Snapshot and publish under the lock, so two reporters cannot publish out of order.
        self.with_machine(|m| {
            f(m);
            let snapshot = m.connectivity.snapshot(Instant::now());
            if let Some(metrics) = &self.inner.metrics {
                metrics.set_connectivity(self.inner.mode, snapshot.state.metric());
            }
            self.inner.tx.send_if_modified(|current| {
                if current.key() == snapshot.key() {
                    false
                } else {
                    tracing::info!(
                        mode = %self.inner.mode,
                        from = ?current.state,
                        to = ?snapshot.state,
                        authenticated = ?snapshot.authenticated,
                        message = %snapshot.message,
                        "control-plane connectivity changed"
                    );
                    *current = snapshot;
                    true
                }
            });
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    /// (name, inputs, snapshot time, state, authenticated, failing).
    type Case = (
        &'static str,
        Vec<Step>,
        u64,
        LinkState,
        Option<bool>,
        Option<FailureKind>,
    );

    enum Step {
        Ok(u64),
        Net(u64),
        Auth(u64),
    }

    /// Each case: inputs at seconds after the start, the time of the snapshot, and what it
    /// must say.
    #[test]
    fn every_transition() {
        use LinkState::*;
        use Step::*;
        let cases: Vec<Case> = vec![
            (
                "nothing yet, inside grace",
                vec![],
                59,
                Reconnecting,
                None,
                None,
            ),
            (
                "nothing yet, grace passed",
                vec![],
                60,
                Disconnected,
                None,
                None,
            ),
            ("first success", vec![Ok(1)], 2, Connected, Some(true), None),
            (
                "success long ago is still connected",
                vec![Ok(1)],
                10_000,
                Connected,
                Some(true),
                None,
            ),
            (
                "never answered, network failing",
                vec![Net(1), Net(30)],
                59,
                Reconnecting,
                None,
                Some(FailureKind::Network),
            ),
            (
                "never answered counts from the start",
                vec![Net(30)],
                60,
                Disconnected,
                None,
                Some(FailureKind::Network),
            ),
            (
                "connected → reconnecting",
                vec![Ok(1), Net(5)],
                6,
                Reconnecting,
                Some(true),
                Some(FailureKind::Network),
            ),
            (
                "reconnecting → disconnected at grace",
                vec![Ok(1), Net(5), Net(40)],
                65,
                Disconnected,
                Some(true),
                Some(FailureKind::Network),
            ),
            (
                "just before grace",
                vec![Ok(1), Net(5)],
                64,
                Reconnecting,
                Some(true),
                Some(FailureKind::Network),
            ),
            (
                "disconnected → connected",
                vec![Ok(1), Net(5), Ok(200)],
                201,
                Connected,
                Some(true),
                None,
            ),
            (
                "a new failure period starts after a success",
                vec![Net(1), Ok(50), Net(100)],
                159,
                Reconnecting,
                Some(true),
                Some(FailureKind::Network),
            ),
            (
                "401 → unauthenticated, reconnecting",
                vec![Ok(1), Auth(5)],
                6,
                Reconnecting,
                Some(false),
                Some(FailureKind::Unauthorized),
            ),
            (
                "401 past grace → disconnected",
                vec![Auth(5)],
                65,
                Disconnected,
                Some(false),
                Some(FailureKind::Unauthorized),
            ),
            (
                "network failure keeps authenticated=false",
                vec![Auth(5), Net(6)],
                7,
                Reconnecting,
                Some(false),
                Some(FailureKind::Network),
            ),
            (
                "network failure keeps authenticated=true",
                vec![Ok(1), Net(6)],
                7,
                Reconnecting,
                Some(true),
                Some(FailureKind::Network),
            ),
            (
                "success after 401 re-authenticates",
                vec![Auth(5), Ok(9)],
                10,
                Connected,
                Some(true),
                None,
            ),
        ];
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for (name, steps, now, state, authenticated, failing) in cases {
            let mut c = Connectivity::new(GRACE, t0);
            for step in steps {
                match step {
                    Ok(s) => c.success(at(s)),
                    Net(s) => c.failure(at(s), FailureKind::Network),
                    Auth(s) => c.failure(at(s), FailureKind::Unauthorized),
                }
            }
            let snap = c.snapshot(at(now));
            assert_eq!(snap.state, state, "{name}: {snap:?}");
            assert_eq!(snap.authenticated, authenticated, "{name}");
            assert_eq!(snap.failing, failing, "{name}");
            assert_eq!(
                snap.readiness().is_ok(),
                authenticated != Some(false),
                "{name}"
            );
        }
    }

    #[test]
    fn messages_and_reasons() {
        let t0 = Instant::now();
        let mut c = Connectivity::new(GRACE, t0);
        assert_eq!(
            c.snapshot(t0).message,
            "Waiting for the first round-trip; no successful round-trip yet"
        );
        c.success(t0 + Duration::from_secs(10));
        let snap = c.snapshot(t0 + Duration::from_secs(14));
        assert_eq!(snap.message, "Last successful round-trip 4s ago");
        assert_eq!(snap.connected_reason(), "ControlPlaneReachable");
        assert_eq!(snap.authenticated_reason(), Some("CredentialValid"));
        c.failure(t0 + Duration::from_secs(20), FailureKind::Unauthorized);
        let snap = c.snapshot(t0 + Duration::from_secs(30));
        assert_eq!(
            snap.message,
            "The control plane refuses the credential (401); last successful round-trip 20s ago"
        );
        assert_eq!(snap.connected_reason(), "Reconnecting");
        assert_eq!(snap.authenticated_reason(), Some("CredentialRejected"));
        assert!(snap.readiness().unwrap_err().contains("CredentialRejected"));
        let snap = c.snapshot(t0 + Duration::from_secs(80));
        assert_eq!(snap.connected_reason(), "ControlPlaneUnreachable");
        assert_eq!(snap.failing_for, Some(Duration::from_secs(60)));
    }

    #[test]
    fn deadlines_follow_the_failing_period() {
        let t0 = Instant::now();
        let mut c = Connectivity::new(GRACE, t0);
        assert_eq!(c.next_deadline(), Some(t0 + GRACE));
        c.success(t0 + Duration::from_secs(1));
        assert_eq!(c.next_deadline(), None);
        c.failure(t0 + Duration::from_secs(5), FailureKind::Network);
        c.failure(t0 + Duration::from_secs(9), FailureKind::Network);
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(5) + GRACE));
        c.set_grace_period(Duration::from_secs(10));
        assert_eq!(
            c.snapshot(t0 + Duration::from_secs(15)).state,
            LinkState::Disconnected
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_handle_publishes_transitions_only_and_sets_the_gauge() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        let handle = ConnectivityHandle::new(ConnectivityMode::Pull, GRACE, Some(metrics));
        let gauge = |registry: &prometheus_client::registry::Registry| {
            vworkspace_telemetry::metrics::encode(registry)
                .lines()
                .find(|l| l.starts_with("vworkspace_operator_connectivity_state{"))
                .map(str::to_owned)
        };
        assert_eq!(
            gauge(&registry).as_deref(),
            Some("vworkspace_operator_connectivity_state{mode=\"pull\"} 0")
        );
        let mut rx = handle.subscribe();
        rx.mark_unchanged();
        handle.success();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().state, LinkState::Connected);
        assert_eq!(
            gauge(&registry).as_deref(),
            Some("vworkspace_operator_connectivity_state{mode=\"pull\"} 1")
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        handle.success();
        assert!(
            !rx.has_changed().unwrap(),
            "a second success is no transition"
        );
        handle.failure(FailureKind::Network);
        assert_eq!(rx.borrow_and_update().state, LinkState::Reconnecting);
        tokio::time::advance(GRACE).await;
        handle.tick();
        assert_eq!(rx.borrow_and_update().state, LinkState::Disconnected);
        assert_eq!(
            gauge(&registry).as_deref(),
            Some("vworkspace_operator_connectivity_state{mode=\"pull\"} -1")
        );
        assert!(handle.last_success_at().is_some());
    }
}
