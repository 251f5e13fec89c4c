//! Structured logging with zap's keys, as controller-runtime operators log.
//!
//! Invariants of every line written by [`make_layer`] / [`init`]:
//!
//! - JSON encoder: exactly one JSON object per line. Keys, in this order: `level`
//!   (lowercase `debug`/`info`/`warn`/`error`; tracing's TRACE is reported as `debug`,
//!   zap has nothing lower), `ts` (RFC3339, UTC, milliseconds), `msg`, the always-set
//!   `cluster_id`, `org_id`, `operator_version`, `logger` (the tracing target), then
//!   the fields of every enclosing span from the root inwards, then the event's own
//!   fields. An inner span overrides an outer one and the event overrides both, so a
//!   key appears at most once. Field names are used verbatim (`reconcileID` stays
//!   camel-case).
//! - A span or event field whose name collides with one of the fixed keys above is
//!   written as `fields.<name>` instead of overwriting it, so the fixed keys always
//!   mean what the spec says.
//! - Console encoder: zap's console layout, `ts<TAB>LEVEL<TAB>logger<TAB>msg<TAB>{fields}`.
//! - Span fields are stored as JSON values in the span's extensions when the span is
//!   created or recorded (no string post-processing). A span only contributes fields
//!   if the level filter enables it: open the per-reconcile span with `info_span!`.
//! - Secrets never appear: wrap them in [`crate::SecretString`], whose `Debug` and
//!   `Display` print `[REDACTED]`.
//!
//! The usual reconcile span:
//!
//! ```
//! let span = tracing::info_span!(
//!     "reconcile",
//!     controller = "operation",
//!     reconcileID = %"5c1e…",
//!     namespace = "org-myteam",
//!     operation_id = "6b62…",
//! );
//! let _entered = span.enter();
//! tracing::info!(phase = "Running", "child Workflow created");
//! ```

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `--zap-log-level`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogLevel {
    /// Per-step reconciliation traces.
    Debug,
    /// Transitions, external writes, reconcile start/end, audit sends (the default).
    #[default]
    Info,
    /// Retryable failures.
    Warn,
    /// Non-retryable failures.
    Error,
}

impl LogLevel {
    fn level_filter(self) -> LevelFilter {
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

impl FromStr for LogLevel {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            _ => Err(LogError::InvalidLevel(s.to_owned())),
        }
    }
}

/// `--zap-encoder`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogEncoder {
    /// One JSON object per line (the default; what log pipelines and `jq` want).
    #[default]
    Json,
    /// zap's human-oriented console layout, for local development.
    Console,
}

impl FromStr for LogEncoder {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(LogEncoder::Json),
            "console" => Ok(LogEncoder::Console),
            _ => Err(LogError::InvalidEncoder(s.to_owned())),
        }
    }
}

/// Logger configuration: the flags plus the fields every line carries.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// `--zap-log-level`.
    pub level: LogLevel,
    /// `--zap-encoder`.
    pub encoder: LogEncoder,
    /// `cluster_id` on every line (Cluster.metadata.name).
    pub cluster_id: String,
    /// `org_id` on every line.
    pub org_id: String,
    /// `operator_version` on every line (semver, e.g. `v0.4.2`).
    pub operator_version: String,
    /// Extra `EnvFilter` directives refining `level` (e.g. `kube=warn,vworkspace_agent=debug`).
    /// [`init`] fills it from `RUST_LOG` when `None`.
    pub filter: Option<String>,
}

/// The `cluster_id` and `org_id` every line carries, settable after the logger is
/// installed: the operator learns them from the Cluster CR once the API server
/// answers, and every line from then on carries them.
#[derive(Clone, Debug, Default)]
pub struct LogIdentity(Arc<RwLock<(Value, Value)>>);

impl LogIdentity {
    /// An identity starting with these values.
    pub fn new(cluster_id: &str, org_id: &str) -> Self {
        Self(Arc::new(RwLock::new((
            Value::String(cluster_id.to_owned()),
            Value::String(org_id.to_owned()),
        ))))
    }

