//! workflow: `migration.workflow` and `runbook.workflow`, an Argo Workflow in the target's
//! namespace that runs a WorkflowTemplate.
//!
//! Invariants:
//! * the engine's own parameters are `workflowTemplate` (required: from the Operation or
//!   the catalog's defaults), `clusterScope`, `entrypoint` and `serviceAccountName`; every
//!   other parameter becomes a Workflow argument (strings as written, other values as
//!   JSON), sorted by name;
//! * `activeDeadlineSeconds` is the Operation's timeout, so Argo stops the pods itself
//!   even if the operator is down at the deadline;
//! * phases in Argo's words: `Pending` (or none) waits, `Running` runs, `Succeeded`
//!   succeeds with the workflow's output parameters, `Failed` and `Error` fail with Argo's
//!   message; cancel and timeout set `spec.shutdown: Terminate`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use vworkspace_api::conditions::operation::reasons;
use vworkspace_api::operation::child_name;
use vworkspace_api::thirdparty::argo::{
    self, Arguments, Parameter, Workflow, WorkflowSpec, WorkflowTemplateRef,
};

use super::{Child, Observation, Params, Stop, StopSupport, child_meta};
use crate::operation::Identity;

/// The engine's own parameters (everything else is a Workflow argument).
pub const OWN_PARAMETERS: &[&str] = &[
    "workflowTemplate",
    "clusterScope",
    "entrypoint",
    "serviceAccountName",
];

/// Checked workflow parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowParams {
    /// The WorkflowTemplate to run.
    pub workflow_template: String,
    /// A ClusterWorkflowTemplate instead.
    pub cluster_scope: bool,
    /// Overrides the template's entrypoint.
    pub entrypoint: Option<String>,
    /// Service account of the workflow's pods.
    pub service_account_name: Option<String>,
    /// Workflow arguments, by name.
    pub arguments: BTreeMap<String, String>,
}

/// Checks workflow parameters.
pub fn params(p: &Params<'_>) -> Result<WorkflowParams, String> {
    let arguments =
        p.0.iter()
            .filter(|(k, _)| !OWN_PARAMETERS.contains(&k.as_str()))
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
    Ok(WorkflowParams {
        workflow_template: p.name("workflowTemplate")?.ok_or_else(|| {
            "parameter workflowTemplate is required (in the Operation or the catalog's defaults)"
                .to_owned()
        })?,
        cluster_scope: p.bool("clusterScope")?.unwrap_or(false),
        entrypoint: p.string("entrypoint")?,
        service_account_name: p.name("serviceAccountName")?,
        arguments,
    })
}

/// The Workflow to create.
pub fn child(id: &Identity, target: &str, params: &WorkflowParams, timeout: Duration) -> Child {
    let name = child_name(&id.uid);
    let mut w = Workflow::new(
        &name,
        WorkflowSpec {
            entrypoint: params.entrypoint.clone(),
            arguments: (!params.arguments.is_empty()).then(|| Arguments {
                parameters: params
                    .arguments
                    .iter()
                    .map(|(k, v)| Parameter {
                        name: k.clone(),
                        value: Some(v.clone()),
                    })
                    .collect(),
            }),
            workflow_template_ref: Some(WorkflowTemplateRef {
                name: params.workflow_template.clone(),
                cluster_scope: params.cluster_scope.then_some(true),
            }),
            templates: Vec::new(),
            service_account_name: params.service_account_name.clone(),
            active_deadline_seconds: i64::try_from(timeout.as_secs()).ok(),
            shutdown: None,
        },
    );
    w.metadata = child_meta(id, target, name, &id.namespace);
    Child::Workflow(w)
}

