use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;
use crate::SecretString;

fn opts(level: LogLevel, encoder: LogEncoder) -> LogOptions {
    LogOptions {
        level,
        encoder,
        cluster_id: "cluster-prod-1".into(),
        org_id: "myteam".into(),
        operator_version: "v0.4.2".into(),
        filter: None,
    }
}

/// Runs `f` with the logging layer as the thread's subscriber and returns the lines.
fn capture(options: &LogOptions, f: impl FnOnce()) -> Vec<String> {
    let sink = LogCapture::new();
    let layer = make_layer(options, sink.clone()).expect("valid options");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, f);
    sink.lines()
}

fn parse(line: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str(line) {
        Ok(Value::Object(map)) => map,
        other => panic!("not a JSON object: {line} ({other:?})"),
    }
}

#[test]
fn every_line_is_a_json_object_with_zaps_keys_in_order() {
    let lines = capture(&opts(LogLevel::Debug, LogEncoder::Json), || {
        tracing::debug!("step");
        tracing::info!(
            attempt = 2_u64,
            ok = true,
            ratio = 0.5,
            "reconcile finished"
        );
        tracing::warn!("control plane unreachable");
        tracing::error!(error = "boom", "credential rotation failed");
        tracing::trace!("too fine for zap");
    });
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let levels: Vec<String> = lines
        .iter()
        .map(|l| parse(l)["level"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(levels, ["debug", "info", "warn", "error"]);
    for line in &lines {
        let object = parse(line);
        let ts = object["ts"].as_str().expect("ts is a string");
        chrono::DateTime::parse_from_rfc3339(ts).expect("ts is RFC3339");
        assert!(ts.ends_with('Z'), "{ts}");
        assert_eq!(object["cluster_id"], "cluster-prod-1");
        assert_eq!(object["org_id"], "myteam");
        assert_eq!(object["operator_version"], "v0.4.2");
        assert_eq!(object["logger"], "vworkspace_telemetry::logging::tests");
        assert!(line.starts_with("{\"level\":\""), "{line}");
        let order: Vec<usize> = [
            "\"ts\":",
            "\"msg\":",
            "\"cluster_id\":",
            "\"org_id\":",
            "\"operator_version\":",
        ]
        .iter()
        .map(|k| line.find(k).unwrap_or(usize::MAX))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "key order in {line}");
    }
    let info = parse(&lines[1]);
    assert_eq!(info["msg"], "reconcile finished");
    assert_eq!(info["attempt"], 2);
    assert_eq!(info["ok"], true);
    assert_eq!(info["ratio"], 0.5);
    assert!(!info.contains_key("message"));
}

#[test]
fn span_fields_are_flattened_onto_every_line_inside() {
    let lines = capture(&opts(LogLevel::Info, LogEncoder::Json), || {
        let reconcile = tracing::info_span!(
            "reconcile",
            controller = "operation",
            reconcileID = "5c1e9a",
            namespace = "org-myteam",
            operation_id = tracing::field::Empty,
        );
        let _outer = reconcile.enter();
        tracing::info!("reconciliation started");
        reconcile.record("operation_id", "6b62");
        {
            let step = tracing::info_span!("step", phase = "Running", namespace = "velero");
            let _inner = step.enter();
            tracing::info!(phase = "Succeeded", "child finished");
        }
        tracing::info!("reconciliation finished");
    });
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let first = parse(&lines[0]);
    assert_eq!(first["controller"], "operation");
    assert_eq!(first["reconcileID"], "5c1e9a");
    assert_eq!(first["namespace"], "org-myteam");
    assert!(!first.contains_key("operation_id"), "not recorded yet");

    let nested = parse(&lines[1]);
    assert_eq!(nested["reconcileID"], "5c1e9a");
    assert_eq!(nested["operation_id"], "6b62");
    assert_eq!(nested["namespace"], "velero", "inner span wins");
    assert_eq!(nested["phase"], "Succeeded", "event wins");
    assert_eq!(
        lines[1].matches("\"namespace\":").count(),
        1,
        "keys are unique: {}",
        lines[1]
    );

    let last = parse(&lines[2]);
    assert_eq!(last["operation_id"], "6b62");
    assert_eq!(last["namespace"], "org-myteam");
    assert!(!last.contains_key("phase"));
}

#[test]
fn fixed_keys_cannot_be_overwritten() {
    let lines = capture(&opts(LogLevel::Info, LogEncoder::Json), || {
        let span = tracing::info_span!("s", cluster_id = "spoofed");
        let _e = span.enter();
        tracing::info!(level = "fake", msg = "fake", "real message");
    });
    let object = parse(&lines[0]);
    assert_eq!(object["level"], "info");
    assert_eq!(object["msg"], "real message");
    assert_eq!(object["cluster_id"], "cluster-prod-1");
    assert_eq!(object["fields.cluster_id"], "spoofed");
    assert_eq!(object["fields.level"], "fake");
    assert_eq!(object["fields.msg"], "fake");
}

#[test]
fn level_flag_filters_and_filter_directives_refine_it() {
    let lines = capture(&opts(LogLevel::Warn, LogEncoder::Json), || {
        tracing::info!("hidden");
        tracing::warn!("shown");
    });
    assert_eq!(lines.len(), 1);
    assert_eq!(parse(&lines[0])["msg"], "shown");

    let mut refined = opts(LogLevel::Warn, LogEncoder::Json);
    refined.filter = Some("vworkspace_telemetry::logging=debug".into());
    let lines = capture(&refined, || {
        tracing::debug!("now visible");
        tracing::info!(target: "kube_client", "still hidden");
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(parse(&lines[0])["msg"], "now visible");
}

#[test]
fn secrets_never_reach_the_output() {
    const CANARY: &str = "canary-token-9d2f61";
    let token = SecretString::from(CANARY);

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Credentials {
        cluster: &'static str,
        token: SecretString,
    }
    let creds = Credentials {
        cluster: "cluster-prod-1",
        token: token.clone(),
    };

    for encoder in [LogEncoder::Json, LogEncoder::Console] {
        let lines = capture(&opts(LogLevel::Debug, encoder), || {
            let span = tracing::info_span!("rotate", token = ?token);
            let _e = span.enter();
            tracing::info!(token = %token, "loaded bootstrap credential");
            tracing::debug!(?creds, "credentials");
            tracing::warn!("retrying with {token} and {token:?}");
        });
        let output = lines.join("\n");
        assert_eq!(lines.len(), 3);
        assert!(!output.contains(CANARY), "secret leaked: {output}");
        assert!(output.contains("[REDACTED]"), "{output}");
    }
}

#[test]
fn errors_carry_their_cause_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("rotate credential")]
    struct Outer(#[source] std::io::Error);

    let error = Outer(std::io::Error::other("connection reset"));
    let lines = capture(&opts(LogLevel::Info, LogEncoder::Json), || {
        tracing::error!(
            error = &error as &(dyn std::error::Error + 'static),
            "failed"
        );
    });
    assert_eq!(
        parse(&lines[0])["error"],
        "rotate credential: connection reset"
    );
}

#[test]
fn console_encoder_uses_zaps_layout() {
    let lines = capture(&opts(LogLevel::Info, LogEncoder::Console), || {
        let span = tracing::info_span!("reconcile", controller = "cluster");
        let _e = span.enter();
        tracing::warn!(attempt = 3_u64, "control plane\nunreachable");
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let parts: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(parts.len(), 5, "{parts:?}");
    chrono::DateTime::parse_from_rfc3339(parts[0]).expect("RFC3339 ts");
    assert_eq!(parts[1], "WARN");
    assert_eq!(parts[2], "vworkspace_telemetry::logging::tests");
    assert_eq!(parts[3], "control plane\\nunreachable");
    let fields = parse(parts[4]);
    assert_eq!(fields["controller"], "cluster");
    assert_eq!(fields["attempt"], 3);
    assert_eq!(fields["cluster_id"], "cluster-prod-1");
}

#[test]
fn flag_values_parse_strictly() {
    assert_eq!("debug".parse::<LogLevel>().ok(), Some(LogLevel::Debug));
    assert_eq!("WARN".parse::<LogLevel>().ok(), Some(LogLevel::Warn));
    assert!(matches!(
        "verbose".parse::<LogLevel>(),
        Err(LogError::InvalidLevel(_))
    ));
    assert_eq!(
        "console".parse::<LogEncoder>().ok(),
        Some(LogEncoder::Console)
    );
    assert!("logfmt".parse::<LogEncoder>().is_err());

    let mut bad = opts(LogLevel::Info, LogEncoder::Json);
    bad.filter = Some("kube=loud".into());
    let result = make_layer::<tracing_subscriber::Registry, _>(&bad, LogCapture::new());
    assert!(matches!(result, Err(LogError::InvalidFilter { .. })));
}

#[test]
fn identity_set_later_reaches_every_later_line() {
    let sink = LogCapture::new();
    let identity = LogIdentity::new("", "");
    let layer = make_layer_with_identity(
        &opts(LogLevel::Info, LogEncoder::Json),
        sink.clone(),
        identity.clone(),
    )
    .expect("valid options");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("before");
        identity.set("cluster-from-cr", "org-from-cr");
        tracing::info!("after");
    });
    let lines = sink.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let before = parse(&lines[0]);
    let after = parse(&lines[1]);
    assert_eq!(before["cluster_id"], "");
    assert_eq!(after["cluster_id"], "cluster-from-cr");
    assert_eq!(after["org_id"], "org-from-cr");
    // The key order of the spec holds for the changed values too.
    let at = |key: &str| lines[1].find(&format!("\"{key}\":")).expect(key);
    assert!(at("msg") < at("cluster_id"));
    assert!(at("cluster_id") < at("org_id"));
    assert!(at("org_id") < at("operator_version"));
}
