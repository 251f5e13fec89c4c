//! The control plane's state in one SQLite file: orgs, clusters (with hashed tokens),
//! jobs, audit events and heartbeats.
//!
//! Both the server and the admin CLI open the same file; WAL mode lets the CLI write
//! while the server reads, and a busy timeout serialises the writers.
//!
//! Invariants:
//! * a bearer token is never stored: only its SHA-256 ([`crate::token::hash`]), unique
//!   per cluster, so a lookup compares digests and a leaked database leaks no token;
//! * an audit event is stored at most once: `event_id` is the primary key and the insert
//!   is `ON CONFLICT(event_id) DO NOTHING`, one transaction per batch, so counting the
//!   rows the statement changed tells new events from duplicates (also within a batch);
//! * a job's document is stored verbatim, whatever it contains; its state only moves
//!   forward: `queued` → `delivered` → `applied` | `rejected`, and an acknowledged job
//!   keeps its first acknowledgement (a different one is a conflict);
//! * org and cluster ids are DNS labels, and a cluster id is unique across orgs (it is
//!   the `cluster_id` every event and job names, so it must identify one cluster).

use std::path::Path;

use chrono::{SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use vworkspace_api::AuditEvent;
use vworkspace_api::agent_api::{Heartbeat, Job, JobState, JobStatusReport};

use crate::token;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, corruption, a lock held too long).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file's directory could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A name is not a DNS label.
    #[error(
        "{what} {value:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')"
    )]
    InvalidName {
        /// `org` or `cluster`.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// The org or cluster already exists.
    #[error("{what} {value:?} already exists")]
    AlreadyExists {
        /// `org`, `cluster` or `job`.
        what: &'static str,
        /// Its id.
        value: String,
    },
    /// The org or cluster does not exist.
    #[error("{what} {value:?} does not exist")]
    NotFound {
        /// `org` or `cluster`.
        what: &'static str,
        /// Its id.
        value: String,
    },
    /// A stored row could not be turned back into an event (a bug or a hand edit).
    #[error("stored event {event_id} is unreadable: {reason}")]
    Corrupt {
        /// The event.
        event_id: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// A stable label for logs.
    pub fn category(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) => "Sqlite",
            StoreError::CreateDir { .. } => "CreateDir",
            StoreError::InvalidName { .. } => "InvalidName",
            StoreError::AlreadyExists { .. } => "AlreadyExists",
            StoreError::NotFound { .. } => "NotFound",
            StoreError::Corrupt { .. } => "Corrupt",
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    token_sha256 BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_heartbeat_at TEXT,
    operator_version TEXT,
    pending_events INTEGER
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    cluster_id TEXT NOT NULL REFERENCES clusters(id),
    created_at TEXT NOT NULL,
    document TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    message TEXT NOT NULL DEFAULT '',
    delivered_at TEXT,
    acknowledged_at TEXT,
    UNIQUE (cluster_id, id)
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (cluster_id, state, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    cluster_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    namespace TEXT,
    application_instance TEXT,
    operation_id TEXT,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    operator_version TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_timeline ON events (org_id, occurred_at, seq);
";

/// The cluster a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    /// The cluster id.
    pub id: String,
    /// Its org.
    pub org_id: String,
}

/// A job as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    /// Job id (unique per cluster).
    pub id: String,
    /// The cluster it is for.
    pub cluster_id: String,
    /// When it was enqueued (RFC 3339, UTC).
    pub created_at: String,
    /// The `type` field of the document, or `-` when the document has none.
    pub job_type: String,
    /// `queued`, `delivered`, `applied` or `rejected`.
    pub state: String,
    /// The agent's message (empty until acknowledged).
    pub message: String,
    /// The document, verbatim.
    pub document: String,
}

/// What a status report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Recorded now.
    Recorded,
    /// The job already had this state; nothing changed.
    Unchanged,
    /// The job already has another state.
    Conflict {
        /// The state it has.
        state: String,
    },
    /// No such job for this cluster.
    NotFound,
}

/// One timeline row: the event as received plus when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// The event, every payload field.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// When the control plane stored it (RFC 3339, UTC, milliseconds).
    pub received_at: String,
}

