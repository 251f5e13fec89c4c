//! Types only: the `vworkspace.io/v1alpha1` CRDs, the conditions vocabulary, label and
//! annotation keys, the audit event and the control-plane agent protocol.
//!
//! Nothing here performs I/O; every other crate depends on these definitions.