    /// Every later line carries `cluster_id` and `org_id`.
    pub fn set(&self, cluster_id: &str, org_id: &str) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = (
            Value::String(cluster_id.to_owned()),
            Value::String(org_id.to_owned()),
        );
    }

    fn get(&self) -> (Value, Value) {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Errors configuring the logger.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `--zap-log-level` is not one of debug|info|warn|error.
    #[error("invalid log level {0:?}: expected debug, info, warn or error")]
    InvalidLevel(String),
    /// `--zap-encoder` is not one of json|console.
    #[error("invalid log encoder {0:?}: expected json or console")]
    InvalidEncoder(String),
    /// `RUST_LOG` (or [`LogOptions::filter`]) does not parse.
    #[error("invalid log filter {filter:?}")]
    InvalidFilter {
        /// The offending directives.
        filter: String,
        /// Why they do not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber writing to stderr (where zap writes), reading
/// `RUST_LOG` when `opts.filter` is `None`. Also routes `log` records into tracing.
/// The returned handle changes `cluster_id` and `org_id` of later lines.
pub fn init(mut opts: LogOptions) -> Result<LogIdentity, LogError> {
    if opts.filter.is_none() {
        opts.filter = std::env::var("RUST_LOG")
            .ok()
            .filter(|f| !f.trim().is_empty());
    }
    let identity = LogIdentity::new(&opts.cluster_id, &opts.org_id);
    let layer = make_layer_with_identity(&opts, io::stderr, identity.clone())?;
    tracing_subscriber::registry().with(layer).try_init()?;
    Ok(identity)
}

/// Directives always applied first (a user's filter can override them).
const QUIET_CLIENT: &str = "kube_client=off,kube_runtime=off";

/// The logging layer (filter included) writing through `writer`; compose it onto a
/// `tracing_subscriber::registry()`. Tests pass a [`LogCapture`].
pub fn make_layer<S, W>(
    opts: &LogOptions,
    writer: W,
) -> Result<Box<dyn Layer<S> + Send + Sync + 'static>, LogError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    make_layer_with_identity(
        opts,
        writer,
        LogIdentity::new(&opts.cluster_id, &opts.org_id),
    )
}

/// [`make_layer`] whose `cluster_id` and `org_id` come from `identity` (initially
/// whatever it holds, not `opts`), so they can change later.
pub fn make_layer_with_identity<S, W>(
    opts: &LogOptions,
    writer: W,
    identity: LogIdentity,
) -> Result<Box<dyn Layer<S> + Send + Sync + 'static>, LogError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The Kubernetes client's own lines are off unless asked for: they carry neither the
    // object nor the operation, repeat on every retry, and some quote whole response
    // bodies (spec values included). The operator logs each failure itself, bounded,
    // with its context. `RUST_LOG=kube_client=debug` turns them back on.
    let level = opts.level.level_filter();
    let directives = match opts.filter.as_deref() {
        Some(user) if !user.trim().is_empty() => format!("{level},{QUIET_CLIENT},{user}"),
        _ => format!("{level},{QUIET_CLIENT}"),
    };
    let directives = directives.as_str();
    let filter = EnvFilter::builder()
        .with_default_directive(opts.level.level_filter().into())
        .parse(directives)
        .map_err(|source| LogError::InvalidFilter {
            filter: directives.to_owned(),
            source,
        })?;
    let format = ZapFormat {
        encoder: opts.encoder,
        identity,
        operator_version: Value::String(opts.operator_version.clone()),
    };
    let fmt_layer = tracing_subscriber::fmt::layer()
        .event_format(format)
        .fmt_fields(NoFields)
        .with_ansi(false)
        .with_writer(writer);
    Ok(SpanFieldsLayer
        .and_then(fmt_layer)
        .with_filter(filter)
        .boxed())
}

/// Keys written by the formatter itself; span/event fields never overwrite them.
const FIXED_KEYS: [&str; 7] = [
    "level",
    "ts",
    "msg",
    "cluster_id",
    "org_id",
    "operator_version",
    "logger",
];

