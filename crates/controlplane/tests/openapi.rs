//! The server's answers conform to `docs/agent-api.openapi.yaml`: every success and
//! every documented error status of every agent endpoint is provoked on a real server,
//! and each answer (status, required headers, JSON body) is checked against the
//! document's schema; the request bodies, serialized from the wire types, are checked
//! against the request schemas, and every documented response must have been seen.
//!
//! The checker is small and strict: it knows the JSON Schema keywords the document uses
//! and fails on any other, so a keyword it does not understand is never silently
//! ignored.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;

use common::{CLUSTER, Server, batch, event};
use serde_json::{Map, Value, json};
use vworkspace_api::agent_api::{
    EventBatch, Heartbeat, JOB_TYPES, JobDocument, JobState, JobStatusReport,
};

struct OpenApi {
    root: Value,
    seen: Mutex<BTreeSet<(String, String, String)>>,
}

const KNOWN: [&str; 16] = [
    "$ref",
    "type",
    "description",
    "additionalProperties",
    "required",
    "properties",
    "items",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "enum",
    "oneOf",
    "discriminator",
];

impl OpenApi {
    fn load() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/agent-api.openapi.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let root: Value = serde_yaml::from_str(&text).unwrap();
        assert!(root["openapi"].as_str().unwrap().starts_with("3."));
        Self {
            root,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local $refs: {reference}"));
            node = self
                .root
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        node
    }

    fn schema(&self, name: &str) -> &Value {
        &self.root["components"]["schemas"][name]
    }

    /// Problems of `value` against `schema`, each with its JSON path.
    fn check(&self, value: &Value, schema: &Value, at: &str, out: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let obj = schema
            .as_object()
            .unwrap_or_else(|| panic!("schema at {at} is not an object"));
        for key in obj.keys() {
            assert!(
                KNOWN.contains(&key.as_str()),
                "the checker does not know {key:?} ({at})"
            );
        }
        if let Some(options) = obj.get("oneOf").and_then(Value::as_array) {
            let matching = options
                .iter()
                .filter(|option| {
                    let mut problems = Vec::new();
                    self.check(value, option, at, &mut problems);
                    problems.is_empty()
                })
                .count();
            if matching != 1 {
                out.push(format!(
                    "{at}: matches {matching} of the oneOf options, not 1"
                ));
            }
        }
        if let Some(allowed) = obj.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        let Some(kind) = obj.get("type").and_then(Value::as_str) else {
            return;
        };
        let type_ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => panic!("unknown type {other} at {at}"),
        };
        if !type_ok {
            out.push(format!("{at}: {value} is not of type {kind}"));
            return;
        }
        match value {
            Value::Object(map) => self.check_object(map, obj, at, out),
            Value::Array(items) => {
                if let Some(item_schema) = obj.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, item_schema, &format!("{at}[{i}]"), out);
                    }
                }
            }
            Value::String(s) => check_string(s, obj, at, out),
            Value::Number(n) => {
                let n = n.as_f64().unwrap();
                if let Some(min) = obj.get("minimum").and_then(Value::as_f64)
                    && n < min
                {
                    out.push(format!("{at}: {n} < minimum {min}"));
                }
                if let Some(max) = obj.get("maximum").and_then(Value::as_f64)
                    && n > max
                {
                    out.push(format!("{at}: {n} > maximum {max}"));
                }
            }
            _ => {}
        }
    }

    fn check_object(
        &self,
        map: &Map<String, Value>,
        schema: &Map<String, Value>,
        at: &str,
        out: &mut Vec<String>,
    ) {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap();
            if !map.contains_key(name) {
                out.push(format!("{at}: required property {name:?} is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, value) in map {
            let here = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(property) => self.check(value, property, &here, out),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        out.push(format!("{here}: property not in the schema"));
                    }
                    Some(extra @ Value::Object(_)) => self.check(value, extra, &here, out),
                    _ => {}
                },
            }
        }
    }

    /// Checks an answer of `method path` (the template) and records it as seen.
    async fn answer(&self, method: &str, path: &str, response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap();
        let responses = &self.root["paths"][path][method.to_lowercase()]["responses"];
        assert!(responses.is_object(), "{method} {path} is not documented");
        let key = if responses.get(status.to_string()).is_some() {
            status.to_string()
        } else {
            format!("{}XX", status / 100)
        };
        let documented = responses.get(&key).unwrap_or_else(|| {
            panic!("{method} {path} answered {status}, which is not documented")
        });
        let documented = self.resolve(documented);
        let schema = &documented["content"]["application/json"]["schema"];
        let mut problems = Vec::new();
        self.check(&body, schema, "$", &mut problems);
        for (name, header) in documented
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let value = headers
                .get(name.as_str())
                .map(|v| v.to_str().unwrap().to_owned());
            match value {
                None if header["required"] == true => {
                    problems.push(format!("header {name} is missing"));
                }
                None => {}
                Some(value) => {
                    let parsed: Value =
                        serde_json::from_str(&value).unwrap_or(Value::String(value));
                    self.check(
                        &parsed,
                        &header["schema"],
                        &format!("header {name}"),
                        &mut problems,
                    );
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{method} {path} {status}: {body}\n{}",
            problems.join("\n")
        );
        self.seen
            .lock()
            .unwrap()
            .insert((method.to_lowercase(), path.to_owned(), key));
        (status, body)
    }

    /// Checks a request body against `method path`'s request schema.
    fn request(&self, method: &str, path: &str, body: &Value) {
        let schema = &self.root["paths"][path][method.to_lowercase()]["requestBody"]["content"]["application/json"]
            ["schema"];
        let mut problems = Vec::new();
        self.check(body, schema, "$", &mut problems);
        assert!(
            problems.is_empty(),
            "request of {method} {path}: {}",
            problems.join("\n")
        );
    }

    fn documented(&self) -> BTreeSet<(String, String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.root["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for status in operation["responses"].as_object().unwrap().keys() {
                    all.insert((method.clone(), path.clone(), status.clone()));
                }
            }
        }
        all
    }
}

