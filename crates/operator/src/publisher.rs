//! The one choke point for condition transitions.
//!
//! Every transition a controller decides on goes through [`Publisher::publish`], which
//! writes an `events.k8s.io/v1` Event on the object *and* hands the same transition,
//! as the spec's audit payload, to the audit sink. Because both come from one call
//! they cannot diverge.
//!
//! What is published is decided elsewhere, once: `vworkspace_reconcile::transitions`
//! returns [`TransitionRecord`]s, which the controllers publish *before* persisting the
//! status that records them. A crash (or a failed status write) in between makes the
//! next reconcile compute the same records with the same ids again; publishing them a
//! second time is then a no-op, so each transition is announced exactly once.
//!
//! Invariants:
//! * the Event's name is derived from the audit `event_id`, so a transition published
//!   twice does not create a second Event (the API answers 409), while a *new* transition
//!   always has a new id and a new Event — it is never folded into an earlier one;
//! * a 409 means the transition was published before. When this process handed its audit
//!   event to the sink (a retry after a failed status write), nothing is sent again. When
//!   it did not, an earlier process (or replica) published it and may have died with the
//!   audit event still in its buffer and before the status recording the transition was
//!   written, so the link's replay from status cannot find it either: the audit event is
//!   handed over again, and the receiver deduplicates it by `event_id`
//!   (`tests/kill_under_load.rs` has the case);
//! * messages are built by the controllers from names and reasons, never from secret
//!   values, and carry no timestamps;
//! * publishing never fails a reconcile: an Event that cannot be written is logged and
//!   the audit event is still submitted (the sink is non-blocking).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::oneshot;
use vworkspace_api::conditions::events;
use vworkspace_api::{AuditEvent, AuditSource, TransitionRecord};

/// Where audit events go. `submit` must not block: reconcilers never wait on the link.
pub trait AuditSink: Send + Sync {
    /// Accept one event (never blocks, never fails the caller).
    fn submit(&self, event: AuditEvent);
    /// Resolve once everything submitted before the call is written out or handed over.
    fn flush(&self) -> BoxFuture<'_, ()>;
    /// Flush and stop accepting events (a clean shutdown).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Drops every event. Used when no audit destination is configured; the control-plane
/// shipper takes its place in Pull mode.
#[derive(Debug, Default)]
pub struct DiscardAuditSink;

impl AuditSink for DiscardAuditSink {
    fn submit(&self, event: AuditEvent) {
        tracing::debug!(event_id = %event.event_id, "no audit destination configured; event not kept");
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

enum FileMessage {
    Line(Vec<u8>),
    Flush(oneshot::Sender<()>),
}

/// Appends each event as one JSON line to a file (`--audit-log-file`), so the stream can
/// be read with `jq` and by tests of the built binary. The file is written by a thread of
/// its own, so no file I/O ever runs on the async runtime; `submit` only queues the line.
#[derive(Debug)]
pub struct FileAuditSink {
    tx: Mutex<Option<mpsc::Sender<FileMessage>>>,
}

impl FileAuditSink {
    /// Open (append) or create `path` and start the writer thread.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel::<FileMessage>();
        std::thread::Builder::new()
            .name("audit-file".into())
            .spawn(move || {
                for message in rx {
                    match message {
                        FileMessage::Line(line) => {
                            if let Err(err) = file.write_all(&line) {
                                tracing::error!(error = %err, "cannot append to the audit log file");
                            }
                        }
                        FileMessage::Flush(done) => {
                            if let Err(err) = file.flush().and_then(|()| file.sync_data()) {
                                tracing::error!(error = %err, "cannot flush the audit log file");
                            }
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
        })
    }

    fn sender(&self) -> Option<mpsc::Sender<FileMessage>> {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn flush_with(tx: Option<mpsc::Sender<FileMessage>>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (done_tx, done_rx) = oneshot::channel();
            if let Some(tx) = tx
                && tx.send(FileMessage::Flush(done_tx)).is_ok()
            {
                // Bounded: a wedged disk must not hold shutdown forever.
                let _ = tokio::time::timeout(Duration::from_secs(10), done_rx).await;
            }
        })
    }
}

impl AuditSink for FileAuditSink {
    fn submit(&self, event: AuditEvent) {
        let Ok(mut line) = serde_json::to_vec(&event) else {
            return;
        };
        line.push(b'\n');
        match self.sender() {
            Some(tx) if tx.send(FileMessage::Line(line)).is_ok() => {}
            _ => {
                tracing::warn!(event_id = %event.event_id, "audit log file is closed; event not written")
            }
        }
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        Self::flush_with(self.sender())
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        // Taking the sender ends the writer thread once it has drained the queue.
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Self::flush_with(tx)
    }
}

/// Fans one event out to several sinks.
pub struct Tee(pub Vec<Arc<dyn AuditSink>>);

impl AuditSink for Tee {
    fn submit(&self, event: AuditEvent) {
        for sink in &self.0 {
            sink.submit(event.clone());
        }
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            futures::future::join_all(self.0.iter().map(|s| s.flush())).await;
        })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            futures::future::join_all(self.0.iter().map(|s| s.close())).await;
        })
    }
}

