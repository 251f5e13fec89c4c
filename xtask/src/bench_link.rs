//! `cargo xtask bench-link`: how long a status transition takes to become a row in the
//! control plane's SQLite, end to end (issue 9, Measure (b)).
//!
//! One run: build the operator and the reference control plane (release), start a
//! fresh [`LocalCluster`], run the control plane's built binary on a fresh database,
//! create a Pull-mode Cluster pointing at it (with the chosen `flushInterval`), start
//! the simulated Flux and the operator (its release binary, ids taken from the
//! Cluster), then create ApplicationInstances at a steady rate. Each becomes Ready
//! through the simulated Flux, so each contributes a `ReconcileStarted` and a
//! `ReconcileSucceeded` transition. Once every success is stored, every stored row of
//! those instances is matched with the moment the operator published it.
//!
//! Latency = the row's `received_at` (the control plane's clock, milliseconds) minus
//! the publish time of the same `event_id`: the `ts` of the operator's log line for the
//! transition (milliseconds, written just before the event enters the audit buffer).
//! The two processes run on one machine, so it is one clock. The payload's own
//! `occurred_at` has whole seconds only (the spec's format, the precision of Kubernetes
//! timestamps), so latency against it is printed too, but it reads up to 1 s high.
//!
//! Nothing is asserted: the command prints numbers. It fails only when the setup fails
//! or the run does not finish within `--timeout`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;
use vworkspace_api::Cluster;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::binaries::{self, K8sBinaries};
use vworkspace_testkit::cluster::{Lifetime, LocalCluster};
use vworkspace_testkit::env::poll_until;
use vworkspace_testkit::fixtures::{self, OperatorProcess, repo_root};
use vworkspace_testkit::sim::flux::FluxSimulator;

pub const USAGE: &str = "\
  bench-link [FLAGS]  latency of the Pull-mode audit stream, status transition to SQLite
                      row, on a fresh local cluster (prints; writes nothing)
                        --instances N       ApplicationInstances to create [300]
                        --rate R            created per second, steadily [10]
                        --flush-interval D  the Cluster's auditStream.flushInterval [1s]
                        --timeout SECS      give up after SECS [600]";

const NAMESPACE: &str = "bench-link";
const OPERATOR_NAMESPACE: &str = "vworkspace-system";
const CLUSTER_ID: &str = "bench-link";
const ORG_ID: &str = "bench";
const PREFIX: &str = "link-";

struct Options {
    instances: usize,
    rate: f64,
    flush_interval: String,
    timeout: Duration,
}

fn parse(args: &[&str]) -> Result<Options> {
    let mut o = Options {
        instances: 300,
        rate: 10.0,
        flush_interval: "1s".into(),
        timeout: Duration::from_secs(600),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .copied()
                .with_context(|| format!("{flag} needs a value"))
        };
        match *flag {
            "--instances" => o.instances = value()?.parse().context("--instances")?,
            "--rate" => o.rate = value()?.parse().context("--rate")?,
            "--flush-interval" => o.flush_interval = value()?.to_owned(),
            "--timeout" => o.timeout = Duration::from_secs(value()?.parse().context("--timeout")?),
            "--help" | "-h" => bail!("\n{USAGE}"),
            other => bail!("unknown flag {other:?}\n{USAGE}"),
        }
    }
    if o.instances == 0 || o.rate <= 0.0 || !o.rate.is_finite() {
        bail!("--instances and --rate must be positive");
    }
    Ok(o)
}

