//! The Cluster status: the one health surface, computed from what the operator observes.
//!
//! The Cluster controller is the only writer of `Cluster.status`. Everything it reports
//! arrives as an [`Observed`] value — the link's connectivity from the agent (in process),
//! the managed namespaces from the namespace cache, the controllers' health from the
//! runtime, the CRD comparison and the engine versions from discovery — and [`plan`]
//! turns it into the status to write plus the transitions to announce (through
//! [`transitions::announce`], the one rule).
//!
//! Invariants:
//! * the conditions are always the five types of the spec's example plus
//!   `EventBufferOverflow` and `OperationCatalogValid`, in a fixed order, so
//!   `kubectl get cluster -o yaml` reads the same on every cluster;
//! * connectivity maps to conditions as follows (and `connectivity_state` is the same
//!   signal):
//!
//!   | link | Connected | Disconnected |
//!   |---|---|---|
//!   | first round-trip pending | Unknown / `Reconnecting` | False / `NotApplicable` |
//!   | connected (1) | True / `ControlPlaneReachable` | False / `NotApplicable` |
//!   | reconnecting (0): failing, within the grace period | False / `Reconnecting` | False / `NotApplicable` |
//!   | disconnected (-1): failing for the whole grace period | False / `ControlPlaneUnreachable` | True / `GracePeriodExceeded` |
//!   | mode without a link in this version (push, gitops) | Unknown / `NotApplicable` | False / `NotApplicable` |
//!
//! * a credential the control plane refused (401) is `Authenticated=False` /
//!   `CredentialRejected`; a missing Secret or key is `CredentialMissing`. A network
//!   failure leaves `Authenticated` as it was: it says nothing about the credential;
//! * a message may carry a measured age ("Last successful round-trip 4s ago") only in
//!   conditions; whole seconds, so a status written within one second is identical;
//! * no I/O, no clock: `now` is an input.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use vworkspace_api::TransitionRecord;
use vworkspace_api::cluster::{AuditStreamStatus, ClusterStatus, ManagedNamespace};
use vworkspace_api::conditions::{ConditionStatus, cluster as c, new_condition, set_condition};

use crate::transitions::{self, Resource, StatusView};

/// Where the control-plane link stands, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No round-trip has completed yet.
    Pending,
    /// The last round-trip succeeded.
    Connected,
    /// Round-trips fail, for less than the grace period.
    Reconnecting,
    /// Round-trips have failed for the whole grace period.
    Disconnected,
}

/// What is known about the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Not yet tried.
    Untested,
    /// The control plane accepted it.
    Valid,
    /// The control plane answered 401.
    Rejected,
    /// The Secret or its key is missing.
    Missing,
}

/// The link's report (Pull mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// Connectivity.
    pub state: LinkState,
    /// The credential.
    pub credential: Credential,
    /// How long ago the last successful round-trip was, if there was one.
    pub since_success: Option<Duration>,
    /// When the last heartbeat round-trip succeeded.
    pub last_heartbeat: Option<Time>,
    /// `spec.connectivity.gracePeriod`, for messages.
    pub grace_period: Duration,
    /// The last failure, for messages (never contains the token).
    pub last_error: Option<String>,
}

/// How the served CRDs compare with the compiled ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdCheck {
    /// Every CRD is served with this binary's schema.
    Matches,
    /// These CRDs are not installed.
    Missing(Vec<String>),
    /// These CRDs are installed with another schema.
    Mismatch(Vec<String>),
}

/// The audit stream's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditView {
    /// The stream's summary, as written to `status.auditStream`.
    pub stream: AuditStreamStatus,
    /// Events were dropped and the replay from status has not been delivered yet.
    pub overflow_unrecovered: bool,
}

/// What the catalog ConfigMap makes of the Operation catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CatalogView {
    /// No catalog ConfigMap: the built-in catalog.
    #[default]
    Builtin,
    /// The ConfigMap (named) parses; its overrides are in force.
    Overridden(String),
    /// The ConfigMap (named) does not parse (why); the built-in catalog stays in force.
    Invalid(String, String),
}

