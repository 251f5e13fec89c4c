//! `cargo xtask bench`: how long the ApplicationInstance controller takes to bring N
//! instances to Ready on a real local control plane, what that costs, and whether it
//! then stays quiet.
//!
//! One run: build the operator (release), start a fresh [`LocalCluster`] under
//! `<cache>/bench-runs/<pid>`, install the CRDs, create the namespaces, time the
//! simulated Flux alone on pre-created HelmReleases ([`simulator`]), start the
//! simulator and the operator, create the instances with bounded parallelism, poll
//! until every one is Ready, scrape the operator's `/metrics` (against a scrape taken
//! just before the first create), wait the steady-state window with no change and
//! scrape again, stop everything, print a table and rewrite one column of the
//! generated section of `docs/benchmarks.md` ([`report`]).
//!
//! API requests are the operator's own `rest_client_requests_total`: the harness (the
//! creates, the polls, the simulator) runs in this process with its own client, so
//! none of its requests are counted.
//!
//! Nothing here asserts a timing: the command reports numbers, it does not judge them.
//! It fails only when the setup fails; a run that misses its deadline is reported (and
//! written to the doc) as such, and the steady-state verdict is printed as PASS/FAIL
//! without changing the exit status.

mod operations;
mod report;
mod simulator;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::binaries::{self, K8sBinaries};
use vworkspace_testkit::cluster::{self, Lifetime, LocalCluster};
use vworkspace_testkit::fixtures::{self, OperatorProcess};
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::flux::{DEFAULT_MAX_IN_FLIGHT, FluxOptions, FluxSimulator};

use report::{Column, Delta, Results, Steady, secs};

/// The controller whose numbers are reported (its `controller` metric label).
const CONTROLLER: &str = "applicationinstance";
/// The operator's namespace (its default `--namespace`).
const OPERATOR_NAMESPACE: &str = "vworkspace-system";
/// The doc this command keeps up to date, relative to the workspace root.
const DOC: &str = "docs/benchmarks.md";

pub const USAGE: &str = "\
  bench [FLAGS]       measure the ApplicationInstance controller on a fresh local cluster
                      and write the numbers to docs/benchmarks.md
                        --instances N   ApplicationInstances to create [1000]
                        --namespaces M  namespaces to spread them over [100]
                        --workers W     operator --max-concurrent-reconciles [4]
                        --in-flight K   concurrent creates [16]
                        --timeout SECS  give up waiting for Ready after SECS [900]
                        --steady-state D
                                        after all are Ready, wait D (`10m`, `180s`, `0` to
                                        skip) with no change and count the operator's
                                        requests; PASS when it writes nothing [10m]
                        --column before|after
                                        the column of the doc's table this run fills;
                                        the other is kept [after]
                        --flux-in-flight F
                                        HelmReleases (and HelmRepositories) the simulated
                                        Flux works on at once [32]
                        --sim-releases S
                                        first time the simulated Flux alone on S
                                        pre-created HelmReleases; 0 skips it [1000]
                        --simulator-only
                                        only that (no operator); print, leave the doc alone
                        --operator-bin PATH
                                        measure this prebuilt operator binary instead of
                                        building the checkout's (e.g. an older commit's,
                                        for the before column)
                        --crds DIR      install the operator CRDs from DIR (those the
                                        --operator-bin was built with) [deploy/crds]
                        --commit REV    the commit the doc names for the run [HEAD]
                        --no-doc        print the results only; leave the doc alone
  bench operations [FLAGS]
                      the Operation scenario (`bench operations --help`)";

/// Parameters of one run.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    instances: usize,
    namespaces: usize,
    workers: usize,
    in_flight: usize,
    timeout: Duration,
    steady_state: Duration,
    column: Column,
    flux_in_flight: usize,
    sim_releases: usize,
    simulator_only: bool,
    write_doc: bool,
    /// A prebuilt operator to measure instead of this checkout's.
    operator_bin: Option<PathBuf>,
    /// The commit to name in the doc instead of HEAD.
    commit: Option<String>,
    /// Where the operator's CRDs come from instead of this checkout's `deploy/crds`.
    crds: Option<PathBuf>,
    /// The command line, for the doc.
    command: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            instances: 1000,
            namespaces: 100,
            workers: 4,
            in_flight: 16,
            timeout: Duration::from_secs(15 * 60),
            steady_state: Duration::from_secs(10 * 60),
            column: Column::After,
            flux_in_flight: DEFAULT_MAX_IN_FLIGHT,
            sim_releases: 1000,
            simulator_only: false,
            write_doc: true,
            operator_bin: None,
            commit: None,
            crds: None,
            command: "cargo xtask bench".to_owned(),
        }
    }
}

