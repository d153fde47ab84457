//! The CodeSource conditions: a pure function of what one reconcile found.
//!
//! `Ready` is True when the last build is of the current inputs (and, with a
//! `configRef`, sits in the Config); Unknown while a build runs; False on failure.
//! `Reconciling` and `Stalled` are present only while true (kstatus), as are the
//! specific negative conditions `FetchFailed` and `BuildFailed`.

use openvox_crds::CodeSourceStatus;
use openvox_crds::codesource::FailedEnvironment;
use openvox_crds::names::{conditions as types, reasons};

use crate::conditions::ConditionFacts;

/// Where publishing into the Config stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigState {
    /// No `configRef`, or nothing built yet.
    NotWanted,
    /// The Config carries the image.
    Updated {
        /// Config name.
        name: String,
        /// What it carries.
        image: String,
    },
    /// The Config does not exist.
    NotFound(String),
    /// Patching failed.
    Failed(String),
    /// The build that produced the image is still finishing.
    Pending,
}

/// What the reconcile found, reduced to what the conditions say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The spec cannot work (message); nothing else is looked at.
    pub invalid_spec: Option<String>,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Listing the heads failed: reason (`GitOperationFailed`, `SecretNotFound`) and
    /// message.
    pub fetch_failed: Option<(&'static str, String)>,
    /// A build could not be launched (reason, message), for example because the push
    /// Secret is missing.
    pub launch_blocked: Option<(&'static str, String)>,
    /// No branch matches (message).
    pub no_matching_branches: bool,
    /// A worker Job runs (name).
    pub building: Option<String>,
    /// The last launch failed (message with the Job's reason).
    pub build_failed: Option<String>,
    /// The last build is of the current inputs but some environments failed in it
    /// (message from [`partial_message`]).
    pub partial_build: Option<String>,
    /// The last build is of the current inputs.
    pub up_to_date: bool,
    /// The image of the last build.
    pub last_image: Option<String>,
    /// Publishing into the Config.
    pub config: ConfigState,
    /// The `RolledOut` condition (from `rollout`), when the Config's code is followed.
    pub rolled_out: Option<ConditionFacts>,
}

impl Observed {
    /// A spec that cannot work (`message`): nothing else is looked at.
    pub fn invalid(message: String) -> Self {
        Self {
            invalid_spec: Some(message),
            suspended: false,
            fetch_failed: None,
            launch_blocked: None,
            no_matching_branches: false,
            building: None,
            build_failed: None,
            partial_build: None,
            up_to_date: false,
            last_image: None,
            config: ConfigState::NotWanted,
            rolled_out: None,
        }
    }
}

/// The conditions that describe `o`.
pub fn codesource_conditions(o: &Observed) -> Vec<ConditionFacts> {
    let mut out: Vec<ConditionFacts> = Vec::new();
    if let Some(message) = &o.invalid_spec {
        out.push((
            types::READY,
            "False",
            reasons::INVALID_SPEC,
            message.clone(),
        ));
        out.push((
            types::STALLED,
            "True",
            reasons::INVALID_SPEC,
            message.clone(),
        ));
        return out;
    }
    let ready: ConditionFacts = if o.suspended {
        (
            types::READY,
            "False",
            reasons::SUSPENDED,
            "suspended; the last image stays in place".into(),
        )
    } else if let Some((reason, message)) = &o.fetch_failed {
        (types::READY, "False", reason, message.clone())
    } else if let Some((reason, message)) = &o.launch_blocked {
        (types::READY, "False", reason, message.clone())
    } else if let Some(job) = &o.building {
        (
            types::READY,
            "Unknown",
            reasons::PROGRESSING,
            format!("building in job {job}"),
        )
    } else if let Some(message) = &o.build_failed {
        (
            types::READY,
            "False",
            reasons::BUILD_FAILED,
            message.clone(),
        )
    } else if o.no_matching_branches {
        (
            types::READY,
            "False",
            reasons::NO_MATCHING_BRANCHES,
            "no remote branch matches git.branches".into(),
        )
    } else if let ConfigState::NotFound(name) = &o.config {
        (
            types::READY,
            "False",
            reasons::CONFIG_NOT_FOUND,
            format!("Config {name:?} does not exist"),
        )
    } else if let ConfigState::Failed(message) = &o.config {
        (
            types::READY,
            "False",
            reasons::CONFIG_NOT_FOUND,
            message.clone(),
        )
    } else if let Some(message) = &o.partial_build {
        (
            types::READY,
            "False",
            reasons::PARTIAL_BUILD,
            message.clone(),
        )
    } else if o.up_to_date {
        let image = o.last_image.clone().unwrap_or_default();
        (
            types::READY,
            "True",
            reasons::SUCCEEDED,
            format!("stored artifact {image}"),
        )
    } else {
        (
            types::READY,
            "Unknown",
            reasons::PROGRESSING,
            "waiting for the build record".into(),
        )
    };
    out.push(ready);
    if let Some(job) = &o.building {
        out.push((
            types::RECONCILING,
            "True",
            reasons::PROGRESSING,
            format!("building in job {job}"),
        ));
    }
    if let Some((reason, message)) = &o.fetch_failed {
        out.push((types::FETCH_FAILED, "True", reason, message.clone()));
    }
    if let Some(message) = &o.build_failed {
        out.push((
            types::BUILD_FAILED,
            "True",
            reasons::BUILD_FAILED,
            message.clone(),
        ));
    }
    match &o.config {
        ConfigState::NotWanted | ConfigState::Pending => {}
        ConfigState::Updated { name, image } => out.push((
            types::CONFIG_UPDATED,
            "True",
            reasons::CONFIG_UPDATED,
            format!("Config {name} carries {image}"),
        )),
        ConfigState::NotFound(name) => out.push((
            types::CONFIG_UPDATED,
            "False",
            reasons::CONFIG_NOT_FOUND,
            format!("Config {name:?} does not exist; retrying"),
        )),
        ConfigState::Failed(message) => out.push((
            types::CONFIG_UPDATED,
            "False",
            reasons::CONFIG_NOT_FOUND,
            message.clone(),
        )),
    }
    out.extend(o.rolled_out.clone());
    out
}

/// How stale the check times in the status may get when nothing else changes. A check
/// that finds nothing new writes nothing (as Flux's source-controller does): the times
/// of every check are in the metrics, and the status says at most this much later
/// that the controller is still looking. 30 minutes: with 10,000 CodeSources checked
/// every minute that is 333 writes a minute (0.03 per CodeSource and tick) instead of
/// 10,000, and `kubectl get -o yaml` still shows a controller that is alive.
pub const CHECK_TIMES_REFRESH: jiff::SignedDuration = jiff::SignedDuration::from_mins(30);

/// Whether `new` must be written over `old`: something besides the check times
/// (`lastScheduleTime`, `nextScheduleTime`, `lastCheckTime`) changed, or the stored
/// check time is missing or older than [`CHECK_TIMES_REFRESH`].
pub fn must_write(
    old: Option<&CodeSourceStatus>,
    new: &CodeSourceStatus,
    now: jiff::Timestamp,
) -> bool {
    let Some(old) = old else {
        return true;
    };
    let without_times = |s: &CodeSourceStatus| CodeSourceStatus {
        last_schedule_time: None,
        next_schedule_time: None,
        last_check_time: None,
        ..s.clone()
    };
    if without_times(old) != without_times(new) {
        return true;
    }
    if old == new {
        return false;
    }
    old.last_check_time
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0) >= CHECK_TIMES_REFRESH)
}

