//! End-to-end hardening checks against the real API server and the built operator:
//!
//! * an ApplicationInstance the operator cannot decode (values nested 200 deep, past
//!   serde_json's recursion limit) fails no list, watch or readiness: it is skipped, named
//!   once in the log, counted, and gets a Warning Event — before and after a restart;
//! * a HelmRelease or HelmRepository that the instance did not create is never adopted.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::core::Request;
use serde_json::{Value, json};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::fixtures::OperatorProcess;
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::flux::FluxSimulator;

mod common;

use common::{condition, create_cluster, install_crds, spawn_operator};

const LIMIT: Duration = Duration::from_secs(60);

fn instance(name: &str, values: Option<Value>) -> Value {
    let mut spec = json!({
        "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" }
    });
    if let Some(values) = values {
        spec["values"] = values;
    }
    json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": { "name": name },
        "spec": spec,
    })
}

/// `{"a": {"a": ... {"a": 1}}}`, `depth` levels.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
}

/// Create an object from raw JSON, reading the answer as text: the client would fail
/// to parse a poison object's echo, just as the operator's list used to.
async fn create_raw(env: &TestEnv, ns: &str, body: &Value) -> Result<()> {
    let url = format!("/apis/vworkspace.io/v1alpha1/namespaces/{ns}/applicationinstances");
    let request = Request::new(url).create(&PostParams::default(), serde_json::to_vec(body)?)?;
    env.client
        .request_text(request)
        .await
        .context("creating a poison instance")?;
    Ok(())
}

async fn create(api: &Api<ApplicationInstance>, name: &str) -> Result<()> {
    api.create(
        &PostParams::default(),
        &serde_json::from_value(instance(name, None))?,
    )
    .await?;
    Ok(())
}

async fn wait_ready(api: &Api<ApplicationInstance>, name: &str) -> Result<()> {
    poll_until(LIMIT, &format!("{name} Ready=True"), || async {
        let obj = api.get(name).await.ok()?;
        (condition(&obj, "Ready")?.0 == "True").then_some(())
    })
    .await
}

/// The Events about object `name` in `ns`.
async fn events_of(env: &TestEnv, ns: &str, name: &str) -> Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
        })
        .collect())
}

/// The operator's log lines saying it skipped object `name`.
fn skip_lines(op: &OperatorProcess, name: &str) -> Result<Vec<String>> {
    Ok(op
        .log_lines()?
        .into_iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["object_name"] == name && v["level"] == "warn" && v["kind"].is_string()
            })
        })
        .collect())
}

/// Wait for `/readyz` 200; on timeout, say what it last answered.
async fn wait_readyz(op: &OperatorProcess) -> Result<()> {
    let last = std::sync::Mutex::new(String::new());
    poll_until(LIMIT, "/readyz 200", || async {
        let (code, body) = op.probe("/readyz?verbose").await.ok()?;
        *last.lock().ok()? = body;
        (code == 200).then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "last answer: {}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })
}

async fn wait_warning_event(env: &TestEnv, ns: &str, name: &str) -> Result<Event> {
    poll_until(LIMIT, &format!("the Warning Event on {name}"), || async {
        events_of(env, ns, name)
            .await
            .ok()?
            .into_iter()
            .find(|e| e.type_.as_deref() == Some("Warning"))
    })
    .await
}

#[tokio::test]
async fn an_undecodable_instance_is_skipped_reported_once_and_stops_nothing() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("poison").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);

    // `/readyz` includes the `cluster` check, which wants the Cluster.
    create_cluster(&env, &ns, "push").await?;
    // Before the operator starts: its first list meets the poison.
    create_raw(&env, &ns, &instance("poison-before", Some(nested(200)))).await?;
    create(&api, "good-before").await?;
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    wait_ready(&api, "good-before").await?;
    wait_readyz(&op).await?;

    // While it runs: its watch meets the poison.
    create_raw(&env, &ns, &instance("poison-after", Some(nested(200)))).await?;
    create(&api, "good-after").await?;
    wait_ready(&api, "good-after").await?;
    for poison in ["poison-before", "poison-after"] {
        let event = wait_warning_event(&env, &ns, poison).await?;
        ensure!(
            event.reason.as_deref() == Some("ReconcileFailed"),
            "{event:?}"
        );
        let note = event.note.clone().unwrap_or_default();
        ensure!(
            note.contains("recursion limit"),
            "the Event names the cause: {note}"
        );
    }
    let (code, body) = op.probe("/readyz").await?;
    ensure!(code == 200, "/readyz with poison objects: {code} {body}");
    let metrics = Exposition::parse(&op.metrics().await?)?;
    ensure!(
        metrics.sum(
            "vworkspace_operator_undecodable_objects_total",
            &[("kind", "ApplicationInstance")]
        ) == 2.0,
        "each poison counted once"
    );

    // A restart: the first list holds both poison objects.
    op.kill();
    let mut op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    create(&api, "good-restart").await?;
    wait_ready(&api, "good-restart").await?;
    wait_readyz(&op).await?;
    // A change to a good instance is still reconciled.
    api.patch(
        "good-before",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "spec": { "chart": { "version": "1.1.0" } } })),
    )
    .await?;
    poll_until(LIMIT, "the upgrade of good-before observed", || async {
        let obj = api.get("good-before").await.ok()?;
        let status = obj.status.as_ref()?;
        (status.observed_generation == obj.metadata.generation
            && condition(&obj, "Ready")?.0 == "True")
            .then_some(())
    })
    .await?;
    op.ensure_running()?;
    for poison in ["poison-before", "poison-after"] {
        let lines = skip_lines(&op, poison)?;
        ensure!(
            lines.len() == 1,
            "the log names {poison} once, not {}: {lines:?}",
            lines.len()
        );
        let warnings: Vec<_> = events_of(&env, &ns, poison)
            .await?
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .collect();
        ensure!(
            warnings.len() == 1,
            "one Warning Event on {poison} across the restart, not {}",
            warnings.len()
        );
    }
    ensure!(
        op.log_lines()?.iter().all(|l| !l.contains("\"a\":{\"a\"")),
        "no object body in the log"
    );
    Ok(())
}

