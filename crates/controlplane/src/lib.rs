//! The reference control plane: the agent API (audit-event ingest, the jobs long-poll,
//! job status, heartbeats) over one SQLite file, with fault switches for tests, request
//! counters, and an org timeline as JSON and as a live web page. `docs/controlplane.md`
//! describes it for a person; `docs/agent-api.openapi.yaml` is the agent API.
//!
//! Start it in-process with [`serve`]; the binary `vworkspace-controlplane` wraps the
//! same call (`serve`) and adds the admin CLI over [`store::Store`].
//!
//! Invariants:
//! * the wire types are `vworkspace_api::agent_api`'s and nothing else;
//! * tokens (cluster and admin) exist in memory only as SHA-256 digests once the server
//!   runs; [`Config`]'s `Debug` redacts the admin token;
//! * [`Running::shutdown`] returns once the listener is closed and every connection
//!   is gone, so a test may reopen the database or the port right after.

pub mod error;
pub mod faults;
mod page;
mod server;
pub mod store;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{FaultSpec, PathClass};
pub use store::{Store, StoreError};

/// Default largest request body: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Default longest long-poll wait.
pub const DEFAULT_LONG_POLL_MAX: Duration = Duration::from_secs(30);

/// How to run the server.
#[derive(Clone)]
pub struct Config {
    /// The SQLite file (created with its directory when missing).
    pub db_path: PathBuf,
    /// Where to listen; port 0 picks a free one ([`Running::addr`] tells which).
    pub listen: SocketAddr,
    /// Larger bodies are answered 413.
    pub max_body_bytes: usize,
    /// Requests per second per token (bursts of the same size); `None`: unlimited.
    pub rate_limit_per_second: Option<u32>,
    /// `wait_seconds` of a long-poll is capped at this.
    pub long_poll_max: Duration,
    /// Guards `/admin/*` and the timeline; without it only loopback clients get them.
    pub admin_token: Option<String>,
    /// Fault switches in place from the first request on (as if set through
    /// `POST /admin/faults` before anyone connected): a test that restarts the server
    /// can have the first answer after the restart be a fault, with no race.
    pub faults: Vec<FaultSpec>,
}

impl Config {
    /// Defaults for everything but the database and the address.
    pub fn new(db_path: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            db_path: db_path.into(),
            listen,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            rate_limit_per_second: None,
            long_poll_max: DEFAULT_LONG_POLL_MAX,
            admin_token: None,
            faults: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("db_path", &self.db_path)
            .field("listen", &self.listen)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("long_poll_max", &self.long_poll_max)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("faults", &self.faults)
            .finish()
    }
}

/// `$XDG_DATA_HOME/vworkspace-controlplane/controlplane.db`, else
/// `$HOME/.local/share/vworkspace-controlplane/controlplane.db`; `None` without either.
pub fn default_db_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share"))
        })?;
    Some(base.join("vworkspace-controlplane").join("controlplane.db"))
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened.
    #[error("database {path}: {source}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The task opening the database died.
    #[error("opening the database failed: {0}")]
    Task(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// `http://ADDR`, the base URL of every endpoint.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, drops every connection and waits until they are gone.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            tracing::warn!(error = %err, "the server task failed");
        }
    }
}

/// Opens the database, binds `config.listen` and serves until [`Running::shutdown`].
pub async fn serve(config: Config) -> Result<Running, ServeError> {
    let path = config.db_path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| ServeError::Task(e.to_string()))?
        .map_err(|source| ServeError::Store {
            path: config.db_path.display().to_string(),
            source,
        })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let state = Arc::new(server::AppState::new(&config, store));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server::accept_loop(listener, state, stopped));
    tracing::info!(%addr, db = %config.db_path.display(), "control plane listening");
    Ok(Running { addr, stop, task })
}
