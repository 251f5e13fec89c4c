//! Who this operator speaks for: `cluster_id` and `org_id`, taken from the one Cluster
//! CR in the operator's namespace (its name and `spec.orgId`).
//!
//! `--cluster-id` and `--org-id` are explicit overrides. They never replace the
//! Cluster: each must agree with it, or the readiness sub-check `cluster` fails and
//! says which one disagrees. With both given the identity is known without the API
//! server, so the controllers start at once and the check reports the disagreement;
//! otherwise the operator waits, with `cluster` failing and naming why, until exactly
//! one Cluster (agreeing with whatever flag was given) exists.
//!
//! The identity is fixed for the life of the process (it is in every log line, every
//! audit event id and the Cluster controller's key). A Cluster that changes name or
//! orgId afterwards makes `cluster` fail with a request to restart, never a silent
//! switch.

use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use vworkspace_api::cluster::Cluster;

/// The ids every log line and audit event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `Cluster.metadata.name`.
    pub cluster_id: String,
    /// `Cluster.spec.orgId`.
    pub org_id: String,
}

/// `--cluster-id` and `--org-id`, each optional.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--cluster-id`.
    pub cluster_id: Option<String>,
    /// `--org-id`.
    pub org_id: Option<String>,
}

impl Overrides {
    /// Both flags given: the identity is explicit and needs no Cluster to start.
    pub fn explicit(&self) -> Option<Identity> {
        Some(Identity {
            cluster_id: self.cluster_id.clone()?,
            org_id: self.org_id.clone()?,
        })
    }
}

/// The identity the Clusters in `namespace` give, or why there is none.
pub fn resolve(
    clusters: &[Arc<Cluster>],
    namespace: &str,
    overrides: &Overrides,
) -> Result<Identity, String> {
    let mut names: Vec<String> = clusters.iter().map(|c| c.name_any()).collect();
    names.sort();
    if names.is_empty() {
        return Err(match &overrides.cluster_id {
            Some(id) => {
                format!("no Cluster in {namespace}; create {namespace}/{id} (the cluster id)")
            }
            None => format!(
                "no Cluster in {namespace}; create one (its name is the cluster id, its \
                 spec.orgId the organization)"
            ),
        });
    }
    let cluster = match &overrides.cluster_id {
        Some(id) => match clusters.iter().find(|c| c.name_any() == *id) {
            Some(c) => c,
            None => {
                return Err(format!(
                    "no Cluster named {id} in {namespace} (found: {}); the name must be the \
                     cluster id given by --cluster-id",
                    names.join(", ")
                ));
            }
        },
        None => &clusters[0],
    };
    if names.len() > 1 {
        return Err(format!(
            "{} Clusters in {namespace} ({}); exactly one is expected",
            names.len(),
            names.join(", ")
        ));
    }
    if let Some(org) = &overrides.org_id
        && cluster.spec.org_id != *org
    {
        return Err(format!(
            "Cluster {} says orgId {:?} but the operator runs with --org-id {org:?}",
            cluster.name_any(),
            cluster.spec.org_id
        ));
    }
    Ok(Identity {
        cluster_id: cluster.name_any(),
        org_id: cluster.spec.org_id.clone(),
    })
}

/// The readiness verdict once the process runs as `running`: the Clusters must still
/// give exactly that identity.
pub fn check(
    clusters: &[Arc<Cluster>],
    namespace: &str,
    overrides: &Overrides,
    running: &Identity,
) -> Result<(), String> {
    let now = resolve(clusters, namespace, overrides)?;
    if now.cluster_id != running.cluster_id {
        return Err(format!(
            "the Cluster in {namespace} is now {} but the operator runs as {}; restart it to \
             take the new cluster id",
            now.cluster_id, running.cluster_id
        ));
    }
    if now.org_id != running.org_id {
        return Err(format!(
            "Cluster {} now says orgId {:?} but the operator took {:?} at start; restart it \
             to take the new orgId",
            now.cluster_id, now.org_id, running.org_id
        ));
    }
    Ok(())
}

/// The state of the watch on Clusters.
#[derive(Clone, Debug, Default)]
pub enum WatchState {
    /// The first list has not completed yet.
    #[default]
    Listing,
    /// Listing or watching fails (the message says why); the cache keeps what it had.
    Failing(String),
    /// The cache holds every Cluster of the namespace.
    Synced,
}

/// A cache of the Clusters in the operator's namespace, kept by [`Clusters::watch`] for
/// the life of the process: the start-up wait and the `cluster` check read it.
#[derive(Clone)]
pub struct Clusters {
    /// The operator's namespace.
    pub namespace: String,
    store: Store<Cluster>,
    state: watch::Receiver<(WatchState, u64)>,
    /// The identity the process runs with, once known.
    running: Arc<Mutex<Option<Identity>>>,
    overrides: Overrides,
}

