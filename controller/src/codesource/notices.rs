//! What one CodeSource reconcile tells the world beyond its status: Kubernetes Events
//! and the build and rollout metrics. A pure function of the status before, the status
//! after and what happened in between, so every rule ("an Event on transitions only")
//! is a table test here instead of a cluster test.
//!
//! Events follow transitions, never states: a CodeSource that stays broken for a day
//! says so once, not at every scheduled check.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::runtime::events::EventType;
use openvox_crds::CodeSourceStatus;
use openvox_crds::names::{conditions as types, reasons};

use super::decide::LaunchReason;
use super::status::{ConfigState, Observed};
use crate::conditions::{find, is_true};

/// One thing to tell.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A Kubernetes Event on the CodeSource.
    Event {
        /// Normal or Warning.
        type_: EventType,
        /// CamelCase reason (`names::reasons`, or an error's reason).
        reason: &'static str,
        /// What the controller was doing.
        action: &'static str,
        /// The message.
        note: String,
    },
    /// `openvox_code_builds_total{result}`: `started`, `succeeded`, `partial`, `failed`.
    Build(&'static str),
    /// `openvox_code_rollout_duration_seconds`: a rollout completed after this long.
    RolloutTook(Duration),
}

/// What happened in one reconcile beyond what the conditions say.
#[derive(Clone, Copy, Debug, Default)]
pub struct Happened<'a> {
    /// The Job launched now, and why.
    pub launched: Option<(&'a str, &'a LaunchReason)>,
    /// What moved among the floating modules, in words, when this check found it.
    pub moved: Option<&'a str>,
    /// Servers annotated now (possibly none), and with which code.
    pub nudged: Option<(&'a [String], &'a str)>,
    /// A rollout completed now: how long it took and what it rolled out.
    pub rolled_out_in: Option<(Duration, &'a str)>,
}

/// The notices of one reconcile, split by when they may be told.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Notices {
    /// Owed as soon as the launch is recorded (its status write comes first): a later
    /// failure in the same reconcile must not lose them, since the next reconcile
    /// sees the Job running and launches nothing.
    pub of_launch: Vec<Notice>,
    /// Owed once the status that carries them is written; told again after a failed
    /// write, since the next reconcile starts from the same old status.
    pub of_status: Vec<Notice>,
}

