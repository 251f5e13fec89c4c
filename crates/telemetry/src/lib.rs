//! Telemetry surfaces of the operator: the Prometheus registry (the spec's metrics,
//! the controller-runtime names and `process_*`), JSON logging with zap's keys, and the
//! health server (`/healthz`, `/readyz`).
