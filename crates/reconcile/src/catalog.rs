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
//! * pure data: no I/O. The built-in templates pin no image and no default parameters;
//!   overrides come from the ConfigMap [`CONFIGMAP_NAME`] in [`CONFIGMAP_NAMESPACE`]
//!   through [`Catalog::with_overrides`], which either applies *all* of a ConfigMap or
//!   none of it: a ConfigMap that does not parse leaves the catalog it was applied to
//!   unchanged (the controller keeps the built-in catalog in force, reports the error as
//!   a Warning Event on the ConfigMap with reason [`CatalogError::category`], and logs it).
//!
//! # The override format
//!
//! One data key per template, named exactly like the template; its value is a YAML (or
//! JSON) mapping with any of three fields:
//!
//! ```yaml
//! apiVersion: v1
//! kind: ConfigMap
//! metadata: { name: vworkspace-operation-catalog, namespace: vworkspace-system }
//! data:
//!   backup.velero: |
//!     timeout: 45m                 # Go duration, > 0: the default deadline
//!     parameters:                  # defaults merged under Operation.spec.parameters
//!       storageLocation: s3-eu
//!       veleroNamespace: velero
//!   runcommand.job: |
//!     image: registry.example.com/tools:1.4   # container image of the Job
//!     timeout: 5m
//! ```
//!
//! Rules, each failure naming the key and the field:
//! * a key that is not a template of the catalog is an error (overrides never add
//!   templates: a template is code, an engine with a child builder);
//! * an unknown field is an error; so is `image` on a template whose engine runs no
//!   container of ours (only `job` and `helmHookJob` do);
//! * a parameter the template's engine does not know is an error (workflow templates take
//!   any name: every parameter that is not one of the engine's own is passed to the
//!   Workflow as an argument);
//! * an Operation's own `spec.parameters` win over these defaults, key by key.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube_core::{GroupVersionKind, Resource};
use serde_json::{Map, Value};
use vworkspace_api::GoDuration;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::conditions::operation::reasons;
use vworkspace_api::operation::{Engine, OperationType};
use vworkspace_api::thirdparty::{Backup, ReplicationSource, Restore, VolumeSnapshot, Workflow};

use crate::engines;

/// Name of the ConfigMap that overrides the built-in catalog.
pub const CONFIGMAP_NAME: &str = "vworkspace-operation-catalog";
/// Namespace of that ConfigMap.
pub const CONFIGMAP_NAMESPACE: &str = "vworkspace-system";

/// Why a catalog ConfigMap was refused; every message names the data key (the template)
/// and, where there is one, the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A data key that is not a template.
    #[error("{CONFIGMAP_NAME}: key {key:?} is not a template of the catalog (known: {known})")]
    UnknownTemplate {
        /// The data key.
        key: String,
        /// The template names, comma-separated.
        known: String,
    },
    /// The value is not a YAML mapping of the override fields.
    #[error("{CONFIGMAP_NAME}: key {template:?} does not parse: {why}")]
    Malformed {
        /// The template.
        template: String,
        /// The parser's words (names the unknown field, if that is the problem).
        why: String,
    },
    /// `timeout` is not a positive Go duration.
    #[error("{CONFIGMAP_NAME}: key {template:?}: timeout {value:?} {why}")]
    BadTimeout {
        /// The template.
        template: String,
        /// The value as written.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// `image` set where no container of ours runs, or blank.
    #[error("{CONFIGMAP_NAME}: key {template:?}: image {why}")]
    BadImage {
        /// The template.
        template: String,
        /// What is wrong.
        why: String,
    },
    /// A parameter the template's engine does not know.
    #[error(
        "{CONFIGMAP_NAME}: key {template:?}: parameter {name:?} is not a parameter of {template} (known: {known})"
    )]
    UnknownParameter {
        /// The template.
        template: String,
        /// The parameter.
        name: String,
        /// Its engine's parameters, comma-separated.
        known: String,
    },
}

impl CatalogError {
    /// The reason of the Warning Event on the ConfigMap (and of the log line's `error`).
    pub fn category(&self) -> &'static str {
        reasons::CATALOG_INVALID
    }
}

