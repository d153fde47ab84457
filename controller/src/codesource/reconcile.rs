//! One CodeSource reconcile, in phases. Each phase is a function in the file named for
//! it; its doc comment says which conditions its findings set. The decisions come from
//! pure modules (`validate`, `observe::triggers`, `decide`, `status`, `notices`); the
//! phases talk to the API server.
//!
//! 1. validate (`validate`): a spec that cannot work stalls until it changes.
//! 2. observe (`observe`): the owned worker Jobs, the triggers that are due.
//! 3. check heads (`check`): the control repository's heads and floating modules.
//! 4. decide (`decide`, pure): launch, wait, retry later, or nothing to do.
//! 5. launch (`launch`): the worker Job, recorded at once; why the last one failed.
//! 6. publish (`publish`): the last build into the Config.
//! 7. roll out (`servers::roll_out`): the Servers to what the Config carries.
//! 8. report (`report`): conditions, one status write, Events and metrics of the
//!    transitions, finished Jobs pruned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use openvox_crds::CodeSource;
use openvox_crds::names::reasons;

use super::check::{Checked, check};
use super::code_config::{self, spec_hash_with};
use super::decide::{Decision, Facts, decide, spec_hash};
use super::error::Error;
use super::heads::redact_url;
use super::launch::act;
use super::notices::Happened;
use super::observe::{owned_jobs, schedule_into, summarize, triggers};
use super::publish::publish;
use super::report::{prune_history, report};
use super::servers::roll_out;
use super::status::{Observed, partial_message};
use super::validate::validate;
use crate::retry::ReconcileError;

/// Metrics label of this controller.
pub const CONTROLLER: &str = "codesource";

// What the phases share lives in `context`, which imports none of them.
pub use super::context::{Context, key};

/// Reconciles one CodeSource.
pub async fn reconcile(cs: Arc<CodeSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cs, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.failures.succeeded(&key(&cs));
    }
    result
}

/// Transient errors back off exponentially per CodeSource (5 s doubling to 5 min);
/// permanent ones wait for a spec change (the reconcile already marked them Stalled).
pub fn error_policy(cs: Arc<CodeSource>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::retry::after_error(CONTROLLER, key(&cs), error, &ctx.metrics, &ctx.failures)
}

