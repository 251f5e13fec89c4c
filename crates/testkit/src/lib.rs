//! Test and development harness for vworkspace-operator.
//!
//! Everything in this project is exercised against a real Kubernetes control plane:
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the
//! upstream Go modules (see `tools/k8s/`), plus kwok, which plays the kubelet for one
//! fake Node so that Pods of a Job are scheduled and run to completion.
//!
//! * [`binaries`] locates and builds those binaries in a cache outside the checkout.
//! * [`pki`] generates the certificates and service-account keys in Rust.
//! * [`cluster`] starts the processes on free loopback ports and stops every one of
//!   them again (on drop, on error, and when the parent dies).
//! * [`env`] is what tests use: the one shared cluster of a test run and a fresh
//!   namespace per test.
//! * [`prom`] parses the Prometheus text exposition the operator serves (the one
//!   parser tests, the demo and the benchmark share).
//!
//! Invariant: a [`cluster::LocalCluster`] owns its processes. Dropping it, or calling
//! [`cluster::LocalCluster::stop`], leaves no process behind that was started for it.

pub mod binaries;
pub mod cluster;
pub mod env;
pub mod fixtures;
pub mod pki;
mod probe;
pub mod prom;
pub mod sim;

pub use http;
