//! End-to-end: a secret planted in any field that can carry one never leaves it.
//!
//! # Inventory: user-supplied fields, and whether each can carry a secret
//!
//! Secret-capable, so each gets its own canary below (a failure names the field):
//!
//! * `ApplicationInstance.spec.valuesFrom` → the **Secret's data**, both ways of using it:
//!   a whole YAML key merged at the root, and a single key placed at a `targetPath`. The
//!   operator reads only the Secret's metadata; Flux reads the data.
//! * `ApplicationInstance.spec.values` (inline values): people do put a password there.
//!   It is handed to the HelmRelease child (that is its job), and nowhere else; also on an
//!   instance whose apply the API server rejects (the error lands in status).
//! * `ApplicationInstance.spec.chart.repository` with credentials
//!   (`https://user:CANARY@host/`): refused by the schema (credentials belong in a Secret
//!   for Flux); the refusal is the API server's answer to the client, and nothing of ours
//!   may repeat it.
//! * `Cluster.spec.controlPlane.credentialsSecretRef` → the **bootstrap token** (sent as a
//!   bearer to the control plane): the Secret's data, read into a type that never prints.
//! * `Cluster.spec.controlPlane.url` with credentials: refused by the schema, as the
//!   repository URL (the URL is logged and reported, so it must not hold a secret).
//! * `Operation.spec.parameters`: free-form; for `runcommand.job` `env` values and the
//!   `command` line are where a password goes. Both reach the Job (its job), and nowhere
//!   else; also an `env` entry of the wrong type, which fails validation with a message.
//! * the catalog ConfigMap (`vworkspace-operation-catalog`): a template's default
//!   `parameters` (here `env`), merged into the Job; also an override that does not
//!   parse (a secret where the `parameters` mapping belongs), reported on the ConfigMap.
//! * control-plane jobs (Pull mode): an `ApplyApplicationInstance` document with chart
//!   values (applied), a `CreateOperation` with an `env` password (applied, and run),
//!   and an `ApplyApplicationInstance` with a credentialed repository URL (rejected by
//!   the API server, whose message quotes the value; the rejection is reported to the
//!   control plane with a message and an audit event).
//! * a foreign HelmRelease holding the name a new instance derives (its values): the
//!   operator reports the conflict and must not repeat the other object's content.
//!
//! Not secret-capable (names, enums, durations, numbers, public data; each is validated
//! against a pattern or a type): chart `name` and `version`, `valuesFrom[].kind` / `name` /
//! `valuesKey` / `targetPath`, `suspend`, `interval`; Operation `type`, `template`,
//! `applicationInstance`, `timeout`, `cancel`; Cluster `orgId`, `mode`, `connectivity`,
//! `auditStream`, `gitopsSource`, the `credentialsSecretRef` name and key, `caBundle` and
//! `caSecretRef` (a CA certificate is public); the catalog's `timeout` and `image`. Object
//! names, labels and annotations are metadata, visible to anyone who can list the object.
//!
//! # What is searched
//!
//! The operator runs in Pull mode against the reference control plane at
//! `--zap-log-level=debug`, through a whole lifecycle: an instance Ready, Operations to
//! terminal (two succeed, one fails validation), an apply error in status (a
//! ValidatingAdmissionPolicy bound to this namespace only refuses one HelmRelease), a
//! child conflict, jobs applied and rejected. Then every canary is searched, in plain text
//! and, for Secret data, in base64, in: the operator's whole log; every Event in the
//! namespace; the status of every ApplicationInstance, Operation and the Cluster;
//! `/metrics`; the audit file sink; the control plane's stored events, job reports and
//! heartbeats, and the raw SQLite files (which hold the job documents themselves, so the
//! two job canaries are searched in the rows only).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use vworkspace_api::Cluster;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::labels;
use vworkspace_api::operation::{Operation, OperationPhase};
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::sim::flux::{FluxSimulator, helm_release};

mod common;

