//! Two controllers on one shared watch: one list and one watch request, both reconcile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use http::{Method, Request};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use vworkspace_runtime::{
    Controller, Manager, RuntimeMetrics, SharedWatch, Shutdown, StopReason, SyncState,
};
use vworkspace_testkit::env::TestEnv;

use super::{Ctx, DEADLINE, LABEL, eventually, labelled, labelled_configmap, reconcile, scrape};

/// The list and watch requests made for one collection path.
#[derive(Debug, Default)]
pub(super) struct Requests {
    lists: AtomicUsize,
    watches: AtomicUsize,
}

impl Requests {
    pub(super) fn counts(&self) -> (usize, usize) {
        (
            self.lists.load(Ordering::SeqCst),
            self.watches.load(Ordering::SeqCst),
        )
    }
}

/// A tower layer on the test's client that counts GETs of `path` — a list, or with
/// `watch=true` (or `=1`) a watch.
#[derive(Clone)]
struct CountRequests {
    path: String,
    requests: Arc<Requests>,
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    layer: CountRequests,
}

impl<S, B> tower::Service<Request<B>> for Counted<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.method() == Method::GET && request.uri().path() == self.layer.path {
            let watch = request
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1");
            let counter = if watch {
                &self.layer.requests.watches
            } else {
                &self.layer.requests.lists
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.call(request)
    }
}

/// A client of the shared cluster that counts the requests for `path`.
pub(super) async fn counting_client(
    env: &TestEnv,
    path: String,
) -> Result<(Client, Arc<Requests>)> {
    let kubeconfig = Kubeconfig::read_from(&env.kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let requests = Arc::new(Requests::default());
    let layer = CountRequests {
        path,
        requests: Arc::clone(&requests),
    };
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build();
    Ok((client, requests))
}

#[tokio::test]
async fn two_controllers_share_one_watch_and_both_reconcile_on_a_child_change() -> Result<()> {
    let env = TestEnv::shared().await?;
    let namespace = env.fresh_namespace("rt-shared").await?;
    let (client, requests) =
        counting_client(&env, format!("/api/v1/namespaces/{namespace}/secrets")).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut registry = Registry::default();
    let metrics = RuntimeMetrics::register(&mut registry);

    let children = SharedWatch::new(secrets.clone(), labelled());
    // "owner" follows the children's controller owner; "target" the label naming it.
    let owner_ctx = Arc::new(Ctx::default());
    let target_ctx = Arc::new(Ctx::default());
    let ns = namespace.clone();
    let mut manager = Manager::new();
    manager
        .add(
            Controller::new("rt-shared-owner", configmaps.clone(), &metrics)
                .watcher_config(labelled())
                .owns_shared(&children),
            reconcile,
            Arc::clone(&owner_ctx),
        )
        .add(
            Controller::new("rt-shared-target", configmaps.clone(), &metrics)
                .watcher_config(labelled())
                .watches_shared(&children, move |secret: &Secret| {
                    secret
                        .labels()
                        .get("target")
                        .map(|target| ObjectRef::<ConfigMap>::new(target).within(&ns))
                }),
            reconcile,
            Arc::clone(&target_ctx),
        );
    let readiness = manager.readiness();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(manager.run(Shutdown::new(async move {
        let _ = stopped.await;
    })));
    let context = || {
        format!(
            "requests (lists, watches): {:?}; readiness: {:?}\nowner saw {:?}\ntarget saw {:?}",
            requests.counts(),
            readiness.controllers(),
            owner_ctx.seen(),
            target_ctx.seen()
        )
    };
    eventually(
        "both controllers synced",
        || readiness.synced().then_some(()),
        context,
    )
    .await;
    eventually(
        "the shared watch opened",
        || (requests.counts().1 >= 1).then_some(()),
        context,
    )
    .await;
    assert_eq!(children.state(), SyncState::Synced);
    let shared_watches: Vec<bool> = readiness
        .controllers()
        .iter()
        .map(|c| c.watches[1].shared)
        .collect();
    assert_eq!(shared_watches, [true, true]);

    let parent = configmaps
        .create(&PostParams::default(), &labelled_configmap("parent")?)
        .await?;
    eventually(
        "the first reconcile of parent by both",
        || {
            (owner_ctx.reconciles_of("parent") == 1 && target_ctx.reconciles_of("parent") == 1)
                .then_some(())
        },
        context,
    )
    .await;

    let uid = parent.metadata.uid.clone().context("parent uid")?;
    let child: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "child",
            "labels": { LABEL: "yes", "target": "parent" },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid,
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "stringData": { "k": "v1" }
    }))?;
    secrets.create(&PostParams::default(), &child).await?;
    eventually(
        "both controllers reconciling parent for the child's creation",
        || {
            (owner_ctx.reconciles_of("parent") == 2 && target_ctx.reconciles_of("parent") == 2)
                .then_some(())
        },
        context,
    )
    .await;
    // Both reconciles could read the child from the one cache.
    assert!(
        children
            .store()
            .get(&ObjectRef::new("child").within(&namespace))
            .is_some()
    );

    secrets
        .patch(
            "child",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "stringData": { "k": "v2" } })),
        )
        .await?;
    eventually(
        "both controllers reconciling parent for the child's update",
        || {
            (owner_ctx.reconciles_of("parent") == 3 && target_ctx.reconciles_of("parent") == 3)
                .then_some(())
        },
        context,
    )
    .await;

    // One watch served both: a single list and a single watch of the Secrets.
    assert_eq!(requests.counts(), (1, 1), "{}", context());
    // Each controller still has its own queue and series.
    let scraped = scrape(&registry);
    for name in ["rt-shared-owner", "rt-shared-target"] {
        assert_eq!(
            scraped.value(
                "controller_runtime_reconcile_total",
                &[("controller", name), ("result", "success")]
            ),
            Some(3.0),
            "{name}"
        );
        assert_eq!(
            scraped.value("workqueue_depth", &[("controller", name), ("name", name)]),
            Some(0.0),
            "{name}"
        );
    }

    let _ = stop.send(());
    let stopped = tokio::time::timeout(DEADLINE, running).await??;
    assert!(
        stopped
            .iter()
            .all(|(_, s)| s.reason == StopReason::Drained && s.cut_off == 0),
        "{stopped:?}"
    );
    // The last subscriber gone, the shared watch stopped.
    assert_eq!(children.state(), SyncState::Pending);
    Ok(())
}
