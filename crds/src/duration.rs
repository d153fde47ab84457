//! The duration format of CodeSource fields such as `git.timeout` (`60s`, `2m`,
//! `1m30s`, `500ms`): one parser for the controller, which validates the spec, and for
//! the worker, which receives the value as a flag.

use std::time::Duration;

/// Parses a duration as written in the CodeSource (`git.timeout`): one or more
/// `<number><unit>` with units `ms`, `s`, `m`, `h` (`60s`, `1m30s`, `1.5s`, `500ms`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration (examples: 60s, 2m, 1m30s, 500ms)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    // Whole nanoseconds, summed as integers: adding the parts as f64 seconds made
    // "2331h526ms" 1 ns longer than written (found by tests/properties.rs).
    const MAX_NANOS: u64 = 1_000_000_000 * 1_000_000_000;
    let too_long = || format!("{text:?} is too long (at most 277777h)");
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        if number_end == 0 {
            return Err(invalid());
        }
        let number: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let (unit, nanos_per_unit) = if let Some(r) = rest.strip_prefix("ms") {
            (r, 1e6)
        } else if let Some(r) = rest.strip_prefix('s') {
            (r, 1e9)
        } else if let Some(r) = rest.strip_prefix('m') {
            (r, 60e9)
        } else if let Some(r) = rest.strip_prefix('h') {
            (r, 3600e9)
        } else {
            return Err(invalid());
        };
        let nanos = (number * nanos_per_unit).round();
        // A number too large for the bound was reported as "not more than zero" before.
        if nanos.is_nan() || nanos >= MAX_NANOS as f64 {
            return Err(too_long());
        }
        total = total.saturating_add(nanos as u64);
        rest = unit;
    }
    if total == 0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    if total >= MAX_NANOS {
        return Err(too_long());
    }
    Ok(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_parsed_like_the_codesource_field() {
        let cases = [
            ("60s", Some(60_000)),
            ("2m", Some(120_000)),
            ("1m30s", Some(90_000)),
            ("1.5s", Some(1_500)),
            ("500ms", Some(500)),
            ("1h", Some(3_600_000)),
            ("1.5h", Some(5_400_000)),
            ("5d", None),
            ("", None),
            ("60", None),
            ("s", None),
            ("0s", None),
            ("5x", None),
            ("1m-3s", None),
        ];
        for (text, want) in cases {
            let got = parse(text).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "{text:?}");
        }
    }
}