fn check_string(s: &str, schema: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        out.push(format!("{at}: shorter than {min}"));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        out.push(format!("{at}: longer than {max}"));
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        assert_eq!(
            format, "date-time",
            "the checker knows date-time only ({at})"
        );
        if chrono::DateTime::parse_from_rfc3339(s).is_err() || !s.ends_with('Z') {
            out.push(format!("{at}: {s:?} is not an RFC 3339 UTC time"));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        // The one pattern shape the document uses: ^[class]{n}$ with ranges.
        let inner = pattern
            .strip_prefix("^[")
            .and_then(|p| p.strip_suffix("}$"))
            .and_then(|p| p.split_once("]{"))
            .unwrap_or_else(|| panic!("the checker does not know pattern {pattern}"));
        let (class, count) = inner;
        let count: usize = count.parse().unwrap();
        let ranges: Vec<(char, char)> = class
            .as_bytes()
            .chunks(3)
            .map(|c| {
                assert!(c.len() == 3 && c[1] == b'-', "pattern class {class}");
                (char::from(c[0]), char::from(c[2]))
            })
            .collect();
        let ok = s.chars().count() == count
            && s.chars()
                .all(|ch| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&ch)));
        if !ok {
            out.push(format!("{at}: {s:?} does not match {pattern}"));
        }
    }
}

const EVENTS: &str = "/api/agent/events";
const JOBS: &str = "/api/agent/jobs";
const STATUS: &str = "/api/agent/jobs/{id}/status";
const HEARTBEAT: &str = "/api/agent/heartbeat";

#[test]
fn the_checker_catches_what_it_checks() {
    let api = OpenApi::load();
    let bad = [
        (json!({"accepted": 1}), "EventsAccepted", "required"),
        (
            json!({"accepted": -1, "duplicates": 0}),
            "EventsAccepted",
            "minimum",
        ),
        (
            json!({"accepted": "1", "duplicates": 0}),
            "EventsAccepted",
            "type",
        ),
        (
            json!({"accepted": 1, "duplicates": 0, "x": 1}),
            "EventsAccepted",
            "not in the schema",
        ),
        (
            json!({"error": "nope", "message": "m"}),
            "ApiError",
            "one of",
        ),
        (
            json!({"error": "internal", "message": "m", "details": {"a": 1}}),
            "ApiError",
            "type",
        ),
        (
            json!({"server_time": "yesterday"}),
            "HeartbeatAck",
            "RFC 3339",
        ),
        (json!({"type": "Reboot"}), "JobDocument", "oneOf"),
    ];
    for (value, schema, expect) in bad {
        let mut problems = Vec::new();
        api.check(&value, api.schema(schema), "$", &mut problems);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{value} against {schema}: {problems:?}"
        );
    }
    let mut event = event(1, "K");
    event["event_id"] = json!("0123456789ABCDEF0123456789abcdef");
    let mut problems = Vec::new();
    api.check(&event, api.schema("AuditEvent"), "$", &mut problems);
    assert!(
        problems.iter().any(|p| p.contains("does not match")),
        "{problems:?}"
    );
}