use common::controlplane::{ControlPlane, create_token_secret, pull_cluster};
use common::{
    CLUSTER_ID, condition, deny_in_namespace, install_crds, remove_admission_policy, spawn_operator,
};

const LIMIT: Duration = Duration::from_secs(90);

/// One planted secret: the field it sits in, its value, and the forms it may take.
struct Canary {
    field: &'static str,
    value: String,
    /// Other spellings to search for (base64 of the Secret data that holds it).
    encoded: Vec<String>,
    /// Whether the raw SQLite files may hold it (a job document the control plane sent).
    in_job_document: bool,
}

struct Canaries(Vec<Canary>);

impl Canaries {
    fn plant(&mut self, field: &'static str) -> String {
        // Distinct per field, and none a substring of another.
        let value = format!("cnry{:02}x{}", self.0.len(), unique_suffix());
        self.0.push(Canary {
            field,
            value: value.clone(),
            encoded: Vec::new(),
            in_job_document: false,
        });
        value
    }

    fn last(&mut self) -> &mut Canary {
        self.0.last_mut().expect("a canary was planted")
    }
}

/// base64 as the API server stores Secret data.
fn base64(data: &str) -> Result<String> {
    Ok(serde_json::to_value(ByteString(data.as_bytes().to_vec()))?
        .as_str()
        .context("base64 string")?
        .to_owned())
}

/// What the control plane stored from the operator: events, job reports, heartbeats.
fn received(cp: &ControlPlane) -> Result<String> {
    let store = cp.store()?;
    let mut out = serde_json::to_string(&cp.timeline()?)?;
    for job in store.list_jobs(Some(CLUSTER_ID))? {
        out.push_str(&format!("\n{} {} {}", job.id, job.state, job.message));
    }
    out.push_str(&serde_json::to_string(&store.clusters()?)?);
    Ok(out)
}

/// The raw database files, as text (lossy).
fn raw_files(cp: &ControlPlane) -> String {
    let mut out = String::new();
    for suffix in ["", "-wal"] {
        if let Ok(bytes) = std::fs::read(format!("{}{suffix}", cp.db.display())) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

fn instance(name: &str, spec: Value) -> Result<ApplicationInstance> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": { "name": name },
        "spec": spec,
    }))?)
}

fn chart() -> Value {
    json!({ "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" })
}

fn operation(name: &str, parameters: Value) -> Result<Operation> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "Operation",
        "metadata": { "name": name },
        "spec": { "type": "RunCommand", "template": "runcommand.job", "applicationInstance": "app",
                  "parameters": parameters },
    }))?)
}

