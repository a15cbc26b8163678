//! Go's `time.ParseDuration` grammar, in one place for the workspace: the operator's
//! config file and CRD TTLs and the CSI driver's flags all take durations the way the Go
//! tools they replace do (`0`, `300ms`, `1.5h`, `1m30s`).

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty or not `[-+]?(number unit)+` (or a lone `0`).
    #[error("{0:?} is not a Go duration such as 1h30m, 1.5h, 300ms or 0s")]
    Invalid(String),
    /// A number is followed by something other than ns, us, µs, ms, s, m or h.
    #[error("{text:?} has unknown unit {unit:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit {
        /// The whole duration text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// The value does not fit in Go's 64-bit nanosecond range (about 290 years).
    #[error("{0:?} is out of range")]
    Overflow(String),
    /// The value is below zero where only a non-negative duration makes sense.
    #[error("{0:?} is negative")]
    Negative(String),
}

const NANOS_PER_UNIT: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses `s` with the rules of Go's `time.ParseDuration`: an optional sign, then one
/// or more decimal numbers (optionally with a fraction) each followed by a unit; a lone
/// `0` needs no unit. Returns signed nanoseconds.
pub fn parse(s: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError::Invalid(s.to_owned());
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let len = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                f.split_at(len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(invalid());
        }
        let scale = NANOS_PER_UNIT
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, n)| *n)
            .ok_or_else(|| DurationError::UnknownUnit {
                text: s.to_owned(),
                unit: unit.to_owned(),
            })?;
        let overflow = || DurationError::Overflow(s.to_owned());
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = whole.checked_mul(scale).ok_or_else(overflow)?;
        // Fractions are truncated to whole nanoseconds, as Go does; digits past the
        // 20th cannot change the result for units up to an hour.
        let frac_digits = &frac_part[..frac_part.len().min(20)];
        if !frac_digits.is_empty() {
            let frac: u128 = frac_digits.parse().map_err(|_| invalid())?;
            let denominator = 10u128.pow(frac_digits.len() as u32);
            value = value
                .checked_add(frac * scale / denominator)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        if total > i64::MAX as u128 + u128::from(negative) {
            return Err(overflow());
        }
        rest = after;
    }
    let total = i128::try_from(total).map_err(|_| DurationError::Overflow(s.to_owned()))?;
    let signed = if negative { -total } else { total };
    i64::try_from(signed).map_err(|_| DurationError::Overflow(s.to_owned()))
}

/// [`parse`] for a length of time that cannot be negative (a wait, a TTL).
pub fn parse_std(s: &str) -> Result<std::time::Duration, DurationError> {
    let nanos = parse(s)?;
    u64::try_from(nanos)
        .map(std::time::Duration::from_nanos)
        .map_err(|_| DurationError::Negative(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn parses_go_duration_syntax() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("0s", 0),
            ("-0", 0),
            ("1h30m", 90 * 60 * S),
            ("1.5h", 90 * 60 * S),
            ("90m", 90 * 60 * S),
            ("300ms", 300_000_000),
            ("2h", 7200 * S),
            ("6m", 360 * S),
            ("1h0m0s", 3600 * S),
            ("1.5s", 1_500_000_000),
            (".5s", 500_000_000),
            ("5.s", 5 * S),
            ("10us", 10_000),
            ("10µs", 10_000),
            ("7ns", 7),
            ("+5s", 5 * S),
            ("-1m", -60 * S),
            ("1h1m1s1ms1us1ns", 3661 * S + 1_001_001),
            ("9223372036854775807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(*want), "{text}");
        }
    }

    type ErrorCheck = fn(&DurationError) -> bool;

    #[test]
    fn rejects_what_go_rejects() {
        let cases: &[(&str, ErrorCheck)] = &[
            ("", |e| matches!(e, DurationError::Invalid(_))),
            ("-", |e| matches!(e, DurationError::Invalid(_))),
            ("5", |e| matches!(e, DurationError::Invalid(_))),
            ("1h30", |e| matches!(e, DurationError::Invalid(_))),
            (".s", |e| matches!(e, DurationError::Invalid(_))),
            ("h", |e| matches!(e, DurationError::Invalid(_))),
            (" 1s", |e| matches!(e, DurationError::Invalid(_))),
            ("1d", |e| matches!(e, DurationError::UnknownUnit { .. })),
            ("1 s", |e| matches!(e, DurationError::UnknownUnit { .. })),
            ("3 days", |e| matches!(e, DurationError::UnknownUnit { .. })),
            ("9223372036854775808ns", |e| {
                matches!(e, DurationError::Overflow(_))
            }),
            ("3000000h", |e| matches!(e, DurationError::Overflow(_))),
        ];
        for (text, is_expected) in cases {
            match parse(text) {
                Ok(v) => panic!("{text:?} parsed as {v}"),
                Err(e) => assert!(is_expected(&e), "{text:?}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn std_durations_refuse_negatives() {
        assert_eq!(parse_std("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_std("-1s"), Err(DurationError::Negative("-1s".into())));
    }
}
