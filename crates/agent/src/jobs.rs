//! Control-plane jobs: validation (pure), application with server-side apply, and the
//! long-poll loop of Pull mode.
//!
//! A job goes through, in order: the document size limit → parsing into a [`JobDocument`]
//! (and its `spec` into the CRD's typed spec) → names (DNS-1123), the job id and the
//! label values it will write → `cluster_id` equals ours → the job id is not reused with
//! different content (this process's memory) → the target namespace is managed (except for
//! `ManageNamespace` and `UnmanageNamespace`) → the job id is not reused with different
//! content (the digest annotation on the target object) → server-side apply. Every refusal
//! is a [`Rejection`] with a stable [`Rejection::category`]; the loop reports it, tells the
//! [`JobObserver`] (which publishes the `JobRejected` audit event built by
//! [`rejection_event`]) and goes on with the next job.
//!
//! Invariants:
//! * idempotent by job id: everything a job writes carries the label
//!   `app.vworkspace.io/job-id` and the annotation [`JOB_DIGEST`] (a digest of the job's
//!   document text), and is written by server-side apply with field manager
//!   `vworkspace-agent`; applying the same job again (after a crash, or a redelivery because
//!   the status report was lost) changes nothing — same object, same `resourceVersion` —
//!   and reports `applied` again;
//! * force is used only on objects that already carry a job-id label (objects the agent
//!   owns); on anything else a field owned by another manager is a `Conflict` rejection,
//!   never silently taken over;
//! * `CreateOperation` never rewrites an existing Operation (its spec is immutable);
//!   `CancelOperation` applies the Operation's current spec plus `cancel: true`, so it never
//!   drops a field the agent applied earlier; `DeleteApplicationInstance` of a missing
//!   object, `UnmanageNamespace` of a missing or unmanaged namespace are `applied`;
//! * transient failures (API server unreachable, 5xx, 429) are not outcomes: the job is
//!   retried in place with backoff, and later jobs wait, so jobs apply in order;
//! * messages name the job, the object and the reason, never values from the spec
//!   (chart values may hold secrets): serde's messages are scrubbed of quoted values;
//! * `vworkspace_operator_pull_job_lag_seconds` is the age of the oldest fetched, not yet
//!   applied job (`None` once every fetched job has an outcome), and
//!   `vworkspace_operator_applied_jobs_total` counts each applied job once per process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use vworkspace_api::agent_api::{Ack, Job, JobDocument, JobList, JobState, JobStatusReport};
use vworkspace_api::audit::{AuditSource, TransitionKey, event_id};
use vworkspace_api::labels::{
    ALLOWED_OPERATION_TEMPLATES, FIELD_MANAGER_AGENT, JOB_ID, MANAGED_BY, MANAGED_BY_VALUE, ORG_ID,
    is_managed,
};
use vworkspace_api::{
    ApplicationInstance, ApplicationInstanceSpec, AuditEvent, Operation, OperationSpec,
};
use vworkspace_telemetry::metrics::AgentMetrics;
use vworkspace_telemetry::without_quoted_values;

use crate::client::{HttpClient, LinkError, bounded};
use crate::shipper::Backoff;

/// Annotation next to the job-id label: the digest of the job's document.
pub const JOB_DIGEST: &str = "app.vworkspace.io/job-digest";
/// Default limit on a job's document, in bytes.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Audit event kind of a rejected job.
pub const JOB_REJECTED: &str = "JobRejected";

/// Why a job was refused. `Display` is the message reported to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The document is larger than the limit.
    #[error("the job document is {size} bytes; the limit is {limit}")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON, not an object, or no `type`.
    #[error("the job document is not a valid job: {0}")]
    MalformedJob(String),
    /// `type` names no known job.
    #[error("unknown job type: {0}")]
    UnknownJobType(String),
    /// A field is missing, unknown or of the wrong type.
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// `cluster_id` is not this cluster.
    #[error("the job is for cluster {got:?}, this is cluster {ours:?}")]
    WrongCluster {
        /// The job's.
        got: String,
        /// Ours.
        ours: String,
    },
    /// The target namespace is missing or not labelled managed-by=vworkspace.
    #[error("namespace {namespace:?} is not managed by vWorkspace: {why}")]
    NamespaceNotManaged {
        /// The namespace.
        namespace: String,
        /// Missing, or which label is absent.
        why: String,
    },
    /// A name is not a valid DNS-1123 name.
    #[error("invalid name in {field}: {why}")]
    InvalidName {
        /// Which field.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// The job id was seen before with a different document.
    #[error("job id {0:?} was already used for a different job")]
    JobIdReused(String),
    /// The object exists and is not ours to change this way.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The object to act on does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The API server refused the write (validation, admission, RBAC).
    #[error("Rejected by the API server: {0}")]
    ApiServer(String),
}

