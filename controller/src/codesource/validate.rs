//! Validation of a CodeSource spec beyond what the CRD's schema and CEL rules check:
//! the schedule and time zone, the git timeout, the validation step. Pure.

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
    let git_timeout = openvox_crds::duration::parse(&spec.git.timeout)
        .ok()
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
    if let Some(validate) = &spec.validate {
        let has_image = validate.image.as_deref().is_some_and(|i| !i.is_empty());
        let has_config = spec.config_ref.as_deref().is_some_and(|c| !c.is_empty());
        if !has_image && !has_config {
            return Err("validate.image must name an image with Puppet when the CodeSource has no configRef to take the server image from".into());
        }
        if !openvox_crds::duration::parse(&validate.timeout).is_ok_and(|d| !d.is_zero()) {
            return Err(format!(
                "validate.timeout {:?} is not a duration such as 10m or 90s",
                validate.timeout
            ));
        }
    }
    Ok(Validated {
        schedule,
        git_timeout,
    })
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
    fn validation_needs_an_image_or_a_config_and_a_timeout() {
        let with = |v: serde_json::Value, config: Option<&str>| {
            let mut s = spec("*/5 * * * *", "30s");
            s.validate = serde_json::from_value(v).unwrap();
            s.config_ref = config.map(str::to_owned);
            validate(&s)
        };
        let err = with(serde_json::json!({}), None).unwrap_err();
        assert!(err.contains("validate.image"), "{err}");
        assert!(with(serde_json::json!({}), Some("puppet")).is_ok());
        assert!(with(serde_json::json!({"image": "openvox-server:8"}), None).is_ok());
        let err = with(serde_json::json!({"image": "p", "timeout": "soon"}), None).unwrap_err();
        assert!(err.contains("validate.timeout"), "{err}");
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
