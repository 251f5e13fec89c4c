//! The upstream Kubernetes binaries: where they are cached and how they are built.
//!
//! The binaries are built from the wrapper modules under `tools/k8s/` with the
//! machine's Go toolchain and cached in `~/.cache/vworkspace/k8s/<key>/bin` (or under
//! `$VWORKSPACE_CACHE_DIR`). The key names the pinned versions and hashes the wrapper
//! modules' sources and the Go version, so a clean checkout on the same machine reuses
//! the cache while a change to a pin builds afresh. A build writes into a scratch
//! directory and renames it into place, so an interrupted build never looks complete.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The pinned Kubernetes release (kube-apiserver, controller manager, scheduler, kubectl).
pub const KUBERNETES_VERSION: &str = "v1.36.3";
/// The pinned etcd release.
pub const ETCD_VERSION: &str = "v3.6.16";
/// The pinned kwok release.
pub const KWOK_VERSION: &str = "v0.8.0";

/// Every binary the local cluster needs, in the order they are built.
pub const ALL: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
];

/// A directory that holds all binaries of [`ALL`].
#[derive(Debug, Clone)]
pub struct K8sBinaries {
    dir: PathBuf,
}

impl K8sBinaries {
    /// The full path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory that holds the binaries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Use the binaries in `dir` as they are (e.g. from `$VWORKSPACE_K8S_BIN`).
    pub fn at(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let missing: Vec<_> = ALL.iter().filter(|b| !dir.join(b).is_file()).collect();
        if !missing.is_empty() {
            bail!(
                "{} lacks {missing:?}; run `cargo xtask k8s build`",
                dir.display()
            );
        }
        Ok(Self { dir })
    }

    /// The cached binaries for the current pins, if all of them are built.
    pub fn cached() -> Result<Option<Self>> {
        if let Ok(dir) = std::env::var("VWORKSPACE_K8S_BIN") {
            return Self::at(dir).map(Some);
        }
        let dir = cache_key_dir()?.join("bin");
        Ok(Self::at(dir).ok())
    }

    /// The cached binaries, building whichever are missing first.
    pub fn ensure() -> Result<Self> {
        if let Some(found) = Self::cached()? {
            return Ok(found);
        }
        build()
    }
}

/// Root of the project's cache outside the checkout.
pub fn cache_root() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("VWORKSPACE_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(dir) = std::env::var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("vworkspace"));
    }
    let home = std::env::var("HOME").context("neither VWORKSPACE_CACHE_DIR nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("vworkspace"))
}

/// `tools/k8s` of this checkout.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/k8s")
}

/// The cache directory for the current pins and wrapper sources.
pub fn cache_key_dir() -> Result<PathBuf> {
    Ok(cache_root()?.join("k8s").join(cache_key()?))
}

/// `kube-v1.36.3_etcd-v3.6.16_kwok-v0.8.0_<hash>`: readable pins plus a hash of every
/// input that changes the output (wrapper sources and the Go version).
pub fn cache_key() -> Result<String> {
    let mut hash = Fnv64::default();
    let tools = tools_dir();
    for module in ["kubernetes", "etcd", "kwok"] {
        let mut files = Vec::new();
        collect_sources(&tools.join(module), &mut files)?;
        files.sort();
        for file in files {
            let rel = file.strip_prefix(&tools).unwrap_or(&file);
            hash.write(rel.to_string_lossy().as_bytes());
            hash.write(
                &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
            );
        }
    }
    hash.write(go_version()?.as_bytes());
    Ok(format!(
        "kube-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_{:012x}",
        hash.finish() & 0xffff_ffff_ffff
    ))
}