impl Rejection {
    /// Stable name: the audit event's `reason`, a log field.
    pub fn category(&self) -> &'static str {
        match self {
            Rejection::PayloadTooLarge { .. } => "PayloadTooLarge",
            Rejection::MalformedJob(_) => "MalformedJob",
            Rejection::UnknownJobType(_) => "UnknownJobType",
            Rejection::InvalidField(_) => "InvalidField",
            Rejection::WrongCluster { .. } => "WrongCluster",
            Rejection::NamespaceNotManaged { .. } => "NamespaceNotManaged",
            Rejection::InvalidName { .. } => "InvalidName",
            Rejection::JobIdReused(_) => "JobIdReused",
            Rejection::Conflict(_) => "Conflict",
            Rejection::NotFound(_) => "NotFound",
            Rejection::ApiServer(_) => "RejectedByAPIServer",
        }
    }
}

/// A job that passed the pure checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    /// The parsed document.
    pub document: JobDocument,
    /// Digest of the document text (the [`JOB_DIGEST`] annotation).
    pub digest: String,
}

/// Digest of a job's document: 32 hex characters of SHA-256 over its exact text.
pub fn document_digest(document: &str) -> String {
    let digest = Sha256::digest(document.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Removes values quoted in serde's messages (`string "..."`, ``integer `5` ``), keeping
/// field and variant names, so a message never echoes a payload value.
fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    for c in message.chars() {
        if c == '"' {
            if !in_quote {
                out.push_str("\"…\"");
            }
            in_quote = !in_quote;
            continue;
        }
        if !in_quote {
            out.push(c);
        }
    }
    // Scalars appear as e.g. "integer `5`": drop what follows these words.
    for word in ["integer `", "floating point `", "boolean `", "character `"] {
        while let Some(start) = out.find(word) {
            let from = start + word.len();
            let Some(len) = out[from..].find('`') else {
                break;
            };
            out.replace_range(
                start..from + len + 1,
                &format!("{}…", word.trim_end_matches(" `")),
            );
        }
    }
    bounded(&out)
}

fn classify_parse_error(error: &serde_json::Error) -> Rejection {
    let text = scrub(&error.to_string());
    if !matches!(error.classify(), serde_json::error::Category::Data) {
        return Rejection::MalformedJob(text);
    }
    if text.contains("unknown variant") {
        Rejection::UnknownJobType(text)
    } else {
        Rejection::InvalidField(text)
    }
}

/// A DNS-1123 label (namespaces): at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns1123_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "{} characters; a DNS-1123 label has 1 to 63",
            name.len()
        ));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("a DNS-1123 label consists of lower-case letters, digits and '-', starting and ending with a letter or digit".to_owned())
    }
}

/// A DNS-1123 subdomain (object names): at most 253, dot-separated labels.
pub fn dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "{} characters; a DNS-1123 subdomain has 1 to 253",
            name.len()
        ));
    }
    if name.split('.').all(|part| dns1123_label(part).is_ok()) {
        Ok(())
    } else {
        Err("a DNS-1123 subdomain consists of lower-case letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit".to_owned())
    }
}

/// A label value: at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub fn label_value(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("a label value has 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".to_owned())
    }
}

