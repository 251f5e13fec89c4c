//! The control-plane link: the agent API client, the job puller, the audit shipper,
//! credential rotation and connectivity tracking. Reconcilers never block on it.
//!
//! * [`client`]: the HTTP agent API client and its typed [`client::LinkError`];
//! * [`connectivity`]: the connected / reconnecting / disconnected state machine;
//! * [`shipper`]: the bounded, ordered audit-event buffer and its delivery task;
//! * [`jobs`]: validating and applying control-plane jobs, and the long-poll loop;
//! * [`link`]: the heartbeat task that keeps connectivity fresh.

pub mod client;
pub mod connectivity;
pub mod jobs;
pub mod link;
pub mod shipper;