/// What the audit event says about the object besides the transition itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditContext<'a> {
    /// The ApplicationInstance concerned (the object itself, or an Operation's target).
    pub application_instance: Option<&'a str>,
    /// Set for Operations: their uid.
    pub operation_id: Option<&'a str>,
}

/// What became of one transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The Event was written and the audit event handed to the sink.
    New,
    /// The Event existed already: this transition was published before (a retry after a
    /// crash or a failed status write). Its audit event was handed over again only if this
    /// process had not done so itself.
    Repeated,
    /// The Event could not be written; the audit event was still handed to the sink.
    EventNotWritten,
}

/// Writes Events and audit events for transitions. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    source: AuditSource,
    reporting_instance: String,
    sink: Arc<dyn AuditSink>,
    submitted: Arc<Mutex<RecentIds>>,
}

/// The `event_id`s this process has handed to the sink, the most recent
/// [`RecentIds::CAPACITY`] of them (16 bytes each). A 409 for one of them is this
/// process's own retry; one that fell out of the window is handed over a second time,
/// which the receiver deduplicates.
#[derive(Debug, Default)]
struct RecentIds {
    set: std::collections::HashSet<u128>,
    order: std::collections::VecDeque<u128>,
}

impl RecentIds {
    const CAPACITY: usize = 8192;

    fn key(event_id: &str) -> Option<u128> {
        u128::from_str_radix(event_id, 16).ok()
    }

    fn contains(&self, event_id: &str) -> bool {
        Self::key(event_id).is_some_and(|k| self.set.contains(&k))
    }

    fn insert(&mut self, event_id: &str) {
        let Some(key) = Self::key(event_id) else {
            return;
        };
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }
}

/// `reportingController` of every Event we write.
pub const REPORTING_CONTROLLER: &str = "vworkspace.io/operator";

/// Longest Event (object) name.
const MAX_NAME: usize = 253;

/// The Event name of a transition: `<object>.<first 16 hex of event_id>`, the object part
/// shortened (and trimmed to end with an alphanumeric) so that the whole fits 253 characters.
pub fn event_name(object: &str, event_id: &str) -> String {
    let short_id = event_id.get(..16).unwrap_or(event_id);
    let room = MAX_NAME - 1 - short_id.len();
    let mut prefix = object.get(..object.len().min(room)).unwrap_or(object);
    prefix = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{prefix}.{short_id}")
}

/// The audit event announcing `record`, a transition of the object with `meta`: the
/// one construction, used by the live publisher and by the replay from status, so the
/// two cannot differ in any field.
pub fn audit_event(
    source: &AuditSource,
    meta: &ObjectMeta,
    record: &TransitionRecord,
    context: AuditContext<'_>,
) -> AuditEvent {
    let uid = meta.uid.as_deref().unwrap_or_default();
    let mut audit = AuditEvent::for_transition(source, uid, record);
    if let Some(ns) = meta.namespace.clone() {
        audit = audit.with_namespace(ns);
    }
    if let Some(app) = context.application_instance {
        audit = audit.with_application_instance(app);
    }
    if let Some(op) = context.operation_id {
        audit = audit.with_operation_id(op);
    }
    audit
}

