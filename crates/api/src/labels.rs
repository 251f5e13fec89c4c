//! Label and annotation keys, their fixed values, and the server-side-apply field managers.
//!
//! Invariants: every key lives under `app.vworkspace.io/`; these constants are the only
//! spelling of them; parsing of annotation values is pure and lives here too, so the agent and
//! the controllers read a namespace's settings identically.

use std::collections::BTreeSet;

/// Prefix shared by every key.
pub const PREFIX: &str = "app.vworkspace.io/";

/// Label on a namespace the operator manages; value [`MANAGED_BY_VALUE`].
pub const MANAGED_BY: &str = "app.vworkspace.io/managed-by";
/// The only value of [`MANAGED_BY`] that means "managed".
pub const MANAGED_BY_VALUE: &str = "vworkspace";
/// Label on a managed namespace (and on objects in it): the owning organization's id.
pub const ORG_ID: &str = "app.vworkspace.io/org-id";
/// Annotation on a managed namespace: comma-separated operation templates allowed there
/// (e.g. `backup.velero,restore.velero,upgrade.helm`).
pub const ALLOWED_OPERATION_TEMPLATES: &str = "app.vworkspace.io/allowed-operation-templates";
/// Label on objects created from a control-plane job: the job id (idempotency by job).
pub const JOB_ID: &str = "app.vworkspace.io/job-id";
/// Label on children of an Operation: the Operation's `metadata.uid`.
pub const OPERATION_ID: &str = "app.vworkspace.io/operation-id";

/// Label on the children of an ApplicationInstance: the instance's name. Child watches
/// select on it, so objects the operator did not create never enter its caches.
pub const APPLICATION_INSTANCE: &str = "app.vworkspace.io/application-instance";
/// `app.kubernetes.io/managed-by`, the well-known label; the operator sets it to
/// [`FIELD_MANAGER_OPERATOR`] on everything it creates.
pub const K8S_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Field manager of the controllers (server-side apply of children and status).
pub const FIELD_MANAGER_OPERATOR: &str = "vworkspace-operator";
/// Field manager of the control-plane agent (objects applied from jobs).
pub const FIELD_MANAGER_AGENT: &str = "vworkspace-agent";

/// Label selector matching every managed namespace.
pub fn managed_namespace_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}

/// True when `labels` mark a managed namespace.
pub fn is_managed<'a, I>(labels: I) -> bool
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    labels
        .into_iter()
        .any(|(k, v)| k == MANAGED_BY && v == MANAGED_BY_VALUE)
}

/// Parses the [`ALLOWED_OPERATION_TEMPLATES`] annotation: comma-separated, whitespace around
/// entries ignored, empty entries dropped, duplicates collapsed; sorted for stable output
/// (e.g. `Cluster.status.managedNamespaces`).
pub fn parse_allowed_templates(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn keys_share_the_prefix() {
        for key in [
            MANAGED_BY,
            ORG_ID,
            ALLOWED_OPERATION_TEMPLATES,
            JOB_ID,
            OPERATION_ID,
        ] {
            assert!(key.starts_with(PREFIX), "{key}");
        }
        assert_eq!(
            managed_namespace_selector(),
            "app.vworkspace.io/managed-by=vworkspace"
        );
    }

    #[test]
    fn parses_allowed_templates() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("backup.velero", &["backup.velero"]),
            (
                " upgrade.helm , backup.velero,,backup.velero ",
                &["backup.velero", "upgrade.helm"],
            ),
        ];
        for (input, want) in cases {
            let got: Vec<_> = parse_allowed_templates(input).into_iter().collect();
            assert_eq!(got, *want, "{input:?}");
        }
    }

    #[test]
    fn recognises_managed_namespaces() {
        let mut labels = BTreeMap::new();
        assert!(!is_managed(&labels));
        labels.insert(MANAGED_BY.to_owned(), "someone-else".to_owned());
        assert!(!is_managed(&labels));
        labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned());
        assert!(is_managed(&labels));
    }
}