impl Options {
    fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Self {
            command: std::iter::once("cargo xtask bench")
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            ..Self::default()
        };
        let mut args = args.iter().copied();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ => (arg, None),
            };
            match flag {
                "--no-doc" => {
                    o.write_doc = false;
                    continue;
                }
                "--simulator-only" => {
                    o.simulator_only = true;
                    o.write_doc = false;
                    continue;
                }
                _ => {}
            }
            let mut value = || -> Result<&str> {
                match inline {
                    Some(v) => Ok(v),
                    None => args
                        .next()
                        .with_context(|| format!("{flag} needs a value\n\n{USAGE}")),
                }
            };
            let count = |v: &str, zero_ok: bool| -> Result<usize> {
                v.parse()
                    .ok()
                    .filter(|n| zero_ok || *n > 0)
                    .with_context(|| {
                        let what = if zero_ok {
                            "an integer"
                        } else {
                            "a positive integer"
                        };
                        format!("{flag} needs {what}, not {v:?}")
                    })
            };
            match flag {
                "--instances" => o.instances = count(value()?, false)?,
                "--namespaces" => o.namespaces = count(value()?, false)?,
                "--workers" => o.workers = count(value()?, false)?,
                "--in-flight" => o.in_flight = count(value()?, false)?,
                "--timeout" => {
                    o.timeout = Duration::from_secs(u64::try_from(count(value()?, false)?)?);
                }
                "--steady-state" => {
                    let v = value()?;
                    o.steady_state = parse_duration(v).with_context(|| {
                        format!("--steady-state needs a duration like 10m, 180s or 0, not {v:?}")
                    })?;
                }
                "--column" => {
                    let v = value()?;
                    o.column = Column::parse(v)
                        .with_context(|| format!("--column is `before` or `after`, not {v:?}"))?;
                }
                "--flux-in-flight" => o.flux_in_flight = count(value()?, false)?,
                "--sim-releases" => o.sim_releases = count(value()?, true)?,
                "--operator-bin" => o.operator_bin = Some(PathBuf::from(value()?)),
                "--commit" => o.commit = Some(value()?.to_owned()),
                "--crds" => o.crds = Some(PathBuf::from(value()?)),
                other => bail!("unknown flag {other:?} for bench\n\n{USAGE}"),
            }
        }
        Ok(o)
    }
}

/// `90`, `90s`, `10m`, `1h`, `0`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let factor = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(factor)?))
}