impl Publisher {
    /// A publisher for this operator instance (`reporting_instance` is the pod name).
    pub fn new(
        client: Client,
        source: AuditSource,
        reporting_instance: String,
        sink: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            client,
            source,
            reporting_instance,
            sink,
            submitted: Arc::default(),
        }
    }

    /// Hand `audit` to the sink, remembering that this process did.
    fn submit(&self, audit: AuditEvent) {
        self.submitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(&audit.event_id);
        self.sink.submit(audit);
    }

    fn submitted_here(&self, event_id: &str) -> bool {
        self.submitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(event_id)
    }

    /// Publish one transition of `obj`, recorded (or about to be recorded) in its status.
    pub async fn publish<K>(
        &self,
        obj: &K,
        record: &TransitionRecord,
        action: &str,
        context: AuditContext<'_>,
    ) -> Published
    where
        K: Resource<DynamicType = ()>,
    {
        let audit = audit_event(&self.source, obj.meta(), record, context);
        let event_id = audit.event_id.clone();

        let regarding = ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: obj.meta().name.clone(),
            namespace: obj.meta().namespace.clone(),
            uid: obj.meta().uid.clone(),
            resource_version: obj.meta().resource_version.clone(),
            ..ObjectReference::default()
        };
        let namespace = obj
            .meta()
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name(&obj.name_any(), &event_id)),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some(action.to_owned()),
            reason: Some(record.kind.clone()),
            note: Some(truncate(&record.message, 1024)),
            type_: Some(record.event_type.as_str().to_owned()),
            regarding: Some(regarding),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.reporting_instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let mut first_failure = false;
        let outcome = match api.create(&PostParams::default(), &event).await {
            Ok(_) => Published::New,
            Err(kube::Error::Api(status)) if status.code == 409 => Published::Repeated,
            Err(err) => {
                first_failure = unwritten(&event_id);
                if first_failure {
                    tracing::warn!(error = %err, event = %record.kind, event_id, "cannot write the Kubernetes Event; the audit event is still sent");
                } else {
                    tracing::debug!(error = %err, event = %record.kind, event_id, "cannot write the Kubernetes Event (again)");
                }
                Published::EventNotWritten
            }
        };
        if outcome == Published::Repeated {
            if self.submitted_here(&event_id) {
                tracing::debug!(event = %record.kind, event_id, "transition published before; not sent again");
            } else {
                // Published by an earlier process, whose buffer may have died with the
                // audit event (see the module docs): hand it over again.
                tracing::debug!(event = %record.kind, event_id, "transition published by an earlier process; its audit event is sent again");
                self.submit(audit);
            }
            return outcome;
        }
        // A transition retried while its Event cannot be written (an API server outage)
        // is logged once, at its first attempt, not once per retry.
        let logged_before = match outcome {
            Published::EventNotWritten => !first_failure,
            _ => UNWRITTEN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&event_id),
        };
        if logged_before {
            tracing::debug!(event = %record.kind, event_id, "transition published again");
            self.submit(audit);
            return outcome;
        }
        // tracing fixes a call site's level at compile time: the spec logs every transition
        // at info, except an Operation entering Blocked, which is a warning.
        macro_rules! log_transition {
            ($level:ident) => {
                tracing::$level!(
                    event = %record.kind,
                    reason = %record.reason,
                    event_type = record.event_type.as_str(),
                    event_id,
                    "{}",
                    record.message
                )
            };
        }
        if record.kind == events::OPERATION_BLOCKED {
            log_transition!(warn);
        } else {
            log_transition!(info);
        }
        self.submit(audit);
        outcome
    }
}

/// The event_ids whose Event could not be written (and whose transition was logged).
static UNWRITTEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Record `event_id` as unwritten; `true` if it was not recorded yet.
fn unwritten(event_id: &str) -> bool {
    UNWRITTEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(event_id.to_owned())
}

/// `message` cut to at most `max` bytes, on a character boundary.
fn truncate(message: &str, max: usize) -> String {
    message[..message.floor_char_boundary(max)].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_api::conditions::EventType;

    #[test]
    fn recent_ids_keep_a_bounded_window() {
        let id = |n: usize| format!("{n:032x}");
        let mut recent = RecentIds::default();
        for n in 0..RecentIds::CAPACITY + 10 {
            recent.insert(&id(n));
            recent.insert(&id(n));
        }
        assert_eq!(recent.order.len(), RecentIds::CAPACITY);
        assert_eq!(recent.set.len(), RecentIds::CAPACITY);
        assert!(!recent.contains(&id(9)), "the oldest left the window");
        assert!(recent.contains(&id(10)) && recent.contains(&id(RecentIds::CAPACITY + 9)));
        assert!(!recent.contains("not-hex"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("héllo", 2), "h");
    }

    #[test]
    fn event_names_fit_for_the_longest_object_names() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(event_name("nextcloud", id), "nextcloud.0123456789abcdef");
        let longest = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        assert_eq!(longest.len(), 253);
        let name = event_name(&longest, id);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with(".0123456789abcdef"));
        // A cut that would end in '.' or '-' is trimmed back to an alphanumeric.
        let awkward = format!("{}-{}", "a".repeat(235), "b".repeat(17));
        let name = event_name(&awkward, id);
        assert!(name.len() <= 253);
        assert!(!name.contains("-."), "{name}");
    }

    #[tokio::test]
    async fn file_sink_writes_off_the_runtime_and_flushes_on_close() {
        let dir = std::env::temp_dir().join(format!("audit-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let sink = FileAuditSink::open(&path).expect("open");
        let source = AuditSource {
            cluster_id: "c".into(),
            org_id: "o".into(),
            operator_version: "v0".into(),
        };
        let record = TransitionRecord {
            kind: "ReconcileStarted".into(),
            condition: "Reconciling".into(),
            reason: "Reconciling".into(),
            generation: 1,
            occurrence: 1,
            event_type: EventType::Normal,
            message: "m".into(),
            at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        };
        for uid in ["a", "b", "c"] {
            sink.submit(AuditEvent::for_transition(&source, uid, &record));
        }
        sink.close().await;
        let text = std::fs::read_to_string(&path).expect("written");
        assert_eq!(text.lines().count(), 3, "{text}");
        // Closed: further events are refused without blocking or panicking.
        sink.submit(AuditEvent::for_transition(&source, "d", &record));
        sink.flush().await;
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count(),
            3
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