/// The pure checks: size, parse, typed spec, names, label values, cluster.
pub fn validate(
    job: &Job,
    cluster_id: &str,
    max_document_bytes: usize,
) -> Result<ValidJob, Rejection> {
    if job.document.len() > max_document_bytes {
        return Err(Rejection::PayloadTooLarge {
            size: job.document.len(),
            limit: max_document_bytes,
        });
    }
    let value: Value = serde_json::from_str(&job.document).map_err(|e| classify_parse_error(&e))?;
    match value.get("type") {
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(Rejection::MalformedJob(
                "`type` must be a string".to_owned(),
            ));
        }
        None if value.is_object() => {
            return Err(Rejection::MalformedJob("missing field `type`".to_owned()));
        }
        None => {
            return Err(Rejection::MalformedJob(
                "the document must be a JSON object".to_owned(),
            ));
        }
    }
    let document: JobDocument =
        serde_json::from_value(value).map_err(|e| classify_parse_error(&e))?;
    label_value(&job.id).map_err(|why| Rejection::InvalidField(format!("job id: {why}")))?;
    dns1123_label(document.namespace()).map_err(|why| Rejection::InvalidName {
        field: "namespace",
        why,
    })?;
    match &document {
        JobDocument::ApplyApplicationInstance { name, spec, .. } => {
            dns1123_subdomain(name).map_err(|why| Rejection::InvalidName { field: "name", why })?;
            serde_json::from_value::<ApplicationInstanceSpec>(Value::Object(spec.clone()))
                .map_err(|e| Rejection::InvalidField(format!("spec: {}", scrub(&e.to_string()))))?;
        }
        JobDocument::CreateOperation { name, spec, .. } => {
            dns1123_subdomain(name).map_err(|why| Rejection::InvalidName { field: "name", why })?;
            serde_json::from_value::<OperationSpec>(Value::Object(spec.clone()))
                .map_err(|e| Rejection::InvalidField(format!("spec: {}", scrub(&e.to_string()))))?;
        }
        JobDocument::DeleteApplicationInstance { name, .. }
        | JobDocument::CancelOperation { name, .. } => {
            dns1123_subdomain(name).map_err(|why| Rejection::InvalidName { field: "name", why })?;
        }
        JobDocument::ManageNamespace {
            org_id,
            allowed_operation_templates,
            ..
        } => {
            label_value(org_id).map_err(|why| Rejection::InvalidField(format!("org_id: {why}")))?;
            for template in allowed_operation_templates {
                let ok = template.split_once('.').is_some_and(|(verb, engine)| {
                    !verb.is_empty()
                        && !engine.is_empty()
                        && verb.bytes().all(|b| b.is_ascii_lowercase())
                        && engine.bytes().all(|b| b.is_ascii_alphabetic())
                });
                if !ok {
                    return Err(Rejection::InvalidField(
                        "allowed_operation_templates: each entry is <verb>.<engine>, e.g. backup.velero".to_owned(),
                    ));
                }
            }
        }
        JobDocument::UnmanageNamespace { .. } => {}
    }
    if document.cluster_id() != cluster_id {
        return Err(Rejection::WrongCluster {
            got: document.cluster_id().to_owned(),
            ours: cluster_id.to_owned(),
        });
    }
    Ok(ValidJob {
        document,
        digest: document_digest(&job.document),
    })
}

/// What applying a job came to.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Applied (or found applied); the summary is the report's message.
    Applied {
        /// The parsed document.
        document: JobDocument,
        /// What was done, e.g. "ApplicationInstance org-a/nextcloud applied".
        summary: String,
    },
    /// Refused.
    Rejected {
        /// The parsed document when the job got that far (for the namespace).
        document: Option<JobDocument>,
        /// Why.
        rejection: Rejection,
    },
}

impl JobOutcome {
    /// The status report for the control plane.
    pub fn report(&self) -> JobStatusReport {
        match self {
            JobOutcome::Applied { summary, .. } => JobStatusReport {
                state: JobState::Applied,
                message: summary.clone(),
            },
            JobOutcome::Rejected { rejection, .. } => JobStatusReport {
                state: JobState::Rejected,
                message: format!("{}: {rejection}", rejection.category()),
            },
        }
    }
}

/// A failure that is not the job's fault; the job is retried as it is.
#[derive(Debug, thiserror::Error)]
#[error("transient Kubernetes API failure: {0}")]
pub struct Transient(String);

/// Job ids remembered per process; the oldest are forgotten beyond this (the digest
/// annotation on the objects still catches a reused id after that).
pub const REMEMBERED_JOBS: usize = 4096;

/// Applies jobs to the cluster through a `kube::Client`; remembers, for this process, the
/// digest and outcome of the last [`REMEMBERED_JOBS`] job ids it has seen.
#[derive(Clone)]
pub struct JobApplier {
    client: Client,
    cluster_id: String,
    max_document_bytes: usize,
    seen: Arc<Mutex<Memory>>,
}

