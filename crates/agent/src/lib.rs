//! The control-plane link: the agent API client, the job puller, the audit shipper,
//! credential rotation and connectivity tracking. Reconcilers never block on it.