/// Timeline filters; `None` means any. Each is an exact match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TimelineFilter {
    /// `cluster_id`.
    pub cluster: Option<String>,
    /// `namespace`.
    pub namespace: Option<String>,
    /// `application_instance`.
    pub application: Option<String>,
    /// `operation_id`.
    pub operation: Option<String>,
    /// `kind`.
    pub kind: Option<String>,
}

/// A cluster's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRow {
    /// Cluster id.
    pub id: String,
    /// Org id.
    pub org_id: String,
    /// When the last heartbeat arrived.
    pub last_heartbeat_at: Option<String>,
    /// The operator version it reported.
    pub operator_version: Option<String>,
    /// Events pending in its buffer, as reported.
    pub pending_events: Option<u64>,
}

/// Now, RFC 3339 UTC with milliseconds (sorts as text).
pub fn now_millis() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, RFC 3339 UTC in whole seconds.
pub fn now_seconds() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// True when `value` is an RFC 1123 DNS label.
pub fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn check_label(what: &'static str, value: &str) -> Result<(), StoreError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating when missing) the database at `path`, with its schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        // WAL: readers never block the writer (server and CLI share the file);
        // synchronous=NORMAL is durable across process crashes, which is what a
        // reference implementation needs, at a fraction of FULL's fsyncs.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Creates an org.
    pub fn create_org(&self, id: &str) -> Result<(), StoreError> {
        check_label("org", id)?;
        match self.conn.execute(
            "INSERT INTO orgs (id, created_at) VALUES (?1, ?2)",
            params![id, now_seconds()],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists {
                what: "org",
                value: id.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// True when the org exists.
    pub fn org_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM orgs WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Creates a cluster in `org` and returns its bootstrap token, the only time the
    /// token exists in clear.
    pub fn create_cluster(&self, org: &str, id: &str) -> Result<String, StoreError> {
        check_label("org", org)?;
        check_label("cluster", id)?;
        if !self.org_exists(org)? {
            return Err(StoreError::NotFound {
                what: "org",
                value: org.to_owned(),
            });
        }
        let token = token::generate();
        match self.conn.execute(
            "INSERT INTO clusters (id, org_id, token_sha256, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, org, token::hash(&token).as_slice(), now_seconds()],
        ) {
            Ok(_) => Ok(token),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists {
                what: "cluster",
                value: id.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The cluster whose token hashes to `digest`.
    pub fn cluster_for_token(&self, digest: &[u8; 32]) -> Result<Option<ClusterRef>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id, org_id FROM clusters WHERE token_sha256 = ?1")?
            .query_row([digest.as_slice()], |row| {
                Ok(ClusterRef {
                    id: row.get(0)?,
                    org_id: row.get(1)?,
                })
            })
            .optional()?)
    }

    /// The clusters, with their last heartbeat.
    pub fn clusters(&self) -> Result<Vec<ClusterRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, org_id, last_heartbeat_at, operator_version, pending_events
             FROM clusters ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(ClusterRow {
                id: row.get(0)?,
                org_id: row.get(1)?,
                last_heartbeat_at: row.get(2)?,
                operator_version: row.get(3)?,
                pending_events: row
                    .get::<_, Option<i64>>(4)?
                    .map(|n| u64::try_from(n).unwrap_or(0)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores the events of one batch in one transaction; returns (new, duplicates).
    /// The caller has validated that they belong to the sending cluster.
    pub fn insert_events(
        &mut self,
        events: &[AuditEvent],
        received_at: &str,
    ) -> Result<(u64, u64), StoreError> {
        let tx = self.conn.transaction()?;
        let mut accepted = 0u64;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (event_id, cluster_id, org_id, occurred_at, namespace,
                    application_instance, operation_id, kind, reason, message,
                    operator_version, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(event_id) DO NOTHING",
            )?;
            for event in events {
                let occurred_at = time_text(event);
                accepted += stmt.execute(params![
                    event.event_id,
                    event.cluster_id,
                    event.org_id,
                    occurred_at,
                    event.namespace,
                    event.application_instance,
                    event.operation_id,
                    event.kind,
                    event.reason,
                    event.message,
                    event.operator_version,
                    received_at,
                ])? as u64;
            }
        }
        tx.commit()?;
        Ok((accepted, events.len() as u64 - accepted))
    }

    /// How many events are stored (of every org).
    pub fn event_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))?)
    }

    /// Enqueues a job for `cluster` with `document` stored verbatim. Without `id` the
    /// job gets `job-<n>`, `n` counting every job this database has enqueued.
    pub fn enqueue_job(
        &mut self,
        cluster: &str,
        id: Option<&str>,
        document: &str,
    ) -> Result<JobRow, StoreError> {
        let exists = self
            .conn
            .query_row(
                "SELECT 1 FROM clusters WHERE id = ?1",
                [cluster],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound {
                what: "cluster",
                value: cluster.to_owned(),
            });
        }
        let created_at = now_seconds();
        let tx = self.conn.transaction()?;
        // A placeholder id first, so an automatic id can be derived from the row's seq
        // inside the same transaction.
        let placeholder = format!("pending-{}", token::generate());
        match tx.execute(
            "INSERT INTO jobs (id, cluster_id, created_at, document) VALUES (?1, ?2, ?3, ?4)",
            params![id.unwrap_or(&placeholder), cluster, created_at, document],
        ) {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists {
                    what: "job",
                    value: id.unwrap_or_default().to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let seq = tx.last_insert_rowid();
        let job_id = match id {
            Some(id) => id.to_owned(),
            None => {
                let generated = format!("job-{seq}");
                tx.execute(
                    "UPDATE jobs SET id = ?1 WHERE seq = ?2",
                    params![generated, seq],
                )?;
                generated
            }
        };
        tx.commit()?;
        Ok(JobRow {
            id: job_id,
            cluster_id: cluster.to_owned(),
            created_at,
            job_type: job_type(document),
            state: "queued".into(),
            message: String::new(),
            document: document.to_owned(),
        })
    }

    /// The jobs of `cluster` not yet acknowledged, oldest first, at most `limit`; marks
    /// the queued ones delivered.
    pub fn fetch_jobs(&mut self, cluster: &str, limit: u32) -> Result<Vec<Job>, StoreError> {
        let tx = self.conn.transaction()?;
        let jobs = {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, id, created_at, document, state FROM jobs
                 WHERE cluster_id = ?1 AND state IN ('queued', 'delivered')
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![cluster, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    Job {
                        id: row.get(1)?,
                        created_at: row.get(2)?,
                        document: row.get(3)?,
                    },
                    row.get::<_, String>(4)? == "queued",
                ))
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        if jobs.iter().any(|(_, _, queued)| *queued) {
            let now = now_millis();
            let mut mark = tx.prepare_cached(
                "UPDATE jobs SET state = 'delivered', delivered_at = ?1 WHERE seq = ?2",
            )?;
            for (seq, _, queued) in &jobs {
                if *queued {
                    mark.execute(params![now, seq])?;
                }
            }
        }
        tx.commit()?;
        Ok(jobs.into_iter().map(|(_, job, _)| job).collect())
    }

    /// Records the agent's answer for job `id` of `cluster`.
    pub fn report_status(
        &mut self,
        cluster: &str,
        id: &str,
        report: &JobStatusReport,
    ) -> Result<StatusOutcome, StoreError> {
        let wanted = match report.state {
            JobState::Applied => "applied",
            JobState::Rejected => "rejected",
        };
        let tx = self.conn.transaction()?;
        let current: Option<String> = tx
            .query_row(
                "SELECT state FROM jobs WHERE cluster_id = ?1 AND id = ?2",
                params![cluster, id],
                |row| row.get(0),
            )
            .optional()?;
        let outcome = match current.as_deref() {
            None => StatusOutcome::NotFound,
            Some(state) if state == wanted => StatusOutcome::Unchanged,
            Some(state @ ("applied" | "rejected")) => StatusOutcome::Conflict {
                state: state.to_owned(),
            },
            Some(_) => {
                tx.execute(
                    "UPDATE jobs SET state = ?1, message = ?2, acknowledged_at = ?3
                     WHERE cluster_id = ?4 AND id = ?5",
                    params![wanted, report.message, now_millis(), cluster, id],
                )?;
                StatusOutcome::Recorded
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Records a heartbeat of `cluster`.
    pub fn record_heartbeat(&self, cluster: &str, heartbeat: &Heartbeat) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE clusters SET last_heartbeat_at = ?1, operator_version = ?2, pending_events = ?3
             WHERE id = ?4",
            params![
                now_millis(),
                heartbeat.operator_version,
                // SQLite integers are signed; a count beyond i64 is not a real buffer.
                i64::try_from(heartbeat.pending_events).unwrap_or(i64::MAX),
                cluster
            ],
        )?;
        Ok(())
    }

    /// Every job (of `cluster` when given), oldest first.
    pub fn list_jobs(&self, cluster: Option<&str>) -> Result<Vec<JobRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, cluster_id, created_at, document, state, message FROM jobs
             WHERE ?1 IS NULL OR cluster_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([cluster], |row| {
            let document: String = row.get(3)?;
            Ok(JobRow {
                id: row.get(0)?,
                cluster_id: row.get(1)?,
                created_at: row.get(2)?,
                job_type: job_type(&document),
                state: row.get(4)?,
                message: row.get(5)?,
                document,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The org's events, newest first (by `occurred_at`, then arrival), at most `limit`.
    pub fn timeline(
        &self,
        org: &str,
        filter: &TimelineFilter,
        limit: u32,
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT event_id, cluster_id, org_id, occurred_at, namespace, application_instance,
                    operation_id, kind, reason, message, operator_version, received_at
             FROM events
             WHERE org_id = ?1
               AND (?2 IS NULL OR cluster_id = ?2)
               AND (?3 IS NULL OR namespace = ?3)
               AND (?4 IS NULL OR application_instance = ?4)
               AND (?5 IS NULL OR operation_id = ?5)
               AND (?6 IS NULL OR kind = ?6)
             ORDER BY occurred_at DESC, seq DESC LIMIT ?7",
        )?;
        let rows = stmt.query_map(
            params![
                org,
                filter.cluster,
                filter.namespace,
                filter.application,
                filter.operation,
                filter.kind,
                limit
            ],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(3)?,
                    RawEvent {
                        cluster_id: row.get(1)?,
                        org_id: row.get(2)?,
                        namespace: row.get(4)?,
                        application_instance: row.get(5)?,
                        operation_id: row.get(6)?,
                        kind: row.get(7)?,
                        reason: row.get(8)?,
                        message: row.get(9)?,
                        operator_version: row.get(10)?,
                        received_at: row.get(11)?,
                    },
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (event_id, occurred_at, raw) = row?;
            let occurred_at = serde_json::from_value(serde_json::Value::String(occurred_at))
                .map_err(|e| StoreError::Corrupt {
                    event_id: event_id.clone(),
                    reason: e.to_string(),
                })?;
            out.push(TimelineEntry {
                event: AuditEvent {
                    event_id,
                    cluster_id: raw.cluster_id,
                    org_id: raw.org_id,
                    occurred_at,
                    namespace: raw.namespace,
                    application_instance: raw.application_instance,
                    operation_id: raw.operation_id,
                    kind: raw.kind,
                    reason: raw.reason,
                    message: raw.message,
                    operator_version: raw.operator_version,
                },
                received_at: raw.received_at,
            });
        }
        Ok(out)
    }
}

struct RawEvent {
    cluster_id: String,
    org_id: String,
    namespace: Option<String>,
    application_instance: Option<String>,
    operation_id: Option<String>,
    kind: String,
    reason: String,
    message: String,
    operator_version: String,
    received_at: String,
}

/// `occurred_at` in its wire form (RFC 3339 UTC), which is also how it sorts as text.
fn time_text(event: &AuditEvent) -> String {
    match serde_json::to_value(&event.occurred_at) {
        Ok(serde_json::Value::String(s)) => s,
        // Time always serializes to a string; keep something sortable regardless.
        _ => String::new(),
    }
}

/// The `type` of a job document, or `-` when it has none (it may be any text).
fn job_type(document: &str) -> String {
    serde_json::from_str::<serde_json::Value>(document)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for good in ["a", "org-a", "c1", "a-b-c"] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn job_type_tolerates_any_text() {
        assert_eq!(job_type(r#"{"type":"ManageNamespace"}"#), "ManageNamespace");
        assert_eq!(job_type("not json {"), "-");
        assert_eq!(job_type("[1]"), "-");
    }
}
