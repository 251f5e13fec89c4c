//! `cargo xtask bench operations`: the Operation controller under load.
//!
//! On a fresh local cluster: 1,000 ApplicationInstances (the simulated Flux makes them
//! Ready), then 500 Operations across 50 namespaces, each on its own instance, half
//! `backup.velero` and half `runbook.workflow`, with the simulated Velero and Argo
//! finishing each child at once. Measured from the first Operation create to the poll
//! that sees all of them terminal: the time, Operations per second, the p99 of the
//! Operation controller's reconcile duration, the operator's API requests per Operation
//! (every request it sent in that window, by method), and the operator's peak RSS over
//! the whole run (with the 1,000 instances and 500 Operations in its caches). The
//! results replace the section "Operations" of docs/benchmarks.md (outside the table the
//! ApplicationInstance benchmark generates).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use vworkspace_api::labels;
use vworkspace_api::operation::{Operation, OperationPhase};
use vworkspace_testkit::binaries::{self, K8sBinaries};
use vworkspace_testkit::cluster::{self, Lifetime, LocalCluster};
use vworkspace_testkit::fixtures::OperatorProcess;
use vworkspace_testkit::prom::Exposition;
use vworkspace_testkit::sim::argo::{ArgoOptions, ArgoSimulator};
use vworkspace_testkit::sim::engine::SimOptions;
use vworkspace_testkit::sim::flux::{FluxOptions, FluxSimulator};
use vworkspace_testkit::sim::velero::{VeleroOptions, VeleroSimulator};

use super::report::secs;
use super::{
    DOC, Machine, Options, ReadyWatch, build_operator, create_instances, create_namespaces,
    load_average, scrape, wait_all_ready, wait_operator_ready,
};

const USAGE: &str = "\
  --operations N   Operations to run [500]
  --namespaces M   namespaces they (and the instances) are spread over [50]
  --instances I    ApplicationInstances present (each Operation targets its own) [1000]
  --workers W      the operator's --max-concurrent-reconciles [4]
  --timeout S      give up after S seconds of waiting for the Operations [600]
  --operator-bin PATH
                   run this operator binary instead of building the release one
                   (request counts do not depend on the build; its RSS does)
  --no-doc         print the results only; leave docs/benchmarks.md alone";

/// Heading of the section this benchmark writes.
const SECTION: &str = "## Operations";

/// Targets of issue 8.
const TARGET_REQUESTS_PER_OPERATION: f64 = 8.0;
const TARGET_PEAK_RSS_MIB: f64 = 40.0;

#[derive(Debug, Clone)]
struct OpOptions {
    operations: usize,
    namespaces: usize,
    instances: usize,
    workers: usize,
    timeout: Duration,
    write_doc: bool,
    operator_bin: Option<std::path::PathBuf>,
    command: String,
}

impl OpOptions {
    fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Self {
            operations: 500,
            namespaces: 50,
            instances: 1000,
            workers: 4,
            timeout: Duration::from_secs(600),
            write_doc: true,
            operator_bin: None,
            command: std::iter::once("cargo xtask bench operations")
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let mut args = args.iter().copied();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ => (arg, None),
            };
            if flag == "--no-doc" {
                o.write_doc = false;
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?,
            };
            if flag == "--operator-bin" {
                o.operator_bin = Some(value.into());
                continue;
            }
            let n: usize = value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{flag} needs a positive integer, not {value:?}"))?;
            match flag {
                "--operations" => o.operations = n,
                "--namespaces" => o.namespaces = n,
                "--instances" => o.instances = n,
                "--workers" => o.workers = n,
                "--timeout" => o.timeout = Duration::from_secs(u64::try_from(n)?),
                other => bail!("unknown flag {other:?} for bench operations\n\n{USAGE}"),
            }
        }
        if o.operations > o.instances {
            bail!("--operations must not exceed --instances (each targets its own instance)");
        }
        Ok(o)
    }

    /// The ApplicationInstance benchmark's options for the instance phase.
    fn instance_options(&self) -> Options {
        Options {
            instances: self.instances,
            namespaces: self.namespaces,
            workers: self.workers,
            write_doc: false,
            ..Options::default()
        }
    }
}

