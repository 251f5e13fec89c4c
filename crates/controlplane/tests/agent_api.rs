//! The agent API against a real server in-process: deduplication, validation, limits,
//! the long-poll, job states, heartbeats, fault switches and the timeline JSON.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{CLUSTER, ORG, Server, batch, event, poll_until, stat};
use serde_json::{Value, json};
use vworkspace_api::agent_api::{
    ApiError, EventsAccepted, HeartbeatAck, JobList, JobState, JobStatusReport,
};
use vworkspace_controlplane::Store;

async fn error_of(response: reqwest::Response) -> (u16, ApiError) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn events_are_stored_once_by_event_id() {
    let s = Server::start().await;
    let first: EventsAccepted = s
        .post("/api/agent/events", &batch(&[event(1, "A"), event(2, "B")]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first,
        EventsAccepted {
            accepted: 2,
            duplicates: 0
        }
    );
    // A retry of the same batch plus one new event, and a duplicate inside the batch.
    let second: EventsAccepted = s
        .post(
            "/api/agent/events",
            &batch(&[event(1, "A"), event(2, "B"), event(3, "C"), event(3, "C")]),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        second,
        EventsAccepted {
            accepted: 1,
            duplicates: 3
        }
    );

    let timeline: Value = s
        .http
        .get(s.url(&format!("/api/orgs/{ORG}/timeline")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = timeline["events"].as_array().unwrap();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            format!("{:032x}", 3),
            format!("{:032x}", 2),
            format!("{:032x}", 1)
        ],
        "newest first, each once"
    );
    // Every payload field survives the round trip, plus received_at.
    let stored = &events[2];
    let mut sent = event(1, "A");
    sent["received_at"] = stored["received_at"].clone();
    assert!(stored["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(stored, &sent);
    s.running.shutdown().await;
}

#[tokio::test]
async fn a_batch_with_a_foreign_or_malformed_event_is_refused_whole() {
    let s = Server::start().await;
    let mut foreign = event(2, "B");
    foreign["cluster_id"] = json!("cluster-b");
    let mut bad_id = event(3, "C");
    bad_id["event_id"] = json!("NOT-HEX");
    let (status, err) = error_of(
        s.post(
            "/api/agent/events",
            &batch(&[event(1, "A"), foreign, bad_id]),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err.error, "bad_request");
    assert!(err.details.contains_key("events[1].cluster_id"), "{err:?}");
    assert!(err.details.contains_key("events[2].event_id"), "{err:?}");
    assert!(!err.details.contains_key("events[0].cluster_id"), "{err:?}");

    let mut missing = event(4, "D");
    missing.as_object_mut().unwrap().remove("kind");
    let (status, err) = error_of(s.post("/api/agent/events", &batch(&[missing])).await).await;
    assert_eq!(status, 400);
    assert!(err.message.contains("missing field `kind`"), "{err:?}");

    let response = s
        .http
        .post(s.url("/api/agent/events"))
        .bearer_auth(&s.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(err.error, "bad_request");

    // Nothing of the refused batches was stored.
    let rows = Store::open(&s.db())
        .unwrap()
        .timeline(ORG, &Default::default(), 100)
        .unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    s.running.shutdown().await;
}

#[tokio::test]
async fn unknown_or_missing_tokens_are_401() {
    let s = Server::start().await;
    for token in [Some("0".repeat(64)), None] {
        let mut request = s.http.post(s.url("/api/agent/heartbeat")).json(&json!({
            "cluster_id": CLUSTER, "operator_version": "v1", "pending_events": 0
        }));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let (status, err) = error_of(request.send().await.unwrap()).await;
        assert_eq!(status, 401);
        assert_eq!(err.error, "unauthorized");
    }
    // Another cluster's token is that cluster: it cannot speak for cluster-a.
    let other = s.add_cluster(ORG, "cluster-b");
    let response = s
        .http
        .post(s.url("/api/agent/events"))
        .bearer_auth(&other)
        .json(&batch(&[event(1, "A")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    s.running.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_413_and_the_connection_still_answers() {
    let s = Server::start_with(|c| c.max_body_bytes = 16 * 1024).await;
    let events: Vec<Value> = (0..400).map(|n| event(n, "Big")).collect();
    let body = batch(&events);
    assert!(serde_json::to_vec(&body).unwrap().len() > 16 * 1024);
    let (status, err) = error_of(s.post("/api/agent/events", &body).await).await;
    assert_eq!(status, 413);
    assert_eq!(err.error, "payload_too_large");
    // The agent's answer to 413 is to split; halves that fit are stored.
    let small: EventsAccepted = s
        .post("/api/agent/events", &batch(&events[..20]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(small.accepted, 20);
    s.running.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_per_token() {
    let s = Server::start_with(|c| c.rate_limit_per_second = Some(2)).await;
    let other = s.add_cluster(ORG, "cluster-b");
    let beat = |cluster: &str| json!({"cluster_id": cluster, "operator_version": "v1", "pending_events": 0});
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = s.post("/api/agent/heartbeat", &beat(CLUSTER)).await;
        if response.status().as_u16() == 429 {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let err: ApiError = response.json().await.unwrap();
            assert_eq!(err.error, "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429], "a burst of 2, then limited");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // The other cluster's bucket is its own.
    let response = s
        .http
        .post(s.url("/api/agent/heartbeat"))
        .bearer_auth(&other)
        .json(&beat("cluster-b"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    s.running.shutdown().await;
}

#[tokio::test]
async fn jobs_are_redelivered_until_acknowledged_and_acks_are_idempotent() {
    let s = Server::start().await;
    let first =
        s.enqueue(r#"{"type":"UnmanageNamespace","cluster_id":"cluster-a","namespace":"n1"}"#);
    let broken = s.enqueue("this is { not json");
    let list: JobList = s
        .get("/api/agent/jobs?wait_seconds=0")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [first.as_str(), broken.as_str()], "oldest first");
    assert_eq!(
        list.jobs[1].document, "this is { not json",
        "stored verbatim"
    );
    assert!(list.jobs[0].created_at.ends_with('Z'));

    let states = || {
        Store::open(&s.db())
            .unwrap()
            .list_jobs(Some(CLUSTER))
            .unwrap()
            .into_iter()
            .map(|j| (j.id, j.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        states(),
        [
            (first.clone(), "delivered".into()),
            (broken.clone(), "delivered".into())
        ]
    );

    let applied = json!(JobStatusReport {
        state: JobState::Applied,
        message: "ok".into()
    });
    let rejected = json!(JobStatusReport {
        state: JobState::Rejected,
        message: "bad".into()
    });
    let status_path = |id: &str| format!("/api/agent/jobs/{id}/status");
    assert_eq!(
        s.post(&status_path(&first), &applied)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        s.post(&status_path(&first), &applied)
            .await
            .status()
            .as_u16(),
        200,
        "same again"
    );
    let (status, err) = error_of(s.post(&status_path(&first), &rejected).await).await;
    assert_eq!((status, err.error.as_str()), (409, "conflict"));
    let (status, err) = error_of(s.post(&status_path("job-999"), &applied).await).await;
    assert_eq!((status, err.error.as_str()), (404, "not_found"));
    let (status, _) = error_of(
        s.post(&status_path(&broken), &json!({"state": "maybe"}))
            .await,
    )
    .await;
    assert_eq!(status, 400);

    // Only the unacknowledged job comes again.
    let list: JobList = s
        .get("/api/agent/jobs?limit=10")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(list.jobs[0].id, broken);
    assert_eq!(
        s.post(&status_path(&broken), &rejected)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        states(),
        [(first, "applied".into()), (broken, "rejected".into())]
    );
    let list: JobList = s.get("/api/agent/jobs").await.json().await.unwrap();
    assert!(list.jobs.is_empty());

    // Another cluster never sees cluster-a's jobs, nor can it acknowledge them.
    let other = s.add_cluster(ORG, "cluster-b");
    let job = s.enqueue("{}");
    let response = s
        .http
        .post(s.url(&status_path(&job)))
        .bearer_auth(&other)
        .json(&applied)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    s.running.shutdown().await;
}

#[tokio::test]
async fn the_long_poll_waits_and_wakes_for_a_job_enqueued_by_another_process() {
    let s = Server::start().await;
    // Nothing queued: answers empty after the wait.
    let started = Instant::now();
    let list: JobList = s
        .get("/api/agent/jobs?wait_seconds=1")
        .await
        .json()
        .await
        .unwrap();
    assert!(list.jobs.is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A poll waiting up to 20 s returns soon after a job lands in the file (the CLI's path:
    // another connection to the same database).
    let poll = tokio::spawn({
        let http = s.http.clone();
        let url = s.url("/api/agent/jobs?wait_seconds=20");
        let token = s.token.clone();
        async move {
            let list: JobList = http
                .get(url)
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
    // The poll is waiting (in flight, not answered) before the job exists.
    poll_until(
        Duration::from_secs(10),
        "the long-poll to be waiting",
        || async {
            let stats = s.stats().await;
            (stats["in_flight"]["GET /api/agent/jobs"] == 1).then_some(())
        },
    )
    .await;
    assert!(!poll.is_finished());
    let enqueued_at = Instant::now();
    let id = s.enqueue(r#"{"type":"UnmanageNamespace","cluster_id":"cluster-a","namespace":"n"}"#);
    let (list, answered_at) = poll.await.unwrap();
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(list.jobs[0].id, id);
    let latency = answered_at - enqueued_at;
    assert!(latency < Duration::from_secs(1), "woke after {latency:?}");

    let (status, err) = error_of(s.get("/api/agent/jobs?wait_seconds=soon").await).await;
    assert_eq!((status, err.error.as_str()), (400, "bad_request"));
    assert!(err.details.contains_key("wait_seconds"));
    let (status, _) = error_of(s.get("/api/agent/jobs?limit=0").await).await;
    assert_eq!(status, 400);
    s.running.shutdown().await;
}

#[tokio::test]
async fn wait_seconds_is_capped() {
    let s = Server::start_with(|c| c.long_poll_max = Duration::from_millis(500)).await;
    let started = Instant::now();
    let list: JobList = s
        .get("/api/agent/jobs?wait_seconds=30")
        .await
        .json()
        .await
        .unwrap();
    assert!(list.jobs.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn heartbeats_are_recorded() {
    let s = Server::start().await;
    let ack: HeartbeatAck = s
        .post(
            "/api/agent/heartbeat",
            &json!({"cluster_id": CLUSTER, "operator_version": "v9.9.9", "pending_events": 7}),
        )
        .await
        .json()
        .await
        .unwrap();
    chrono::DateTime::parse_from_rfc3339(&ack.server_time).unwrap();
    let clusters = Store::open(&s.db()).unwrap().clusters().unwrap();
    let row = clusters.iter().find(|c| c.id == CLUSTER).unwrap();
    assert_eq!(row.operator_version.as_deref(), Some("v9.9.9"));
    assert_eq!(row.pending_events, Some(7));
    assert!(row.last_heartbeat_at.is_some());
    let (status, err) = error_of(
        s.post(
            "/api/agent/heartbeat",
            &json!({"cluster_id": "cluster-z", "operator_version": "v1", "pending_events": 0}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(err.details.contains_key("cluster_id"));
    s.running.shutdown().await;
}

#[tokio::test]
async fn fault_switches_fail_refuse_and_delay_then_clear() {
    let s = Server::start().await;
    let set = |spec: Value| {
        let http = s.http.clone();
        let url = s.url("/admin/faults");
        async move {
            let r = http.post(url).json(&spec).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
        }
    };
    set(json!({"path": "events", "status": 503, "count": 2})).await;
    set(json!({"path": "heartbeat", "status": 429, "retry_after": 7, "count": 1})).await;
    for _ in 0..2 {
        let (status, err) =
            error_of(s.post("/api/agent/events", &batch(&[event(1, "A")])).await).await;
        assert_eq!((status, err.error.as_str()), (503, "unavailable"));
    }
    let ok: EventsAccepted = s
        .post("/api/agent/events", &batch(&[event(1, "A")]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok.accepted, 1, "the two faulted requests stored nothing");
    let beat = json!({"cluster_id": CLUSTER, "operator_version": "v1", "pending_events": 0});
    let limited = s.post("/api/agent/heartbeat", &beat).await;
    assert_eq!(limited.status().as_u16(), 429);
    assert_eq!(limited.headers()["retry-after"], "7");

    set(json!({"path": "jobs", "refuse": true, "count": 1})).await;
    let refused = s
        .http
        .get(s.url("/api/agent/jobs"))
        .bearer_auth(&s.token)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "the connection closes unanswered: {refused:?}"
    );
    assert_eq!(s.get("/api/agent/jobs").await.status().as_u16(), 200);

    set(json!({"path": "all", "delay_ms": 400})).await;
    let started = Instant::now();
    assert_eq!(
        s.post("/api/agent/heartbeat", &beat)
            .await
            .status()
            .as_u16(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    let bad = s
        .http
        .post(s.url("/admin/faults"))
        .json(&json!({"path": "all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let cleared = s.http.delete(s.url("/admin/faults")).send().await.unwrap();
    assert_eq!(cleared.status().as_u16(), 200);
    let started = Instant::now();
    assert_eq!(
        s.post("/api/agent/heartbeat", &beat)
            .await
            .status()
            .as_u16(),
        200
    );
    assert!(started.elapsed() < Duration::from_millis(400));

    let stats = s.stats().await;
    assert_eq!(stat(&stats, "POST /api/agent/events", "503"), 2);
    assert_eq!(stat(&stats, "POST /api/agent/events", "200"), 1);
    assert_eq!(stat(&stats, "POST /api/agent/heartbeat", "429"), 1);
    assert_eq!(stat(&stats, "POST /api/agent/heartbeat", "200"), 2);
    assert_eq!(stat(&stats, "GET /api/agent/jobs", "refused"), 1);
    assert_eq!(stat(&stats, "GET /api/agent/jobs", "200"), 1);
    s.running.shutdown().await;
}

#[tokio::test]
async fn the_timeline_filters_and_admin_access_needs_the_admin_token() {
    let s = Server::start_with(|c| c.admin_token = Some("admin-secret".into())).await;
    let mut events: Vec<Value> = (1..=6)
        .map(|n| event(n, if n % 2 == 0 { "Even" } else { "Odd" }))
        .collect();
    events[5]["namespace"] = json!("org-other");
    assert_eq!(
        s.post("/api/agent/events", &batch(&events))
            .await
            .status()
            .as_u16(),
        200
    );
    let timeline = |query: &str| {
        let http = s.http.clone();
        let url = s.url(&format!("/api/orgs/{ORG}/timeline{query}"));
        async move {
            let r = http
                .get(url)
                .bearer_auth("admin-secret")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let body: Value = r.json().await.unwrap();
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["message"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        timeline("?kind=Even").await,
        ["event 6", "event 4", "event 2"]
    );
    assert_eq!(timeline("?kind=Odd&application=app-1").await, ["event 1"]);
    assert_eq!(timeline("?namespace=org-other").await, ["event 6"]);
    assert_eq!(
        timeline("?cluster=cluster-a&limit=2").await,
        ["event 6", "event 5"]
    );
    assert!(timeline("?cluster=cluster-b").await.is_empty());
    assert!(timeline("?operation=none").await.is_empty());

    // Without the admin token: 401, even from loopback; the agent token is not enough.
    for auth in [None, Some(s.token.as_str())] {
        let mut request = s.http.get(s.url(&format!("/api/orgs/{ORG}/timeline")));
        if let Some(token) = auth {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
    let stats = s
        .http
        .get(s.url("/admin/stats?admin_token=admin-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stats.status().as_u16(),
        401,
        "the query token is for the page only"
    );
    let page = s
        .http
        .get(s.url(&format!("/orgs/{ORG}/timeline?admin_token=admin-secret")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let unknown = s
        .http
        .get(s.url("/api/orgs/nobody/timeline"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    s.running.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_port_and_a_restart_keeps_the_data() {
    let s = Server::start().await;
    assert_eq!(
        s.post("/api/agent/events", &batch(&[event(1, "A")]))
            .await
            .status()
            .as_u16(),
        200
    );
    let addr = s.running.addr;
    s.running.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );
    let again = vworkspace_controlplane::serve(vworkspace_controlplane::Config::new(
        s.dir.path().join("cp.db"),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .await
    .unwrap();
    let http = common::client();
    let r: EventsAccepted = http
        .post(format!("{}/api/agent/events", again.base_url()))
        .bearer_auth(&s.token)
        .json(&batch(&[event(1, "A")]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        EventsAccepted {
            accepted: 0,
            duplicates: 1
        },
        "token and event survived"
    );
    again.shutdown().await;
}
