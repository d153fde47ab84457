//! The build decision: a pure function of the spec's output-shaping part, the heads,
//! the status and the worker Jobs that exist. No client, no clock.
//!
//! A build is wanted when the inputs (wanted heads + everything in the spec that shapes
//! the output) differ from those of the last launch, or when the manual-trigger
//! annotation carries a value not yet handled. It is never launched while another Job
//! of the CodeSource is active, nor twice for the same inputs: the launch is recorded in
//! `status.lastLaunch` right after the Job is created. A launch whose Job failed is
//! retried at a scheduled tick, no sooner than [`retry_backoff`] after it started. A
//! partial build (published, but some environments failed: `lastBuild.failed`) is
//! retried the same way: its image stands, and the retry rebuilds what failed.

use std::collections::BTreeMap;

use jiff::Timestamp;
use openvox_crds::CodeSourceSpec;
use openvox_crds::codesource::{LaunchRecord, LayerCompression};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Where a worker Job of this CodeSource stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not finished yet (pending or running).
    Active,
    /// Completed successfully.
    Succeeded,
    /// Failed for good (backoff limit, deadline, or a permanent worker error).
    Failed,
}

/// What the decision needs to know about one worker Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// Job name.
    pub name: String,
    /// The inputs hash from the Job's label.
    pub inputs_hash: Option<String>,
    /// Where it stands.
    pub state: JobState,
}

/// Everything the decision looks at.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// `spec.suspend`.
    pub suspended: bool,
    /// Wanted heads (`<branch>` → `<branch>@sha1:<commit>`), from this reconcile's
    /// check or from `status.heads`; `None` when the heads were never listed.
    pub heads: Option<&'a BTreeMap<String, String>>,
    /// Hash of the output-shaping spec, from [`spec_hash`].
    pub spec_hash: &'a str,
    /// Value of the requestedAt annotation.
    pub requested_at: Option<&'a str>,
    /// `status.lastHandledRequestedAt`.
    pub last_handled_requested_at: Option<&'a str>,
    /// `status.lastLaunch`.
    pub last_launch: Option<&'a LaunchRecord>,
    /// `status.lastBuild.inputsHash`.
    pub last_build_inputs: Option<&'a str>,
    /// `status.lastBuild.failed` is not empty: the last build was partial.
    pub last_build_partial: bool,
    /// Worker Jobs of this CodeSource that exist now.
    pub jobs: &'a [JobSummary],
    /// The scheduled time that came due in this reconcile, if any.
    pub tick: Option<Timestamp>,
    /// Floating modules of the last build moved since: a digest of what moved where
    /// (`floating::Found::moved_digest`).
    pub modules_moved: Option<&'a str>,
}

/// Why a build is launched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaunchReason {
    /// Nothing was ever launched.
    FirstBuild,
    /// A wanted branch moved, appeared or disappeared.
    NewHeads,
    /// The output-shaping spec changed.
    SpecChanged,
    /// The manual-trigger annotation has a new value.
    Requested(String),
    /// The last launch for these inputs failed; this is the next tick's retry.
    Retry,
    /// The last build of these inputs was partial; this retries the failed environments.
    RetryPartial,
    /// Floating modules moved (the digest of what moved where); also the retry of
    /// such a build that failed.
    ModulesMoved(String),
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Suspended: nothing happens.
    Suspended,
    /// The heads were never listed; nothing to decide on yet.
    NoHeads,
    /// No branch matches `git.branches`: there is nothing to build.
    NoMatchingBranches,
    /// A Job is running; wait for it.
    WaitForJob(String),
    /// Launch a Job.
    Launch {
        /// Hash of the inputs (recorded in `lastLaunch.inputsHash`, passed to the worker).
        inputs_hash: String,
        /// Name suffix source: the inputs hash, plus the trigger for manual and retry
        /// launches so they never collide with the earlier Job of the same inputs.
        name_seed: String,
        /// Why.
        reason: LaunchReason,
    },
    /// The last build is of exactly these inputs.
    UpToDate,
    /// The last build is of these inputs but some environments failed in it; its image
    /// is published, and the next tick after the backoff retries.
    PartialWaitingForRetry {
        /// The retry of it that failed outright (its Job), when that is the last launch.
        failed_retry: Option<String>,
    },
    /// The last launch for these inputs failed; the next tick retries.
    FailedWaitingForRetry {
        /// The failed Job, when it still exists.
        job: Option<String>,
    },
    /// The Job for these inputs finished but no build record of them exists yet
    /// (the worker writes it before it exits, so this is a short race or a worker fault).
    AwaitingBuildRecord,
}

