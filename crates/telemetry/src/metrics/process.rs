//! The standard `process_*` metrics, read from procfs at scrape time.
//!
//! Same names, types and meaning as client_golang's process collector, so the usual
//! "process" dashboard panels work unchanged:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`.
//!
//! Invariants: a value that cannot be read (no procfs, e.g. on macOS; an unexpected
//! file format) is omitted from that scrape rather than exposed as a misleading 0,
//! and a read failure never fails the scrape as a whole.

use std::path::{Path, PathBuf};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux reports these in
/// USER_HZ, which is 100 on every architecture Kubernetes runs on; Go's procfs
/// hard-codes the same value (reading it would need `sysconf`, i.e. libc).
const USER_HZ: f64 = 100.0;

/// A [`Collector`] emitting the `process_*` metrics of the current process.
///
/// Register it once: `registry.register_collector(Box::new(ProcessCollector::new()))`.
#[derive(Clone, Debug)]
pub struct ProcessCollector {
    /// `/proc/self` (the process's own directory).
    process_dir: PathBuf,
    /// `/proc/stat` (for the boot time).
    system_stat: PathBuf,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCollector {
    /// A collector for the current process (`/proc/self`).
    pub fn new() -> Self {
        Self::with_proc_root("/proc")
    }

    /// A collector reading `<root>/self/...` and `<root>/stat`; for tests with a
    /// fixture procfs.
    pub fn with_proc_root(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        ProcessCollector {
            process_dir: root.join("self"),
            system_stat: root.join("stat"),
        }
    }

    fn snapshot(&self) -> ProcessSnapshot {
        let mut snapshot = ProcessSnapshot::default();
        let boot_time = std::fs::read_to_string(&self.system_stat)
            .ok()
            .and_then(|s| parse_boot_time(&s));
        if let Ok(stat) = std::fs::read_to_string(self.process_dir.join("stat"))
            && let Some(stat) = parse_stat(&stat)
        {
            snapshot.cpu_seconds = Some((stat.utime + stat.stime) as f64 / USER_HZ);
            snapshot.virtual_memory_bytes = Some(stat.vsize);
            snapshot.start_time_seconds =
                boot_time.map(|boot| boot as f64 + stat.starttime as f64 / USER_HZ);
        }
        // VmRSS is reported in kB, which spares us the page size (`sysconf` again)
        // that `stat`'s rss field would need.
        snapshot.resident_memory_bytes = std::fs::read_to_string(self.process_dir.join("status"))
            .ok()
            .and_then(|s| parse_status_kb(&s, "VmRSS:"))
            .map(|kb| kb.saturating_mul(1024));
        snapshot.open_fds = std::fs::read_dir(self.process_dir.join("fd"))
            .ok()
            .map(|entries| entries.count() as u64);
        snapshot.max_fds = std::fs::read_to_string(self.process_dir.join("limits"))
            .ok()
            .and_then(|s| parse_max_open_files(&s));
        snapshot
    }
}

#[derive(Debug, Default, PartialEq)]
struct ProcessSnapshot {
    cpu_seconds: Option<f64>,
    resident_memory_bytes: Option<u64>,
    virtual_memory_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
fn parse_stat(content: &str) -> Option<Stat> {
    let after_comm = &content[content.rfind(')')? + 1..];
    // Field 3 (state) is index 0 here; field N is index N - 3.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
    })
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(content: &str) -> Option<u64> {
    content
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `kB` value such as `VmRSS:     12345 kB` from `/proc/<pid>/status`.
fn parse_status_kb(content: &str, key: &str) -> Option<u64> {
    content
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of `Max open files` from `/proc/<pid>/limits`; `None` when
/// unlimited (client_golang cannot express that either).
fn parse_max_open_files(content: &str) -> Option<u64> {
    content
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot();
        // Help texts are client_golang's, verbatim (collectors get no automatic `.`).
        if let Some(v) = snapshot.cpu_seconds {
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(metric)?;
        }
        // Integral values stay integers in the exposition ("1024", not "1024.0").
        let int_gauges: [(&str, &str, Option<u64>); 4] = [
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                snapshot.max_fds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                snapshot.open_fds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                snapshot.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                snapshot.virtual_memory_bytes,
            ),
        ];
        for (name, help, value) in int_gauges {
            if let Some(v) = value {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(metric)?;
            }
        }
        if let Some(v) = snapshot.start_time_seconds {
            let metric = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(v).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (vworkspace (op) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        250 130 0 0 20 0 8 0 1500 123457536 2345 18446744073709551615 1 1 0 0 \
                        0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_stat_with_awkward_command_name() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                utime: 250,
                stime: 130,
                starttime: 1500,
                vsize: 123_457_536
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn snapshot_from_fixture_procfs() {
        let root = std::env::temp_dir().join(format!("vws-procfs-{}", std::process::id()));
        let fd_dir = root.join("self/fd");
        std::fs::create_dir_all(&fd_dir).expect("create fixture dir");
        for n in 0..3 {
            std::fs::write(fd_dir.join(n.to_string()), "").expect("write fixture fd");
        }
        std::fs::write(root.join("self/stat"), STAT).expect("write stat");
        std::fs::write(
            root.join("self/status"),
            "Name:\tvworkspace\nVmSize:\t  120564 kB\nVmRSS:\t    9380 kB\n",
        )
        .expect("write status");
        std::fs::write(
            root.join("self/limits"),
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max cpu time              unlimited            unlimited            seconds   \n\
             Max open files            1024                 524288               files     \n",
        )
        .expect("write limits");
        std::fs::write(
            root.join("stat"),
            "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n",
        )
        .expect("write /proc/stat");

        let snapshot = ProcessCollector::with_proc_root(&root).snapshot();
        std::fs::remove_dir_all(&root).expect("clean fixture");

        assert_eq!(
            snapshot,
            ProcessSnapshot {
                cpu_seconds: Some(3.8),
                resident_memory_bytes: Some(9380 * 1024),
                virtual_memory_bytes: Some(123_457_536),
                open_fds: Some(3),
                max_fds: Some(1024),
                start_time_seconds: Some(1_700_000_015.0),
            }
        );
    }

    #[test]
    fn missing_procfs_yields_nothing() {
        let snapshot = ProcessCollector::with_proc_root("/nonexistent-procfs").snapshot();
        assert_eq!(snapshot, ProcessSnapshot::default());
    }
}
