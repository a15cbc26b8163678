//! Durations in Go's `time.ParseDuration` grammar, the one the chart's values schema
//! and the Go tools accept: `0`, or one or more `<number><unit>` with an optional
//! fraction (`300ms`, `1.5s`, `1m30s`, `2h45m`), units `ns`, `us` (or `µs`/`μs`), `ms`,
//! `s`, `m`, `h`. A leading `+` is allowed; negative durations are refused, since every
//! duration here is a wait.

use std::time::Duration;

const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go duration string.
pub fn parse(text: &str) -> Result<Duration, String> {
    let err = |why: &str| format!("invalid duration {text:?}: {why} (e.g. 0, 500ms, 30s, 1m30s)");
    let mut rest = text.trim();
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(err("must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_end);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let end = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(end)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        // The unit runs to the next digit or dot.
        if unit.is_empty() {
            return Err(err("missing unit"));
        }
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| err(&format!("unknown unit {unit:?}")))?;
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err("number too large"))?
        };
        let mut nanos = whole.checked_mul(scale).ok_or_else(|| err("too large"))?;
        // Fraction digits beyond nanosecond precision cannot matter; Go truncates too.
        let mut place = scale;
        for d in frac.bytes().take(30) {
            place /= 10;
            nanos += u128::from(d - b'0') * place;
        }
        total = total.checked_add(nanos).ok_or_else(|| err("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let ms = Duration::from_millis;
        for (input, want) in [
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("30s", Duration::from_secs(30)),
            ("2m", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", ms(1500)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", ms(500)),
            (
                "2h45m0.5s",
                Duration::from_secs(2 * 3600 + 45 * 60) + ms(500),
            ),
            ("300us", Duration::from_micros(300)),
            ("300µs", Duration::from_micros(300)),
            ("7ns", Duration::from_nanos(7)),
            ("1.000000001s", Duration::new(1, 1)),
            ("10s", Duration::from_secs(10)),
        ] {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn what_go_refuses_is_refused_and_negatives_too() {
        for (bad, why) in [
            ("", "empty"),
            ("5", "missing unit"),
            ("1m30", "missing unit"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("1d", "unknown unit \"d\""),
            ("1 s", "unknown unit \" s\""),
            ("-1s", "negative"),
            ("1e10s", "unknown unit \"e\""),
            ("99999999999999999999999999999h", "too large"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