#[derive(Debug, Clone)]
struct Seen {
    digest: String,
    outcome: Option<JobOutcome>,
}

/// A bounded id → [`Seen`] map that forgets the oldest ids first.
#[derive(Debug, Default)]
struct Memory {
    map: HashMap<String, Seen>,
    order: VecDeque<String>,
}

impl Memory {
    fn get(&self, id: &str) -> Option<&Seen> {
        self.map.get(id)
    }

    fn insert(&mut self, id: String, seen: Seen) {
        if self.map.insert(id.clone(), seen).is_none() {
            self.order.push_back(id);
            while self.order.len() > REMEMBERED_JOBS {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

impl std::fmt::Debug for JobApplier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobApplier")
            .field("cluster_id", &self.cluster_id)
            .field("max_document_bytes", &self.max_document_bytes)
            .finish_non_exhaustive()
    }
}

fn params(force: bool) -> PatchParams {
    let mut p = PatchParams::apply(FIELD_MANAGER_AGENT).validation_strict();
    if force {
        p = p.force();
    }
    p
}

fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// The API server's message, without the values it quotes: a 422 repeats the refused
/// value, which may be a secret from the job's document (a password in a repository URL).
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => bounded(&without_quoted_values(&status.message)),
        other => bounded(&other.to_string()),
    }
}

/// Maps a failed write: transient → retry; 409 → conflict; any other refusal → rejection.
fn write_error(error: kube::Error, what: &str) -> Result<JobOutcomeOrRejection, Transient> {
    if is_transient(&error) {
        return Err(Transient(api_message(&error)));
    }
    Ok(Err(match api_code(&error) {
        Some(409) => Rejection::Conflict(format!("{what}: {}", api_message(&error))),
        _ => Rejection::ApiServer(format!("{what}: {}", api_message(&error))),
    }))
}

type JobOutcomeOrRejection = Result<String, Rejection>;

fn read_error(error: kube::Error) -> Transient {
    Transient(api_message(&error))
}

impl JobApplier {
    /// An applier for cluster `cluster_id` with the default document limit.
    pub fn new(client: Client, cluster_id: impl Into<String>) -> Self {
        JobApplier {
            client,
            cluster_id: cluster_id.into(),
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            seen: Arc::default(),
        }
    }

    /// Changes the document size limit.
    pub fn with_max_document_bytes(mut self, limit: usize) -> Self {
        self.max_document_bytes = limit;
        self
    }

    /// The outcome recorded for a job already handled by this process (same id and same
    /// document), so a redelivery reports again without acting again.
    pub fn known_outcome(&self, job: &Job) -> Option<JobOutcome> {
        let digest = document_digest(&job.document);
        let seen = self.seen.lock().ok()?;
        seen.get(&job.id)
            .filter(|s| s.digest == digest)
            .and_then(|s| s.outcome.clone())
    }

    /// Validates and applies one job. `Err` only for transient failures (retry the same job).
    pub async fn apply(&self, job: &Job) -> Result<JobOutcome, Transient> {
        let outcome = self.apply_inner(job).await?;
        if let Ok(mut seen) = self.seen.lock() {
            let digest = document_digest(&job.document);
            // A JobIdReused rejection must not replace what the id first stood for.
            let reused = matches!(
                &outcome,
                JobOutcome::Rejected {
                    rejection: Rejection::JobIdReused(_),
                    ..
                }
            );
            if !reused {
                seen.insert(
                    job.id.clone(),
                    Seen {
                        digest,
                        outcome: Some(outcome.clone()),
                    },
                );
            }
        }
        Ok(outcome)
    }

