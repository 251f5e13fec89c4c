//! Measures the audit stream end to end through the real code paths: the shipper's
//! buffer, the HTTP client and the reference control plane (in process, on loopback,
//! writing SQLite). Three measurements:
//!
//! * `throughput`: `--events` events submitted at once, delivered in batches of
//!   `--batch`; rows counted in SQLite. Also the resident memory of 10,000 events held
//!   in a stopped shipper's buffer.
//! * `latency`: `--rate` events/s for `--seconds`, flush interval 1 s; for each event the
//!   time from submit to the row's `received_at` (p50, p99, max).
//! * `outage`: the same rate while the control plane is down for `--outage` seconds,
//!   then the time until the buffer has drained.
//!
//! `cargo run --release -p vworkspace-agent --example ship -- --events 200000 --batch 500 --rate 200 --seconds 20 --outage 60`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use vworkspace_agent::client::{HttpClient, HttpConfig, Token};
use vworkspace_agent::shipper::{Backoff, Shipper, ShipperConfig};
use vworkspace_api::AuditEvent;
use vworkspace_controlplane::store::TimelineFilter;
use vworkspace_controlplane::{Config, Running, Store};

fn arg(name: &str, default: u64) -> Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        Some(v) => v
            .parse()
            .with_context(|| format!("{name} needs a number, not {v:?}")),
        None => Ok(default),
    }
}

fn event(i: u64) -> AuditEvent {
    let now = Timestamp::now();
    let second = Timestamp::from_second(now.as_second()).unwrap_or(now);
    AuditEvent {
        event_id: format!(
            "{:032x}",
            (u128::from(i) << 64) | u128::from(std::process::id())
        ),
        cluster_id: "c1".into(),
        org_id: "bench".into(),
        occurred_at: Time(second),
        namespace: Some("org-bench".into()),
        application_instance: Some(format!("app-{}", i % 1000)),
        operation_id: None,
        kind: "ReconcileSucceeded".into(),
        reason: "HelmReleaseReady".into(),
        message: "nextcloud@27.0.1 released: Helm install succeeded".into(),
        operator_version: "v0.1.0".into(),
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn config(capacity: usize, batch: usize, flush: Duration) -> ShipperConfig {
    ShipperConfig {
        capacity,
        max_batch: batch,
        flush_interval: flush,
        backoff: Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(2),
        },
        shutdown_bound: Duration::from_secs(5),
    }
}

async fn serve(db: &std::path::Path, addr: SocketAddr) -> Result<Running> {
    Ok(vworkspace_controlplane::serve(Config::new(db, addr)).await?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Submits at `rate`/s for `seconds`, returning (event_id → submit time).
async fn steady(
    shipper: &Shipper<HttpClient>,
    first: u64,
    rate: u64,
    seconds: u64,
) -> HashMap<String, SystemTime> {
    let mut sent = HashMap::new();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(period);
    for i in first..first + rate * seconds {
        tick.tick().await;
        let e = event(i);
        sent.insert(e.event_id.clone(), SystemTime::now());
        shipper.submit(e);
    }
    sent
}

fn latencies(store: &Store, sent: &HashMap<String, SystemTime>) -> Result<Vec<f64>> {
    let rows = store.timeline("bench", &TimelineFilter::default(), u32::MAX)?;
    let mut out: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let at = sent.get(&r.event.event_id)?;
            let received: Timestamp = r.received_at.parse().ok()?;
            let received = SystemTime::from(received);
            Some(
                received
                    .duration_since(*at)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    out.sort_by(f64::total_cmp);
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let total = arg("--events", 200_000)?;
    let batch = usize::try_from(arg("--batch", 500)?)?;
    let rate = arg("--rate", 200)?;
    let seconds = arg("--seconds", 20)?;
    let outage = arg("--outage", 60)?;
    let dir = std::env::temp_dir().join(format!("vws-ship-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("cp.db");
    let token = {
        let store = Store::open(&db)?;
        store.create_org("bench")?;
        store.create_cluster("bench", "c1")?
    };
    let running = serve(&db, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = running.addr;
    let client = HttpClient::new(HttpConfig {
        base_url: format!("http://{addr}"),
        token: Token::new(token),
        timeout: Duration::from_secs(30),
        ca_bundle_pem: None,
    })?;

    // Memory of 10,000 buffered events (the shipper is not started: nothing ships).
    let before = rss_kib();
    let parked = Shipper::new(
        client.clone(),
        config(10_000, batch, Duration::from_secs(1)),
        None,
    );
    for i in 0..10_000 {
        parked.submit(event(10_000_000 + i));
    }
    let after = rss_kib();
    println!(
        "memory: 10,000 buffered events = {} KiB resident ({} bytes/event)",
        after.saturating_sub(before),
        after.saturating_sub(before) * 1024 / 10_000
    );
    drop(parked);

    // Throughput.
    let shipper = Shipper::new(
        client.clone(),
        config(total as usize, batch, Duration::from_millis(50)),
        None,
    );
    for i in 0..total {
        shipper.submit(event(i));
    }
    let started = Instant::now();
    shipper.start();
    shipper.flush().await?;
    let elapsed = started.elapsed();
    let rows = Store::open(&db)?.event_count()?;
    println!(
        "throughput: {total} events in {:.2} s = {:.0} events/s into SQLite ({rows} rows), batches of {batch}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    shipper.stop().await;

    // Latency at a steady rate, flushInterval 1 s.
    let shipper = Shipper::new(
        client.clone(),
        config(100_000, batch, Duration::from_secs(1)),
        None,
    );
    shipper.start();
    let sent = steady(&shipper, 20_000_000, rate, seconds).await;
    shipper.flush().await?;
    let l = latencies(&Store::open(&db)?, &sent)?;
    println!(
        "latency at {rate} events/s for {seconds} s (flushInterval 1s): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} events",
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(0.0),
        l.len()
    );

    // Outage: the control plane is down for `outage` seconds at the same rate.
    running.shutdown().await;
    let during = steady(&shipper, 30_000_000, rate, outage).await;
    let pending = shipper.status().pending;
    let back = Instant::now();
    let running = serve(&db, addr).await?;
    shipper.flush().await.ok();
    while shipper.status().pending > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = shipper.flush().await;
    }
    let drained = back.elapsed();
    let rows_during = latencies(&Store::open(&db)?, &during)?.len();
    println!(
        "outage: {outage} s down at {rate} events/s = {pending} events buffered; drained {rows_during} rows {:.2} s after the control plane returned",
        drained.as_secs_f64()
    );
    shipper.stop().await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