/// Everything the Cluster status is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// This binary's version.
    pub operator_version: String,
    /// Flux's version, when Flux is installed.
    pub flux_version: Option<String>,
    /// Velero's version, when Velero is installed.
    pub velero_version: Option<String>,
    /// The managed namespaces (any order).
    pub managed_namespaces: Vec<ManagedNamespace>,
    /// The link, in Pull mode; `None` in a mode whose link this version does not run.
    pub link: Option<LinkView>,
    /// Controllers that are not running or whose caches have not synced, with why.
    pub unhealthy_controllers: Vec<String>,
    /// The CRD comparison.
    pub crds: CrdCheck,
    /// The audit stream.
    pub audit: AuditView,
    /// The Operation catalog.
    pub catalog: CatalogView,
}

/// The status to write and what to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The new status (its `transitions` already record `transitions`).
    pub status: ClusterStatus,
    /// What to publish, in order, before writing the status.
    pub transitions: Vec<TransitionRecord>,
    /// Whether `status` differs from the current one.
    pub changed: bool,
}

type Value = (ConditionStatus, &'static str, String);

fn connected(link: Option<&LinkView>) -> (Value, Value) {
    use ConditionStatus::{False, True, Unknown};
    let not_applicable = |why: &str| (False, c::reasons::NOT_APPLICABLE, why.to_owned());
    let Some(link) = link else {
        let why = "this operator version has no control-plane link in this mode";
        return (
            (Unknown, c::reasons::NOT_APPLICABLE, why.to_owned()),
            not_applicable(why),
        );
    };
    let ago = |d: Option<Duration>| match d {
        Some(d) => format!("Last successful round-trip {}s ago", d.as_secs()),
        None => "No successful round-trip yet".to_owned(),
    };
    let failure = |link: &LinkView| {
        let mut msg = ago(link.since_success);
        if let Some(err) = &link.last_error {
            msg.push_str("; last error: ");
            msg.push_str(err);
        }
        msg
    };
    let grace = link.grace_period.as_secs();
    match link.state {
        LinkState::Pending => (
            (Unknown, c::reasons::RECONNECTING, failure(link)),
            not_applicable("the first round-trip is pending"),
        ),
        LinkState::Connected => (
            (
                True,
                c::reasons::CONTROL_PLANE_REACHABLE,
                ago(link.since_success),
            ),
            not_applicable("connected"),
        ),
        LinkState::Reconnecting => (
            (False, c::reasons::RECONNECTING, failure(link)),
            not_applicable(&format!(
                "round-trips are failing, for less than the grace period of {grace}s"
            )),
        ),
        LinkState::Disconnected => (
            (False, c::reasons::CONTROL_PLANE_UNREACHABLE, failure(link)),
            (
                True,
                c::reasons::GRACE_PERIOD_EXCEEDED,
                format!("no successful round-trip for longer than the grace period of {grace}s"),
            ),
        ),
    }
}

fn authenticated(link: Option<&LinkView>, previous: Option<&Condition>) -> Value {
    use ConditionStatus::{False, True, Unknown};
    let Some(link) = link else {
        return (
            Unknown,
            c::reasons::NOT_APPLICABLE,
            "this operator version has no control-plane link in this mode".to_owned(),
        );
    };
    match link.credential {
        Credential::Valid => (
            True,
            c::reasons::CREDENTIAL_VALID,
            "the control plane accepts the bootstrap credential".to_owned(),
        ),
        Credential::Rejected => (
            False,
            c::reasons::CREDENTIAL_REJECTED,
            "the control plane answered 401 Unauthorized to the bootstrap credential".to_owned(),
        ),
        Credential::Missing => (
            False,
            c::reasons::CREDENTIAL_MISSING,
            link.last_error
                .clone()
                .unwrap_or_else(|| "the credentials Secret or its key is missing".to_owned()),
        ),
        // Not tried yet (or only network failures so far): keep what was known.
        Credential::Untested => match previous {
            Some(p) if p.reason != c::reasons::NOT_APPLICABLE => (
                ConditionStatus::parse(&p.status).unwrap_or(Unknown),
                known_reason(&p.reason),
                p.message.clone(),
            ),
            _ => (
                Unknown,
                c::reasons::RECONNECTING,
                "no answer from the control plane yet".to_owned(),
            ),
        },
    }
}

/// The `'static` spelling of a Cluster reason read back from status.
fn known_reason(reason: &str) -> &'static str {
    c::reasons::ALL
        .iter()
        .copied()
        .find(|r| *r == reason)
        .unwrap_or(c::reasons::RECONNECTING)
}

