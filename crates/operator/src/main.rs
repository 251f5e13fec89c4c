//! The vworkspace-operator binary: the ApplicationInstance, Operation and Cluster
//! controllers, the event publisher and leader election, wired to telemetry and the
//! control-plane agent.
//!
//! Start-up order matters for what a person sees: logging first (every later line is
//! JSON with the always-set fields), then the metrics and probe servers (so `/metrics`
//! answers and `/readyz` explains itself while everything else starts), then the
//! identity (`cluster_id`, `org_id`) from the Cluster CR — waited for, with `/readyz`
//! naming why, unless both flags give it — then leader election, and only on the
//! leader the controllers.

mod checks;
mod cli;
mod controllers;
mod identity;
mod leader;
mod link;
mod publisher;
mod replay;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use vworkspace_api::AuditSource;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::cluster::Cluster;
use vworkspace_api::labels;
use vworkspace_api::thirdparty::flux::{HelmRelease, HelmRepository};
use vworkspace_reconcile::cluster::AuditView;
use vworkspace_runtime::{
    Controller, Readiness, ReconcileResult, RuntimeMetrics, SharedWatch, Shutdown,
};
use vworkspace_telemetry::health::{self, Health, serve_metrics_on};
use vworkspace_telemetry::logging::{self, LogOptions};
use vworkspace_telemetry::metrics::{
    AgentMetrics, ClusterMetrics, Controller as ControllerLabel, LeaderElectionMetrics,
    OperationMetrics, ParseLabelError, ProcessCollector, ReconcileMetrics,
    ReconcileResult as SpecResult, RestClientMetrics,
};

use crate::cli::{Command, Options};
use crate::publisher::{AuditSink, DiscardAuditSink, FileAuditSink, Publisher, Tee};

