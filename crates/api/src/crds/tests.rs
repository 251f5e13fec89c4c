use std::collections::BTreeSet;
use std::path::PathBuf;

use kube::Resource;
use serde_json::Value;

use super::*;
use crate::application_instance::ValuesSourceKind;
use crate::cluster::{GitOpsSourceKind, Mode};
use crate::operation::{CANCEL_RULE, Engine, IMMUTABLE_RULE, OperationPhase, OperationType};

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn all_crds() -> Vec<CustomResourceDefinition> {
    operator_crds()
        .into_iter()
        .chain(third_party_crds())
        .collect()
}

fn crd_json(crd: &CustomResourceDefinition) -> Value {
    serde_json::to_value(crd).unwrap()
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    crd_json(crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn crd_named(name: &str) -> CustomResourceDefinition {
    all_crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no CRD {name}"))
}

/// Follows `.a.b.c` through `properties` (and `items` for arrays).
fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut current = schema;
    for part in path.trim_start_matches('.').split('.') {
        if current["type"] == "array" {
            current = &current["items"];
        }
        current = &current["properties"][part];
        assert!(!current.is_null(), "no schema at {path} (stuck at {part})");
    }
    current
}

#[test]
fn committed_crds_are_current() {
    let drift = check_all(&repo_root()).unwrap();
    assert!(
        drift.is_empty(),
        "the committed CRD files differ from the Rust types:\n  {}\nrun `{REGENERATE_COMMAND}` \
         (or `cargo run -p vworkspace-api --example write_crds`) and commit the result",
        drift
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn every_crd_renders_and_round_trips() {
    for crd in operator_crds() {
        let yaml = render(&crd).unwrap();
        assert!(yaml.starts_with("# Generated"), "{}", file_name(&crd));
        let back: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, crd);
        // Deterministic.
        assert_eq!(render(&crd).unwrap(), yaml);
    }
    for crd in third_party_crds() {
        let yaml = render_third_party(&crd).unwrap();
        let back: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, crd);
    }
}

#[test]
fn names_groups_versions_and_scope() {
    // (CRD name, group, version, kind, plural, short names)
    type Names = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    );
    let want: &[Names] = &[
        (
            "clusters.vworkspace.io",
            "vworkspace.io",
            "v1alpha1",
            "Cluster",
            "clusters",
            &["vwc"],
        ),
        (
            "applicationinstances.vworkspace.io",
            "vworkspace.io",
            "v1alpha1",
            "ApplicationInstance",
            "applicationinstances",
            &["ai", "appinst"],
        ),
        (
            "operations.vworkspace.io",
            "vworkspace.io",
            "v1alpha1",
            "Operation",
            "operations",
            &["op"],
        ),
        (
            "auditbatches.vworkspace.io",
            "vworkspace.io",
            "v1alpha1",
            "AuditBatch",
            "auditbatches",
            &["vwab"],
        ),
        (
            "helmrepositories.source.toolkit.fluxcd.io",
            "source.toolkit.fluxcd.io",
            "v1",
            "HelmRepository",
            "helmrepositories",
            &["helmrepo"],
        ),
        (
            "helmreleases.helm.toolkit.fluxcd.io",
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            "helmreleases",
            &["hr"],
        ),
        (
            "backups.velero.io",
            "velero.io",
            "v1",
            "Backup",
            "backups",
            &[],
        ),
        (
            "restores.velero.io",
            "velero.io",
            "v1",
            "Restore",
            "restores",
            &[],
        ),
        (
            "serverstatusrequests.velero.io",
            "velero.io",
            "v1",
            "ServerStatusRequest",
            "serverstatusrequests",
            &[],
        ),
        (
            "podvolumebackups.velero.io",
            "velero.io",
            "v1",
            "PodVolumeBackup",
            "podvolumebackups",
            &[],
        ),
        (
            "workflows.argoproj.io",
            "argoproj.io",
            "v1alpha1",
            "Workflow",
            "workflows",
            &["wf"],
        ),
        (
            "replicationsources.volsync.backube",
            "volsync.backube",
            "v1alpha1",
            "ReplicationSource",
            "replicationsources",
            &[],
        ),
        (
            "volumesnapshots.snapshot.storage.k8s.io",
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshot",
            "volumesnapshots",
            &["vs"],
        ),
    ];
    let crds = all_crds();
    assert_eq!(crds.len(), want.len());
    for (crd, (name, group, version, kind, plural, short)) in crds.iter().zip(want) {
        assert_eq!(crd.metadata.name.as_deref(), Some(*name));
        assert_eq!(crd.spec.group, *group, "{name}");
        assert_eq!(crd.spec.versions.len(), 1, "{name}");
        assert_eq!(crd.spec.versions[0].name, *version, "{name}");
        assert!(
            crd.spec.versions[0].served && crd.spec.versions[0].storage,
            "{name}"
        );
        assert_eq!(crd.spec.names.kind, *kind, "{name}");
        assert_eq!(crd.spec.names.plural, *plural, "{name}");
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        let got_short: Vec<&str> = crd
            .spec
            .names
            .short_names
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        assert_eq!(got_short, *short, "{name}");
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status subresource"
        );
        assert_eq!(file_name(crd), format!("{name}.yaml"));
    }
    for crd in operator_crds() {
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["vworkspace".to_owned()])
        );
    }
}

