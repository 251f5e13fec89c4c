//! End-to-end: errors a user can act on reach the object, and the order of effects
//! (publish, then persist) loses and doubles nothing when a status write fails.
//!
//! Faults are real: a service account without a permission, a name the label cannot
//! hold, and a ValidatingAdmissionPolicy that makes the API server deny status writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::fixtures::OperatorProcess;
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::flux::FluxSimulator;

mod common;

use common::{
    DENY_STATUS_LABEL as DENY_LABEL, OPERATOR, condition, install_crds, remove_admission_policy,
    spawn_operator,
};

const LIMIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> Result<(TestEnv, String)> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace(prefix).await?;
    Ok((env, ns))
}

fn instance(name: &str, labels: Value) -> Result<ApplicationInstance> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" }
        }
    }))?)
}

/// (reason, type, note) of the Events on `name`, oldest first.
async fn events_on(client: &Client, ns: &str, name: &str) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list = api
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
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

async fn wait_event_reasons(
    client: &Client,
    ns: &str,
    name: &str,
    want: &[&str],
) -> Result<Vec<(String, String, String)>> {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let got = events_on(client, ns, name).await?;
        let reasons: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        if reasons == want {
            return Ok(got);
        }
        if std::time::Instant::now() > deadline {
            bail!("events on {name}: want {want:?}, have {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The audit stream mirrors the Events exactly: same kinds in the same order, each id once.
fn audit_mirrors_events(
    op: &OperatorProcess,
    events: &[(String, String, String)],
) -> Result<Vec<Value>> {
    let audit = op.audit_events()?;
    let kinds: Vec<&str> = audit.iter().filter_map(|e| e["kind"].as_str()).collect();
    let reasons: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    ensure!(kinds == reasons, "audit {kinds:?} != events {reasons:?}");
    let mut ids = BTreeMap::new();
    for e in &audit {
        let id = e["event_id"].as_str().context("event_id")?;
        ensure!(
            ids.insert(id.to_owned(), ()).is_none(),
            "event id {id} twice"
        );
    }
    Ok(audit)
}

/// Role for the operator in `ns`, with or without the right to write HelmReleases.
fn operator_role(name: &str, may_write_releases: bool) -> Result<Role> {
    let mut release_verbs = vec!["get", "list", "watch"];
    if may_write_releases {
        release_verbs.extend(["create", "patch", "update"]);
    }
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "rules": [
            { "apiGroups": ["vworkspace.io"], "resources": ["applicationinstances"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["vworkspace.io"], "resources": ["applicationinstances/status"], "verbs": ["get", "patch", "update"] },
            { "apiGroups": ["helm.toolkit.fluxcd.io"], "resources": ["helmreleases"], "verbs": release_verbs },
            { "apiGroups": ["source.toolkit.fluxcd.io"], "resources": ["helmrepositories"], "verbs": ["get", "list", "watch", "create", "patch", "update"] },
            { "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"] },
            { "apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"] }
        ]
    }))?)
}