/// The operator's version as the spec shows it (`v0.1.0`).
pub fn operator_version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("vworkspace-operator: {err}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("vworkspace-operator {}", operator_version());
            ExitCode::SUCCESS
        }
        Command::Crds { root } => match vworkspace_api::crds::write_all(&root) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("vworkspace-operator crds: {:#}", anyhow::Error::from(err));
                ExitCode::FAILURE
            }
        },
        Command::Run(opts) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("vworkspace-operator: cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(*opts)) {
                Ok(code) => code,
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(opts: Options) -> Result<ExitCode> {
    let overrides = identity::Overrides {
        cluster_id: opts.cluster_id.clone(),
        org_id: opts.org_id.clone(),
    };
    // Until the Cluster is read, lines carry the explicit flags, or empty ids.
    let log_identity = logging::init(LogOptions {
        level: opts.zap_log_level,
        encoder: opts.zap_encoder,
        cluster_id: opts.cluster_id.clone().unwrap_or_default(),
        org_id: opts.org_id.clone().unwrap_or_default(),
        operator_version: operator_version(),
        filter: None,
    })?;
    // Both servers are bound before anything starts: a port in use stops the operator
    // here, naming the flag and the address, with a non-zero exit.
    let metrics_listener = health::bind(&opts.metrics_bind_address)
        .await
        .context("--metrics-bind-address")?;
    let probe_listener = health::bind(&opts.health_probe_bind_address)
        .await
        .context("--health-probe-bind-address")?;

    let mut registry = Registry::default();
    let reconcile_metrics = ReconcileMetrics::register(&mut registry);
    let operation_kinds = vworkspace_reconcile::catalog::builtin()
        .kinds()
        .map(|(ty, engine)| Ok((ty.as_str().parse()?, engine.as_str().parse()?)))
        .collect::<Result<Vec<_>, ParseLabelError>>()
        .context("the operation catalog names a type or engine the metrics do not know")?;
    let operation_metrics = OperationMetrics::register(&mut registry, operation_kinds);
    let agent_metrics = AgentMetrics::register(&mut registry);
    agent_metrics.register_beyond_spec(&mut registry);
    let cluster_metrics = ClusterMetrics::register(&mut registry);
    let runtime_metrics = RuntimeMetrics::register(&mut registry);
    let leader_metrics = LeaderElectionMetrics::register(&mut registry, &opts.leader_election_id);
    let rest = RestClientMetrics::register(&mut registry);
    registry.register_collector(Box::new(ProcessCollector::new()));

    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding the cluster (in-cluster or KUBECONFIG)")?,
    };
    let layer = rest.layer(&config.cluster_url);
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let (leading_tx, leading_rx) = watch::channel(!opts.leader_elect);
    leader_metrics.set_leader(!opts.leader_elect);

    // The probes answer from here on; controllers join `readiness` as they are built.
    let readiness = Readiness::new();
    let clusters_seen =
        identity::Clusters::watch(client.clone(), &opts.namespace, overrides.clone());
    let health = Health::new();
    checks::register(
        &health,
        client.clone(),
        readiness.clone(),
        leading_rx.clone(),
        rest.forbidden(),
    );
    // Only the leader runs the link; until it reports, and on a standby, the check passes.
    let controlplane_check = vworkspace_telemetry::health::CheckHandle::new();
    controlplane_check.set_ok();
    health.add_readiness_handle(
        vworkspace_agent::link::READINESS_CHECK,
        controlplane_check.clone(),
    );
    health.add_readiness_check("cluster", {
        let clusters = clusters_seen.clone();
        // Every replica: a standby needs the identity as much as the leader does.
        move || {
            let verdict = clusters.readiness();
            async move { verdict }
        }
    });
    let registry = Arc::new(registry);
    let metrics_server = tokio::spawn({
        let stop = shutdown();
        async move {
            match metrics_listener {
                Some(listener) => serve_metrics_on(listener, registry, stop).await,
                None => Ok(()),
            }
        }
    });
    let probe_server = tokio::spawn({
        let serve = probe_listener.map(|listener| health.serve_on(listener, shutdown()));
        async move {
            match serve {
                Some(serve) => serve.await,
                None => Ok(()),
            }
        }
    });

    let identity = match overrides.explicit() {
        Some(explicit) => {
            clusters_seen.run_as(explicit.clone());
            tracing::info!(
                cluster_id = %explicit.cluster_id,
                org_id = %explicit.org_id,
                "identity from --cluster-id and --org-id; the Cluster must agree (readiness `cluster`)"
            );
            explicit
        }
        None => {
            tokio::select! {
                found = clusters_seen.wait_for_identity() => found,
                _ = terminate_signal() => {
                    shutdown_tx.send_replace(true);
                    let _ = tokio::join!(metrics_server, probe_server);
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    log_identity.set(&identity.cluster_id, &identity.org_id);
    if overrides.explicit().is_none() {
        tracing::info!(
            cluster = %format!("{}/{}", opts.namespace, identity.cluster_id),
            "identity taken from the Cluster"
        );
    }

    let mut sinks: Vec<Arc<dyn AuditSink>> = Vec::new();
    if let Some(path) = &opts.audit_log_file {
        sinks.push(Arc::new(
            FileAuditSink::open(path).with_context(|| format!("opening {}", path.display()))?,
        ));
    }
    // The control-plane audit stream: buffered from the start, shipped by the leader once
    // the Cluster says Pull mode (link::Supervisor).
    let shipper = link::new_shipper(&agent_metrics);
    let shipper_sink = link::ShipperSink::new(shipper.clone());
    sinks.push(Arc::new(shipper_sink.clone()));
    if sinks.is_empty() {
        sinks.push(Arc::new(DiscardAuditSink));
    }
    let audit: Arc<dyn AuditSink> = Arc::new(Tee(sinks));
    let publisher = Publisher::new(
        client.clone(),
        AuditSource {
            cluster_id: identity.cluster_id.clone(),
            org_id: identity.org_id.clone(),
            operator_version: operator_version(),
        },
        opts.identity.clone(),
        Arc::clone(&audit),
    );

    // One controller for now; the Operation and Cluster controllers join it here.
    let (instances, releases, repositories) = match &opts.watch_namespace {
        Some(ns) => (
            Api::<ApplicationInstance>::namespaced(client.clone(), ns),
            Api::<HelmRelease>::namespaced(client.clone(), ns),
            Api::<HelmRepository>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // One watch and cache per child kind for every controller that looks at them, and
    // only of the operator's own children (selected on the label it puts on them), so
    // other teams' releases never enter the caches.
    let ours = watcher::Config::default().labels(labels::APPLICATION_INSTANCE);
    let releases = SharedWatch::new(releases, ours.clone());
    let repositories = SharedWatch::new(repositories, ours);
    // The managed namespaces: instances elsewhere get no children (NamespaceNotManaged),
    // and labelling a namespace reconciles the instances in it.
    let namespaces = SharedWatch::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().labels(&labels::managed_namespace_selector()),
    );
    let applied_releases = controllers::application_instance::Applied::<HelmRelease>::default();
    let applied_repositories =
        controllers::application_instance::Applied::<HelmRepository>::default();
    let ai_ctx = Arc::new(controllers::application_instance::Context {
        client: client.clone(),
        publisher: publisher.clone(),
        namespaces: namespaces.store(),
        releases: releases.store(),
        repositories: repositories.store(),
        written: controllers::application_instance::WrittenVersions::default(),
        applied_releases: applied_releases.clone(),
        applied_repositories: applied_repositories.clone(),
    });
    let ai_controller = Controller::new(
        controllers::application_instance::NAME,
        instances,
        &runtime_metrics,
    );
    let instances_in = {
        let cached = ai_controller.store();
        move |ns: &Namespace| -> Vec<ObjectRef<ApplicationInstance>> {
            let name = ns.metadata.name.as_deref();
            cached
                .state()
                .iter()
                .filter(|obj| obj.metadata.namespace.as_deref() == name)
                .map(|obj| ObjectRef::from_obj(obj.as_ref()))
                .collect()
        }
    };
    let ai_controller = ai_controller
        // A HelmRelease event that is our own apply coming back reconciles nothing, and
        // neither does a change to parts of the release the reconcile does not read.
        .owns_shared_ignoring(&releases, move |old, hr: &HelmRelease| {
            applied_releases.is_own_write(old, hr)
                || old.is_some_and(|old| {
                    !controllers::application_instance::release_change_matters(old, hr)
                })
        })
        .watches_shared(&namespaces, instances_in)
        // The repository's status is not an input of the plan: its cache is read when
        // applying, and its changes reconcile nothing (they only let the copy of the
        // last apply go).
        .watches_shared(&repositories, move |repo: &HelmRepository| {
            applied_repositories.caught_up(repo);
            None
        })
        .ignore_primary_changes({
            let written = ai_ctx.written.clone();
            move |obj: &ApplicationInstance| written.is_own_write(obj)
        })
        .report_errors(controllers::application_instance::reporter(Arc::clone(
            &ai_ctx,
        )))
        .on_undecodable(controllers::application_instance::undecodable_reporter(
            Arc::clone(&ai_ctx),
        ))
        .max_concurrent_reconciles(opts.max_concurrent_reconciles.get())
        .on_reconcile(spec_metrics(
            &reconcile_metrics,
            ControllerLabel::ApplicationInstance,
        ));

    // --- Operation controller (begin) ---
    // The Operation controller reads the ApplicationInstance controller's cache; that
    // cache tells it of every instance change once it holds it (one watch of the kind,
    // and no Operation reconcile that finds the instance older than its notice).
    let (instance_changed, instance_changes) = futures::channel::mpsc::unbounded();
    let ai_controller =
        ai_controller.notify_changes(move |key: &ObjectRef<ApplicationInstance>| {
            // Fails only once the Operation controller has stopped; nothing is waiting then.
            let _ = instance_changed.unbounded_send(key.clone());
        });
    let op_api = match &opts.watch_namespace {
        Some(ns) => Api::<vworkspace_api::Operation>::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let op_controller = Controller::new(controllers::operation::NAME, op_api, &runtime_metrics);
    // Also read by the Pull-mode replay.
    let operation_store = op_controller.store();
    let op_children =
        controllers::operation::ChildWatches::new(&client, opts.watch_namespace.as_deref());
    // The catalog ConfigMap lives in the operator's own namespace.
    let catalog_config = SharedWatch::new(
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &opts.namespace),
        watcher::Config::default().fields(&format!(
            "metadata.name={}",
            vworkspace_reconcile::catalog::CONFIGMAP_NAME
        )),
    );
    let (op_requeue, op_requeued) = controllers::operation::requeue_channel();
    let op_ctx = Arc::new(controllers::operation::Context {
        client: client.clone(),
        publisher: publisher.clone(),
        metrics: operation_metrics,
        operations: operation_store.clone(),
        namespaces: namespaces.store(),
        instances: ai_controller.store(),
        releases: releases.clone(),
        children: op_children.clone(),
        catalog_config: catalog_config.store(),
        catalog_namespace: opts.namespace.clone(),
        catalog: Default::default(),
        written: Default::default(),
        applied: Default::default(),
        requeue: op_requeue,
    });
    let op_controller = {
        use controllers::operation::{in_namespace, owner_mapper as owner, targeting};
        let s = operation_store.clone();
        let by_instance = futures::StreamExt::flat_map(
            instance_changes,
            move |ai: ObjectRef<ApplicationInstance>| {
                futures::stream::iter(targeting(&s, ai.namespace.as_deref(), &ai.name))
            },
        );
        let s = operation_store.clone();
        let by_release = move |hr: &HelmRelease| match hr.labels().get(labels::APPLICATION_INSTANCE)
        {
            Some(instance) => targeting(&s, hr.metadata.namespace.as_deref(), instance),
            None => Vec::new(),
        };
        let s = operation_store.clone();
        op_controller
            .watches_shared(&op_children.backups, owner(&operation_store))
            .watches_shared(&op_children.restores, owner(&operation_store))
            .watches_shared(&op_children.workflows, owner(&operation_store))
            .watches_shared(&op_children.jobs, owner(&operation_store))
            .watches_shared(&op_children.replication_sources, owner(&operation_store))
            .watches_shared(&op_children.snapshots, owner(&operation_store))
            .watches_shared(&namespaces, move |ns: &Namespace| in_namespace(&s, ns))
            .watches_shared(&releases, by_release)
            .watches_shared(
                &catalog_config,
                |_: &k8s_openapi::api::core::v1::ConfigMap| None,
            )
            .triggered_by(by_instance)
            .triggered_by(op_requeued)
            .triggered_by(controllers::operation::engine_appeared(
                op_children.clone(),
                operation_store.clone(),
            ))
            .ignore_primary_changes({
                let written = op_ctx.written.clone();
                move |obj: &vworkspace_api::Operation| written.is_own_write(obj)
            })
            .report_errors(controllers::operation::reporter(Arc::clone(&op_ctx)))
            .max_concurrent_reconciles(opts.max_concurrent_reconciles.get())
            .on_reconcile(spec_metrics(&reconcile_metrics, ControllerLabel::Operation))
    };
    // --- Operation controller (end) ---
    readiness.add(ai_controller.status());
    let instance_store = ai_controller.store();
    let link_readiness = readiness.clone();

    // The Cluster controller: the one writer of Cluster status. It reports what the
    // other controllers, the namespaces, discovery and (in Pull mode) the link show.
    let cluster_key = ObjectRef::<Cluster>::new(&identity.cluster_id).within(&opts.namespace);
    let (link_tx, link_rx) = watch::channel(None);
    let (audit_tx, audit_rx) = watch::channel(AuditView::default());
    let cluster_written = Arc::new(std::sync::Mutex::new(None));
    let cluster_controller = Controller::new(
        controllers::cluster::NAME,
        Api::<Cluster>::namespaced(client.clone(), &opts.namespace),
        &runtime_metrics,
    );
    readiness.add(cluster_controller.status());
    let clusters = cluster_controller.store();
    let cluster_store = clusters.clone();
    let cluster_controller = cluster_controller
        .watches_shared(&namespaces, {
            let key = cluster_key.clone();
            let clusters = clusters.clone();
            // Until the Cluster exists there is nothing to report on.
            move |_: &Namespace| clusters.get(&key).map(|_| key.clone())
        })
        // The catalog ConfigMap: its parse result is the OperationCatalogValid condition.
        .watches_shared(&catalog_config, {
            let key = cluster_key.clone();
            let clusters = clusters.clone();
            move |_: &k8s_openapi::api::core::v1::ConfigMap| clusters.get(&key).map(|_| key.clone())
        })
        .triggered_by(controllers::cluster::triggers(
            clusters.clone(),
            cluster_key.clone(),
            link_rx.clone(),
            audit_rx.clone(),
            &readiness,
        ))
        .ignore_primary_changes({
            let written = Arc::clone(&cluster_written);
            move |obj: &Cluster| controllers::cluster::is_own_write(&written, obj)
        })
        .on_reconcile(spec_metrics(&reconcile_metrics, ControllerLabel::Cluster));
    // In /readyz, but not among the Cluster controller's triggers: each of its dozen
    // watches syncing would reconcile the Cluster once more. ControllersHealthy still
    // reads it at every Cluster reconcile.
    readiness.add(op_controller.status());
    let cluster_ctx = Arc::new(controllers::cluster::Context {
        client: client.clone(),
        publisher: publisher.clone(),
        key: cluster_key.clone(),
        operator_version: operator_version(),
        namespaces: namespaces.store(),
        readiness: readiness.clone(),
        link: link_rx,
        audit: audit_rx,
        discovery: controllers::cluster::Discovery::new(
            opts.cluster_resync.as_duration(),
            opts.velero_namespace.clone(),
        ),
        resync: opts.cluster_resync.as_duration(),
        written: cluster_written,
        metrics: cluster_metrics,
        catalog_config: catalog_config.store(),
    });
    // A failed reconcile is reported on the Cluster itself.
    let cluster_controller =
        cluster_controller.report_errors(controllers::cluster::reporter(Arc::clone(&cluster_ctx)));

    // Leadership lost: the controllers stop at once, cutting in-flight reconciles off.
    let (abort_tx, mut abort_rx) = watch::channel(false);
    let abort = async move {
        if abort_rx.wait_for(|abort| *abort).await.is_err() {
            // The sender is gone only when `run` returns: never an abort.
            std::future::pending::<()>().await;
        }
    };

    let elector = opts.leader_elect.then(|| {
        leader::Elector::new(
            client.clone(),
            &opts.namespace,
            &opts.leader_election_id,
            &opts.identity,
            leader::Timing::default(),
        )
    });
    let mut lost_leadership = false;
    if let Some(elector) = elector.clone() {
        let tx = leading_tx.clone();
        let metrics = leader_metrics.clone();
        let mut rx = leading_rx.clone();
        tokio::spawn(elector.run(tx));
        tracing::info!(lease = %opts.leader_election_id, identity = %opts.identity, "waiting to become the leader");
        tokio::select! {
            won = rx.wait_for(|leading| *leading) => {
                if won.is_err() {
                    anyhow::bail!("leader election stopped");
                }
                metrics.set_leader(true);
            }
            _ = terminate_signal() => {
                shutdown_tx.send_replace(true);
                let _ = tokio::join!(metrics_server, probe_server);
                return Ok(ExitCode::SUCCESS);
            }
        }
    }

    tracing::info!(
        controllers = "applicationinstance,operation,cluster",
        "starting controllers"
    );
    let (abort_all, _) = tokio::sync::broadcast::channel::<()>(1);
    let stop = |abort: tokio::sync::broadcast::Receiver<()>| {
        let mut abort = abort;
        Shutdown::new(shutdown())
            .abort_on(async move {
                let _ = abort.recv().await;
            })
            .drain_timeout(opts.graceful_shutdown_timeout.as_duration())
    };
    let controller_task = tokio::spawn(futures::future::join3(
        op_controller.run(
            controllers::operation::reconcile,
            op_ctx,
            stop(abort_all.subscribe()),
        ),
        ai_controller.run(
            controllers::application_instance::reconcile,
            ai_ctx,
            stop(abort_all.subscribe()),
        ),
        cluster_controller.run(
            controllers::cluster::reconcile,
            cluster_ctx,
            stop(abort_all.subscribe()),
        ),
    ));
    let (link_stop_tx, link_stop) = watch::channel(false);
    let link_task = tokio::spawn(
        link::Supervisor {
            client: client.clone(),
            clusters: cluster_store,
            key: cluster_key.clone(),
            source: AuditSource {
                cluster_id: identity.cluster_id.clone(),
                org_id: identity.org_id.clone(),
                operator_version: operator_version(),
            },
            shipper: shipper.clone(),
            sink: shipper_sink,
            instances: instance_store,
            operations: Some(operation_store.clone()),
            metrics: agent_metrics.clone(),
            readiness: controlplane_check,
            link_tx,
            audit_tx,
            jobs: vworkspace_agent::jobs::JobLoopConfig {
                wait: opts.job_poll_wait.as_duration(),
                ..Default::default()
            },
            readiness_of_controllers: link_readiness,
        }
        .run(link_stop),
    );
    tokio::spawn({
        let abort_all = abort_all.clone();
        async move {
            abort.await;
            let _ = abort_all.send(());
        }
    });

    let mut leading = leading_rx.clone();
    tokio::select! {
        _ = terminate_signal() => tracing::info!("shutting down"),
        _ = leading.wait_for(|l| !*l) => {
            tracing::error!("leadership lost; exiting so that only the leader reconciles");
            abort_tx.send_replace(true);
            leader_metrics.set_leader(false);
            lost_leadership = true;
        }
    }
    shutdown_tx.send_replace(true);
    let _ = controller_task.await;
    link_stop_tx.send_replace(true);
    let _ = link_task.await;
    if lost_leadership {
        // Another replica takes over at once; hand over what was published, quickly.
        audit.flush().await;
    } else {
        audit.close().await;
    }
    if let Some(elector) = elector
        && !lost_leadership
    {
        elector.release().await;
        leader_metrics.set_leader(false);
    }
    let _ = tokio::join!(metrics_server, probe_server);
    drop(leading_tx);
    Ok(if lost_leadership {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The observer feeding `vworkspace_operator_reconcile_*` for controller `label`.
fn spec_metrics(
    metrics: &ReconcileMetrics,
    label: ControllerLabel,
) -> impl Fn(&vworkspace_runtime::ReconcileOutcome<'_>) + Send + Sync + 'static {
    let metrics = metrics.clone();
    move |outcome| {
        let result = match outcome.result {
            ReconcileResult::Success => SpecResult::Success,
            ReconcileResult::Error => SpecResult::Error,
            ReconcileResult::Requeue | ReconcileResult::RequeueAfter => SpecResult::Requeue,
        };
        metrics.record_reconcile(label, result, outcome.duration);
    }
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn terminate_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
