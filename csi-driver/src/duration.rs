//! Durations on the command line: `0`, `500ms`, `30s`, `2m`.

use std::time::Duration;

/// Parses a whole number with an optional unit (`ms`, `s`, `m`); no unit means seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with unit ms, s or m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{text:?}: unknown unit {unit:?}, use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bad_input() {
        for (input, want) in [
            ("0", Ok(Duration::ZERO)),
            ("500ms", Ok(Duration::from_millis(500))),
            ("30s", Ok(Duration::from_secs(30))),
            ("2m", Ok(Duration::from_secs(120))),
            ("5", Ok(Duration::from_secs(5))),
        ] {
            assert_eq!(parse(input), want, "{input}");
        }
        for bad in ["", "s", "1h", "-1s", "1.5s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
