//! Readiness sub-checks of `/readyz`:
//!
//! * `crds` — our CRDs are registered, Established, and serve the schema this binary
//!   was built with (a stale CRD after an upgrade is reported, not silently used);
//! * `rbac` — the operator's own permissions, verified with SelfSubjectAccessReview;
//! * `flux` — Flux's HelmRelease and HelmRepository kinds exist (the controller writes
//!   them; without them its watch cannot start);
//! * `informers` — every cache of every controller of the leader is synced, or says
//!   which one is not (a standby replica is ready: it is healthy and waiting, and
//!   scraping must keep working for it).
//!
//! Each check runs when probed, with the telemetry crate's timeout, and returns a
//! reason a person can act on.

use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use vworkspace_reconcile::cluster::CrdCheck;
use vworkspace_runtime::Readiness;
use vworkspace_telemetry::health::Health;

/// Register the operator's readiness checks.
pub fn register(
    health: &Health,
    client: Client,
    readiness: Readiness,
    leading: watch::Receiver<bool>,
) {
    let expected = Arc::new(vworkspace_api::crds::operator_crds());
    let crd_client = client.clone();
    health.add_readiness_check("crds", move || {
        let client = crd_client.clone();
        let expected = expected.clone();
        async move { check_crds(client, &expected).await }
    });
    let flux_client = client.clone();
    health.add_readiness_check("flux", move || {
        let client = flux_client.clone();
        async move { check_flux(client).await }
    });
    let rbac_client = client;
    health.add_readiness_check("rbac", move || {
        let client = rbac_client.clone();
        async move { check_rbac(client).await }
    });
    health.add_readiness_check("informers", move || {
        // e.g. "applicationinstance: cache of helm.toolkit.fluxcd.io/v2 HelmRelease not synced"
        let unsynced = (*leading.borrow())
            .then(|| readiness.unsynced_message())
            .flatten();
        async move { unsynced.map_or(Ok(()), Err) }
    });
}

/// The CRDs the controllers need now (AuditBatch is only used in Push mode).
const REQUIRED: [&str; 3] = [
    "applicationinstances.vworkspace.io",
    "operations.vworkspace.io",
    "clusters.vworkspace.io",
];

/// Every CRD this binary defines: the Cluster's `CRDsRegistered` compares them all.
const ALL: [&str; 4] = [
    "applicationinstances.vworkspace.io",
    "operations.vworkspace.io",
    "clusters.vworkspace.io",
    "auditbatches.vworkspace.io",
];

async fn check_crds(client: Client, expected: &[CustomResourceDefinition]) -> Result<(), String> {
    match compare_crds(client, expected, &REQUIRED).await {
        Ok(CrdCheck::Matches) => Ok(()),
        Ok(CrdCheck::Missing(names)) => Err(names
            .iter()
            .map(|n| format!("{n} is not installed or not Established"))
            .collect::<Vec<_>>()
            .join("; ")),
        Ok(CrdCheck::Mismatch(names)) => Err(format!(
            "{} serve a different schema than this operator expects; apply deploy/crds",
            names.join(", ")
        )),
        Err(err) => Err(format!("cannot read CRDs: {err}")),
    }
}

/// How every served CRD of the operator compares with this binary's (the Cluster's
/// `CRDsRegistered` condition; the `crds` check looks at the required ones only).
/// A mismatch names the CRD and where its schema first differs.
pub async fn crd_check(client: Client) -> Result<CrdCheck, kube::Error> {
    compare_crds(client, &vworkspace_api::crds::operator_crds(), &ALL).await
}

async fn compare_crds(
    client: Client,
    expected: &[CustomResourceDefinition],
    names: &[&str],
) -> Result<CrdCheck, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut missing = Vec::new();
    let mut mismatch = Vec::new();
    for &name in names {
        let Some(live) = api.get_opt(name).await? else {
            missing.push(name.to_owned());
            continue;
        };
        let established = live
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if !established {
            missing.push(name.to_owned());
            continue;
        }
        let Some(want) = expected
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
        else {
            continue;
        };
        let (served, compiled) = (schema_of(&live), schema_of(want));
        if served != compiled {
            let at = match (&served, &compiled) {
                (Some(served), Some(compiled)) => first_difference(served, compiled, "")
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                _ => " (no served storage version with a schema)".to_owned(),
            };
            mismatch.push(format!("{name}{at}"));
        }
    }
    Ok(if !missing.is_empty() {
        CrdCheck::Missing(missing)
    } else if !mismatch.is_empty() {
        CrdCheck::Mismatch(mismatch)
    } else {
        CrdCheck::Matches
    })
}

/// Where `served` first differs from `compiled`, as a path into the schema
/// (`properties.spec.properties.x: served only`), keys in order.
fn first_difference(
    served: &serde_json::Value,
    compiled: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    let at = |p: &str| {
        if p.is_empty() {
            "the root".to_owned()
        } else {
            p.to_owned()
        }
    };
    match (served, compiled) {
        (Value::Object(s), Value::Object(c)) => {
            let mut keys: Vec<&String> = s.keys().chain(c.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let inner = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (s.get(key), c.get(key)) {
                    (Some(_), None) => return Some(format!("{inner}: served only")),
                    (None, Some(_)) => {
                        return Some(format!("{inner}: missing from the served schema"));
                    }
                    (Some(a), Some(b)) => {
                        if let Some(d) = first_difference(a, b, &inner) {
                            return Some(d);
                        }
                    }
                    (None, None) => {}
                }
            }
            None
        }
        (a, b) if a == b => None,
        _ => Some(format!("{}: differs", at(path))),
    }
}

