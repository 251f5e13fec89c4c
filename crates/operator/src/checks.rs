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
//! No check calls the API server when probed: each answers from a result kept current
//! in the background (see [`register`]), so probes cost nothing and never log. Every
//! failure carries a reason a person can act on.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use vworkspace_reconcile::cluster::CrdCheck;
use vworkspace_runtime::Readiness;
use vworkspace_telemetry::health::{CheckHandle, Health};

/// How often permissions found missing are verified again (so that a fix is noticed)
/// without another reason to. Permissions found complete are verified again only after
/// a 403: a permission taken away shows up as one on the next request that needs it.
pub const RBAC_RECHECK: Duration = Duration::from_secs(60);
/// Least time between two RBAC verifications (403s may come in bursts).
const RBAC_SPACING: Duration = Duration::from_secs(30);
/// How soon a verification that could not be done (API server unreachable) is retried.
const RBAC_RETRY: Duration = Duration::from_secs(5);

/// Register the operator's readiness checks. Each is answered from a result kept current
/// in the background, so a probe costs no API request: `crds` and `flux` from watches
/// of the five CRDs (by name), `rbac` from SelfSubjectAccessReviews at start-up, every
/// [`RBAC_RECHECK`] and after any 403 the client gets (`forbidden` counts them),
/// `informers` from the controllers' watch states.
pub fn register(
    health: &Health,
    client: Client,
    readiness: Readiness,
    leading: watch::Receiver<bool>,
    forbidden: watch::Receiver<u64>,
) {
    let crds = health.readiness_handle("crds");
    let flux = health.readiness_handle("flux");
    crds.set_failing("CRDs not read yet");
    flux.set_failing("CRDs not read yet");
    tokio::spawn(follow_crds(client.clone(), crds, flux));
    let rbac = health.readiness_handle("rbac");
    rbac.set_failing("permissions not verified yet");
    tokio::spawn(keep_rbac(client, rbac, forbidden));
    health.add_readiness_check("informers", move || {
        // e.g. "applicationinstance: cache of helm.toolkit.fluxcd.io/v2 HelmRelease not
        // synced", "... watch of v1 Namespace failing: <error>"
        let unsynced = (*leading.borrow())
            .then(|| readiness.informers_message())
            .flatten();
        async move { unsynced.map_or(Ok(()), Err) }
    });
}

/// What the watch of one CRD has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Its first list has not completed.
    Unknown,
    /// Not there, or not Established.
    Missing,
    /// Established; whether it serves the schema this binary was built with.
    Established { matches: bool },
}

/// Watch the operator's and Flux's CRDs by name and keep `crds` and `flux` current. No
/// object is kept: each event is judged and dropped.
async fn follow_crds(client: Client, crds: CheckHandle, flux: CheckHandle) {
    let expected = vworkspace_api::crds::operator_crds();
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let names: Vec<&'static str> = REQUIRED.iter().chain(FLUX.iter()).copied().collect();
    let mut seen: BTreeMap<&'static str, Seen> =
        names.iter().map(|n| (*n, Seen::Unknown)).collect();
    let mut listed: BTreeMap<&'static str, bool> = BTreeMap::new();
    let mut last_error: Option<String> = None;
    let streams = names.iter().map(|name| {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(api.clone(), config)
            .default_backoff()
            .map(move |event| (*name, event))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    while let Some((name, event)) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                listed.insert(name, false);
            }
            Ok(watcher::Event::InitApply(crd) | watcher::Event::Apply(crd)) => {
                listed.insert(name, true);
                seen.insert(name, judge(&crd, &expected));
            }
            Ok(watcher::Event::Delete(_)) => {
                seen.insert(name, Seen::Missing);
            }
            Ok(watcher::Event::InitDone) => {
                if listed.get(name) == Some(&false) {
                    seen.insert(name, Seen::Missing);
                }
            }
            Err(err) => {
                // Kept for as long as nothing is known; a known verdict stands (the
                // informers check says when the API server is away).
                last_error = Some(err.to_string());
                continue;
            }
        }
        crds.set(crds_verdict(&seen, last_error.as_deref()));
        flux.set(flux_verdict(&seen, last_error.as_deref()));
    }
}