async fn reconcile_inner(cs: &CodeSource, ctx: &Context) -> Result<Action, Error> {
    let Some(ns) = cs.namespace() else {
        return Err(Error::Unnamed);
    };
    let now = Timestamp::now();
    // Read with `now`: the tick's instant is derived from both (see `instant_of`).
    let now_instant = Instant::now();
    let old = cs.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = cs.metadata.generation;

    let valid = match validate(&cs.spec) {
        Ok(valid) => valid,
        Err(message) => {
            status.next_schedule_time = None;
            let observed = Observed::invalid(message);
            let happened = Happened::default();
            report(ctx, cs, &ns, &old, &mut status, &observed, &happened, now).await?;
            return Ok(Action::await_change());
        }
    };

    // Observe: the worker Jobs (watch cache, and one created a moment ago that the
    // cache does not show yet), and the triggers. The last tick handled may be newer
    // than the stored one: a check that found nothing new wrote nothing.
    let jobs = owned_jobs(ctx, cs, &ns).await;
    let summaries = ctx
        .memory
        .with_launched(&key(cs), jobs.iter().map(summarize).collect());
    let last_tick = ctx
        .memory
        .last_tick(&key(cs), status.last_schedule_time.as_ref().map(|t| t.0));
    let triggers = triggers(cs, &old, valid.schedule.tick(last_tick, now));
    schedule_into(&mut status, triggers.tick, cs.spec.suspend);

    // The CodeConfig, when modules come from one. One that cannot be read stops the
    // check like an unreachable repository: nothing is built from a guess.
    let (code_config, checked) = match code_config::read(ctx, cs, &ns).await {
        Ok(code_config) => {
            let checked = check(
                ctx,
                cs,
                &ns,
                code_config.as_ref(),
                valid.git_timeout,
                &triggers,
                &old,
                &mut status,
                (now, now_instant),
            )
            .await;
            (code_config, checked)
        }
        Err(e) => (
            None,
            Checked {
                failed: Some(e),
                moved: None,
            },
        ),
    };
    let heads =
        (status.last_check_time.is_some() && checked.failed.is_none()).then_some(&status.heads);

    let spec_hash = spec_hash_with(spec_hash(&cs.spec), code_config.as_ref());
    let last_build = old.last_build.as_ref();
    let decision = decide(&Facts {
        suspended: cs.spec.suspend,
        heads,
        spec_hash: &spec_hash,
        requested_at: triggers.requested_at.as_deref(),
        last_handled_requested_at: old.last_handled_requested_at.as_deref(),
        last_launch: old.last_launch.as_ref(),
        last_build_inputs: last_build.and_then(|b| b.inputs_hash.as_deref()),
        last_build_partial: last_build.is_some_and(|b| !b.failed.is_empty()),
        jobs: &summaries,
        tick: triggers.tick.due,
        modules_moved: ctx.memory.moved(&key(cs)).as_deref(),
    });

    let moved = checked.moved.as_deref();
    let launched = act(
        ctx,
        cs,
        &ns,
        &decision,
        code_config.as_ref(),
        &jobs,
        moved,
        &old,
        &mut status,
        now,
    )
    .await?;
    let published = publish(ctx, cs, &ns, &summaries, &old, &mut status, now).await;
    let rollout = roll_out(
        ctx,
        &key(cs),
        &ns,
        &published.state,
        published.target.as_ref(),
        &mut status,
        &old,
        now,
    )
    .await;

    let partial_build = match (&decision, last_build) {
        (Decision::PartialWaitingForRetry { .. }, Some(build)) => {
            Some(partial_message(&build.image, &build.failed))
        }
        _ => None,
    };
    let observed = Observed {
        invalid_spec: None,
        suspended: cs.spec.suspend,
        fetch_failed: checked.failed.as_ref().map(|e| (e.reason(), e.to_string())),
        launch_blocked: launched
            .blocked
            .as_ref()
            .map(|e| (e.reason(), e.to_string())),
        no_matching_branches: matches!(decision, Decision::NoMatchingBranches),
        building: launched.building.clone(),
        build_failed: launched.build_failed.clone(),
        partial_build,
        up_to_date: matches!(decision, Decision::UpToDate),
        last_image: last_build.map(|b| b.image.clone()),
        config: published.state.clone(),
        rolled_out: rollout.condition.clone(),
    };
    let happened = Happened {
        launched: launched.job.as_ref().map(|(job, why)| (job.as_str(), why)),
        moved,
        nudged: rollout
            .nudged
            .as_ref()
            .map(|(servers, code)| (servers.as_slice(), code.as_str())),
        rolled_out_in: rollout
            .completed_in
            .as_ref()
            .map(|(took, code)| (*took, code.as_str())),
    };
    report(ctx, cs, &ns, &old, &mut status, &observed, &happened, now).await?;
    prune_history(ctx, cs, &ns, &jobs).await?;

    if let Some(e) = checked
        .failed
        .or(launched.blocked)
        .or(published.error)
        .or(rollout.error)
    {
        return Err(e);
    }
    let rolling = rollout
        .condition
        .as_ref()
        .is_some_and(|c| c.2 == reasons::PROGRESSING);
    Ok(next_action(
        cs.spec.suspend,
        triggers.tick.next,
        now,
        rolling,
    ))
}

/// When to look again without an event. Running Jobs and rolling Deployments wake
/// the controller through watches; these waits are only safety nets: the next
/// scheduled time, at most an hour away (30 s while a rollout progresses).
pub fn next_action(
    suspended: bool,
    next_tick: Option<Timestamp>,
    now: Timestamp,
    rolling: bool,
) -> Action {
    let cap = if rolling { 30.0 } else { 3600.0 };
    match (suspended, next_tick) {
        (true, _) => Action::await_change(),
        (false, Some(next)) => {
            let wait = next.duration_since(now);
            let secs = wait.as_secs_f64().max(1.0);
            Action::requeue(Duration::from_secs_f64(secs.min(cap)))
        }
        (false, None) if rolling => Action::requeue(Duration::from_secs_f64(cap)),
        (false, None) => Action::await_change(),
    }
}

/// A URL fit for logs.
pub fn loggable_url(cs: &CodeSource) -> String {
    redact_url(&cs.spec.git.url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_next_look_is_the_next_tick_within_the_caps() {
        let now = at("2026-12-05T10:00:00Z");
        let in_5_min = Some(at("2026-12-05T10:05:00Z"));
        let in_2_h = Some(at("2026-12-05T12:00:00Z"));
        let cases = [
            ("suspended", true, in_5_min, false, Action::await_change()),
            (
                "the next tick",
                false,
                in_5_min,
                false,
                Action::requeue(Duration::from_secs(300)),
            ),
            (
                "an hour at most",
                false,
                in_2_h,
                false,
                Action::requeue(Duration::from_secs(3600)),
            ),
            (
                "30 s while rolling",
                false,
                in_2_h,
                true,
                Action::requeue(Duration::from_secs(30)),
            ),
            (
                "no schedule, rolling",
                false,
                None,
                true,
                Action::requeue(Duration::from_secs(30)),
            ),
            ("no schedule", false, None, false, Action::await_change()),
            (
                "a tick just past",
                false,
                Some(now),
                false,
                Action::requeue(Duration::from_secs(1)),
            ),
        ];
        for (case, suspended, next, rolling, want) in cases {
            assert_eq!(next_action(suspended, next, now, rolling), want, "{case}");
        }
    }
}
