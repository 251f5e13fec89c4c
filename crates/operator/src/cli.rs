//! Command line. Flags follow controller-runtime's names so Helm values and runbooks
//! written for Go operators carry over: `--metrics-bind-address`,
//! `--health-probe-bind-address`, `--leader-elect`, `--zap-log-level`, `--zap-encoder`.
//! Both `--flag=value` and `--flag value` are accepted.
//!
//! Parse once: every value is turned into its type here ([`Options`] holds bind
//! addresses, log level and encoder, a positive worker count), so a bad value is
//! rejected before anything starts and nothing later parses a flag again.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;

use vworkspace_telemetry::health::BindAddress;
use vworkspace_telemetry::logging::{LogEncoder, LogLevel};

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run the operator.
    Run(Box<Options>),
    /// Write the CRD manifests under `<root>/deploy/crds` (and the test CRDs).
    Crds {
        /// Repository root.
        root: PathBuf,
    },
    /// Print the version.
    Version,
    /// Print usage.
    Help,
}

/// Flags of `run`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `--metrics-bind-address` (`:8080`; `0` disables).
    pub metrics_bind_address: BindAddress,
    /// `--health-probe-bind-address` (`:8081`; `0` disables).
    pub health_probe_bind_address: BindAddress,
    /// `--leader-elect`.
    pub leader_elect: bool,
    /// `--leader-election-id`: the Lease name.
    pub leader_election_id: String,
    /// `--namespace`: where the operator lives (Lease, Cluster).
    pub namespace: String,
    /// `--zap-log-level`.
    pub zap_log_level: LogLevel,
    /// `--zap-encoder`.
    pub zap_encoder: LogEncoder,
    /// `--cluster-id`: an explicit override of the Cluster CR's name, which it must
    /// agree with. `None`: taken from the one Cluster in `--namespace`.
    pub cluster_id: Option<String>,
    /// `--org-id`: an explicit override of the Cluster CR's `spec.orgId`, which it must
    /// agree with. `None`: taken from the Cluster.
    pub org_id: Option<String>,
    /// `--max-concurrent-reconciles` per controller.
    pub max_concurrent_reconciles: NonZeroUsize,
    /// `--audit-log-file`: also append audit events to this file as JSON lines.
    pub audit_log_file: Option<PathBuf>,
    /// `--kubeconfig` (else in-cluster or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// `--identity`: this replica's name in the Lease (defaults to `$POD_NAME` or host name + pid).
    pub identity: String,
    /// `--watch-namespace`: reconcile only this namespace (default: all namespaces).
    pub watch_namespace: Option<String>,
    /// `--graceful-shutdown-timeout`: how long in-flight reconciles may finish on SIGTERM
    /// (controller-runtime's `GracefulShutdownTimeout`, 30s).
    pub graceful_shutdown_timeout: vworkspace_api::GoDuration,
    /// `--cluster-resync`: the longest time between two reports on the Cluster (ages in
    /// messages, CRD schemas, the Flux version), 30s.
    pub cluster_resync: vworkspace_api::GoDuration,
    /// `--job-poll-wait`: how long one long-poll for jobs waits on the control plane, 30s.
    pub job_poll_wait: vworkspace_api::GoDuration,
    /// `--velero-namespace`: where Velero runs (asked for its version there), `velero`.
    pub velero_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            metrics_bind_address: BindAddress::Listen {
                host: "0.0.0.0".into(),
                port: 8080,
            },
            health_probe_bind_address: BindAddress::Listen {
                host: "0.0.0.0".into(),
                port: 8081,
            },
            leader_elect: false,
            leader_election_id: "vworkspace-operator".into(),
            namespace: env("POD_NAMESPACE").unwrap_or_else(|| "vworkspace-system".into()),
            zap_log_level: LogLevel::Info,
            zap_encoder: LogEncoder::Json,
            cluster_id: env("VWORKSPACE_CLUSTER_ID"),
            org_id: env("VWORKSPACE_ORG_ID"),
            max_concurrent_reconciles: NonZeroUsize::MIN.saturating_add(3),
            audit_log_file: None,
            kubeconfig: None,
            identity: env("POD_NAME").unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "operator".into());
                format!("{host}-{}", std::process::id())
            }),
            watch_namespace: env("WATCH_NAMESPACE"),
            graceful_shutdown_timeout: vworkspace_api::GoDuration::from_secs(30),
            cluster_resync: vworkspace_api::GoDuration::from_secs(30),
            job_poll_wait: vworkspace_api::GoDuration::from_secs(30),
            velero_namespace: "velero".into(),
        }
    }
}