    async fn apply_inner(&self, job: &Job) -> Result<JobOutcome, Transient> {
        let valid = match validate(job, &self.cluster_id, self.max_document_bytes) {
            Ok(v) => v,
            Err(rejection) => {
                return Ok(JobOutcome::Rejected {
                    document: None,
                    rejection,
                });
            }
        };
        let reject = |rejection: Rejection| JobOutcome::Rejected {
            document: Some(valid.document.clone()),
            rejection,
        };
        let reused = self
            .seen
            .lock()
            .is_ok_and(|seen| seen.get(&job.id).is_some_and(|s| s.digest != valid.digest));
        if reused {
            return Ok(reject(Rejection::JobIdReused(job.id.clone())));
        }
        let namespace = valid.document.namespace().to_owned();
        let exempt = matches!(
            valid.document,
            JobDocument::ManageNamespace { .. } | JobDocument::UnmanageNamespace { .. }
        );
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = namespaces.get_opt(&namespace).await.map_err(read_error)?;
        if !exempt {
            let why = match &ns {
                None => Some("it does not exist".to_owned()),
                Some(ns) if !is_managed(ns.labels()) => Some(format!(
                    "it lacks the label {MANAGED_BY}={MANAGED_BY_VALUE}"
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Ok(reject(Rejection::NamespaceNotManaged { namespace, why }));
            }
        }
        let result = match &valid.document {
            JobDocument::ApplyApplicationInstance { name, spec, .. } => {
                self.apply_instance(job, &valid.digest, &namespace, name, spec)
                    .await?
            }
            JobDocument::DeleteApplicationInstance { name, .. } => {
                self.delete_instance(&namespace, name).await?
            }
            JobDocument::CreateOperation { name, spec, .. } => {
                self.create_operation(job, &valid.digest, &namespace, name, spec)
                    .await?
            }
            JobDocument::CancelOperation { name, .. } => {
                self.cancel_operation(&namespace, name).await?
            }
            JobDocument::ManageNamespace {
                org_id,
                allowed_operation_templates,
                ..
            } => {
                self.manage_namespace(
                    job,
                    &valid.digest,
                    ns.as_ref(),
                    &namespace,
                    org_id,
                    allowed_operation_templates,
                )
                .await?
            }
            JobDocument::UnmanageNamespace { .. } => {
                self.unmanage_namespace(job, &valid.digest, ns.as_ref(), &namespace)
                    .await?
            }
        };
        Ok(match result {
            Ok(summary) => JobOutcome::Applied {
                document: valid.document,
                summary,
            },
            Err(rejection) => reject(rejection),
        })
    }

    /// `JobIdReused` when `meta` carries this job's id with another digest; whether the
    /// object carries a job label at all (it is then ours and may be forced).
    fn ours(
        job: &Job,
        digest: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<bool, Rejection> {
        match labels.get(JOB_ID) {
            Some(id) if id == &job.id => {
                if annotations.get(JOB_DIGEST).is_some_and(|d| d != digest) {
                    Err(Rejection::JobIdReused(job.id.clone()))
                } else {
                    Ok(true)
                }
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    async fn apply_instance(
        &self,
        job: &Job,
        digest: &str,
        namespace: &str,
        name: &str,
        spec: &Map<String, Value>,
    ) -> Result<JobOutcomeOrRejection, Transient> {
        let api: Api<ApplicationInstance> = Api::namespaced(self.client.clone(), namespace);
        let existing = api.get_opt(name).await.map_err(read_error)?;
        let force = match &existing {
            Some(obj) => match Self::ours(job, digest, obj.labels(), obj.annotations()) {
                Ok(ours) => ours,
                Err(r) => return Ok(Err(r)),
            },
            None => true,
        };
        let patch = json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "ApplicationInstance",
            "metadata": {
                "name": name,
                "labels": { JOB_ID: job.id },
                "annotations": { JOB_DIGEST: digest },
            },
            "spec": spec,
        });
        let what = format!("ApplicationInstance {namespace}/{name}");
        match api.patch(name, &params(force), &Patch::Apply(&patch)).await {
            Ok(_) => Ok(Ok(format!("{what} applied"))),
            Err(e) => write_error(e, &what),
        }
    }

    async fn delete_instance(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<JobOutcomeOrRejection, Transient> {
        let api: Api<ApplicationInstance> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("ApplicationInstance {namespace}/{name}");
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(Ok(format!("{what} deleted"))),
            Err(e) if api_code(&e) == Some(404) => Ok(Ok(format!("{what} already absent"))),
            Err(e) => write_error(e, &what),
        }
    }

    async fn create_operation(
        &self,
        job: &Job,
        digest: &str,
        namespace: &str,
        name: &str,
        spec: &Map<String, Value>,
    ) -> Result<JobOutcomeOrRejection, Transient> {
        let api: Api<Operation> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("Operation {namespace}/{name}");
        if let Some(existing) = api.get_opt(name).await.map_err(read_error)? {
            return Ok(match existing.labels().get(JOB_ID) {
                Some(id) if id == &job.id => {
                    if existing
                        .annotations()
                        .get(JOB_DIGEST)
                        .is_some_and(|d| d != digest)
                    {
                        Err(Rejection::JobIdReused(job.id.clone()))
                    } else {
                        Ok(format!("{what} already created by this job"))
                    }
                }
                Some(_) => Err(Rejection::Conflict(format!(
                    "{what} already exists, created by another job"
                ))),
                None => Err(Rejection::Conflict(format!(
                    "{what} already exists and was not created by a job"
                ))),
            });
        }
        let patch = json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "Operation",
            "metadata": {
                "name": name,
                "labels": { JOB_ID: job.id },
                "annotations": { JOB_DIGEST: digest },
            },
            "spec": spec,
        });
        match api.patch(name, &params(false), &Patch::Apply(&patch)).await {
            Ok(_) => Ok(Ok(format!("{what} created"))),
            Err(e) => write_error(e, &what),
        }
    }

    async fn cancel_operation(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<JobOutcomeOrRejection, Transient> {
        let api: Api<Operation> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("Operation {namespace}/{name}");
        let Some(existing) = api.get_opt(name).await.map_err(read_error)? else {
            return Ok(Err(Rejection::NotFound(format!("{what} does not exist"))));
        };
        if existing.spec.cancel {
            return Ok(Ok(format!("{what} already cancelled")));
        }
        let mut spec = match serde_json::to_value(&existing.spec) {
            Ok(Value::Object(map)) => map,
            _ => return Err(Transient(format!("{what}: its spec did not serialise"))),
        };
        spec.insert("cancel".to_owned(), Value::Bool(true));
        // Re-state what the agent may own already (the creating job's label and digest), so
        // this apply does not release them; values equal to the current ones never conflict.
        let mut labels = Map::new();
        if let Some(id) = existing.labels().get(JOB_ID) {
            labels.insert(JOB_ID.to_owned(), Value::String(id.clone()));
        }
        let mut annotations = Map::new();
        if let Some(d) = existing.annotations().get(JOB_DIGEST) {
            annotations.insert(JOB_DIGEST.to_owned(), Value::String(d.clone()));
        }
        let patch = json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "Operation",
            "metadata": { "name": name, "labels": labels, "annotations": annotations },
            "spec": spec,
        });
        match api.patch(name, &params(false), &Patch::Apply(&patch)).await {
            Ok(_) => Ok(Ok(format!("{what} cancelled"))),
            Err(e) => write_error(e, &what),
        }
    }

    async fn manage_namespace(
        &self,
        job: &Job,
        digest: &str,
        existing: Option<&Namespace>,
        namespace: &str,
        org_id: &str,
        templates: &[String],
    ) -> Result<JobOutcomeOrRejection, Transient> {
        let force = match existing {
            Some(ns) => match Self::ours(job, digest, ns.labels(), ns.annotations()) {
                Ok(ours) => ours,
                Err(r) => return Ok(Err(r)),
            },
            None => true,
        };
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": { MANAGED_BY: MANAGED_BY_VALUE, ORG_ID: org_id, JOB_ID: job.id },
                "annotations": {
                    ALLOWED_OPERATION_TEMPLATES: templates.join(","),
                    JOB_DIGEST: digest,
                },
            },
        });
        let api: Api<Namespace> = Api::all(self.client.clone());
        let what = format!("Namespace {namespace}");
        match api
            .patch(namespace, &params(force), &Patch::Apply(&patch))
            .await
        {
            Ok(_) => Ok(Ok(format!("{what} managed for org {org_id}"))),
            Err(e) => write_error(e, &what),
        }
    }

    async fn unmanage_namespace(
        &self,
        job: &Job,
        digest: &str,
        existing: Option<&Namespace>,
        namespace: &str,
    ) -> Result<JobOutcomeOrRejection, Transient> {
        let what = format!("Namespace {namespace}");
        let Some(ns) = existing else {
            return Ok(Ok(format!("{what} does not exist; nothing to unmanage")));
        };
        if let Err(r) = Self::ours(job, digest, ns.labels(), ns.annotations()) {
            return Ok(Err(r));
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        // Applying only the job's own label and digest releases every other field the agent
        // applied (managed-by, org-id, allowed templates): SSA removes what a manager stops
        // stating and nobody else owns.
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": { JOB_ID: job.id },
                "annotations": { JOB_DIGEST: digest },
            },
        });
        let after = match api
            .patch(namespace, &params(true), &Patch::Apply(&patch))
            .await
        {
            Ok(ns) => ns,
            Err(e) => return write_error(e, &what),
        };
        // Labels another manager set (e.g. kubectl) survive the release; remove them
        // explicitly, since an unmanaged namespace must not look managed.
        let leftover_label = after.labels().contains_key(MANAGED_BY);
        let leftover_annotation = after
            .annotations()
            .contains_key(ALLOWED_OPERATION_TEMPLATES);
        if leftover_label || leftover_annotation {
            let mut metadata = Map::new();
            if leftover_label {
                metadata.insert("labels".to_owned(), json!({ MANAGED_BY: null }));
            }
            if leftover_annotation {
                metadata.insert(
                    "annotations".to_owned(),
                    json!({ ALLOWED_OPERATION_TEMPLATES: null }),
                );
            }
            let merge = json!({ "metadata": metadata });
            if let Err(e) = api
                .patch(
                    namespace,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER_AGENT.to_owned()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&merge),
                )
                .await
            {
                return write_error(e, &what);
            }
        }
        Ok(Ok(format!("{what} no longer managed")))
    }
}