fn controllers(unhealthy: &[String]) -> Value {
    if unhealthy.is_empty() {
        (
            ConditionStatus::True,
            c::reasons::ALL_CONTROLLERS_READY,
            "every controller is running with synced caches".to_owned(),
        )
    } else {
        (
            ConditionStatus::False,
            c::reasons::CONTROLLERS_NOT_READY,
            unhealthy.join("; "),
        )
    }
}

fn crds(check: &CrdCheck) -> Value {
    match check {
        CrdCheck::Matches => (
            ConditionStatus::True,
            c::reasons::SCHEMA_MATCHES,
            "every CRD is served with the schema this operator was built with".to_owned(),
        ),
        CrdCheck::Missing(names) => (
            ConditionStatus::False,
            c::reasons::CRDS_MISSING,
            format!("not installed: {}", names.join(", ")),
        ),
        CrdCheck::Mismatch(names) => (
            ConditionStatus::False,
            c::reasons::SCHEMA_MISMATCH,
            format!(
                "served with a schema other than this operator's (apply deploy/crds): {}",
                names.join(", ")
            ),
        ),
    }
}

fn catalog(view: &CatalogView) -> Value {
    match view {
        CatalogView::Builtin => (
            ConditionStatus::True,
            c::reasons::BUILTIN_CATALOG,
            "no catalog ConfigMap; the built-in Operation catalog is in force".to_owned(),
        ),
        CatalogView::Overridden(name) => (
            ConditionStatus::True,
            c::reasons::CATALOG_OVERRIDES_APPLIED,
            format!("the overrides of ConfigMap {name} are in force"),
        ),
        CatalogView::Invalid(name, why) => (
            ConditionStatus::False,
            c::reasons::OPERATION_CATALOG_INVALID,
            format!("ConfigMap {name} does not parse; the built-in catalog stays in force: {why}"),
        ),
    }
}

fn overflow(audit: &AuditView) -> Value {
    if audit.overflow_unrecovered {
        (
            ConditionStatus::True,
            c::reasons::BUFFER_OVERFLOWED,
            format!(
                "{} audit events dropped in total; replaying the transitions recorded in status",
                audit.stream.dropped
            ),
        )
    } else {
        (
            ConditionStatus::False,
            c::reasons::BUFFER_WITHIN_CAPACITY,
            "every audit event not yet delivered is buffered".to_owned(),
        )
    }
}