/// What to tell, from the status before (`old`), the status after (`new`), what the
/// conditions were made from (`observed`) and `happened`.
pub fn notices(
    old: &CodeSourceStatus,
    new: &CodeSourceStatus,
    observed: &Observed,
    happened: &Happened,
) -> Notices {
    let mut out = Notices::default();
    if let Some((job, reason)) = happened.launched {
        out.of_launch.push(Notice::Build("started"));
        out.of_launch.push(event(
            EventType::Normal,
            reasons::BUILD_STARTED,
            "Build",
            format!(
                "building {} in job {job} ({})",
                revisions(&new.heads),
                launch_why(reason, old, happened.moved)
            ),
        ));
    }
    let tell = &mut out.of_status;
    if let Some(message) = &observed.invalid_spec {
        if !is_true(&old.conditions, types::STALLED)
            || old_message(old, types::STALLED) != Some(message)
        {
            tell.push(event(
                EventType::Warning,
                reasons::INVALID_SPEC,
                "Validate",
                message.clone(),
            ));
        }
        return out;
    }
    if observed.build_failed.is_some() && !is_true(&old.conditions, types::BUILD_FAILED) {
        tell.push(Notice::Build("failed"));
    }
    if let Some((reason, message)) = &observed.fetch_failed
        && !is_true(&old.conditions, types::FETCH_FAILED)
    {
        tell.push(event(
            EventType::Warning,
            reason,
            "CheckHeads",
            message.clone(),
        ));
    }
    let old_ready = find(&old.conditions, types::READY);
    if let Some((reason, message)) = &observed.launch_blocked
        && old_ready.is_none_or(|c| c.reason != *reason)
    {
        tell.push(event(EventType::Warning, reason, "Build", message.clone()));
    }
    if let Some(message) = &observed.build_failed
        && old_message(old, types::BUILD_FAILED) != Some(message)
    {
        tell.push(event(
            EventType::Warning,
            reasons::BUILD_FAILED,
            "Build",
            message.clone(),
        ));
    }
    // A build just landed when Ready leaves "Progressing" (a Job was running or its
    // record was awaited).
    let was_ready = is_true(&old.conditions, types::READY);
    let was_building = old_ready.is_some_and(|c| c.reason == reasons::PROGRESSING);
    // A partial build warns once when it lands (each retry that is partial again lands
    // anew), not at every reconcile while it waits for its retry.
    if let Some(message) = &observed.partial_build
        && observed.build_failed.is_none()
        && old_ready.is_none_or(|c| c.reason != reasons::PARTIAL_BUILD || c.message != *message)
    {
        if was_building {
            tell.push(Notice::Build("partial"));
        }
        tell.push(event(
            EventType::Warning,
            reasons::PARTIAL_BUILD,
            "Build",
            message.clone(),
        ));
    }
    if observed.up_to_date && was_building {
        let image = old
            .last_build
            .as_ref()
            .map(|b| b.image.clone())
            .unwrap_or_default();
        tell.push(Notice::Build("succeeded"));
        tell.push(event(
            EventType::Normal,
            reasons::NEW_ARTIFACT,
            "Build",
            format!("stored artifact {image} for {}", revisions(&new.heads)),
        ));
    } else if observed.up_to_date && old_ready.is_some() && !was_ready {
        // Back to up to date after a failure. A CodeSource seen for the first time
        // with its build current (a restore, a restart before its first status) says
        // nothing: 10,000 of them made 10,000 Events at start in the scale bench.
        tell.push(event(
            EventType::Normal,
            reasons::UP_TO_DATE,
            "CheckHeads",
            format!(
                "no changes since the last build ({})",
                revisions(&new.heads)
            ),
        ));
    }
    if let ConfigState::Updated { name, image } = &observed.config
        && new.config.is_some()
        && new.config != old.config
    {
        tell.push(event(
            EventType::Normal,
            reasons::CONFIG_UPDATED,
            "PublishConfig",
            format!("Config {name} now uses {image}"),
        ));
    }
    if let Some((servers, code)) = happened.nudged.filter(|(s, _)| !s.is_empty()) {
        tell.push(event(
            EventType::Normal,
            reasons::ROLLOUT_STARTED,
            "RollOut",
            format!("asked Servers {} to roll to {code}", servers.join(", ")),
        ));
    }
    if let Some((took, code)) = happened.rolled_out_in {
        tell.push(Notice::RolloutTook(took));
        tell.push(event(
            EventType::Normal,
            reasons::ROLLED_OUT,
            "RollOut",
            format!(
                "every Server runs {code}, {:.1} s after it was written into the Config",
                took.as_secs_f64()
            ),
        ));
    }
    if let Some((_, _, reason, message)) = &observed.rolled_out
        && *reason == reasons::PROGRESS_DEADLINE_EXCEEDED
        && find(&old.conditions, types::ROLLED_OUT).is_none_or(|c| c.reason != *reason)
    {
        tell.push(event(
            EventType::Warning,
            reason,
            "RollOut",
            message.clone(),
        ));
    }
    out
}