pub async fn run(args: &[&str]) -> Result<ExitCode> {
    let opts = parse(args)?;
    let root = repo_root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "vworkspace-operator",
            "-p",
            "vworkspace-controlplane",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the operator and the control plane (release) failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let operator = target.join("release/vworkspace-operator");
    let controlplane = target.join("release/vworkspace-controlplane");

    let load_before = load_average();
    let bins = K8sBinaries::ensure()?;
    let dir = binaries::cache_root()?
        .join("bench-link-runs")
        .join(std::process::id().to_string());
    let mut cluster = LocalCluster::start(bins, &dir, Lifetime::Attached).await?;
    eprintln!("bench-link: cluster ready at {}", cluster.server());
    let outcome = measure(&cluster, &operator, &controlplane, &dir, &opts).await;
    cluster.stop()?;
    std::fs::remove_dir_all(dir.join("etcd")).ok();
    let report = outcome?;
    println!(
        "bench-link: {} instances at {}/s, flushInterval {}, machine: {} cores, load average before {load_before}, after {}",
        opts.instances,
        opts.rate,
        opts.flush_interval,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!("{report}");
    println!("run directory (logs): {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The control plane's built binary serving `db`; its URL.
struct ControlPlane {
    child: std::process::Child,
    url: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controlplane_cli(binary: &Path, db: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(binary)
        .args(args)
        .arg(format!("--db={}", db.display()))
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "vworkspace-controlplane {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start_controlplane(binary: &Path, dir: &Path) -> Result<(ControlPlane, PathBuf, String)> {
    let cp_dir = dir.join("controlplane");
    std::fs::create_dir_all(&cp_dir)?;
    let db = cp_dir.join("controlplane.db");
    controlplane_cli(binary, &db, &["org", "create", ORG_ID])?;
    let token = controlplane_cli(
        binary,
        &db,
        &["cluster", "create", "--org", ORG_ID, CLUSTER_ID],
    )?
    .trim()
    .to_owned();
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(format!("--db={}", db.display()))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(cp_dir.join("server.log"))?)
        .spawn()
        .context("starting the control plane")?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().context("control plane stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
    }
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line from the control plane: {line:?}"))?;
    let url = format!("http://{addr}");
    Ok((ControlPlane { child, url }, db, token))
}

async fn create_namespace(client: &kube::Client, name: &str, managed: bool) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let labels = if managed {
        json!({ "app.vworkspace.io/managed-by": "vworkspace", "app.vworkspace.io/org-id": ORG_ID })
    } else {
        json!({})
    };
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } }))?,
    )
    .await?;
    Ok(())
}