#[test]
fn resource_impls_agree_with_the_crds() {
    assert_eq!(crate::Cluster::api_version(&()), crate::API_VERSION);
    assert_eq!(crate::Operation::plural(&()), "operations");
    assert_eq!(
        crate::thirdparty::HelmRelease::api_version(&()),
        "helm.toolkit.fluxcd.io/v2"
    );
    assert_eq!(
        crate::thirdparty::ReplicationSource::api_version(&()),
        "volsync.backube/v1alpha1"
    );
}

#[test]
fn printer_columns_answer_each_pane() {
    let want: &[(&str, &[&str])] = &[
        (
            "clusters.vworkspace.io",
            &[
                "Org",
                "Mode",
                "Connected",
                "Pending",
                "Operator",
                "Flux",
                "Last Heartbeat",
                "Age",
            ],
        ),
        (
            "applicationinstances.vworkspace.io",
            &["Chart", "Version", "Ready", "Reason", "Revision", "Age"],
        ),
        (
            "operations.vworkspace.io",
            &[
                "Type",
                "Template",
                "Target",
                "Phase",
                "Reason",
                "Age",
                "Completed",
            ],
        ),
        (
            "auditbatches.vworkspace.io",
            &["Cluster", "Sequence", "Received", "Age"],
        ),
    ];
    for (name, columns) in want {
        let crd = crd_named(name);
        let printed = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        // The default (priority 0) columns, in order.
        let default: Vec<&str> = printed
            .iter()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(default, *columns, "{name}");
    }
    let ai = crd_named("applicationinstances.vworkspace.io");
    let ready = ai.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .find(|c| c.name == "Ready")
        .unwrap();
    assert_eq!(
        ready.json_path,
        r#".status.conditions[?(@.type=="Ready")].status"#
    );
}

#[test]
fn printer_column_paths_exist_in_the_schema() {
    for crd in all_crds() {
        let schema = schema_of(&crd);
        for column in crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
        {
            let path = column.json_path.as_str();
            if path.starts_with(".metadata.") {
                continue;
            }
            // `.status.conditions[?(...)].status` -> `.status.conditions.status`.
            let simplified = match (path.find('['), path.find(']')) {
                (Some(open), Some(close)) => format!("{}{}", &path[..open], &path[close + 1..]),
                _ => path.to_owned(),
            };
            let _ = node(&schema, &simplified);
            assert!(
                ["string", "integer", "number", "boolean", "date"].contains(&column.type_.as_str()),
                "{}: {}",
                file_name(&crd),
                column.name
            );
        }
    }
}

