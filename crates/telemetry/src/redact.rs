//! Secrets redacted by type.
//!
//! Invariant: the wrapped value is reachable only through [`Redacted::expose`] /
//! [`Redacted::into_inner`]. `Debug` and `Display` print `[REDACTED]`, and there is
//! deliberately no `Serialize`, no `Deref` and no `PartialEq`, so a secret cannot reach
//! a log line, an Event message, an audit payload or a status field by accident:
//! leaking it takes a visible, greppable `.expose()` call.

use std::fmt;

/// The placeholder printed instead of a secret.
pub const REDACTED: &str = "[REDACTED]";

/// A value that must never be printed or serialised (tokens, chart-value secrets).
#[derive(Clone, Default)]
pub struct Redacted<T>(T);

/// A secret string: the bootstrap token, a Secret's data, a chart-value secret.
pub type SecretString = Redacted<String>;

impl<T> Redacted<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Redacted(value)
    }

    /// The secret itself, for the one place that must use it (an Authorization header,
    /// a Secret being written). Keep the result out of logs and errors.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Redacted(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Redacted(value.to_owned())
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Reading a secret (from a Secret's data or a config file) is fine; only writing it
/// out is not, hence `Deserialize` without `Serialize`.
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Redacted<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Redacted)
    }
}

/// The words after which the API server's field errors quote the value they refuse
/// (`Invalid value: "https://user:password@host/"`, and likewise for unsupported and
/// duplicate values).
const QUOTED_VALUE_MARKERS: [&str; 3] = [
    "Invalid value: ",
    "Unsupported value: ",
    "Duplicate value: ",
];

/// An API server message with the values it quotes replaced by [`REDACTED`], keeping
/// the field paths and the reasons. A 422 names the field and repeats the refused value,
/// which can be a secret (a repository URL with a password in it); whatever passes such a
/// message on (a job's rejection to the control plane, an audit event, a log line) uses
/// this first.
///
/// A quoted value (Go's `%q`: `"…"` with backslash escapes) is replaced up to its closing
/// quote; an unquoted one (a number, a map) up to the next `": "` or `", "`.
pub fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let next = QUOTED_VALUE_MARKERS
            .iter()
            .filter_map(|m| rest.find(m).map(|at| (at, m.len())))
            .min();
        let Some((at, len)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at + len]);
        out.push_str(REDACTED);
        rest = &rest[at + len..];
        rest = match rest.strip_prefix('"') {
            Some(quoted) => {
                let mut escaped = false;
                let end = quoted.char_indices().find_map(|(i, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes.then_some(i + 1)
                });
                // An unterminated quote: everything after it is the value.
                &quoted[end.unwrap_or(quoted.len())..]
            }
            None => {
                let end = [": ", ", "]
                    .iter()
                    .filter_map(|sep| rest.find(sep))
                    .min()
                    .unwrap_or(rest.len());
                &rest[end..]
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let secret = SecretString::from("canary-7f3a");
        assert_eq!(format!("{secret:?}"), "[REDACTED]");
        assert_eq!(format!("{secret}"), "[REDACTED]");
        assert_eq!(format!("{secret:#?}"), "[REDACTED]");

        #[derive(Debug)]
        #[allow(dead_code)]
        struct Credentials {
            cluster: String,
            token: SecretString,
        }
        let creds = Credentials {
            cluster: "cluster-prod-1".into(),
            token: secret.clone(),
        };
        let printed = format!("{creds:?}");
        assert!(!printed.contains("canary-7f3a"), "{printed}");
        assert_eq!(secret.expose(), "canary-7f3a");
    }

    #[test]
    fn deserializes_transparently() {
        let secret: SecretString = serde_json::from_str("\"tok\"").expect("valid JSON");
        assert_eq!(secret.into_inner(), "tok");
    }

    #[test]
    fn api_messages_lose_the_values_they_quote() {
        let message = r#"ApplicationInstance.vworkspace.io "app" is invalid: spec.chart.repository: Invalid value: "https://user:canary-1@charts.example.org/stable": spec.chart.repository in body should match '^(https?|oci)://[^\s/@]+(/[^\s]*)?$'"#;
        let clean = without_quoted_values(message);
        assert!(!clean.contains("canary-1"), "{clean}");
        assert!(
            clean.starts_with(
                r#"ApplicationInstance.vworkspace.io "app" is invalid: spec.chart.repository: Invalid value: [REDACTED]: spec.chart.repository in body should match"#
            ),
            "{clean}"
        );
        // Several causes, escaped quotes, unquoted values, other markers.
        let message = r#"[spec.a: Invalid value: "x\"canary-2\"y": bad, spec.b: Invalid value: 5: too big, spec.mode: Unsupported value: "canary-3": supported values: "pull", "push", spec.c: Duplicate value: "canary-4"]"#;
        let clean = without_quoted_values(message);
        for canary in ["canary-2", "canary-3", "canary-4", ": 5:"] {
            assert!(!clean.contains(canary), "{canary} in {clean}");
        }
        assert_eq!(
            clean,
            r#"[spec.a: Invalid value: [REDACTED]: bad, spec.b: Invalid value: [REDACTED]: too big, spec.mode: Unsupported value: [REDACTED]: supported values: "pull", "push", spec.c: Duplicate value: [REDACTED]]"#
        );
        // An unterminated quote takes the rest; a message without values is unchanged.
        assert_eq!(
            without_quoted_values(r#"f: Invalid value: "canary-5"#),
            "f: Invalid value: [REDACTED]"
        );
        let plain = r#"helmreleases "x" is forbidden: User "u" cannot patch"#;
        assert_eq!(without_quoted_values(plain), plain);
    }
}
