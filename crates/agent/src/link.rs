//! The heartbeat task of Pull mode: sends a [`Heartbeat`] every `heartbeatInterval`, keeps
//! the connectivity state current when no other traffic flows, and mirrors it into the
//! `controlplane` readiness sub-check.
//!
//! Invariants:
//! * a heartbeat goes out at start and then every `heartbeat_interval` (measured from the
//!   previous attempt's start, so a slow control plane does not stretch the cadence);
//! * the connectivity handle is ticked at every heartbeat and at its own next deadline, so
//!   `Disconnected` is published when the grace period runs out even if every request hangs;
//! * the readiness sub-check fails exactly while the control plane refuses the credential
//!   (401); a network failure leaves it passing ([`ConnectivitySnapshot::readiness`]);
//! * the heartbeat's round-trips reach connectivity through the [`HttpClient`] built
//!   [`with_connectivity`](HttpClient::with_connectivity), like every other request.
//!
//! [`ConnectivitySnapshot::readiness`]: crate::connectivity::ConnectivitySnapshot::readiness

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vworkspace_api::agent_api::Heartbeat;
use vworkspace_telemetry::health::CheckHandle;

use crate::client::HttpClient;
use crate::connectivity::ConnectivityHandle;

/// Name of the readiness sub-check the link drives.
pub const READINESS_CHECK: &str = "controlplane";

/// What the heartbeat says about this operator.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `Cluster.metadata.name`.
    pub cluster_id: String,
    /// The operator's version.
    pub operator_version: String,
    /// `spec.connectivity.heartbeatInterval`.
    pub heartbeat_interval: Duration,
}

/// The heartbeat task's inputs.
pub struct Link {
    client: HttpClient,
    connectivity: ConnectivityHandle,
    config: LinkConfig,
    pending_events: Arc<dyn Fn() -> u64 + Send + Sync>,
    readiness: Option<CheckHandle>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("client", &self.client)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// `pending_events` reads the shipper's depth for each heartbeat
    /// (e.g. `move || shipper.status().pending as u64`).
    pub fn new(
        client: HttpClient,
        connectivity: ConnectivityHandle,
        config: LinkConfig,
        pending_events: Arc<dyn Fn() -> u64 + Send + Sync>,
        readiness: Option<CheckHandle>,
    ) -> Self {
        Link {
            client,
            connectivity,
            config,
            pending_events,
            readiness,
        }
    }

    /// Runs until `stop` turns true (or its sender is dropped).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let interval = self
            .config
            .heartbeat_interval
            .max(Duration::from_millis(100));
        let mut next_heartbeat = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= next_heartbeat {
                next_heartbeat = now + interval;
                let heartbeat = Heartbeat {
                    cluster_id: self.config.cluster_id.clone(),
                    operator_version: self.config.operator_version.clone(),
                    pending_events: (self.pending_events)(),
                };
                let result = tokio::select! {
                    r = self.client.heartbeat(&heartbeat) => r,
                    _ = stop.changed() => return,
                };
                match result {
                    Ok(ack) => {
                        tracing::debug!(server_time = %ack.server_time, "heartbeat acknowledged")
                    }
                    Err(error) => tracing::warn!(
                        %error,
                        category = error.category(),
                        "heartbeat to the control plane failed"
                    ),
                }
            }
            self.connectivity.tick();
            if let Some(check) = &self.readiness {
                check.set(self.connectivity.current().readiness());
            }
            let wake = match self.connectivity.next_deadline() {
                Some(deadline) if deadline > tokio::time::Instant::now() => {
                    deadline.min(next_heartbeat)
                }
                _ => next_heartbeat,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
