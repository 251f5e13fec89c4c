//! job: `runcommand.job` (and the pre-upgrade hook of `upgrade.helmHookJob`), a batch/v1
//! Job in the target's namespace, run by the cluster's job controller.
//!
//! Invariants:
//! * the image comes from `parameters.image` or the catalog's image for the template; a
//!   Job without one is invalid parameters (the built-in catalog pins no image);
//! * `command` is a list of strings, or one string run as `sh -c <string>`;
//! * `backoffLimit` defaults to 0 (a command runs once unless asked otherwise) and
//!   `activeDeadlineSeconds` is the Operation's timeout, so the job controller stops the
//!   pod at the deadline even while the operator is down;
//! * only the Job's final conditions are terminal: `Complete=True` succeeds, `Failed=True`
//!   fails with the Job's reason (`BackoffLimitExceeded`, `DeadlineExceeded`, other);
//!   `SuccessCriteriaMet` / `FailureTarget` (set while pods terminate) still wait;
//! * cancel and timeout delete the Job with its pods (foreground propagation).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use kube_core::ObjectMeta;
use serde_json::Value;
use vworkspace_api::conditions::operation::reasons;

use super::{
    Child, Observation, Params, Stop, StopSupport, child_labels, child_meta, kind_of, outputs,
};
use crate::operation::Identity;

/// Parameters of `runcommand.job`.
pub const PARAMETERS: &[&str] = &[
    "command",
    "image",
    "backoffLimit",
    "serviceAccountName",
    "env",
    "podAnnotations",
];

/// Name of the Job's one container.
pub const CONTAINER: &str = "run";

/// Checked Job parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobParams {
    /// Container image.
    pub image: String,
    /// Container command.
    pub command: Vec<String>,
    /// `spec.backoffLimit`.
    pub backoff_limit: i32,
    /// Service account of the pod.
    pub service_account_name: Option<String>,
    /// Environment, by name.
    pub env: BTreeMap<String, String>,
    /// Annotations on the pod (e.g. a service mesh's opt-out).
    pub pod_annotations: BTreeMap<String, String>,
}

/// Checks Job parameters; `catalog_image` is the template's image.
pub fn params(p: &Params<'_>, catalog_image: Option<&str>) -> Result<JobParams, String> {
    let command = match p.0.get("command") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            vec!["sh".to_owned(), "-c".to_owned(), s.clone()]
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "parameter command must be a list of strings".to_owned())?,
        None => return Err("parameter command is required".to_owned()),
        Some(other) => {
            return Err(format!(
                "parameter command must be a string or a non-empty list of strings, not {}",
                kind_of(other)
            ));
        }
    };
    let image = match p.string("image")? {
        Some(image) => image,
        None => catalog_image.map(str::to_owned).ok_or_else(|| {
            "no image: set parameter image, or image for this template in the catalog ConfigMap"
                .to_owned()
        })?,
    };
    let strings = |name: &str| -> Result<BTreeMap<String, String>, String> {
        p.object(name)?
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(format!(
                    "parameter {name}.{k} must be a string, not {}",
                    kind_of(&other)
                )),
            })
            .collect()
    };
    let env = strings("env")?;
    let pod_annotations = strings("podAnnotations")?;
    Ok(JobParams {
        image,
        command,
        backoff_limit: p.count("backoffLimit")?.unwrap_or(0),
        service_account_name: p.name("serviceAccountName")?,
        env,
        pod_annotations,
    })
}