/// A HelmRelease `name` in `ns` that this operator did not create, as raw JSON.
fn foreign_release(name: &str, labels: Value, owner: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "interval": "5m",
            "chart": { "spec": { "chart": "other-teams-chart", "version": "9.9.9",
                "sourceRef": { "kind": "HelmRepository", "name": "other-teams-repo" } } },
            "values": { "owner": "another team" }
        }
    });
    if let Some(owner) = owner {
        obj["metadata"]["ownerReferences"] = json!([owner]);
    }
    obj
}

async fn get_raw(env: &TestEnv, url: &str) -> Result<Value> {
    let text = env
        .client
        .request_text(http::Request::get(url).body(Vec::new())?)
        .await?;
    Ok(serde_json::from_str(&text)?)
}

#[tokio::test]
async fn a_child_name_held_by_a_foreign_object_is_never_adopted() -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{DeleteParams, DynamicObject};
    use kube::core::{ApiResource, GroupVersionKind};

    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("conflict").await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let releases: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
        )),
    );
    // Another controller's object, to be the owner of one release.
    let owner: ConfigMap = Api::namespaced(env.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "other-controller" } }))?,
        )
        .await?;
    let owner_ref = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": "other-controller",
        "uid": owner.metadata.uid, "controller": true,
    });
    // Ownerless and unlabelled: outside the operator's label-selected cache.
    releases
        .create(
            &PostParams::default(),
            &serde_json::from_value(foreign_release("taken-ownerless", json!({}), None))?,
        )
        .await?;
    // Another controller's, and labelled as if it was ours: inside the cache.
    releases
        .create(
            &PostParams::default(),
            &serde_json::from_value(foreign_release(
                "taken-owned",
                json!({ "app.vworkspace.io/application-instance": "taken-owned" }),
                Some(owner_ref),
            ))?,
        )
        .await?;
    let url =
        |name: &str| format!("/apis/helm.toolkit.fluxcd.io/v2/namespaces/{ns}/helmreleases/{name}");
    // The simulated Flux installs the labelled one (that is Flux's business, not the
    // operator's): the snapshot is taken once it has.
    poll_until(LIMIT, "Flux done with taken-owned", || async {
        let obj = get_raw(&env, &url("taken-owned")).await.ok()?;
        obj["status"]["history"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
            .then_some(())
    })
    .await?;
    let before = [
        get_raw(&env, &url("taken-ownerless")).await?,
        get_raw(&env, &url("taken-owned")).await?,
    ];

    let op = spawn_operator(&env, &ns, &format!("op-{}", unique_suffix()), &[])?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    create(&api, "taken-ownerless").await?;
    create(&api, "taken-owned").await?;
    create(&api, "free").await?;
    wait_ready(&api, "free").await?;
    for (name, owner) in [
        ("taken-ownerless", "with no owner"),
        ("taken-owned", "owned by ConfigMap other-controller"),
    ] {
        let (status, reason, message) =
            poll_until(LIMIT, &format!("{name} Failed=True"), || async {
                let obj = api.get(name).await.ok()?;
                condition(&obj, "Failed").filter(|c| c.0 == "True")
            })
            .await?;
        ensure!(
            status == "True" && reason == "ChildConflict",
            "{name}: {reason}: {message}"
        );
        ensure!(
            message.contains(&format!("HelmRelease {ns}/{name}")) && message.contains(owner),
            "the message names the object and its owner: {message}"
        );
        let warning = wait_warning_event(&env, &ns, name).await?;
        ensure!(
            warning.reason.as_deref() == Some("ChildConflict"),
            "{warning:?}"
        );
    }
    let after = [
        get_raw(&env, &url("taken-ownerless")).await?,
        get_raw(&env, &url("taken-owned")).await?,
    ];
    ensure!(
        before == after,
        "foreign releases changed:\n{}\n{}",
        serde_json::to_string(&before)?,
        serde_json::to_string(&after)?
    );

    // Deleting the instances leaves the foreign releases where they are; what the
    // instances did create (their HelmRepositories) goes.
    for name in ["taken-ownerless", "taken-owned"] {
        api.delete(name, &DeleteParams::foreground()).await?;
    }
    let repositories: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "source.toolkit.fluxcd.io",
            "v1",
            "HelmRepository",
        )),
    );
    poll_until(
        LIMIT,
        "the instances and their own children deleted",
        || async {
            let left = api.list(&ListParams::default()).await.ok()?.items.len();
            let repos = repositories.list(&ListParams::default()).await.ok()?.items;
            (left == 1
                && repos
                    .iter()
                    .all(|r| r.metadata.name.as_deref() == Some("free")))
            .then_some(())
        },
    )
    .await?;
    let after_delete = [
        get_raw(&env, &url("taken-ownerless")).await?,
        get_raw(&env, &url("taken-owned")).await?,
    ];
    ensure!(
        before == after_delete,
        "deleting the instances touched the foreign releases"
    );
    drop(op);
    Ok(())
}

