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

async fn check_crds(client: Client, expected: &[CustomResourceDefinition]) -> Result<(), String> {
    match compare_crds(client, expected).await {
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

/// How the served CRDs compare with this binary's (the `crds` check and the Cluster's
/// `CRDsRegistered` condition).
pub async fn crd_check(client: Client) -> Result<CrdCheck, kube::Error> {
    compare_crds(client, &vworkspace_api::crds::operator_crds()).await
}

async fn compare_crds(
    client: Client,
    expected: &[CustomResourceDefinition],
) -> Result<CrdCheck, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut missing = Vec::new();
    let mut mismatch = Vec::new();
    for name in REQUIRED {
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
        if schema_of(&live) != schema_of(want) {
            mismatch.push(name.to_owned());
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
