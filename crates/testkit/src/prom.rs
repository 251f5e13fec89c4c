//! The one Prometheus text-exposition parser of the project, for tests, the demo and
//! the benchmark.
//!
//! [`Exposition::parse`] reads the text format 0.0.4 (and the OpenMetrics text that
//! `prometheus-client` writes, which differs only in ways this parser tolerates: a
//! `# EOF` line, `# UNIT` lines, exemplars after ` # `) into [`Sample`]s:
//!
//! * a sample line is `name`, optionally `{label="value",...}` (a trailing comma is
//!   allowed; `\\`, `\"` and `\n` are the escapes of a label value), a value and an
//!   optional integer timestamp in milliseconds;
//! * a value is a Go float: decimal or exponent notation, `+Inf`, `-Inf`, `NaN`;
//! * `# HELP` and `# TYPE` lines are kept as metadata ([`Exposition::metric_type`]);
//!   other comment lines and blank lines are skipped.
//!
//! A line that is none of these is an error with its line number: a test that reads
//! metrics should fail on a broken exposition, not quietly see fewer series.
//!
//! Series are selected by name and a *subset* of labels ([`Exposition::value`],
//! [`Exposition::sum`]); histograms are read by their base name
//! ([`Exposition::histogram`]) and [`Histogram::quantile`] interpolates like PromQL's
//! `histogram_quantile`.

use std::collections::BTreeMap;
use std::fmt;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels in the order they were exposed.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries one.
    pub timestamp: Option<i64>,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The labels as a map (sorted by name).
    pub fn label_map(&self) -> BTreeMap<&str, &str> {
        self.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The `le` label of a histogram bucket as a number (`+Inf` included).
    pub fn le(&self) -> Option<f64> {
        parse_le(self.label("le")?)
    }

    /// Whether this sample is series `name` and carries every label of `labels`.
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name && labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A line that is not valid text exposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub reason: String,
    pub text: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metrics line {}: {}: {:?}",
            self.line, self.reason, self.text
        )
    }
}

impl std::error::Error for ParseError {}

/// A parsed exposition: every sample, in order, and the `# HELP` / `# TYPE` metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Metric family name → type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
    /// Metric family name → help text.
    pub help: BTreeMap<String, String>,
}

impl Exposition {
    /// Parse a whole exposition.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut out = Self::default();
        for (i, line) in text.lines().enumerate() {
            let error = |reason: &str| ParseError {
                line: i + 1,
                reason: reason.to_owned(),
                text: line.to_owned(),
            };
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, [' ', '\t']);
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        out.types.insert(name.to_owned(), kind.trim().to_owned());
                    }
                    (Some("HELP"), Some(name), help) => {
                        out.help
                            .insert(name.to_owned(), unescape_help(help.unwrap_or_default()));
                    }
                    (Some("TYPE" | "HELP"), ..) => return Err(error("incomplete metadata")),
                    _ => {}
                }
                continue;
            }
            out.samples
                .push(parse_sample(trimmed).map_err(|e| error(&e))?);
        }
        Ok(out)
    }

    /// The samples of series `name` that carry every label of `labels`.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.matches(name, labels))
    }

    /// The value of the one series `name` carrying `labels` (a subset of its labels).
    /// `None` when no series matches, and also when several do: a selector that is
    /// ambiguous says nothing about one series (use [`Self::sum`] to add them up).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.series(name, labels);
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// The sum over every series `name` carrying `labels`; 0 when none does.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).map(|s| s.value).sum()
    }

    /// The sum over every series `name` carrying `labels`, grouped by the values of
    /// the labels `by` (joined with a space; `?` for a missing label).
    pub fn sum_by(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        by: &[&str],
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.series(name, labels) {
            let key = by
                .iter()
                .map(|k| s.label(k).unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(" ");
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }

    /// The metric type from `# TYPE`, by family name.
    pub fn metric_type(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// Histogram `base` (its `_bucket`, `_count` and `_sum` series) for the series
    /// carrying `labels`, summed over whatever other labels they have. `None` when it
    /// has no bucket at all.
    pub fn histogram(&self, base: &str, labels: &[(&str, &str)]) -> Option<Histogram> {
        let bucket_name = format!("{base}_bucket");
        let mut buckets: BTreeMap<OrderedLe, f64> = BTreeMap::new();
        for s in self.series(&bucket_name, labels) {
            let le = s.le()?;
            *buckets.entry(OrderedLe(le)).or_insert(0.0) += s.value;
        }
        if buckets.is_empty() {
            return None;
        }
        let count_name = format!("{base}_count");
        let sum_name = format!("{base}_sum");
        let has_count = self.series(&count_name, labels).next().is_some();
        let buckets: Vec<(f64, f64)> = buckets.into_iter().map(|(le, c)| (le.0, c)).collect();
        let count = if has_count {
            self.sum(&count_name, labels)
        } else {
            buckets.last().map_or(0.0, |(_, c)| *c)
        };
        Some(Histogram {
            buckets,
            count,
            sum: self.sum(&sum_name, labels),
        })
    }
}

/// `le` values as a map key (they are never NaN in a valid exposition).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedLe(f64);

impl Eq for OrderedLe {}

impl PartialOrd for OrderedLe {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedLe {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A histogram read from an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Cumulative `(le, count)` pairs by increasing `le`, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    /// `_count` (the `+Inf` bucket when there is no `_count` series).
    pub count: f64,
    /// `_sum` (0 when absent).
    pub sum: f64,
}

impl Histogram {
    /// See [`histogram_quantile`].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        histogram_quantile(q, &self.buckets)
    }

    /// The `le` bounds as exposed numbers, in order.
    pub fn bounds(&self) -> Vec<f64> {
        self.buckets.iter().map(|(le, _)| *le).collect()
    }
}

/// PromQL's `histogram_quantile` over cumulative `(le, count)` buckets: find the bucket
/// holding rank `q × total` and interpolate linearly within it (the first bucket starts
/// at 0). A rank in the `+Inf` bucket yields the largest finite bound. `None` without
/// observations or without a `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut buckets = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (last_le, total) = *buckets.last()?;
    if last_le != f64::INFINITY || buckets.len() < 2 || total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let b = buckets.iter().position(|(_, count)| *count >= rank)?;
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    let (upper, count) = buckets[b];
    let (lower, below) = if b == 0 {
        if upper <= 0.0 {
            return Some(upper);
        }
        (0.0, 0.0)
    } else {
        buckets[b - 1]
    };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

/// A sample value: Go's float syntax, `+Inf`/`Inf`, `-Inf` and `NaN` included.
pub fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        other => {
            // Rust's parser also accepts "infinity" and friends; the format does not.
            let plain = other
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
            plain.then(|| other.parse().ok()).flatten()
        }
    }
}