/// Ordered, de-duplicated JSON fields (insertion order kept, last write wins).
#[derive(Debug, Default, Clone)]
struct JsonFields(Vec<(Cow<'static, str>, Value)>);

impl JsonFields {
    fn insert(&mut self, key: Cow<'static, str>, value: Value) {
        let key = if FIXED_KEYS.contains(&key.as_ref()) {
            Cow::Owned(format!("fields.{key}"))
        } else {
            key
        };
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn extend(&mut self, other: &JsonFields) {
        for (k, v) in &other.0 {
            self.insert(k.clone(), v.clone());
        }
    }
}

/// Records tracing field values as JSON values. `message` is kept apart: it is `msg`.
struct JsonVisitor<'a> {
    fields: &'a mut JsonFields,
    message: Option<&'a mut String>,
}

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message"
            && let Some(message) = self.message.as_deref_mut()
        {
            match value {
                Value::String(s) => *message = s,
                other => *message = other.to_string(),
            }
            return;
        }
        self.fields.insert(Cow::Borrowed(field.name()), value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN/Infinity; keep them readable as strings.
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let value =
            i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let value =
            u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // zap writes err.Error(); include the cause chain, which Go errors embed.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        self.put(field, Value::String(text));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// Stores each span's fields as [`JsonFields`] in its extensions.
struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = JsonFields::default();
        attrs.record(&mut JsonVisitor {
            fields: &mut fields,
            message: None,
        });
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<JsonFields>() {
            values.record(&mut JsonVisitor {
                fields,
                message: None,
            });
        }
    }
}

/// A field formatter that formats nothing: span fields live in [`JsonFields`], so the
/// fmt layer's own per-span string would be wasted work.
struct NoFields;

impl<'w> FormatFields<'w> for NoFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'w>,
        _fields: R,
    ) -> fmt::Result {
        Ok(())
    }

    fn add_fields(
        &self,
        _current: &'w mut FormattedFields<Self>,
        _fields: &Record<'_>,
    ) -> fmt::Result {
        Ok(())
    }
}

/// zap's JSON (or console) layout.
struct ZapFormat {
    encoder: LogEncoder,
    identity: LogIdentity,
    operator_version: Value,
}

impl ZapFormat {
    /// The always-set keys after `msg`, in order.
    fn fixed(&self) -> [(&'static str, Value); 3] {
        let (cluster_id, org_id) = self.identity.get();
        [
            ("cluster_id", cluster_id),
            ("org_id", org_id),
            ("operator_version", self.operator_version.clone()),
        ]
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        // zap has no trace level.
        Level::DEBUG | Level::TRACE => "debug",
    }
}

fn write_json<T: serde::Serialize + ?Sized>(writer: &mut Writer<'_>, value: &T) -> fmt::Result {
    let text = serde_json::to_string(value).map_err(|_| fmt::Error)?;
    writer.write_str(&text)
}

impl<S, N> FormatEvent<S, N> for ZapFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

        let mut fields = JsonFields::default();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<JsonFields>() {
                    fields.extend(span_fields);
                }
            }
        }
        let fixed = self.fixed();
        let mut message = String::new();
        event.record(&mut JsonVisitor {
            fields: &mut fields,
            message: Some(&mut message),
        });

        match self.encoder {
            LogEncoder::Json => {
                writer.write_str("{\"level\":")?;
                write_json(&mut writer, level_name(metadata.level()))?;
                writer.write_str(",\"ts\":")?;
                write_json(&mut writer, &ts)?;
                writer.write_str(",\"msg\":")?;
                write_json(&mut writer, &message)?;
                for (key, value) in &fixed {
                    writer.write_char(',')?;
                    write_json(&mut writer, key)?;
                    writer.write_char(':')?;
                    write_json(&mut writer, value)?;
                }
                writer.write_str(",\"logger\":")?;
                write_json(&mut writer, metadata.target())?;
                for (key, value) in &fields.0 {
                    writer.write_char(',')?;
                    write_json(&mut writer, key)?;
                    writer.write_char(':')?;
                    write_json(&mut writer, value)?;
                }
                writer.write_str("}\n")
            }
            LogEncoder::Console => {
                write!(
                    writer,
                    "{ts}\t{}\t{}\t{}\t",
                    level_name(metadata.level()).to_ascii_uppercase(),
                    metadata.target(),
                    // One event, one line: escape what would break it.
                    message.replace('\n', "\\n"),
                )?;
                writer.write_char('{')?;
                let entries = fixed
                    .iter()
                    .map(|(k, v)| (*k, v))
                    .chain(fields.0.iter().map(|(k, v)| (k.as_ref(), v)));
                for (i, (key, value)) in entries.enumerate() {
                    if i > 0 {
                        writer.write_char(',')?;
                    }
                    write_json(&mut writer, key)?;
                    writer.write_char(':')?;
                    write_json(&mut writer, value)?;
                }
                writer.write_char('}')?;
                writer.write_char('\n')
            }
        }
    }
}

/// An in-memory log sink for tests: a [`MakeWriter`] whose clones share one buffer.
#[derive(Clone, Debug, Default)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, lossily decoded.
    pub fn contents(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// The captured lines.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }
}

impl io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests;
