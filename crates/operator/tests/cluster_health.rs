//! Conditions of the Cluster flipped for real and back: a Cluster reconcile that fails
//! (an operator identity that may not read CRDs) is reported on the Cluster; a
//! controller whose caches cannot sync (an identity lacking list on its kinds) makes
//! `ControllersHealthy` False; a served CRD schema that drifts from the compiled one
//! makes `CRDsRegistered` False; a catalog ConfigMap that does not parse makes
//! `OperationCatalogValid` False.
//!
//! Its own test binary on purpose: cargo runs test binaries one after another, and
//! the schema drift of `auditbatches.vworkspace.io` (the Push-mode CRD no other test
//! uses) would show in the Cluster of every operator running at the same time. The
//! drift is removed again whatever the outcome.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vworkspace_api::Cluster;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::fixtures::OperatorProcess;

mod common;

use common::{CLUSTER_ID, OPERATOR, ORG_ID, create_cluster, install_crds, spawn_operator};

const LIMIT: Duration = Duration::from_secs(90);
const DRIFTED_CRD: &str = "auditbatches.vworkspace.io";
/// The property the drift adds to the served schema (optional: no object changes).
const DRIFT_PROPERTY: &str = "e2eDrift";

/// `(status, reason, message)` of condition `type_`.
fn condition(c: &Cluster, type_: &str) -> Option<(String, String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.clone(), x.reason.clone(), x.message.clone()))
}

async fn wait_condition(
    api: &Api<Cluster>,
    type_: &str,
    status: &str,
    reason: &str,
) -> Result<String> {
    poll_until(LIMIT, &format!("{type_}={status}/{reason}"), || async {
        let c = api.get(CLUSTER_ID).await.ok()?;
        condition(&c, type_)
            .filter(|(s, r, _)| s == status && r == reason)
            .map(|(_, _, m)| m)
    })
    .await
}

