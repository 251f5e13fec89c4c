//! Measures audit-event ingest: a server in-process on loopback, `--clients` concurrent
//! agents posting batches of `--batch` events until `--events` are stored, then the rows
//! in SQLite are counted (so the rate is of stored rows, not of answers).
//!
//! `cargo run --release -p vworkspace-controlplane --example ingest -- --events 200000 --batch 200 --clients 4`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use vworkspace_api::agent_api::EventsAccepted;
use vworkspace_controlplane::{Config, Store};

fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} needs a number, not {v:?}")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = arg("--events", 200_000)?;
    let batch = arg("--batch", 200)?;
    let clients = arg("--clients", 4)?;
    let dir = std::env::temp_dir().join(format!("vwcp-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("cp.db");
    let token = {
        let store = Store::open(&db)?;
        store.create_org("bench")?;
        store.create_cluster("bench", "c1")?
    };
    let running =
        vworkspace_controlplane::serve(Config::new(&db, SocketAddr::from(([127, 0, 0, 1], 0))))
            .await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!("{}/api/agent/events", running.base_url());
    let batches = total.div_ceil(batch);

    // Bodies are built before the clock starts: the benchmark measures the server.
    let bodies: Vec<Vec<u8>> = (0..batches)
        .map(|b| {
            let events: Vec<_> = (b * batch..((b + 1) * batch).min(total))
                .map(|n| {
                    json!({
                        "event_id": format!("{n:032x}"),
                        "cluster_id": "c1",
                        "org_id": "bench",
                        "occurred_at": "2026-05-28T10:07:13Z",
                        "namespace": "org-bench",
                        "application_instance": format!("app-{}", n % 50),
                        "kind": "HelmReleaseUpgraded",
                        "reason": "UpgradeSucceeded",
                        "message": "helm upgrade of nextcloud succeeded (chart 4.2.0)",
                        "operator_version": "v0.1.0",
                    })
                })
                .collect();
            serde_json::to_vec(&json!({ "events": events }))
        })
        .collect::<Result<_, _>>()?;
    let bodies = std::sync::Arc::new(bodies);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, url, token, bodies) = (http.clone(), url.clone(), token.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut accepted = 0;
            for body in bodies
                .iter()
                .skip(client as usize)
                .step_by(clients as usize)
            {
                let t = Instant::now();
                let answer: EventsAccepted = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                latencies.push(t.elapsed());
                accepted += answer.accepted;
            }
            Ok::<_, reqwest::Error>((accepted, latencies))
        }));
    }
    let mut accepted = 0;
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        let (a, l) = task.await??;
        accepted += a;
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    running.shutdown().await;

    let rows = Store::open(&db)?.event_count()?;
    latencies.sort();
    anyhow::ensure!(!latencies.is_empty(), "no batch was sent");
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "{accepted} events accepted in {batches} batches of {batch} by {clients} clients in {elapsed:.2?}"
    );
    println!(
        "{:.0} events/s stored ({rows} rows in SQLite); batch latency p50 {:.1?} p99 {:.1?}",
        rows as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    anyhow::ensure!(rows == total, "{rows} rows stored for {total} events");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
