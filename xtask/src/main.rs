//! `cargo xtask`: the project's automation.
//!
//! * `k8s build|path`       build (or locate) the upstream Kubernetes binaries
//! * `cluster up|down|status` a local cluster for a person, outliving the command
//! * `test [ARGS]`          fmt, clippy and cargo deny; build what is missing, start a
//!   cluster, run every test, stop it
//! * `demo`                 start everything and show how to look at it
//! * `bench [FLAGS]`        measure the ApplicationInstance controller, update docs/benchmarks.md

mod bench;
mod bench_link;
mod demo;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use vworkspace_testkit::binaries::{self, K8sBinaries};
use vworkspace_testkit::cluster::{self, Lifetime, LocalCluster};
use vworkspace_testkit::env::{BIN_ENV, KUBECONFIG_ENV, dev_cluster_dir};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  k8s build           build the Kubernetes binaries that are missing from the cache
  k8s path            print the directory holding the Kubernetes binaries
  cluster up          start a local cluster in the background and print its KUBECONFIG
  cluster down        stop the cluster started by `cluster up`
  cluster status      show whether that cluster is running
  test [ARGS...]      check formatting, clippy (-D warnings) and cargo deny, then run
                      the whole test suite against a fresh local cluster
                      (ARGS go to `cargo test`, e.g. `cargo xtask test -p vworkspace-testkit`)
  demo                start the cluster, simulated Flux and the operator, create sample
                      applications and print the panes (Ctrl-C stops everything)
  bench [FLAGS]       measure the ApplicationInstance controller on a fresh local cluster
                      and write the numbers to docs/benchmarks.md (`bench --help` for flags)
  bench-link [FLAGS]  Pull-mode audit latency, status transition to SQLite row (prints only)";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("xtask: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Processes of attached clusters die with the thread that started them, so the
    // cluster is driven from this (the main) thread through `block_on`.
    match runtime.block_on(run(&args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Result<ExitCode> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["k8s", "build"] => {
            let started = Instant::now();
            let bins = K8sBinaries::ensure()?;
            println!("{} ({:.0?})", bins.dir().display(), started.elapsed());
        }
        ["k8s", "path"] => println!("{}", binaries::cache_key_dir()?.join("bin").display()),
        ["cluster", "up"] => cluster_up().await?,
        ["cluster", "down"] => cluster_down()?,
        ["cluster", "status"] => return cluster_status().await,
        ["test", rest @ ..] => return test(rest).await,
        ["bench", rest @ ..] => return bench::run(rest).await,
        ["bench-link", rest @ ..] => return bench_link::run(rest).await,
        ["demo"] => demo::run().await?,
        ["help"] | ["--help"] | ["-h"] | [] => println!("{USAGE}"),
        _ => bail!("unknown command {:?}\n\n{USAGE}", args.join(" ")),
    }
    Ok(ExitCode::SUCCESS)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn cluster_up() -> Result<()> {
    let dir = dev_cluster_dir()?;
    if let Some(state) = cluster::read_state(&dir)?
        && !cluster::processes_under(&dir).is_empty()
    {
        println!("a cluster is already running at {}", state.server);
        print_usage(&state.kubeconfig, &state.bin_dir);
        return Ok(());
    }
    let bins = K8sBinaries::ensure()?;
    let started = Instant::now();
    let cluster = LocalCluster::start(bins.clone(), &dir, Lifetime::Detached).await?;
    eprintln!("cluster up in {:.1?}", started.elapsed());
    let state = cluster.release();
    print_usage(&state.kubeconfig, &state.bin_dir);
    Ok(())
}

fn cluster_down() -> Result<()> {
    let dir = dev_cluster_dir()?;
    let stopped = cluster::stop_recorded(&dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    println!("stopped {stopped} process(es); removed {}", dir.display());
    Ok(())
}

async fn cluster_status() -> Result<ExitCode> {
    let dir = dev_cluster_dir()?;
    let Some(state) = cluster::read_state(&dir)? else {
        println!("no cluster (start one with `cargo xtask cluster up`)");
        return Ok(ExitCode::FAILURE);
    };
    let running = cluster::processes_under(&dir);
    for (name, pid) in &state.processes {
        let alive = running.iter().any(|(p, _)| p == pid);
        println!(
            "{name:<24} pid {pid:<8} {}",
            if alive { "running" } else { "NOT RUNNING" }
        );
    }
    let client = cluster::client_for(&state.kubeconfig).await?;
    let req = http_get("/readyz")?;
    match client.request_text(req).await {
        Ok(body) => println!("{} /readyz: {}", state.server, body.trim()),
        Err(err) => println!("{} /readyz: unreachable ({err})", state.server),
    }
    print_usage(&state.kubeconfig, &state.bin_dir);
    let all_up = state
        .processes
        .iter()
        .all(|(_, pid)| running.iter().any(|(p, _)| p == pid));
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn http_get(path: &str) -> Result<vworkspace_testkit::http::Request<Vec<u8>>> {
    Ok(vworkspace_testkit::http::Request::get(path).body(Vec::new())?)
}

fn print_usage(kubeconfig: &Path, bin_dir: &Path) {
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!(
        "export PATH={}:$PATH   # the matching kubectl",
        bin_dir.display()
    );
}

/// Check formatting, clippy and cargo deny; build, start one cluster for the whole
/// run, run every test, stop the cluster and prove that nothing it started is still
/// running.
async fn test(extra: &[&str]) -> Result<ExitCode> {
    let root = workspace_root();
    let t0 = Instant::now();
    let bins = K8sBinaries::ensure()?;
    eprintln!(
        "xtask test: Kubernetes binaries ready ({:.0?})",
        t0.elapsed()
    );

    let fmt = tokio::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["fmt", "--all", "--check"])
        .status()
        .await?;
    if !fmt.success() {
        bail!("the code is not formatted: run `cargo fmt --all`");
    }

    // What the README asks before every commit, enforced here (and so on CI).
    let clippy = tokio::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .status()
        .await?;
    if !clippy.success() {
        bail!("clippy found problems: `cargo clippy --workspace --all-targets -- -D warnings`");
    }
    eprintln!("xtask test: clippy clean ({:.0?})", t0.elapsed());

    cargo_deny(&root).await?;
    eprintln!("xtask test: cargo deny clean ({:.0?})", t0.elapsed());

    ensure_promtool().await?;
    ensure_chromium().await?;

    // Compile before the cluster starts: on two cores the two would slow each other.
    let mut build = tokio::process::Command::new(env!("CARGO"));
    build
        .current_dir(&root)
        .args(["test", "--workspace", "--no-run"])
        .args(extra);
    if !build.status().await?.success() {
        bail!("building the tests failed");
    }

    let dir = binaries::cache_root()?
        .join("test-runs")
        .join(std::process::id().to_string());
    let t1 = Instant::now();
    let mut cluster = LocalCluster::start(bins.clone(), &dir, Lifetime::Attached).await?;
    eprintln!(
        "xtask test: cluster ready at {} ({:.1?})",
        cluster.server(),
        t1.elapsed()
    );

    let mut cmd = tokio::process::Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["test", "--workspace"])
        .args(extra)
        .env(KUBECONFIG_ENV, cluster.kubeconfig())
        .env(BIN_ENV, bins.dir())
        // The metrics tests run promtool; `ensure_promtool` made sure it is here.
        .env("VWORKSPACE_REQUIRE_PROMTOOL", "1")
        .stdin(Stdio::null());
    let mut child = cmd.spawn().context("starting cargo test")?;
    let status = tokio::select! {
        status = child.wait() => Some(status?),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("xtask test: interrupted; stopping the cluster");
            let _ = child.kill().await;
            None
        }
    };

    cluster.stop()?;
    let left = cluster::processes_under(&dir);
    if !left.is_empty() {
        bail!("processes of the test cluster are still running: {left:?}");
    }
    eprintln!("xtask test: cluster stopped; no etcd, kube-* or kwok process of this run is left");
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("xtask test: total {:.1?}", t0.elapsed());
    Ok(match status {
        Some(s) if s.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// The cargo-deny release `cargo xtask test` installs when `cargo deny` is missing
/// (its MSRV is 1.88; it builds with the pinned toolchain).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// `cargo deny check` with `deny.toml`: licenses, bans and sources always; advisories
/// only when a copy of the advisory database is already on this machine, because
/// fetching it needs GitHub (see deny.toml and docs/decisions.md).
async fn cargo_deny(root: &Path) -> Result<()> {
    ensure_cargo_deny().await?;
    let mut cmd = tokio::process::Command::new(env!("CARGO"));
    cmd.current_dir(root).args(["deny", "check"]);
    match advisory_db() {
        Some(db) => {
            eprintln!(
                "xtask test: cargo deny: advisories from the local copy in {} (not fetched)",
                db.display()
            );
            cmd.arg("--disable-fetch");
        }
        None => {
            eprintln!(
                "xtask test: cargo deny: no local advisory database in {}; checking licenses, \
                 bans and sources only (`cargo deny fetch` where GitHub is reachable adds advisories)",
                advisory_db_root().display()
            );
            cmd.args(["licenses", "bans", "sources"]);
        }
    }
    if !cmd.status().await.context("running cargo deny")?.success() {
        bail!("cargo deny check failed (policy in deny.toml)");
    }
    Ok(())
}

/// `db-path` of deny.toml: `$CARGO_HOME/advisory-dbs`.
fn advisory_db_root() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("advisory-dbs")
}

/// A fetched RustSec database under [`advisory_db_root`]: cargo-deny clones it into
/// `advisory-db-<hash of the URL>/`, with the advisories under `crates/` (a failed
/// fetch leaves only a lock file behind).
fn advisory_db() -> Option<PathBuf> {
    std::fs::read_dir(advisory_db_root())
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|dir| {
            dir.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("advisory-db-"))
                && dir.join("crates").is_dir()
        })
}

