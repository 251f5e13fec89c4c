//! The built binary, black box: the admin CLI creates an org and a cluster (the token
//! printed once), `serve` announces its port, a job enqueued by the CLI wakes a waiting
//! long-poll, its status shows in `job list`, delivered events in `timeline`, and the
//! fault switches work from the CLI.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, poll_until};
use serde_json::{Value, json};
use vworkspace_api::agent_api::{EventsAccepted, JobDocument, JobList};

const BIN: &str = env!("CARGO_BIN_EXE_vworkspace-controlplane");

fn cli(db: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("VWORKSPACE_CONTROLPLANE_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn ok(db: &Path, args: &[&str]) -> String {
    let out = cli(db, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn event(n: u64, kind: &str) -> Value {
    json!({
        "event_id": format!("{n:032x}"),
        "cluster_id": "c1",
        "org_id": "acme",
        "occurred_at": format!("2026-05-28T10:00:{n:02}Z"),
        "namespace": "org-acme",
        "kind": kind,
        "reason": "ByCli",
        "message": format!("cli event {n}"),
        "operator_version": "v0.0.1",
    })
}

#[tokio::test]
async fn admin_cli_and_server_flow() {
    let dir = TempDir::new("vwcp-cli");
    let db = dir.path().join("nested/cp.db");

    assert_eq!(
        ok(&db, &["org", "create", "acme"]).trim(),
        "org acme created"
    );
    let out = cli(&db, &["org", "create", "acme"]);
    assert!(!out.status.success(), "an org is created once");
    let out = cli(&db, &["org", "create", "Not_A_Label"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DNS label"));
    let out = cli(&db, &["cluster", "create", "--org", "nobody", "c1"]);
    assert!(!out.status.success(), "unknown org");

    let printed = ok(&db, &["cluster", "create", "--org", "acme", "c1"]);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone on stdout: {printed:?}");
    let token = lines[0].to_owned();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // The database holds no clear token.
    let bytes = std::fs::read(&db).unwrap();
    let wal = std::fs::read(db.with_extension("db-wal")).unwrap_or_default();
    for haystack in [&bytes, &wal] {
        assert!(
            !haystack.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is stored in clear"
        );
    }

    // The server's log, at its most verbose, must never show the token.
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .env("RUST_LOG", "trace")
        .env_remove("VWORKSPACE_CONTROLPLANE_ADMIN_TOKEN")
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Serving(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_owned();
    let base = format!("http://{addr}");
    let http = common::client();

    // A long-poll waits; the CLI enqueues a job; the poll returns it within a second.
    let poll = tokio::spawn({
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let list: JobList = http
                .get(format!("{base}/api/agent/jobs?wait_seconds=20"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (list, Instant::now())
        }
    });
    poll_until(Duration::from_secs(10), "the long-poll to wait", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let stats: Value = http
                .get(format!("{base}/admin/stats"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (stats["in_flight"]["GET /api/agent/jobs"] == 1).then_some(())
        }
    })
    .await;
    let enqueued = Instant::now();
    let job_id = ok(
        &db,
        &[
            "job",
            "enqueue",
            "--cluster",
            "c1",
            "--type",
            "ManageNamespace",
            "--namespace",
            "org-acme",
            "--org",
            "acme",
            "--allowed-operation-templates",
            "backup.velero,restore.velero",
        ],
    )
    .trim()
    .to_owned();
    let (list, answered) = poll.await.unwrap();
    assert!(
        answered - enqueued < Duration::from_millis(1500),
        "the poll woke after {:?}",
        answered - enqueued
    );
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(list.jobs[0].id, job_id);
    let doc: JobDocument = serde_json::from_str(&list.jobs[0].document).unwrap();
    assert_eq!(
        doc,
        JobDocument::ManageNamespace {
            cluster_id: "c1".into(),
            namespace: "org-acme".into(),
            org_id: "acme".into(),
            allowed_operation_templates: vec!["backup.velero".into(), "restore.velero".into()],
        }
    );

    // A file is enqueued verbatim, even when it is not a job at all.
    let file = dir.path().join("broken.json");
    std::fs::write(&file, "{\"type\": \"Reboot\", oops").unwrap();
    let broken = ok(
        &db,
        &[
            "job",
            "enqueue",
            "--cluster",
            "c1",
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .trim()
    .to_owned();
    let out = cli(
        &db,
        &[
            "job",
            "enqueue",
            "--cluster",
            "c1",
            "--type",
            "Reboot",
            "--namespace",
            "n",
        ],
    );
    assert!(!out.status.success(), "flags build valid jobs only");

    let list: JobList = http
        .get(format!("{base}/api/agent/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list.jobs.len(),
        2,
        "the first job is redelivered until acknowledged"
    );
    assert_eq!(list.jobs[1].id, broken);
    assert_eq!(list.jobs[1].document, "{\"type\": \"Reboot\", oops");

    for (id, body) in [
        (
            &job_id,
            json!({"state": "applied", "message": "namespace managed"}),
        ),
        (
            &broken,
            json!({"state": "rejected", "message": "not a job document"}),
        ),
    ] {
        let r = http
            .post(format!("{base}/api/agent/jobs/{id}/status"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let listing = ok(&db, &["job", "list", "--cluster", "c1"]);
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 2, "{listing}");
    assert_eq!(rows[0][0], job_id);
    assert_eq!(&rows[0][2..4], ["ManageNamespace", "applied"]);
    assert_eq!(rows[0][5], "namespace managed");
    assert_eq!(&rows[1][2..4], ["-", "rejected"]);
    assert_eq!(rows[1][5], "not a job document");

    // Events delivered over HTTP show in the CLI's timeline, newest first.
    let accepted: EventsAccepted = http
        .post(format!("{base}/api/agent/events"))
        .bearer_auth(&token)
        .json(&json!({"events": [event(1, "OperationStarted"), event(2, "OperationSucceeded")]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accepted.accepted, 2);
    let text = ok(&db, &["timeline", "--org", "acme"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("OperationSucceeded") && lines[0].ends_with(&format!("{:032x}", 2)));
    assert!(lines[1].contains("OperationStarted") && lines[1].contains("cli event 1"));
    let json_out: Value = serde_json::from_str(&ok(
        &db,
        &[
            "timeline",
            "--org",
            "acme",
            "--json",
            "--kind",
            "OperationStarted",
        ],
    ))
    .unwrap();
    let events = json_out["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_id"], format!("{:032x}", 1));

    // Fault switches from the CLI.
    ok(
        &db,
        &[
            "fault", "set", "--url", &base, "--path", "events", "--status", "503", "--count", "1",
        ],
    );
    let post = || {
        http.post(format!("{base}/api/agent/events"))
            .bearer_auth(&token)
            .json(&json!({"events": [event(3, "X")]}))
            .send()
    };
    assert_eq!(post().await.unwrap().status().as_u16(), 503);
    ok(
        &db,
        &["fault", "set", "--url", &base, "--path", "all", "--refuse"],
    );
    assert!(post().await.is_err(), "refused");
    ok(&db, &["fault", "clear", "--url", &base]);
    assert_eq!(post().await.unwrap().status().as_u16(), 200);
    let stats: Value = serde_json::from_str(&ok(&db, &["stats", "--url", &base])).unwrap();
    assert_eq!(stats["requests"]["POST /api/agent/events"]["503"], 1);
    assert_eq!(stats["requests"]["POST /api/agent/events"]["refused"], 1);
    assert_eq!(stats["requests"]["POST /api/agent/events"]["200"], 2);

    // A heartbeat shows in `cluster list`.
    let r = http
        .post(format!("{base}/api/agent/heartbeat"))
        .bearer_auth(&token)
        .json(&json!({"cluster_id": "c1", "operator_version": "v7.7.7", "pending_events": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let clusters = ok(&db, &["cluster", "list"]);
    assert!(
        clusters.contains("c1\tacme")
            && clusters.contains("v7.7.7")
            && clusters.contains("pending 3"),
        "{clusters}"
    );

    // SIGTERM stops the server cleanly.
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let mut server = server;
    let status = poll_until(Duration::from_secs(10), "the server to exit", || {
        let status = server.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("control plane listening"),
        "the log was captured: {log}"
    );
    assert!(!log.contains(&token), "the token is in the server's log");
}
