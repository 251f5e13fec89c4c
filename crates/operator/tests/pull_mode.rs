//! Pull mode end to end: the built operator against the reference control plane (its
//! HTTP server and SQLite store, in this process) and the real API server.
//!
//! * a job enqueued on the control plane becomes an ApplicationInstance, and its
//!   transitions reach the org timeline with every payload field;
//! * a malformed job is rejected with a reason and a `JobRejected` audit event, and the
//!   next good job is applied;
//! * the control plane goes away: Connected=False, then Disconnected=True with
//!   ConnectivityLost, events wait in the buffer; it comes back: every event arrives
//!   exactly once and ConnectivityConnected follows;
//! * 5xx answers from the control plane's fault switch are retried, a 429 waits out its
//!   Retry-After, and a 413 splits the batch with every event still stored once;
//! * SIGKILL with undelivered events: the restarted operator replays them from status;
//! * a wrong token: Authenticated=False and `/readyz` names `controlplane`;
//! * a missing token Secret: Authenticated=False/CredentialMissing with a Warning Event
//!   on the Cluster; once the Secret exists the link starts and it recovers;
//! * the bootstrap token never appears in logs, Events, metrics or audit payloads.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::{AuditEvent, Cluster};
use vworkspace_controlplane::{FaultSpec, PathClass};
use vworkspace_testkit::env::{TestEnv, poll_until, unique_suffix};
use vworkspace_testkit::sim::flux::FluxSimulator;

mod common;

use common::controlplane::{ControlPlane, create_pull_cluster};
use common::{CLUSTER_ID, ORG_ID, install_crds, spawn_operator};

const LIMIT: Duration = Duration::from_secs(60);

fn instance_job(ns: &str, name: &str) -> String {
    json!({
        "type": "ApplyApplicationInstance",
        "cluster_id": CLUSTER_ID,
        "namespace": ns,
        "name": name,
        "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } },
    })
    .to_string()
}

fn condition(c: &Cluster, type_: &str) -> Option<(String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.clone(), x.reason.clone()))
}

async fn wait_condition(
    api: &Api<Cluster>,
    type_: &str,
    status: &str,
    reason: &str,
) -> Result<Cluster> {
    poll_until(
        LIMIT,
        &format!("Cluster {type_}={status}/{reason}"),
        || async {
            let c = api.get(CLUSTER_ID).await.ok()?;
            (condition(&c, type_) == Some((status.into(), reason.into()))).then_some(c)
        },
    )
    .await
}

async fn wait_ready(api: &Api<ApplicationInstance>, name: &str) -> Result<ApplicationInstance> {
    poll_until(LIMIT, &format!("{name} Ready=True"), || async {
        let obj = api.get_opt(name).await.ok()??;
        common::condition(&obj, "Ready")
            .is_some_and(|(s, _, _)| s == "True")
            .then_some(obj)
    })
    .await
}

fn kinds_for(timeline: &[AuditEvent], app: &str) -> BTreeSet<String> {
    timeline
        .iter()
        .filter(|e| e.application_instance.as_deref() == Some(app))
        .map(|e| e.kind.clone())
        .collect()
}

/// Sets `fault` on the events endpoint, creates instance `name` through a job, and
/// waits until its success is in the timeline; answers how the events endpoint
/// answered meanwhile (status code → count).
async fn deliver_through_fault(
    cp: &ControlPlane,
    instances: &Api<ApplicationInstance>,
    ns: &str,
    name: &str,
    fault: serde_json::Value,
) -> Result<serde_json::Value> {
    cp.admin(reqwest::Method::DELETE, "/admin/stats", None)
        .await?;
    cp.admin(reqwest::Method::POST, "/admin/faults", Some(fault))
        .await?;
    cp.enqueue(&format!("job-{name}"), &instance_job(ns, name))?;
    wait_ready(instances, name).await?;
    poll_until(LIMIT, &format!("{name}'s success delivered"), || async {
        kinds_for(&cp.timeline().ok()?, name)
            .contains("ReconcileSucceeded")
            .then_some(())
    })
    .await?;
    let stats = cp.admin(reqwest::Method::GET, "/admin/stats", None).await?;
    Ok(stats["requests"]["POST /api/agent/events"].clone())
}

