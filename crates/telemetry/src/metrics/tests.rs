//! Exposition tests: exact lines as Prometheus sees them, and `promtool check metrics`
//! over everything the operator registers.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;

use super::*;

/// A registry with every metric family this crate provides, as `main` builds it.
fn full_registry() -> Registry {
    let mut registry = Registry::default();
    let operator = OperatorMetrics::register(&mut registry);
    let leader = LeaderElectionMetrics::register(&mut registry, "vworkspace-operator-leader");
    let rest = RestClientMetrics::register(&mut registry);
    registry.register_collector(Box::new(ProcessCollector::new()));

    // Exercise everything once so the families whose series appear lazily are present.
    operator.record_reconcile(
        Controller::ApplicationInstance,
        ReconcileResult::Success,
        Duration::from_millis(30),
    );
    operator.record_operation(
        OperationType::Backup,
        Engine::Velero,
        OperationOutcome::Succeeded,
    );
    operator.set_connectivity(ConnectivityMode::Pull, ConnectivityState::Connected);
    operator.set_credential_updated_at(SystemTime::now() - Duration::from_secs(3600));
    operator.set_oldest_pending_job(Some(SystemTime::now() - Duration::from_secs(2)));
    operator.inc_applied_jobs();
    operator.set_event_buffer_occupancy(3);
    operator.set_managed_namespaces(2);
    leader.set_leader(true);
    rest.record_status(200, http::Method::GET, "10.96.0.1:443");
    registry
}

fn lines(text: &str) -> BTreeSet<&str> {
    text.lines().collect()
}

fn assert_has(text: &str, expected: &[&str]) {
    let have = lines(text);
    let missing: Vec<&&str> = expected.iter().filter(|l| !have.contains(**l)).collect();
    assert!(
        missing.is_empty(),
        "missing lines {missing:#?}\nin exposition:\n{text}"
    );
}

#[test]
fn spec_metric_names_types_and_help() {
    let mut registry = Registry::default();
    OperatorMetrics::register(&mut registry);
    let text = encode(&registry);
    assert_has(
        &text,
        &[
            "# HELP vworkspace_operator_reconcile_total Reconciles per controller and outcome.",
            "# TYPE vworkspace_operator_reconcile_total counter",
            "# TYPE vworkspace_operator_reconcile_duration_seconds histogram",
            "# TYPE vworkspace_operator_operation_total counter",
            "# TYPE vworkspace_operator_pull_job_lag_seconds gauge",
            "# TYPE vworkspace_operator_applied_jobs_total counter",
            "# TYPE vworkspace_operator_event_buffer_occupancy gauge",
            "# TYPE vworkspace_operator_managed_namespaces gauge",
        ],
    );
    // Absent until reported: the connectivity mode and the credential age.
    assert!(!text.contains("vworkspace_operator_connectivity_state"));
    assert!(!text.contains("vworkspace_operator_credential_age_seconds"));
    // Never OpenMetrics artefacts that the classic text parser rejects.
    assert!(!text.contains("# EOF"));
    assert!(!text.contains("# UNIT"));
}

#[test]
fn counters_are_zero_initialised_for_every_known_label_value() {
    let mut registry = Registry::default();
    OperatorMetrics::register(&mut registry);
    let text = encode(&registry);

    let mut expected = Vec::new();
    for controller in ["applicationinstance", "operation", "cluster"] {
        for result in ["requeue", "success", "error"] {
            expected.push(format!(
                "vworkspace_operator_reconcile_total{{controller=\"{controller}\",result=\"{result}\"}} 0"
            ));
        }
        expected.push(format!(
            "vworkspace_operator_reconcile_duration_seconds_count{{controller=\"{controller}\"}} 0"
        ));
    }
    let pairs = [
        ("Backup", "velero"),
        ("Restore", "velero"),
        ("Backup", "volsync"),
        ("Backup", "snapshot"),
        ("Upgrade", "helm"),
        ("Upgrade", "helmHookJob"),
        ("Migration", "workflow"),
        ("RunCommand", "job"),
        ("Runbook", "workflow"),
    ];
    for (ty, engine) in pairs {
        for outcome in ["succeeded", "failed", "cancelled", "blocked"] {
            expected.push(format!(
                "vworkspace_operator_operation_total{{engine=\"{engine}\",outcome=\"{outcome}\",type=\"{ty}\"}} 0"
            ));
        }
    }
    expected.push("vworkspace_operator_applied_jobs_total 0".to_owned());
    expected.push("vworkspace_operator_pull_job_lag_seconds 0.0".to_owned());
    expected.push("vworkspace_operator_event_buffer_occupancy 0".to_owned());
    expected.push("vworkspace_operator_managed_namespaces 0".to_owned());
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_has(&text, &expected);

    let operation_series = text
        .lines()
        .filter(|l| l.starts_with("vworkspace_operator_operation_total{"))
        .count();
    assert_eq!(operation_series, 36);
}