/// Install cargo-deny when `cargo deny` is missing.
async fn ensure_cargo_deny() -> Result<()> {
    let present = tokio::process::Command::new(env!("CARGO"))
        .args(["deny", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!(
        "xtask test: installing cargo-deny {CARGO_DENY_VERSION} (`cargo install --locked`; \
         about 4 minutes on two cores, once)..."
    );
    let started = Instant::now();
    let status = tokio::process::Command::new(env!("CARGO"))
        .args([
            "install",
            "--locked",
            "cargo-deny",
            "--version",
            CARGO_DENY_VERSION,
        ])
        .status()
        .await
        .context("running cargo install cargo-deny")?;
    if !status.success() {
        bail!("installing cargo-deny {CARGO_DENY_VERSION} failed");
    }
    eprintln!(
        "xtask test: cargo-deny installed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// `promtool check metrics` validates the operator's exposition in the tests. It comes
/// from Debian's `prometheus` package; install it when missing and we are root (as on
/// CI and the project's machines), otherwise say how.
async fn ensure_promtool() -> Result<()> {
    if which("promtool") {
        return Ok(());
    }
    let uid = std::process::Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("promtool is missing: install Debian's `prometheus` package (it provides promtool)");
    }
    eprintln!("xtask test: installing promtool (Debian package `prometheus`)...");
    for args in [
        &["update", "-q"][..],
        &[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "prometheus",
        ][..],
    ] {
        let status = tokio::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .await
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed with {status}", args.join(" "));
        }
    }
    if !which("promtool") {
        bail!("the prometheus package did not provide promtool");
    }
    Ok(())
}

/// The control plane's timeline-page test loads the page in headless Chromium
/// (crates/controlplane/tests/timeline_page.rs). Debian's package is installed when
/// neither `$CHROMIUM` nor `chromium` on PATH is there.
async fn ensure_chromium() -> Result<()> {
    if std::env::var_os("CHROMIUM").is_some_and(|p| Path::new(&p).is_file()) || which("chromium") {
        return Ok(());
    }
    let uid = std::process::Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("chromium is missing: install Debian's `chromium` package or set CHROMIUM");
    }
    for args in [
        &["update", "-q"][..],
        &["install", "-y", "-q", "chromium"][..],
    ] {
        eprintln!(
            "xtask test: chromium is missing; running apt-get {}",
            args.join(" ")
        );
        let status = tokio::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .await
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed with {status}", args.join(" "));
        }
    }
    if !which("chromium") {
        bail!("the chromium package did not provide `chromium`");
    }
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