/// Kubernetes' structural-schema rules, as far as they can go wrong with derived schemas:
/// every node has a type (or preserves unknown fields / is int-or-string), no `$ref`, no
/// JSON-schema combinators carrying types, `properties` only on objects, `items` on arrays.
fn assert_structural(path: &str, schema: &Value) {
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object schema"));
    for forbidden in [
        "$ref",
        "$schema",
        "definitions",
        "$defs",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
    ] {
        assert!(!obj.contains_key(forbidden), "{path}: has {forbidden}");
    }
    let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let type_ = obj.get("type").and_then(Value::as_str);
    assert!(
        type_.is_some() || preserves || int_or_string,
        "{path}: no type"
    );
    if obj.contains_key("properties") {
        assert_eq!(type_, Some("object"), "{path}: properties on a non-object");
        for (name, sub) in obj["properties"].as_object().unwrap() {
            assert_structural(&format!("{path}.{name}"), sub);
        }
    }
    if let Some(required) = obj.get("required") {
        for r in required.as_array().unwrap() {
            let r = r.as_str().unwrap();
            assert!(
                obj["properties"].get(r).is_some(),
                "{path}: required {r} has no schema"
            );
        }
    }
    if type_ == Some("array") {
        let items = obj
            .get("items")
            .unwrap_or_else(|| panic!("{path}: array without items"));
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(additional) = obj.get("additionalProperties") {
        assert!(
            !obj.contains_key("properties"),
            "{path}: properties and additionalProperties"
        );
        if additional.is_object() {
            assert_structural(&format!("{path}{{}}"), additional);
        }
    }
    if obj.get("x-kubernetes-list-type") == Some(&Value::from("map")) {
        let keys = obj["x-kubernetes-list-map-keys"].as_array().unwrap();
        let required = obj["items"]["required"].as_array().unwrap();
        for key in keys {
            assert!(
                required.contains(key),
                "{path}: list-map key {key} must be required"
            );
        }
    }
}

#[test]
fn schemas_are_structural() {
    for crd in all_crds() {
        let schema = schema_of(&crd);
        assert_structural(&file_name(&crd), &schema);
        for key in ["spec", "status"] {
            assert!(
                schema["properties"][key].is_object(),
                "{}: {key}",
                file_name(&crd)
            );
        }
    }
}

#[test]
fn enums_are_closed_in_the_schema() {
    fn strings<T: serde::Serialize>(values: &[T]) -> Vec<Value> {
        values
            .iter()
            .map(|v| serde_json::to_value(v).unwrap())
            .collect()
    }
    let cases: Vec<(&str, &str, Vec<Value>)> = vec![
        ("clusters.vworkspace.io", ".spec.mode", strings(&Mode::ALL)),
        (
            "clusters.vworkspace.io",
            ".spec.gitopsSource.kind",
            strings(&[
                GitOpsSourceKind::GitRepository,
                GitOpsSourceKind::OciRepository,
                GitOpsSourceKind::Bucket,
                GitOpsSourceKind::Kustomization,
            ]),
        ),
        (
            "applicationinstances.vworkspace.io",
            ".spec.valuesFrom.kind",
            strings(&[ValuesSourceKind::Secret, ValuesSourceKind::ConfigMap]),
        ),
        (
            "operations.vworkspace.io",
            ".spec.type",
            strings(&OperationType::ALL),
        ),
        (
            "operations.vworkspace.io",
            ".status.engine",
            strings(&Engine::ALL),
        ),
        (
            "operations.vworkspace.io",
            ".status.phase",
            strings(&[
                OperationPhase::Pending,
                OperationPhase::Blocked,
                OperationPhase::Accepted,
                OperationPhase::Running,
                OperationPhase::Succeeded,
                OperationPhase::Failed,
                OperationPhase::Cancelled,
            ]),
        ),
    ];
    for (crd, path, want) in cases {
        let schema = schema_of(&crd_named(crd));
        let got = node(&schema, path)["enum"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(got, want, "{crd} {path}");
    }
    // The wire spellings the spec fixes.
    let wire: Vec<Value> = strings(&Mode::ALL);
    assert_eq!(wire, ["pull", "push", "gitops"]);
    let engines: Vec<&str> = Engine::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        engines,
        [
            "velero",
            "workflow",
            "job",
            "helm",
            "helmHookJob",
            "volsync",
            "snapshot"
        ]
    );
    for e in Engine::ALL {
        assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
    }
    for t in OperationType::ALL {
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
}

#[test]
fn validation_keywords_are_in_the_schema() {
    let cluster = schema_of(&crd_named("clusters.vworkspace.io"));
    assert_eq!(
        node(&cluster, ".spec.auditStream.bufferCapacity")["minimum"],
        1.0
    );
    assert_eq!(
        node(&cluster, ".spec.auditStream.bufferCapacity")["default"],
        10_000
    );
    assert_eq!(
        node(&cluster, ".spec.auditStream.maxBatchSize")["default"],
        100
    );
    assert_eq!(
        node(&cluster, ".spec.auditStream.flushInterval")["default"],
        "1s"
    );
    assert_eq!(
        node(&cluster, ".spec.connectivity.gracePeriod")["default"],
        "5m"
    );
    assert_eq!(
        node(&cluster, ".spec.connectivity.heartbeatInterval")["default"],
        "30s"
    );
    assert_eq!(
        node(&cluster, ".spec.controlPlane.credentialsSecretRef.key")["default"],
        "token"
    );
    assert_eq!(node(&cluster, ".spec.mode")["default"], "pull");
    assert_eq!(
        cluster["properties"]["spec"]["required"],
        serde_json::json!(["orgId"])
    );

    let op = schema_of(&crd_named("operations.vworkspace.io"));
    assert_eq!(
        node(&op, ".spec.template")["pattern"],
        r"^[a-z]+\.[A-Za-z]+$"
    );
    assert_eq!(
        node(&op, ".spec.timeout")["pattern"],
        crate::duration::PATTERN
    );

    let ai = schema_of(&crd_named("applicationinstances.vworkspace.io"));
    assert_eq!(
        node(&ai, ".spec.values")["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert_eq!(
        node(&ai, ".spec.valuesFrom.valuesKey")["default"],
        "values.yaml"
    );
    assert_eq!(node(&ai, ".spec.interval")["default"], "5m");
    let required = &node(&ai, ".spec.chart")["required"];
    assert_eq!(
        *required,
        serde_json::json!(["name", "repository", "version"])
    );

    for crd in operator_crds()
        .iter()
        .filter(|c| c.spec.names.kind != "AuditBatch")
    {
        let schema = schema_of(crd);
        let conditions = node(&schema, ".status.conditions");
        assert_eq!(
            conditions["x-kubernetes-list-type"],
            "map",
            "{}",
            file_name(crd)
        );
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }
}

#[test]
fn cel_rules_are_in_the_schema() {
    let rules = |crd: &str, path: &str| -> Vec<String> {
        let schema = schema_of(&crd_named(crd));
        let node = if path.is_empty() {
            &schema
        } else {
            node(&schema, path)
        };
        node["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("{crd} {path}: no CEL rules"))
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        rules("operations.vworkspace.io", ".spec"),
        [IMMUTABLE_RULE, CANCEL_RULE]
    );
    assert_eq!(rules("clusters.vworkspace.io", ".spec").len(), 2);
    assert_eq!(
        rules("clusters.vworkspace.io", ".spec.controlPlane").len(),
        1
    );
    assert_eq!(
        rules("clusters.vworkspace.io", ".spec.auditStream").len(),
        1
    );
}

#[test]
fn immutable_rule_covers_every_spec_field_but_cancel() {
    let schema = schema_of(&crd_named("operations.vworkspace.io"));
    let fields: BTreeSet<&str> = node(&schema, ".spec")["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(fields.contains("cancel"));
    for field in fields.iter().filter(|f| **f != "cancel") {
        assert!(
            IMMUTABLE_RULE.contains(&format!("self.{field} == oldSelf.{field}")),
            "spec.{field} is not covered by IMMUTABLE_RULE"
        );
    }
    assert!(!IMMUTABLE_RULE.contains("cancel"));
}

#[test]
fn third_party_schemas_are_lenient() {
    fn assert_lenient(path: &str, schema: &Value) {
        if schema["type"] == "object" {
            assert_eq!(
                schema["x-kubernetes-preserve-unknown-fields"], true,
                "{path} must preserve unknown fields"
            );
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, sub) in props {
                assert_lenient(&format!("{path}.{name}"), sub);
            }
        }
        if schema["items"].is_object() {
            assert_lenient(&format!("{path}[]"), &schema["items"]);
        }
    }
    for crd in third_party_crds() {
        let schema = schema_of(&crd);
        for key in ["spec", "status"] {
            assert_lenient(
                &format!("{}.{key}", file_name(&crd)),
                &schema["properties"][key],
            );
        }
    }
    // ... and ours are not: unknown fields are pruned there.
    for crd in operator_crds() {
        let schema = schema_of(&crd);
        assert!(schema["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"].is_null());
    }
}

// --- Samples: one of each custom resource, as a person would write (or read) it. ---

const CLUSTER: &str = r#"
apiVersion: vworkspace.io/v1alpha1
kind: Cluster
metadata:
  name: cluster-prod-1
  namespace: vworkspace-system
  generation: 4
spec:
  orgId: myteam
  mode: pull
  controlPlane:
    url: https://vworkspace.example.com
    credentialsSecretRef:
      name: vworkspace-credentials
  connectivity:
    gracePeriod: 5m
status:
  observedGeneration: 4
  operatorVersion: v0.4.2
  fluxVersion: v2.3.0
  veleroVersion: v1.14.0
  managedNamespaces:
    - { name: org-myteam, allowedOperationTemplates: ["backup.velero", "restore.velero", "upgrade.helm"] }
  lastHeartbeat: "2026-05-28T10:07:13Z"
  conditions:
    - { type: Connected, status: "True", reason: ControlPlaneReachable, lastTransitionTime: "2026-05-28T08:00:00Z", message: "Last successful round-trip 4s ago" }
    - { type: Authenticated, status: "True", reason: CredentialValid, lastTransitionTime: "2026-05-28T08:00:00Z" }
    - { type: ControllersHealthy, status: "True", reason: AllControllersReady, lastTransitionTime: "2026-05-28T08:00:00Z" }
    - { type: CRDsRegistered, status: "True", reason: SchemaMatches, lastTransitionTime: "2026-05-28T08:00:00Z" }
    - { type: Disconnected, status: "False", reason: NotApplicable, lastTransitionTime: "2026-05-28T08:00:00Z" }
  auditStream:
    pending: 3
    dropped: 0
    lastDeliveredAt: "2026-05-28T10:07:12Z"
    deliveredWatermark: "2026-05-28T10:07:10Z"
"#;

const APPLICATION_INSTANCE: &str = r#"
apiVersion: vworkspace.io/v1alpha1
kind: ApplicationInstance
metadata:
  name: nextcloud-myteam
  namespace: org-myteam
spec:
  chart:
    repository: https://nextcloud.github.io/helm/
    name: nextcloud
    version: 6.2.1
  values:
    nextcloud:
      host: cloud.myteam.example
    persistence: { enabled: true, size: 50Gi }
  valuesFrom:
    - kind: Secret
      name: nextcloud-admin
      valuesKey: password
      targetPath: nextcloud.password
status:
  observedGeneration: 2
  conditions:
    - { type: Ready, status: "True", reason: HelmReleaseReady, message: "", lastTransitionTime: "2026-05-28T09:00:00Z", observedGeneration: 2 }
    - { type: Reconciling, status: "False", reason: ReconcileSucceeded, message: "", lastTransitionTime: "2026-05-28T09:00:00Z" }
  helmRelease: { name: nextcloud-myteam, revision: 3, chartVersion: 6.2.1 }
"#;

const OPERATION: &str = r#"
apiVersion: vworkspace.io/v1alpha1
kind: Operation
metadata:
  name: backup-nightly-0528
  namespace: org-myteam
spec:
  type: Backup
  template: backup.velero
  applicationInstance: nextcloud-myteam
  parameters: { ttl: 720h }
  timeout: 45m
status:
  phase: Succeeded
  engine: velero
  childRef: { apiVersion: velero.io/v1, kind: Backup, name: org-myteam-backup-nightly-0528, namespace: velero }
  outputs: { items: "412", size: 18.4 GiB }
  startedAt: "2026-05-28T10:00:02Z"
  completedAt: "2026-05-28T10:07:13Z"
  reason: VeleroBackupCompleted
  message: velero.io/Backup completed; 412 items, 18.4 GiB
  observedGeneration: 1
  conditions:
    - { type: Accepted, status: "True", reason: PreconditionsMet, message: "", lastTransitionTime: "2026-05-28T10:00:02Z" }
    - { type: Succeeded, status: "True", reason: VeleroBackupCompleted, message: "412 items", lastTransitionTime: "2026-05-28T10:07:13Z" }
"#;

const AUDIT_BATCH: &str = r#"
apiVersion: vworkspace.io/v1alpha1
kind: AuditBatch
metadata:
  name: cluster-prod-1-000042
  namespace: vworkspace-system
spec:
  clusterId: cluster-prod-1
  sequence: 42
  events:
    - event_id: 0123456789abcdef0123456789abcdef
      cluster_id: cluster-prod-1
      org_id: myteam
      occurred_at: "2026-05-28T10:07:13Z"
      namespace: org-myteam
      application_instance: nextcloud-myteam
      operation_id: 6b62
      kind: OperationSucceeded
      reason: VeleroBackupCompleted
      message: velero.io/Backup completed; 412 items, 18.4 GiB
      operator_version: v0.4.2
"#;

#[test]
fn samples_deserialize() {
    let cluster: crate::Cluster = serde_yaml::from_str(CLUSTER).unwrap();
    assert_eq!(cluster.spec.mode, Mode::Pull);
    assert_eq!(
        cluster
            .spec
            .connectivity
            .grace_period
            .as_duration()
            .as_secs(),
        300
    );
    // Omitted fields take the same defaults as the schema's.
    assert_eq!(cluster.spec.connectivity.heartbeat_interval.as_str(), "30s");
    assert_eq!(cluster.spec.audit_stream.buffer_capacity, 10_000);
    let cp = cluster.spec.control_plane.as_ref().unwrap();
    assert_eq!(cp.credentials_secret_ref.key, "token");
    let status = cluster.status.as_ref().unwrap();
    assert_eq!(
        status.managed_namespaces[0]
            .allowed_operation_templates
            .len(),
        3
    );
    assert!(crate::conditions::is_true(
        &status.conditions,
        crate::conditions::cluster::CONNECTED
    ));
    assert_eq!(status.audit_stream.as_ref().unwrap().pending, 3);

    let ai: crate::ApplicationInstance = serde_yaml::from_str(APPLICATION_INSTANCE).unwrap();
    assert_eq!(ai.spec.interval.as_str(), "5m");
    assert!(!ai.spec.suspend);
    assert_eq!(ai.spec.values_from[0].kind, ValuesSourceKind::Secret);
    assert_eq!(
        ai.status
            .as_ref()
            .unwrap()
            .helm_release
            .as_ref()
            .unwrap()
            .revision,
        Some(3)
    );

    let op: crate::Operation = serde_yaml::from_str(OPERATION).unwrap();
    assert_eq!(op.spec.type_, OperationType::Backup);
    assert!(!op.spec.cancel);
    let op_status = op.status.as_ref().unwrap();
    assert_eq!(op_status.phase, Some(OperationPhase::Succeeded));
    assert!(op_status.phase.unwrap().is_terminal());
    assert_eq!(op_status.engine, Some(Engine::Velero));
    assert_eq!(op_status.outputs["items"], "412");

    let batch: crate::AuditBatch = serde_yaml::from_str(AUDIT_BATCH).unwrap();
    assert_eq!(batch.spec.events[0].kind, "OperationSucceeded");
    assert_eq!(batch.spec.events[0].operation_id.as_deref(), Some("6b62"));

    // Serializing back keeps the camelCase names and omits what is unset.
    let json = serde_json::to_value(&op).unwrap();
    assert!(json["spec"]["applicationInstance"].is_string());
    assert!(json["status"]["childRef"]["apiVersion"].is_string());
    assert!(json["status"].get("observed_generation").is_none());
}

#[test]
fn unknown_enum_values_are_rejected() {
    let bad_mode = CLUSTER.replace("mode: pull", "mode: sideways");
    assert!(serde_yaml::from_str::<crate::Cluster>(&bad_mode).is_err());
    let bad_type = OPERATION.replace("type: Backup", "type: Teleport");
    assert!(serde_yaml::from_str::<crate::Operation>(&bad_type).is_err());
    let bad_kind = APPLICATION_INSTANCE.replace("kind: Secret", "kind: Vault");
    assert!(serde_yaml::from_str::<crate::ApplicationInstance>(&bad_kind).is_err());
    let bad_duration = OPERATION.replace("timeout: 45m", "timeout: 45 minutes");
    assert!(serde_yaml::from_str::<crate::Operation>(&bad_duration).is_err());
}

#[test]
fn third_party_samples_deserialize() {
    let hr: crate::thirdparty::HelmRelease = serde_yaml::from_str(
        r#"
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: { name: nextcloud-myteam, namespace: org-myteam }
spec:
  interval: 5m
  chart:
    spec:
      chart: nextcloud
      version: 6.2.1
      sourceRef: { kind: HelmRepository, name: nextcloud-myteam }
  values: { a: 1 }
  install: { remediation: { retries: 3 } }
status:
  observedGeneration: 2
  lastAttemptedRevision: 6.2.1
  lastAttemptedReleaseAction: upgrade
  conditions:
    - { type: Ready, status: "True", reason: UpgradeSucceeded, message: ok, lastTransitionTime: "2026-05-28T09:00:00Z" }
  history:
    - { chartName: nextcloud, chartVersion: 6.2.1, version: 3, status: deployed, digest: "sha256:abc", firstDeployed: "2026-05-01T09:00:00Z", lastDeployed: "2026-05-28T09:00:00Z", appVersion: "29.0" }
"#,
    )
    .unwrap();
    let status = hr.status.as_ref().unwrap();
    assert_eq!(status.latest().and_then(|s| s.version), Some(3));

    let backup: crate::thirdparty::Backup = serde_yaml::from_str(
        r#"
apiVersion: velero.io/v1
kind: Backup
metadata: { name: b, namespace: velero }
spec: { includedNamespaces: [org-myteam], ttl: 720h0m0s }
status: { phase: Completed, progress: { totalItems: 412, itemsBackedUp: 412 }, errors: 0 }
"#,
    )
    .unwrap();
    assert_eq!(
        backup.status.unwrap().phase.as_deref(),
        Some(crate::thirdparty::velero::phase::COMPLETED)
    );

    let wf: crate::thirdparty::Workflow = serde_yaml::from_str(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: { name: w, namespace: org-myteam }
spec: { workflowTemplateRef: { name: migrate }, arguments: { parameters: [{ name: app, value: nextcloud }] } }
status: { phase: Succeeded, startedAt: "2026-05-28T10:00:00Z", finishedAt: "2026-05-28T10:01:00Z", nodes: {} }
"#,
    )
    .unwrap();
    assert_eq!(wf.status.unwrap().phase.as_deref(), Some("Succeeded"));

    let rs: crate::thirdparty::ReplicationSource = serde_yaml::from_str(
        r#"
apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: { name: r, namespace: org-myteam }
spec: { sourcePVC: data, trigger: { manual: op-6b62 }, restic: { repository: restic-secret } }
status: { lastManualSync: op-6b62, latestMoverStatus: { result: Successful } }
"#,
    )
    .unwrap();
    assert_eq!(
        rs.spec.trigger.and_then(|t| t.manual),
        rs.status.and_then(|s| s.last_manual_sync)
    );

    let vs: crate::thirdparty::VolumeSnapshot = serde_yaml::from_str(
        r#"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: { name: s, namespace: org-myteam }
spec: { source: { persistentVolumeClaimName: data } }
status: { readyToUse: true, restoreSize: 10Gi }
"#,
    )
    .unwrap();
    assert_eq!(vs.status.unwrap().ready_to_use, Some(true));

    let repo: crate::thirdparty::HelmRepository = serde_yaml::from_str(
        r#"
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: { name: r, namespace: org-myteam }
spec: { url: "oci://ghcr.io/charts", type: oci }
"#,
    )
    .unwrap();
    assert_eq!(repo.spec.type_.as_deref(), Some("oci"));

    let restore: crate::thirdparty::Restore = serde_yaml::from_str(
        r#"
apiVersion: velero.io/v1
kind: Restore
metadata: { name: r, namespace: velero }
spec: { backupName: b, restorePVs: true }
status: { phase: PartiallyFailed, errors: 2 }
"#,
    )
    .unwrap();
    assert_eq!(restore.spec.restore_pvs, Some(true));
}

#[test]
fn unset_third_party_fields_are_not_serialized() {
    // Server-side apply claims every field sent: an unset Option must not go out as null.
    let hr = crate::thirdparty::HelmRelease::new(
        "x",
        crate::thirdparty::flux::HelmReleaseSpec {
            interval: "5m".into(),
            ..Default::default()
        },
    );
    let json = serde_json::to_value(&hr).unwrap();
    assert_eq!(json["spec"], serde_json::json!({ "interval": "5m" }));
}