/// `cargo xtask bench [FLAGS]`.
pub async fn run(args: &[&str]) -> Result<ExitCode> {
    if let ["operations", rest @ ..] = args {
        return operations::run(rest).await;
    }
    if args.iter().any(|a| matches!(*a, "--help" | "-h" | "help")) {
        println!("usage: cargo xtask bench [FLAGS]\n\n{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let opts = Options::parse(args)?;
    let root = crate::workspace_root()
        .canonicalize()
        .context("locating the workspace root")?;
    let bins = K8sBinaries::ensure()?;
    // Compile before the cluster starts: on two cores the two would slow each other.
    let binary = match (&opts.operator_bin, opts.simulator_only) {
        (_, true) => None,
        (Some(prebuilt), false) => Some(
            prebuilt
                .canonicalize()
                .with_context(|| format!("--operator-bin {}", prebuilt.display()))?,
        ),
        (None, false) => Some(build_operator(&root).await?),
    };

    let load_before = load_average();
    let dir = binaries::cache_root()?
        .join("bench-runs")
        .join(std::process::id().to_string());
    let started = Instant::now();
    let mut cluster = LocalCluster::start(bins, &dir, Lifetime::Attached).await?;
    eprintln!(
        "bench: cluster ready at {} ({:.1?}) in {}",
        cluster.server(),
        started.elapsed(),
        dir.display()
    );
    for (name, pid) in cluster.pids() {
        eprintln!("bench:   {name:<24} pid {pid}");
    }

    let outcome = match &binary {
        Some(binary) => measure(&cluster, binary, &dir, &opts).await.map(Some),
        None => simulator::simulator_only(&cluster, &opts).await.map(|sim| {
            println!("\n{}", sim.summary());
            None
        }),
    };

    cluster.stop()?;
    let left = cluster::processes_under(&dir);
    if !left.is_empty() {
        bail!("processes of the bench cluster are still running: {left:?}");
    }
    // Keep the logs (the operator's among them) for a look afterwards; drop etcd's data.
    std::fs::remove_dir_all(dir.join("etcd")).ok();
    eprintln!(
        "bench: cluster stopped; logs kept in {} (remove it when done)",
        dir.display()
    );

    let Some(results) = outcome? else {
        return Ok(ExitCode::SUCCESS);
    };
    let machine = Machine::read(&root, load_before, opts.commit.clone());
    let path = root.join(DOC);
    let previous = report::parse_table(&report::current_section(&path));
    let rows = report::merge(&results.rows(&machine), opts.column, &previous);
    println!("{}", report::terminal(&rows, opts.column));
    for (what, lines) in [
        ("error", &results.log_errors),
        ("warning", &results.log_warnings),
    ] {
        for line in report::distinct(lines, 5) {
            println!("  operator log {what}: {line}");
        }
    }
    println!("  run directory: {}", results.run_dir.display());
    if let Some(steady) = &results.steady {
        println!("\n{}", steady.summary());
    }
    if opts.write_doc {
        report::update_doc(&path, &report::markdown(&rows, opts.column))?;
        println!(
            "wrote the {} column of {}",
            opts.column.name(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo build -p vworkspace-operator --release`; the path of the binary.
async fn build_operator(root: &Path) -> Result<PathBuf> {
    let status = tokio::process::Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "-p", "vworkspace-operator", "--release"])
        .status()
        .await
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the operator (release) failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("release/vworkspace-operator");
    if !binary.is_file() {
        bail!("{} is missing after the build", binary.display());
    }
    Ok(binary)
}

/// The CRDs and the namespaces `bench-0` … `bench-<M-1>`; the client and the names.
async fn prepare(cluster: &LocalCluster, opts: &Options) -> Result<(Client, Vec<String>)> {
    let client = cluster.client().await?;
    let operator_crds = match &opts.crds {
        Some(dir) => std::fs::read_dir(dir)
            .with_context(|| format!("--crds {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect(),
        None => fixtures::operator_crd_files()?,
    };
    fixtures::apply_crds(&client, &operator_crds)
        .await
        .context("installing the operator's CRDs")?;
    // Flux's kinds only: this scenario has no Velero, Argo, VolSync or CSI snapshots,
    // and the Operation controller's optional watches for them stay idle (with Velero
    // installed the Cluster controller would also ask it for its version every ten
    // minutes, a write inside the steady-state window).
    let flux: Vec<PathBuf> = fixtures::third_party_crd_files()?
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(".toolkit.fluxcd.io"))
        .collect();
    fixtures::apply_crds(&client, &flux)
        .await
        .context("installing Flux's CRDs")?;
    let namespaces: Vec<String> = (0..opts.namespaces).map(|i| format!("bench-{i}")).collect();
    create_namespaces(&client, &namespaces, opts.in_flight).await?;
    create_cluster(&client).await?;
    eprintln!(
        "bench: CRDs installed, {} namespaces created",
        namespaces.len()
    );
    Ok((client, namespaces))
}

/// One run against a running cluster; the operator and the simulator stop on return.
async fn measure(
    cluster: &LocalCluster,
    binary: &Path,
    dir: &Path,
    opts: &Options,
) -> Result<Results> {
    let (client, namespaces) = prepare(cluster, opts).await?;
    let sim = if opts.sim_releases > 0 {
        Some(
            simulator::simulator_phase(cluster, &client, &namespaces, opts.sim_releases, opts)
                .await?,
        )
    } else {
        None
    };

    let simulator = FluxSimulator::start_with(
        client.clone(),
        None,
        FluxOptions {
            max_in_flight: opts.flux_in_flight,
        },
    );
    let workers = format!("--max-concurrent-reconciles={}", opts.workers);
    let mut operator = OperatorProcess::spawn(
        binary,
        cluster.kubeconfig(),
        &dir.join("operator"),
        &[&workers, "--cluster-id=bench", "--org-id=bench"],
    )?;
    wait_operator_ready(&mut operator).await?;
    let pids = watched_pids(cluster, &operator);
    eprintln!(
        "bench: operator ready (pid {}), log {}",
        operator.pid().unwrap_or_default(),
        operator.log.display()
    );

    let first_request = warm_up(&client, &namespaces[0]).await?;
    let mut ready_watch = ReadyWatch::start(&client).await?;
    eprintln!(
        "bench: first (dry-run) ApplicationInstance create took {:.0?}",
        first_request
    );

    // What the operator did before the first create (starting its watches, the
    // readiness checks) is not charged to the instances.
    let baseline = scrape(&operator).await?;
    let cpu_before = cpu_times(&pids);
    let t0 = Instant::now();
    create_instances(&client, &namespaces, opts).await?;
    let created_in = t0.elapsed();
    eprintln!(
        "bench: created {} instances in {}",
        opts.instances,
        secs(created_in)
    );

    let progress = wait_all_ready(&mut ready_watch, &mut operator, opts, t0).await?;
    drop(ready_watch);
    let at_ready = scrape(&operator).await?;
    let window = t0.elapsed();
    let cpu_after = cpu_times(&pids);
    let peak_rss = operator.peak_rss_bytes();
    let ramp = Delta::between(&baseline, &at_ready);
    if at_ready
        .series(
            "vworkspace_operator_reconcile_total",
            &[("controller", CONTROLLER)],
        )
        .next()
        .is_none()
    {
        bail!(
            "the operator's /metrics has no vworkspace_operator_reconcile_total for {CONTROLLER}"
        );
    }

    let steady = if progress.all_ready.is_some() && !opts.steady_state.is_zero() {
        Some(steady_state(&client, &mut operator, &at_ready, opts).await?)
    } else {
        None
    };

    operator.terminate();
    drop(simulator);

    let (log_errors, log_warnings) = scan_log(&operator.log);
    Ok(Results {
        opts: opts.clone(),
        sim,
        created_in,
        half_ready: progress.half_ready,
        all_ready: progress.all_ready,
        ready: progress.ready,
        window,
        ramp,
        peak_rss,
        cpu: simulator::diff_cpu(&cpu_before, cpu_after),
        log_errors,
        log_warnings,
        steady,
        run_dir: dir.to_owned(),
    })
}

/// The operator's `/metrics`, parsed.
async fn scrape(operator: &OperatorProcess) -> Result<Exposition> {
    let text = operator
        .metrics()
        .await
        .context("scraping the operator's /metrics")?;
    Exposition::parse(&text).context("parsing the operator's /metrics")
}

/// Wait `opts.steady_state` with every instance Ready and nothing changing, then
/// count what the operator sent meanwhile. The harness sends nothing to the API
/// server during the window except one list at its end; the simulator stays running
/// and answers only if the operator changes a HelmRelease.
async fn steady_state(
    client: &Client,
    operator: &mut OperatorProcess,
    at_ready: &Exposition,
    opts: &Options,
) -> Result<Steady> {
    let window = opts.steady_state;
    eprintln!(
        "bench: steady state: waiting {} with no change",
        secs(window)
    );
    let start = Instant::now();
    let mut next_report = Duration::from_secs(60);
    while start.elapsed() < window {
        let nap = (window - start.elapsed()).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
        operator.ensure_running()?;
        if start.elapsed() >= next_report {
            next_report += Duration::from_secs(60);
            // A scrape of the operator's own endpoint, not an API request.
            if let Ok(now) = scrape(operator).await {
                let d = Delta::between(at_ready, &now);
                let writes = d.writes().values().sum::<f64>() + 0.0;
                eprintln!(
                    "bench: steady state: {} of {}: {:.0} requests, {writes:.0} writes so far",
                    secs(start.elapsed()),
                    secs(window),
                    d.requests_total()
                );
            }
        }
    }
    let at_end = scrape(operator).await?;
    let elapsed = start.elapsed();
    let delta = Delta::between(at_ready, &at_end);
    let api: Api<ApplicationInstance> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().match_any())
        .await
        .context("listing the ApplicationInstances after the steady state")?;
    Ok(Steady {
        window: elapsed,
        delta,
        still_ready: list.items.iter().filter(|ai| is_ready(ai)).count(),
    })
}

async fn create_namespaces(client: &Client, names: &[String], in_flight: usize) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                // Managed, as an organization's namespace is: the operator creates
                // nothing in a namespace without the label.
                let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": {
                    "name": name,
                    "labels": {
                        "app.vworkspace.io/managed-by": "vworkspace",
                        "app.vworkspace.io/org-id": "bench",
                    }
                } }))?;
                api.create(&PostParams::default(), &ns)
                    .await
                    .with_context(|| format!("creating namespace {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The operator's namespace and the one Cluster its readiness asks for (`bench`, in Push
/// mode: no control-plane link runs, so the operator talks to the API server only).
async fn create_cluster(client: &Client) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": OPERATOR_NAMESPACE } }))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the operator's namespace")?;
    let clusters: Api<vworkspace_api::Cluster> =
        Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let cluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "Cluster",
        "metadata": { "name": "bench" },
        "spec": { "orgId": "bench", "mode": "push" },
    }))?;
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .context("creating the Cluster")?;
    Ok(())
}

/// The ApplicationInstance numbered `i`.
fn instance(namespace: &str, name: &str, i: usize) -> Result<ApplicationInstance> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "chart": {
                "repository": "https://charts.example.com/bench",
                "name": "podinfo",
                "version": "6.7.0",
            },
            "values": { "replicaCount": 1, "instance": i },
        },
    }))
    .context("building an ApplicationInstance")
}

/// A server-side dry-run create, so that the API server's one-time work for the first
/// request on a new custom resource is not counted in the measured window.
async fn warm_up(client: &Client, namespace: &str) -> Result<Duration> {
    let started = Instant::now();
    let api: Api<ApplicationInstance> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&params, &instance(namespace, "warm-up", 0)?)
        .await
        .context("dry-run creating an ApplicationInstance")?;
    Ok(started.elapsed())
}

/// Instance `i` is `app-<i>` in namespace `i mod M`.
async fn create_instances(client: &Client, namespaces: &[String], opts: &Options) -> Result<()> {
    let started = Instant::now();
    let created = futures::stream::iter(0..opts.instances)
        .map(|i| {
            let namespace = &namespaces[i % namespaces.len()];
            let api: Api<ApplicationInstance> = Api::namespaced(client.clone(), namespace);
            async move {
                let name = format!("app-{i}");
                let instance = instance(namespace, &name, i)?;
                api.create(&PostParams::default(), &instance)
                    .await
                    .with_context(|| format!("creating ApplicationInstance {namespace}/{name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(opts.in_flight);
    futures::pin_mut!(created);
    let mut done = 0usize;
    let step = (opts.instances / 10).max(1);
    while let Some(result) = created.next().await {
        result?;
        done += 1;
        if done.is_multiple_of(step) || done == opts.instances {
            eprintln!(
                "bench: created {done}/{} ({})",
                opts.instances,
                secs(started.elapsed())
            );
        }
    }
    Ok(())
}

async fn wait_operator_ready(operator: &mut OperatorProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        operator.ensure_running()?;
        if let Ok((200, _)) = operator.probe("/readyz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the operator was not ready within 2 minutes; see {}",
                operator.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the Ready polls saw.
#[derive(Debug, Default)]
struct Progress {
    /// When the first poll saw half of the instances Ready.
    half_ready: Option<Duration>,
    /// When a poll saw all of them Ready.
    all_ready: Option<Duration>,
    /// Ready instances at the last poll.
    ready: usize,
}

/// Counts Ready instances from a watch on all ApplicationInstances: each instance's
/// changes arrive once, instead of the whole list once a second, so the harness costs
/// the API server little and the time to all-Ready is exact to the event. Started (and
/// its initial list done) before the first create.
struct ReadyWatch {
    ready: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    async fn start(client: &Client) -> Result<Self> {
        use kube::runtime::watcher::{self, Event};
        let api: Api<ApplicationInstance> = Api::all(client.clone());
        let (tx, mut rx) = tokio::sync::watch::channel(0usize);
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let mut ready = std::collections::HashMap::<(String, String), bool>::new();
            let mut relisted = std::collections::HashMap::new();
            let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let key = |ai: &ApplicationInstance| {
                    (
                        ai.metadata.namespace.clone().unwrap_or_default(),
                        ai.metadata.name.clone().unwrap_or_default(),
                    )
                };
                match event {
                    Ok(Event::Apply(ai)) => {
                        ready.insert(key(&ai), is_ready(&ai));
                    }
                    Ok(Event::Delete(ai)) => {
                        ready.remove(&key(&ai));
                    }
                    Ok(Event::Init) => relisted.clear(),
                    Ok(Event::InitApply(ai)) => {
                        relisted.insert(key(&ai), is_ready(&ai));
                    }
                    Ok(Event::InitDone) => {
                        ready = std::mem::take(&mut relisted);
                        if let Some(listed) = listed.take() {
                            let _ = listed.send(());
                        }
                    }
                    Err(err) => {
                        eprintln!("bench: watching ApplicationInstances: {err}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
                tx.send_replace(ready.values().filter(|r| **r).count());
            }
        });
        listed_rx
            .await
            .context("the ApplicationInstance watch stopped before its first list")?;
        rx.mark_unchanged();
        Ok(Self { ready: rx, task })
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until all instances are Ready or the deadline passes, printing the count once a
/// second.
async fn wait_all_ready(
    watch: &mut ReadyWatch,
    operator: &mut OperatorProcess,
    opts: &Options,
    t0: Instant,
) -> Result<Progress> {
    let mut progress = Progress::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = watch.ready.changed() => {
                changed.context("the ApplicationInstance watch stopped")?;
                let ready = *watch.ready.borrow_and_update();
                let elapsed = t0.elapsed();
                progress.ready = ready;
                if progress.half_ready.is_none() && 2 * ready >= opts.instances {
                    progress.half_ready = Some(elapsed);
                }
                if ready >= opts.instances {
                    progress.all_ready = Some(elapsed);
                    eprintln!("bench: ready {ready}/{} ({})", opts.instances, secs(elapsed));
                    return Ok(progress);
                }
            }
            _ = tick.tick() => {
                operator.ensure_running()?;
                eprintln!(
                    "bench: ready {}/{} ({})",
                    progress.ready,
                    opts.instances,
                    secs(t0.elapsed())
                );
            }
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
        if t0.elapsed() > opts.timeout {
            eprintln!(
                "bench: giving up after {}: {}/{} Ready",
                secs(opts.timeout),
                progress.ready,
                opts.instances
            );
            return Ok(progress);
        }
    }
}

fn is_ready(ai: &ApplicationInstance) -> bool {
    ai.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The processes whose CPU time is reported: the operator, the control plane, and this
/// process (which runs the Flux simulator and the poller).
fn watched_pids(cluster: &LocalCluster, operator: &OperatorProcess) -> Vec<(String, u32)> {
    let mut pids = Vec::new();
    if let Some(pid) = operator.pid() {
        pids.push(("operator".to_owned(), pid));
    }
    pids.extend(cluster.pids());
    pids.push((
        "xtask (Flux simulator, poller)".to_owned(),
        std::process::id(),
    ));
    pids
}

/// User+system CPU seconds of each process so far (0 when unreadable), and last the
/// busy time of the whole machine not accounted to them: other people's builds and
/// tests, which would skew the numbers.
fn cpu_times(pids: &[(String, u32)]) -> Vec<(String, f64)> {
    let ticks = clock_ticks();
    let mut times: Vec<(String, f64)> = pids
        .iter()
        .map(|(name, pid)| {
            let secs = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // Fields after the `(comm)`; utime and stime are fields 14 and 15.
                    let rest = stat.rsplit_once(')')?.1;
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    let utime: f64 = fields.get(11)?.parse().ok()?;
                    let stime: f64 = fields.get(12)?.parse().ok()?;
                    Some((utime + stime) / ticks)
                })
                .unwrap_or(0.0);
            (name.clone(), secs)
        })
        .collect();
    if let Some(busy) = machine_busy_ticks() {
        let ours: f64 = times.iter().map(|(_, secs)| secs).sum();
        times.push(("everything else".to_owned(), busy / ticks - ours));
    }
    times
}

/// Non-idle CPU ticks of the machine since boot (`cpu` line of `/proc/stat`).
fn machine_busy_ticks() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user.
    let total: f64 = fields.iter().take(8).sum();
    Some(total - fields.get(3)? - fields.get(4)?)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The `msg` of every error and warning line of the operator's JSON log.
fn scan_log(path: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let msg = || {
            let mut msg = value["msg"].as_str().unwrap_or(line).to_owned();
            if let Some(err) = value["error"].as_str() {
                let _ = write!(msg, ": {err}");
            }
            msg
        };
        match value["level"].as_str() {
            Some("error") => errors.push(msg()),
            Some("warn") => warnings.push(msg()),
            _ => {}
        }
    }
    (errors, warnings)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What the run ran on.
#[derive(Debug)]
struct Machine {
    date: String,
    commit: String,
    cores: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
    /// `/proc/loadavg` (1, 5, 15 minutes) before the cluster started.
    load_before: String,
    /// The same after the cluster stopped.
    load_after: String,
}

impl Machine {
    fn read(root: &Path, load_before: String, commit: Option<String>) -> Self {
        let opts_named = commit.is_some();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib / (1024.0 * 1024.0)),
            );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        let date = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%d %H:%M UTC")
            .to_string();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .current_dir(root)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        // A commit named with --commit is the prebuilt binary's; this checkout's state
        // says nothing about it.
        let commit = match commit {
            Some(named) => Some(named),
            None => git(&["rev-parse", "--short", "HEAD"]),
        };
        let commit = match commit {
            Some(rev) if opts_named => rev,
            Some(rev) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
                Some(changes) if !changes.is_empty() => format!("{rev} (with uncommitted changes)"),
                _ => rev,
            },
            None => "unknown".to_owned(),
        };
        Self {
            date,
            commit,
            cores,
            cpu_model,
            memory,
            kernel,
            load_before,
            load_after: load_average(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let o = Options::parse(&["--instances=10", "--namespaces", "2", "--no-doc"])
            .expect("valid flags");
        assert_eq!((o.instances, o.namespaces, o.workers), (10, 2, 4));
        assert!(!o.write_doc);
        assert_eq!(o.steady_state, Duration::from_secs(600));
        assert_eq!(o.column, Column::After);
        assert_eq!(
            o.command,
            "cargo xtask bench --instances=10 --namespaces 2 --no-doc"
        );
        let o = Options::parse(&[
            "--steady-state",
            "3m",
            "--column=before",
            "--sim-releases=0",
        ])
        .expect("valid flags");
        assert_eq!(o.steady_state, Duration::from_secs(180));
        assert_eq!(o.column, Column::Before);
        assert_eq!(o.sim_releases, 0);
        assert_eq!((o.operator_bin, o.commit), (None, None));
        let o = Options::parse(&["--operator-bin", "/tmp/op", "--commit=b4cd2d6"])
            .expect("valid flags");
        assert_eq!(o.operator_bin, Some(PathBuf::from("/tmp/op")));
        assert_eq!(o.commit.as_deref(), Some("b4cd2d6"));
        let o = Options::parse(&["--crds", "/tmp/crds"]).expect("valid flags");
        assert_eq!(o.crds, Some(PathBuf::from("/tmp/crds")));
        assert!(Options::parse(&["--operator-bin"]).is_err());
        assert!(Options::parse(&["--steady-state=5x"]).is_err());
        assert!(Options::parse(&["--column=middle"]).is_err());
        assert!(Options::parse(&["--flux-in-flight=0"]).is_err());
        assert!(Options::parse(&["--workers=0"]).is_err());
        assert!(Options::parse(&["--instances"]).is_err());
        assert!(Options::parse(&["--bogus"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("180s"), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("1.5m"), None);
    }
}