/// What the operator does with job outcomes: publish the `JobRejected` audit event
/// ([`rejection_event`]) and an info log for applied jobs.
pub trait JobObserver: Send + Sync {
    /// The job was applied.
    fn applied(&self, job: &Job, document: &JobDocument);
    /// The job was rejected; `document` is set when it parsed (its namespace belongs in
    /// the audit event, see [`rejection_event`]).
    fn rejected(&self, job: &Job, document: Option<&JobDocument>, rejection: &Rejection);
}

/// The audit event of a rejected job: `kind` `JobRejected`, `reason` the category, an
/// `event_id` keyed on the job id (one event per job and reason), the namespace when the
/// document got parsed, and a message naming the job and the reason without payload values.
pub fn rejection_event(
    source: &AuditSource,
    job: &Job,
    namespace: Option<&str>,
    rejection: &Rejection,
    occurred_at: Time,
) -> AuditEvent {
    let reason = rejection.category();
    let id = event_id(
        &source.cluster_id,
        JOB_REJECTED,
        &TransitionKey {
            uid: &job.id,
            generation: 0,
            condition: "",
            reason,
            occurrence: 1,
        },
    );
    AuditEvent {
        event_id: id,
        cluster_id: source.cluster_id.clone(),
        org_id: source.org_id.clone(),
        occurred_at,
        namespace: namespace.map(str::to_owned),
        application_instance: None,
        operation_id: None,
        kind: JOB_REJECTED.to_owned(),
        reason: reason.to_owned(),
        message: bounded(&format!("Job {} rejected ({reason}): {rejection}", job.id)),
        operator_version: source.operator_version.clone(),
    }
}