/// The parser's words without the values it quotes. serde writes a value of the wrong
/// type as `invalid type: string "…"`, and a default parameter can be a secret (a
/// password in `env`); the message goes to the ConfigMap's Warning Event, the log and
/// Operation status, so the quoted value is dropped. Field names, which serde quotes with
/// backticks, stay.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in message.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => escaped = false,
            }
        } else if c == '"' {
            out.push_str("\"…\"");
            quoted = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// One override, as written in the ConfigMap.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

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

    /// The parameter names its engine reads, or `None` when any name is accepted
    /// (workflow templates pass unknown names to the Workflow as arguments).
    pub fn parameter_names(&self) -> Option<&'static [&'static str]> {
        engines::parameter_names(self.type_, self.engine)
    }

    /// Whether its engine runs a container whose image the catalog may set.
    pub fn runs_image(&self) -> bool {
        matches!(self.engine, Engine::Job | Engine::HelmHookJob)
    }

    fn apply(&mut self, text: &str) -> Result<(), CatalogError> {
        let template = self.name.clone();
        let o: Override = serde_yaml::from_str(text).map_err(|e| CatalogError::Malformed {
            template: template.clone(),
            why: without_values(&e.to_string()),
        })?;
        if let Some(value) = o.timeout {
            let d = GoDuration::parse(&value).map_err(|e| CatalogError::BadTimeout {
                template: template.clone(),
                value: value.clone(),
                why: format!("is not a duration ({e})"),
            })?;
            if d.as_duration().is_zero() {
                return Err(CatalogError::BadTimeout {
                    template,
                    value,
                    why: "must be longer than zero".to_owned(),
                });
            }
            self.default_timeout = d.as_duration();
        }
        if let Some(image) = o.image {
            if !self.runs_image() {
                return Err(CatalogError::BadImage {
                    template: template.clone(),
                    why: format!(
                        "has no effect: the {} engine runs no container of the operator's",
                        self.engine
                    ),
                });
            }
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                return Err(CatalogError::BadImage {
                    template,
                    why: format!("{image:?} is not an image reference"),
                });
            }
            self.image = Some(image);
        }
        if let Some(parameters) = o.parameters {
            if let Some(known) = self.parameter_names()
                && let Some(name) = parameters.keys().find(|k| !known.contains(&k.as_str()))
            {
                return Err(CatalogError::UnknownParameter {
                    template: template.clone(),
                    name: name.clone(),
                    known: known.join(", "),
                });
            }
            self.parameters = parameters;
        }
        Ok(())
    }
}

/// The set of templates Operations may name, in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    templates: Vec<Template>,
    revision: String,
}

/// [`Catalog::revision`] of the built-in catalog (no ConfigMap, or one that does not parse).
pub const BUILTIN_REVISION: &str = "builtin";

impl Catalog {
    /// Which catalog this is: [`BUILTIN_REVISION`], or the resourceVersion of the
    /// ConfigMap whose overrides it carries (recorded on each Operation as
    /// `status.catalogRevision`).
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// This catalog, named as built from the ConfigMap at resourceVersion `revision`.
    pub fn at_revision(mut self, revision: &str) -> Self {
        revision.clone_into(&mut self.revision);
        self
    }

    /// The template called `name`, if the catalog has one.
    pub fn get(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// Every template, in catalog order.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.templates.iter()
    }

