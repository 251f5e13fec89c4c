//! `vworkspace-controlplane`: the reference control plane's server and admin CLI.
//!
//! `serve` runs the server (see the library); every other command works on the
//! SQLite file directly (`--db`, same default as the server), except `fault` and
//! `stats`, which talk to a running server's admin endpoints (`--url`), because
//! faults and counters live in the server's memory.
//!
//! Invariants:
//! * `cluster create` prints the bootstrap token once, alone on its line, and it is
//!   never printed or stored again (only its hash is kept);
//! * the admin token is read from the environment or a file, never from an argument
//!   (arguments are visible to every user through `ps`);
//! * `serve` prints `listening on ADDR` as its first stdout line, so a caller that asked
//!   for port 0 learns the port.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use vworkspace_api::agent_api::JobDocument;
use vworkspace_controlplane::store::TimelineFilter;
use vworkspace_controlplane::{Config, FaultSpec, PathClass, Store, default_db_path};

const ADMIN_TOKEN_ENV: &str = "VWORKSPACE_CONTROLPLANE_ADMIN_TOKEN";

const USAGE: &str = "usage: vworkspace-controlplane <command> [flags]

commands (every command takes --db PATH; default $XDG_DATA_HOME/vworkspace-controlplane/controlplane.db):
  serve [--listen ADDR] [--max-body-bytes N] [--rate-limit N] [--long-poll-max-seconds N]
        [--admin-token-file F]          (or the admin token in $VWORKSPACE_CONTROLPLANE_ADMIN_TOKEN)
  org create NAME
  cluster create --org ORG CLUSTER_ID  prints the cluster's bootstrap token, once
  cluster list
  job enqueue --cluster ID [--id JOB_ID] --file F
  job enqueue --cluster ID [--id JOB_ID] --type T --namespace N [--name X]
              [--spec JSON | --spec-file F] [--org ORG] [--allowed-operation-templates a,b]
  job list [--cluster ID] [--json]
  timeline --org ORG [--json] [--cluster C] [--namespace N] [--application A]
           [--operation O] [--kind K] [--limit N]
  fault set --url URL --path events|jobs|heartbeat|all
            (--status N [--retry-after S] | --refuse | --delay-ms MS) [--count K]
  fault clear --url URL
  stats --url URL";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vworkspace-controlplane: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Flags after the command words: `--name value`, `--switch`, and positionals.
struct Flags {
    values: BTreeMap<String, String>,
    switches: Vec<String>,
    positional: Vec<String>,
}

const SWITCHES: [&str; 2] = ["--json", "--refuse"];

impl Flags {
    fn parse(args: &[String]) -> Result<Self> {
        let mut flags = Flags {
            values: BTreeMap::new(),
            switches: Vec::new(),
            positional: Vec::new(),
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if SWITCHES.contains(&arg.as_str()) {
                flags.switches.push(arg.clone());
            } else if let Some(name) = arg.strip_prefix("--") {
                let (name, value) = match name.split_once('=') {
                    Some((n, v)) => (n.to_owned(), v.to_owned()),
                    None => (
                        name.to_owned(),
                        iter.next()
                            .cloned()
                            .ok_or_else(|| anyhow!("--{name} needs a value"))?,
                    ),
                };
                flags.values.insert(name, value);
            } else {
                flags.positional.push(arg.clone());
            }
        }
        Ok(flags)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn need(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| anyhow!("--{name} is required\n\n{USAGE}"))
    }