fn schema_of(crd: &CustomResourceDefinition) -> Option<serde_json::Value> {
    let version = crd.spec.versions.iter().find(|v| v.served && v.storage)?;
    let schema = version.schema.as_ref()?.open_api_v3_schema.as_ref()?;
    serde_json::to_value(schema).ok()
}

/// The Flux kinds the ApplicationInstance controller writes. Without them its watch
/// cannot start, so the operator cannot become ready; this check says why.
const FLUX: [&str; 2] = [
    "helmreleases.helm.toolkit.fluxcd.io",
    "helmrepositories.source.toolkit.fluxcd.io",
];

async fn check_flux(client: Client) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut missing = Vec::new();
    for name in FLUX {
        match api.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name),
            Err(err) => return Err(format!("cannot read CRDs: {err}")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not installed: install Flux (source-controller and helm-controller)",
            missing.join(", ")
        ))
    }
}

/// (verb, group, resource, subresource) the operator needs cluster-wide.
const PERMISSIONS: &[(&str, &str, &str, &str)] = &[
    ("list", "vworkspace.io", "applicationinstances", ""),
    ("watch", "vworkspace.io", "applicationinstances", ""),
    ("patch", "vworkspace.io", "applicationinstances", "status"),
    ("list", "helm.toolkit.fluxcd.io", "helmreleases", ""),
    ("watch", "helm.toolkit.fluxcd.io", "helmreleases", ""),
    ("patch", "helm.toolkit.fluxcd.io", "helmreleases", ""),
    ("patch", "source.toolkit.fluxcd.io", "helmrepositories", ""),
    ("create", "events.k8s.io", "events", ""),
    // The Operation controller: its primary, its children (Velero's cluster-wide, as
    // they live in Velero's namespace) and the target's chart version.
    ("list", "vworkspace.io", "operations", ""),
    ("watch", "vworkspace.io", "operations", ""),
    ("patch", "vworkspace.io", "operations", ""),
    ("patch", "vworkspace.io", "operations", "status"),
    ("patch", "vworkspace.io", "applicationinstances", ""),
    ("list", "batch", "jobs", ""),
    ("watch", "batch", "jobs", ""),
    ("patch", "batch", "jobs", ""),
    ("delete", "batch", "jobs", ""),
    ("deletecollection", "batch", "jobs", ""),
    ("list", "velero.io", "backups", ""),
    ("watch", "velero.io", "backups", ""),
    ("patch", "velero.io", "backups", ""),
    ("deletecollection", "velero.io", "backups", ""),
    ("list", "velero.io", "restores", ""),
    ("watch", "velero.io", "restores", ""),
    ("patch", "velero.io", "restores", ""),
    ("deletecollection", "velero.io", "restores", ""),
    ("list", "argoproj.io", "workflows", ""),
    ("watch", "argoproj.io", "workflows", ""),
    ("patch", "argoproj.io", "workflows", ""),
    ("deletecollection", "argoproj.io", "workflows", ""),
    ("list", "volsync.backube", "replicationsources", ""),
    ("watch", "volsync.backube", "replicationsources", ""),
    ("patch", "volsync.backube", "replicationsources", ""),
    (
        "deletecollection",
        "volsync.backube",
        "replicationsources",
        "",
    ),
    ("list", "snapshot.storage.k8s.io", "volumesnapshots", ""),
    ("watch", "snapshot.storage.k8s.io", "volumesnapshots", ""),
    ("patch", "snapshot.storage.k8s.io", "volumesnapshots", ""),
    (
        "deletecollection",
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "",
    ),
    ("list", "", "persistentvolumeclaims", ""),
    ("list", "", "configmaps", ""),
    ("watch", "", "configmaps", ""),
    ("get", "", "secrets", ""),
    ("get", "", "configmaps", ""),
];

async fn check_rbac(client: Client) -> Result<(), String> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client);
    let mut denied = Vec::new();
    for (verb, group, resource, subresource) in PERMISSIONS {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some((*verb).to_owned()),
                    group: Some((*group).to_owned()),
                    resource: Some((*resource).to_owned()),
                    subresource: (!subresource.is_empty()).then(|| (*subresource).to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("SelfSubjectAccessReview failed: {e}"))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            let what = if subresource.is_empty() {
                format!("{verb} {resource}.{group}")
            } else {
                format!("{verb} {resource}/{subresource}.{group}")
            };
            denied.push(what);
        }
    }
    if denied.is_empty() {
        Ok(())
    } else {
        Err(format!("missing permissions: {}", denied.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::{ALL, REQUIRED, first_difference};
    use serde_json::json;

    #[test]
    fn the_cluster_compares_every_crd_of_the_binary() {
        let mut compiled: Vec<String> = vworkspace_api::crds::operator_crds()
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        compiled.sort();
        let mut all: Vec<String> = ALL.iter().map(|s| (*s).to_owned()).collect();
        all.sort();
        assert_eq!(all, compiled);
        assert!(REQUIRED.iter().all(|r| ALL.contains(r)));
    }

    #[test]
    fn a_drift_is_named_by_its_path() {
        let compiled = json!({ "type": "object", "properties": { "spec": { "type": "object" } } });
        let extra = json!({ "type": "object", "properties": {
            "spec": { "type": "object" }, "drift": { "type": "string" } } });
        assert_eq!(
            first_difference(&extra, &compiled, "").as_deref(),
            Some("properties.drift: served only")
        );
        assert_eq!(
            first_difference(&compiled, &extra, "").as_deref(),
            Some("properties.drift: missing from the served schema")
        );
        let typed = json!({ "type": "object", "properties": { "spec": { "type": "string" } } });
        assert_eq!(
            first_difference(&typed, &compiled, "").as_deref(),
            Some("properties.spec.type: differs")
        );
        assert_eq!(first_difference(&compiled, &compiled, ""), None);
    }
}
