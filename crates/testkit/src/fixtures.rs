//! Fixtures shared by the operator's end-to-end tests, the demo and the benchmarks:
//! installing CRDs from the committed manifests, and running the operator as its
//! built binary with its telemetry endpoints on free loopback ports.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::env::poll_until;
use crate::probe::{free_port, http_get};

/// Repository root (this crate lives in `crates/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The operator's committed CRDs (`deploy/crds/*.yaml`).
pub fn operator_crd_files() -> Result<Vec<PathBuf>> {
    yaml_files(&repo_root().join("deploy/crds"))
}

/// The third-party CRDs written for tests (`crates/testkit/crds/*.yaml`).
pub fn third_party_crd_files() -> Result<Vec<PathBuf>> {
    yaml_files(&repo_root().join("crates/testkit/crds"))
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Server-side apply every CRD in `files` and wait until each is Established.
pub async fn apply_crds(client: &Client, files: &[PathBuf]) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let crd: CustomResourceDefinition =
            serde_yaml_from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("vworkspace-testkit").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {name}"))?;
        names.push(name);
    }
    for name in &names {
        poll_until(
            Duration::from_secs(60),
            &format!("{name} to be Established"),
            || async {
                let crd = api.get(name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await?;
    }
    Ok(names)
}

/// YAML → type through JSON (the manifests are plain YAML, one document each).
fn serde_yaml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let value: serde_json::Value = serde_yaml::from_str(text)?;
    Ok(serde_json::from_value(value)?)
}

/// The operator running as its built binary.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Option<Child>,
    /// Its stdout+stderr (JSON logs).
    pub log: PathBuf,
    /// `--audit-log-file`.
    pub audit_log: PathBuf,
    /// `--metrics-bind-address` port.
    pub metrics_port: u16,
    /// `--health-probe-bind-address` port.
    pub probe_port: u16,
}

impl OperatorProcess {
    /// Start `binary` against `kubeconfig`, with telemetry on free loopback ports and
    /// logs and audit events in `dir`; `extra` flags are appended.
    pub fn spawn(binary: &Path, kubeconfig: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let metrics_port = free_port()?;
        let probe_port = free_port()?;
        let log = dir.join("operator.log");
        let audit_log = dir.join("audit.jsonl");
        let out = File::create(&log)?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(binary)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--metrics-bind-address=127.0.0.1:{metrics_port}"))
            .arg(format!(
                "--health-probe-bind-address=127.0.0.1:{probe_port}"
            ))
            .arg(format!("--audit-log-file={}", audit_log.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child: Some(child),
            log,
            audit_log,
            metrics_port,
            probe_port,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Body of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String> {
        Ok(body(&http_get(self.metrics_port, "/metrics").await?))
    }

    /// Status code and body of a GET on the probe port.
    pub async fn probe(&self, path: &str) -> Result<(u16, String)> {
        let response = http_get(self.probe_port, path).await?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("malformed HTTP status line")?;
        Ok((code, body(&response)))
    }

    /// The log lines written so far.
    pub fn log_lines(&self) -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(&self.log)?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// The audit events written so far (one JSON object each).
    pub fn audit_events(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    }

    /// Fail if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("operator exited with {status}; log:\n{log}");
        }
        Ok(())
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// SIGKILL, as a crash or a node loss would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (what Kubernetes does on a rollout); SIGKILL after 20s.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn body(response: &str) -> String {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
