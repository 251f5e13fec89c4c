//! A simulated Argo Workflows controller for `argoproj.io/v1alpha1` `Workflow`,
//! driving `status` the way workflow-controller does.
//!
//! A Workflow whose phase is empty, `Pending` or `Running` is picked up:
//!
//! * `Pending`, then `Running` with `startedAt` and `progress` `0/N`
//!   ([`ArgoOptions::steps`] steps, 2 by default), the progress rising one step at a
//!   time over the duration;
//! * then by outcome: [`Outcome::Succeeded`] → `Succeeded`, progress `N/N`, and
//!   `status.outputs.parameters` from [`ArgoOptions::outputs`];
//!   [`Outcome::Failed`] and [`Outcome::PartiallyFailed`] → `Failed` with `message`
//!   (by default `child 'step-N' failed`, as Argo names the failed node);
//!   [`Outcome::Error`] → `Error` with `message`. Every end sets `finishedAt` and a
//!   `Completed=True` condition, as Argo does;
//! * `spec.shutdown: Terminate` or `Stop`, set before or while it runs, ends it at once
//!   as `Failed` with message `Stopped with strategy 'Terminate'` (or `'Stop'`): how the
//!   operator cancels.
//!
//! Invariants: status only (through the status subresource); each Workflow is worked
//! on once per simulator; see [`super::engine`] for the rest.

use std::sync::Arc;

use anyhow::Result;
use kube::Client;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::engine::{Control, Drivers, Job, Outcome, Shared, SimOptions, SimStats, WriteError};
use super::engine::{now_rfc3339, rfc3339};

/// `argoproj.io/v1alpha1` `Workflow`.
pub fn workflow_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
        "workflows",
    )
}

/// A minimal Workflow running the WorkflowTemplate `template` with `parameters`, for
/// tests that drive the simulator without the operator.
pub fn workflow(
    namespace: &str,
    name: &str,
    template: &str,
    parameters: &[(&str, &str)],
) -> Result<DynamicObject> {
    let parameters: Vec<Value> = parameters
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "workflowTemplateRef": { "name": template },
            "arguments": { "parameters": parameters },
        },
    }))?)
}

/// How the simulated Argo runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgoOptions {
    /// Duration, outcome, failure reason, concurrency.
    pub sim: SimOptions,
    /// Steps of every workflow (the `N` of `progress`); at least 1.
    pub steps: u32,
    /// `status.outputs.parameters` (name, value) of a Succeeded workflow.
    pub outputs: Vec<(String, String)>,
}

impl Default for ArgoOptions {
    fn default() -> Self {
        Self {
            sim: SimOptions::default(),
            steps: 2,
            outputs: Vec::new(),
        }
    }
}

/// A running simulated Argo workflow-controller; stops when dropped.
#[derive(Debug)]
pub struct ArgoSimulator {
    shared: Arc<Shared>,
    drivers: Drivers,
}

impl ArgoSimulator {
    /// Start in `namespace` (or every namespace with `None`) with the default
    /// [`ArgoOptions`].
    pub fn start(client: Client, namespace: Option<&str>) -> Self {
        Self::start_with(client, namespace, ArgoOptions::default())
    }

    /// Start in `namespace` (or every namespace with `None`).
    pub fn start_with(client: Client, namespace: Option<&str>, options: ArgoOptions) -> Self {
        let shared = Shared::new(options.sim.clone());
        let settings = Arc::new(Settings {
            steps: options.steps.max(1),
            outputs: options
                .outputs
                .iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect(),
        });
        let mut drivers = Drivers::new();
        drivers.spawn(
            &client,
            namespace,
            workflow_resource(),
            shared.clone(),
            wants,
            move |job| run(job, settings.clone()),
        );
        Self { shared, drivers }
    }

    /// Steer the Workflow named `name`.
    pub fn set_for_name(&self, name: &str, control: Control) {
        self.shared.set_for_name(name, control);
    }

    /// Steer the Workflows labelled `app.vworkspace.io/operation-id: <operation_id>`.
    pub fn set_for_operation(&self, operation_id: &str, control: Control) {
        self.shared.set_for_operation(operation_id, control);
    }

    /// Forget every override set by name or operation.
    pub fn clear_overrides(&self) {
        self.shared.clear_overrides();
    }

    /// Counts of what was done so far.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Stop, waiting until no job runs any more (dropping stops too, without waiting);
    /// [`stats`](Self::stats) stays readable.
    pub async fn stop(&mut self) {
        self.drivers.shutdown().await;
    }
}

#[derive(Debug)]
struct Settings {
    steps: u32,
    outputs: Vec<Value>,
}

fn wants(obj: &DynamicObject) -> Option<String> {
    match obj.data["status"]["phase"].as_str().unwrap_or_default() {
        "" | "Pending" | "Running" => Some("run".to_owned()),
        _ => None,
    }
}

/// The shutdown strategy asked for, if any.
fn shutdown(obj: &DynamicObject) -> Option<String> {
    obj.data["spec"]["shutdown"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

async fn run(mut job: Job, settings: Arc<Settings>) -> Result<(), WriteError> {
    let steps = settings.steps;
    let progress = |done: u32| format!("{done}/{steps}");
    let status = &job.obj.data["status"];
    let started_at = status["startedAt"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(now_rfc3339);
    if let Some(strategy) = shutdown(&job.obj) {
        return job.write(stopped(&strategy, &started_at)).await;
    }
    if status["phase"].as_str().unwrap_or_default().is_empty() {
        job.write(json!({ "phase": "Pending", "progress": progress(0) }))
            .await?;
    }
    job.write(json!({
        "phase": "Running",
        "startedAt": started_at,
        "progress": progress(0),
        "conditions": [{ "type": "PodRunning", "status": "True" }],
    }))
    .await?;

    let outcome = job.plan.outcome;
    // A failing workflow fails on its last step.
    let done_before_end = steps - 1;
    let step = job.plan.duration / steps;
    for done in 1..=steps {
        if let Some(strategy) = job.wait_unless(step, shutdown).await {
            return job.write(stopped(&strategy, &started_at)).await;
        }
        if done < steps {
            job.write(json!({ "progress": progress(done) })).await?;
        }
    }

    let finished_at = now_rfc3339();
    let completed = json!([
        { "type": "PodRunning", "status": "False" },
        { "type": "Completed", "status": "True" },
    ]);
    let status = match outcome {
        Outcome::Succeeded => json!({
            "phase": "Succeeded",
            "startedAt": started_at,
            "finishedAt": finished_at,
            "progress": progress(steps),
            "outputs": { "parameters": settings.outputs },
            "conditions": completed,
        }),
        Outcome::Failed | Outcome::PartiallyFailed | Outcome::Error => {
            let phase = if outcome == Outcome::Error {
                "Error"
            } else {
                "Failed"
            };
            json!({
                "phase": phase,
                "startedAt": started_at,
                "finishedAt": finished_at,
                "progress": progress(done_before_end),
                "message": job.plan.reason_or(&format!("child 'step-{steps}' failed")),
                "conditions": completed,
            })
        }
    };
    job.write(status).await
}

fn stopped(strategy: &str, started_at: &str) -> Value {
    json!({
        "phase": "Failed",
        "startedAt": started_at,
        "finishedAt": rfc3339(super::engine::now()),
        "message": format!("Stopped with strategy '{strategy}'"),
        "conditions": [
            { "type": "PodRunning", "status": "False" },
            { "type": "Completed", "status": "True" },
        ],
    })
}