#[test]
fn every_job_document_shape_is_documented() {
    let api = OpenApi::load();
    let spec = Map::from_iter([("chart".to_owned(), json!("nextcloud"))]);
    let documents = [
        JobDocument::ApplyApplicationInstance {
            cluster_id: "c".into(),
            namespace: "n".into(),
            name: "a".into(),
            spec: spec.clone(),
        },
        JobDocument::DeleteApplicationInstance {
            cluster_id: "c".into(),
            namespace: "n".into(),
            name: "a".into(),
        },
        JobDocument::CreateOperation {
            cluster_id: "c".into(),
            namespace: "n".into(),
            name: "o".into(),
            spec,
        },
        JobDocument::CancelOperation {
            cluster_id: "c".into(),
            namespace: "n".into(),
            name: "o".into(),
        },
        JobDocument::ManageNamespace {
            cluster_id: "c".into(),
            namespace: "n".into(),
            org_id: "acme".into(),
            allowed_operation_templates: vec!["backup.velero".into()],
        },
        JobDocument::UnmanageNamespace {
            cluster_id: "c".into(),
            namespace: "n".into(),
        },
    ];
    assert_eq!(
        documents
            .iter()
            .map(JobDocument::type_name)
            .collect::<Vec<_>>(),
        JOB_TYPES
    );
    for document in &documents {
        let mut problems = Vec::new();
        api.check(
            &json!(document),
            api.schema("JobDocument"),
            "$",
            &mut problems,
        );
        assert!(
            problems.is_empty(),
            "{}: {problems:?}",
            document.type_name()
        );
    }
}