/// Why a build was launched, in words for its Event and log line.
pub fn launch_why(reason: &LaunchReason, old: &CodeSourceStatus, moved: Option<&str>) -> String {
    match reason {
        LaunchReason::FirstBuild => "first build".to_string(),
        LaunchReason::NewHeads => "new heads".to_string(),
        LaunchReason::SpecChanged => "spec changed".to_string(),
        LaunchReason::Requested(v) => format!("requested at {v}"),
        LaunchReason::Retry => "retry after a failed build".to_string(),
        LaunchReason::RetryPartial => format!(
            "retry of the environments that failed: {}",
            old.last_build
                .as_ref()
                .map(|b| b
                    .failed
                    .iter()
                    .map(|f| f.branch.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        LaunchReason::ModulesMoved(_) => format!(
            "floating modules moved: {}",
            moved.unwrap_or("see the previous check")
        ),
    }
}

/// The revisions of `heads`, for messages.
pub fn revisions(heads: &BTreeMap<String, String>) -> String {
    let list: Vec<&str> = heads.values().map(String::as_str).collect();
    if list.is_empty() {
        "no branches".into()
    } else {
        list.join(", ")
    }
}

/// The message of condition `type_` in `status`.
pub fn old_message<'a>(status: &'a CodeSourceStatus, type_: &str) -> Option<&'a String> {
    find(&status.conditions, type_).map(|c| &c.message)
}

fn event(type_: EventType, reason: &'static str, action: &'static str, note: String) -> Notice {
    Notice::Event {
        type_,
        reason,
        action,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codesource::status::codesource_conditions;
    use crate::conditions::merge_conditions_at;
    use jiff::Timestamp;
    use openvox_crds::codesource::{BuildRecord, ConfigRecord, FailedEnvironment};

    /// `Observed` of a CodeSource whose last build is current.
    fn up_to_date() -> Observed {
        Observed {
            invalid_spec: None,
            up_to_date: true,
            last_image: Some("reg/code@sha256:1".into()),
            ..Observed::invalid(String::new())
        }
    }

    fn building() -> Observed {
        Observed {
            up_to_date: false,
            building: Some("p-1".into()),
            ..up_to_date()
        }
    }

    /// A status with the conditions `observed` gives, and a last build.
    fn status_of(observed: &Observed) -> CodeSourceStatus {
        CodeSourceStatus {
            conditions: merge_conditions_at(
                &[],
                &codesource_conditions(observed),
                Some(1),
                Timestamp::UNIX_EPOCH,
            ),
            heads: [("production".into(), "production@sha1:abc".into())].into(),
            last_build: Some(BuildRecord {
                image: "reg/code@sha256:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn reasons_of(notices: &[Notice]) -> Vec<String> {
        notices
            .iter()
            .map(|n| match n {
                Notice::Event { reason, .. } => (*reason).to_string(),
                Notice::Build(result) => format!("builds:{result}"),
                Notice::RolloutTook(_) => "rollout-duration".into(),
            })
            .collect()
    }

    /// (case, observed before, observed now, notices told once the status is written)
    #[test]
    fn events_and_metrics_follow_transitions_only() {
        let failed = Observed {
            up_to_date: false,
            build_failed: Some("job p-1 failed (BackoffLimitExceeded)".into()),
            ..up_to_date()
        };
        // Without heads nothing is decided: the build is not known to be current.
        let fetch_failed = Observed {
            up_to_date: false,
            fetch_failed: Some((reasons::GIT_OPERATION_FAILED, "unreachable".into())),
            ..up_to_date()
        };
        let blocked = Observed {
            up_to_date: false,
            launch_blocked: Some((reasons::SECRET_NOT_FOUND, "secret \"push\"".into())),
            ..up_to_date()
        };
        let partial = Observed {
            up_to_date: false,
            partial_build: Some("1 of 2 environments failed".into()),
            ..up_to_date()
        };
        let invalid = Observed {
            invalid_spec: Some("schedule: bad".into()),
            ..up_to_date()
        };
        let cases: Vec<(&str, Observed, Observed, Vec<&str>)> = vec![
            (
                "a build lands",
                building(),
                up_to_date(),
                vec!["builds:succeeded", reasons::NEW_ARTIFACT],
            ),
            ("still up to date", up_to_date(), up_to_date(), vec![]),
            (
                "up to date again after a failure",
                failed.clone(),
                up_to_date(),
                vec![reasons::UP_TO_DATE],
            ),
            (
                "a build fails",
                building(),
                failed.clone(),
                vec!["builds:failed", reasons::BUILD_FAILED],
            ),
            ("still failed", failed.clone(), failed.clone(), vec![]),
            (
                "heads cannot be listed",
                up_to_date(),
                fetch_failed.clone(),
                vec![reasons::GIT_OPERATION_FAILED],
            ),
            (
                "still cannot list",
                fetch_failed.clone(),
                fetch_failed,
                vec![],
            ),
            (
                "a launch is blocked",
                up_to_date(),
                blocked.clone(),
                vec![reasons::SECRET_NOT_FOUND],
            ),
            ("still blocked", blocked.clone(), blocked, vec![]),
            (
                "a partial build lands",
                building(),
                partial.clone(),
                vec!["builds:partial", reasons::PARTIAL_BUILD],
            ),
            ("a partial build waits", partial.clone(), partial, vec![]),
            (
                "the spec turns invalid",
                up_to_date(),
                invalid.clone(),
                vec![reasons::INVALID_SPEC],
            ),
            ("still invalid", invalid.clone(), invalid, vec![]),
        ];
        for (case, before, now, want) in cases {
            let old = status_of(&before);
            let new = status_of(&now);
            let got = notices(&old, &new, &now, &Happened::default());
            assert_eq!(reasons_of(&got.of_status), want, "{case}");
            assert!(got.of_launch.is_empty(), "{case}");
        }
    }

    #[test]
    fn a_first_sight_of_a_current_build_says_nothing() {
        let got = notices(
            &CodeSourceStatus::default(),
            &status_of(&up_to_date()),
            &up_to_date(),
            &Happened::default(),
        );
        assert_eq!(got, Notices::default());
    }

    #[test]
    fn a_launch_is_told_with_its_reason_apart_from_the_status() {
        let mut old = status_of(&up_to_date());
        if let Some(build) = old.last_build.as_mut() {
            build.failed = vec![FailedEnvironment {
                branch: "staging".into(),
                ..Default::default()
            }];
        }
        let reason = LaunchReason::RetryPartial;
        let happened = Happened {
            launched: Some(("p-2", &reason)),
            ..Default::default()
        };
        let got = notices(&old, &status_of(&building()), &building(), &happened);
        assert_eq!(
            reasons_of(&got.of_launch),
            ["builds:started", reasons::BUILD_STARTED]
        );
        let Notice::Event { note, .. } = &got.of_launch[1] else {
            panic!("{got:?}")
        };
        assert_eq!(
            note,
            "building production@sha1:abc in job p-2 (retry of the environments that failed: staging)"
        );
        let moved = LaunchReason::ModulesMoved("d".into());
        assert_eq!(
            launch_why(&moved, &old, Some("stdlib main → abc")),
            "floating modules moved: stdlib main → abc"
        );
        assert_eq!(
            launch_why(&moved, &old, None),
            "floating modules moved: see the previous check"
        );
    }

    #[test]
    fn a_config_write_and_a_rollout_are_told_once() {
        let config = ConfigRecord {
            name: "production".into(),
            image: "reg/code@sha256:1".into(),
            updated_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        };
        let now = Observed {
            config: ConfigState::Updated {
                name: "production".into(),
                image: "reg/code@sha256:1".into(),
            },
            ..up_to_date()
        };
        let old = status_of(&up_to_date());
        let new = CodeSourceStatus {
            config: Some(config.clone()),
            ..status_of(&now)
        };
        let servers = ["puppet".to_string()];
        let happened = Happened {
            nudged: Some((&servers, "reg/code@sha256:1")),
            rolled_out_in: Some((Duration::from_millis(12_340), "reg/code@sha256:1")),
            ..Default::default()
        };
        let got = notices(&old, &new, &now, &happened);
        assert_eq!(
            reasons_of(&got.of_status),
            [
                reasons::CONFIG_UPDATED,
                reasons::ROLLOUT_STARTED,
                "rollout-duration",
                reasons::ROLLED_OUT
            ]
        );
        let Notice::Event { note, .. } = &got.of_status[3] else {
            panic!("{got:?}")
        };
        assert!(
            note.ends_with("12.3 s after it was written into the Config"),
            "{note}"
        );
        // The same Config record again, nobody nudged: nothing to tell.
        let again = notices(&new, &new, &now, &Happened::default());
        assert!(again.of_status.is_empty(), "{again:?}");
    }

    #[test]
    fn a_stuck_rollout_warns_once() {
        let stuck: crate::conditions::ConditionFacts = (
            types::ROLLED_OUT,
            "False",
            reasons::PROGRESS_DEADLINE_EXCEEDED,
            "Deployment puppet exceeded its progress deadline".into(),
        );
        let now = Observed {
            rolled_out: Some(stuck),
            ..up_to_date()
        };
        let first = notices(
            &status_of(&up_to_date()),
            &status_of(&now),
            &now,
            &Happened::default(),
        );
        assert_eq!(
            reasons_of(&first.of_status),
            [reasons::PROGRESS_DEADLINE_EXCEEDED]
        );
        let again = notices(
            &status_of(&now),
            &status_of(&now),
            &now,
            &Happened::default(),
        );
        assert!(again.of_status.is_empty());
    }
}