/// Settings of the long-poll loop.
#[derive(Debug, Clone, Copy)]
pub struct JobLoopConfig {
    /// `wait_seconds` of each long-poll.
    pub wait: Duration,
    /// Jobs per fetch at most.
    pub limit: u32,
    /// Retry delays for failed fetches, reports and transient apply failures.
    pub backoff: Backoff,
    /// Attempts of one status report before leaving the job to redelivery.
    pub report_attempts: u32,
}

impl Default for JobLoopConfig {
    fn default() -> Self {
        JobLoopConfig {
            wait: Duration::from_secs(30),
            limit: 20,
            backoff: Backoff {
                min: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            report_attempts: 5,
        }
    }
}

/// Where jobs come from and where their outcomes go: the HTTP agent API in Pull mode.
pub trait JobSource: Send + Sync {
    /// Long-polls for jobs not yet acknowledged, oldest first.
    fn fetch(
        &self,
        wait: Duration,
        limit: u32,
    ) -> impl Future<Output = Result<JobList, LinkError>> + Send;
    /// Reports a job's outcome.
    fn report(
        &self,
        id: &str,
        report: &JobStatusReport,
    ) -> impl Future<Output = Result<Ack, LinkError>> + Send;
}

impl<S: JobSource + ?Sized> JobSource for Arc<S> {
    fn fetch(
        &self,
        wait: Duration,
        limit: u32,
    ) -> impl Future<Output = Result<JobList, LinkError>> + Send {
        (**self).fetch(wait, limit)
    }