#[tokio::test]
async fn a_forbidden_apply_is_reported_on_the_object_and_clears_once_fixed() -> Result<()> {
    let (env, ns) = setup("forbid").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &ns);
    roles
        .create(&PostParams::default(), &operator_role("operator", false)?)
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(env.client.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "operator" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator" },
                "subjects": [{ "kind": "ServiceAccount", "name": "operator", "namespace": ns }]
            }))?,
        )
        .await?;
    // Cluster-wide: which namespaces are managed.
    let cluster_roles: Api<ClusterRole> = Api::all(env.client.clone());
    let cluster_role = format!("vws-{ns}-namespaces");
    cluster_roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": cluster_role },
                "rules": [{ "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"] }]
            }))?,
        )
        .await?;
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": cluster_role },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role },
                "subjects": [{ "kind": "ServiceAccount", "name": "operator", "namespace": ns }]
            }))?,
        )
        .await?;
    let kubeconfig = env.kubeconfig_for_service_account(&ns, "operator").await?;
    let dir = std::env::temp_dir().join(format!("vws-e2e-{ns}-restricted"));
    let mut op = OperatorProcess::spawn(
        Path::new(OPERATOR),
        &kubeconfig,
        &dir,
        &[
            &format!("--watch-namespace={ns}"),
            "--identity=restricted",
            "--cluster-id=cluster-e2e",
            "--org-id=org-e2e",
        ],
    )?;

    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    api.create(&PostParams::default(), &instance("app", json!({}))?)
        .await?;
    let reported = poll_until(LIMIT, "Reconciling=True/ApplyForbidden", || async {
        let obj = api.get("app").await.ok()?;
        condition(&obj, "Reconciling")
            .filter(|c| c.0 == "True" && c.1 == "ApplyForbidden")
            .map(|c| c.2)
    })
    .await?;
    ensure!(
        reported.starts_with("applying HelmRelease app: ") && reported.contains("forbidden"),
        "the message names the object and the cause: {reported}"
    );
    ensure!(
        reported.matches("applying HelmRelease app").count() == 1,
        "each part of the error chain appears once: {reported}"
    );
    let events = wait_event_reasons(
        &env.client,
        &ns,
        "app",
        &["ReconcileStarted", "ApplyForbidden"],
    )
    .await?;
    ensure!(events[1].1 == "Warning", "a Warning Event: {events:?}");
    ensure!(
        events[1].2 == reported,
        "the Event carries the condition's message"
    );

    // Fix the RBAC: the retry (with backoff) succeeds and the reason clears.
    roles
        .replace("operator", &PostParams::default(), &{
            let mut role = operator_role("operator", true)?;
            role.metadata.resource_version = roles.get("operator").await?.resource_version();
            role
        })
        .await?;
    let ready = poll_until(LIMIT, "Ready=True after the fix", || async {
        let obj = api.get("app").await.ok()?;
        condition(&obj, "Ready")
            .filter(|c| c.0 == "True")
            .map(|_| obj)
    })
    .await?;
    let reconciling = condition(&ready, "Reconciling").context("Reconciling")?;
    ensure!(
        reconciling.0 == "False" && reconciling.1 == "ReconcileSucceeded",
        "cleared: {reconciling:?}"
    );
    let events = wait_event_reasons(
        &env.client,
        &ns,
        "app",
        &["ReconcileStarted", "ApplyForbidden", "ReconcileSucceeded"],
    )
    .await?;
    audit_mirrors_events(&op, &events)?;
    op.ensure_running()?;
    let _ = op.terminate();
    Ok(())
}

#[tokio::test]
async fn a_name_that_does_not_fit_its_label_fails_naming_the_field() -> Result<()> {
    let (env, ns) = setup("longname").await?;
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    let name = format!("app-{}", "x".repeat(66));
    api.create(&PostParams::default(), &instance(&name, json!({}))?)
        .await?;
    let failed = poll_until(LIMIT, "Failed=True/InvalidSpec", || async {
        let obj = api.get(&name).await.ok()?;
        condition(&obj, "Failed")
            .filter(|c| c.0 == "True" && c.1 == "InvalidSpec")
            .map(|c| c.2)
    })
    .await?;
    ensure!(
        failed.contains("metadata.name")
            && failed.contains("app.vworkspace.io/application-instance")
            && failed.contains("63"),
        "names the field, the label and the limit: {failed}"
    );
    let events = wait_event_reasons(
        &env.client,
        &ns,
        &name,
        &["ReconcileStarted", "ReconcileFailed"],
    )
    .await?;
    ensure!(events[1].1 == "Warning" && events[1].2 == failed);
    audit_mirrors_events(&op, &events)?;
    op.ensure_running()?;
    let _ = op.terminate();
    Ok(())
}

