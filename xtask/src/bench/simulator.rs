//! The first phase of `cargo xtask bench`: the simulated Flux alone, with no operator,
//! on pre-created HelmReleases and HelmRepositories, to show how much of the time to
//! all-Ready the simulator itself can account for.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use vworkspace_testkit::cluster::LocalCluster;
use vworkspace_testkit::env::poll_until;
use vworkspace_testkit::sim::flux::{self, FluxOptions, FluxSimulator, FluxStats};

use super::{Options, cpu_times, prepare, secs};

/// `--simulator-only`: the cluster, the CRDs, the namespaces and the simulator phase.
pub(super) async fn simulator_only(cluster: &LocalCluster, opts: &Options) -> Result<SimPhase> {
    let (client, namespaces) = prepare(cluster, opts).await?;
    simulator_phase(
        cluster,
        &client,
        &namespaces,
        opts.sim_releases.max(1),
        opts,
    )
    .await
}

/// The label on the objects of the simulator phase, so that they can be deleted
/// before the operator starts.
const SIM_LABEL: (&str, &str) = ("bench.vworkspace.io/phase", "simulator");

/// The simulated Flux on its own: what it takes to bring pre-created HelmReleases
/// (and their HelmRepositories) to Ready with no operator running.
#[derive(Debug, Clone)]
pub(super) struct SimPhase {
    pub(super) releases: usize,
    pub(super) in_flight: usize,
    /// Time to create the objects (before the simulator started).
    pub(super) created_in: Duration,
    /// From the simulator's start until every release and repository had its status
    /// written (and a list confirmed every release Ready).
    pub(super) all_ready: Option<Duration>,
    pub(super) stats: FluxStats,
    /// CPU seconds of the control plane and of this process during the phase.
    pub(super) cpu: Vec<(String, f64)>,
}

impl SimPhase {
    pub(super) fn label(&self) -> String {
        format!(
            "Simulated Flux alone (no operator): {n} HelmReleases + repositories to Ready",
            n = self.releases
        )
    }

    pub(super) fn value(&self) -> String {
        match self.all_ready {
            Some(d) => format!(
                "{} ({} in flight, {} status writes)",
                secs(d),
                self.in_flight,
                self.stats.writes
            ),
            None => format!(
                "not reached in 5 min: {} releases, {} repositories done",
                self.stats.releases, self.stats.repositories
            ),
        }
    }

    pub(super) fn cpu_value(&self) -> String {
        self.cpu
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(super) fn summary(&self) -> String {
        format!(
            "{}\n  {}\n  created in {}; CPU during the phase: {}",
            self.label(),
            self.value(),
            secs(self.created_in),
            self.cpu_value()
        )
    }
}

/// Create `n` HelmRepositories and HelmReleases (`sim-<i>` in `bench-<i mod M>`), start
/// the simulator, wait until it has written every status, check with a list, then
/// delete them all again.
pub(super) async fn simulator_phase(
    cluster: &LocalCluster,
    client: &Client,
    namespaces: &[String],
    n: usize,
    opts: &Options,
) -> Result<SimPhase> {
    let labelled = |mut obj: DynamicObject| {
        obj.metadata.labels = Some([(SIM_LABEL.0.to_owned(), SIM_LABEL.1.to_owned())].into());
        obj
    };
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let namespace = &namespaces[i % namespaces.len()];
            async move {
                let name = format!("sim-{i}");
                let repo = labelled(flux::helm_repository(
                    namespace,
                    &name,
                    "https://charts.example.com/bench",
                )?);
                let release = labelled(flux::helm_release(namespace, &name, "podinfo", "6.7.0")?);
                for (resource, obj) in [
                    (flux::helm_repository_resource(), repo),
                    (flux::helm_release_resource(), release),
                ] {
                    Api::namespaced_with(client.clone(), namespace, &resource)
                        .create(&PostParams::default(), &obj)
                        .await
                        .with_context(|| {
                            format!("creating {} {namespace}/{name}", resource.kind)
                        })?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(opts.in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    let created_in = started.elapsed();
    eprintln!(
        "bench: simulator phase: created {n} HelmRepositories and HelmReleases in {}",
        secs(created_in)
    );

    let mut pids = cluster.pids();
    pids.push(("xtask (Flux simulator)".to_owned(), std::process::id()));
    let cpu_before = cpu_times(&pids);
    let t0 = Instant::now();
    let simulator = FluxSimulator::start_with(
        client.clone(),
        None,
        FluxOptions {
            max_in_flight: opts.flux_in_flight,
        },
    );
    let deadline = Duration::from_secs(300);
    let mut all_ready = None;
    let mut last_report = Instant::now();
    while t0.elapsed() < deadline {
        let stats = simulator.stats();
        if stats.releases >= n as u64 && stats.repositories >= n as u64 {
            all_ready = Some(t0.elapsed());
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "bench: simulator phase: {}/{n} releases, {}/{n} repositories ({})",
                stats.releases,
                stats.repositories,
                secs(t0.elapsed())
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_after = cpu_times(&pids);
    let stats = simulator.stats();
    drop(simulator);
    let cpu = diff_cpu(&cpu_before, cpu_after);

    let selector = format!("{}={}", SIM_LABEL.0, SIM_LABEL.1);
    let releases: Api<DynamicObject> =
        Api::all_with(client.clone(), &flux::helm_release_resource());
    let listed = releases
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing the simulator phase's HelmReleases")?;
    let ready = listed
        .items
        .iter()
        .filter(|hr| {
            let status = &hr.data["status"];
            status["observedGeneration"].as_i64() == hr.metadata.generation
                && status["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .count();
    if all_ready.is_some() && ready != n {
        bail!("the simulator reported {n} releases done, but a list shows {ready} Ready");
    }
    eprintln!(
        "bench: simulator phase: {ready}/{n} Ready after {}; deleting them",
        all_ready.map_or_else(|| "the deadline".to_owned(), secs)
    );

    // Leave nothing for the operator to list or watch.
    let params = ListParams::default().labels(&selector);
    futures::stream::iter(namespaces)
        .map(|namespace| {
            let params = params.clone();
            async move {
                for resource in [
                    flux::helm_release_resource(),
                    flux::helm_repository_resource(),
                ] {
                    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
                        .delete_collection(&DeleteParams::default(), &params)
                        .await
                        .with_context(|| {
                            format!("deleting the {}s in {namespace}", resource.kind)
                        })?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(opts.in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    for resource in [
        flux::helm_release_resource(),
        flux::helm_repository_resource(),
    ] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        poll_until(
            Duration::from_secs(60),
            &format!("the simulator phase's {}s to be gone", resource.kind),
            || async {
                let left = api.list(&params).await.ok()?;
                left.items.is_empty().then_some(())
            },
        )
        .await?;
    }
    Ok(SimPhase {
        releases: n,
        in_flight: opts.flux_in_flight,
        created_in,
        all_ready,
        stats,
        cpu,
    })
}

/// CPU seconds used between two [`cpu_times`] readings. "everything else" is read a
/// moment apart from the processes' own counters, so it can come out a hair below
/// zero on an idle machine: differences are never reported as negative.
pub(super) fn diff_cpu(before: &[(String, f64)], after: Vec<(String, f64)>) -> Vec<(String, f64)> {
    after
        .into_iter()
        .map(|(name, after)| {
            let before = before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |(_, b)| *b);
            (name, (after - before).max(0.0))
        })
        .collect()
}