impl Clusters {
    /// Start watching the Clusters of `namespace`.
    pub fn watch(client: Client, namespace: &str, overrides: Overrides) -> Self {
        let (store, writer) = reflector::store();
        let (tx, state) = watch::channel((WatchState::Listing, 0));
        let api: Api<Cluster> = Api::namespaced(client, namespace);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            let mut synced = false;
            // One line when the watch starts failing and one when it recovers, however
            // many retries there are in between (an outage must not flood the log).
            let mut failing = false;
            while let Some(event) = stream.next().await {
                if event.is_ok() && std::mem::take(&mut failing) {
                    tracing::info!("watching Clusters again");
                }
                let next = match event {
                    Ok(watcher::Event::InitDone) => {
                        synced = true;
                        WatchState::Synced
                    }
                    Ok(_) if synced => WatchState::Synced,
                    Ok(_) => WatchState::Listing,
                    Err(err) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %err, "cannot watch Clusters; retrying");
                        }
                        WatchState::Failing(format!("cannot list or watch Clusters: {err}"))
                    }
                };
                tx.send_modify(|(state, n)| {
                    // After a failure the cache still holds the last list: keep using it
                    // once it had synced, but say why nothing new arrives.
                    *state = next;
                    *n += 1;
                });
            }
        });
        Self {
            namespace: namespace.to_owned(),
            store,
            state,
            running: Arc::default(),
            overrides,
        }
    }

    /// The identity as the cache shows it now.
    fn resolve_now(&self) -> Result<Identity, String> {
        match &self.state.borrow().0 {
            WatchState::Listing => {
                return Err(format!("listing the Clusters in {}", self.namespace));
            }
            WatchState::Failing(reason) if self.store.is_empty() => return Err(reason.clone()),
            WatchState::Failing(_) | WatchState::Synced => {}
        }
        resolve(&self.store.state(), &self.namespace, &self.overrides)
    }

    /// Wait until the Clusters give an identity (exactly one, agreeing with the
    /// overrides), logging each new reason once. Returns it and records it as the one
    /// the process runs with.
    pub async fn wait_for_identity(&self) -> Identity {
        let mut state = self.state.clone();
        let mut last_reason = String::new();
        loop {
            match self.resolve_now() {
                Ok(identity) => {
                    self.run_as(identity.clone());
                    return identity;
                }
                Err(reason) => {
                    if reason != last_reason {
                        tracing::warn!(
                            reason = %reason,
                            "waiting for the Cluster: the controllers start once exactly one \
                             exists"
                        );
                        last_reason = reason;
                    }
                }
            }
            if state.changed().await.is_err() {
                // The watch task never ends while the process runs.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Record the identity the process runs with (explicit flags, or the Cluster's).
    pub fn run_as(&self, identity: Identity) {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(identity);
    }

    /// The readiness sub-check `cluster`.
    pub fn readiness(&self) -> Result<(), String> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match running {
            None => self.resolve_now().map(|_| ()),
            Some(running) => {
                self.resolve_now()?;
                check(
                    &self.store.state(),
                    &self.namespace,
                    &self.overrides,
                    &running,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, org: &str) -> Arc<Cluster> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "vworkspace.io/v1alpha1",
                "kind": "Cluster",
                "metadata": { "name": name, "namespace": "vws" },
                "spec": { "orgId": org, "mode": "pull" },
            }))
            .expect("a valid Cluster"),
        )
    }

    fn flags(cluster_id: Option<&str>, org_id: Option<&str>) -> Overrides {
        Overrides {
            cluster_id: cluster_id.map(str::to_owned),
            org_id: org_id.map(str::to_owned),
        }
    }

    #[test]
    fn the_one_cluster_gives_the_identity() {
        let got = resolve(&[cluster("prod-1", "team")], "vws", &flags(None, None));
        assert_eq!(
            got,
            Ok(Identity {
                cluster_id: "prod-1".into(),
                org_id: "team".into()
            })
        );
    }

    #[test]
    fn none_or_two_is_a_reason_never_a_default() {
        let none = resolve(&[], "vws", &flags(None, None)).unwrap_err();
        assert!(none.contains("no Cluster in vws"), "{none}");
        let named = resolve(&[], "vws", &flags(Some("prod-1"), None)).unwrap_err();
        assert!(named.contains("create vws/prod-1"), "{named}");
        let two = resolve(
            &[cluster("b", "team"), cluster("a", "team")],
            "vws",
            &flags(None, None),
        )
        .unwrap_err();
        assert!(two.contains("2 Clusters in vws (a, b)"), "{two}");
        let two_named = resolve(
            &[cluster("b", "team"), cluster("a", "team")],
            "vws",
            &flags(Some("a"), Some("team")),
        )
        .unwrap_err();
        assert!(two_named.contains("2 Clusters"), "{two_named}");
    }

    #[test]
    fn overrides_must_agree() {
        let name = resolve(&[cluster("a", "team")], "vws", &flags(Some("b"), None)).unwrap_err();
        assert!(
            name.contains("no Cluster named b") && name.contains("found: a"),
            "{name}"
        );
        let org = resolve(&[cluster("a", "team")], "vws", &flags(None, Some("other"))).unwrap_err();
        assert!(
            org.contains("\"team\"") && org.contains("--org-id \"other\""),
            "{org}"
        );
        assert!(
            resolve(
                &[cluster("a", "team")],
                "vws",
                &flags(Some("a"), Some("team"))
            )
            .is_ok()
        );
        assert_eq!(
            flags(Some("a"), Some("team")).explicit(),
            Some(Identity {
                cluster_id: "a".into(),
                org_id: "team".into()
            })
        );
        assert_eq!(flags(Some("a"), None).explicit(), None);
    }

    #[test]
    fn a_changed_cluster_after_start_asks_for_a_restart() {
        let running = Identity {
            cluster_id: "a".into(),
            org_id: "team".into(),
        };
        assert!(check(&[cluster("a", "team")], "vws", &flags(None, None), &running).is_ok());
        let org = check(&[cluster("a", "new")], "vws", &flags(None, None), &running).unwrap_err();
        assert!(org.contains("restart") && org.contains("\"new\""), "{org}");
        let name = check(&[cluster("b", "team")], "vws", &flags(None, None), &running).unwrap_err();
        assert!(name.contains("now b") && name.contains("restart"), "{name}");
    }
}
