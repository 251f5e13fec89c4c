//! A real Kubernetes control plane on loopback.
//!
//! [`LocalCluster::start`] runs etcd (no fsync), kube-apiserver (secure port, RBAC,
//! service-account signing), kube-controller-manager, kube-scheduler and kwok with one
//! fake Node, each on free loopback ports, with all state under one directory.
//!
//! Process ownership: an *attached* cluster (tests) starts every process through
//! `setpriv --pdeathsig KILL`, so the kernel kills them if the owning process dies
//! without running `Drop` (a panic abort, SIGKILL, Ctrl-C). A *detached* cluster
//! (`cargo xtask cluster up`) starts them in their own session so they outlive the
//! command; its pids are recorded in `state.json` and `cargo xtask cluster down`
//! stops them. Either way every process's command line names the state directory,
//! which is how [`processes_under`] finds leftovers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};

use crate::binaries::K8sBinaries;
use crate::pki::{CertFiles, ClusterPki};
use crate::probe::{free_port, http_get};

/// Name of the fake node that kwok keeps Ready.
pub const FAKE_NODE: &str = "kwok-node-0";
/// Annotation on a Pod (or a Job's pod template) that makes the simulated container
/// exit with this code instead of 0. Lets tests drive a Job to `Failed`.
pub const EXIT_CODE_ANNOTATION: &str = "testkit.vworkspace.io/exit-code";

/// How a cluster's processes relate to the process that starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel when the starting thread's process dies; stopped on drop.
    Attached,
    /// Runs on after the starting process exits; stopped by [`stop_recorded`].
    Detached,
}

/// What is recorded about a running cluster in `<dir>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Admin kubeconfig (`O=system:masters`).
    pub kubeconfig: PathBuf,
    /// Directory with the binaries that run it (kubectl among them).
    pub bin_dir: PathBuf,
    /// Name and pid of every process, in start order.
    pub processes: Vec<(String, u32)>,
}

#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    args: Vec<String>,
}

/// A running local cluster. See the module docs for how its processes are owned.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    bins: K8sBinaries,
    lifetime: Lifetime,
    procs: Vec<Proc>,
    server: String,
    kubeconfig: PathBuf,
    stopped: bool,
}