async fn measure(
    cluster: &LocalCluster,
    operator_bin: &Path,
    controlplane_bin: &Path,
    dir: &Path,
    opts: &Options,
) -> Result<String> {
    let client = cluster.client().await?;
    fixtures::apply_crds(&client, &fixtures::operator_crd_files()?).await?;
    fixtures::apply_crds(&client, &fixtures::third_party_crd_files()?).await?;
    create_namespace(&client, OPERATOR_NAMESPACE, false).await?;
    create_namespace(&client, NAMESPACE, true).await?;

    let (cp, db, token) = start_controlplane(controlplane_bin, dir)?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "controlplane-token" },
                "stringData": { "token": token },
            }))?,
        )
        .await?;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": { "name": CLUSTER_ID },
                "spec": {
                    "orgId": ORG_ID, "mode": "pull",
                    "controlPlane": { "url": cp.url, "credentialsSecretRef": { "name": "controlplane-token", "key": "token" } },
                    "connectivity": { "gracePeriod": "30s", "heartbeatInterval": "5s" },
                    "auditStream": { "bufferCapacity": 10000, "maxBatchSize": 100, "flushInterval": opts.flush_interval },
                },
            }))?,
        )
        .await?;
    let _flux = FluxSimulator::start(client.clone(), Some(NAMESPACE));
    // No id flags: the operator takes them from the Cluster.
    let mut operator = OperatorProcess::spawn(
        operator_bin,
        cluster.kubeconfig(),
        &dir.join("operator"),
        &[&format!("--watch-namespace={NAMESPACE}")],
    )?;
    poll_until(Duration::from_secs(120), "Connected=True", || async {
        let c = clusters.get(CLUSTER_ID).await.ok()?;
        c.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Connected" && c.status == "True")
            .then_some(())
    })
    .await?;
    eprintln!(
        "bench-link: operator connected; creating {} instances",
        opts.instances
    );

    // A steady rate: instance i is created at start + i / rate.
    let instances: Api<ApplicationInstance> = Api::namespaced(client.clone(), NAMESPACE);
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    let deadline = Instant::now() + opts.timeout;
    for i in 0..opts.instances {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let obj: ApplicationInstance = serde_json::from_value(json!({
            "apiVersion": "vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": { "name": format!("{PREFIX}{i}") },
            "spec": { "chart": { "repository": "https://charts.example.org/stable", "name": "wiki", "version": "1.0.0" } },
        }))?;
        instances.create(&PostParams::default(), &obj).await?;
    }
    let driven = start.elapsed();
    eprintln!("bench-link: created in {driven:.1?}; waiting for every success in SQLite");

    let rows = loop {
        operator.ensure_running()?;
        let rows = stored_rows(controlplane_bin, &db)?;
        let succeeded = rows
            .iter()
            .filter(|r| r.kind == "ReconcileSucceeded")
            .count();
        if succeeded >= opts.instances {
            break rows;
        }
        if Instant::now() > deadline {
            bail!(
                "only {succeeded} of {} successes stored within {:?}",
                opts.instances,
                opts.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let published = published_at(&operator.log)?;
    let _ = operator.terminate();
    drop(cp);

    let mut precise = Vec::new();
    let mut coarse = Vec::new();
    let mut unmatched = 0;
    for row in &rows {
        let Some(at) = published.get(&row.event_id) else {
            unmatched += 1;
            continue;
        };
        precise.push(millis_between(*at, row.received_at));
        coarse.push(millis_between(row.occurred_at, row.received_at));
    }
    if precise.is_empty() {
        bail!("no stored row matched a published transition");
    }
    Ok(format!(
        "rows: {} (ReconcileStarted and ReconcileSucceeded of {} instances), {unmatched} without a publish line\n\
         latency publish -> row (ms):            {}\n\
         latency occurred_at -> row (ms, whole-second occurred_at, reads up to 1000 ms high): {}",
        rows.len(),
        opts.instances,
        summary(&mut precise),
        summary(&mut coarse),
    ))
}

struct Row {
    event_id: String,
    kind: String,
    occurred_at: Timestamp,
    received_at: Timestamp,
}

/// The stored rows of the benchmark's instances, through the control plane's CLI.
fn stored_rows(binary: &Path, db: &Path) -> Result<Vec<Row>> {
    let text = controlplane_cli(
        binary,
        db,
        &[
            "timeline",
            "--org",
            ORG_ID,
            "--json",
            "--namespace",
            NAMESPACE,
            "--limit",
            "1000000",
        ],
    )?;
    let doc: serde_json::Value = serde_json::from_str(&text).context("timeline JSON")?;
    let mut rows = Vec::new();
    for e in doc["events"].as_array().context("timeline events")? {
        let Some(app) = e["application_instance"].as_str() else {
            continue;
        };
        if !app.starts_with(PREFIX) {
            continue;
        }
        let text = |k: &str| e[k].as_str().with_context(|| format!("{k} of a row"));
        rows.push(Row {
            event_id: text("event_id")?.to_owned(),
            kind: text("kind")?.to_owned(),
            occurred_at: text("occurred_at")?.parse().context("occurred_at")?,
            received_at: text("received_at")?.parse().context("received_at")?,
        });
    }
    Ok(rows)
}

/// `event_id` → the `ts` of the operator's log line announcing that transition.
fn published_at(log: &Path) -> Result<BTreeMap<String, Timestamp>> {
    let text = std::fs::read_to_string(log)?;
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(id), Some(ts), Some(_)) = (
            v["event_id"].as_str(),
            v["ts"].as_str(),
            v["event"].as_str(),
        ) else {
            continue;
        };
        if let Ok(ts) = ts.parse::<Timestamp>() {
            map.entry(id.to_owned()).or_insert(ts);
        }
    }
    Ok(map)
}

fn millis_between(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()) as f64
}

/// `n=…, p50 …, p90 …, p99 …, max …` of `values` (sorted in place).
fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((values.len() as f64 - 1.0) * q).round() as usize;
        values[i.min(values.len() - 1)]
    };
    format!(
        "n={}, p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}",
        values.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
