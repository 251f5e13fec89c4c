//! The one choke point for condition transitions.
//!
//! Every transition a controller decides on goes through [`Publisher::publish`], which
//! writes an `events.k8s.io/v1` Event on the object *and* hands the same transition,
//! as the spec's audit payload, to the audit sink. Because both come from one call
//! they cannot diverge.
//!
//! Invariants:
//! * the Event's name is derived from the audit `event_id`, so a transition replayed
//!   after a crash does not create a second Event (the API answers 409 and we move on),
//!   while a *new* transition always has a new id and a new Event — it is never folded
//!   into an earlier one by de-duplication;
//! * messages are built by the controllers from names and reasons, never from secret
//!   values, and carry no timestamps;
//! * publishing never fails a reconcile: an Event that cannot be written is logged and
//!   the audit event is still submitted (the sink is non-blocking).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource, ResourceExt};
use vworkspace_api::{AuditEvent, AuditSource, EventSubject};

/// Where audit events go. `submit` must not block: reconcilers never wait on the link.
pub trait AuditSink: Send + Sync {
    /// Accept one event.
    fn submit(&self, event: AuditEvent);
}

/// Keeps the most recent events in memory (bounded).
#[derive(Debug)]
pub struct MemoryAuditSink {
    capacity: usize,
    events: Mutex<VecDeque<AuditEvent>>,
}

impl MemoryAuditSink {
    /// A sink holding at most `capacity` events (oldest dropped first).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// A copy of the held events, oldest first.
    #[allow(dead_code)]
    pub fn snapshot(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl AuditSink for MemoryAuditSink {
    fn submit(&self, event: AuditEvent) {
        if let Ok(mut events) = self.events.lock() {
            if events.len() == self.capacity {
                events.pop_front();
            }
            events.push_back(event);
        }
    }
}

/// Appends each event as one JSON line to a file (`--audit-log-file`), so the stream
/// can be read with `jq` and by tests of the built binary. The control-plane shipper
/// replaces it in Pull mode.
#[derive(Debug)]
pub struct FileAuditSink {
    file: Mutex<File>,
}

impl FileAuditSink {
    /// Open (append) or create `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }
}

impl AuditSink for FileAuditSink {
    fn submit(&self, event: AuditEvent) {
        let Ok(mut line) = serde_json::to_vec(&event) else {
            return;
        };
        line.push(b'\n');
        if let Ok(mut file) = self.file.lock()
            && let Err(err) = file.write_all(&line)
        {
            tracing::error!(error = %err, "cannot append to the audit log file");
        }
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
}

/// One transition to announce.
#[derive(Debug, Clone)]
pub struct Announcement<'a> {
    /// Event reason; also the audit `kind` (e.g. `ReconcileSucceeded`).
    pub event_reason: &'a str,
    /// The condition reason; the audit `reason`.
    pub reason: &'a str,
    /// Human-readable message.
    pub message: &'a str,
    /// `Warning` instead of `Normal`.
    pub warning: bool,
    /// The `action` field of the Event (what the controller was doing).
    pub action: &'a str,
    /// The idempotency subject.
    pub subject: EventSubject<'a>,
    /// The ApplicationInstance concerned, if any.
    pub application_instance: Option<&'a str>,
}

/// Writes Events and audit events for transitions. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    source: AuditSource,
    reporting_instance: String,
    sink: Arc<dyn AuditSink>,
}

/// `reportingController` of every Event we write.
pub const REPORTING_CONTROLLER: &str = "vworkspace.io/operator";

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
        }
    }

    /// Publish one transition of `obj`.
    pub async fn publish<K>(&self, obj: &K, announcement: &Announcement<'_>)
    where
        K: Resource<DynamicType = ()>,
    {
        let now = Timestamp::now();
        let occurred_at = Time(now.round(k8s_openapi::jiff::Unit::Second).unwrap_or(now));
        let mut audit = AuditEvent::new(
            &self.source,
            announcement.event_reason,
            announcement.reason,
            announcement.message,
            occurred_at,
            &announcement.subject,
        );
        if let Some(ns) = obj.meta().namespace.clone() {
            audit = audit.with_namespace(ns);
        }
        if let Some(app) = announcement.application_instance {
            audit = audit.with_application_instance(app);
        }
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
        let short_id = event_id.get(..16).unwrap_or(&event_id);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{short_id}", obj.name_any())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(announcement.action.to_owned()),
            reason: Some(announcement.event_reason.to_owned()),
            note: Some(truncate(announcement.message, 1024)),
            type_: Some(
                if announcement.warning {
                    "Warning"
                } else {
                    "Normal"
                }
                .to_owned(),
            ),
            regarding: Some(regarding),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.reporting_instance.clone()),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match events.create(&PostParams::default(), &event).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(event_id, "event already recorded (replayed transition)");
            }
            Err(err) => {
                tracing::warn!(error = %err, reason = announcement.event_reason, "cannot write the Kubernetes Event; the audit event is still sent");
            }
        }
        // tracing fixes a call site's level at compile time; one macro keeps the two
        // call sites (Warning transitions log at warn, Normal ones at info) identical.
        macro_rules! log_transition {
            ($level:ident) => {
                tracing::$level!(
                    event = announcement.event_reason,
                    reason = announcement.reason,
                    event_id,
                    "{}",
                    announcement.message
                )
            };
        }
        if announcement.warning {
            log_transition!(warn);
        } else {
            log_transition!(info);
        }
        self.sink.submit(audit);
    }
}

fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("héllo", 2), "h");
    }

    #[test]
    fn memory_sink_is_bounded() {
        let sink = MemoryAuditSink::new(2);
        let source = AuditSource {
            cluster_id: "c".into(),
            org_id: "o".into(),
            operator_version: "v0".into(),
        };
        for generation in 0..3 {
            sink.submit(AuditEvent::new(
                &source,
                "ReconcileStarted",
                "Reconciling",
                "m",
                Time(Timestamp::UNIX_EPOCH),
                &EventSubject::Generation {
                    uid: "u",
                    generation,
                },
            ));
        }
        let held = sink.snapshot();
        assert_eq!(held.len(), 2);
        assert_ne!(held[0].event_id, held[1].event_id);
    }
}