#[test]
fn reconcile_histogram_has_the_spec_buckets() {
    let mut registry = Registry::default();
    let metrics = OperatorMetrics::register(&mut registry);
    metrics.record_reconcile(
        Controller::ApplicationInstance,
        ReconcileResult::Requeue,
        Duration::from_millis(30),
    );
    metrics.record_reconcile(
        Controller::ApplicationInstance,
        ReconcileResult::Success,
        Duration::from_secs(3),
    );
    let text = encode(&registry);
    let bucket = |le: &str, n: u64| {
        format!(
            "vworkspace_operator_reconcile_duration_seconds_bucket{{controller=\"applicationinstance\",le=\"{le}\"}} {n}"
        )
    };
    let expected = [
        bucket("0.005", 0),
        bucket("0.01", 0),
        bucket("0.025", 0),
        bucket("0.05", 1),
        bucket("0.1", 1),
        bucket("0.25", 1),
        bucket("0.5", 1),
        bucket("1", 1),
        bucket("2.5", 1),
        bucket("5", 2),
        bucket("10", 2),
        bucket("+Inf", 2),
        "vworkspace_operator_reconcile_duration_seconds_sum{controller=\"applicationinstance\"} 3.03"
            .to_owned(),
        "vworkspace_operator_reconcile_duration_seconds_count{controller=\"applicationinstance\"} 2"
            .to_owned(),
        "vworkspace_operator_reconcile_total{controller=\"applicationinstance\",result=\"requeue\"} 1"
            .to_owned(),
        "vworkspace_operator_reconcile_total{controller=\"applicationinstance\",result=\"success\"} 1"
            .to_owned(),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_has(&text, &expected);
    let buckets = text
        .lines()
        .filter(|l| {
            l.starts_with(
                "vworkspace_operator_reconcile_duration_seconds_bucket{controller=\"applicationinstance\"",
            )
        })
        .count();
    assert_eq!(buckets, 12, "11 finite buckets plus +Inf");
}

#[test]
fn gauges_connectivity_and_ages() {
    let mut registry = Registry::default();
    let metrics = OperatorMetrics::register(&mut registry);
    metrics.set_connectivity(ConnectivityMode::Push, ConnectivityState::Reconnecting);
    metrics.set_connectivity(ConnectivityMode::Pull, ConnectivityState::Disconnected);
    metrics.set_event_buffer_occupancy(17);
    metrics.set_managed_namespaces(4);
    metrics.inc_applied_jobs();
    metrics.record_operation(
        OperationType::Restore,
        Engine::Velero,
        OperationOutcome::Failed,
    );
    metrics.set_credential_updated_at(SystemTime::now() - Duration::from_secs(7200));
    metrics.set_oldest_pending_job(Some(SystemTime::now() - Duration::from_secs(90)));
    let text = encode(&registry);
    assert_has(
        &text,
        &[
            "# TYPE vworkspace_operator_connectivity_state gauge",
            "vworkspace_operator_connectivity_state{mode=\"pull\"} -1",
            "vworkspace_operator_event_buffer_occupancy 17",
            "vworkspace_operator_managed_namespaces 4",
            "vworkspace_operator_applied_jobs_total 1",
            "vworkspace_operator_operation_total{engine=\"velero\",outcome=\"failed\",type=\"Restore\"} 1",
        ],
    );
    // The mode moved: only one series remains.
    assert!(!text.contains("mode=\"push\""), "{text}");

    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    let age = value("vworkspace_operator_credential_age_seconds");
    assert!((7200.0..7210.0).contains(&age), "credential age {age}");
    let lag = value("vworkspace_operator_pull_job_lag_seconds");
    assert!((90.0..100.0).contains(&lag), "pull lag {lag}");

    metrics.set_oldest_pending_job(None);
    assert_has(
        &encode(&registry),
        &["vworkspace_operator_pull_job_lag_seconds 0.0"],
    );
}

#[test]
fn leader_election_and_rest_client_names() {
    let mut registry = Registry::default();
    let leader = LeaderElectionMetrics::register(&mut registry, "vworkspace-operator-leader");
    let rest = RestClientMetrics::register(&mut registry);
    let text = encode(&registry);
    assert_has(
        &text,
        &[
            "# TYPE leader_election_master_status gauge",
            "leader_election_master_status{name=\"vworkspace-operator-leader\"} 0",
        ],
    );
    // client-go exposes the family only once a request has been made.
    assert!(!text.contains("rest_client_requests_total"), "{text}");

    leader.set_leader(true);
    rest.record_status(200, http::Method::GET, "10.96.0.1:443");
    assert_has(
        &encode(&registry),
        &[
            "leader_election_master_status{name=\"vworkspace-operator-leader\"} 1",
            "# HELP rest_client_requests_total Number of HTTP requests, partitioned by status code, method, and host.",
            "# TYPE rest_client_requests_total counter",
            "rest_client_requests_total{code=\"200\",host=\"10.96.0.1:443\",method=\"GET\"} 1",
        ],
    );
    leader.set_leader(false);
    assert_has(
        &encode(&registry),
        &["leader_election_master_status{name=\"vworkspace-operator-leader\"} 0"],
    );
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_exposed() {
    let registry = full_registry();
    let text = encode(&registry);
    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_has(&text, &[&format!("# TYPE {name} {kind}")]);
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no sample"));
        assert!(
            value > 0.0 || name == "process_cpu_seconds_total",
            "{name} = {value}"
        );
    }
    let start: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds ")?.parse().ok())
        .unwrap_or(0.0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    assert!(
        start <= now + 1.0 && start > now - 86_400.0,
        "start time {start} vs now {now}"
    );
}

/// Runs `promtool check metrics` on the full exposition. Skips when promtool is not
/// installed, unless `VWORKSPACE_REQUIRE_PROMTOOL=1` (CI) makes that a failure.
#[test]
fn promtool_accepts_the_full_exposition() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let registry = full_registry();
    let text = encode(&registry);
    let required = std::env::var("VWORKSPACE_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => {
            eprintln!(
                "promtool not installed; skipping (set VWORKSPACE_REQUIRE_PROMTOOL=1 to fail)"
            );
            return;
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write exposition to promtool");
    let output = child.wait_with_output().expect("promtool finished");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool complained (status {:?}):\nstdout: {stdout}\nstderr: {stderr}\nexposition:\n{text}",
        output.status
    );
}