/// Hash of the spec fields that shape the output. Changing any of them rebuilds;
/// changing a schedule, a Secret name or Job placement does not.
pub fn spec_hash(spec: &CodeSourceSpec) -> String {
    let mut shaping = json!({
        "v": 1,
        "branches": spec.git.branches,
        "excludeBranches": spec.git.exclude_branches,
        "invalidBranches": spec.git.invalid_branches,
        "url": spec.git.url,
        "modules": spec.modules,
        "output": {
            "image": spec.output.image,
            "tags": spec.output.tags,
            "claimName": spec.output.claim_name,
            "insecure": spec.output.insecure,
        },
    });
    // Only when it is not the default, so the hashes of CodeSources written before the
    // field existed stay what they were (no rebuild on upgrade).
    if spec.output.compression != LayerCompression::Gzip {
        shaping["output"]["compression"] = json!(spec.output.compression.as_arg());
    }
    sha256_hex(shaping.to_string().as_bytes())
}

/// Hash of the build inputs: the spec hash and the wanted heads.
pub fn inputs_hash(spec_hash: &str, heads: &BTreeMap<String, String>) -> String {
    // serde_json keeps BTreeMap order, so equal heads give equal text.
    let inputs = json!({ "spec": spec_hash, "heads": heads });
    // 128 bits: short enough for a label value, far from any chance of collision.
    let mut hash = sha256_hex(inputs.to_string().as_bytes());
    hash.truncate(32);
    hash
}

/// How long after a failed launch the next retry may start, after `failures` failed
/// Jobs of the same inputs: 5 minutes, doubling, at most 6 hours.
pub fn retry_backoff(failures: usize) -> jiff::SignedDuration {
    let exponent = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(7);
    let minutes = (5i64 << exponent).min(360);
    jiff::SignedDuration::from_mins(minutes)
}