/// `(reason, type, note)` of the Events on the Cluster, oldest first.
async fn cluster_events(env: &TestEnv, ns: &str) -> Result<Vec<(String, String, String)>> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    let mut list = events
        .list(&ListParams::default().fields(&format!("regarding.name={CLUSTER_ID}")))
        .await?
        .items;
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    Ok(list
        .into_iter()
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.type_.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

async fn wait_event(
    env: &TestEnv,
    ns: &str,
    reason: &str,
    type_: &str,
) -> Result<(String, String, String)> {
    poll_until(LIMIT, &format!("a {type_} Event {reason}"), || async {
        cluster_events(env, ns)
            .await
            .ok()?
            .into_iter()
            .find(|(r, t, _)| r == reason && t == type_)
    })
    .await
}

/// A reconcile of the Cluster on demand (a change of the Cluster reconciles it), so a
/// retry does not wait out the backoff.
async fn poke(api: &Api<Cluster>) -> Result<()> {
    api.patch(
        CLUSTER_ID,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": {
            "e2e.vworkspace.io/poke": unique_suffix()
        } } })),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_reconcile_and_unsynced_caches_reach_the_cluster() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("cluster-rbac").await?;
    create_cluster(&env, &ns, "push").await?;
    let sa = "operator";
    Api::<ServiceAccount>::namespaced(env.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": sa } }))?,
        )
        .await?;
    // In its namespace: the Cluster, its status and Events — and nothing of the
    // ApplicationInstance and Operation controllers, whose caches cannot sync.
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "cluster-only" },
                "rules": [
                    { "apiGroups": ["vworkspace.io"], "resources": ["clusters"], "verbs": ["get", "list", "watch"] },
                    { "apiGroups": ["vworkspace.io"], "resources": ["clusters/status"], "verbs": ["get", "patch"] },
                    { "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"] },
                    { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"] }
                ]
            }))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(env.client.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "cluster-only" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cluster-only" },
                "subjects": [{ "kind": "ServiceAccount", "name": sa, "namespace": ns }]
            }))?,
        )
        .await?;
    // Cluster-wide, for this service account only: the namespaces (and, later, CRDs).
    let cluster_role = format!("vws-{ns}-cluster");
    let cluster_roles: Api<ClusterRole> = Api::all(env.client.clone());
    let role_with = |crds: bool| -> Result<ClusterRole> {
        let mut rules = vec![json!({
            "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]
        })];
        if crds {
            rules.push(json!({
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["get", "list", "watch"]
            }));
        }
        Ok(serde_json::from_value(json!({
            "metadata": { "name": cluster_role },
            "rules": rules
        }))?)
    };
    cluster_roles
        .create(&PostParams::default(), &role_with(false)?)
        .await?;
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    cluster_bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": cluster_role },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role },
                "subjects": [{ "kind": "ServiceAccount", "name": sa, "namespace": ns }]
            }))?,
        )
        .await?;
    let kubeconfig = env.kubeconfig_for_service_account(&ns, sa).await?;
    let dir = std::env::temp_dir().join(format!("vws-e2e-{ns}-restricted"));
    let mut op = OperatorProcess::spawn(
        Path::new(OPERATOR),
        &kubeconfig,
        &dir,
        &[
            &format!("--watch-namespace={ns}"),
            &format!("--namespace={ns}"),
            "--identity=restricted",
            &format!("--cluster-id={CLUSTER_ID}"),
            &format!("--org-id={ORG_ID}"),
            "--cluster-resync=2s",
        ],
    )?;
    let api: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);

    // 1. Discovery may not read CRDs: the reconcile fails, and says so on the Cluster.
    let message = wait_condition(&api, "ControllersHealthy", "False", "ReadFailed").await?;
    ensure!(
        message.contains("CustomResourceDefinitions") && message.contains("403"),
        "names what failed and why: {message}"
    );
    let (_, _, note) = wait_event(&env, &ns, "ReadFailed", "Warning").await?;
    ensure!(note == message, "the Event says what the condition says");

    // 2. CRDs readable: the reconcile succeeds, and the controllers whose caches cannot
    //    sync are named.
    cluster_roles
        .replace(&cluster_role, &PostParams::default(), &{
            let mut role = role_with(true)?;
            role.metadata.resource_version = cluster_roles
                .get(&cluster_role)
                .await?
                .metadata
                .resource_version;
            role
        })
        .await?;
    poke(&api).await?;
    let message =
        wait_condition(&api, "ControllersHealthy", "False", "ControllersNotReady").await?;
    ensure!(
        message.contains("applicationinstance: cache of")
            && message.contains("ApplicationInstance not synced"),
        "names the controller and the cache: {message}"
    );
    wait_event(&env, &ns, "ControllersNotReady", "Warning").await?;
    // Discovery now works: CRDsRegistered is reported (the first report of the Cluster
    // failed before writing any). The drift test of this binary may run meanwhile, so
    // either verdict on the schemas will do.
    let crds = condition(&api.get(CLUSTER_ID).await?, "CRDsRegistered");
    ensure!(
        crds.as_ref()
            .is_some_and(|(_, r, _)| r == "SchemaMatches" || r == "SchemaMismatch"),
        "the discovery that failed before now reports the CRDs: {crds:?}"
    );

    // 3. Everything the operator needs: every cache syncs, the condition recovers.
    cluster_bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": format!("{cluster_role}-admin") },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
                "subjects": [{ "kind": "ServiceAccount", "name": sa, "namespace": ns }]
            }))?,
        )
        .await?;
    wait_condition(&api, "ControllersHealthy", "True", "AllControllersReady").await?;
    wait_event(&env, &ns, "AllControllersReady", "Normal").await?;
    let reasons: Vec<String> = cluster_events(&env, &ns)
        .await?
        .into_iter()
        .map(|(r, _, _)| r)
        .filter(|r| r == "ReadFailed")
        .collect();
    ensure!(
        reasons.len() == 1,
        "one Warning per entry into the failure, not per retry: {reasons:?}"
    );
    op.ensure_running()?;
    let _ = op.terminate();
    for name in [cluster_role.clone(), format!("{cluster_role}-admin")] {
        let _ = cluster_bindings
            .delete(&name, &DeleteParams::default())
            .await;
    }
    let _ = cluster_roles
        .delete(&cluster_role, &DeleteParams::default())
        .await;
    Ok(())
}