/// Reads a Workflow.
pub fn observe(w: &Workflow) -> Observation {
    let status = w.status.clone().unwrap_or_default();
    let progress = status
        .progress
        .as_deref()
        .map(|p| format!("; {p} steps"))
        .unwrap_or_default();
    let message = status.message.clone().unwrap_or_default();
    match status.phase.as_deref().unwrap_or("") {
        "" | argo::phase::PENDING => Observation::Pending {
            message: format!("argoproj.io/Workflow pending{progress}"),
        },
        argo::phase::RUNNING => Observation::Running {
            message: format!("argoproj.io/Workflow running{progress}"),
        },
        argo::phase::SUCCEEDED => {
            let outputs: BTreeMap<String, String> = status
                .outputs
                .map(|o| o.parameters)
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.name, p.value.unwrap_or_default()))
                .collect();
            let listed = if outputs.is_empty() {
                String::new()
            } else {
                let pairs: Vec<String> = outputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("; outputs {}", pairs.join(", "))
            };
            Observation::Succeeded {
                reason: reasons::WORKFLOW_SUCCEEDED,
                message: format!("argoproj.io/Workflow succeeded{progress}{listed}"),
                outputs,
            }
        }
        argo::phase::FAILED => Observation::Failed {
            reason: reasons::WORKFLOW_FAILED,
            message: format!("argoproj.io/Workflow failed{progress}: {message}"),
            outputs: BTreeMap::new(),
        },
        argo::phase::ERROR => Observation::Failed {
            reason: reasons::WORKFLOW_FAILED,
            message: format!("argoproj.io/Workflow errored{progress}: {message}"),
            outputs: BTreeMap::new(),
        },
        other => Observation::Running {
            message: format!("argoproj.io/Workflow in phase {other}{progress}"),
        },
    }
}

/// A Workflow is always stopped by `shutdown: Terminate`.
pub fn stop(child: &Child) -> StopSupport {
    StopSupport::Stop(Stop::TerminateWorkflow(child.child_ref()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;
    use vworkspace_api::thirdparty::argo::WorkflowStatus;

    fn wf(status: serde_json::Value) -> Workflow {
        let mut w = Workflow::new("op-1", WorkflowSpec::default());
        w.status = Some(serde_json::from_value::<WorkflowStatus>(status).unwrap());
        w
    }

    fn summary(o: &Observation) -> (String, String) {
        match o {
            Observation::Pending { message } => ("Pending".into(), message.clone()),
            Observation::Running { message } => ("Running".into(), message.clone()),
            Observation::Succeeded {
                reason, message, ..
            } => (format!("Succeeded:{reason}"), message.clone()),
            Observation::Failed {
                reason, message, ..
            } => (format!("Failed:{reason}"), message.clone()),
            Observation::Lost { message } => ("Lost".into(), message.clone()),
        }
    }

    #[test]
    fn workflow_vocabulary() {
        let cases = [
            (json!({}), "Pending", "pending"),
            (json!({"phase": "Pending"}), "Pending", "pending"),
            (
                json!({"phase": "Running", "progress": "1/3"}),
                "Running",
                "running; 1/3 steps",
            ),
            (
                json!({"phase": "Succeeded", "progress": "3/3", "outputs": {"parameters": [{"name": "rows", "value": "1200"}]}}),
                "Succeeded:WorkflowSucceeded",
                "succeeded; 3/3 steps; outputs rows=1200",
            ),
            (
                json!({"phase": "Failed", "progress": "1/3", "message": "child 'migrate' failed"}),
                "Failed:WorkflowFailed",
                "failed; 1/3 steps: child 'migrate' failed",
            ),
            (
                json!({"phase": "Error", "message": "invalid spec"}),
                "Failed:WorkflowFailed",
                "errored: invalid spec",
            ),
            (json!({"phase": "Paused"}), "Running", "Paused"),
        ];
        for (status, want, fragment) in cases {
            let (kind, message) = summary(&observe(&wf(status.clone())));
            assert_eq!(kind, want, "{status}");
            assert!(message.contains(fragment), "{status}: {message}");
        }
        let Observation::Succeeded { outputs, .. } = observe(&wf(
            json!({"phase": "Succeeded", "outputs": {"parameters": [{"name": "rows", "value": "1200"}]}}),
        )) else {
            panic!("succeeded");
        };
        assert_eq!(outputs["rows"], "1200");
    }

    #[test]
    fn parameters_split_into_own_and_arguments() {
        let map = json!({"workflowTemplate": "migrate", "dryRun": false, "table": "users"});
        let p = params(&Params(map.as_object().unwrap())).unwrap();
        assert_eq!(p.workflow_template, "migrate");
        assert_eq!(p.arguments["dryRun"], "false");
        assert_eq!(p.arguments["table"], "users");
        assert!(!p.arguments.contains_key("workflowTemplate"));
        let missing = params(&Params(json!({"table": "x"}).as_object().unwrap())).unwrap_err();
        assert!(missing.contains("workflowTemplate"), "{missing}");
    }
}