    fn has(&self, switch: &str) -> bool {
        self.switches.iter().any(|s| s == switch)
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| anyhow!("--{name} {v:?} is not a number"))
            })
            .transpose()
    }

    fn db(&self) -> Result<PathBuf> {
        match self.get("db") {
            Some(path) => Ok(PathBuf::from(path)),
            None => default_db_path()
                .ok_or_else(|| anyhow!("no --db and neither XDG_DATA_HOME nor HOME is set")),
        }
    }

    fn one_positional(&self, what: &str) -> Result<&str> {
        match self.positional.as_slice() {
            [one] => Ok(one),
            _ => bail!("expected exactly one {what}\n\n{USAGE}"),
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let (command, rest): (&[&str], &[String]) = match words.as_slice() {
        ["serve", ..] | ["timeline", ..] | ["stats", ..] => (&words[..1], &args[1..]),
        [_, _, ..] => (&words[..2], &args[2..]),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => bail!("unknown command\n\n{USAGE}"),
    };
    let flags = Flags::parse(rest)?;
    match command {
        ["serve"] => serve(&flags),
        ["org", "create"] => {
            let name = flags.one_positional("org name")?;
            Store::open(&flags.db()?)?.create_org(name)?;
            println!("org {name} created");
            Ok(())
        }
        ["cluster", "create"] => {
            let id = flags.one_positional("cluster id")?;
            let token = Store::open(&flags.db()?)?.create_cluster(flags.need("org")?, id)?;
            eprintln!("cluster {id} created; its bootstrap token follows (shown only now)");
            println!("{token}");
            Ok(())
        }
        ["cluster", "list"] => {
            for c in Store::open(&flags.db()?)?.clusters()? {
                println!(
                    "{}\t{}\tlast heartbeat {}\t{}\tpending {}",
                    c.id,
                    c.org_id,
                    c.last_heartbeat_at.as_deref().unwrap_or("never"),
                    c.operator_version.as_deref().unwrap_or("-"),
                    c.pending_events.map_or("-".into(), |n| n.to_string()),
                );
            }
            Ok(())
        }
        ["job", "enqueue"] => job_enqueue(&flags),
        ["job", "list"] => job_list(&flags),
        ["timeline"] => timeline(&flags),
        ["fault", "set"] => fault_set(&flags),
        ["fault", "clear"] => admin_call(&flags, "DELETE", "/admin/faults", None),
        ["stats"] => admin_call(&flags, "GET", "/admin/stats", None),
        _ => bail!("unknown command {:?}\n\n{USAGE}", command.join(" ")),
    }
}

fn serve(flags: &Flags) -> Result<()> {
    let listen: SocketAddr = flags
        .get("listen")
        .unwrap_or("127.0.0.1:8090")
        .parse()
        .context("--listen")?;
    let mut config = Config::new(flags.db()?, listen);
    if let Some(n) = flags.number("max-body-bytes")? {
        config.max_body_bytes = n;
    }
    config.rate_limit_per_second = flags.number("rate-limit")?;
    if let Some(s) = flags.number("long-poll-max-seconds")? {
        config.long_poll_max = Duration::from_secs(s);
    }
    config.admin_token = admin_token(flags)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let running = vworkspace_controlplane::serve(config).await?;
        println!("listening on {}", running.addr);
        std::io::stdout().flush()?;
        shutdown_signal().await;
        running.shutdown().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn admin_token(flags: &Flags) -> Result<Option<String>> {
    if let Some(file) = flags.get("admin-token-file") {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        return Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty()));
    }
    Ok(std::env::var(ADMIN_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty()))
}

fn job_enqueue(flags: &Flags) -> Result<()> {
    let cluster = flags.need("cluster")?;
    let document = match (flags.get("file"), flags.get("type")) {
        // Verbatim, even when it is not a valid document: tests of the agent's
        // rejections need malformed jobs delivered as they are.
        (Some(file), None) => {
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
        }
        (None, Some(job_type)) => document_from_flags(flags, cluster, job_type)?,
        _ => bail!("give either --file or --type\n\n{USAGE}"),
    };
    let job = Store::open(&flags.db()?)?.enqueue_job(cluster, flags.get("id"), &document)?;
    println!("{}", job.id);
    Ok(())
}

