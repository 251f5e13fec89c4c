//! `Cluster` (`clusters.vworkspace.io`): the cluster's identity, its link to the control
//! plane, and the overall health surface.
//!
//! Invariants:
//! * exactly one Cluster exists, in [`SYSTEM_NAMESPACE`], named after the cluster id
//!   (e.g. `cluster-prod-1`); the id used in logs, metrics and audit events is its name;
//! * the status has exactly the shape of the spec's "Cluster CR as the overall health
//!   surface" (`observedGeneration`, `operatorVersion`, `fluxVersion`, `veleroVersion`,
//!   `managedNamespaces`, `lastHeartbeat`, `conditions`) plus `auditStream`;
//! * every defaulted spec field has its default in the CRD schema, so the API server fills
//!   it in and what `kubectl get -o yaml` shows is what the operator uses.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;

/// The namespace that holds the Cluster object, the operator, its Events and AuditBatches.
pub const SYSTEM_NAMESPACE: &str = "vworkspace-system";

/// Desired configuration of the operator on this cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "vworkspace.io",
    version = "v1alpha1",
    kind = "Cluster",
    plural = "clusters",
    namespaced,
    status = "ClusterStatus",
    derive = "PartialEq",
    shortname = "vwc",
    category = "vworkspace",
    doc = "This cluster's identity (the object's name is the cluster id), its link to the vWorkspace control plane, and its overall health. One per cluster, in vworkspace-system.",
    printcolumn(name = "Org", type_ = "string", json_path = ".spec.orgId"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Connected",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Connected")].status"#
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.auditStream.pending"
    ),
    printcolumn(
        name = "Operator",
        type_ = "string",
        json_path = ".status.operatorVersion"
    ),
    printcolumn(name = "Flux", type_ = "string", json_path = ".status.fluxVersion"),
    printcolumn(
        name = "Last Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeat"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Velero",
        type_ = "string",
        json_path = ".status.veleroVersion",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Connected")].reason"#,
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'pull' || has(self.controlPlane)").message("spec.controlPlane is required in pull mode"),
    validation = Rule::new("self.mode != 'gitops' || has(self.gitopsSource)").message("spec.gitopsSource is required in gitops mode")
)]
pub struct ClusterSpec {
    /// The organization that owns this cluster (also the `app.vworkspace.io/org-id` label
    /// value, hence the label-value syntax).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub org_id: String,
    /// How desired state reaches the cluster: `pull` (the agent polls the control plane over
    /// HTTPS), `push` (the control plane writes through the Kubernetes API), `gitops` (Flux
    /// applies it from Git).
    #[serde(default)]
    pub mode: Mode,
    /// The control plane's agent API. Required in pull mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
    /// Connectivity timing.
    #[serde(default)]
    pub connectivity: Connectivity,
    /// Audit-event shipping.
    #[serde(default)]
    pub audit_stream: AuditStreamSpec,
    /// The Flux object whose readiness is the link's health in gitops mode. Required there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops_source: Option<GitOpsSource>,
}

/// `spec.mode`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The agent polls the control plane over outbound HTTPS.
    #[default]
    Pull,
    /// The control plane writes through the Kubernetes API; the operator writes AuditBatches.
    Push,
    /// Desired state arrives through Flux from Git.
    Gitops,
}

impl Mode {
    /// The wire spelling, also the `mode` label value of `connectivity_state`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
            Self::Gitops => "gitops",
        }
    }

    /// Every mode, in declaration order (metrics initialise a series per mode).
    pub const ALL: [Mode; 3] = [Mode::Pull, Mode::Push, Mode::Gitops];
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.controlPlane`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caBundle) && has(self.caSecretRef))").message("set at most one of caBundle and caSecretRef"))]
pub struct ControlPlane {
    /// Base URL of the agent API, e.g. `https://vworkspace.example.com`, without
    /// credentials (`user:password@` is refused: the URL is logged and reported, and the
    /// bearer token lives in `credentialsSecretRef`).
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^https?://[^\s/@]+(/[^\s]*)?$")
    )]
    pub url: String,
    /// The Secret (in the Cluster's namespace) holding the bearer token.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// PEM-encoded CA certificates to trust for `url`, in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// A Secret key holding PEM-encoded CA certificates (alternative to `caBundle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
}

/// A Secret key holding the control-plane bearer token.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name, in the Cluster's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_owned()
}

/// A Secret key holding CA certificates.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Secret name, in the Cluster's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// `spec.connectivity`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Connectivity {
    /// How long the link may fail before Connected turns False (ConnectivityLost).
    #[serde(default = "default_grace_period")]
    pub grace_period: GoDuration,
    /// How often the agent sends a heartbeat.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: GoDuration,
}