/// What one run measured, and on what.
struct OpResults {
    m: Measured,
    machine: Machine,
}

/// `cargo xtask bench operations [FLAGS]`.
pub async fn run(args: &[&str]) -> Result<ExitCode> {
    if args.iter().any(|a| matches!(*a, "--help" | "-h" | "help")) {
        println!("usage: cargo xtask bench operations [FLAGS]\n\n{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let opts = OpOptions::parse(args)?;
    let root = crate::workspace_root()
        .canonicalize()
        .context("locating the workspace root")?;
    let bins = K8sBinaries::ensure()?;
    let binary = match &opts.operator_bin {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("--operator-bin {}", path.display()))?,
        None => build_operator(&root).await?,
    };
    let load_before = load_average();
    let dir = binaries::cache_root()?
        .join("bench-runs")
        .join(format!("operations-{}", std::process::id()));
    let mut cluster = LocalCluster::start(bins, &dir, Lifetime::Attached).await?;
    eprintln!("bench: cluster ready at {}", cluster.server());
    let outcome = measure(&cluster, &binary, &dir, &opts).await;
    cluster.stop()?;
    let left = cluster::processes_under(&dir);
    if !left.is_empty() {
        bail!("processes of the bench cluster are still running: {left:?}");
    }
    std::fs::remove_dir_all(dir.join("etcd")).ok();
    eprintln!(
        "bench: logs kept in {} (remove it when done)",
        dir.display()
    );
    let results = OpResults {
        m: outcome?,
        machine: Machine::read(&root, load_before, None),
    };
    let text = results.markdown();
    println!("\n{text}");
    if opts.write_doc {
        write_section(&root.join(DOC), &text)?;
        println!("wrote the section {SECTION:?} of {DOC}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Partial results (the machine is read after the cluster stopped).
struct Measured {
    opts: OpOptions,
    instances_ready: Option<Duration>,
    created_in: Duration,
    all_terminal: Option<Duration>,
    terminal: usize,
    succeeded: usize,
    requests: Vec<(String, f64)>,
    reconciles: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    peak_rss: Option<u64>,
}

async fn measure(
    cluster: &LocalCluster,
    binary: &Path,
    dir: &Path,
    opts: &OpOptions,
) -> Result<Measured> {
    let client = cluster.client().await?;
    vworkspace_testkit::fixtures::apply_crds(
        &client,
        &vworkspace_testkit::fixtures::operator_crd_files()?,
    )
    .await?;
    vworkspace_testkit::fixtures::apply_crds(
        &client,
        &vworkspace_testkit::fixtures::third_party_crd_files()?,
    )
    .await?;
    let namespaces: Vec<String> = (0..opts.namespaces).map(|i| format!("bench-{i}")).collect();
    create_namespaces(&client, &namespaces, 16).await?;
    allow_templates(&client, &namespaces).await?;
    let velero_ns = "velero".to_owned();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": velero_ns } }))?,
        )
        .await
        .context("creating Velero's namespace")?;

    // The operator is ready only with its Cluster (readiness check `cluster`). Push
    // mode: no control plane; its status is written once per --cluster-resync, set long
    // enough to stay out of the measured window.
    create_cluster(&client).await?;

    let _flux = FluxSimulator::start_with(client.clone(), None, FluxOptions::default());
    let immediate = SimOptions {
        duration: Duration::ZERO,
        max_in_flight: 64,
        ..SimOptions::default()
    };
    let _velero = VeleroSimulator::start_with(
        client.clone(),
        Some(&velero_ns),
        VeleroOptions {
            sim: immediate.clone(),
            steps: 1,
            ..VeleroOptions::default()
        },
    );
    let _argo = ArgoSimulator::start_with(
        client.clone(),
        None,
        ArgoOptions {
            sim: immediate,
            ..ArgoOptions::default()
        },
    );
    let workers = format!("--max-concurrent-reconciles={}", opts.workers);
    let velero_flag = format!("--velero-namespace={velero_ns}");
    let mut operator = OperatorProcess::spawn(
        binary,
        cluster.kubeconfig(),
        &dir.join("operator"),
        &[
            &workers,
            &velero_flag,
            "--cluster-id=bench",
            "--org-id=bench",
        ],
    )?;
    wait_operator_ready(&mut operator).await?;

    // The instances first (what the ApplicationInstance benchmark does).
    let instance_opts = opts.instance_options();
    let mut ready_watch = ReadyWatch::start(&client).await?;
    let t_instances = Instant::now();
    create_instances(&client, &namespaces, &instance_opts).await?;
    let progress =
        wait_all_ready(&mut ready_watch, &mut operator, &instance_opts, t_instances).await?;
    drop(ready_watch);
    let instances_ready = progress.all_ready;
    if instances_ready.is_none() {
        bail!(
            "only {}/{} instances became Ready",
            progress.ready,
            opts.instances
        );
    }

    let baseline = scrape(&operator).await?;
    let t0 = Instant::now();
    create_operations(&client, &namespaces, &velero_ns, opts).await?;
    let created_in = t0.elapsed();
    eprintln!(
        "bench: created {} Operations in {}",
        opts.operations,
        secs(created_in)
    );
    let (all_terminal, terminal, succeeded) =
        wait_all_terminal(&client, &mut operator, opts, t0).await?;
    let after = scrape(&operator).await?;
    let peak_rss = operator.peak_rss_bytes();
    operator.terminate();

    let requests = diff_by(&baseline, &after, "rest_client_requests_total", &["method"]);
    let reconciles = diff_by(
        &baseline,
        &after,
        "vworkspace_operator_reconcile_total",
        &["controller"],
    )
    .into_iter()
    .filter(|(k, _)| k == "operation")
    .map(|(_, v)| v)
    .sum();
    let histogram = durations(&baseline, &after);
    Ok(Measured {
        opts: opts.clone(),
        instances_ready,
        created_in,
        all_terminal,
        terminal,
        succeeded,
        requests,
        reconciles,
        p50: histogram.as_ref().and_then(|h| h.quantile(0.5)),
        p99: histogram.as_ref().and_then(|h| h.quantile(0.99)),
        peak_rss,
    })
}

/// The namespace `vworkspace-system` and the Cluster `bench` in it (Push mode).
async fn create_cluster(client: &Client) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                serde_json::json!({ "metadata": { "name": "vworkspace-system" } }),
            )?,
        )
        .await
        .context("creating vworkspace-system")?;
    Api::<vworkspace_api::Cluster>::namespaced(client.clone(), "vworkspace-system")
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "vworkspace.io/v1alpha1",
                "kind": "Cluster",
                "metadata": { "name": "bench" },
                "spec": { "orgId": "bench", "mode": "push" },
            }))?,
        )
        .await
        .context("creating the Cluster bench")?;
    Ok(())
}