/// The status of a Cluster currently showing `current`, given `observed`, at `now`.
pub fn plan(current: Option<&ClusterStatus>, observed: &Observed, now: &Time) -> Plan {
    let previous = current.cloned().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = observed.generation;
    status.operator_version = Some(observed.operator_version.clone());
    status.flux_version = observed.flux_version.clone();
    status.velero_version = observed.velero_version.clone();
    let mut namespaces = observed.managed_namespaces.clone();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    namespaces.dedup_by(|a, b| a.name == b.name);
    status.managed_namespaces = namespaces;
    if let Some(link) = &observed.link
        && link.last_heartbeat.is_some()
    {
        status.last_heartbeat = link.last_heartbeat.clone();
    }
    status.audit_stream = Some(observed.audit.stream.clone());

    let link = observed.link.as_ref();
    let (connected, disconnected) = connected(link);
    let authenticated = authenticated(
        link,
        vworkspace_api::conditions::find_condition(&previous.conditions, c::AUTHENTICATED),
    );
    let values = [
        (c::CONNECTED, connected),
        (c::AUTHENTICATED, authenticated),
        (
            c::CONTROLLERS_HEALTHY,
            controllers(&observed.unhealthy_controllers),
        ),
        (c::CRDS_REGISTERED, crds(&observed.crds)),
        (c::DISCONNECTED, disconnected),
        (c::EVENT_BUFFER_OVERFLOW, overflow(&observed.audit)),
        (c::OPERATION_CATALOG_VALID, catalog(&observed.catalog)),
    ];
    let mut conditions = Vec::with_capacity(values.len());
    for (type_, (st, reason, message)) in values {
        // Start from the previous condition so lastTransitionTime survives.
        if let Some(old) = vworkspace_api::conditions::find_condition(&previous.conditions, type_) {
            conditions.push(old.clone());
        }
        set_condition(
            &mut conditions,
            new_condition(type_, st, reason, message, observed.generation, now),
            now,
        );
    }
    status.conditions = conditions;
    finish(current, previous, status, observed.generation, now)
}

/// The status after a reconcile of the Cluster failed with an error of `category`
/// (`vworkspace_api::conditions::errors`): the Cluster controller itself is not
/// healthy, so `ControllersHealthy` becomes False with the category as its reason and
/// the error chain as its message (announced once, as a Warning Event with that
/// reason). Everything else keeps what was last written; the next successful
/// reconcile recomputes the condition and so clears it.
pub fn plan_error(
    current: Option<&ClusterStatus>,
    generation: Option<i64>,
    category: &'static str,
    message: &str,
    now: &Time,
) -> Plan {
    let previous = current.cloned().unwrap_or_default();
    let mut status = previous.clone();
    set_condition(
        &mut status.conditions,
        new_condition(
            c::CONTROLLERS_HEALTHY,
            ConditionStatus::False,
            category,
            format!("the cluster controller cannot report: {message}"),
            generation,
            now,
        ),
        now,
    );
    finish(current, previous, status, generation, now)
}