    fn report(
        &self,
        id: &str,
        report: &JobStatusReport,
    ) -> impl Future<Output = Result<Ack, LinkError>> + Send {
        (**self).report(id, report)
    }
}

impl JobSource for HttpClient {
    fn fetch(
        &self,
        wait: Duration,
        limit: u32,
    ) -> impl Future<Output = Result<JobList, LinkError>> + Send {
        self.fetch_jobs(wait, limit)
    }

    fn report(
        &self,
        id: &str,
        report: &JobStatusReport,
    ) -> impl Future<Output = Result<Ack, LinkError>> + Send {
        self.report_job(id, report)
    }
}

/// The Pull-mode job loop: long-poll, apply each job in order, report, repeat, until
/// `stop` turns true.
pub async fn run_job_loop<S: JobSource>(
    client: S,
    applier: JobApplier,
    observer: Arc<dyn JobObserver>,
    metrics: Option<AgentMetrics>,
    config: JobLoopConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut fetch_attempt = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let fetched = tokio::select! {
            r = client.fetch(config.wait, config.limit) => r,
            _ = stop.changed() => return,
        };
        let jobs = match fetched {
            Ok(list) => {
                fetch_attempt = 0;
                list.jobs
            }
            Err(error) => {
                let delay = match &error {
                    LinkError::RateLimited { retry_after } => *retry_after,
                    _ => config.backoff.delay(fetch_attempt),
                };
                fetch_attempt = fetch_attempt.saturating_add(1);
                tracing::warn!(%error, category = error.category(), "fetching jobs failed");
                if sleep_or_stop(delay, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        if jobs.is_empty() {
            continue;
        }
        let fetched_at = SystemTime::now();
        if let Some(m) = &metrics {
            m.set_oldest_pending_job(Some(fetched_at));
        }
        for (index, job) in jobs.iter().enumerate() {
            let (outcome, fresh) = match applier.known_outcome(job) {
                Some(outcome) => (outcome, false),
                None => {
                    let mut attempt = 0u32;
                    loop {
                        match applier.apply(job).await {
                            Ok(outcome) => break (outcome, true),
                            Err(error) => {
                                tracing::warn!(job_id = %job.id, %error, "applying a job failed; retrying it");
                                if sleep_or_stop(config.backoff.delay(attempt), &mut stop).await {
                                    return;
                                }
                                attempt = attempt.saturating_add(1);
                            }
                        }
                    }
                }
            };
            if index + 1 == jobs.len() {
                // Every fetched job has an outcome: nothing is waiting to be applied, even
                // while the last report is still being retried.
                if let Some(m) = &metrics {
                    m.set_oldest_pending_job(None);
                }
            }
            let report = outcome.report();
            if fresh {
                match &outcome {
                    JobOutcome::Applied { document, summary } => {
                        tracing::info!(job_id = %job.id, job_type = document.type_name(), namespace = document.namespace(), "{summary}");
                        if let Some(m) = &metrics {
                            m.inc_applied_jobs();
                        }
                        observer.applied(job, document);
                    }
                    JobOutcome::Rejected {
                        rejection,
                        document,
                    } => {
                        tracing::warn!(
                            job_id = %job.id,
                            reason = rejection.category(),
                            namespace = document.as_ref().map(|d| d.namespace()),
                            "job rejected: {rejection}"
                        );
                        observer.rejected(job, document.as_ref(), rejection);
                    }
                }
            }
            let mut attempt = 0u32;
            loop {
                match client.report(&job.id, &report).await {
                    Ok(_) => break,
                    Err(error)
                        if attempt + 1 >= config.report_attempts || !error.is_transient() =>
                    {
                        // The control plane redelivers an unacknowledged job; the outcome
                        // recorded above answers it without acting again.
                        tracing::warn!(job_id = %job.id, %error, "reporting a job's status failed; it will be redelivered");
                        break;
                    }
                    Err(error) => {
                        let delay = match &error {
                            LinkError::RateLimited { retry_after } => *retry_after,
                            _ => config.backoff.delay(attempt),
                        };
                        attempt += 1;
                        if sleep_or_stop(delay, &mut stop).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Sleeps `delay`; true when `stop` fired instead.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests;