impl LocalCluster {
    /// Start a cluster whose state lives in `dir` (wiped first) and wait until it is
    /// usable: API server ready, fake node Ready, service-account controller running.
    pub async fn start(bins: K8sBinaries, dir: &Path, lifetime: Lifetime) -> Result<Self> {
        if dir.exists() {
            let leftovers = processes_under(dir);
            if !leftovers.is_empty() {
                bail!(
                    "{} is still used by running processes {leftovers:?}; stop them first \
                     (`cargo xtask cluster down`)",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        let dir = dir.canonicalize()?;
        let mut cluster = Self {
            server: String::new(),
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            bins,
            lifetime,
            procs: Vec::new(),
            stopped: false,
        };
        // On error the partly started cluster is dropped here, which stops it.
        cluster.boot().await?;
        Ok(cluster)
    }

    async fn boot(&mut self) -> Result<()> {
        let started = Instant::now();
        let dir = self.dir.clone();
        let pki = ClusterPki::generate(&dir.join("pki"))?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let etcd_client = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        self.spawn(
            "etcd",
            vec![
                format!("--data-dir={}", dir.join("etcd").display()),
                "--name=default".into(),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=default={etcd_peer}"),
                // Test data only: durability is not worth the fsync latency here.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        self.wait_until("etcd /health", Duration::from_secs(60), || async {
            let body = http_get(etcd_port, "/health").await.ok()?;
            body.contains("\"health\":\"true\"").then_some(())
        })
        .await?;

        let api_port = free_port()?;
        self.server = format!("https://127.0.0.1:{api_port}");
        self.spawn(
            "kube-apiserver",
            vec![
                format!("--etcd-servers={etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", pki.apiserver.cert.display()),
                format!("--tls-private-key-file={}", pki.apiserver.key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!(
                    "--service-account-key-file={}",
                    pki.service_account_pub.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                // One tenant, no contention to arbitrate: spare the two cores.
                "--enable-priority-and-fairness=false".into(),
                // `VWORKSPACE_APISERVER_PROFILING=1` serves /debug/pprof (see
                // docs/benchmarks.md, "Where the API server's time goes").
                format!(
                    "--profiling={}",
                    std::env::var_os("VWORKSPACE_APISERVER_PROFILING").is_some()
                ),
            ],
        )?;
        self.write_kubeconfig(&self.kubeconfig.clone(), "vworkspace-admin", &pki.admin)?;
        let client = self.client().await?;
        self.wait_until("kube-apiserver /readyz", Duration::from_secs(180), || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
                let text = client.request_text(req).await.ok()?;
                (text.trim() == "ok").then_some(())
            }
        })
        .await?;

        let kcm_kubeconfig = dir.join("controller-manager.kubeconfig");
        self.write_kubeconfig(
            &kcm_kubeconfig,
            "system:kube-controller-manager",
            &pki.controller_manager,
        )?;
        let kcm = kcm_kubeconfig.display().to_string();
        self.spawn(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={kcm}"),
                format!("--authentication-kubeconfig={kcm}"),
                format!("--authorization-kubeconfig={kcm}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", dir.join("kcm-certs").display()),
                format!(
                    "--service-account-private-key-file={}",
                    pki.service_account_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                // As kubeadm does: each controller acts as its own service account, bound
                // to the bootstrap `system:controller:*` roles, so RBAC is real here too.
                "--use-service-account-credentials=true".into(),
                "--controllers=*".into(),
            ],
        )?;

        let sched_kubeconfig = dir.join("scheduler.kubeconfig");
        self.write_kubeconfig(&sched_kubeconfig, "system:kube-scheduler", &pki.scheduler)?;
        let sched = sched_kubeconfig.display().to_string();
        self.spawn(
            "kube-scheduler",
            vec![
                format!("--kubeconfig={sched}"),
                format!("--authentication-kubeconfig={sched}"),
                format!("--authorization-kubeconfig={sched}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", dir.join("scheduler-certs").display()),
            ],
        )?;

        let stages = dir.join("kwok-stages.yaml");
        std::fs::write(&stages, KWOK_STAGES)?;
        self.spawn(
            "kwok",
            vec![
                format!("--kubeconfig={}", self.kubeconfig.display()),
                format!("--config={}", stages.display()),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.244.0.1/24".into(),
                "--node-ip=10.244.255.1".into(),
                // kwok renews the node's Lease like a kubelet, so the node lifecycle
                // controller sees a healthy node and lifts the not-ready taint.
                "--node-lease-duration-seconds=40".into(),
            ],
        )?;

        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": FAKE_NODE,
                "annotations": { "kwok.x-k8s.io/node": "fake" },
                "labels": {
                    "kubernetes.io/hostname": FAKE_NODE,
                    "kubernetes.io/os": "linux",
                    "type": "kwok"
                }
            }
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        // Schedulable means Ready *and* the not-ready taint that admission puts on every
        // new node lifted again by the node lifecycle controller.
        self.wait_until(
            "the fake node to be schedulable",
            Duration::from_secs(90),
            || {
                let nodes = nodes.clone();
                async move {
                    let node = nodes.get(FAKE_NODE).await.ok()?;
                    let tainted = node
                        .spec
                        .and_then(|s| s.taints)
                        .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
                    let ready = node
                        .status?
                        .conditions?
                        .into_iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    (ready && !tainted).then_some(())
                }
            },
        )
        .await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        self.wait_until(
            "the service-account controller (default/default)",
            Duration::from_secs(90),
            || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten().map(|_| ()) }
            },
        )
        .await?;

        self.write_state()?;
        tracing::info!(server = %self.server, elapsed = ?started.elapsed(), "local cluster ready");
        Ok(())
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin kubeconfig path.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pids of the processes this cluster started, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| (p.name.to_owned(), p.child.id()))
            .collect()
    }

    /// An admin client.
    pub async fn client(&self) -> Result<Client> {
        client_for(&self.kubeconfig).await
    }

    /// Leave the processes running (a detached cluster handed to `cluster down`).
    pub fn release(mut self) -> ClusterState {
        self.stopped = true;
        self.state()
    }

    /// Stop every process, newest first: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        while let Some(mut proc) = self.procs.pop() {
            terminate(proc.name, &mut proc.child);
        }
        let left = processes_under(&self.dir);
        if !left.is_empty() {
            bail!("processes still running after stop: {left:?}");
        }
        Ok(())
    }

    fn state(&self) -> ClusterState {
        ClusterState {
            server: self.server.clone(),
            kubeconfig: self.kubeconfig.clone(),
            bin_dir: self.bins.dir().to_owned(),
            processes: self.pids(),
        }
    }

    fn write_state(&self) -> Result<()> {
        let path = self.dir.join("state.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&self.state())?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn spawn(&mut self, name: &'static str, args: Vec<String>) -> Result<()> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let binary = self.bins.path(name);
        let mut cmd = match self.lifetime {
            Lifetime::Attached => {
                let mut cmd = Command::new("setpriv");
                cmd.args(["--pdeathsig", "KILL", "--"]).arg(&binary);
                cmd
            }
            Lifetime::Detached => {
                let mut cmd = Command::new("setsid");
                cmd.arg(&binary);
                cmd
            }
        };
        cmd.args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let spawned_args = args.clone();
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (via {:?})",
                binary.display(),
                cmd.get_program()
            )
        })?;
        tracing::debug!(name, pid = child.id(), "started");
        self.procs.push(Proc {
            name,
            child,
            log,
            args: spawned_args,
        });
        Ok(())
    }

    /// SIGKILL the component `name` (e.g. `kube-apiserver`), as a crash would, and wait
    /// until it is gone. For tests that own a private cluster: never on the shared one.
    pub fn kill_component(&mut self, name: &str) -> Result<()> {
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no component {name}"))?;
        proc.child.kill()?;
        proc.child.wait()?;
        Ok(())
    }

    /// Start the component `name` again with the very command line it had (after
    /// [`kill_component`](Self::kill_component)); the old log is kept as `<name>.log.1`.
    pub fn restart_component(&mut self, name: &str) -> Result<()> {
        let index = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no component {name}"))?;
        let old = self.procs.remove(index);
        let _ = std::fs::rename(&old.log, old.log.with_extension("log.1"));
        self.spawn(old.name, old.args)
    }

    /// Poll `check` until it yields `Some`, failing early if a process died.
    async fn wait_until<F, Fut>(&mut self, what: &str, limit: Duration, check: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<()>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if check().await.is_some() {
                return Ok(());
            }
            self.ensure_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "timed out after {limit:?} waiting for {what}; logs in {}",
                    self.dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn ensure_alive(&mut self) -> Result<()> {
        for proc in &mut self.procs {
            if let Some(status) = proc.child.try_wait()? {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(anyhow!(
                    "{} exited with {status} during start-up; last lines of {}:\n{}",
                    proc.name,
                    proc.log.display(),
                    tail.join("\n")
                ));
            }
        }
        Ok(())
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, creds: &CertFiles) -> Result<()> {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: vworkspace-local\n  cluster:\n    \
             server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    \
             client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: vworkspace-local\n  \
             context:\n    cluster: vworkspace-local\n    user: {user}\n\
             current-context: vworkspace-local\n",
            server = self.server,
            ca = self.dir.join("pki/ca.crt").display(),
            cert = creds.cert.display(),
            key = creds.key.display(),
        );
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("local cluster: {err:#}");
        }
    }
}