/// A histogram bucket's `le` label: `+Inf` or a number.
pub fn parse_le(le: &str) -> Option<f64> {
    parse_value(le).filter(|v| !v.is_nan())
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    if !line.starts_with(is_name_start) {
        return Err("a sample starts with a metric name".into());
    }
    let name_end = line.find(|c| !is_name_char(c)).unwrap_or(line.len());
    let name = line[..name_end].to_owned();
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.trim_start_matches([' ', '\t']).strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    } else if !rest.starts_with([' ', '\t']) {
        return Err("the value is separated from the name by a blank".into());
    }
    // Value, optional timestamp, optional OpenMetrics exemplar after ` # `.
    let rest = match rest.find('#') {
        Some(hash) => &rest[..hash],
        None => rest,
    };
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("value {value:?} is not a float"))?;
    let timestamp = match fields.next() {
        Some(ts) => Some(
            ts.parse::<i64>()
                .or_else(|_| ts.parse::<f64>().map(|secs| (secs * 1000.0) as i64))
                .map_err(|_| format!("timestamp {ts:?} is not a number"))?,
        ),
        None => None,
    };
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp".into());
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// Label pairs in exposition order.
type Labels = Vec<(String, String)>;

/// Labels after the `{`; returns them and the text after the `}`.
fn parse_labels(inner: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut chars = inner.char_indices().peekable();
    let skip_blanks = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| matches!(c, ' ' | '\t')).is_some() {}
    };
    loop {
        // A label name, or the closing brace (also after a trailing comma).
        skip_blanks(&mut chars);
        match chars.next() {
            Some((i, '}')) => return Ok((labels, &inner[i + 1..])),
            Some((_, c)) if is_name_start(c) => {
                let mut key = String::from(c);
                while let Some((_, c)) = chars.next_if(|(_, c)| is_name_char(*c)) {
                    key.push(c);
                }
                skip_blanks(&mut chars);
                if chars.next().map(|(_, c)| c) != Some('=') {
                    return Err(format!("label {key:?} is not followed by '='"));
                }
                skip_blanks(&mut chars);
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(format!("the value of label {key:?} is not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next().ok_or("unterminated label value")?.1 {
                        '"' => break,
                        '\\' => match chars.next().ok_or("unterminated escape")?.1 {
                            'n' => value.push('\n'),
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            other => {
                                value.push('\\');
                                value.push(other);
                            }
                        },
                        other => value.push(other),
                    }
                }
                if labels.iter().any(|(k, _)| *k == key) {
                    return Err(format!("label {key:?} appears twice"));
                }
                labels.push((key, value));
                // `,` (maybe followed by `}`) or `}`.
                skip_blanks(&mut chars);
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => return Ok((labels, &inner[i + 1..])),
                    Some((_, other)) => {
                        return Err(format!("unexpected {other:?} after a label value"));
                    }
                    None => return Err("unterminated label set".into()),
                }
            }
            Some((_, other)) => return Err(format!("unexpected {other:?} in the label set")),
            None => return Err("unterminated label set".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP vworkspace_operator_reconcile_duration_seconds Time per reconcile.
# TYPE vworkspace_operator_reconcile_duration_seconds histogram
vworkspace_operator_reconcile_duration_seconds_bucket{controller="applicationinstance",le="0.01"} 10
vworkspace_operator_reconcile_duration_seconds_bucket{controller="applicationinstance",le="0.025"} 90
vworkspace_operator_reconcile_duration_seconds_bucket{controller="applicationinstance",le="0.05"} 100
vworkspace_operator_reconcile_duration_seconds_bucket{controller="applicationinstance",le="+Inf"} 100
vworkspace_operator_reconcile_duration_seconds_sum{controller="applicationinstance"} 2.5
vworkspace_operator_reconcile_duration_seconds_count{controller="applicationinstance"} 100
vworkspace_operator_reconcile_duration_seconds_bucket{controller="cluster",le="0.01"} 0
vworkspace_operator_reconcile_duration_seconds_bucket{controller="cluster",le="+Inf"} 0
# TYPE rest_client_requests_total counter
rest_client_requests_total{code="200",host="127.0.0.1:6443",method="GET"} 12
rest_client_requests_total{code="201",host="127.0.0.1:6443",method="POST"} 3
rest_client_requests_total{code="200",host="127.0.0.1:6443",method="PATCH"} 4
rest_client_requests_total{code="409",host="127.0.0.1:6443",method="PATCH"} 1
odd{msg="a \"quoted\", comma \\ and\nnewline",} 1.5 1700000000000
  process_open_fds   9
weird_values{kind="inf"} +Inf
weird_values{kind="neginf"} -Inf
weird_values{kind="nan"} NaN
weird_values{kind="exp"} 1.5e-3
om_counter_total 3 # {trace_id="x"} 1
# EOF
"#;

    fn parsed() -> Exposition {
        Exposition::parse(TEXT).expect("valid exposition")
    }

    #[test]
    fn parses_samples_labels_and_metadata() {
        let e = parsed();
        assert_eq!(e.samples.len(), 19);
        let first = &e.samples[0];
        assert_eq!(
            first.name,
            "vworkspace_operator_reconcile_duration_seconds_bucket"
        );
        assert_eq!(
            first.labels,
            [
                ("controller".to_owned(), "applicationinstance".to_owned()),
                ("le".to_owned(), "0.01".to_owned())
            ]
        );
        assert_eq!(first.le(), Some(0.01));
        assert_eq!(e.samples[3].le(), Some(f64::INFINITY));
        let odd = e.series("odd", &[]).next().expect("odd");
        assert_eq!(
            odd.label("msg"),
            Some("a \"quoted\", comma \\ and\nnewline")
        );
        assert_eq!(odd.timestamp, Some(1_700_000_000_000));
        assert_eq!(odd.value, 1.5);
        assert_eq!(e.value("process_open_fds", &[]), Some(9.0));
        assert_eq!(e.value("om_counter_total", &[]), Some(3.0));
        assert_eq!(
            e.metric_type("vworkspace_operator_reconcile_duration_seconds"),
            Some("histogram")
        );
        assert_eq!(e.metric_type("rest_client_requests_total"), Some("counter"));
        assert_eq!(
            e.help
                .get("vworkspace_operator_reconcile_duration_seconds")
                .map(String::as_str),
            Some("Time per reconcile.")
        );
        let map = e.samples[10].label_map();
        assert_eq!(
            map.keys().copied().collect::<Vec<_>>(),
            ["code", "host", "method"]
        );
    }

    #[test]
    fn special_values() {
        let e = parsed();
        let v = |kind| e.value("weird_values", &[("kind", kind)]).expect(kind);
        assert_eq!(v("inf"), f64::INFINITY);
        assert_eq!(v("neginf"), f64::NEG_INFINITY);
        assert!(v("nan").is_nan());
        assert_eq!(v("exp"), 0.0015);
        assert_eq!(parse_le("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_le("1.0"), Some(1.0));
        assert_eq!(parse_le("5"), Some(5.0));
        assert_eq!(parse_le("NaN"), None);
        assert_eq!(parse_le("infinity"), None);
        assert_eq!(parse_le(""), None);
    }

    #[test]
    fn selects_by_label_subset() {
        let e = parsed();
        let get = |labels: &[(&str, &str)]| e.value("rest_client_requests_total", labels);
        assert_eq!(get(&[("method", "GET")]), Some(12.0));
        assert_eq!(get(&[("method", "PATCH"), ("code", "409")]), Some(1.0));
        // Ambiguous or absent: no single value.
        assert_eq!(get(&[("method", "PATCH")]), None);
        assert_eq!(get(&[("method", "DELETE")]), None);
        assert_eq!(
            e.sum("rest_client_requests_total", &[("method", "PATCH")]),
            5.0
        );
        assert_eq!(e.sum("rest_client_requests_total", &[]), 20.0);
        assert_eq!(e.sum("absent", &[]), 0.0);
        let by = e.sum_by("rest_client_requests_total", &[], &["method", "code"]);
        assert_eq!(
            by.into_iter().collect::<Vec<_>>(),
            [
                ("GET 200".to_owned(), 12.0),
                ("PATCH 200".to_owned(), 4.0),
                ("PATCH 409".to_owned(), 1.0),
                ("POST 201".to_owned(), 3.0)
            ]
        );
    }

    #[test]
    fn histograms() {
        let e = parsed();
        let base = "vworkspace_operator_reconcile_duration_seconds";
        let h = e
            .histogram(base, &[("controller", "applicationinstance")])
            .expect("histogram");
        assert_eq!(h.bounds(), [0.01, 0.025, 0.05, f64::INFINITY]);
        assert_eq!(h.count, 100.0);
        assert_eq!(h.sum, 2.5);
        // Rank 50 lies in (0.01, 0.025], 40 of its 80 observations in.
        let p50 = h.quantile(0.5).expect("observations");
        assert!((p50 - 0.0175).abs() < 1e-9, "{p50}");
        let empty = e
            .histogram(base, &[("controller", "cluster")])
            .expect("histogram");
        assert_eq!(empty.count, 0.0);
        assert_eq!(empty.quantile(0.5), None);
        assert_eq!(e.histogram(base, &[("controller", "nope")]), None);
        // Summed over the other labels.
        let all = e.histogram(base, &[]).expect("histogram");
        assert_eq!(all.count, 100.0);
    }

    #[test]
    fn quantiles_interpolate_like_promql() {
        let buckets = [
            (0.005, 0.0),
            (0.01, 10.0),
            (0.025, 90.0),
            (0.05, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let p50 = histogram_quantile(0.5, &buckets).expect("observations");
        assert!((p50 - 0.0175).abs() < 1e-9, "{p50}");
        // Rank 99 lies in (0.025, 0.05], 9 of its 10 observations in.
        let p99 = histogram_quantile(0.99, &buckets).expect("observations");
        assert!((p99 - 0.0475).abs() < 1e-9, "{p99}");
        // Everything above the last finite bound reports that bound.
        let over = [(0.1, 0.0), (f64::INFINITY, 5.0)];
        assert_eq!(histogram_quantile(0.5, &over), Some(0.1));
        // The first bucket starts at 0.
        let first = [(0.1, 4.0), (f64::INFINITY, 4.0)];
        assert_eq!(histogram_quantile(0.5, &first), Some(0.05));
        // Order of the input does not matter.
        let shuffled = [(f64::INFINITY, 4.0), (0.1, 4.0)];
        assert_eq!(histogram_quantile(0.5, &shuffled), Some(0.05));
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(0.1, 3.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }

    #[test]
    fn rejects_malformed_lines() {
        for (text, line) in [
            ("ok 1\nbroken\n", 2),
            ("x{a=\"1\" 1\n", 1),
            ("x{a=1} 1\n", 1),
            ("x{a=\"1\",a=\"2\"} 1\n", 1),
            ("x one\n", 1),
            ("x 1 2 3\n", 1),
            ("1x 1\n", 1),
            ("# TYPE x\n", 1),
            ("x infinity\n", 1),
        ] {
            let err = Exposition::parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
        // Empty input and comments only are fine.
        assert_eq!(Exposition::parse("").map(|e| e.samples.len()), Ok(0));
        assert_eq!(
            Exposition::parse("# just a comment\n\n").map(|e| e.samples.len()),
            Ok(0)
        );
        // Blanks inside the label set and an empty one.
        let e =
            Exposition::parse("x{ a = \"1\" , b=\"2\" } 1\ny{} 2\nz {c=\"3\"}4\n").expect("valid");
        assert_eq!(e.value("x", &[("a", "1"), ("b", "2")]), Some(1.0));
        assert_eq!(e.value("y", &[]), Some(2.0));
        assert_eq!(e.value("z", &[("c", "3")]), Some(4.0));
    }
}
