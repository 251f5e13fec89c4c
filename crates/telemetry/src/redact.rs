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
}