/// The Job to create, named `name`.
pub fn child(
    id: &Identity,
    target: &str,
    params: &JobParams,
    name: String,
    timeout: Duration,
) -> Child {
    let labels = child_labels(id, target);
    let job = Job {
        metadata: child_meta(id, target, name, &id.namespace),
        spec: Some(JobSpec {
            backoff_limit: Some(params.backoff_limit),
            active_deadline_seconds: i64::try_from(timeout.as_secs()).ok(),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: (!params.pod_annotations.is_empty())
                        .then(|| params.pod_annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    service_account_name: params.service_account_name.clone(),
                    containers: vec![Container {
                        name: CONTAINER.to_owned(),
                        image: Some(params.image.clone()),
                        command: Some(params.command.clone()),
                        env: (!params.env.is_empty()).then(|| {
                            params
                                .env
                                .iter()
                                .map(|(k, v)| EnvVar {
                                    name: k.clone(),
                                    value: Some(v.clone()),
                                    ..EnvVar::default()
                                })
                                .collect()
                        }),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    Child::Job(job)
}

/// Reads a Job. `hook` selects the vocabulary of a pre-upgrade hook (its failure is
/// `HookJobFailed`, naming the Job's reason).
pub fn observe(job: &Job, hook: bool) -> Observation {
    let status = job.status.clone().unwrap_or_default();
    let (succeeded, failed, active) = (
        status.succeeded.unwrap_or(0),
        status.failed.unwrap_or(0),
        status.active.unwrap_or(0),
    );
    let counts = format!("{succeeded} succeeded, {failed} failed");
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    let what = if hook {
        "pre-upgrade batch/v1 Job"
    } else {
        "batch/v1 Job"
    };
    let outs = |result: &str| {
        outputs([
            ("jobName", job.metadata.name.clone()),
            ("exitResult", Some(result.to_owned())),
            ("succeeded", Some(succeeded.to_string())),
            ("failed", Some(failed.to_string())),
        ])
    };
    if condition("Complete").is_some() {
        return Observation::Succeeded {
            reason: reasons::JOB_SUCCEEDED,
            message: format!("{what} complete; {counts}"),
            outputs: outs("succeeded"),
        };
    }
    if let Some(c) = condition("Failed") {
        let job_reason = c.reason.clone().unwrap_or_default();
        let reason = match (hook, job_reason.as_str()) {
            (true, _) => reasons::HOOK_JOB_FAILED,
            (false, "BackoffLimitExceeded") => reasons::JOB_BACKOFF_LIMIT_EXCEEDED,
            (false, "DeadlineExceeded") => reasons::JOB_DEADLINE_EXCEEDED,
            (false, _) => reasons::JOB_FAILED,
        };
        let detail = c
            .message
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Observation::Failed {
            reason,
            message: format!("{what} failed ({job_reason}); {counts}{detail}"),
            outputs: outs("failed"),
        };
    }
    if active > 0
        || condition("SuccessCriteriaMet").is_some()
        || condition("FailureTarget").is_some()
    {
        Observation::Running {
            message: format!("{what} running; {active} active, {counts}"),
        }
    } else {
        Observation::Pending {
            message: format!("{what} waiting for a pod; {counts}"),
        }
    }
}

/// A Job is stopped by deleting it with its pods.
pub fn stop(child: &Child) -> StopSupport {
    StopSupport::Stop(Stop::Delete(vec![child.child_ref()]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobStatus;
    use serde_json::json;

    fn job(status: serde_json::Value) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("op-1".into()),
                ..ObjectMeta::default()
            },
            status: Some(serde_json::from_value::<JobStatus>(status).unwrap()),
            ..Job::default()
        }
    }

    fn cond(type_: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({"type": type_, "status": "True", "reason": reason, "message": message})
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
    fn job_vocabulary() {
        let cases = [
            (json!({}), false, "Pending", "waiting for a pod"),
            (json!({"active": 1}), false, "Running", "1 active"),
            (
                json!({"failed": 1, "conditions": [cond("FailureTarget", "BackoffLimitExceeded", "")]}),
                false,
                "Running",
                "1 failed",
            ),
            (
                json!({"succeeded": 1, "conditions": [cond("SuccessCriteriaMet", "CompletionsReached", "")]}),
                false,
                "Running",
                "1 succeeded",
            ),
            (
                json!({"succeeded": 1, "conditions": [cond("SuccessCriteriaMet", "", ""), cond("Complete", "CompletionsReached", "")]}),
                false,
                "Succeeded:JobSucceeded",
                "complete; 1 succeeded, 0 failed",
            ),
            (
                json!({"failed": 1, "conditions": [cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]}),
                false,
                "Failed:JobBackoffLimitExceeded",
                "(BackoffLimitExceeded); 0 succeeded, 1 failed: Job has reached",
            ),
            (
                json!({"conditions": [cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")]}),
                false,
                "Failed:JobDeadlineExceeded",
                "DeadlineExceeded",
            ),
            (
                json!({"conditions": [cond("Failed", "PodFailurePolicy", "")]}),
                false,
                "Failed:JobFailed",
                "PodFailurePolicy",
            ),
            (
                json!({"conditions": [cond("Failed", "BackoffLimitExceeded", "")]}),
                true,
                "Failed:HookJobFailed",
                "pre-upgrade batch/v1 Job failed (BackoffLimitExceeded)",
            ),
            (
                json!({"conditions": [cond("Complete", "", "")]}),
                true,
                "Succeeded:JobSucceeded",
                "pre-upgrade",
            ),
        ];
        for (status, hook, want, fragment) in cases {
            let (kind, message) = summary(&observe(&job(status.clone()), hook));
            assert_eq!(kind, want, "{status}");
            assert!(message.contains(fragment), "{status}: {message}");
        }
        let Observation::Succeeded { outputs, .. } = observe(
            &job(json!({"succeeded": 1, "conditions": [cond("Complete", "", "")]})),
            false,
        ) else {
            panic!("succeeded");
        };
        assert_eq!(outputs["exitResult"], "succeeded");
        assert_eq!(outputs["jobName"], "op-1");
    }

    #[test]
    fn parameters() {
        let p =
            |v: serde_json::Value, img: Option<&str>| params(&Params(v.as_object().unwrap()), img);
        let ok = p(json!({"command": "echo hi"}), Some("busybox:1")).unwrap();
        assert_eq!(ok.command, ["sh", "-c", "echo hi"]);
        assert_eq!((ok.image.as_str(), ok.backoff_limit), ("busybox:1", 0));
        let own = p(
            json!({"command": ["true"], "image": "alpine:3", "backoffLimit": 2, "env": {"A": "b"}}),
            None,
        )
        .unwrap();
        assert_eq!(
            (own.image.as_str(), own.backoff_limit, own.env["A"].as_str()),
            ("alpine:3", 2, "b")
        );
        assert!(
            p(json!({"command": "x"}), None)
                .unwrap_err()
                .contains("no image")
        );
        assert!(
            p(json!({}), Some("i"))
                .unwrap_err()
                .contains("command is required")
        );
        assert!(
            p(json!({"command": [1]}), Some("i"))
                .unwrap_err()
                .contains("list of strings")
        );
        assert!(
            p(json!({"command": "x", "backoffLimit": -1}), Some("i"))
                .unwrap_err()
                .contains("backoffLimit")
        );
        assert!(
            p(json!({"command": "x", "env": {"A": 1}}), Some("i"))
                .unwrap_err()
                .contains("env.A")
        );
        // A value of the wrong type is named by its type, never repeated: it may be a secret.
        for bad in [
            json!({"command": {"pw": "s3cr3t"}}),
            json!({"command": "x", "env": {"DB_PASSWORD": ["s3cr3t"]}}),
            json!({"command": "x", "env": "s3cr3t"}),
            json!({"command": "x", "image": ["s3cr3t"]}),
        ] {
            let why = p(bad, Some("i")).unwrap_err();
            assert!(!why.contains("s3cr3t"), "{why}");
            assert!(why.contains("not a "), "{why}");
        }
    }
}
