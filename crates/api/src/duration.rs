//! Go-style duration strings (`30s`, `5m`, `1h30m`, `1.5s`, `250ms`) as used by Flux and
//! Kubernetes.
//!
//! Invariants:
//! * a [`GoDuration`] always holds text that matches [`PATTERN`] and the value parsed from it,
//!   so code after deserialization never re-parses or unwraps;
//! * serialization writes back the exact text that was read, so a spec copied from one object
//!   to another (or re-applied with server-side apply) never changes spelling (`5m` never
//!   becomes `300s`), which would otherwise show up as a spurious diff;
//! * the CRD schema carries the same [`PATTERN`], so the API server rejects what this type
//!   would reject and a controller never fails to decode an object it watches.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The accepted spelling: one or more `<number><unit>` groups, units `ms`, `s`, `m`, `h`.
/// The same pattern Flux uses for its `interval` and `timeout` fields.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Longest accepted spelling; bounds the CEL cost of comparing durations in rules.
pub const MAX_LENGTH: u32 = 32;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty.
    #[error("duration is empty; expected e.g. \"30s\", \"5m\" or \"1h30m\"")]
    Empty,
    /// The text is longer than [`MAX_LENGTH`].
    #[error("duration {0:?} is longer than {MAX_LENGTH} characters")]
    TooLong(String),
    /// The text does not match [`PATTERN`].
    #[error("duration {0:?} is not of the form <number><unit>... with unit ms, s, m or h")]
    Malformed(String),
    /// The value does not fit a `std::time::Duration`.
    #[error("duration {0:?} is out of range")]
    OutOfRange(String),
}

/// A Go-style duration: the original text plus its parsed value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GoDuration {
    text: String,
    value: Duration,
}

impl GoDuration {
    /// Parses `text` (see [`PATTERN`]).
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let value = parse_value(text)?;
        Ok(Self {
            text: text.to_owned(),
            value,
        })
    }

    /// The duration as written, e.g. `"5m"`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed value.
    pub fn as_duration(&self) -> Duration {
        self.value
    }

    /// A duration of whole seconds, spelled `<n>s`; for defaults and for tests.
    pub fn from_secs(secs: u64) -> Self {
        Self {
            text: format!("{secs}s"),
            value: Duration::from_secs(secs),
        }
    }

    /// A duration of whole minutes, spelled `<n>m`.
    pub fn from_mins(mins: u64) -> Self {
        Self {
            text: format!("{mins}m"),
            value: Duration::from_secs(mins.saturating_mul(60)),
        }
    }
}

fn parse_value(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.len() > MAX_LENGTH as usize {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    let malformed = || DurationError::Malformed(text.to_owned());
    let out_of_range = || DurationError::OutOfRange(text.to_owned());
    // Integer nanoseconds throughout, so "0.1s" is exactly 100ms (no float rounding).
    let mut total_nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        // <digits>[.<digits>]<unit>
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(malformed)?;
        if int_len == 0 {
            return Err(malformed());
        }
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(malformed)?;
            if frac_len == 0 {
                return Err(malformed());
            }
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        // "ms" must be tried before "m".
        let (unit_nanos, unit_len): (u128, usize) = if rest.starts_with("ms") {
            (1_000_000, 2)
        } else if rest.starts_with('s') {
            (1_000_000_000, 1)
        } else if rest.starts_with('m') {
            (60_000_000_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000_000_000, 1)
        } else {
            return Err(malformed());
        };
        rest = &rest[unit_len..];
        let int_value: u128 = int_part.parse().map_err(|_| out_of_range())?;
        let mut nanos = int_value.checked_mul(unit_nanos).ok_or_else(out_of_range)?;
        if !frac_part.is_empty() {
            let frac_value: u128 = frac_part.parse().map_err(|_| out_of_range())?;
            let scale = 10u128
                .checked_pow(u32::try_from(frac_part.len()).map_err(|_| out_of_range())?)
                .ok_or_else(out_of_range)?;
            let frac_nanos = frac_value
                .checked_mul(unit_nanos)
                .ok_or_else(out_of_range)?
                / scale;
            nanos = nanos.checked_add(frac_nanos).ok_or_else(out_of_range)?;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(out_of_range)?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| out_of_range())?;
    let sub_nanos = u32::try_from(total_nanos % 1_000_000_000).map_err(|_| out_of_range())?;
    Ok(Duration::new(secs, sub_nanos))
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoDuration({:?})", self.text)
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.value
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        GoDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "maxLength": MAX_LENGTH,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn parses_like_flux() {
        let cases: &[(&str, Duration)] = &[
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("250ms", Duration::from_millis(250)),
            ("1m1ms", Duration::from_millis(60_001)),
            ("0s", Duration::ZERO),
            ("0.1s", Duration::from_millis(100)),
            ("2.25h", Duration::from_secs(8100)),
        ];
        for (text, want) in cases {
            let got = GoDuration::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got.as_duration(), *want, "{text}");
            assert_eq!(got.as_str(), *text);
        }
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for text in [
            "", "5", "m", "5x", "-5s", "1.s", ".5s", "5 m", "1d", "10ns", "5m ", "+5s",
        ] {
            assert!(
                GoDuration::parse(text).is_err(),
                "{text:?} should be rejected"
            );
        }
        assert!(matches!(
            GoDuration::parse(&"1s".repeat(20)),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn round_trips_its_spelling() {
        let d: GoDuration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5m\"");
        assert!(serde_json::from_str::<GoDuration>("\"five minutes\"").is_err());
        assert_eq!(GoDuration::from_mins(5).as_str(), "5m");
        assert_eq!(
            GoDuration::from_secs(30).as_duration(),
            Duration::from_secs(30)
        );
    }
}