/// Announce what changed from `previous` to `status` and record it.
fn finish(
    current: Option<&ClusterStatus>,
    previous: ClusterStatus,
    mut status: ClusterStatus,
    generation: Option<i64>,
    now: &Time,
) -> Plan {
    let mut records = previous.transitions.clone();
    let transitions = transitions::announce(
        Resource::Cluster,
        generation.unwrap_or(0),
        StatusView {
            observed_generation: previous.observed_generation,
            conditions: &previous.conditions,
        },
        StatusView {
            observed_generation: status.observed_generation,
            conditions: &status.conditions,
        },
        None,
        &mut records,
        now,
    );
    status.transitions = records;
    let changed = current != Some(&status);
    Plan {
        status,
        transitions,
        changed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use vworkspace_api::conditions::{events, find_condition};

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_780_000_000 + s).unwrap())
    }

    fn link(state: LinkState, credential: Credential) -> LinkView {
        LinkView {
            state,
            credential,
            since_success: Some(Duration::from_secs(4)),
            last_heartbeat: Some(at(0)),
            grace_period: Duration::from_secs(30),
            last_error: None,
        }
    }

    fn observed(link: Option<LinkView>) -> Observed {
        Observed {
            generation: Some(1),
            operator_version: "v0.1.0".into(),
            flux_version: Some("v2.3.0".into()),
            velero_version: None,
            managed_namespaces: vec![
                ManagedNamespace::from_annotation("org-b", None),
                ManagedNamespace::from_annotation("org-a", Some("upgrade.helm, backup.velero")),
            ],
            link,
            unhealthy_controllers: vec![],
            crds: CrdCheck::Matches,
            audit: AuditView::default(),
            catalog: CatalogView::Builtin,
        }
    }

    fn cond<'a>(s: &'a ClusterStatus, t: &str) -> (&'a str, &'a str) {
        let c = find_condition(&s.conditions, t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn kinds(p: &Plan) -> Vec<&str> {
        p.transitions.iter().map(|t| t.kind.as_str()).collect()
    }

    #[test]
    fn healthy_cluster_matches_the_spec_example() {
        let p = plan(
            None,
            &observed(Some(link(LinkState::Connected, Credential::Valid))),
            &at(0),
        );
        let s = &p.status;
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.operator_version.as_deref(), Some("v0.1.0"));
        assert_eq!(s.flux_version.as_deref(), Some("v2.3.0"));
        assert_eq!(s.velero_version, None, "absent engines are absent");
        let names: Vec<_> = s.managed_namespaces.iter().map(|n| &n.name).collect();
        assert_eq!(names, ["org-a", "org-b"]);
        assert_eq!(
            s.managed_namespaces[0].allowed_operation_templates,
            ["backup.velero", "upgrade.helm"]
        );
        let types: Vec<_> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                "Connected",
                "Authenticated",
                "ControllersHealthy",
                "CRDsRegistered",
                "Disconnected",
                "EventBufferOverflow",
                "OperationCatalogValid"
            ]
        );
        assert_eq!(cond(s, c::CONNECTED), ("True", "ControlPlaneReachable"));
        assert_eq!(
            find_condition(&s.conditions, c::CONNECTED).unwrap().message,
            "Last successful round-trip 4s ago"
        );
        assert_eq!(cond(s, c::AUTHENTICATED), ("True", "CredentialValid"));
        assert_eq!(
            cond(s, c::CONTROLLERS_HEALTHY),
            ("True", "AllControllersReady")
        );
        assert_eq!(cond(s, c::CRDS_REGISTERED), ("True", "SchemaMatches"));
        assert_eq!(cond(s, c::DISCONNECTED), ("False", "NotApplicable"));
        assert_eq!(
            cond(s, c::EVENT_BUFFER_OVERFLOW),
            ("False", "BufferWithinCapacity")
        );
        // Established for the first time: announced; healthy conditions first added as
        // True are not.
        assert_eq!(kinds(&p), [events::CONNECTIVITY_CONNECTED]);
        // Same observation again: nothing changes, nothing is announced.
        let again = plan(
            Some(&p.status),
            &observed(Some(link(LinkState::Connected, Credential::Valid))),
            &at(1),
        );
        assert!(!again.changed);
        assert!(again.transitions.is_empty());
    }

    #[test]
    fn an_outage_reconnects_then_disconnects_then_recovers() {
        let ok = plan(
            None,
            &observed(Some(link(LinkState::Connected, Credential::Valid))),
            &at(0),
        );
        let failing = plan(
            Some(&ok.status),
            &observed(Some(link(LinkState::Reconnecting, Credential::Untested))),
            &at(5),
        );
        assert_eq!(
            cond(&failing.status, c::CONNECTED),
            ("False", "Reconnecting")
        );
        assert_eq!(
            cond(&failing.status, c::DISCONNECTED),
            ("False", "NotApplicable")
        );
        assert_eq!(
            cond(&failing.status, c::AUTHENTICATED),
            ("True", "CredentialValid"),
            "a network failure says nothing about the credential"
        );
        assert!(
            kinds(&failing).is_empty(),
            "within the grace period: silent"
        );
        let lost = plan(
            Some(&failing.status),
            &observed(Some(link(LinkState::Disconnected, Credential::Untested))),
            &at(40),
        );
        assert_eq!(
            cond(&lost.status, c::CONNECTED),
            ("False", "ControlPlaneUnreachable")
        );
        assert_eq!(
            cond(&lost.status, c::DISCONNECTED),
            ("True", "GracePeriodExceeded")
        );
        assert_eq!(kinds(&lost), [events::CONNECTIVITY_LOST]);
        let back = plan(
            Some(&lost.status),
            &observed(Some(link(LinkState::Connected, Credential::Valid))),
            &at(50),
        );
        assert_eq!(kinds(&back), [events::CONNECTIVITY_CONNECTED]);
        assert_ne!(
            back.transitions[0].event_id("c", "u"),
            ok.transitions[0].event_id("c", "u"),
            "a re-established link is a new event"
        );
    }

    #[test]
    fn a_blip_within_the_grace_period_is_not_a_reconnect() {
        let ok = plan(
            None,
            &observed(Some(link(LinkState::Connected, Credential::Valid))),
            &at(0),
        );
        let blip = plan(
            Some(&ok.status),
            &observed(Some(link(LinkState::Reconnecting, Credential::Untested))),
            &at(1),
        );
        let back = plan(
            Some(&blip.status),
            &observed(Some(link(LinkState::Connected, Credential::Valid))),
            &at(2),
        );
        assert!(kinds(&blip).is_empty());
        assert!(
            kinds(&back).is_empty(),
            "no ConnectivityConnected without a loss"
        );
    }

    #[test]
    fn a_rejected_credential_and_drifted_crds_are_warnings() {
        let ok = plan(
            None,
            &observed(Some(link(LinkState::Connected, Credential::Valid))),
            &at(0),
        );
        let mut bad = observed(Some(link(LinkState::Reconnecting, Credential::Rejected)));
        bad.crds = CrdCheck::Mismatch(vec!["operations.vworkspace.io".into()]);
        bad.unhealthy_controllers = vec!["operation: cache of Operation not synced".into()];
        let p = plan(Some(&ok.status), &bad, &at(1));
        assert_eq!(
            cond(&p.status, c::AUTHENTICATED),
            ("False", "CredentialRejected")
        );
        assert_eq!(
            cond(&p.status, c::CRDS_REGISTERED),
            ("False", "SchemaMismatch")
        );
        assert_eq!(
            cond(&p.status, c::CONTROLLERS_HEALTHY),
            ("False", "ControllersNotReady")
        );
        assert_eq!(
            kinds(&p),
            [
                "CredentialRejected",
                "ControllersNotReady",
                "SchemaMismatch"
            ]
        );
        assert!(
            p.transitions
                .iter()
                .all(|t| t.event_type == vworkspace_api::conditions::EventType::Warning)
        );
    }

    #[test]
    fn overflow_is_announced_once_until_recovered() {
        let mut o = observed(Some(link(LinkState::Connected, Credential::Valid)));
        let first = plan(None, &o, &at(0));
        o.audit.overflow_unrecovered = true;
        o.audit.stream.dropped = 7;
        let over = plan(Some(&first.status), &o, &at(1));
        assert_eq!(
            cond(&over.status, c::EVENT_BUFFER_OVERFLOW),
            ("True", "BufferOverflowed")
        );
        assert_eq!(kinds(&over), [events::CLUSTER_EVENT_BUFFER_OVERFLOW]);
        o.audit.stream.dropped = 9;
        let more = plan(Some(&over.status), &o, &at(2));
        assert!(kinds(&more).is_empty(), "still the same overflow");
        o.audit.overflow_unrecovered = false;
        let recovered = plan(Some(&more.status), &o, &at(3));
        assert_eq!(
            cond(&recovered.status, c::EVENT_BUFFER_OVERFLOW),
            ("False", "BufferWithinCapacity")
        );
        o.audit.overflow_unrecovered = true;
        let second = plan(Some(&recovered.status), &o, &at(4));
        assert_eq!(kinds(&second), [events::CLUSTER_EVENT_BUFFER_OVERFLOW]);
        assert_eq!(second.transitions[0].occurrence, 2);
    }

    #[test]
    fn modes_without_a_link_say_so() {
        let p = plan(None, &observed(None), &at(0));
        assert_eq!(cond(&p.status, c::CONNECTED), ("Unknown", "NotApplicable"));
        assert_eq!(
            cond(&p.status, c::AUTHENTICATED),
            ("Unknown", "NotApplicable")
        );
        assert!(kinds(&p).is_empty());
    }

    #[test]
    fn a_failed_reconcile_is_a_warning_once_and_clears_on_success() {
        use vworkspace_api::conditions::errors;
        let ok = plan(None, &observed(None), &at(0));
        let failed = plan_error(
            Some(&ok.status),
            Some(1),
            errors::READ_FAILED,
            "reading CustomResourceDefinitions: forbidden (403 Forbidden)",
            &at(1),
        );
        assert_eq!(
            cond(&failed.status, c::CONTROLLERS_HEALTHY),
            ("False", "ReadFailed")
        );
        let message = &find_condition(&failed.status.conditions, c::CONTROLLERS_HEALTHY)
            .unwrap()
            .message;
        assert!(message.contains("403 Forbidden"), "{message}");
        assert_eq!(kinds(&failed), ["ReadFailed"]);
        assert!(failed.changed);
        // Everything else is as it was.
        for t in [c::CONNECTED, c::CRDS_REGISTERED, c::EVENT_BUFFER_OVERFLOW] {
            assert_eq!(cond(&failed.status, t), cond(&ok.status, t), "{t}");
        }
        // A retry failing the same way announces nothing more.
        let again = plan_error(
            Some(&failed.status),
            Some(1),
            errors::READ_FAILED,
            "reading CustomResourceDefinitions: forbidden (403 Forbidden)",
            &at(2),
        );
        assert!(kinds(&again).is_empty());
        assert!(!again.changed);
        // Another category is announced as its own Warning.
        let write = plan_error(
            Some(&again.status),
            Some(1),
            errors::STATUS_WRITE_FAILED,
            "writing the status: denied",
            &at(3),
        );
        assert_eq!(kinds(&write), ["StatusWriteFailed"]);
        // The next successful reconcile clears it, announced as a recovery.
        let back = plan(Some(&write.status), &observed(None), &at(4));
        assert_eq!(
            cond(&back.status, c::CONTROLLERS_HEALTHY),
            ("True", "AllControllersReady")
        );
        assert_eq!(kinds(&back), ["AllControllersReady"]);
    }

    #[test]
    fn the_catalog_configmap_is_reported_without_an_event_on_the_cluster() {
        let ok = plan(None, &observed(None), &at(0));
        assert_eq!(
            cond(&ok.status, c::OPERATION_CATALOG_VALID),
            ("True", "BuiltinCatalog")
        );
        let mut bad = observed(None);
        bad.catalog = CatalogView::Invalid(
            "vworkspace-operation-catalog".into(),
            "unknown template no.such.template".into(),
        );
        let p = plan(Some(&ok.status), &bad, &at(1));
        assert_eq!(
            cond(&p.status, c::OPERATION_CATALOG_VALID),
            ("False", "OperationCatalogInvalid")
        );
        let message = &find_condition(&p.status.conditions, c::OPERATION_CATALOG_VALID)
            .unwrap()
            .message;
        assert!(message.contains("no.such.template"), "{message}");
        // The Warning Event is on the ConfigMap (the Operation controller's); the Cluster
        // condition adds none.
        assert!(kinds(&p).is_empty());
        let mut fixed = observed(None);
        fixed.catalog = CatalogView::Overridden("vworkspace-operation-catalog".into());
        let back = plan(Some(&p.status), &fixed, &at(2));
        assert_eq!(
            cond(&back.status, c::OPERATION_CATALOG_VALID),
            ("True", "CatalogOverridesApplied")
        );
    }
}