fn default_grace_period() -> GoDuration {
    GoDuration::from_mins(5)
}

fn default_heartbeat_interval() -> GoDuration {
    GoDuration::from_secs(30)
}

impl Default for Connectivity {
    fn default() -> Self {
        Self {
            grace_period: default_grace_period(),
            heartbeat_interval: default_heartbeat_interval(),
        }
    }
}

/// `spec.auditStream`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxBatchSize <= self.bufferCapacity").message("maxBatchSize must not exceed bufferCapacity"))]
pub struct AuditStreamSpec {
    /// Events held while the link is down; beyond it the oldest are dropped (and replayed
    /// from CR status later).
    #[serde(default = "default_buffer_capacity")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub buffer_capacity: i32,
    /// A batch is sent when it reaches this many events (or at `flushInterval`).
    #[serde(default = "default_max_batch_size")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_batch_size: i32,
    /// A batch is sent at least this often while events are pending.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: GoDuration,
}

fn default_buffer_capacity() -> i32 {
    10_000
}

fn default_max_batch_size() -> i32 {
    100
}

fn default_flush_interval() -> GoDuration {
    GoDuration::from_secs(1)
}

impl Default for AuditStreamSpec {
    fn default() -> Self {
        Self {
            buffer_capacity: default_buffer_capacity(),
            max_batch_size: default_max_batch_size(),
            flush_interval: default_flush_interval(),
        }
    }
}

/// `spec.gitopsSource`: a Flux object whose Ready condition is the link's health in gitops mode.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitOpsSource {
    /// Kind of the Flux object.
    pub kind: GitOpsSourceKind,
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace.
    #[serde(default = "default_flux_namespace")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
}

fn default_flux_namespace() -> String {
    "flux-system".to_owned()
}

/// Flux kinds accepted as `gitopsSource.kind`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GitOpsSourceKind {
    /// source.toolkit.fluxcd.io GitRepository.
    GitRepository,
    /// source.toolkit.fluxcd.io OCIRepository.
    #[serde(rename = "OCIRepository")]
    OciRepository,
    /// source.toolkit.fluxcd.io Bucket.
    Bucket,
    /// kustomize.toolkit.fluxcd.io Kustomization (readiness of the applied state).
    Kustomization,
}

/// Observed state: the cluster's health surface.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Version of the running operator (semver, e.g. `v0.4.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_version: Option<String>,
    /// Version of Flux found on the cluster, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flux_version: Option<String>,
    /// Version of Velero found on the cluster, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velero_version: Option<String>,
    /// Namespaces labelled `app.vworkspace.io/managed-by=vworkspace`, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub managed_namespaces: Vec<ManagedNamespace>,
    /// Last successful heartbeat round-trip with the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    /// Connected, Authenticated, ControllersHealthy, CRDsRegistered, Disconnected,
    /// EventBufferOverflow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The latest announced transition of each Event reason: the inputs of its `event_id`
    /// (docs/conditions.md, "One rule from status change to Event").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub transitions: Vec<crate::transition::TransitionRecord>,
    /// Summary of the audit-event stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_stream: Option<AuditStreamStatus>,
}

/// One managed namespace and the operation templates allowed in it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedNamespace {
    /// Namespace name.
    pub name: String,
    /// From the `app.vworkspace.io/allowed-operation-templates` annotation, sorted.
    #[serde(default)]
    pub allowed_operation_templates: Vec<String>,
}

impl ManagedNamespace {
    /// Builds the entry from a namespace name and its annotation value (if any).
    pub fn from_annotation(name: impl Into<String>, annotation: Option<&str>) -> Self {
        let templates: BTreeSet<String> = annotation
            .map(crate::labels::parse_allowed_templates)
            .unwrap_or_default();
        Self {
            name: name.into(),
            allowed_operation_templates: templates.into_iter().collect(),
        }
    }
}

/// `status.auditStream`: where the audit stream stands.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditStreamStatus {
    /// Events buffered, not yet acknowledged by the control plane.
    #[serde(default)]
    pub pending: i64,
    /// Events dropped on buffer overflow so far; the transitions they carried are replayed
    /// from CR status since `deliveredWatermark`.
    #[serde(default)]
    pub dropped: i64,
    /// When the control plane last acknowledged a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<Time>,
    /// `occurred_at` of the newest event the control plane has acknowledged, with every
    /// earlier one delivered too. After an overflow or a restart, transitions recorded in CR
    /// status at or after this time are replayed (the receiver deduplicates by event_id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_watermark: Option<Time>,
}
