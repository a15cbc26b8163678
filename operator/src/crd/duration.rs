//! Go `time.Duration` strings (`metav1.Duration` on the wire), as used by the TTL fields.
//!
//! The value keeps the exact text the user wrote, so an object read and written back
//! is unchanged (`90m` stays `90m`, not `1h30m0s`); [`GoDuration::nanos`] and
//! [`GoDuration::to_std`] parse it on demand with Go's `time.ParseDuration` rules.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use go_duration::{DurationError, parse as parse_go_duration};

/// A duration in Go syntax, e.g. `1h30m`, `1.5h`, `300ms` or `0s`.
///
/// Deserialization accepts any string so that one bad object never breaks a watch of
/// all objects; the value is checked where it is used, with [`GoDuration::to_std`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(String);

impl GoDuration {
    /// The text as written in the object.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The signed length in nanoseconds, as Go's `time.ParseDuration` returns it.
    pub fn nanos(&self) -> Result<i64, DurationError> {
        parse_go_duration(&self.0)
    }

    /// The length as a [`std::time::Duration`]; negative values are an error.
    pub fn to_std(&self) -> Result<std::time::Duration, DurationError> {
        let nanos = self.nanos()?;
        u64::try_from(nanos)
            .map(std::time::Duration::from_nanos)
            .map_err(|_| DurationError::Negative(self.0.clone()))
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    /// Accepts only valid Go durations, unlike deserialization.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_go_duration(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_back_unchanged() {
        for text in ["90m", "1.5h", "0s", "not a duration"] {
            let d: GoDuration = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(serde_json::to_value(&d).unwrap(), serde_json::json!(text));
        }
    }

    #[test]
    fn negative_durations_have_no_std_duration() {
        let d: GoDuration = "-1s".parse().unwrap();
        assert_eq!(d.to_std(), Err(DurationError::Negative("-1s".into())));
        let d: GoDuration = "1m".parse().unwrap();
        assert_eq!(d.to_std(), Ok(std::time::Duration::from_secs(60)));
        assert!("1x".parse::<GoDuration>().is_err());
    }
}