/// Whether a retry may start at `tick`: `retry_backoff(attempts)` after the launch it
/// retries (at once when that launch is unknown).
fn retry_due(launched: Option<Timestamp>, tick: Timestamp, attempts: usize) -> bool {
    launched.is_none_or(|at| tick.duration_since(at) >= retry_backoff(attempts))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Decides what to do. See the module documentation for the rules.
pub fn decide(facts: &Facts<'_>) -> Decision {
    if facts.suspended {
        return Decision::Suspended;
    }
    if let Some(active) = facts.jobs.iter().find(|j| j.state == JobState::Active) {
        return Decision::WaitForJob(active.name.clone());
    }
    let Some(heads) = facts.heads else {
        return Decision::NoHeads;
    };
    if heads.is_empty() {
        return Decision::NoMatchingBranches;
    }
    let inputs = inputs_hash(facts.spec_hash, heads);

    if let Some(requested) = facts
        .requested_at
        .filter(|r| Some(*r) != facts.last_handled_requested_at)
    {
        return Decision::Launch {
            name_seed: format!("{inputs}/requested/{requested}"),
            inputs_hash: inputs,
            reason: LaunchReason::Requested(requested.to_string()),
        };
    }

    let launched_these = facts.last_launch.is_some_and(|l| l.inputs_hash == inputs);
    let built_these = facts.last_build_inputs == Some(inputs.as_str());
    if let Some(moved) = facts.modules_moved.filter(|_| built_these) {
        return rebuild_for_moved_modules(facts, inputs, moved);
    }
    if built_these && !facts.last_build_partial {
        return Decision::UpToDate;
    }
    if built_these {
        // Every finished Job of these inputs was an attempt (partial or failed), as far
        // as the Job history shows them: the same backoff as for failed builds.
        let attempts = facts
            .jobs
            .iter()
            .filter(|j| j.state != JobState::Active && j.inputs_hash.as_deref() == Some(&inputs))
            .count()
            .max(1);
        let launched = facts
            .last_launch
            .filter(|l| l.inputs_hash == inputs)
            .map(|l| l.time.0);
        return match facts.tick.filter(|t| retry_due(launched, *t, attempts)) {
            Some(tick) => Decision::Launch {
                name_seed: format!("{inputs}/retry/{tick}"),
                inputs_hash: inputs,
                reason: LaunchReason::RetryPartial,
            },
            None => Decision::PartialWaitingForRetry {
                failed_retry: facts
                    .last_launch
                    .filter(|l| l.inputs_hash == inputs)
                    .and_then(|l| {
                        facts
                            .jobs
                            .iter()
                            .find(|j| j.name == l.job_name && j.state == JobState::Failed)
                    })
                    .map(|j| j.name.clone()),
            },
        };
    }
    if !launched_these {
        let reason = match facts.last_launch {
            None => LaunchReason::FirstBuild,
            Some(last) if last.heads != *heads => LaunchReason::NewHeads,
            Some(_) => LaunchReason::SpecChanged,
        };
        return Decision::Launch {
            name_seed: inputs.clone(),
            inputs_hash: inputs,
            reason,
        };
    }

    // Launched for these inputs and not built: did that launch fail?
    let last_job = facts.last_launch.map(|l| l.job_name.as_str());
    let job = facts
        .jobs
        .iter()
        .find(|j| Some(j.name.as_str()) == last_job);
    match job.map(|j| j.state) {
        Some(JobState::Succeeded) => Decision::AwaitingBuildRecord,
        // Failed, or gone (TTL) without a build record: a failure either way.
        Some(JobState::Failed) | None => {
            // Retries back off: the n-th failed Job of these inputs (as far as the
            // failed-Jobs history still shows them) waits retry_backoff(n) after its
            // launch, and then for a scheduled tick.
            let failures = facts
                .jobs
                .iter()
                .filter(|j| {
                    j.state == JobState::Failed && j.inputs_hash.as_deref() == Some(&inputs)
                })
                .count();
            let launched = facts.last_launch.map(|l| l.time.0);
            match facts.tick.filter(|t| retry_due(launched, *t, failures)) {
                Some(tick) => Decision::Launch {
                    name_seed: format!("{inputs}/retry/{tick}"),
                    inputs_hash: inputs,
                    reason: LaunchReason::Retry,
                },
                None => Decision::FailedWaitingForRetry {
                    job: job.map(|j| j.name.clone()),
                },
            }
        }
        // Active Jobs returned early above; this arm only keeps the match total.
        Some(JobState::Active) => Decision::WaitForJob(last_job.unwrap_or_default().to_string()),
    }
}

/// The control repository did not move but floating modules did (`moved`, a digest
/// of what moved where): one build for that movement; if it fails, retries back off
/// as other failed builds do, at scheduled times.
fn rebuild_for_moved_modules(facts: &Facts<'_>, inputs: String, moved: &str) -> Decision {
    let reason = LaunchReason::ModulesMoved(moved.to_owned());
    let Some(launch) = facts
        .last_launch
        .filter(|l| l.inputs_hash == inputs && l.modules.as_deref() == Some(moved))
    else {
        return Decision::Launch {
            name_seed: format!("{inputs}/modules/{moved}"),
            inputs_hash: inputs,
            reason,
        };
    };
    let job = facts.jobs.iter().find(|j| j.name == launch.job_name);
    if job.is_some_and(|j| j.state == JobState::Succeeded) {
        return Decision::AwaitingBuildRecord;
    }
    let failures = facts
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Failed && j.inputs_hash.as_deref() == Some(&inputs))
        .count();
    match facts
        .tick
        .filter(|t| retry_due(Some(launch.time.0), *t, failures))
    {
        Some(tick) => Decision::Launch {
            name_seed: format!("{inputs}/modules/{moved}/retry/{tick}"),
            inputs_hash: inputs,
            reason,
        },
        None => Decision::FailedWaitingForRetry {
            job: job.map(|j| j.name.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn heads(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(b, c)| (b.to_string(), format!("{b}@sha1:{c}")))
            .collect()
    }

    fn launch(inputs: &str, job: &str, heads: &BTreeMap<String, String>) -> LaunchRecord {
        LaunchRecord {
            job_name: job.into(),
            inputs_hash: inputs.into(),
            heads: heads.clone(),
            time: Time(Timestamp::UNIX_EPOCH),
            modules: None,
        }
    }

    fn job(name: &str, state: JobState) -> JobSummary {
        JobSummary {
            name: name.into(),
            inputs_hash: None,
            state,
        }
    }

    #[test]
    fn moved_floating_modules_rebuild_once_per_movement_and_retry_with_backoff() {
        let h = heads(&[("production", "1")]);
        let built = inputs_hash("spec1", &h);
        let base = Facts {
            last_build_inputs: Some(&built),
            modules_moved: Some("m1"),
            ..facts(&h)
        };
        // Nothing else changed: a build for this movement.
        let Decision::Launch {
            name_seed, reason, ..
        } = decide(&base)
        else {
            panic!("{:?}", decide(&base))
        };
        assert_eq!(reason, LaunchReason::ModulesMoved("m1".into()));
        assert!(name_seed.ends_with("/modules/m1"), "{name_seed}");
        // Without movement it is up to date.
        let quiet = Facts {
            modules_moved: None,
            ..base.clone()
        };
        assert_eq!(decide(&quiet), Decision::UpToDate);

        // Launched for it: wait while it runs, await its record when it succeeded.
        let mut record = launch(&built, "prod-m1", &h);
        record.modules = Some("m1".into());
        fn with<'a>(
            base: &Facts<'a>,
            record: &'a LaunchRecord,
            jobs: &'a [JobSummary],
            tick: Option<Timestamp>,
        ) -> Facts<'a> {
            Facts {
                last_launch: Some(record),
                jobs,
                tick,
                ..base.clone()
            }
        }
        let running = [job("prod-m1", JobState::Active)];
        assert_eq!(
            decide(&with(&base, &record, &running, None)),
            Decision::WaitForJob("prod-m1".into())
        );
        let done = [job("prod-m1", JobState::Succeeded)];
        assert_eq!(
            decide(&with(&base, &record, &done, None)),
            Decision::AwaitingBuildRecord
        );
        // Failed: waits for a tick past the backoff, then retries under a new name.
        let failed = [job("prod-m1", JobState::Failed)];
        assert_eq!(
            decide(&with(&base, &record, &failed, None)),
            Decision::FailedWaitingForRetry {
                job: Some("prod-m1".into())
            }
        );
        let later = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_hours(1);
        let Decision::Launch { name_seed, .. } =
            decide(&with(&base, &record, &failed, Some(later)))
        else {
            panic!("no retry");
        };
        assert!(name_seed.contains("/modules/m1/retry/"), "{name_seed}");
        // Another movement: another build at once.
        let moved_again = Facts {
            modules_moved: Some("m2"),
            ..with(&base, &record, &failed, None)
        };
        assert!(matches!(decide(&moved_again), Decision::Launch { .. }));
        // New heads win: that build resolves every module afresh.
        let moved_heads = heads(&[("production", "2")]);
        let new_heads = Facts {
            heads: Some(&moved_heads),
            ..base.clone()
        };
        let Decision::Launch { reason, .. } = decide(&new_heads) else {
            panic!()
        };
        assert_eq!(reason, LaunchReason::FirstBuild);
    }

    fn facts<'a>(h: &'a BTreeMap<String, String>) -> Facts<'a> {
        Facts {
            suspended: false,
            heads: Some(h),
            spec_hash: "spec1",
            requested_at: None,
            last_handled_requested_at: None,
            last_launch: None,
            last_build_inputs: None,
            last_build_partial: false,
            jobs: &[],
            tick: None,
            modules_moved: None,
        }
    }

    #[test]
    fn given_nothing_launched_yet_the_first_build_is_launched() {
        let h = heads(&[("production", "aaa")]);
        let d = decide(&facts(&h));
        assert!(
            matches!(
                d,
                Decision::Launch {
                    reason: LaunchReason::FirstBuild,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn given_unchanged_heads_no_job_is_created() {
        let h = heads(&[("production", "aaa")]);
        let inputs = inputs_hash("spec1", &h);
        let last = launch(&inputs, "cs-1", &h);
        let f = Facts {
            last_launch: Some(&last),
            last_build_inputs: Some(&inputs),
            tick: Some(Timestamp::UNIX_EPOCH),
            ..facts(&h)
        };
        assert_eq!(decide(&f), Decision::UpToDate);
    }

    #[test]
    fn given_a_moved_branch_a_build_is_launched_for_new_heads() {
        let old = heads(&[("production", "aaa")]);
        let new = heads(&[("production", "bbb")]);
        let old_inputs = inputs_hash("spec1", &old);
        let last = launch(&old_inputs, "cs-1", &old);
        let f = Facts {
            last_launch: Some(&last),
            last_build_inputs: Some(&old_inputs),
            ..facts(&new)
        };
        let Decision::Launch {
            inputs_hash: got,
            reason,
            name_seed,
        } = decide(&f)
        else {
            panic!("no launch")
        };
        assert_eq!(reason, LaunchReason::NewHeads);
        assert_eq!(got, inputs_hash("spec1", &new));
        assert_eq!(name_seed, got);
    }

    #[test]
    fn given_a_changed_output_spec_a_build_is_launched() {
        let h = heads(&[("production", "aaa")]);
        let old_inputs = inputs_hash("spec1", &h);
        let last = launch(&old_inputs, "cs-1", &h);
        let f = Facts {
            spec_hash: "spec2",
            last_launch: Some(&last),
            last_build_inputs: Some(&old_inputs),
            ..facts(&h)
        };
        assert!(matches!(
            decide(&f),
            Decision::Launch {
                reason: LaunchReason::SpecChanged,
                ..
            }
        ));
    }

    #[test]
    fn given_a_launch_already_recorded_for_these_inputs_no_second_job_is_created() {
        // The controller restarted after creating the Job and the Job ran to success
        // (or was removed by its TTL): no new Job for the same inputs.
        let h = heads(&[("production", "aaa")]);
        let inputs = inputs_hash("spec1", &h);
        let last = launch(&inputs, "cs-1", &h);
        let jobs = [job("cs-1", JobState::Succeeded)];
        let f = Facts {
            last_launch: Some(&last),
            jobs: &jobs,
            ..facts(&h)
        };
        assert_eq!(decide(&f), Decision::AwaitingBuildRecord);
    }

    #[test]
    fn given_an_active_job_nothing_else_is_launched() {
        let h = heads(&[("production", "bbb")]);
        let jobs = [job("cs-old", JobState::Active)];
        let f = Facts {
            jobs: &jobs,
            requested_at: Some("now"),
            ..facts(&h)
        };
        assert_eq!(decide(&f), Decision::WaitForJob("cs-old".into()));
    }

    #[test]
    fn given_suspend_nothing_happens_even_when_requested() {
        let h = heads(&[("production", "bbb")]);
        let f = Facts {
            suspended: true,
            requested_at: Some("now"),
            ..facts(&h)
        };
        assert_eq!(decide(&f), Decision::Suspended);
    }

    #[test]
    fn given_a_new_requested_at_a_build_is_launched_under_a_fresh_name() {
        let h = heads(&[("production", "aaa")]);
        let inputs = inputs_hash("spec1", &h);
        let last = launch(&inputs, "cs-1", &h);
        let f = Facts {
            last_launch: Some(&last),
            last_build_inputs: Some(&inputs),
            requested_at: Some("2026-03-01T10:00:00Z"),
            last_handled_requested_at: Some("earlier"),
            ..facts(&h)
        };
        let Decision::Launch {
            inputs_hash: got,
            name_seed,
            reason,
        } = decide(&f)
        else {
            panic!("no launch")
        };
        assert_eq!(got, inputs);
        assert_ne!(name_seed, inputs);
        assert_eq!(
            reason,
            LaunchReason::Requested("2026-03-01T10:00:00Z".into())
        );
    }

    #[test]
    fn given_an_already_handled_requested_at_nothing_is_launched() {
        let h = heads(&[("production", "aaa")]);
        let inputs = inputs_hash("spec1", &h);
        let last = launch(&inputs, "cs-1", &h);
        let f = Facts {
            last_launch: Some(&last),
            last_build_inputs: Some(&inputs),
            requested_at: Some("r1"),
            last_handled_requested_at: Some("r1"),
            ..facts(&h)
        };
        assert_eq!(decide(&f), Decision::UpToDate);
    }

    #[test]
    fn given_a_failed_job_the_retry_waits_for_the_next_tick() {
        let h = heads(&[("production", "aaa")]);
        let inputs = inputs_hash("spec1", &h);
        let last = launch(&inputs, "cs-1", &h);
        let jobs = [job("cs-1", JobState::Failed)];
        let f = Facts {
            last_launch: Some(&last),
            jobs: &jobs,
            ..facts(&h)
        };
        assert_eq!(
            decide(&f),
            Decision::FailedWaitingForRetry {
                job: Some("cs-1".into())
            }
        );

        let tick = Timestamp::from_second(600).unwrap();
        let f = Facts {
            tick: Some(tick),
            ..f
        };
        let Decision::Launch {
            reason, name_seed, ..
        } = decide(&f)
        else {
            panic!("no retry")
        };
        assert_eq!(reason, LaunchReason::Retry);
        assert!(name_seed.contains("retry"));
    }

    #[test]
    fn given_repeated_failures_retries_back_off() {
        let h = heads(&[("production", "aaa")]);
        let inputs = inputs_hash("spec1", &h);
        let mut last = launch(&inputs, "cs-3", &h);
        last.time = Time(Timestamp::from_second(0).unwrap());
        let failed = |name: &str| JobSummary {
            name: name.into(),
            inputs_hash: Some(inputs.clone()),
            state: JobState::Failed,
        };
        let jobs = [failed("cs-1"), failed("cs-2"), failed("cs-3")];
        // Three failures: 20 minutes must pass since the last launch.
        let at = |minutes: i64| Some(Timestamp::from_second(minutes * 60).unwrap());
        let f = Facts {
            last_launch: Some(&last),
            jobs: &jobs,
            tick: at(10),
            ..facts(&h)
        };
        assert_eq!(
            decide(&f),
            Decision::FailedWaitingForRetry {
                job: Some("cs-3".into())
            }
        );
        let f = Facts { tick: at(20), ..f };
        assert!(matches!(
            decide(&f),
            Decision::Launch {
                reason: LaunchReason::Retry,
                ..
            }
        ));
    }

    fn finished(name: &str, inputs: &str, state: JobState) -> JobSummary {
        JobSummary {
            name: name.into(),
            inputs_hash: Some(inputs.into()),
            state,
        }
    }

    #[test]
    fn partial_builds_are_retried_with_the_failed_build_backoff() {
        let h = heads(&[("production", "aaa"), ("feature_x", "bbb")]);
        let inputs = inputs_hash("spec1", &h);
        let last = launch(&inputs, "cs-1", &h);
        let at = |minutes: i64| Some(Timestamp::from_second(minutes * 60).unwrap());
        let one = [finished("cs-1", &inputs, JobState::Succeeded)];
        let three = [
            finished("cs-1", &inputs, JobState::Succeeded),
            finished("cs-2", &inputs, JobState::Failed),
            finished("cs-3", &inputs, JobState::Succeeded),
        ];
        let base = Facts {
            last_launch: Some(&last),
            last_build_inputs: Some(&inputs),
            last_build_partial: true,
            ..facts(&h)
        };
        // (jobs of these inputs, tick in minutes after the launch) → retried?
        let table: [(&[JobSummary], Option<i64>, bool); 6] = [
            (&one, None, false),    // no tick: never in between ticks
            (&one, Some(4), false), // one attempt: 5 minutes
            (&one, Some(5), true),
            (&three, Some(10), false), // three attempts: 20 minutes
            (&three, Some(20), true),
            (&[], Some(5), true), // history pruned: counted as one attempt
        ];
        for (jobs, minutes, retried) in table {
            let f = Facts {
                jobs,
                tick: minutes.and_then(at),
                ..base.clone()
            };
            let d = decide(&f);
            if retried {
                let Decision::Launch {
                    reason,
                    name_seed,
                    inputs_hash: got,
                } = d
                else {
                    panic!("{minutes:?}: no retry: {d:?}")
                };
                assert_eq!(reason, LaunchReason::RetryPartial);
                assert_eq!(got, inputs);
                assert!(name_seed.contains("/retry/"), "fresh name: {name_seed}");
            } else {
                assert_eq!(
                    d,
                    Decision::PartialWaitingForRetry { failed_retry: None },
                    "{minutes:?}"
                );
            }
        }
    }

    #[test]
    fn a_retry_of_a_partial_build_that_failed_outright_is_named() {
        let h = heads(&[("production", "aaa")]);
        let inputs = inputs_hash("spec1", &h);
        let retry = launch(&inputs, "cs-2", &h);
        let jobs = [
            finished("cs-1", &inputs, JobState::Succeeded),
            finished("cs-2", &inputs, JobState::Failed),
        ];
        let f = Facts {
            last_launch: Some(&retry),
            last_build_inputs: Some(&inputs),
            last_build_partial: true,
            jobs: &jobs,
            ..facts(&h)
        };
        assert_eq!(
            decide(&f),
            Decision::PartialWaitingForRetry {
                failed_retry: Some("cs-2".into())
            }
        );
        // Two attempts: the next retry waits 10 minutes after this one.
        let early = Facts {
            tick: Some(Timestamp::from_second(540).unwrap()),
            ..f.clone()
        };
        assert!(matches!(
            decide(&early),
            Decision::PartialWaitingForRetry { .. }
        ));
        let f = Facts {
            tick: Some(Timestamp::from_second(600).unwrap()),
            ..f
        };
        assert!(matches!(
            decide(&f),
            Decision::Launch {
                reason: LaunchReason::RetryPartial,
                ..
            }
        ));
    }

    #[test]
    fn a_partial_build_yields_to_new_heads_a_running_job_and_a_complete_build() {
        let old = heads(&[("production", "aaa")]);
        let old_inputs = inputs_hash("spec1", &old);
        let last = launch(&old_inputs, "cs-1", &old);
        let partial = Facts {
            last_launch: Some(&last),
            last_build_inputs: Some(&old_inputs),
            last_build_partial: true,
            ..facts(&old)
        };
        // New heads: a normal build, at once, no backoff.
        let new = heads(&[("production", "ccc")]);
        let d = decide(&Facts {
            heads: Some(&new),
            ..partial.clone()
        });
        assert!(
            matches!(
                d,
                Decision::Launch {
                    reason: LaunchReason::NewHeads,
                    ..
                }
            ),
            "{d:?}"
        );
        // The retry running: wait for it.
        let running = [job("cs-2", JobState::Active)];
        assert_eq!(
            decide(&Facts {
                jobs: &running,
                tick: Some(Timestamp::from_second(3600).unwrap()),
                ..partial.clone()
            }),
            Decision::WaitForJob("cs-2".into())
        );
        // The retry built everything: up to date.
        assert_eq!(
            decide(&Facts {
                last_build_partial: false,
                tick: Some(Timestamp::from_second(3600).unwrap()),
                ..partial
            }),
            Decision::UpToDate
        );
    }

    #[test]
    fn retry_backoff_doubles_from_5_minutes_to_6_hours() {
        let minutes: Vec<i64> = (0..=10).map(|n| retry_backoff(n).as_mins()).collect();
        assert_eq!(minutes, [5, 5, 10, 20, 40, 80, 160, 320, 360, 360, 360]);
    }

    #[test]
    fn given_no_matching_branch_nothing_is_built() {
        let h = BTreeMap::new();
        assert_eq!(decide(&facts(&h)), Decision::NoMatchingBranches);
    }

    #[test]
    fn given_heads_never_listed_nothing_is_decided() {
        let h = BTreeMap::new();
        let f = Facts {
            heads: None,
            ..facts(&h)
        };
        assert_eq!(decide(&f), Decision::NoHeads);
    }

    #[test]
    fn the_spec_hash_ignores_schedule_and_job_placement_but_not_output() {
        let spec: CodeSourceSpec = serde_json::from_value(serde_json::json!({
            "git": {"url": "https://g/r.git", "branches": ["production"]},
            "schedule": "@hourly",
            "output": {"image": "registry/code"}
        }))
        .unwrap();
        let mut other_schedule = spec.clone();
        other_schedule.schedule = "*/5 * * * *".into();
        other_schedule.job.backoff_limit = 5;
        assert_eq!(spec_hash(&spec), spec_hash(&other_schedule));
        let mut other_image = spec.clone();
        other_image.output.image = Some("registry/other".into());
        assert_ne!(spec_hash(&spec), spec_hash(&other_image));
        let mut other_branches = spec.clone();
        other_branches.git.exclude_branches = vec!["x".into()];
        assert_ne!(spec_hash(&spec), spec_hash(&other_branches));
        // PVC output: switching to a claim, or to another claim, is a new output.
        let mut claim = spec.clone();
        claim.output.image = None;
        claim.output.claim_name = Some("code".into());
        assert_ne!(spec_hash(&spec), spec_hash(&claim));
        let mut other_claim = claim.clone();
        other_claim.output.claim_name = Some("code2".into());
        assert_ne!(spec_hash(&claim), spec_hash(&other_claim));
        // Another layer compression is another output; gzip, the default, hashes as
        // before the field existed.
        let mut zstd = spec.clone();
        zstd.output.compression = LayerCompression::Zstd;
        assert_ne!(spec_hash(&spec), spec_hash(&zstd));
        assert_eq!(
            spec_hash(&spec),
            "a21cecd89e75519d98855f0b027b80c0a00695078dc637b32318ec08f2b9ee58",
            "the hash of a spec without compression must not change"
        );
    }
}
