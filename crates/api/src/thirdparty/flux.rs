//! Flux: `HelmRepository` (source.toolkit.fluxcd.io/v1) and `HelmRelease`
//! (helm.toolkit.fluxcd.io/v2), plus the condition vocabulary Flux writes on them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Flux condition types on HelmRepository / HelmRelease.
pub mod condition_types {
    /// The object is reconciled and its artifact/release is healthy.
    pub const READY: &str = "Ready";
    /// HelmRelease: the last Helm action succeeded.
    pub const RELEASED: &str = "Released";
    /// Flux is working on the object.
    pub const RECONCILING: &str = "Reconciling";
    /// Flux gave up until the object changes.
    pub const STALLED: &str = "Stalled";
    /// HelmRelease: a remediation (rollback/uninstall) happened.
    pub const REMEDIATED: &str = "Remediated";
    /// HelmRelease: the Helm tests passed.
    pub const TEST_SUCCESS: &str = "TestSuccess";
}

/// Reasons helm-controller writes (subset the operator interprets).
pub mod reasons {
    /// Install succeeded.
    pub const INSTALL_SUCCEEDED: &str = "InstallSucceeded";
    /// Install failed.
    pub const INSTALL_FAILED: &str = "InstallFailed";
    /// Upgrade succeeded.
    pub const UPGRADE_SUCCEEDED: &str = "UpgradeSucceeded";
    /// Upgrade failed.
    pub const UPGRADE_FAILED: &str = "UpgradeFailed";
    /// A rollback succeeded (after a failed upgrade).
    pub const ROLLBACK_SUCCEEDED: &str = "RollbackSucceeded";
    /// The chart could not be fetched.
    pub const ARTIFACT_FAILED: &str = "ArtifactFailed";
    /// Work in progress.
    pub const PROGRESSING: &str = "Progressing";
}

/// `status.lastAttemptedReleaseAction` values.
pub mod release_actions {
    /// First install.
    pub const INSTALL: &str = "install";
    /// Upgrade of an existing release.
    pub const UPGRADE: &str = "upgrade";
}

/// `status.history[].status` values (Helm release states).
pub mod release_status {
    /// The release is live.
    pub const DEPLOYED: &str = "deployed";
    /// The release failed.
    pub const FAILED: &str = "failed";
    /// Replaced by a newer revision.
    pub const SUPERSEDED: &str = "superseded";
}

/// A Helm chart repository (index over HTTPS, or an OCI registry).
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "source.toolkit.fluxcd.io",
    version = "v1",
    kind = "HelmRepository",
    plural = "helmrepositories",
    namespaced,
    status = "HelmRepositoryStatus",
    derive = "PartialEq",
    shortname = "helmrepo",
    doc = "Flux HelmRepository (lenient test double of the upstream CRD).",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HelmRepositorySpec {
    /// Repository URL (`https://` index or `oci://` registry).
    pub url: String,
    /// How often the index is fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// `default` (HTTP index) or `oci`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// Observed state of a HelmRepository.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmRepositoryStatus {
    /// Generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A Helm release managed by Flux helm-controller.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
// `printcolumn(...)` repeats its keys by design.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "helm.toolkit.fluxcd.io",
    version = "v2",
    kind = "HelmRelease",
    plural = "helmreleases",
    namespaced,
    status = "HelmReleaseStatus",
    derive = "PartialEq",
    shortname = "hr",
    doc = "Flux HelmRelease (lenient test double of the upstream CRD).",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseSpec {
    /// How often Flux reconciles the release.
    pub interval: String,
    /// The chart to release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<HelmChartTemplate>,
    /// Values, merged over the chart's defaults after `valuesFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub values: Option<Map<String, Value>>,
    /// Values from Secrets / ConfigMaps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesReference>,
    /// Stop reconciling while true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// `spec.chart`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartTemplate {
    /// The HelmChart template.
    pub spec: HelmChartTemplateSpec,
}

/// `spec.chart.spec`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartTemplateSpec {
    /// Chart name.
    pub chart: String,
    /// Chart version or semver range (Flux defaults to `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the chart comes from.
    pub source_ref: CrossNamespaceObjectReference,
}

/// `spec.chart.spec.sourceRef`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceObjectReference {
    /// `HelmRepository`, `GitRepository` or `Bucket`.
    pub kind: String,
    /// Name of the source.
    pub name: String,
    /// Namespace of the source (defaults to the HelmRelease's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `spec.valuesFrom[]`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    /// `Secret` or `ConfigMap`.
    pub kind: String,
    /// Name of the Secret or ConfigMap.
    pub name: String,
    /// Key holding the values (Flux defaults to `values.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_key: Option<String>,
    /// Dotted path to place a single value at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// Tolerate a missing source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Observed state of a HelmRelease.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseStatus {
    /// Generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Released, Reconciling, Stalled, Remediated, TestSuccess.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Release history, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Snapshot>,
    /// Generation of the last attempted Helm action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_generation: Option<i64>,
    /// Chart version of the last attempted Helm action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// `install` or `upgrade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_release_action: Option<String>,
}

impl HelmReleaseStatus {
    /// The newest history entry (Flux keeps the history newest first).
    pub fn latest(&self) -> Option<&Snapshot> {
        self.history.first()
    }
}

/// `status.history[]`: one Helm release revision.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Chart name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_name: Option<String>,
    /// Chart version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
    /// Helm release revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Helm release status (`deployed`, `failed`, `superseded`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Digest of the release object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When the release was first deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_deployed: Option<Time>,
    /// When this revision was deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deployed: Option<Time>,
}
