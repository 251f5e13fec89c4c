//! The vworkspace-operator binary: the ApplicationInstance, Operation and Cluster
//! controllers, the event publisher and leader election, wired to telemetry and the
//! control-plane agent.

#[allow(dead_code)]
mod runtime;

fn main() {
    println!("vworkspace-operator {}", env!("CARGO_PKG_VERSION"));
}
