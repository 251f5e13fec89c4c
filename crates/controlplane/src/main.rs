//! The reference control plane: an implementation of the agent API (jobs, audit-event
//! ingest, heartbeats, credential rotation) with an org timeline, for development,
//! tests and the demo.

fn main() {
    println!("vworkspace-controlplane {}", env!("CARGO_PKG_VERSION"));
}
