//! Optional watches: a kind whose CRD is installed only after the controllers started.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, CustomResource};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use vworkspace_runtime::{
    Controller, KindName, Manager, RuntimeMetrics, SharedWatch, Shutdown, StopReason,
};
use vworkspace_testkit::env::{TestEnv, poll_until};

use super::{Ctx, DEADLINE, eventually, labelled, labelled_configmap, reconcile};

/// The test's own kind, in a group no other test uses.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug)]
#[kube(
    group = "optional.runtime.test.vworkspace.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    schema = "disabled"
)]
pub struct WidgetSpec {
    /// The ConfigMap this widget is about.
    target: String,
}

const RECHECK: Duration = Duration::from_secs(1);

fn widget_crd() -> Result<CustomResourceDefinition> {
    let kind = KindName::of::<Widget>();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": kind.crd_name() },
        "spec": {
            "group": kind.group,
            "names": { "kind": kind.kind, "plural": kind.plural, "singular": "widget", "listKind": "WidgetList" },
            "scope": "Namespaced",
            "versions": [{
                "name": kind.version, "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } }
            }]
        }
    }))?)
}

/// Whether discovery serves Widgets.
async fn widgets_served(client: &Client) -> Result<bool> {
    let kind = KindName::of::<Widget>();
    match client.list_api_group_resources(&kind.api_version()).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == kind.plural)),
        // An unknown group/version answers a plain-text 404, which kube turns into a
        // Status with only the code set (so `is_not_found()` does not see it).
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Delete the Widget CRD (left over by an earlier run on a long-lived cluster) and wait
/// until discovery no longer serves it.
async fn remove_widget_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = KindName::of::<Widget>().crd_name();
    match crds.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(err) => bail!("deleting {name}: {err}"),
    }
    poll_until(DEADLINE, "the Widget CRD gone", || async {
        let gone = crds.get_opt(&name).await.ok()?.is_none();
        let unserved = !widgets_served(client).await.ok()?;
        (gone && unserved).then_some(())
    })
    .await
}

#[tokio::test]
async fn an_optional_kind_installed_later_is_watched_without_restart() -> Result<()> {
    let env = TestEnv::shared().await?;
    let client = env.client.clone();
    remove_widget_crd(&client).await?;
    let namespace = env.fresh_namespace("rt-optional").await?;
    // The controllers' client counts the discovery requests asking whether Widgets are
    // served.
    let (counted, discovery) = super::shared::counting_client(
        &env,
        "/apis/optional.runtime.test.vworkspace.io/v1".to_owned(),
    )
    .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(counted.clone(), &namespace);
    let widgets: Api<Widget> = Api::namespaced(counted.clone(), &namespace);
    let mut registry = Registry::default();
    let metrics = RuntimeMetrics::register(&mut registry);

    let ns = namespace.clone();
    let target =
        move |widget: &Widget| Some(ObjectRef::<ConfigMap>::new(&widget.spec.target).within(&ns));
    // One controller watches Widgets itself, the other through an optional shared watch.
    let shared_widgets =
        SharedWatch::optional(widgets.clone(), Default::default()).recheck_interval(RECHECK);
    let own_ctx = Arc::new(Ctx::default());
    let shared_ctx = Arc::new(Ctx::default());
    let mut manager = Manager::new();
    manager
        .add(
            Controller::new("rt-optional-own", configmaps.clone(), &metrics)
                .watcher_config(labelled())
                .watches_optional(widgets.clone(), Default::default(), target.clone())
                .optional_recheck_interval(RECHECK),
            reconcile,
            Arc::clone(&own_ctx),
        )
        .add(
            Controller::new("rt-optional-shared", configmaps.clone(), &metrics)
                .watcher_config(labelled())
                .watches_shared(&shared_widgets, target),
            reconcile,
            Arc::clone(&shared_ctx),
        );
    let readiness = manager.readiness();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(manager.run(Shutdown::new(async move {
        let _ = stopped.await;
    })));
    let context = || {
        format!(
            "readiness: {:?}\nown saw {:?}\nshared saw {:?}",
            readiness.controllers(),
            own_ctx.seen(),
            shared_ctx.seen()
        )
    };
    let widget_kind = KindName::of::<Widget>();
    let all_missing = || {
        readiness
            .controllers()
            .iter()
            .all(|c| c.workers_started && c.missing_kinds() == [widget_kind.clone()])
    };

    // Without the CRD, both start their workers and report the kind missing.
    eventually(
        "both controllers started without Widgets",
        || all_missing().then_some(()),
        context,
    )
    .await;
    assert!(readiness.synced());
    assert_eq!(readiness.unsynced_message(), None);
    assert_eq!(
        readiness.missing_message().as_deref(),
        Some(
            "rt-optional-own: optional.runtime.test.vworkspace.io/v1 Widget not installed \
             (widgets.optional.runtime.test.vworkspace.io); \
             rt-optional-shared: optional.runtime.test.vworkspace.io/v1 Widget not installed \
             (widgets.optional.runtime.test.vworkspace.io)"
        )
    );
    configmaps
        .create(&PostParams::default(), &labelled_configmap("primary")?)
        .await?;
    eventually(
        "the primary object reconciled by both",
        || {
            (own_ctx.reconciles_of("primary") == 1 && shared_ctx.reconciles_of("primary") == 1)
                .then_some(())
        },
        context,
    )
    .await;

    // While the CRD is absent, a watch of it by name stands in for discovery: no
    // request asks again, though several recheck intervals pass. (An observation window,
    // not a synchronisation: the previous code asked once per interval and watch here.)
    let (asked, _) = discovery.counts();
    tokio::time::sleep(RECHECK * 4).await;
    let (asked_later, _) = discovery.counts();
    assert_eq!(
        asked_later,
        asked,
        "discovery asked {} more times while the CRD was absent",
        asked_later - asked
    );

    // The CRD appears: both start watching it, without a restart.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd()?).await?;
    eventually(
        "the missing list emptied",
        || {
            readiness
                .controllers()
                .iter()
                .all(|c| c.missing_kinds().is_empty() && c.is_synced())
                .then_some(())
        },
        context,
    )
    .await;
    assert_eq!(readiness.missing_message(), None);
    let widget: Widget = serde_json::from_value(serde_json::json!({
        "apiVersion": "optional.runtime.test.vworkspace.io/v1",
        "kind": "Widget",
        "metadata": { "name": "w" },
        "spec": { "target": "primary" }
    }))?;
    widgets.create(&PostParams::default(), &widget).await?;
    eventually(
        "the widget's target reconciled by both",
        || {
            (own_ctx.reconciles_of("primary") == 2 && shared_ctx.reconciles_of("primary") == 2)
                .then_some(())
        },
        context,
    )
    .await;
    assert!(
        shared_widgets
            .store()
            .get(&ObjectRef::new("w").within(&namespace))
            .is_some()
    );

    // The CRD goes away again: both report it missing, and keep running.
    remove_widget_crd(&client).await?;
    eventually(
        "the kind reported missing again",
        || all_missing().then_some(()),
        context,
    )
    .await;
    assert!(shared_widgets.store().is_empty());

    let _ = stop.send(());
    let stopped = tokio::time::timeout(DEADLINE, running).await??;
    assert!(
        stopped
            .iter()
            .all(|(_, s)| s.reason == StopReason::Drained && s.cut_off == 0),
        "{stopped:?}"
    );
    Ok(())
}