/// A ValidatingAdmissionPolicy, bound to `ns` only, refusing the HelmRelease `name`.
async fn refuse_release(env: &TestEnv, ns: &str, name: &str) -> Result<String> {
    let policy = format!("vws-refuse-release-{ns}");
    deny_in_namespace(
        env,
        ns,
        &policy,
        json!({ "apiGroups": ["helm.toolkit.fluxcd.io"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": ["helmreleases"] }),
        &format!("object.metadata.name != '{name}'"),
        "this HelmRelease is refused by the test's admission policy",
    )
    .await?;
    // In force once a dry-run create of that HelmRelease is refused.
    let releases: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        ns,
        &vworkspace_testkit::sim::flux::helm_release_resource(),
    );
    let probe = helm_release(ns, name, "nextcloud", "1.0.0")?;
    poll_until(LIMIT, "the admission policy in force", || async {
        let created = releases
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &probe,
            )
            .await;
        matches!(created, Err(kube::Error::Api(ref s)) if s.code == 422 || s.code == 403)
            .then_some(())
    })
    .await?;
    Ok(policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_planted_secret_reaches_logs_events_status_metrics_or_audit() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("secrets").await?;
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": { "annotations": { labels::ALLOWED_OPERATION_TEMPLATES: "runcommand.job" } }
            })),
        )
        .await?;
    let dir = std::env::temp_dir().join(format!("vws-secrets-{ns}"));
    let mut cp = ControlPlane::start(&dir).await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    let mut canaries = Canaries(Vec::new());
    let post = PostParams::default();

    // --- Cluster: the bootstrap token, and a control-plane URL with credentials.
    canaries.0.push(Canary {
        field: "Cluster.spec.controlPlane.credentialsSecretRef (bootstrap token)",
        value: cp.token.clone(),
        encoded: vec![base64(&cp.token)?],
        in_job_document: false,
    });
    create_token_secret(&env, &ns, &cp.token).await?;
    let clusters: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    let cluster = |url: String| pull_cluster(&url, None);
    let c = canaries.plant("Cluster.spec.controlPlane.url (credentials in the URL)");
    let with_credentials = cp
        .url()
        .replacen("http://", &format!("http://agent:{c}@"), 1);
    match clusters.create(&post, &cluster(with_credentials)?).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {}
        other => bail!("a control-plane URL with credentials was not refused: {other:?}"),
    }
    clusters.create(&post, &cluster(cp.url())?).await?;

    // --- The catalog: default parameters of runcommand.job.
    let c = canaries.plant("catalog ConfigMap runcommand.job parameters.env");
    let catalog_env = c.clone();
    Api::<ConfigMap>::namespaced(env.client.clone(), &ns)
        .create(
            &post,
            &serde_json::from_value(json!({
                "metadata": { "name": "vworkspace-operation-catalog" },
                "data": { "runcommand.job": format!("image: busybox:1.36\nparameters:\n  env:\n    SHARED_TOKEN: {c}\n") },
            }))?,
        )
        .await?;

    let identity = format!("op-{}", unique_suffix());
    let mut op = spawn_operator(
        &env,
        &ns,
        &identity,
        &[
            "--zap-log-level=debug",
            "--job-poll-wait=2s",
            "--cluster-resync=1s",
        ],
    )?;

    // --- ApplicationInstance: values Secret (two ways), inline values.
    let whole = canaries.plant("ApplicationInstance.spec.valuesFrom Secret data (values.yaml)");
    let whole_yaml = format!("adminPassword: {whole}\n");
    canaries.last().encoded.push(base64(&whole_yaml)?);
    let single = canaries.plant("ApplicationInstance.spec.valuesFrom Secret data (targetPath)");
    canaries.last().encoded.push(base64(&single)?);
    Api::<Secret>::namespaced(env.client.clone(), &ns)
        .create(
            &post,
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "app-values" },
                "stringData": { "values.yaml": whole_yaml, "smtp-password": single },
            }))?,
        )
        .await?;
    let inline = canaries.plant("ApplicationInstance.spec.values (inline)");
    let instances: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    instances
        .create(
            &post,
            &instance(
                "app",
                json!({
                    "chart": chart(),
                    "values": { "db": { "password": inline } },
                    "valuesFrom": [
                        { "kind": "Secret", "name": "app-values" },
                        { "kind": "Secret", "name": "app-values", "valuesKey": "smtp-password", "targetPath": "smtp.password" },
                    ],
                }),
            )?,
        )
        .await?;

    // --- A repository URL with credentials: refused by the schema.
    let c = canaries.plant("ApplicationInstance.spec.chart.repository (credentials in the URL)");
    match instances
        .create(
            &post,
            &instance(
                "leaky",
                json!({ "chart": { "repository": format!("https://user:{c}@charts.example.org/stable"), "name": "nextcloud", "version": "1.0.0" } }),
            )?,
        )
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 422 => {}
        other => bail!("a repository URL with credentials was not refused: {other:?}"),
    }

    // --- An apply the API server refuses, of an instance with inline secret values.
    let policy = refuse_release(&env, &ns, "rejected").await?;
    let c = canaries.plant("ApplicationInstance.spec.values of an instance whose apply is refused");
    instances
        .create(
            &post,
            &instance(
                "rejected",
                json!({ "chart": chart(), "values": { "password": c } }),
            )?,
        )
        .await?;

    // --- A foreign HelmRelease holding a derived name, with a secret in its values.
    let c = canaries.plant("values of a foreign HelmRelease in the way of an instance");
    let mut foreign = helm_release(&ns, "taken", "nextcloud", "1.0.0")?;
    foreign.data["spec"]["values"] = json!({ "password": c });
    Api::<DynamicObject>::namespaced_with(
        env.client.clone(),
        &ns,
        &vworkspace_testkit::sim::flux::helm_release_resource(),
    )
    .create(&post, &foreign)
    .await?;
    instances
        .create(&post, &instance("taken", json!({ "chart": chart() }))?)
        .await?;

    // --- Control-plane jobs: values applied, a credentialed URL rejected.
    let c = canaries.plant("control-plane job ApplyApplicationInstance spec.values");
    canaries.last().in_job_document = true;
    let doc = json!({
        "type": "ApplyApplicationInstance", "cluster_id": CLUSTER_ID, "namespace": ns, "name": "from-job",
        "spec": { "chart": chart(), "values": { "adminPassword": c } }
    });
    cp.store()?
        .enqueue_job(CLUSTER_ID, Some("job-apply"), &doc.to_string())?;
    let c = canaries.plant("control-plane job ApplyApplicationInstance spec.chart.repository");
    canaries.last().in_job_document = true;
    let doc = json!({
        "type": "ApplyApplicationInstance", "cluster_id": CLUSTER_ID, "namespace": ns, "name": "from-bad-job",
        "spec": { "chart": { "repository": format!("https://user:{c}@charts.example.org/stable"), "name": "nextcloud", "version": "1.0.0" } }
    });
    cp.store()?
        .enqueue_job(CLUSTER_ID, Some("job-bad"), &doc.to_string())?;

    let c = canaries.plant("control-plane job CreateOperation spec.parameters.env");
    canaries.last().in_job_document = true;
    let job_env_value = c.clone();
    let doc = json!({
        "type": "CreateOperation", "cluster_id": CLUSTER_ID, "namespace": ns, "name": "cmd-from-job",
        "spec": { "type": "RunCommand", "template": "runcommand.job", "applicationInstance": "app",
                  "parameters": { "command": "true", "env": { "API_KEY": c } } }
    });
    cp.store()?
        .enqueue_job(CLUSTER_ID, Some("job-operation"), &doc.to_string())?;

    // --- Wait for the instances' verdicts.
    for (name, type_, reasons) in [
        ("app", "Ready", &["HelmReleaseReady"][..]),
        ("from-job", "Ready", &["HelmReleaseReady"][..]),
        ("taken", "Failed", &["ChildConflict"][..]),
    ] {
        poll_until(LIMIT, &format!("{name} {type_}"), || async {
            let obj = instances.get(name).await.ok()?;
            condition(&obj, type_)
                .filter(|c| c.0 == "True" && reasons.contains(&c.1.as_str()))
                .map(|_| ())
        })
        .await?;
    }
    let refused = poll_until(LIMIT, "the refused apply in status", || async {
        let obj = instances.get("rejected").await.ok()?;
        obj.status?
            .conditions
            .into_iter()
            .find(|c| c.status == "True" && c.reason.starts_with("Apply"))
    })
    .await?;
    ensure!(
        refused.message.contains("admission policy"),
        "the API server's reason reaches status: {refused:?}"
    );

    // --- Operations: env and command (catalog env merged), and an env of the wrong type.
    let ops: Api<Operation> = Api::namespaced(env.client.clone(), &ns);
    let command = canaries.plant("Operation.spec.parameters.command (runcommand.job)");
    ops.create(
        &post,
        &operation(
            "cmd",
            json!({ "command": format!("echo {command} > /dev/null") }),
        )?,
    )
    .await?;
    let env_value = canaries.plant("Operation.spec.parameters.env (runcommand.job)");
    ops.create(
        &post,
        &operation(
            "cmd-env",
            json!({ "command": "true", "env": { "DB_PASSWORD": env_value } }),
        )?,
    )
    .await?;
    let bad = canaries.plant("Operation.spec.parameters.env of the wrong type");
    ops.create(
        &post,
        &operation(
            "cmd-bad",
            json!({ "command": "true", "env": { "DB_PASSWORD": [bad] } }),
        )?,
    )
    .await?;
    for (name, phase) in [
        ("cmd", OperationPhase::Succeeded),
        ("cmd-env", OperationPhase::Succeeded),
        ("cmd-bad", OperationPhase::Failed),
        ("cmd-from-job", OperationPhase::Succeeded),
    ] {
        poll_until(LIMIT, &format!("{name} {phase:?}"), || async {
            let o = ops.get(name).await.ok()?;
            (o.status.as_ref()?.phase? == phase).then_some(())
        })
        .await?;
    }
    // The secrets did reach what needs them (else the test proves nothing).
    let job_env = serde_json::to_string(
        &Api::<k8s_openapi::api::batch::v1::Job>::namespaced(env.client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    ensure!(
        job_env.contains(&env_value)
            && job_env.contains(&command)
            && job_env.contains(&job_env_value)
            && job_env.contains(&catalog_env),
        "the Jobs carry the command and env, the catalog's env included"
    );
    let release = serde_json::to_string(
        &Api::<DynamicObject>::namespaced_with(
            env.client.clone(),
            &ns,
            &vworkspace_testkit::sim::flux::helm_release_resource(),
        )
        .get("app")
        .await?,
    )?;
    ensure!(
        release.contains(&inline) && release.contains("app-values"),
        "the HelmRelease carries the inline values and the Secret reference"
    );

    // --- Jobs: one applied, one rejected; every terminal outcome in the control plane.
    let applied = poll_until(LIMIT, "job-apply applied", || async {
        cp.job_state("job-apply")
            .ok()?
            .filter(|(state, _)| state == "applied")
    })
    .await?;
    poll_until(LIMIT, "job-operation applied", || async {
        cp.job_state("job-operation")
            .ok()?
            .filter(|(state, _)| state == "applied")
    })
    .await?;
    let rejected = poll_until(LIMIT, "job-bad rejected", || async {
        cp.job_state("job-bad")
            .ok()?
            .filter(|(state, _)| state == "rejected")
    })
    .await?;
    eprintln!("job-apply: {applied:?}\njob-bad: {rejected:?}");
    let want = [
        ("app", "ReconcileSucceeded"),
        ("from-job", "ReconcileSucceeded"),
        ("taken", "ChildConflict"),
        ("app", "OperationSucceeded"),
        ("app", "OperationFailed"),
    ];
    let delivered = poll_until(LIMIT, "the outcomes in the control plane", || async {
        let timeline = cp.timeline().ok()?;
        want.iter()
            .all(|(app, kind)| {
                timeline
                    .iter()
                    .any(|e| e.application_instance.as_deref() == Some(app) && e.kind == *kind)
            })
            .then_some(())
    })
    .await;
    if let Err(err) = delivered {
        let kinds: Vec<(Option<String>, String)> = cp
            .timeline()?
            .into_iter()
            .map(|e| (e.application_instance, e.kind))
            .collect();
        bail!("{err}: the control plane has {kinds:?}");
    }

    // --- A catalog override that does not parse, with a secret where a mapping belongs
    // (the Operations are done: the built-in catalog takes over, and the error is reported
    // on the ConfigMap).
    let c = canaries.plant("catalog ConfigMap, a malformed override (parameters not a mapping)");
    Api::<ConfigMap>::namespaced(env.client.clone(), &ns)
        .patch(
            "vworkspace-operation-catalog",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "data": { "runcommand.job": format!("image: busybox:1.36\nparameters: DB_PASSWORD={c}\n") }
            })),
        )
        .await?;
    // The catalog is read when an Operation is looked at.
    ops.create(
        &post,
        &operation(
            "cmd-after",
            json!({ "command": "true", "image": "busybox:1.36" }),
        )?,
    )
    .await?;
    let event_list: Api<Event> = Api::namespaced(env.client.clone(), &ns);
    let catalog_error = poll_until(LIMIT, "the catalog error reported", || async {
        event_list
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("OperationCatalogInvalid"))
            .and_then(|e| e.note)
    })
    .await?;
    ensure!(
        catalog_error.contains("runcommand.job") && catalog_error.contains("parameters"),
        "the catalog error names the key and the field: {catalog_error}"
    );

    // --- Search every surface.
    let metrics = op.metrics().await?;
    let (code, readyz) = op.probe("/readyz?verbose").await?;
    let log = std::fs::read_to_string(&op.log)?;
    ensure!(
        log.contains("\"level\":\"debug\"") && log.lines().count() > 100,
        "the log is a debug log"
    );
    let events = serde_json::to_string(
        &Api::<Event>::namespaced(env.client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items,
    )?;
    let statuses = {
        let mut all: BTreeMap<String, Value> = BTreeMap::new();
        for o in instances.list(&ListParams::default()).await?.items {
            all.insert(
                format!(
                    "ApplicationInstance/{}",
                    o.metadata.name.clone().unwrap_or_default()
                ),
                serde_json::to_value(&o.status)?,
            );
        }
        for o in ops.list(&ListParams::default()).await?.items {
            all.insert(
                format!("Operation/{}", o.metadata.name.clone().unwrap_or_default()),
                serde_json::to_value(&o.status)?,
            );
        }
        for o in clusters.list(&ListParams::default()).await?.items {
            all.insert("Cluster".to_owned(), serde_json::to_value(&o.status)?);
        }
        serde_json::to_string(&all)?
    };
    let audit_file = std::fs::read_to_string(&op.audit_log).unwrap_or_default();
    ensure!(!audit_file.is_empty(), "the audit file sink was written");
    let received = received(&cp)?;
    let raw = raw_files(&cp);

    let surfaces: [(&str, &str); 7] = [
        ("operator log", &log),
        ("Events", &events),
        ("status", &statuses),
        ("/metrics", &metrics),
        ("/readyz", &readyz),
        ("audit file", &audit_file),
        ("control-plane rows", &received),
    ];
    let mut leaks = Vec::new();
    for canary in &canaries.0 {
        let forms: Vec<&str> = std::iter::once(canary.value.as_str())
            .chain(canary.encoded.iter().map(String::as_str))
            .collect();
        for (surface, text) in surfaces {
            for form in &forms {
                if let Some(at) = text.find(form) {
                    let from = text.floor_char_boundary(at.saturating_sub(200));
                    let to = text.ceil_char_boundary((at + form.len() + 100).min(text.len()));
                    leaks.push(format!(
                        "{} in {surface}: …{}…",
                        canary.field,
                        &text[from..to]
                    ));
                }
            }
        }
        if !canary.in_job_document && forms.iter().any(|f| raw.contains(f)) {
            leaks.push(format!(
                "{} in the control plane's SQLite files",
                canary.field
            ));
        }
    }
    ensure!(
        leaks.is_empty(),
        "{} leaks (readyz {code}):\n{}",
        leaks.len(),
        leaks.join("\n\n")
    );
    eprintln!(
        "{} canaries, none found in {} log lines, {} bytes of Events, {} of status, {} of metrics, {} of audit file, {} of control-plane rows",
        canaries.0.len(),
        log.lines().count(),
        events.len(),
        statuses.len(),
        metrics.len(),
        audit_file.len(),
        received.len()
    );

    op.ensure_running()?;
    let _ = op.terminate();
    let _ = remove_admission_policy(&env, &policy).await;
    cp.stop().await;
    Ok(())
}
