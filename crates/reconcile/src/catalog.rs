//! The operation catalog: the built-in templates of DESIGN §2, as data.
//!
//! An Operation names a template (`spec.template`, e.g. `backup.velero`); the template
//! says which [`OperationType`] it implements, which [`Engine`] carries it out, which
//! kind of child object that engine works on, how long it may take by default, and
//! whether it mutates the target application.
//!
//! Invariants:
//! * [`builtin`] holds exactly the nine templates of DESIGN §2, in the order of its table;
//!   template names are unique, and every name is `<type>.<engine>` with the type in lower
//!   case and the engine in its wire spelling (`upgrade.helmHookJob`), which is also the
//!   shape `Operation.spec.template` validates;
//! * the child kind of each template is read from the Rust type of that child
//!   (`vworkspace_api::thirdparty`, k8s-openapi, the ApplicationInstance for
//!   `upgrade.helm`), so the catalog and the objects built from those types cannot name
//!   different kinds; the tests pin the spelled-out kinds of DESIGN §2;
//! * the mutation rule: **a template mutates the application unless its type is
//!   `Backup`**. A backup (Velero Backup, VolSync manual sync, VolumeSnapshot) only reads
//!   the application's data. Restore overwrites it, Upgrade changes the chart and
//!   restarts the workload, Migration rewrites data or schema, and RunCommand / Runbook
//!   run arbitrary code against the application, so they are treated as mutating
//!   without exception. The rule is a property of the type ([`mutates_application`]),
//!   not something a template or an override can relax: "another mutating Operation
//!   running on the same ApplicationInstance" blocks an Operation (DESIGN §2), and that
//!   guard is only as good as this classification;
//! * [`Catalog::kinds`] yields each distinct (type, engine) pair once, in catalog order;
//!   metrics zero-initialise one series per pair from it, so there is one list of the
//!   pairs in the whole project;
//! * pure data: no I/O. Overrides from the ConfigMap `vworkspace-operation-catalog`
//!   (timeouts, images, default parameters) will be applied to a [`Catalog`] value; the
//!   built-in templates pin no image and no default parameters.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube_core::{GroupVersionKind, Resource};
use serde_json::{Map, Value};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::operation::{Engine, OperationType};
use vworkspace_api::thirdparty::{Backup, ReplicationSource, Restore, VolumeSnapshot, Workflow};

/// Whether an Operation of `type_` may change the application it targets (the mutation
/// rule of this module's doc): everything but `Backup` does.
pub const fn mutates_application(type_: OperationType) -> bool {
    !matches!(type_, OperationType::Backup)
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    name: String,
    type_: OperationType,
    engine: Engine,
    child: GroupVersionKind,
    default_timeout: Duration,
    mutates_application: bool,
    image: Option<String>,
    parameters: Map<String, Value>,
}

impl Template {
    fn new<K>(type_: OperationType, engine: Engine, default_timeout: Duration) -> Self
    where
        K: Resource<DynamicType = ()>,
    {
        Template {
            name: format!(
                "{}.{}",
                type_.as_str().to_ascii_lowercase(),
                engine.as_str()
            ),
            type_,
            engine,
            child: GroupVersionKind::gvk(&K::group(&()), &K::version(&()), &K::kind(&())),
            default_timeout,
            mutates_application: mutates_application(type_),
            image: None,
            parameters: Map::new(),
        }
    }

    /// The template name, e.g. `backup.velero` (what `Operation.spec.template` holds).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operation type it implements (must equal `Operation.spec.type`).
    pub fn operation_type(&self) -> OperationType {
        self.type_
    }

    /// The engine that carries it out (`Operation.status.engine`).
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Group, version and kind of the object the engine works on. For `upgrade.helm`
    /// it is the target ApplicationInstance itself (the upgrade is a new chart version on
    /// it); for `upgrade.helmHookJob` the pre-upgrade Job.
    pub fn child(&self) -> &GroupVersionKind {
        &self.child
    }

    /// The deadline from acceptance when `Operation.spec.timeout` is unset.
    pub fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    /// Whether it may change the application (see the module's mutation rule).
    pub fn mutates_application(&self) -> bool {
        self.mutates_application
    }

    /// The container image its child runs by default; `None` for every built-in
    /// template (set through the catalog ConfigMap).
    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// Parameters merged under `Operation.spec.parameters`; empty for every built-in
    /// template (set through the catalog ConfigMap).
    pub fn parameters(&self) -> &Map<String, Value> {
        &self.parameters
    }
}

/// The set of templates Operations may name, in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    templates: Vec<Template>,
}

impl Catalog {
    /// The template called `name`, if the catalog has one.
    pub fn get(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// Every template, in catalog order.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.templates.iter()
    }

    /// The distinct (type, engine) pairs, each once, in catalog order.
    pub fn kinds(&self) -> impl Iterator<Item = (OperationType, Engine)> + '_ {
        self.templates.iter().enumerate().filter_map(|(i, t)| {
            let pair = (t.type_, t.engine);
            let first = !self.templates[..i]
                .iter()
                .any(|e| (e.type_, e.engine) == pair);
            first.then_some(pair)
        })
    }
}

const fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