#[tokio::test]
async fn an_unmanaged_namespace_gets_no_children_until_it_is_labelled() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_unmanaged_namespace("unmanaged").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    api.create(&PostParams::default(), &instance("app", json!({}))?)
        .await?;
    let failed = poll_until(LIMIT, "Failed=True/NamespaceNotManaged", || async {
        let obj = api.get("app").await.ok()?;
        condition(&obj, "Failed")
            .filter(|c| c.0 == "True" && c.1 == "NamespaceNotManaged")
            .map(|c| c.2)
    })
    .await?;
    ensure!(
        failed.contains("app.vworkspace.io/managed-by=vworkspace"),
        "names the label: {failed}"
    );
    let releases: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &ns,
        &vworkspace_testkit::sim::flux::helm_release_resource(),
    );
    let repositories: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &ns,
        &vworkspace_testkit::sim::flux::helm_repository_resource(),
    );
    ensure!(
        releases
            .list(&ListParams::default())
            .await?
            .items
            .is_empty(),
        "no HelmRelease"
    );
    ensure!(
        repositories
            .list(&ListParams::default())
            .await?
            .items
            .is_empty(),
        "no HelmRepository"
    );

    // Labelling the namespace reconciles the instance in it, without touching the instance.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "app.vworkspace.io/managed-by": "vworkspace" } } })),
        )
        .await?;
    poll_until(LIMIT, "Ready=True once managed", || async {
        let obj = api.get("app").await.ok()?;
        condition(&obj, "Ready")
            .filter(|c| c.0 == "True")
            .map(|_| ())
    })
    .await?;
    let events = wait_event_reasons(
        &env.client,
        &ns,
        "app",
        &["ReconcileStarted", "ReconcileFailed", "ReconcileSucceeded"],
    )
    .await?;
    audit_mirrors_events(&op, &events)?;
    op.ensure_running()?;
    let _ = op.terminate();
    Ok(())
}

/// [`common::deny_status_writes`], probed with an instance of its own (deleted again).
async fn deny_status_writes(env: &TestEnv, ns: &str) -> Result<String> {
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), ns);
    api.create(
        &PostParams::default(),
        &instance("probe", json!({ DENY_LABEL: "true" }))?,
    )
    .await?;
    let name = common::deny_status_writes(env, ns, "probe", LIMIT).await?;
    api.delete("probe", &DeleteParams::default()).await?;
    Ok(name)
}

#[tokio::test]
async fn a_failed_status_write_neither_loses_nor_doubles_a_transition() -> Result<()> {
    let (env, ns) = setup("statusfault").await?;
    let policy = deny_status_writes(&env, &ns).await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &instance("app", json!({ DENY_LABEL: "true" }))?,
    )
    .await?;

    // The transition was published before the (denied) write, and the failure itself is
    // reported with its category.
    // (Flux may finish meanwhile: ReconcileSucceeded is then published too, before its
    // status write is denied in turn.)
    poll_until(LIMIT, "the StatusWriteFailed Event", || async {
        let events = events_on(&env.client, &ns, "app").await.ok()?;
        events
            .iter()
            .any(|e| {
                e.0 == "StatusWriteFailed" && e.1 == "Warning" && e.2.contains("denied by the test")
            })
            .then_some(())
    })
    .await?;
    let obj = api.get("app").await?;
    ensure!(
        obj.status.is_none(),
        "nothing was persisted yet: {:?}",
        obj.status
    );
    // Let the operator retry a few times against the denial.
    poll_until(LIMIT, "several denied status writes", || async {
        let metrics = Exposition::parse(&op.metrics().await.ok()?).ok()?;
        let denied = ["422", "403"]
            .iter()
            .map(|code| {
                metrics.sum(
                    "rest_client_requests_total",
                    &[("method", "PATCH"), ("code", code)],
                )
            })
            .sum::<f64>();
        (denied >= 4.0).then_some(())
    })
    .await?;

    // Lift the fault: the status converges and every transition appears exactly once.
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { DENY_LABEL: null } } })),
    )
    .await?;
    let ready = poll_until(LIMIT, "Ready=True", || async {
        let obj = api.get("app").await.ok()?;
        condition(&obj, "Ready")
            .filter(|c| c.0 == "True")
            .map(|_| obj)
    })
    .await?;
    let events = wait_event_reasons(
        &env.client,
        &ns,
        "app",
        &[
            "ReconcileStarted",
            "StatusWriteFailed",
            "ReconcileSucceeded",
        ],
    )
    .await?;
    let audit = audit_mirrors_events(&op, &events)?;
    let uid = ready.uid().context("uid")?;
    for record in &ready.status.as_ref().context("status")?.transitions {
        let id = record.event_id("cluster-e2e", &uid);
        ensure!(
            audit.iter().any(|e| e["event_id"] == id.as_str()),
            "recorded {record:?} was published with id {id}"
        );
    }
    op.ensure_running()?;
    let _ = op.terminate();
    let _ = remove_admission_policy(&env, &policy).await;
    Ok(())
}
