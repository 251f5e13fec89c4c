//! Types only: the `vworkspace.io/v1alpha1` CRDs, the conditions vocabulary, label and
//! annotation keys, the audit event, and the types of the third-party resources the
//! operator drives.
//!
//! Invariants:
//! * nothing here performs I/O, except [`crds::write_all`] / [`crds::check_all`], which
//!   render the CRDs to the committed files;
//! * every other crate takes names (kinds, condition types, reasons, labels, field managers)
//!   from here, never from string literals of its own;
//! * every field is camelCase in JSON, except the audit event, whose payload is the spec's
//!   snake_case format wherever it travels.

pub mod agent_api;
pub mod application_instance;
pub mod audit;
pub mod audit_batch;
pub mod cluster;
pub mod conditions;
pub mod crds;
pub mod duration;
pub mod labels;
pub mod operation;
mod schema;
pub mod thirdparty;
pub mod transition;

pub use application_instance::{
    ApplicationInstance, ApplicationInstanceSpec, ApplicationInstanceStatus,
};
pub use audit::{AuditEvent, AuditSource, TransitionKey};
pub use audit_batch::{AuditBatch, AuditBatchSpec, AuditBatchStatus};
pub use cluster::{Cluster, ClusterSpec, ClusterStatus, Mode};
pub use duration::GoDuration;
pub use operation::{
    Engine, Operation, OperationPhase, OperationSpec, OperationStatus, OperationType,
};
pub use transition::TransitionRecord;

/// The API group of our CRDs.
pub const GROUP: &str = "vworkspace.io";
/// The API version of our CRDs.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of our objects.
pub const API_VERSION: &str = "vworkspace.io/v1alpha1";