fn judge(crd: &CustomResourceDefinition, expected: &[CustomResourceDefinition]) -> Seen {
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if !established {
        return Seen::Missing;
    }
    let matches = expected
        .iter()
        .find(|want| want.metadata.name == crd.metadata.name)
        .is_none_or(|want| schema_of(crd) == schema_of(want));
    Seen::Established { matches }
}

fn unknown(last_error: Option<&str>) -> String {
    match last_error {
        Some(err) => format!("cannot read CRDs: {err}"),
        None => "CRDs not read yet".to_owned(),
    }
}

fn crds_verdict(
    seen: &BTreeMap<&'static str, Seen>,
    last_error: Option<&str>,
) -> Result<(), String> {
    let of = |name: &str| seen.get(name).cloned().unwrap_or(Seen::Unknown);
    if REQUIRED.iter().any(|n| of(n) == Seen::Unknown) {
        return Err(unknown(last_error));
    }
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|n| of(n) == Seen::Missing)
        .map(|n| format!("{n} is not installed or not Established"))
        .collect();
    if !missing.is_empty() {
        return Err(missing.join("; "));
    }
    let mismatch: Vec<&str> = REQUIRED
        .iter()
        .filter(|n| of(n) == Seen::Established { matches: false })
        .copied()
        .collect();
    if mismatch.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} serve a different schema than this operator expects; apply deploy/crds",
            mismatch.join(", ")
        ))
    }
}

fn flux_verdict(
    seen: &BTreeMap<&'static str, Seen>,
    last_error: Option<&str>,
) -> Result<(), String> {
    let of = |name: &str| seen.get(name).cloned().unwrap_or(Seen::Unknown);
    if FLUX.iter().any(|n| of(n) == Seen::Unknown) {
        return Err(unknown(last_error));
    }
    let missing: Vec<&str> = FLUX
        .iter()
        .filter(|n| of(n) == Seen::Missing)
        .copied()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not installed: install Flux (source-controller and helm-controller)",
            missing.join(", ")
        ))
    }
}

/// Verify the permissions now and again (at most every [`RBAC_SPACING`]) after a 403;
/// while some are missing, also every [`RBAC_RECHECK`]. A healthy operator sends no
/// SelfSubjectAccessReview in steady state.
async fn keep_rbac(client: Client, handle: CheckHandle, mut forbidden: watch::Receiver<u64>) {
    loop {
        forbidden.borrow_and_update();
        let complete = match check_rbac(client.clone()).await {
            Rbac::Verified(verdict) => {
                let complete = verdict.is_ok();
                handle.set(verdict);
                complete
            }
            Rbac::Unknown(why) => {
                // Nothing learned: a verdict already known stands; retry soon.
                if handle.status().is_err() {
                    handle.set_failing(why);
                }
                tokio::time::sleep(RBAC_RETRY).await;
                continue;
            }
        };
        tokio::time::sleep(RBAC_SPACING).await;
        let recheck = async {
            if complete {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RBAC_RECHECK.saturating_sub(RBAC_SPACING)).await;
        };
        tokio::select! {
            () = recheck => {}
            changed = forbidden.changed() => {
                if changed.is_err() {
                    // The client is gone: nothing will change any more.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
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

/// The outcome of one verification of the permissions.
enum Rbac {
    /// Every permission allowed (`Ok`), or the ones denied.
    Verified(Result<(), String>),
    /// A review could not be made.
    Unknown(String),
}

async fn check_rbac(client: Client) -> Rbac {
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
        let answer = match api.create(&PostParams::default(), &review).await {
            Ok(answer) => answer,
            Err(e) => return Rbac::Unknown(format!("SelfSubjectAccessReview failed: {e}")),
        };
        if !answer.status.is_some_and(|s| s.allowed) {
            let what = if subresource.is_empty() {
                format!("{verb} {resource}.{group}")
            } else {
                format!("{verb} {resource}/{subresource}.{group}")
            };
            denied.push(what);
        }
    }
    Rbac::Verified(if denied.is_empty() {
        Ok(())
    } else {
        Err(format!("missing permissions: {}", denied.join(", ")))
    })
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