    /// This catalog with the overrides of a catalog ConfigMap's `data` applied (see the
    /// module docs for the format). All or nothing: on error `self` is what stays in force.
    pub fn with_overrides(&self, data: &BTreeMap<String, String>) -> Result<Catalog, CatalogError> {
        let mut next = self.clone();
        for (key, text) in data {
            let known = || {
                self.templates
                    .iter()
                    .map(Template::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let Some(template) = next.templates.iter_mut().find(|t| t.name == *key) else {
                return Err(CatalogError::UnknownTemplate {
                    key: key.clone(),
                    known: known(),
                });
            };
            template.apply(text)?;
        }
        Ok(next)
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
        revision: BUILTIN_REVISION.to_owned(),
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
    fn a_malformed_override_does_not_repeat_its_values() {
        let mut template = builtin().templates[0].clone();
        for text in [
            "parameters: DB_PASSWORD=s3cr3t\n",
            "parameters: \"quoted \\\"s3cr3t\\\" value\"\n",
            "timeout: [s3cr3t]\n",
        ] {
            let err = template.apply(text).expect_err(text).to_string();
            assert!(!err.contains("s3cr3t"), "{err}");
            assert!(err.contains("does not parse"), "{err}");
        }
        let err = template
            .apply("paramters: {}\n")
            .expect_err("typo")
            .to_string();
        assert!(
            err.contains("`paramters`"),
            "the unknown field is named: {err}"
        );
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

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_set_timeouts_images_and_parameter_defaults() {
        let catalog = builtin()
            .with_overrides(&data(&[
                (
                    "backup.velero",
                    "timeout: 45m\nparameters:\n  storageLocation: s3-eu\n",
                ),
                (
                    "runcommand.job",
                    r#"{"image": "tools:1.4", "timeout": "5m"}"#,
                ),
                ("upgrade.helmHookJob", "image: hooks:2\n"),
            ]))
            .expect("valid overrides");
        let backup = catalog.get("backup.velero").expect("backup.velero");
        assert_eq!(backup.default_timeout(), minutes(45));
        assert_eq!(backup.parameters()["storageLocation"], "s3-eu");
        assert_eq!(backup.image(), None);
        let job = catalog.get("runcommand.job").expect("runcommand.job");
        assert_eq!(
            (job.image(), job.default_timeout()),
            (Some("tools:1.4"), minutes(5))
        );
        let hook = catalog.get("upgrade.helmHookJob").expect("hook");
        assert_eq!(hook.image(), Some("hooks:2"));
        assert_eq!(hook.default_timeout(), minutes(30), "untouched fields stay");
        // Templates without a key are the built-in ones.
        assert_eq!(
            catalog.get("restore.velero"),
            builtin().get("restore.velero")
        );
        // An empty ConfigMap is the built-in catalog.
        assert_eq!(builtin().with_overrides(&BTreeMap::new()), Ok(builtin()));
    }

    #[test]
    fn a_bad_override_is_refused_whole_and_names_key_and_field() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (
                &[("backup.restic", "timeout: 5m")],
                &["\"backup.restic\"", "backup.velero"],
            ),
            (
                &[("backup.velero", "timeot: 5m")],
                &["\"backup.velero\"", "timeot"],
            ),
            (
                &[("backup.velero", "timeout: soon")],
                &["\"backup.velero\"", "\"soon\""],
            ),
            (
                &[("backup.velero", "timeout: 0s")],
                &["\"backup.velero\"", "longer than zero"],
            ),
            (
                &[("backup.velero", "image: velero:1")],
                &["\"backup.velero\"", "image", "velero engine"],
            ),
            (
                &[("runcommand.job", "image: ''")],
                &["\"runcommand.job\"", "image"],
            ),
            (
                &[("backup.velero", "parameters: {storageLocaton: x}")],
                &["\"backup.velero\"", "\"storageLocaton\"", "storageLocation"],
            ),
            (&[("backup.velero", "- a list")], &["\"backup.velero\""]),
            (
                &[
                    ("runcommand.job", "image: ok:1"),
                    ("upgrade.helm", "image: x:1"),
                ],
                &["\"upgrade.helm\"", "image"],
            ),
        ];
        for (pairs, needles) in cases {
            let err = builtin()
                .with_overrides(&data(pairs))
                .expect_err("must be refused");
            let text = err.to_string();
            for needle in *needles {
                assert!(text.contains(needle), "{text:?} lacks {needle:?}");
            }
            assert!(text.starts_with(CONFIGMAP_NAME), "{text}");
            assert_eq!(err.category(), "OperationCatalogInvalid");
        }
    }

    #[test]
    fn workflow_templates_take_any_parameter() {
        let catalog = builtin()
            .with_overrides(&data(&[(
                "migration.workflow",
                "parameters: {workflowTemplate: migrate, dryRun: 'false'}",
            )]))
            .expect("workflow parameters are open");
        let t = catalog.get("migration.workflow").expect("template");
        assert_eq!(t.parameters()["dryRun"], "false");
        assert_eq!(t.parameter_names(), None);
    }

    /// The example in the module docs is a valid ConfigMap.
    #[test]
    fn the_documented_example_parses() {
        let doc: serde_yaml::Value = serde_yaml::from_str(
            "data:\n  backup.velero: |\n    timeout: 45m                 # Go duration, > 0\n    parameters:\n      storageLocation: s3-eu\n      veleroNamespace: velero\n  runcommand.job: |\n    image: registry.example.com/tools:1.4   # container image of the Job\n    timeout: 5m\n",
        )
        .expect("yaml");
        let data: BTreeMap<String, String> =
            serde_yaml::from_value(doc["data"].clone()).expect("string map");
        let catalog = builtin()
            .with_overrides(&data)
            .expect("the example is valid");
        assert_eq!(
            catalog.get("runcommand.job").and_then(Template::image),
            Some("registry.example.com/tools:1.4")
        );
    }
}