/// A client for a kubeconfig file (first context).
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn terminate(name: &str, child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("local cluster: {name} ignored SIGTERM for 10s; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// Read `<dir>/state.json` of a detached cluster.
pub fn read_state(dir: &Path) -> Result<Option<ClusterState>> {
    let path = dir.join("state.json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Stop the processes of a detached cluster recorded in `dir`. Only processes whose
/// command line names `dir` are signalled, so a recycled pid is never hit.
pub fn stop_recorded(dir: &Path) -> Result<usize> {
    let mut stopped = 0;
    for _ in 0..2 {
        let procs = processes_under(dir);
        if procs.is_empty() {
            break;
        }
        for (pid, _) in &procs {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !processes_under(dir).is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (pid, _) in processes_under(dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        stopped += procs.len();
    }
    let left = processes_under(dir);
    if !left.is_empty() {
        bail!("could not stop {left:?}");
    }
    Ok(stopped)
}

/// Every live process whose command line mentions `dir`: the processes of the
/// cluster whose state lives there (they all take paths inside it as flags).
pub fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // Zombies have an empty command line and are not running.
        let cmdline = raw
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if !cmdline.is_empty() && cmdline.contains(&needle) && !is_zombie(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// kwok stages for the fake node and its pods. The node is made Ready once. A pod
/// bound to it starts running at once; a Job's pod then terminates with exit code 0,
/// or with the code in [`EXIT_CODE_ANNOTATION`] (which makes the Job fail). A pod
/// being deleted is removed.
const KWOK_STAGES: &str = r#"
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: vws-node-ready
spec:
  resourceRef: { apiGroup: v1, kind: Node }
  selector:
    matchExpressions:
    - { key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ["True"] }
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
      addresses:
      - { address: {{ NodeIP | Quote }}, type: InternalIP }
      - { address: {{ NodeName | Quote }}, type: Hostname }
      allocatable: { cpu: "64", memory: 256Gi, pods: "500" }
      capacity: { cpu: "64", memory: 256Gi, pods: "500" }
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
        kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
        containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
        kernelVersion: {{ printf "kwok-%s" Version | Quote }}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: vws-pod-running
spec:
  resourceRef: { apiGroup: v1, kind: Pod }
  selector:
    matchExpressions:
    - { key: .metadata.deletionTimestamp, operator: DoesNotExist }
    - { key: .status.phase, operator: In, values: [Pending] }
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - { type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }} }
      - { type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }} }
      - { type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }} }
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        started: true
        restartCount: 0
        state: { running: { startedAt: {{ $now | Quote }} } }
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: vws-job-pod-exit
spec:
  resourceRef: { apiGroup: v1, kind: Pod }
  selector:
    matchExpressions:
    - { key: .metadata.deletionTimestamp, operator: DoesNotExist }
    - { key: .status.phase, operator: In, values: [Running] }
    - { key: '.metadata.ownerReferences.[].kind', operator: In, values: [Job] }
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $code := "0" }}
      {{ with .metadata.annotations }}{{ with index . "testkit.vworkspace.io/exit-code" }}{{ $code = . }}{{ end }}{{ end }}
      conditions:
      - { type: Ready, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }} }
      - { type: ContainersReady, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }} }
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: false
        started: false
        restartCount: 0
        state:
          terminated:
            exitCode: {{ $code }}
            reason: {{ if eq $code "0" }}Completed{{ else }}Error{{ end }}
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
      phase: {{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: vws-pod-delete
spec:
  resourceRef: { apiGroup: v1, kind: Pod }
  selector:
    matchExpressions:
    - { key: .metadata.deletionTimestamp, operator: Exists }
  next:
    delete: true
"#;