/// Run the operator binary with `flag` pointing at a port that is already taken; it must
/// stop at start-up, non-zero, naming the flag, the address and the cause.
fn exits_on_taken_port(flag: &str) -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let other = if flag == "--metrics-bind-address" {
        "--health-probe-bind-address"
    } else {
        "--metrics-bind-address"
    };
    let out = std::process::Command::new(common::OPERATOR)
        .arg(format!("{flag}={addr}"))
        .arg(format!("{other}={free}"))
        .arg("--kubeconfig=/nonexistent/kubeconfig")
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!out.status.success(), "exit status {}: {text}", out.status);
    ensure!(
        text.contains(flag) && text.contains(&addr.to_string()) && text.contains("in use"),
        "the message names {flag}, {addr} and the cause: {text}"
    );
    ensure!(
        !text.contains("kubeconfig"),
        "it stopped before reading the kubeconfig: {text}"
    );
    drop(taken);
    Ok(())
}

#[test]
fn a_taken_metrics_or_probe_port_stops_start_up() -> Result<()> {
    exits_on_taken_port("--metrics-bind-address")?;
    exits_on_taken_port("--health-probe-bind-address")
}

#[tokio::test]
async fn a_hundred_readiness_probes_cost_no_api_request_and_no_log_line() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("probes").await?;
    create_cluster(&env, &ns, "push").await?;
    // No periodic Cluster resync inside the window: only the probes could send requests.
    let op = spawn_operator(
        &env,
        &ns,
        &format!("op-{}", unique_suffix()),
        &["--cluster-resync=1h"],
    )?;
    wait_readyz(&op).await?;
    let requests = |m: &Exposition| m.sum("rest_client_requests_total", &[]);
    // Start-up work (first lists, the catalog, the Velero probe) has settled once two
    // scrapes a second apart show the same count.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut previous = requests(&Exposition::parse(&op.metrics().await?)?);
    let before = loop {
        // The sampling interval of a quiet-period check, bounded by the deadline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = Exposition::parse(&op.metrics().await?)?;
        if requests(&m) == previous {
            break m;
        }
        previous = requests(&m);
        ensure!(
            std::time::Instant::now() < deadline,
            "the operator's requests did not settle within 60 s"
        );
    };
    let lines_before = op.log_lines()?.len();
    for i in 0..100 {
        let path = match i % 4 {
            0 => "/readyz",
            1 => "/readyz?verbose",
            2 => "/readyz/rbac",
            _ => "/readyz/crds",
        };
        let (code, body) = op.probe(path).await?;
        ensure!(code == 200, "{path}: {code} {body}");
    }
    let after = Exposition::parse(&op.metrics().await?)?;
    ensure!(
        requests(&after) == requests(&before),
        "100 probes sent {} API requests",
        requests(&after) - requests(&before)
    );
    let new_lines = &op.log_lines()?[lines_before..];
    ensure!(new_lines.is_empty(), "probes logged: {new_lines:?}");
    Ok(())
}