/// Usage text.
pub const USAGE: &str = "usage: vworkspace-operator [run] [flags] | crds [--root DIR] | version

flags of run (defaults in brackets):
  --metrics-bind-address ADDR       serve /metrics on ADDR [:8080]; 0 disables
  --health-probe-bind-address ADDR  serve /healthz and /readyz on ADDR [:8081]; 0 disables
  --leader-elect                    elect a leader through a Lease before reconciling [false]
  --leader-election-id NAME         name of that Lease [vworkspace-operator]
  --namespace NS                    the operator's namespace [$POD_NAMESPACE or vworkspace-system]
  --zap-log-level LEVEL             debug|info|warn|error [info]; RUST_LOG refines it
  --zap-encoder ENC                 json|console [json]
  --cluster-id ID                   override: must equal the Cluster's name [$VWORKSPACE_CLUSTER_ID or
                                    the name of the one Cluster in --namespace]
  --org-id ID                       override: must equal the Cluster's spec.orgId [$VWORKSPACE_ORG_ID
                                    or the Cluster's spec.orgId]
  --max-concurrent-reconciles N     workers per controller [4]
  --audit-log-file PATH             also append audit events to PATH as JSON lines
  --kubeconfig PATH                 kubeconfig to use [in-cluster, else $KUBECONFIG]
  --identity NAME                   this replica's Lease identity [$POD_NAME or host-pid]
  --watch-namespace NS              reconcile only namespace NS [$WATCH_NAMESPACE or all]
  --graceful-shutdown-timeout DUR   on SIGTERM, let running reconciles finish this long [30s]
  --cluster-resync DUR              report on the Cluster at least this often [30s]
  --job-poll-wait DUR               Pull mode: how long one long-poll for jobs waits [30s]
  --velero-namespace NS             where Velero runs, for Cluster.status.veleroVersion [velero]";

/// Parse the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut args = args.iter().map(String::as_str).peekable();
    match args.peek().copied() {
        Some("crds") => {
            args.next();
            let mut root = PathBuf::from(".");
            while let Some(arg) = args.next() {
                let (flag, inline) = split(arg);
                match flag {
                    "--root" => root = PathBuf::from(value(flag, inline, &mut args)?),
                    other => return Err(format!("unknown flag {other:?} for crds")),
                }
            }
            return Ok(Command::Crds { root });
        }
        Some("version" | "--version") => return Ok(Command::Version),
        Some("help" | "--help" | "-h") => return Ok(Command::Help),
        Some("run") => {
            args.next();
        }
        _ => {}
    }
    let mut o = Options::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = split(arg);
        match flag {
            "--metrics-bind-address" => o.metrics_bind_address = typed(flag, inline, &mut args)?,
            "--health-probe-bind-address" => {
                o.health_probe_bind_address = typed(flag, inline, &mut args)?;
            }
            "--leader-elect" => {
                o.leader_elect = match inline {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(other) => {
                        return Err(format!("--leader-elect takes true or false, not {other:?}"));
                    }
                };
            }
            "--leader-election-id" => o.leader_election_id = value(flag, inline, &mut args)?,
            "--namespace" => o.namespace = value(flag, inline, &mut args)?,
            "--zap-log-level" => o.zap_log_level = typed(flag, inline, &mut args)?,
            "--zap-encoder" => o.zap_encoder = typed(flag, inline, &mut args)?,
            "--cluster-id" => o.cluster_id = Some(value(flag, inline, &mut args)?),
            "--org-id" => o.org_id = Some(value(flag, inline, &mut args)?),
            "--max-concurrent-reconciles" => {
                let v = value(flag, inline, &mut args)?;
                o.max_concurrent_reconciles = v.parse().map_err(|_| {
                    format!("--max-concurrent-reconciles needs a positive integer, not {v:?}")
                })?;
            }
            "--audit-log-file" => o.audit_log_file = Some(value(flag, inline, &mut args)?.into()),
            "--kubeconfig" => o.kubeconfig = Some(value(flag, inline, &mut args)?.into()),
            "--identity" => o.identity = value(flag, inline, &mut args)?,
            "--graceful-shutdown-timeout" => {
                o.graceful_shutdown_timeout = typed(flag, inline, &mut args)?;
            }
            "--cluster-resync" => o.cluster_resync = typed(flag, inline, &mut args)?,
            "--job-poll-wait" => o.job_poll_wait = typed(flag, inline, &mut args)?,
            "--velero-namespace" => o.velero_namespace = value(flag, inline, &mut args)?,
            "--watch-namespace" => {
                o.watch_namespace = Some(value(flag, inline, &mut args)?).filter(|n| !n.is_empty());
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(Command::Run(Box::new(o)))
}

fn split(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((flag, v)) if flag.starts_with("--") => (flag, Some(v)),
        _ => (arg, None),
    }
}

