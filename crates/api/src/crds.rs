//! The CustomResourceDefinitions generated from the Rust types, their YAML rendering, and the
//! committed copies under `deploy/crds/` (ours) and `crates/testkit/crds/` (third-party test
//! doubles).
//!
//! Invariants:
//! * the Rust types are the source of truth; the YAML files are derived and committed so
//!   that a person (or Helm) can install them without building anything, and the unit test
//!   `committed_crds_are_current` fails whenever the two disagree;
//! * rendering is deterministic: the same types give byte-identical files (maps are sorted,
//!   struct fields keep their declaration order);
//! * one file per CRD, named `<plural>.<group>.yaml` (the CRD's `metadata.name`); the two
//!   directories hold nothing but generated files, so [`write_all`] removes stale `*.yaml`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::thirdparty;
use crate::{ApplicationInstance, AuditBatch, Cluster, Operation};

/// Where our CRDs are committed, relative to the repository root.
pub const OPERATOR_CRDS_DIR: &str = "deploy/crds";
/// Where the third-party test-double CRDs are committed, relative to the repository root.
pub const THIRD_PARTY_CRDS_DIR: &str = "crates/testkit/crds";
/// The command that regenerates the committed files.
pub const REGENERATE_COMMAND: &str = "cargo run -p vworkspace-operator -- crds";

const OPERATOR_HEADER: &str = "\
# Generated from the Rust types in crates/api (vworkspace-api). Do not edit.
# Regenerate with: cargo run -p vworkspace-operator -- crds
";

const THIRD_PARTY_HEADER: &str = "\
# Lenient test double of an upstream CRD, for the local test cluster and the simulated
# engines only (every object under spec and status preserves unknown fields). Never install
# it on a real cluster: install the upstream project's own CRDs there.
# Generated from the Rust types in crates/api (vworkspace-api). Do not edit.
# Regenerate with: cargo run -p vworkspace-operator -- crds
";

/// Why a CRD could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// YAML serialization failed.
    #[error("cannot render CRD {name} as YAML")]
    Render {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_yaml::Error,
    },
}

impl From<CrdError> for std::io::Error {
    fn from(err: CrdError) -> Self {
        std::io::Error::other(err)
    }
}

/// The operator's own CRDs: Cluster, ApplicationInstance, Operation, AuditBatch.
pub fn operator_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Cluster::crd(),
        ApplicationInstance::crd(),
        Operation::crd(),
        AuditBatch::crd(),
    ]
}

/// Lenient CRDs for the third-party kinds the operator drives (for the local test cluster):
/// Flux HelmRepository and HelmRelease, Velero Backup and Restore, Argo Workflow, VolSync
/// ReplicationSource, CSI VolumeSnapshot.
pub fn third_party_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        thirdparty::HelmRepository::crd(),
        thirdparty::HelmRelease::crd(),
        thirdparty::Backup::crd(),
        thirdparty::Restore::crd(),
        thirdparty::velero::ServerStatusRequest::crd(),
        thirdparty::velero::PodVolumeBackup::crd(),
        thirdparty::Workflow::crd(),
        thirdparty::ReplicationSource::crd(),
        thirdparty::VolumeSnapshot::crd(),
    ];
    for crd in &mut crds {
        make_lenient(crd);
    }
    crds
}

/// Marks every object schema under `spec` and `status` with
/// `x-kubernetes-preserve-unknown-fields: true`.
fn make_lenient(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let Some(properties) = root.properties.as_mut() else {
            continue;
        };
        for key in ["spec", "status"] {
            if let Some(schema) = properties.get_mut(key) {
                preserve_unknown_fields(schema);
            }
        }
    }
}

