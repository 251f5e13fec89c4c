//! Exposition tests: exact lines as Prometheus sees them, and `promtool check metrics`
//! over everything the operator registers.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;

use super::*;

/// The (type, engine) pairs of the built-in operation catalog, in catalog order, spelled
/// as exposed: what `main` passes from `vworkspace_reconcile::catalog::builtin().kinds()`
/// (that crate's tests pin the same nine pairs in the same order).
const CATALOG_PAIRS: [(&str, &str); 9] = [
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

/// [`CATALOG_PAIRS`] mapped through the label spellings, as `main` maps the catalog.
fn catalog_kinds() -> Vec<(OperationType, Engine)> {
    CATALOG_PAIRS
        .iter()
        .map(|(ty, engine)| {
            (
                ty.parse().expect("a type label"),
                engine.parse().expect("an engine label"),
            )
        })
        .collect()
}

/// The four sets of spec metrics, registered as `main` registers them.
struct Spec {
    reconcile: ReconcileMetrics,
    operation: OperationMetrics,
    agent: AgentMetrics,
    cluster: ClusterMetrics,
}

impl Spec {
    fn register(registry: &mut Registry) -> Self {
        Spec {
            reconcile: ReconcileMetrics::register(registry),
            operation: OperationMetrics::register(registry, catalog_kinds()),
            agent: AgentMetrics::register(registry),
            cluster: ClusterMetrics::register(registry),
        }
    }
}

/// A registry with every metric family this crate provides, as `main` builds it.
fn full_registry() -> Registry {
    let mut registry = Registry::default();
    let spec = Spec::register(&mut registry);
    let leader = LeaderElectionMetrics::register(&mut registry, "vworkspace-operator-leader");
    let rest = RestClientMetrics::register(&mut registry);
    registry.register_collector(Box::new(ProcessCollector::new()));

    // Exercise everything once so the families whose series appear lazily are present.
    spec.reconcile.record_reconcile(
        Controller::ApplicationInstance,
        ReconcileResult::Success,
        Duration::from_millis(30),
    );
    spec.operation.record_operation(
        OperationType::Backup,
        Engine::Velero,
        OperationOutcome::Succeeded,
    );
    spec.agent
        .set_connectivity(ConnectivityMode::Pull, ConnectivityState::Connected);
    spec.agent
        .set_credential_updated_at(SystemTime::now() - Duration::from_secs(3600));
    spec.agent
        .set_oldest_pending_job(Some(SystemTime::now() - Duration::from_secs(2)));
    spec.agent.inc_applied_jobs();
    spec.agent.set_event_buffer_occupancy(3);
    spec.cluster.set_managed_namespaces(2);
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
    Spec::register(&mut registry);
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
    Spec::register(&mut registry);
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
    for (ty, engine) in CATALOG_PAIRS {
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
    let metrics = ReconcileMetrics::register(&mut registry);
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
    let Spec {
        operation,
        agent,
        cluster,
        ..
    } = Spec::register(&mut registry);
    agent.set_connectivity(ConnectivityMode::Push, ConnectivityState::Reconnecting);
    agent.set_connectivity(ConnectivityMode::Pull, ConnectivityState::Disconnected);
    agent.set_event_buffer_occupancy(17);
    cluster.set_managed_namespaces(4);
    agent.inc_applied_jobs();
    operation.record_operation(
        OperationType::Restore,
        Engine::Velero,
        OperationOutcome::Failed,
    );
    agent.set_credential_updated_at(SystemTime::now() - Duration::from_secs(7200));
    agent.set_oldest_pending_job(Some(SystemTime::now() - Duration::from_secs(90)));
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

    agent.set_oldest_pending_job(None);
    assert_has(
        &encode(&registry),
        &["vworkspace_operator_pull_job_lag_seconds 0.0"],
    );
}

/// The `# HELP` / `# TYPE` lines the single `OperatorMetrics` set exposed before it was
/// split into owner-registered sets (captured from its exposition, with the two
/// lazily-appearing families reported).
const SPEC_FAMILIES: [&str; 18] = [
    "# HELP vworkspace_operator_reconcile_total Reconciles per controller and outcome.",
    "# TYPE vworkspace_operator_reconcile_total counter",
    "# HELP vworkspace_operator_reconcile_duration_seconds Reconcile wall time in seconds per controller.",
    "# TYPE vworkspace_operator_reconcile_duration_seconds histogram",
    "# HELP vworkspace_operator_operation_total Operation completions per type, engine and outcome.",
    "# TYPE vworkspace_operator_operation_total counter",
    "# HELP vworkspace_operator_pull_job_lag_seconds Age in seconds of the oldest job the operator has fetched but not yet applied.",
    "# TYPE vworkspace_operator_pull_job_lag_seconds gauge",
    "# HELP vworkspace_operator_connectivity_state Control-plane connectivity: 1 connected, 0 reconnecting, -1 disconnected.",
    "# TYPE vworkspace_operator_connectivity_state gauge",
    "# HELP vworkspace_operator_applied_jobs_total Pull-mode jobs applied successfully.",
    "# TYPE vworkspace_operator_applied_jobs_total counter",
    "# HELP vworkspace_operator_event_buffer_occupancy Current depth of the outbound audit-event buffer.",
    "# TYPE vworkspace_operator_event_buffer_occupancy gauge",
    "# HELP vworkspace_operator_managed_namespaces Namespaces labelled app.vworkspace.io/managed-by=vworkspace.",
    "# TYPE vworkspace_operator_managed_namespaces gauge",
    "# HELP vworkspace_operator_credential_age_seconds Seconds since the bootstrap credentials Secret was last updated or rotated.",
    "# TYPE vworkspace_operator_credential_age_seconds gauge",
];

#[test]
fn the_four_sets_expose_exactly_the_spec_families() {
    let mut registry = Registry::default();
    let spec = Spec::register(&mut registry);
    spec.agent
        .set_connectivity(ConnectivityMode::Gitops, ConnectivityState::Connected);
    spec.agent.set_credential_updated_at(SystemTime::now());
    let text = encode(&registry);

    let families: BTreeSet<&str> = text.lines().filter(|l| l.starts_with("# ")).collect();
    let expected: BTreeSet<&str> = SPEC_FAMILIES.into_iter().collect();
    assert_eq!(families, expected, "{text}");
    // Each family exactly once: a set registered twice would repeat its lines.
    assert_eq!(
        text.lines().filter(|l| l.starts_with("# ")).count(),
        SPEC_FAMILIES.len()
    );
}

#[test]
fn each_set_exposes_only_its_own_families() {
    let families = |register: &dyn Fn(&mut Registry)| -> Vec<String> {
        let mut registry = Registry::default();
        register(&mut registry);
        encode(&registry)
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        families(&|r| drop(ReconcileMetrics::register(r))),
        [
            "vworkspace_operator_reconcile_total",
            "vworkspace_operator_reconcile_duration_seconds"
        ]
    );
    assert_eq!(
        families(&|r| drop(OperationMetrics::register(r, catalog_kinds()))),
        ["vworkspace_operator_operation_total"]
    );
    assert_eq!(
        families(&|r| drop(ClusterMetrics::register(r))),
        ["vworkspace_operator_managed_namespaces"]
    );
    // Connectivity and credential age stay hidden until reported.
    assert_eq!(
        families(&|r| drop(AgentMetrics::register(r))),
        [
            "vworkspace_operator_pull_job_lag_seconds",
            "vworkspace_operator_applied_jobs_total",
            "vworkspace_operator_event_buffer_occupancy"
        ]
    );
}

#[test]
fn operation_series_follow_the_pairs_passed_in() {
    let mut registry = Registry::default();
    let operation = OperationMetrics::register(
        &mut registry,
        [
            (OperationType::Backup, Engine::Velero),
            (OperationType::Runbook, Engine::Workflow),
            (OperationType::Backup, Engine::Velero),
        ],
    );
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("vworkspace_operator_operation_total{"))
            .count()
    };
    let text = encode(&registry);
    assert_eq!(series(&text), 8, "2 distinct pairs x 4 outcomes:\n{text}");
    assert_has(
        &text,
        &[
            "vworkspace_operator_operation_total{engine=\"workflow\",outcome=\"blocked\",type=\"Runbook\"} 0",
        ],
    );

    // A pair that was not passed still counts, from its first increment.
    operation.record_operation(
        OperationType::Restore,
        Engine::Helm,
        OperationOutcome::Failed,
    );
    let text = encode(&registry);
    assert_eq!(series(&text), 9, "{text}");
    assert_has(
        &text,
        &[
            "vworkspace_operator_operation_total{engine=\"helm\",outcome=\"failed\",type=\"Restore\"} 1",
        ],
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
