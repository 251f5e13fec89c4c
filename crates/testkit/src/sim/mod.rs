//! Simulated third-party controllers. The operator drives Flux, Velero, Argo
//! Workflows, VolSync and the CSI snapshotter, none of which can run here; these
//! doubles write the status of their resources the way the real controllers do, and
//! are used only by tests, the demo and benchmarks — never by the operator.

pub mod argo;
pub mod engine;
pub mod flux;
pub mod snapshot;
pub mod velero;
pub mod volsync;
