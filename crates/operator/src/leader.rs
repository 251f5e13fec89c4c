//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's timing
//! (lease 15s, renew deadline 10s, retry 2s).
//!
//! Invariants:
//! * every write is a `replace` conditioned on the Lease's `resourceVersion`, so two
//!   replicas can never both believe they acquired it: the loser gets 409;
//! * a leader that cannot renew within the renew deadline stops leading, and the
//!   process exits (as controller-runtime's manager does) so nothing keeps reconciling
//!   on a stale belief; on a clean shutdown the Lease is released so a standby takes
//!   over at once instead of waiting for expiry.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// Lease timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a holder's claim lasts without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long gives up.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

/// How one attempt ended.
enum Attempt {
    Leading,
    Following(String),
}

impl Elector {
    /// A candidate for Lease `namespace/name` under `identity` (the pod name).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
        }
    }

    /// Campaign forever. `leading` turns true when the Lease is ours; if a leader cannot
    /// renew in time, `leading` turns false and the function returns (the caller exits).
    pub async fn run(self, leading: watch::Sender<bool>) {
        let mut last_renew: Option<Instant> = None;
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    if last_renew.is_none() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    }
                    last_renew = Some(Instant::now());
                    leading.send_replace(true);
                }
                Ok(Attempt::Following(holder)) => {
                    if last_renew.is_some() {
                        tracing::error!(lease = %self.name, holder, "leadership lost to another replica");
                        leading.send_replace(false);
                        return;
                    }
                    if holder != last_holder {
                        tracing::info!(lease = %self.name, holder, "waiting: another replica leads");
                        last_holder = holder;
                    }
                }
                Err(err) => {
                    tracing::warn!(lease = %self.name, error = %err, "leader election attempt failed");
                    if let Some(at) = last_renew
                        && at.elapsed() > self.timing.renew_deadline
                    {
                        tracing::error!(lease = %self.name, "could not renew the lease in time; giving up leadership");
                        leading.send_replace(false);
                        return;
                    }
                }
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.claim(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following(String::new())),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let expired = renewed + SignedDuration::from_secs(duration) < now;
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(Attempt::Following(holder));
        }
        lease.spec = Some(self.claim(Some(&spec), now));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following(holder)),
            Err(err) => Err(err),
        }
    }

    fn claim(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                self.timing
                    .lease_duration
                    .as_secs()
                    .try_into()
                    .unwrap_or(15),
            ),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// Give the Lease up (clean shutdown) so a standby need not wait for expiry.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(err) => {
                tracing::warn!(lease = %self.name, error = %err, "could not release the lease")
            }
        }
    }
}