fn operator_flags() -> [&'static str; 2] {
    ["--job-poll-wait=2s", "--cluster-resync=1s"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_timeline_outage_and_replay() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("pull").await?;
    let dir = std::env::temp_dir().join(format!("vws-pull-{ns}"));
    let mut cp = ControlPlane::start(&dir).await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    create_pull_cluster(&env, &ns, &cp.url(), &cp.token, 1000, 50).await?;
    let identity = format!("op-{}", unique_suffix());
    let mut op = spawn_operator(&env, &ns, &identity, &operator_flags())?;
    let clusters: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    let instances: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);

    // Connected and authenticated, with a heartbeat on record.
    let c = wait_condition(&clusters, "Connected", "True", "ControlPlaneReachable").await?;
    ensure!(condition(&c, "Authenticated") == Some(("True".into(), "CredentialValid".into())));
    poll_until(LIMIT, "status.lastHeartbeat", || async {
        clusters.get(CLUSTER_ID).await.ok()?.status?.last_heartbeat
    })
    .await?;

    // A job becomes an instance; its transitions reach the timeline with every field.
    cp.enqueue("job-1", &instance_job(&ns, "first"))?;
    let first = wait_ready(&instances, "first").await?;
    ensure!(
        first
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.vworkspace.io/job-id"))
            .map(String::as_str)
            == Some("job-1"),
        "the job id is on what it created"
    );
    poll_until(LIMIT, "job-1 applied", || async {
        (cp.job_state("job-1").ok()??.0 == "applied").then_some(())
    })
    .await?;
    let timeline = poll_until(LIMIT, "first's transitions in the timeline", || async {
        let t = cp.timeline().ok()?;
        kinds_for(&t, "first")
            .contains("ReconcileSucceeded")
            .then_some(t)
    })
    .await?;
    let succeeded = timeline
        .iter()
        .find(|e| {
            e.kind == "ReconcileSucceeded" && e.application_instance.as_deref() == Some("first")
        })
        .context("ReconcileSucceeded")?;
    ensure!(succeeded.cluster_id == CLUSTER_ID && succeeded.org_id == ORG_ID);
    ensure!(succeeded.namespace.as_deref() == Some(ns.as_str()));
    ensure!(succeeded.operator_version.starts_with('v') && succeeded.event_id.len() == 32);
    ensure!(!succeeded.reason.is_empty() && !succeeded.message.is_empty());
    ensure!(
        timeline.iter().any(|e| e.kind == "ConnectivityConnected"),
        "the Cluster's own transition is in the timeline too"
    );

    // A malformed job is rejected with a reason and an audit event; the next one applies.
    cp.enqueue("job-bad", "{ this is not json")?;
    cp.enqueue("job-2", &instance_job(&ns, "second"))?;
    let (state, message) = poll_until(LIMIT, "job-bad answered", || async {
        let s = cp.job_state("job-bad").ok()??;
        (s.0 != "queued" && s.0 != "delivered").then_some(s)
    })
    .await?;
    ensure!(
        state == "rejected" && message.contains("MalformedJob"),
        "{state}: {message}"
    );
    wait_ready(&instances, "second").await?;
    poll_until(LIMIT, "JobRejected in the timeline", || async {
        cp.timeline()
            .ok()?
            .iter()
            .any(|e| {
                e.kind == "JobRejected"
                    && e.reason == "MalformedJob"
                    && e.message.contains("job-bad")
            })
            .then_some(())
    })
    .await?;

    // Two 503s on the events endpoint: retried, nothing lost.
    let answered = deliver_through_fault(
        &cp,
        &instances,
        &ns,
        "third",
        json!({ "path": "events", "status": 503, "count": 2 }),
    )
    .await?;
    ensure!(
        answered["503"] == 2,
        "both 503s were hit and retried: {answered}"
    );

    // A 429 with Retry-After: waited out, then delivered.
    let answered = deliver_through_fault(
        &cp,
        &instances,
        &ns,
        "fourth",
        json!({ "path": "events", "status": 429, "retry_after": 1, "count": 1 }),
    )
    .await?;
    ensure!(
        answered["429"] == 1,
        "the 429 was answered once and retried: {answered}"
    );

    // The control plane goes away while transitions happen.
    cp.stop().await;
    let api_direct: Api<ApplicationInstance> = instances.clone();
    api_direct
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
                "metadata": { "name": "during-outage" },
                "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } },
            }))?,
        )
        .await?;
    wait_ready(&instances, "during-outage").await?;
    wait_condition(&clusters, "Connected", "False", "Reconnecting").await?;
    let lost = wait_condition(&clusters, "Disconnected", "True", "GracePeriodExceeded").await?;
    ensure!(
        condition(&lost, "Connected") == Some(("False".into(), "ControlPlaneUnreachable".into()))
    );
    let pending = lost
        .status
        .as_ref()
        .and_then(|s| s.audit_stream.as_ref())
        .map_or(0, |a| a.pending);
    let metrics = op.metrics().await?;
    ensure!(
        metrics.contains("vworkspace_operator_connectivity_state{mode=\"pull\"} -1"),
        "gauge says disconnected"
    );
    let occupancy = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vworkspace_operator_event_buffer_occupancy "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    ensure!(
        occupancy > 0.0 || pending > 0,
        "events wait in the buffer (occupancy {occupancy}, pending {pending})"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &ns);
    poll_until(LIMIT, "a ConnectivityLost Event", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ConnectivityLost"))
            .then_some(())
    })
    .await?;

    // Back: everything the operator published arrives exactly once.
    cp.resume().await?;
    wait_condition(&clusters, "Connected", "True", "ControlPlaneReachable").await?;
    poll_until(LIMIT, "the outage's transitions delivered", || async {
        kinds_for(&cp.timeline().ok()?, "during-outage")
            .contains("ReconcileSucceeded")
            .then_some(())
    })
    .await?;
    let published: BTreeSet<String> = op
        .audit_events()?
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        published.len() >= 8,
        "the audit file holds what was published: {published:?}"
    );
    let delivered = poll_until(LIMIT, "every published event delivered", || async {
        let t = cp.timeline().ok()?;
        let ids: BTreeSet<String> = t.iter().map(|e| e.event_id.clone()).collect();
        published.is_subset(&ids).then_some(t)
    })
    .await?;
    ensure!(
        delivered.len()
            == delivered
                .iter()
                .map(|e| &e.event_id)
                .collect::<BTreeSet<_>>()
                .len(),
        "no event stored twice"
    );
    poll_until(LIMIT, "ConnectivityConnected after the loss", || async {
        let n = cp
            .timeline()
            .ok()?
            .iter()
            .filter(|e| e.kind == "ConnectivityConnected")
            .count();
        (n >= 2).then_some(())
    })
    .await?;

    // SIGKILL with undelivered events: the restart replays them from status.
    cp.stop().await;
    instances
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
                "metadata": { "name": "before-kill" },
                "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } },
            }))?,
        )
        .await?;
    wait_ready(&instances, "before-kill").await?;
    op.kill();
    cp.resume().await?;
    let mut op = spawn_operator(&env, &ns, &identity, &operator_flags())?;
    poll_until(
        LIMIT,
        "before-kill's success replayed after the restart",
        || async {
            kinds_for(&cp.timeline().ok()?, "before-kill")
                .contains("ReconcileSucceeded")
                .then_some(())
        },
    )
    .await?;
    ensure!(
        op.log_lines()?
            .iter()
            .any(|l| l.contains("replaying recorded transitions (start-up)")),
        "the restart replayed from status"
    );
    let t = cp.timeline()?;
    ensure!(t.len() == t.iter().map(|e| &e.event_id).collect::<BTreeSet<_>>().len());

    // The token appears nowhere the operator writes.
    let logs = op.log_lines()?.join("\n");
    ensure!(!logs.contains(&cp.token), "token in the operator log");
    ensure!(!op.metrics().await?.contains(&cp.token), "token in metrics");
    ensure!(
        !serde_json::to_string(&op.audit_events()?)?.contains(&cp.token),
        "token in audit events"
    );
    ensure!(
        !serde_json::to_string(&t)?.contains(&cp.token),
        "token in the delivered payloads"
    );
    let all_events = serde_json::to_string(&events.list(&ListParams::default()).await?.items)?;
    ensure!(!all_events.contains(&cp.token), "token in Events");
    let cluster_json = serde_json::to_string(&clusters.get(CLUSTER_ID).await?)?;
    ensure!(!cluster_json.contains(&cp.token), "token in the Cluster");

    op.ensure_running()?;
    cp.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_authenticated_and_readiness() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("pull-auth").await?;
    let dir = std::env::temp_dir().join(format!("vws-pull-{ns}"));
    let mut cp = ControlPlane::start(&dir).await?;
    let wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    create_pull_cluster(&env, &ns, &cp.url(), wrong, 1000, 50).await?;
    let mut op = spawn_operator(
        &env,
        &ns,
        &format!("op-{}", unique_suffix()),
        &operator_flags(),
    )?;
    let clusters: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    wait_condition(&clusters, "Authenticated", "False", "CredentialRejected").await?;
    let body = poll_until(LIMIT, "/readyz 503 naming controlplane", || async {
        let (code, body) = op.probe("/readyz").await.ok()?;
        (code == 503 && body.contains("\"controlplane\"") && body.contains("401")).then_some(body)
    })
    .await?;
    ensure!(
        !body.contains(wrong),
        "the token is not in the readiness body"
    );
    ensure!(
        !op.log_lines()?.join("\n").contains(wrong),
        "nor in the log"
    );
    op.ensure_running()?;
    cp.stop().await;
    Ok(())
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_is_reported_and_the_replay_delivers_every_outcome() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("pull-overflow").await?;
    let dir = std::env::temp_dir().join(format!("vws-pull-{ns}"));
    let mut cp = ControlPlane::start(&dir).await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    create_pull_cluster(&env, &ns, &cp.url(), &cp.token, 4, 4).await?;
    let mut op = spawn_operator(
        &env,
        &ns,
        &format!("op-{}", unique_suffix()),
        &operator_flags(),
    )?;
    let clusters: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    let instances: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    wait_condition(&clusters, "Connected", "True", "ControlPlaneReachable").await?;

    cp.stop().await;
    let names = ["ov-a", "ov-b", "ov-c", "ov-d"];
    for name in names {
        instances
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
                    "metadata": { "name": name },
                    "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } },
                }))?,
            )
            .await?;
    }
    for name in names {
        wait_ready(&instances, name).await?;
    }
    let over = wait_condition(&clusters, "EventBufferOverflow", "True", "BufferOverflowed").await?;
    ensure!(
        over.status
            .as_ref()
            .and_then(|s| s.audit_stream.as_ref())
            .is_some_and(|a| a.dropped > 0)
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &ns);
    poll_until(LIMIT, "a ClusterEventBufferOverflow Event", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ClusterEventBufferOverflow"))
            .then_some(())
    })
    .await?;
    // The dropped count on the Cluster is the counter's.
    poll_until(
        LIMIT,
        "status.auditStream.dropped == dropped_total",
        || async {
            let dropped = clusters
                .get(CLUSTER_ID)
                .await
                .ok()?
                .status?
                .audit_stream?
                .dropped;
            let counter = metric(
                &op.metrics().await.ok()?,
                "vworkspace_operator_event_buffer_dropped_total",
            );
            (dropped > 0 && counter == dropped as f64).then_some(())
        },
    )
    .await?;

    cp.resume().await?;
    poll_until(LIMIT, "every terminal outcome in the timeline", || async {
        let t = cp.timeline().ok()?;
        names
            .iter()
            .all(|n| kinds_for(&t, n).contains("ReconcileSucceeded"))
            .then_some(())
    })
    .await?;
    wait_condition(
        &clusters,
        "EventBufferOverflow",
        "False",
        "BufferWithinCapacity",
    )
    .await?;
    let t = cp.timeline()?;
    ensure!(t.len() == t.iter().map(|e| &e.event_id).collect::<BTreeSet<_>>().len());
    op.ensure_running()?;
    cp.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_and_every_event_arrives_once() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("pull-413").await?;
    let dir = std::env::temp_dir().join(format!("vws-pull-{ns}"));
    let mut cp = ControlPlane::start(&dir).await?;
    let _flux = FluxSimulator::start(env.client.clone(), Some(&ns));
    create_pull_cluster(&env, &ns, &cp.url(), &cp.token, 1000, 50).await?;
    let mut op = spawn_operator(
        &env,
        &ns,
        &format!("op-{}", unique_suffix()),
        &operator_flags(),
    )?;
    let clusters: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    let instances: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &ns);
    wait_condition(&clusters, "Connected", "True", "ControlPlaneReachable").await?;

    // The control plane away: the transitions of four instances wait in the buffer, so
    // the first batch after its return holds many events.
    cp.stop().await;
    let names: Vec<String> = (0..4).map(|i| format!("split-{i}")).collect();
    for name in &names {
        instances
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
                    "metadata": { "name": name },
                    "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "nextcloud", "version": "1.0.0" } },
                }))?,
            )
            .await?;
    }
    for name in &names {
        wait_ready(&instances, name).await?;
    }
    let published =
        |op: &vworkspace_testkit::fixtures::OperatorProcess| -> Result<BTreeSet<String>> {
            Ok(op
                .audit_events()?
                .iter()
                .filter(|e| {
                    e["application_instance"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("split-"))
                })
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect())
        };
    poll_until(LIMIT, "every success published", || async {
        let audit = op.audit_events().ok()?;
        names
            .iter()
            .all(|n| {
                audit.iter().any(|e| {
                    e["kind"] == "ReconcileSucceeded" && e["application_instance"] == n.as_str()
                })
            })
            .then_some(())
    })
    .await?;
    let expected = published(&op)?;
    ensure!(
        expected.len() >= 8,
        "two or more events per instance: {expected:?}"
    );

    // Back, answering 413 to the first batch of events.
    cp.resume_with_faults(vec![FaultSpec {
        path: PathClass::Events,
        status: Some(413),
        retry_after: None,
        refuse: false,
        delay_ms: None,
        count: Some(1),
    }])
    .await?;
    let stored = poll_until(LIMIT, "every success delivered", || async {
        let timeline = cp.timeline().ok()?;
        names
            .iter()
            .all(|n| kinds_for(&timeline, n).contains("ReconcileSucceeded"))
            .then_some(timeline)
    })
    .await?;
    let stats = cp.admin(reqwest::Method::GET, "/admin/stats", None).await?;
    let answered = &stats["requests"]["POST /api/agent/events"];
    ensure!(answered["413"] == 1, "the 413 was answered: {answered}");
    let split = op.log_lines()?.iter().any(|l| {
        l.contains("the control plane refused an audit batch; splitting it")
            && !l.contains("\"events\":1,")
    });
    ensure!(split, "the shipper split a batch of several events");
    ensure!(
        !op.log_lines()?
            .iter()
            .any(|l| l.contains("refuses this audit event on its own")),
        "no event was given up"
    );

    // Exactly once: every published id has one row, and no row is there twice.
    let rows: Vec<&str> = stored
        .iter()
        .filter(|e| {
            e.application_instance
                .as_deref()
                .is_some_and(|a| a.starts_with("split-"))
        })
        .map(|e| e.event_id.as_str())
        .collect();
    let distinct: BTreeSet<String> = rows.iter().map(|s| (*s).to_owned()).collect();
    ensure!(rows.len() == distinct.len(), "a row twice: {rows:?}");
    // Later transitions may still be on their way; the ones published before are all in.
    ensure!(
        expected.is_subset(&distinct),
        "missing: {:?}",
        expected.difference(&distinct).collect::<Vec<_>>()
    );
    let store_rows = cp.store()?.event_count()?;
    ensure!(
        store_rows as usize == cp.timeline()?.len(),
        "the store and the timeline agree"
    );
    op.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_secret_is_reported_on_the_cluster_until_it_exists() -> Result<()> {
    let env = TestEnv::shared().await?;
    install_crds(&env).await?;
    let ns = env.fresh_namespace("pull-secret").await?;
    let dir = std::env::temp_dir().join(format!("vws-pull-{ns}"));
    let mut cp = ControlPlane::start(&dir).await?;
    create_pull_cluster(&env, &ns, &cp.url(), &cp.token, 1000, 50).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let secret = secrets.get("controlplane-token").await?;
    secrets
        .delete("controlplane-token", &kube::api::DeleteParams::default())
        .await?;
    let mut op = spawn_operator(
        &env,
        &ns,
        &format!("op-{}", unique_suffix()),
        &operator_flags(),
    )?;
    let clusters: Api<Cluster> = Api::namespaced(env.client.clone(), &ns);
    let c = wait_condition(&clusters, "Authenticated", "False", "CredentialMissing").await?;
    let message = c
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|x| x.type_ == "Authenticated"))
        .map(|x| x.message.clone())
        .unwrap_or_default();
    ensure!(
        message.contains("controlplane-token") && message.contains("does not exist"),
        "names the Secret: {message}"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &ns);
    let warning = |reason: &'static str, type_: &'static str| {
        let events = events.clone();
        async move {
            poll_until(
                LIMIT,
                &format!("a {type_} Event {reason} on the Cluster"),
                || async {
                    events
                        .list(
                            &ListParams::default().fields(&format!("regarding.name={CLUSTER_ID}")),
                        )
                        .await
                        .ok()?
                        .items
                        .into_iter()
                        .find(|e| {
                            e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_)
                        })
                },
            )
            .await
        }
    };
    warning("CredentialMissing", "Warning").await?;

    // The Secret is back: the link starts and the credential is accepted.
    let mut again = secret.clone();
    again.metadata = kube::api::ObjectMeta {
        name: secret.metadata.name.clone(),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &again).await?;
    wait_condition(&clusters, "Authenticated", "True", "CredentialValid").await?;
    warning("CredentialValid", "Normal").await?;
    op.ensure_running()?;
    cp.stop().await;
    Ok(())
}