/// The flag's value, parsed into its type; the error names the flag.
fn typed<'a, T>(
    flag: &str,
    inline: Option<&'a str>,
    rest: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
) -> Result<T, String>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let raw = value(flag, inline, rest)?;
    raw.parse().map_err(|e| format!("{flag}: {e}"))
}

fn value<'a>(
    flag: &str,
    inline: Option<&'a str>,
    rest: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
) -> Result<String, String> {
    if let Some(v) = inline {
        return Ok(v.to_owned());
    }
    match rest.next() {
        Some(v) if !v.starts_with("--") => Ok(v.to_owned()),
        _ => Err(format!("{flag} needs a value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn controller_runtime_flag_forms() {
        let Ok(Command::Run(o)) = parse(&args(
            "--metrics-bind-address=:9090 --health-probe-bind-address 127.0.0.1:9091 --leader-elect --zap-log-level=debug --zap-encoder console",
        )) else {
            panic!("should parse");
        };
        assert_eq!(o.metrics_bind_address.to_string(), "0.0.0.0:9090");
        assert_eq!(o.health_probe_bind_address.to_string(), "127.0.0.1:9091");
        assert!(o.leader_elect);
        assert_eq!(
            (o.zap_log_level, o.zap_encoder),
            (LogLevel::Debug, LogEncoder::Console)
        );
    }

    #[test]
    fn defaults_match_controller_runtime() {
        let Ok(Command::Run(o)) = parse(&[]) else {
            panic!("should parse")
        };
        assert_eq!(
            (
                o.metrics_bind_address.to_string(),
                o.health_probe_bind_address.to_string()
            ),
            ("0.0.0.0:8080".to_owned(), "0.0.0.0:8081".to_owned())
        );
        assert_eq!(o.max_concurrent_reconciles.get(), 4);
        assert!(!o.leader_elect);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert_eq!(
            parse(&args("--bogus")),
            Err("unknown flag \"--bogus\"".into())
        );
        assert!(parse(&args("--max-concurrent-reconciles=0")).is_err());
        assert!(parse(&args("--zap-encoder")).is_err());
        assert!(parse(&args("--leader-elect=maybe")).is_err());
        assert_eq!(
            parse(&args("--zap-log-level=loud")),
            Err(
                "--zap-log-level: invalid log level \"loud\": expected debug, info, warn or error"
                    .into()
            )
        );
        assert!(
            parse(&args("--metrics-bind-address=nope:x"))
                .is_err_and(|e| e.starts_with("--metrics-bind-address: invalid bind address"))
        );
        assert_eq!(
            parse(&args("crds --root /x")),
            Ok(Command::Crds { root: "/x".into() })
        );
    }
}
