//! Helpers shared by the operator's end-to-end tests.

#![allow(dead_code)]

pub mod controlplane;

use std::path::Path;

use anyhow::Result;
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_testkit::env::TestEnv;
use vworkspace_testkit::fixtures::{
    OperatorProcess, apply_crds, operator_crd_files, third_party_crd_files,
};

/// The operator binary cargo built for these tests.
pub const OPERATOR: &str = env!("CARGO_BIN_EXE_vworkspace-operator");

/// Install our CRDs and the third-party test CRDs (idempotent).
pub async fn install_crds(env: &TestEnv) -> Result<()> {
    apply_crds(&env.client, &operator_crd_files()?).await?;
    apply_crds(&env.client, &third_party_crd_files()?).await?;
    Ok(())
}

/// Run the operator for namespace `ns` as replica `identity`; its log and audit file
/// go to a directory named after both.
pub fn spawn_operator(
    env: &TestEnv,
    ns: &str,
    identity: &str,
    extra: &[&str],
) -> Result<OperatorProcess> {
    let dir = std::env::temp_dir().join(format!("vws-e2e-{ns}-{identity}"));
    let mut args = vec![
        format!("--watch-namespace={ns}"),
        // The Lease and the Cluster live in the test's namespace, so concurrent tests
        // never share them.
        format!("--namespace={ns}"),
        format!("--identity={identity}"),
        format!("--cluster-id={CLUSTER_ID}"),
        format!("--org-id={ORG_ID}"),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    OperatorProcess::spawn(Path::new(OPERATOR), &env.kubeconfig, &dir, &args)
}

/// Id and organization of the Cluster every test operator reports on.
pub const CLUSTER_ID: &str = "cluster-e2e";
/// See [`CLUSTER_ID`].
pub const ORG_ID: &str = "org-e2e";

/// Create the Cluster `cluster-e2e` in `ns` (the operator's `--namespace` in these tests),
/// in `mode` with no control plane configured.
pub async fn create_cluster(env: &TestEnv, ns: &str, mode: &str) -> Result<()> {
    let api: kube::Api<vworkspace_api::Cluster> = kube::Api::namespaced(env.client.clone(), ns);
    api.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "apiVersion": "vworkspace.io/v1alpha1",
            "kind": "Cluster",
            "metadata": { "name": CLUSTER_ID },
            "spec": { "orgId": ORG_ID, "mode": mode },
        }))?,
    )
    .await?;
    Ok(())
}

/// `(status, reason, message)` of the condition `type_` of an instance, if set.
pub fn condition(obj: &ApplicationInstance, type_: &str) -> Option<(String, String, String)> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Create a ValidatingAdmissionPolicy named `name` that denies, in namespace `ns` only
/// (the binding selects it, so tests running at the same time are not affected), every
/// request matching `rule` (one `resourceRules` entry) for which the CEL `expression` is
/// false, with `message`. The caller waits until it is in force (the API server takes a
/// moment) and removes it with [`remove_admission_policy`].
pub async fn deny_in_namespace(
    env: &TestEnv,
    ns: &str,
    name: &str,
    rule: serde_json::Value,
    expression: &str,
    message: &str,
) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    use kube::api::{Api, PostParams};
    Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": name },
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": { "resourceRules": [rule] },
                    "validations": [{ "expression": expression, "message": message }]
                }
            }))?,
        )
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": name },
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns } } }
                }
            }))?,
        )
        .await?;
    Ok(())
}

/// Remove what [`deny_in_namespace`] created (a test cleaning up ignores the result).
pub async fn remove_admission_policy(env: &TestEnv, name: &str) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    use kube::api::{Api, DeleteParams};
    Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

/// The label [`deny_status_writes`] refuses the status writes of.
pub const DENY_STATUS_LABEL: &str = "testkit.vworkspace.io/deny-status-write";

/// Make the API server refuse status writes of the ApplicationInstances in `ns` that
/// carry [`DENY_STATUS_LABEL`] (a policy bound to `ns` only). Returns the policy's name
/// once a status write of `probe`, an existing labelled instance, is refused.
pub async fn deny_status_writes(
    env: &TestEnv,
    ns: &str,
    probe: &str,
    limit: std::time::Duration,
) -> Result<String> {
    use kube::api::{Api, Patch, PatchParams};
    let name = format!("vws-deny-status-{ns}");
    deny_in_namespace(
        env,
        ns,
        &name,
        serde_json::json!({ "apiGroups": ["vworkspace.io"], "apiVersions": ["v1alpha1"], "operations": ["UPDATE"], "resources": ["applicationinstances/status"] }),
        &format!("!has(object.metadata.labels) || !('{DENY_STATUS_LABEL}' in object.metadata.labels)"),
        "status writes of this object are denied by the test",
    )
    .await?;
    let api: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), ns);
    vworkspace_testkit::env::poll_until(
        limit,
        "the admission policy to deny status writes",
        || async {
            let write = api
                .patch_status(
                    probe,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "status": { "observedGeneration": 0 } })),
                )
                .await;
            matches!(write, Err(kube::Error::Api(ref s)) if s.code == 422 || s.code == 403)
                .then_some(())
        },
    )
    .await?;
    Ok(name)
}