fn preserve_unknown_fields(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() == Some("object") || schema.properties.is_some() {
        schema.x_kubernetes_preserve_unknown_fields = Some(true);
    }
    if let Some(properties) = schema.properties.as_mut() {
        properties.values_mut().for_each(preserve_unknown_fields);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => preserve_unknown_fields(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(preserve_unknown_fields);
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(additional)) = schema.additional_properties.as_mut() {
        preserve_unknown_fields(additional);
    }
}

/// Renders a CRD as YAML. `header` is prepended verbatim (comment lines).
fn render_with_header(crd: &CustomResourceDefinition, header: &str) -> Result<String, CrdError> {
    let yaml = serde_yaml::to_string(crd).map_err(|source| CrdError::Render {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })?;
    Ok(format!("{header}{yaml}"))
}

/// Renders one of our CRDs as the YAML committed under `deploy/crds/`.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    render_with_header(crd, OPERATOR_HEADER)
}

/// Renders a third-party test-double CRD as committed under `crates/testkit/crds/`.
pub fn render_third_party(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    render_with_header(crd, THIRD_PARTY_HEADER)
}

/// The file name of a CRD: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    let name = crd
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| format!("{}.{}", crd.spec.names.plural, crd.spec.group));
    format!("{name}.yaml")
}

/// Every generated file: its path under `repo_root` and its content.
pub fn generated_files(repo_root: &Path) -> Result<Vec<(PathBuf, String)>, CrdError> {
    let mut files = Vec::new();
    for crd in operator_crds() {
        files.push((
            repo_root.join(OPERATOR_CRDS_DIR).join(file_name(&crd)),
            render(&crd)?,
        ));
    }
    for crd in third_party_crds() {
        files.push((
            repo_root.join(THIRD_PARTY_CRDS_DIR).join(file_name(&crd)),
            render_third_party(&crd)?,
        ));
    }
    Ok(files)
}

/// Writes every generated file under `repo_root` (creating the directories), removes `*.yaml`
/// files in those directories that are no longer generated, and returns the paths written.
/// Files whose content is already current are left untouched (and still returned).
pub fn write_all(repo_root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let files = generated_files(repo_root)?;
    for dir in [OPERATOR_CRDS_DIR, THIRD_PARTY_CRDS_DIR] {
        std::fs::create_dir_all(repo_root.join(dir))?;
    }
    for stale in unexpected_files(repo_root, &files)? {
        std::fs::remove_file(stale)?;
    }
    let mut written = Vec::with_capacity(files.len());
    for (path, content) in files {
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() != Some(content.as_str()) {
            std::fs::write(&path, content)?;
        }
        written.push(path);
    }
    Ok(written)
}

/// What is wrong with one committed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// A generated file is not committed.
    Missing(PathBuf),
    /// The committed file differs from what the types generate.
    Differs(PathBuf),
    /// A `*.yaml` file in a generated directory that no type generates.
    Unexpected(PathBuf),
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(p) => write!(f, "{} is missing", p.display()),
            Self::Differs(p) => write!(f, "{} is out of date", p.display()),
            Self::Unexpected(p) => write!(f, "{} is not generated by any type", p.display()),
        }
    }
}

/// Compares the committed files with the generated ones; empty when all are current.
/// For CI (`crds --check`) and for the unit test.
pub fn check_all(repo_root: &Path) -> std::io::Result<Vec<Drift>> {
    let files = generated_files(repo_root)?;
    let mut drift = Vec::new();
    for (path, content) in &files {
        match std::fs::read_to_string(path) {
            Ok(committed) if committed == *content => {}
            Ok(_) => drift.push(Drift::Differs(path.clone())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                drift.push(Drift::Missing(path.clone()));
            }
            Err(err) => return Err(err),
        }
    }
    drift.extend(
        unexpected_files(repo_root, &files)?
            .into_iter()
            .map(Drift::Unexpected),
    );
    Ok(drift)
}

fn unexpected_files(
    repo_root: &Path,
    generated: &[(PathBuf, String)],
) -> std::io::Result<Vec<PathBuf>> {
    let mut unexpected = Vec::new();
    for dir in [OPERATOR_CRDS_DIR, THIRD_PARTY_CRDS_DIR] {
        let entries = match std::fs::read_dir(repo_root.join(dir)) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let path = entry?.path();
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && !generated.iter().any(|(p, _)| *p == path) {
                unexpected.push(path);
            }
        }
    }
    unexpected.sort();
    Ok(unexpected)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;