/// Most failed environments named in a message; the rest are counted.
const MAX_NAMED_FAILURES: usize = 10;

/// What `Ready` says about a partial build: the image that was published and, per
/// failed environment, its name, branch and reason.
pub fn partial_message(image: &str, failed: &[FailedEnvironment]) -> String {
    let mut named: Vec<String> = failed
        .iter()
        .take(MAX_NAMED_FAILURES)
        .map(|f| match f.name.as_deref() {
            Some(name) if name != f.branch => {
                format!("{name} (branch {}): {}", f.branch, f.reason)
            }
            _ => format!("{}: {}", f.branch, f.reason),
        })
        .collect();
    if failed.len() > MAX_NAMED_FAILURES {
        named.push(format!("and {} more", failed.len() - MAX_NAMED_FAILURES));
    }
    let noun = if failed.len() == 1 {
        "environment"
    } else {
        "environments"
    };
    format!(
        "stored artifact {image}, but {} {noun} failed and kept their previous content: {}; retrying with backoff",
        failed.len(),
        named.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_that_changes_only_the_times_is_written_at_the_coarse_refresh() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |minute: i64| jiff::Timestamp::from_second(minute * 60).unwrap();
        let checked = |minute: i64| CodeSourceStatus {
            last_check_time: Some(Time(at(minute))),
            last_schedule_time: Some(Time(at(minute))),
            next_schedule_time: Some(Time(at(minute + 1))),
            heads: [("production".to_string(), "production@sha1:1".to_string())].into(),
            ..Default::default()
        };
        let old = checked(100);
        // Nothing written on the next ticks…
        assert!(!must_write(Some(&old), &checked(101), at(101)));
        assert!(!must_write(Some(&old), &checked(129), at(129)));
        // …until the stored times are 30 minutes old.
        assert!(must_write(Some(&old), &checked(130), at(130)));
        // Anything else that changes is written at once, times included.
        let mut moved = checked(101);
        moved
            .heads
            .insert("production".into(), "production@sha1:2".into());
        assert!(must_write(Some(&old), &moved, at(101)));
        assert!(must_write(None, &checked(101), at(101)));
        assert!(
            !must_write(Some(&old), &old, at(200)),
            "identical: nothing to write"
        );
        let never_checked = CodeSourceStatus {
            last_check_time: None,
            ..old.clone()
        };
        assert!(must_write(Some(&never_checked), &checked(101), at(101)));
    }

    fn healthy() -> Observed {
        Observed {
            invalid_spec: None,
            up_to_date: true,
            last_image: Some("r@sha256:1".into()),
            config: ConfigState::Updated {
                name: "prod".into(),
                image: "r@sha256:1".into(),
            },
            rolled_out: None,
            ..Observed::invalid(String::new())
        }
    }

    fn get<'a>(c: &'a [ConditionFacts], t: &str) -> Option<&'a ConditionFacts> {
        c.iter().find(|f| f.0 == t)
    }

    #[test]
    fn given_a_current_build_in_config_the_codesource_is_ready() {
        let c = codesource_conditions(&healthy());
        assert_eq!(get(&c, "Ready").unwrap().1, "True");
        assert_eq!(get(&c, "ConfigUpdated").unwrap().1, "True");
        assert!(get(&c, "Reconciling").is_none() && get(&c, "Stalled").is_none());
    }

    #[test]
    fn given_an_invalid_spec_the_codesource_is_stalled() {
        let c = codesource_conditions(&Observed {
            invalid_spec: Some("bad cron".into()),
            ..healthy()
        });
        assert_eq!(get(&c, "Stalled").unwrap().1, "True");
        assert_eq!(get(&c, "Ready").unwrap().2, "InvalidSpec");
    }

    #[test]
    fn given_a_running_build_the_codesource_is_reconciling() {
        let c = codesource_conditions(&Observed {
            building: Some("p-1".into()),
            ..healthy()
        });
        assert_eq!(get(&c, "Ready").unwrap().1, "Unknown");
        assert!(get(&c, "Reconciling").unwrap().3.contains("p-1"));
    }

    #[test]
    fn given_a_failed_build_the_reason_is_reported_and_config_keeps_its_image() {
        let c = codesource_conditions(&Observed {
            build_failed: Some("job p-2 failed: Puppetfile: bad".into()),
            up_to_date: false,
            ..healthy()
        });
        assert_eq!(get(&c, "Ready").unwrap().2, "BuildFailed");
        assert!(get(&c, "BuildFailed").unwrap().3.contains("Puppetfile"));
        assert_eq!(get(&c, "ConfigUpdated").unwrap().1, "True");
    }

    #[test]
    fn given_a_failed_fetch_fetch_failed_is_set() {
        let c = codesource_conditions(&Observed {
            fetch_failed: Some((reasons::GIT_OPERATION_FAILED, "timeout".into())),
            ..healthy()
        });
        assert_eq!(get(&c, "FetchFailed").unwrap().2, "GitOperationFailed");
        assert_eq!(get(&c, "Ready").unwrap().1, "False");
    }

    #[test]
    fn given_a_missing_git_secret_the_reason_says_so() {
        let c = codesource_conditions(&Observed {
            fetch_failed: Some((
                reasons::SECRET_NOT_FOUND,
                "secret \"git\": does not exist".into(),
            )),
            ..healthy()
        });
        assert_eq!(get(&c, "FetchFailed").unwrap().2, "SecretNotFound");
        assert_eq!(get(&c, "Ready").unwrap().2, "SecretNotFound");
    }

    #[test]
    fn given_a_blocked_launch_ready_says_why() {
        let c = codesource_conditions(&Observed {
            launch_blocked: Some((
                reasons::SECRET_NOT_FOUND,
                "secret \"regcred\": does not exist".into(),
            )),
            up_to_date: false,
            ..healthy()
        });
        let ready = get(&c, "Ready").unwrap();
        assert_eq!((ready.1, ready.2), ("False", "SecretNotFound"));
        assert!(ready.3.contains("regcred"));
    }

    #[test]
    fn given_a_missing_config_the_condition_says_so() {
        let c = codesource_conditions(&Observed {
            config: ConfigState::NotFound("prod".into()),
            ..healthy()
        });
        assert_eq!(get(&c, "ConfigUpdated").unwrap().2, "ConfigNotFound");
        assert_eq!(get(&c, "Ready").unwrap().1, "False");
    }

    #[test]
    fn given_a_partial_build_ready_is_false_and_names_the_failures_while_config_is_updated() {
        let failed = [
            FailedEnvironment {
                branch: "feature/x".into(),
                name: Some("feature_x".into()),
                reason: "Puppetfile: module foo/bar not found".into(),
                ..Default::default()
            },
            FailedEnvironment {
                branch: "staging".into(),
                name: Some("staging".into()),
                reason: "git: object missing".into(),
                ..Default::default()
            },
        ];
        let message = partial_message("r@sha256:1", &failed);
        let c = codesource_conditions(&Observed {
            partial_build: Some(message),
            ..healthy()
        });
        let ready = get(&c, "Ready").unwrap();
        assert_eq!((ready.1, ready.2), ("False", "PartialBuild"));
        for part in [
            "r@sha256:1",
            "2 environments",
            "feature_x (branch feature/x): Puppetfile: module foo/bar not found",
            "staging: git: object missing",
        ] {
            assert!(ready.3.contains(part), "{} lacks {part}", ready.3);
        }
        assert_eq!(get(&c, "ConfigUpdated").unwrap().1, "True");
        assert!(get(&c, "BuildFailed").is_none());
        // A running retry is progress, not a failure.
        let c = codesource_conditions(&Observed {
            partial_build: None,
            building: Some("p-2".into()),
            up_to_date: false,
            ..healthy()
        });
        assert_eq!(get(&c, "Ready").unwrap().2, "Progressing");
    }

    #[test]
    fn a_partial_build_message_stays_bounded() {
        let failed: Vec<FailedEnvironment> = (0..50)
            .map(|i| FailedEnvironment {
                branch: format!("b{i}"),
                name: None,
                reason: "x".into(),
                ..Default::default()
            })
            .collect();
        let m = partial_message("r@sha256:1", &failed);
        assert!(
            m.contains("b9: x") && !m.contains("b10: x") && m.contains("and 40 more"),
            "{m}"
        );
    }

    #[test]
    fn given_suspend_ready_says_suspended() {
        let c = codesource_conditions(&Observed {
            suspended: true,
            ..healthy()
        });
        assert_eq!(get(&c, "Ready").unwrap().2, "Suspended");
    }
}