/// Allow the two templates the benchmark runs in every namespace.
async fn allow_templates(client: &Client, namespaces: &[String]) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces {
        api.patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "annotations": {
                labels::ALLOWED_OPERATION_TEMPLATES: "backup.velero,runbook.workflow"
            } } })),
        )
        .await
        .with_context(|| format!("allowing templates in {ns}"))?;
    }
    Ok(())
}

/// Operation `j` targets instance `app-j` (in namespace `j mod M`, where the instance
/// benchmark put it): even ones back up, odd ones run a runbook.
async fn create_operations(
    client: &Client,
    namespaces: &[String],
    velero_ns: &str,
    opts: &OpOptions,
) -> Result<()> {
    let created = futures::stream::iter(0..opts.operations)
        .map(|j| {
            let ns = &namespaces[j % namespaces.len()];
            let api: Api<Operation> = Api::namespaced(client.clone(), ns);
            async move {
                let spec = if j % 2 == 0 {
                    serde_json::json!({ "type": "Backup", "template": "backup.velero",
                        "applicationInstance": format!("app-{j}"),
                        "parameters": { "veleroNamespace": velero_ns } })
                } else {
                    serde_json::json!({ "type": "Runbook", "template": "runbook.workflow",
                        "applicationInstance": format!("app-{j}"),
                        "parameters": { "workflowTemplate": "rotate-keys" } })
                };
                let op: Operation = serde_json::from_value(serde_json::json!({
                    "apiVersion": "vworkspace.io/v1alpha1",
                    "kind": "Operation",
                    "metadata": { "name": format!("op-{j}"), "namespace": ns },
                    "spec": spec,
                }))?;
                api.create(&PostParams::default(), &op)
                    .await
                    .with_context(|| format!("creating Operation {ns}/op-{j}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16);
    futures::pin_mut!(created);
    while let Some(result) = created.next().await {
        result?;
    }
    Ok(())
}

/// Poll every second until every Operation is terminal; (when, terminal, succeeded).
async fn wait_all_terminal(
    client: &Client,
    operator: &mut OperatorProcess,
    opts: &OpOptions,
    t0: Instant,
) -> Result<(Option<Duration>, usize, usize)> {
    let api: Api<Operation> = Api::all(client.clone());
    let params = ListParams::default().match_any();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (0, 0);
    loop {
        tick.tick().await;
        operator.ensure_running()?;
        match api.list(&params).await {
            Ok(list) => {
                let phases: Vec<OperationPhase> = list
                    .items
                    .iter()
                    .filter_map(|o| o.status.as_ref()?.phase)
                    .collect();
                let terminal = phases.iter().filter(|p| p.is_terminal()).count();
                let succeeded = phases
                    .iter()
                    .filter(|p| **p == OperationPhase::Succeeded)
                    .count();
                last = (terminal, succeeded);
                eprintln!(
                    "bench: terminal {terminal}/{} ({})",
                    opts.operations,
                    secs(t0.elapsed())
                );
                if terminal >= opts.operations {
                    return Ok((Some(t0.elapsed()), terminal, succeeded));
                }
            }
            Err(err) => eprintln!("bench: listing Operations failed: {err}"),
        }
        if t0.elapsed() > opts.timeout {
            return Ok((None, last.0, last.1));
        }
    }
}

/// `after - before` of the counter `name`, summed by `by`, the labels joined with spaces.
fn diff_by(before: &Exposition, after: &Exposition, name: &str, by: &[&str]) -> Vec<(String, f64)> {
    let old = before.sum_by(name, &[], by);
    after
        .sum_by(name, &[], by)
        .into_iter()
        .map(|(k, v)| {
            let d = v - old.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The Operation controller's reconcile durations observed between the scrapes.
fn durations(
    before: &Exposition,
    after: &Exposition,
) -> Option<vworkspace_testkit::prom::Histogram> {
    let base = "vworkspace_operator_reconcile_duration_seconds";
    let labels = [("controller", "operation")];
    let mut h = after.histogram(base, &labels)?;
    if let Some(old) = before.histogram(base, &labels) {
        for (le, count) in &mut h.buckets {
            if let Some((_, c)) = old.buckets.iter().find(|(l, _)| l == le) {
                *count -= c;
            }
        }
        h.count -= old.count;
        h.sum -= old.sum;
    }
    Some(h)
}

impl OpResults {
    fn markdown(&self) -> String {
        let m = &self.m;
        let o = &m.opts;
        let n = o.operations as f64;
        let total: f64 = m.requests.iter().map(|(_, v)| v).sum();
        let per_op = total / n;
        let rss_mib = m.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0));
        let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
        let mut s = String::new();
        let _ = writeln!(s, "{SECTION}\n");
        let _ = writeln!(
            s,
            "Written by `{}` ({}); the numbers of one run on a shared machine.\n",
            o.command, self.machine.date
        );
        let _ = writeln!(
            s,
            "{} Operations across {} namespaces (half `backup.velero`, half \
             `runbook.workflow`, each on its own ApplicationInstance), with {} \
             ApplicationInstances present; the simulated Velero and Argo finish each child \
             at once. Commit {}, {} cores ({}), {}, kernel {}; load average {} before, {} after.\n",
            o.operations,
            o.namespaces,
            o.instances,
            self.machine.commit,
            self.machine.cores,
            self.machine.cpu_model,
            self.machine.memory,
            self.machine.kernel,
            self.machine.load_before,
            self.machine.load_after,
        );
        let _ = writeln!(s, "| Measure | Result | Target |");
        let _ = writeln!(s, "|---|---|---|");
        let _ = writeln!(
            s,
            "| {} instances Ready (before the Operations) | {} | — |",
            o.instances,
            m.instances_ready
                .map_or_else(|| "not reached".to_owned(), secs)
        );
        let _ = writeln!(s, "| Operations created in | {} | — |", secs(m.created_in));
        match m.all_terminal {
            Some(t) => {
                let _ = writeln!(s, "| time to all terminal | {} | — |", secs(t));
                let _ = writeln!(
                    s,
                    "| Operations per second | {:.1} | — |",
                    n / t.as_secs_f64()
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| time to all terminal | not reached: {}/{} terminal after {} | — |",
                    m.terminal,
                    o.operations,
                    secs(o.timeout)
                );
            }
        }
        let _ = writeln!(s, "| succeeded | {}/{} | all |", m.succeeded, o.operations);
        let ms =
            |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{:.0} ms", v * 1000.0));
        let _ = writeln!(
            s,
            "| Operation reconciles | {:.0} ({:.2} per Operation) | — |",
            m.reconciles,
            m.reconciles / n
        );
        let _ = writeln!(
            s,
            "| reconcile p50 / p99 | {} / {} | — |",
            ms(m.p50),
            ms(m.p99)
        );
        let by_method = m
            .requests
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", v / n))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| API requests per Operation | {per_op:.2} ({by_method}) | ≤ {TARGET_REQUESTS_PER_OPERATION}: {} |",
            pass(per_op <= TARGET_REQUESTS_PER_OPERATION)
        );
        let _ = writeln!(
            s,
            "| operator peak RSS | {} | ≤ {TARGET_PEAK_RSS_MIB} MiB: {} |",
            rss_mib.map_or_else(|| "unknown".to_owned(), |m| format!("{m:.1} MiB")),
            pass(rss_mib.is_some_and(|m| m <= TARGET_PEAK_RSS_MIB))
        );
        s
    }
}

/// Replace the section [`SECTION`] of the doc (up to the next `## ` heading), or append it.
fn write_section(path: &Path, text: &str) -> Result<()> {
    let doc =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let new = match doc.find(&format!("\n{SECTION}\n")) {
        Some(start) => {
            let body = start + 1;
            let end = doc[body + SECTION.len()..]
                .find("\n## ")
                .map_or(doc.len(), |i| body + SECTION.len() + i + 1);
            let rest = &doc[end..];
            let gap = if rest.is_empty() { "\n" } else { "\n\n" };
            format!("{}{}{gap}{rest}", &doc[..body], text.trim_end())
        }
        None => format!("{}\n\n{}\n", doc.trim_end(), text.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_or_appended() {
        let dir = std::env::temp_dir().join(format!("ops-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join("doc.md");
        std::fs::write(&path, "# B\n\nintro\n\n## Other\n\nx\n").unwrap_or_default();
        write_section(&path, "## Operations\n\none\n").unwrap_or_default();
        let once = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            once,
            "# B\n\nintro\n\n## Other\n\nx\n\n## Operations\n\none\n"
        );
        std::fs::write(&path, "# B\n\n## Operations\n\nold\n\n## Later\n\ny\n").unwrap_or_default();
        write_section(&path, "## Operations\n\nnew\n").unwrap_or_default();
        let replaced = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(replaced, "# B\n\n## Operations\n\nnew\n\n## Later\n\ny\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[test]
    fn flags_parse() {
        let o = OpOptions::parse(&["--operations=20", "--operator-bin", "/tmp/op", "--no-doc"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.operations, 20);
        assert_eq!(o.operator_bin.as_deref(), Some(Path::new("/tmp/op")));
        assert!(!o.write_doc);
        assert!(OpOptions::parse(&["--operator-bin"]).is_err());
        assert!(OpOptions::parse(&["--operations", "0"]).is_err());
        assert!(OpOptions::parse(&["--operations", "20", "--instances", "10"]).is_err());
    }
}
