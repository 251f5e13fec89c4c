//! The local cluster is a real Kubernetes: these tests exercise the parts the operator
//! relies on (namespaces, CRDs, garbage collection, Jobs on the kwok node, RBAC,
//! kubectl) against the shared cluster of the test run.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config, ResourceExt};
use vworkspace_testkit::cluster::{EXIT_CODE_ANNOTATION, FAKE_NODE};
use vworkspace_testkit::env::{TestEnv, poll_until};

const LIMIT: Duration = Duration::from_secs(90);

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(value)?)
}

#[tokio::test]
async fn namespace_is_finalized_by_the_namespace_controller() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.fresh_namespace("ns").await?;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &from_json(serde_json::json!({ "metadata": { "name": "content" } }))?,
    )
    .await?;

    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    // The namespace controller must empty the namespace and remove the `kubernetes`
    // finalizer; only then does the object disappear.
    poll_until(LIMIT, "the namespace to be finalized", || async {
        matches!(namespaces.get_opt(&ns).await, Ok(None)).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn custom_resource_definition_is_served_listed_and_watched() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.fresh_namespace("crd").await?;
    // A CRD per test run keeps tests independent; the group is unique to this test.
    let suffix = vworkspace_testkit::env::unique_suffix();
    let group = format!("g{suffix}.testkit.vworkspace.io");
    let crd_name = format!("widgets.{group}");
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.create(
        &PostParams::default(),
        &from_json(serde_json::json!({
            "metadata": { "name": crd_name },
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": { "status": {} },
                    "schema": { "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": { "type": "object", "properties": { "size": { "type": "integer" } } },
                            "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
                        }
                    }}
                }]
            }
        }))?,
    )
    .await?;
    poll_until(LIMIT, "the CRD to be Established", || async {
        let crd = crds.get(&crd_name).await.ok()?;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await?;

    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &ns, &resource);
    let mut watch = widgets.watch(&WatchParams::default(), "0").await?.boxed();

    let mut widget = DynamicObject::new("w1", &resource);
    widget.data = serde_json::json!({ "spec": { "size": 3 } });
    // Discovery may lag the Established condition by a moment; retry the create.
    poll_until(LIMIT, "the Widget to be created", || async {
        widgets
            .create(&PostParams::default(), &widget)
            .await
            .ok()
            .map(|_| ())
    })
    .await?;

    let listed = widgets.list(&ListParams::default()).await?;
    ensure!(
        listed.items.len() == 1,
        "expected one Widget, listed {}",
        listed.items.len()
    );
    ensure!(
        listed.items[0].data["spec"]["size"] == 3,
        "spec round-trips through etcd"
    );

    let added = tokio::time::timeout(LIMIT, async {
        while let Some(event) = watch.try_next().await? {
            if let WatchEvent::Added(obj) = event {
                return Ok::<_, anyhow::Error>(obj.name_any());
            }
        }
        anyhow::bail!("watch ended without an Added event")
    })
    .await
    .context("no watch event for the new Widget")??;
    ensure!(added == "w1");

    crds.delete(&crd_name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.fresh_namespace("gc").await?;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({ "metadata": { "name": "owner" } }))?,
        )
        .await?;
    cms.create(
        &PostParams::default(),
        &from_json(serde_json::json!({
            "metadata": {
                "name": "dependent",
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "name": "owner", "uid": owner.uid().context("owner has a uid")?
                }]
            }
        }))?,
    )
    .await?;
    cms.delete("owner", &DeleteParams::background()).await?;
    poll_until(LIMIT, "the dependent to be garbage-collected", || async {
        matches!(cms.get_opt("dependent").await, Ok(None)).then_some(())
    })
    .await?;
    Ok(())
}

fn job(name: &str, exit_code: Option<u8>) -> Result<Job> {
    let annotations = match exit_code {
        Some(code) => serde_json::json!({ EXIT_CODE_ANNOTATION: code.to_string() }),
        None => serde_json::json!({}),
    };
    from_json(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "annotations": annotations },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["true"] }]
                }
            }
        }
    }))
}

