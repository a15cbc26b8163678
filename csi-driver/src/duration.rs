//! Durations in Go's `time.ParseDuration` grammar, the one the chart's values schema
//! and the Go tools accept: `0`, or one or more `<number><unit>` with an optional
//! fraction (`300ms`, `1.5s`, `1m30s`, `2h45m`), units `ns`, `us` (or `µs`/`μs`), `ms`,
//! `s`, `m`, `h`. The grammar is the workspace's one (`go-duration`); negative
//! durations are refused, since every duration here is a wait.

use std::time::Duration;

/// Parses a Go duration string (surrounding spaces allowed), for clap.
pub fn parse(text: &str) -> Result<Duration, String> {
    go_duration::parse_std(text.trim())
        .map_err(|e| format!("invalid duration: {e} (e.g. 0, 500ms, 30s, 1m30s)"))
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
            ("", "not a Go duration"),
            ("5", "not a Go duration"),
            ("1m30", "not a Go duration"),
            ("s", "not a Go duration"),
            (".s", "not a Go duration"),
            ("1d", "unknown unit \"d\""),
            ("1 s", "unknown unit \" s\""),
            ("-1s", "negative"),
            ("1e10s", "unknown unit \"e\""),
            ("99999999999999999999999999999h", "out of range"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