/// The built-in catalog (DESIGN §2).
pub fn builtin() -> Catalog {
    use Engine as E;
    use OperationType as T;
    Catalog {
        templates: vec![
            Template::new::<Backup>(T::Backup, E::Velero, minutes(30)),
            Template::new::<Restore>(T::Restore, E::Velero, minutes(60)),
            Template::new::<ReplicationSource>(T::Backup, E::Volsync, minutes(30)),
            Template::new::<VolumeSnapshot>(T::Backup, E::Snapshot, minutes(15)),
            Template::new::<ApplicationInstance>(T::Upgrade, E::Helm, minutes(15)),
            Template::new::<Job>(T::Upgrade, E::HelmHookJob, minutes(30)),
            Template::new::<Workflow>(T::Migration, E::Workflow, minutes(60)),
            Template::new::<Job>(T::RunCommand, E::Job, minutes(10)),
            Template::new::<Workflow>(T::Runbook, E::Workflow, minutes(60)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN §2's table, written out independently of [`builtin`]:
    /// (template, type, engine, apiVersion, kind, timeout in minutes, mutates).
    const TABLE: [(&str, OperationType, Engine, &str, &str, u64, bool); 9] = {
        use Engine as E;
        use OperationType as T;
        [
            (
                "backup.velero",
                T::Backup,
                E::Velero,
                "velero.io/v1",
                "Backup",
                30,
                false,
            ),
            (
                "restore.velero",
                T::Restore,
                E::Velero,
                "velero.io/v1",
                "Restore",
                60,
                true,
            ),
            (
                "backup.volsync",
                T::Backup,
                E::Volsync,
                "volsync.backube/v1alpha1",
                "ReplicationSource",
                30,
                false,
            ),
            (
                "backup.snapshot",
                T::Backup,
                E::Snapshot,
                "snapshot.storage.k8s.io/v1",
                "VolumeSnapshot",
                15,
                false,
            ),
            (
                "upgrade.helm",
                T::Upgrade,
                E::Helm,
                "vworkspace.io/v1alpha1",
                "ApplicationInstance",
                15,
                true,
            ),
            (
                "upgrade.helmHookJob",
                T::Upgrade,
                E::HelmHookJob,
                "batch/v1",
                "Job",
                30,
                true,
            ),
            (
                "migration.workflow",
                T::Migration,
                E::Workflow,
                "argoproj.io/v1alpha1",
                "Workflow",
                60,
                true,
            ),
            (
                "runcommand.job",
                T::RunCommand,
                E::Job,
                "batch/v1",
                "Job",
                10,
                true,
            ),
            (
                "runbook.workflow",
                T::Runbook,
                E::Workflow,
                "argoproj.io/v1alpha1",
                "Workflow",
                60,
                true,
            ),
        ]
    };

    #[test]
    fn builtin_matches_the_design_table_in_order() {
        let catalog = builtin();
        let names: Vec<&str> = catalog.templates().map(Template::name).collect();
        let expected: Vec<&str> = TABLE.iter().map(|row| row.0).collect();
        assert_eq!(names, expected);

        for (name, type_, engine, api_version, kind, minutes, mutates) in TABLE {
            let t = catalog
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(t.name(), name);
            assert_eq!(t.operation_type(), type_, "{name}");
            assert_eq!(t.engine(), engine, "{name}");
            assert_eq!(t.child().api_version(), api_version, "{name}");
            assert_eq!(t.child().kind, kind, "{name}");
            assert_eq!(
                t.default_timeout(),
                Duration::from_secs(minutes * 60),
                "{name}"
            );
            assert_eq!(t.mutates_application(), mutates, "{name}");
            assert_eq!(t.image(), None, "{name}");
            assert!(t.parameters().is_empty(), "{name}");
        }
    }

    #[test]
    fn unknown_templates_are_absent() {
        let catalog = builtin();
        for name in [
            "",
            "backup",
            "Backup.velero",
            "backup.Velero",
            "restore.helm",
            "upgrade.job",
        ] {
            assert!(catalog.get(name).is_none(), "{name:?}");
        }
    }

    #[test]
    fn names_are_unique_and_fit_the_operation_template_field() {
        let catalog = builtin();
        let mut names: Vec<&str> = catalog.templates().map(Template::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 9);
        for t in catalog.templates() {
            // Operation.spec.template: `^[a-z]+\.[A-Za-z]+$`, 3 to 63 characters.
            let (verb, engine) = t.name().split_once('.').expect("<verb>.<engine>");
            assert!(
                !verb.is_empty() && verb.bytes().all(|b| b.is_ascii_lowercase()),
                "{verb}"
            );
            assert!(
                !engine.is_empty() && engine.bytes().all(|b| b.is_ascii_alphabetic()),
                "{engine}"
            );
            assert!((3..=63).contains(&t.name().len()));
            assert_eq!(engine, t.engine().as_str());
        }
    }

    #[test]
    fn mutation_rule_is_by_type() {
        for type_ in OperationType::ALL {
            assert_eq!(
                mutates_application(type_),
                type_ != OperationType::Backup,
                "{type_}"
            );
        }
        for t in builtin().templates() {
            assert_eq!(
                t.mutates_application(),
                mutates_application(t.operation_type())
            );
        }
    }

    #[test]
    fn kinds_are_the_nine_distinct_pairs_in_catalog_order() {
        use Engine as E;
        use OperationType as T;
        let kinds: Vec<(OperationType, Engine)> = builtin().kinds().collect();
        assert_eq!(
            kinds,
            [
                (T::Backup, E::Velero),
                (T::Restore, E::Velero),
                (T::Backup, E::Volsync),
                (T::Backup, E::Snapshot),
                (T::Upgrade, E::Helm),
                (T::Upgrade, E::HelmHookJob),
                (T::Migration, E::Workflow),
                (T::RunCommand, E::Job),
                (T::Runbook, E::Workflow),
            ]
        );
    }

    #[test]
    fn kinds_skip_repeated_pairs() {
        let mut catalog = builtin();
        // A second template for an existing pair (e.g. a ConfigMap-defined variant).
        let mut again = catalog.templates[0].clone();
        again.name = "backup.veleroCsi".to_owned();
        catalog.templates.push(again);
        assert_eq!(catalog.kinds().count(), 9);
        assert_eq!(catalog.kinds().next(), builtin().kinds().next());
    }
}
