//! Rust types for the third-party resources the operator drives: Flux `HelmRepository` and
//! `HelmRelease`, Velero `Backup` and `Restore`, Argo `Workflow`, VolSync
//! `ReplicationSource` and CSI `VolumeSnapshot`.
//!
//! Invariants:
//! * group, version, kind and plural are the upstream project's own, so the same types talk
//!   to the real controllers and to the simulated engines;
//! * each type holds only the fields the operator sets or reads; every optional field is
//!   omitted when unset, so a server-side apply claims only what the operator means to own;
//! * the CRDs generated from these types ([`crate::crds::third_party_crds`]) are lenient test
//!   doubles for the local cluster: every object under `spec` and `status` preserves unknown
//!   fields, so simulators (and real controllers) can write more than is modelled here. They
//!   are never installed on a real cluster, where the upstream CRDs are.

pub mod argo;
pub mod flux;
pub mod snapshot;
pub mod velero;
pub mod volsync;

pub use argo::Workflow;
pub use flux::{HelmRelease, HelmRepository};
pub use snapshot::VolumeSnapshot;
pub use velero::{Backup, Restore};
pub use volsync::ReplicationSource;