fn collect_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_sources(&path, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "go.mod" || n == "go.sum" || n.ends_with(".go"))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn go_version() -> Result<String> {
    let out = Command::new("go")
        .args(["env", "GOVERSION"])
        .output()
        .context("running `go env GOVERSION`: is the Go toolchain installed?")?;
    if !out.status.success() {
        bail!(
            "`go env GOVERSION` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `-X` flags so that `kubectl version` and the server report the real release.
fn kube_version_ldflags() -> String {
    let minor = KUBERNETES_VERSION.split('.').nth(1).unwrap_or_default();
    let mut flags = String::from("-s -w");
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        flags.push_str(&format!(
            " -X {pkg}.gitVersion={KUBERNETES_VERSION} -X {pkg}.gitMajor=1 \
             -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
        ));
    }
    flags
}

/// Take the build lock of `final_dir` (a file next to it), waiting while another
/// process holds it. Released when the returned file is dropped (or the process dies).
fn build_lock(final_dir: &Path) -> Result<std::fs::File> {
    let path = final_dir.with_extension("lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "k8s build: another process is building these binaries; waiting for it ({})",
                path.display()
            );
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

/// Build every binary into the cache (reusing Go's own build cache) and return them.
/// One process at a time builds (a file lock): a second one waits, then finds the
/// binaries the first one built instead of building them again on the same two cores.
pub fn build() -> Result<K8sBinaries> {
    let final_dir = cache_key_dir()?;
    let _lock = build_lock(&final_dir)?;
    if let Ok(built) = K8sBinaries::at(final_dir.join("bin")) {
        eprintln!("k8s build: binaries ready in {}", built.dir().display());
        return Ok(built);
    }
    let scratch = final_dir.with_extension("partial");
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let tools = tools_dir();
    let kube_ld = kube_version_ldflags();
    // (binary, module directory, package, ldflags)
    let plan = [
        ("etcd", "etcd", ".", "-s -w"),
        (
            "kube-apiserver",
            "kubernetes",
            "./cmd/kube-apiserver",
            kube_ld.as_str(),
        ),
        (
            "kube-controller-manager",
            "kubernetes",
            "./cmd/kube-controller-manager",
            kube_ld.as_str(),
        ),
        (
            "kube-scheduler",
            "kubernetes",
            "./cmd/kube-scheduler",
            kube_ld.as_str(),
        ),
        ("kubectl", "kubernetes", "./cmd/kubectl", kube_ld.as_str()),
        ("kwok", "kwok", "sigs.k8s.io/kwok/cmd/kwok", "-s -w"),
    ];
    let started = Instant::now();
    for (name, module, package, ldflags) in plan {
        let out = bin.join(name);
        if out.is_file() {
            eprintln!("k8s build: {name} already in {}", bin.display());
            continue;
        }
        let step = Instant::now();
        eprintln!("k8s build: building {name} (cold builds take minutes on two cores)...");
        let status = Command::new("go")
            .current_dir(tools.join(module))
            .args(["build", "-trimpath", "-ldflags", ldflags, "-o"])
            .arg(&out)
            .arg(package)
            .env("GOFLAGS", "-buildvcs=false -mod=readonly")
            .env("GOTOOLCHAIN", "local")
            .status()
            .with_context(|| format!("starting `go build` for {name}"))?;
        if !status.success() {
            bail!("`go build` of {name} failed with {status}; see the output above");
        }
        eprintln!("k8s build: {name} built in {:.0?}", step.elapsed());
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&scratch, &final_dir)
        .with_context(|| format!("moving {} into place", scratch.display()))?;
    eprintln!(
        "k8s build: all binaries ready in {} ({:.0?})",
        final_dir.join("bin").display(),
        started.elapsed()
    );
    K8sBinaries::at(final_dir.join("bin"))
}

/// FNV-1a: a small stable hash for cache keys (not for security).
#[derive(Debug)]
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate fields so that ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_lock_is_held_until_dropped() {
        let dir = std::env::temp_dir().join(format!("vws-lock-test-{}", std::process::id()));
        let key = dir.join("kube-x");
        let held = build_lock(&key).unwrap();
        let other = std::fs::File::options()
            .write(true)
            .open(key.with_extension("lock"))
            .unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok(), "free once the holder is gone");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hash_separates_fields() {
        let mut a = Fnv64::default();
        a.write(b"ab");
        a.write(b"c");
        let mut b = Fnv64::default();
        b.write(b"a");
        b.write(b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn ldflags_carry_the_pinned_release() {
        let flags = kube_version_ldflags();
        assert!(flags.contains("k8s.io/component-base/version.gitVersion=v1.36.3"));
        assert!(flags.contains("k8s.io/client-go/pkg/version.gitMinor=36"));
    }
}