async fn wait_for_job_condition(jobs: &Api<Job>, name: &str, condition: &str) -> Result<()> {
    poll_until(LIMIT, &format!("Job {name} to be {condition}"), || async {
        let job = jobs.get(name).await.ok()?;
        let done = job
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == condition && c.status == "True");
        done.then_some(())
    })
    .await
}

#[tokio::test]
async fn job_completes_on_the_kwok_node_and_a_failing_job_fails() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.fresh_namespace("job").await?;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &ns);
    jobs.create(&PostParams::default(), &job("ok", None)?)
        .await?;
    jobs.create(&PostParams::default(), &job("boom", Some(3))?)
        .await?;

    wait_for_job_condition(&jobs, "ok", "Complete").await?;
    wait_for_job_condition(&jobs, "boom", "Failed").await?;

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let ok_pods = pods
        .list(&ListParams::default().labels("job-name=ok"))
        .await?;
    ensure!(
        !ok_pods.items.is_empty(),
        "the Job's pod is kept after completion"
    );
    for pod in &ok_pods.items {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        ensure!(
            node.as_deref() == Some(FAKE_NODE),
            "pod scheduled onto {node:?}"
        );
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        ensure!(phase.as_deref() == Some("Succeeded"), "pod phase {phase:?}");
    }
    let boom = jobs.get("boom").await?;
    let failed = boom.status.and_then(|s| s.failed).unwrap_or_default();
    ensure!(failed == 1, "the failing Job counted {failed} failed pods");
    Ok(())
}

#[tokio::test]
async fn rbac_forbids_a_service_account_without_permissions() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.fresh_namespace("rbac").await?;
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &ns);
    sas.create(
        &PostParams::default(),
        &from_json(serde_json::json!({ "metadata": { "name": "nobody" } }))?,
    )
    .await?;
    let token: TokenRequest = sas
        .create_subresource(
            "token",
            "nobody",
            &PostParams::default(),
            &from_json::<TokenRequest>(serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": { "expirationSeconds": 600 }
            }))?,
        )
        .await?;
    let token = token
        .status
        .and_then(|s| s.token)
        .context("the token request returned a token")?;

    let mut config = Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&env.kubeconfig)?,
        &Default::default(),
    )
    .await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let nobody = Client::try_from(config)?;

    // The token authenticates (a whoami works) ...
    let who = nobody
        .request_text(http::Request::get("/version").body(Vec::new())?)
        .await;
    ensure!(
        who.is_ok(),
        "an authenticated identity may read /version: {who:?}"
    );
    // ... but RBAC grants it nothing in the namespace.
    let pods: Api<Pod> = Api::namespaced(nobody, &ns);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        other => anyhow::bail!("expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn built_kubectl_talks_to_the_cluster() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.fresh_namespace("kubectl").await?;
    let out = env.kubectl().args(["version", "-o", "json"]).output()?;
    ensure!(
        out.status.success(),
        "kubectl version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pinned = vworkspace_testkit::binaries::KUBERNETES_VERSION;
    ensure!(
        version["clientVersion"]["gitVersion"] == pinned,
        "client: {version}"
    );
    ensure!(
        version["serverVersion"]["gitVersion"] == pinned,
        "server: {version}"
    );

    let out = env
        .kubectl()
        .args([
            "create",
            "configmap",
            "made-by-kubectl",
            "-n",
            &ns,
            "--from-literal=k=v",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &ns);
    let cm = cms.get("made-by-kubectl").await?;
    ensure!(cm.data.unwrap_or_default().get("k").map(String::as_str) == Some("v"));

    let out = env
        .kubectl()
        .args(["get", "nodes", "-o", "name"])
        .output()?;
    let nodes = String::from_utf8_lossy(&out.stdout);
    ensure!(
        nodes.trim() == format!("node/{FAKE_NODE}"),
        "nodes: {nodes}"
    );
    Ok(())
}