fn document_from_flags(flags: &Flags, cluster: &str, job_type: &str) -> Result<String> {
    let mut doc = serde_json::Map::new();
    doc.insert("type".into(), job_type.into());
    doc.insert("cluster_id".into(), cluster.into());
    doc.insert("namespace".into(), flags.need("namespace")?.into());
    if let Some(name) = flags.get("name") {
        doc.insert("name".into(), name.into());
    }
    let spec = match (flags.get("spec"), flags.get("spec-file")) {
        (Some(json), None) => Some(json.to_owned()),
        (None, Some(file)) => {
            Some(std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?)
        }
        (None, None) => None,
        _ => bail!("give --spec or --spec-file, not both"),
    };
    if let Some(spec) = spec {
        let value: serde_json::Value = serde_json::from_str(&spec).context("--spec is not JSON")?;
        doc.insert("spec".into(), value);
    }
    if let Some(org) = flags.get("org") {
        doc.insert("org_id".into(), org.into());
    }
    if let Some(list) = flags.get("allowed-operation-templates") {
        let names: Vec<serde_json::Value> = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim().into())
            .collect();
        doc.insert("allowed_operation_templates".into(), names.into());
    }
    // Flags build well-formed jobs only; a malformed one goes through --file.
    let parsed: JobDocument = serde_json::from_value(serde_json::Value::Object(doc))
        .context("the flags do not make a valid job (use --file for arbitrary text)")?;
    Ok(serde_json::to_string(&parsed)?)
}

fn age(created_at: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(created_at) {
        Ok(t) => {
            let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0);
            match secs {
                0..60 => format!("{secs}s"),
                60..3600 => format!("{}m", secs / 60),
                3600..86400 => format!("{}h", secs / 3600),
                _ => format!("{}d", secs / 86400),
            }
        }
        Err(_) => "?".into(),
    }
}

fn job_list(flags: &Flags) -> Result<()> {
    let jobs = Store::open(&flags.db()?)?.list_jobs(flags.get("cluster"))?;
    if flags.has("--json") {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    println!("ID\tCLUSTER\tTYPE\tSTATE\tAGE\tMESSAGE");
    for job in jobs {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            job.id,
            job.cluster_id,
            job.job_type,
            job.state,
            age(&job.created_at),
            job.message
        );
    }
    Ok(())
}

fn timeline(flags: &Flags) -> Result<()> {
    let org = flags.need("org")?;
    let store = Store::open(&flags.db()?)?;
    if !store.org_exists(org)? {
        bail!("no org {org:?}");
    }
    let filter = TimelineFilter {
        cluster: flags.get("cluster").map(str::to_owned),
        namespace: flags.get("namespace").map(str::to_owned),
        application: flags.get("application").map(str::to_owned),
        operation: flags.get("operation").map(str::to_owned),
        kind: flags.get("kind").map(str::to_owned),
    };
    let events = store.timeline(org, &filter, flags.number("limit")?.unwrap_or(200))?;
    if flags.has("--json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "org_id": org, "events": events }))?
        );
        return Ok(());
    }
    for entry in events {
        let e = &entry.event;
        let occurred = serde_json::to_value(&e.occurred_at)?;
        let subject = [&e.namespace, &e.application_instance]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            occurred.as_str().unwrap_or("?"),
            e.kind,
            e.reason,
            e.cluster_id,
            if subject.is_empty() { "-" } else { &subject },
            e.message,
            e.event_id
        );
    }
    Ok(())
}

fn fault_set(flags: &Flags) -> Result<()> {
    let path: PathClass = serde_json::from_value(flags.need("path")?.into())
        .context("--path must be events, jobs, heartbeat or all")?;
    let spec = FaultSpec {
        path,
        status: flags.number("status")?,
        retry_after: flags.number("retry-after")?,
        refuse: flags.has("--refuse"),
        delay_ms: flags.number("delay-ms")?,
        count: flags.number("count")?,
    };
    spec.validate().map_err(|e| anyhow!(e))?;
    admin_call(
        flags,
        "POST",
        "/admin/faults",
        Some(serde_json::to_string(&spec)?),
    )
}

/// One request to a running server's admin endpoint, over a plain TCP connection (the
/// admin endpoints are plain HTTP on the server's address; no client library needed).
fn admin_call(flags: &Flags, method: &str, path: &str, body: Option<String>) -> Result<()> {
    use std::io::Read;
    let url = flags.need("url")?;
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must be http://HOST:PORT"))?
        .trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(authority)
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or_default();
    let auth = match admin_token(flags)? {
        Some(token) => format!("Authorization: Bearer {token}\r\n"),
        None => String::new(),
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, payload) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).unwrap_or("?");
    println!("{payload}");
    if status.starts_with('2') {
        Ok(())
    } else {
        bail!("{method} {path} answered {status}")
    }
}