/// Add (or remove) the drift property in the served schema of [`DRIFTED_CRD`],
/// retrying when another writer (a test installing the CRDs) got there first.
async fn drift(crds: &Api<CustomResourceDefinition>, add: bool) -> Result<()> {
    let mut attempts = 0;
    loop {
        match try_drift(crds, add).await {
            Err(err)
                if attempts < 5
                    && err
                        .downcast_ref::<kube::Error>()
                        .is_some_and(|e| matches!(e, kube::Error::Api(s) if s.code == 409)) =>
            {
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// Whether the served schema of [`DRIFTED_CRD`] holds the drift property.
async fn drift_present(crds: &Api<CustomResourceDefinition>) -> Result<bool> {
    let live = serde_json::to_value(crds.get(DRIFTED_CRD).await?)?;
    Ok(live
        .pointer(&format!(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/{DRIFT_PROPERTY}"
        ))
        .is_some())
}

async fn try_drift(crds: &Api<CustomResourceDefinition>, add: bool) -> Result<()> {
    let live = crds.get(DRIFTED_CRD).await?;
    let mut value = serde_json::to_value(&live)?;
    let properties = value
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
        .and_then(serde_json::Value::as_object_mut)
        .context("the CRD has spec properties")?;
    if add {
        properties.insert(
            DRIFT_PROPERTY.to_owned(),
            json!({ "type": "string", "description": "drift of an e2e test" }),
        );
    } else {
        properties.remove(DRIFT_PROPERTY);
    }
    crds.replace(
        DRIFTED_CRD,
        &PostParams::default(),
        &serde_json::from_value(value)?,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_drifted_crd_schema_is_named_and_recovers() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("cluster-crd").await?;
    create_cluster(&env, &ns, "push").await?;
    let mut op = spawn_operator(
        &env,
        &ns,
        &format!("op-{}", unique_suffix()),
        &["--cluster-resync=1s"],
    )?;
    let api: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    wait_condition(&api, "CRDsRegistered", "True", "SchemaMatches").await?;

    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let drifted = async {
        // Another test of this file installing the CRDs at the same moment re-applies
        // the compiled schema and so undoes the drift: put it back until it is seen.
        let message = poll_until(LIMIT, "CRDsRegistered=False/SchemaMismatch", || async {
            if !drift_present(&crds).await.ok()? {
                drift(&crds, true).await.ok()?;
            }
            condition(&api.get(CLUSTER_ID).await.ok()?, "CRDsRegistered")
                .filter(|(s, r, _)| s == "False" && r == "SchemaMismatch")
                .map(|(_, _, m)| m)
        })
        .await?;
        ensure!(
            message.contains(DRIFTED_CRD) && message.contains(DRIFT_PROPERTY),
            "names the CRD and where it drifted: {message}"
        );
        let (_, _, note) = wait_event(&env, &ns, "SchemaMismatch", "Warning").await?;
        ensure!(note.contains(DRIFTED_CRD), "{note}");
        Ok(())
    }
    .await;
    // Restored whatever happened above.
    let restored = drift(&crds, false).await;
    drifted?;
    restored?;

    wait_condition(&api, "CRDsRegistered", "True", "SchemaMatches").await?;
    wait_event(&env, &ns, "SchemaMatches", "Normal").await?;
    op.ensure_running()?;
    Ok(())
}

#[tokio::test]
async fn the_catalog_configmap_is_reported_on_the_cluster() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("cluster-catalog").await?;
    create_cluster(&env, &ns, "push").await?;
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    wait_condition(&api, "OperationCatalogValid", "True", "BuiltinCatalog").await?;

    // The ConfigMap lives in the operator's namespace (here the test's).
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &ns);
    let name = "vworkspace-operation-catalog";
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": { "name": name },
            "data": { "no.such.template": "timeout: 5m" }
        }))?,
    )
    .await?;
    let message = wait_condition(
        &api,
        "OperationCatalogValid",
        "False",
        "OperationCatalogInvalid",
    )
    .await?;
    ensure!(
        message.contains(name) && message.contains("no.such.template"),
        "names the ConfigMap and what does not parse: {message}"
    );

    maps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "no.such.template": null, "runcommand.job": "image: busybox:1.36" } })),
    )
    .await?;
    wait_condition(
        &api,
        "OperationCatalogValid",
        "True",
        "CatalogOverridesApplied",
    )
    .await?;
    maps.delete(name, &DeleteParams::default()).await?;
    wait_condition(&api, "OperationCatalogValid", "True", "BuiltinCatalog").await?;
    op.ensure_running()?;
    Ok(())
}
