//! Table tests of the pure job checks and of the messages and audit events they produce.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use k8s_openapi::jiff::Timestamp;

use super::*;

fn job(id: &str, document: &str) -> Job {
    Job {
        id: id.to_owned(),
        created_at: "2026-12-01T10:00:00Z".to_owned(),
        document: document.to_owned(),
    }
}

const SECRET: &str = "hunter2-canary";

#[test]
fn every_rejection_reason_of_the_pure_checks() {
    let big = format!(
        r#"{{"type":"UnmanageNamespace","cluster_id":"c1","namespace":"{}"}}"#,
        "a".repeat(300)
    );
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("not json", "j1", "{not json".into(), "MalformedJob"),
        ("not an object", "j1", "[1,2]".into(), "MalformedJob"),
        ("no type", "j1", r#"{"cluster_id":"c1"}"#.into(), "MalformedJob"),
        ("type not a string", "j1", r#"{"type":5}"#.into(), "MalformedJob"),
        ("unknown type", "j1", r#"{"type":"Reboot","cluster_id":"c1"}"#.into(), "UnknownJobType"),
        ("missing field", "j1", r#"{"type":"UnmanageNamespace","cluster_id":"c1"}"#.into(), "InvalidField"),
        ("unknown field", "j1", r#"{"type":"UnmanageNamespace","cluster_id":"c1","namespace":"n","force":true}"#.into(), "InvalidField"),
        ("ill-typed field", "j1", r#"{"type":"UnmanageNamespace","cluster_id":"c1","namespace":7}"#.into(), "InvalidField"),
        ("spec missing chart", "j1", r#"{"type":"ApplyApplicationInstance","cluster_id":"c1","namespace":"n","name":"a","spec":{}}"#.into(), "InvalidField"),
        ("operation spec ill-typed", "j1", r#"{"type":"CreateOperation","cluster_id":"c1","namespace":"n","name":"o","spec":{"type":"Backup","template":"backup.velero","applicationInstance":"a","cancel":"yes"}}"#.into(), "InvalidField"),
        ("bad job id", "j 1/x", r#"{"type":"UnmanageNamespace","cluster_id":"c1","namespace":"n"}"#.into(), "InvalidField"),
        ("bad org id", "j1", r#"{"type":"ManageNamespace","cluster_id":"c1","namespace":"n","org_id":"a b"}"#.into(), "InvalidField"),
        ("bad template", "j1", r#"{"type":"ManageNamespace","cluster_id":"c1","namespace":"n","org_id":"a","allowed_operation_templates":["backup,velero"]}"#.into(), "InvalidField"),
        ("bad namespace", "j1", r#"{"type":"UnmanageNamespace","cluster_id":"c1","namespace":"Org_A"}"#.into(), "InvalidName"),
        ("bad name", "j1", r#"{"type":"DeleteApplicationInstance","cluster_id":"c1","namespace":"n","name":"-x-"}"#.into(), "InvalidName"),
        ("too long namespace", "j1", big.clone(), "InvalidName"),
        ("other cluster", "j1", r#"{"type":"UnmanageNamespace","cluster_id":"c2","namespace":"n"}"#.into(), "WrongCluster"),
    ];
    for (name, id, document, want) in cases {
        let got = validate(&job(id, &document), "c1", 4096).unwrap_err();
        assert_eq!(got.category(), want, "{name}: {got}");
    }
    let oversized = validate(&job("j1", &big), "c1", 100).unwrap_err();
    assert_eq!(oversized.category(), "PayloadTooLarge");
    assert_eq!(
        oversized.to_string(),
        format!("the job document is {} bytes; the limit is 100", big.len())
    );
}

#[test]
fn valid_jobs_of_every_type_pass() {
    let docs = [
        r#"{"type":"ApplyApplicationInstance","cluster_id":"c1","namespace":"org-a","name":"nextcloud","spec":{"chart":{"repository":"https://charts.example.org","name":"nextcloud","version":"1.0.0"}}}"#,
        r#"{"type":"DeleteApplicationInstance","cluster_id":"c1","namespace":"org-a","name":"nextcloud"}"#,
        r#"{"type":"CreateOperation","cluster_id":"c1","namespace":"org-a","name":"backup-1","spec":{"type":"Backup","template":"backup.velero","applicationInstance":"nextcloud"}}"#,
        r#"{"type":"CancelOperation","cluster_id":"c1","namespace":"org-a","name":"backup-1"}"#,
        r#"{"type":"ManageNamespace","cluster_id":"c1","namespace":"org-a","org_id":"a","allowed_operation_templates":["backup.velero","upgrade.helm"]}"#,
        r#"{"type":"UnmanageNamespace","cluster_id":"c1","namespace":"org-a"}"#,
    ];
    for (doc, ty) in docs.iter().zip(vworkspace_api::agent_api::JOB_TYPES) {
        let valid = validate(&job("job-1", doc), "c1", DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        assert_eq!(valid.document.type_name(), ty);
        assert_eq!(valid.digest, document_digest(doc));
        assert_eq!(valid.digest.len(), 32);
    }
}

#[test]
fn messages_never_echo_payload_values() {
    let docs = [
        format!(
            r#"{{"type":"ApplyApplicationInstance","cluster_id":"c1","namespace":"n","name":"a","spec":{{"chart":{{"repository":"https://x","name":"n","version":"1"}},"suspend":"{SECRET}"}}}}"#
        ),
        format!(
            r#"{{"type":"ApplyApplicationInstance","cluster_id":"c1","namespace":"n","name":"a","spec":{{"chart":{SECRET:?}}}}}"#
        ),
        format!(r#"{{"type":"UnmanageNamespace","cluster_id":"c1","namespace":["{SECRET}"]}}"#),
        format!(r#"{{"type":"UnmanageNamespace","cluster_id":"c1","namespace":"n","{SECRET}":1}}"#),
        format!(
            r#"{{"type":"CreateOperation","cluster_id":"c1","namespace":"n","name":"o","spec":{{"type":"Backup","template":"backup.velero","applicationInstance":"a","timeout":"{SECRET}"}}}}"#
        ),
    ];
    let source = AuditSource {
        cluster_id: "c1".into(),
        org_id: "o".into(),
        operator_version: "v0".into(),
    };
    for doc in docs {
        let j = job("job-7", &doc);
        let rejection = validate(&j, "c1", DEFAULT_MAX_DOCUMENT_BYTES).unwrap_err();
        let outcome = JobOutcome::Rejected {
            document: None,
            rejection: rejection.clone(),
        };
        let report = outcome.report();
        let event = rejection_event(&source, &j, None, &rejection, Time(Timestamp::UNIX_EPOCH));
        for text in [
            report.message.clone(),
            event.message.clone(),
            format!("{rejection:?}"),
        ] {
            // Unknown field names are echoed by serde as field names; values never are.
            if doc.contains(&format!("\"{SECRET}\":1")) {
                continue;
            }
            assert!(!text.contains(SECRET), "{text}");
        }
        assert!(
            report.message.starts_with(rejection.category()),
            "{}",
            report.message
        );
    }
}

#[test]
fn the_rejection_event_is_keyed_on_job_and_reason() {
    let source = AuditSource {
        cluster_id: "c1".into(),
        org_id: "org-a".into(),
        operator_version: "v0.1.0".into(),
    };
    let j = job(
        "job-9",
        r#"{"type":"UnmanageNamespace","cluster_id":"c2","namespace":"n"}"#,
    );
    let rejection = validate(&j, "c1", DEFAULT_MAX_DOCUMENT_BYTES).unwrap_err();
    let at = Time(Timestamp::from_second(1_780_000_000).unwrap());
    let event = rejection_event(&source, &j, Some("n"), &rejection, at.clone());
    assert_eq!(event.kind, "JobRejected");
    assert_eq!(event.reason, "WrongCluster");
    assert_eq!(event.namespace.as_deref(), Some("n"));
    assert_eq!(
        event.event_id,
        event_id(
            "c1",
            "JobRejected",
            &TransitionKey {
                uid: "job-9",
                generation: 0,
                condition: "",
                reason: "WrongCluster",
                occurrence: 1
            }
        )
    );
    assert!(
        event.message.contains("job-9") && event.message.contains("WrongCluster"),
        "{}",
        event.message
    );
    // Same job, same reason → same id (a retried publish deduplicates).
    assert_eq!(
        rejection_event(&source, &j, Some("n"), &rejection, at).event_id,
        event.event_id
    );
}

#[test]
fn dns_names() {
    for ok in ["a", "org-a", "a1", &"a".repeat(63)] {
        assert!(dns1123_label(ok).is_ok(), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
        assert!(dns1123_label(bad).is_err(), "{bad}");
    }
    assert!(dns1123_subdomain("a.b-c.d").is_ok());
    assert!(dns1123_subdomain("a..b").is_err());
    assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
}

#[test]
fn the_job_memory_is_bounded_and_forgets_the_oldest() {
    let mut memory = Memory::default();
    let seen = || Seen {
        digest: "d".into(),
        outcome: None,
    };
    for i in 0..REMEMBERED_JOBS + 10 {
        memory.insert(format!("job-{i}"), seen());
    }
    // Re-inserting a known id does not grow the order.
    memory.insert(format!("job-{}", REMEMBERED_JOBS + 9), seen());
    assert_eq!(memory.map.len(), REMEMBERED_JOBS);
    assert_eq!(memory.order.len(), REMEMBERED_JOBS);
    assert!(memory.get("job-9").is_none());
    assert!(memory.get("job-10").is_some());
}
