//! Validation of a CodeSource spec beyond what the CRD's schema and CEL rules check:
//! the schedule and time zone, the git timeout. Pure.

use std::time::Duration;

use openvox_crds::CodeSourceSpec;

use super::schedule::Schedule;

/// The parts of a spec that need parsing, parsed.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The schedule in its time zone.
    pub schedule: Schedule,
    /// Time limit of a head check.
    pub git_timeout: Duration,
}

/// Parses and checks `spec`; the error message is written into status as is.
pub fn validate(spec: &CodeSourceSpec) -> Result<Validated, String> {
    let schedule =
        Schedule::parse(&spec.schedule, spec.time_zone.as_deref()).map_err(|e| e.to_string())?;
    let git_timeout = parse_duration(&spec.git.timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "git.timeout {:?} is not a duration such as 60s or 2m",
                spec.git.timeout
            )
        })?;
    let image = spec.output.image.as_deref().filter(|i| !i.is_empty());
    let claim = spec.output.claim_name.as_deref().filter(|c| !c.is_empty());
    if image.is_some() == claim.is_some() {
        return Err("exactly one of output.image and output.claimName must be set".into());
    }
    Ok(Validated {
        schedule,
        git_timeout,
    })
}

/// A Go-style duration (`90s`, `1m30s`, `1.5h`, `500ms`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let (unit, seconds) = if let Some(r) = rest.strip_prefix("ms") {
            (r, 0.001)
        } else if let Some(r) = rest.strip_prefix('s') {
            (r, 1.0)
        } else if let Some(r) = rest.strip_prefix('m') {
            (r, 60.0)
        } else if let Some(r) = rest.strip_prefix('h') {
            (r, 3600.0)
        } else {
            return None;
        };
        total += number * seconds;
        rest = unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(schedule: &str, timeout: &str) -> CodeSourceSpec {
        serde_json::from_value(serde_json::json!({
            "git": {"url": "https://g/r.git", "branches": ["production"], "timeout": timeout},
            "schedule": schedule,
            "output": {"image": "registry/code"}
        }))
        .unwrap()
    }

    #[test]
    fn durations_parse_like_go() {
        let cases = [
            ("60s", Some(60_000)),
            ("2m", Some(120_000)),
            ("1m30s", Some(90_000)),
            ("1.5h", Some(5_400_000)),
            ("500ms", Some(500)),
            ("", None),
            ("10", None),
            ("5d", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_duration(text).map(|d| d.as_millis() as u64),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_valid_spec_validates() {
        let v = validate(&spec("*/5 * * * *", "30s")).unwrap();
        assert_eq!(v.git_timeout, Duration::from_secs(30));
    }

    #[test]
    fn an_invalid_schedule_is_explained() {
        let err = validate(&spec("every five minutes", "30s")).unwrap_err();
        assert!(err.contains("not a valid cron expression"), "{err}");
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        assert!(
            validate(&spec("@hourly", "0s"))
                .unwrap_err()
                .contains("git.timeout")
        );
    }
}