#[tokio::test]
async fn answers_conform_to_the_document() {
    let api = OpenApi::load();
    let s = Server::start_with(|c| c.max_body_bytes = 8 * 1024).await;
    let http = &s.http;

    // Requests as the agent builds them: from the wire types.
    let events = serde_json::to_value(EventBatch {
        events: vec![
            common::parse_event(&event(1, "A")),
            common::parse_event(&event(2, "B")),
        ],
    })
    .unwrap();
    api.request("post", EVENTS, &events);
    let heartbeat = serde_json::to_value(Heartbeat {
        cluster_id: CLUSTER.into(),
        operator_version: "v1".into(),
        pending_events: 0,
    })
    .unwrap();
    api.request("post", HEARTBEAT, &heartbeat);
    let applied = serde_json::to_value(JobStatusReport {
        state: JobState::Applied,
        message: "done".into(),
    })
    .unwrap();
    let rejected = json!(JobStatusReport {
        state: JobState::Rejected,
        message: "no".into()
    });
    api.request("post", STATUS, &applied);

    // 200s.
    let (_, body) = api
        .answer("POST", EVENTS, s.post(EVENTS, &events).await)
        .await;
    assert_eq!(body["accepted"], 2);
    api.answer("POST", HEARTBEAT, s.post(HEARTBEAT, &heartbeat).await)
        .await;
    let job = s.enqueue(r#"{"type":"UnmanageNamespace","cluster_id":"cluster-a","namespace":"n"}"#);
    let (_, body) = api
        .answer("GET", JOBS, s.get("/api/agent/jobs?wait_seconds=0").await)
        .await;
    assert_eq!(body["jobs"][0]["id"], json!(job));
    let status = format!("/api/agent/jobs/{job}/status");
    api.answer("POST", STATUS, s.post(&status, &applied).await)
        .await;

    // 400s.
    let mut foreign = event(3, "C");
    foreign["cluster_id"] = json!("elsewhere");
    let (code, _) = api
        .answer("POST", EVENTS, s.post(EVENTS, &batch(&[foreign])).await)
        .await;
    assert_eq!(code, 400);
    let (code, _) = api
        .answer("GET", JOBS, s.get("/api/agent/jobs?limit=x").await)
        .await;
    assert_eq!(code, 400);
    let (code, _) = api
        .answer("POST", STATUS, s.post(&status, &json!({"state": 1})).await)
        .await;
    assert_eq!(code, 400);
    let (code, _) = api
        .answer("POST", HEARTBEAT, s.post(HEARTBEAT, &json!({})).await)
        .await;
    assert_eq!(code, 400);

    // 401s.
    let anonymous = |method: reqwest::Method, path: &str| http.request(method, s.url(path));
    for (method, template, path) in [
        ("POST", EVENTS, EVENTS.to_owned()),
        ("GET", JOBS, JOBS.to_owned()),
        ("POST", STATUS, status.clone()),
        ("POST", HEARTBEAT, HEARTBEAT.to_owned()),
    ] {
        let request = anonymous(method.parse().unwrap(), &path).json(&json!({}));
        let (code, _) = api
            .answer(method, template, request.send().await.unwrap())
            .await;
        assert_eq!(code, 401, "{method} {path}");
    }

    // 404 and 409.
    let (code, _) = api
        .answer(
            "POST",
            STATUS,
            s.post("/api/agent/jobs/job-404/status", &applied).await,
        )
        .await;
    assert_eq!(code, 404);
    let (code, _) = api
        .answer("POST", STATUS, s.post(&status, &rejected).await)
        .await;
    assert_eq!(code, 409);

    // 413s.
    let huge = json!({ "padding": "x".repeat(16 * 1024) });
    for (template, path) in [
        (EVENTS, EVENTS.to_owned()),
        (STATUS, status.clone()),
        (HEARTBEAT, HEARTBEAT.to_owned()),
    ] {
        let (code, _) = api
            .answer("POST", template, s.post(&path, &huge).await)
            .await;
        assert_eq!(code, 413, "{path}");
    }

    // 5xx, from the fault switch.
    let fault = http
        .post(s.url("/admin/faults"))
        .json(&json!({"path": "all", "status": 503}))
        .send()
        .await
        .unwrap();
    assert_eq!(fault.status().as_u16(), 200);
    for (method, template, path) in [
        ("POST", EVENTS, EVENTS.to_owned()),
        ("GET", JOBS, JOBS.to_owned()),
        ("POST", STATUS, status.clone()),
        ("POST", HEARTBEAT, HEARTBEAT.to_owned()),
    ] {
        let request = http
            .request(method.parse().unwrap(), s.url(&path))
            .bearer_auth(&s.token)
            .json(&json!({}));
        let (code, body) = api
            .answer(method, template, request.send().await.unwrap())
            .await;
        assert_eq!((code, body["error"].as_str()), (503, Some("unavailable")));
    }
    s.running.shutdown().await;

    // 429s, from the real rate limiter: a bucket of one request per second.
    let limited = Server::start_with(|c| c.rate_limit_per_second = Some(1)).await;
    let job = limited.enqueue("{}");
    let status = format!("/api/agent/jobs/{job}/status");
    let first = limited.post(HEARTBEAT, &heartbeat).await;
    assert_eq!(first.status().as_u16(), 200);
    let requests: [(&str, &str, reqwest::RequestBuilder); 4] = [
        (
            "POST",
            EVENTS,
            limited.http.post(limited.url(EVENTS)).json(&events),
        ),
        ("GET", JOBS, limited.http.get(limited.url(JOBS))),
        (
            "POST",
            STATUS,
            limited.http.post(limited.url(&status)).json(&applied),
        ),
        (
            "POST",
            HEARTBEAT,
            limited.http.post(limited.url(HEARTBEAT)).json(&heartbeat),
        ),
    ];
    for (method, template, request) in requests {
        let response = request.bearer_auth(&limited.token).send().await.unwrap();
        let (code, _) = api.answer(method, template, response).await;
        assert_eq!(code, 429, "{method} {template}");
    }
    limited.running.shutdown().await;

    let seen = api.seen.lock().unwrap().clone();
    let missing: Vec<_> = api.documented().difference(&seen).cloned().collect();
    assert!(
        missing.is_empty(),
        "documented but never provoked: {missing:?}"
    );
}
