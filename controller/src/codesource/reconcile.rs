//! One CodeSource reconcile, as a pipeline:
//! fetch (Jobs, Secret, heads) → validate → decide → apply (RBAC, Job, Config) → status.
//! The decisions come from the pure modules; this file talks to the API server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use openvox_crds::codesource::{BuildRecord, ConfigRecord, LaunchRecord};
use openvox_crds::names::{CONTROLLER_MANAGER, annotations, conditions as types, labels, reasons};
use openvox_crds::operator::{Config, Server};
use openvox_crds::{CodeSource, CodeSourceStatus};
use serde_json::json;
use tracing::{info, warn};

use super::config::{
    CONFIG_CRD, CodeTarget, ShapeKind, carries, code_patch, code_target, shape_from_crd,
};
use super::decide::{Decision, Facts, JobState, JobSummary, LaunchReason, decide, spec_hash};
use super::floating::{self, Found};
use super::forge::ForgeReleases;
use super::heads::{
    GitAuth, HeadCache, HeadRequest, instant_of, redact_url, shared_listing_since, wanted_heads,
};
use super::job::{LaunchParams, desired_job};
use super::memory::Memory;
use super::names::{codesource_label, job_name};
use super::rbac::{desired_role, desired_role_binding, desired_service_account};
use super::rollout::rolled_out;
use super::servers::follow_rollout;
use super::status::{ConfigState, Observed, codesource_conditions, must_write, partial_message};
use super::validate::validate;
use super::worker_defaults::WorkerDefaults;
use crate::conditions::{ConditionFacts, find, is_true, merge_conditions_at};
use crate::error::{Error, is_conflict, is_not_found, kube};
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;
use crate::retry::{Failures, backoff};

/// Metrics label of this controller.
pub const CONTROLLER: &str = "codesource";
/// How long a detected Config shape is trusted before the CRD is read again.
const SHAPE_TTL: Duration = Duration::from_secs(600);
/// Longest BuildFailed message (Job name, reason and termination message): the Event
/// note limit, so the Event carries it whole.
const MAX_FAILURE_MESSAGE: usize = 1000;

/// What the CodeSource reconciler shares across reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Default worker image.
    pub worker_image: String,
    /// Defaults of every worker pod that `spec.job` may override.
    pub worker_defaults: WorkerDefaults,
    /// Deduplicating head checks (control and module repositories).
    pub heads: HeadCache,
    /// Deduplicating Forge lookups (current releases of floating Forge modules).
    pub forge: ForgeReleases,
    /// Metrics.
    pub metrics: Metrics,
    /// Shape of `Config.spec.code` and when it was read.
    pub config_shape: Mutex<Option<(Instant, ShapeKind)>>,
    /// Consecutive transient failures per CodeSource, for backoff.
    pub failures: Failures,
    /// Versions our status writes returned, which must not trigger a reconcile.
    pub own_writes: OwnWrites,
    /// openvox-operator's Servers (watch cache), for the rollout.
    pub servers: Store<Server>,
    /// The worker Jobs (watch cache).
    pub jobs: Store<Job>,
    /// What is remembered between reconciles without being written (see `memory`).
    pub memory: Memory,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("codesource::Context")
            .finish_non_exhaustive()
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(CONTROLLER_MANAGER).force()
}

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

/// `namespace/name` of a CodeSource: the key of everything kept per CodeSource.
pub fn key(cs: &CodeSource) -> String {
    format!("{}/{}", cs.namespace().unwrap_or_default(), cs.name_any())
}

/// Transient errors back off exponentially per CodeSource (5 s doubling to 5 min);
/// permanent ones wait for a spec change (the reconcile already marked them Stalled).
pub fn error_policy(cs: Arc<CodeSource>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.reason());
    warn!(codesource = %key(&cs), reason = error.reason(), "reconcile failed: {error}");
    if error.is_permanent() {
        return Action::await_change();
    }
    Action::requeue(backoff(ctx.failures.failed(key(&cs))))
}

async fn reconcile_inner(cs: &CodeSource, ctx: &Context) -> Result<Action, Error> {
    let (Some(ns), name) = (cs.namespace(), cs.name_any()) else {
        return Err(Error::Unnamed);
    };
    let now = Timestamp::now();
    // Read with `now`: the tick's instant is derived from both (see `instant_of`).
    let now_instant = Instant::now();
    let old = cs.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = cs.metadata.generation;

    // Validate (pure). A spec that cannot work stalls until it changes.
    let valid = match validate(&cs.spec) {
        Ok(v) => v,
        Err(message) => {
            let observed = Observed {
                invalid_spec: Some(message.clone()),
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
            };
            status.conditions = merge_conditions_at(
                &old.conditions,
                &codesource_conditions(&observed),
                cs.metadata.generation,
                now,
            );
            status.next_schedule_time = None;
            if !is_true(&old.conditions, types::STALLED)
                || old_message(&old, types::STALLED) != Some(&message)
            {
                publish(
                    ctx,
                    cs,
                    EventType::Warning,
                    reasons::INVALID_SPEC,
                    "Validate",
                    message,
                )
                .await;
            }
            write_status(ctx, cs, &ns, &status, now).await?;
            return Ok(Action::await_change());
        }
    };

    // Fetch: the worker Jobs this CodeSource owns, from the watch cache, and one
    // created a moment ago that the cache does not show yet.
    let jobs = owned_jobs(ctx, cs, &ns).await;
    let summaries = ctx
        .memory
        .with_launched(&key(cs), jobs.iter().map(summarize).collect());

    // Schedule and triggers. The last tick handled may be newer than the stored one:
    // a check that found nothing new wrote nothing.
    let last_tick = ctx
        .memory
        .last_tick(&key(cs), status.last_schedule_time.as_ref().map(|t| t.0));
    let tick = valid.schedule.tick(last_tick, now);
    let requested_at = cs.annotations().get(annotations::REQUESTED_AT).cloned();
    let new_request = requested_at.is_some() && requested_at != old.last_handled_requested_at;
    // A webhook push asks for fresh heads only; a build follows when they moved.
    let check_request = crate::webhook::pending_check_request(
        cs.annotations(),
        old.last_handled_check_requested_at.as_deref(),
    );
    let spec_changed = old.observed_generation != cs.metadata.generation;
    let retry_fetch = is_true(&old.conditions, types::FETCH_FAILED);
    let check_now = !cs.spec.suspend
        && (tick.due.is_some()
            || spec_changed
            || new_request
            || check_request.is_some()
            || old.last_check_time.is_none()
            || retry_fetch);
    if let Some(due) = tick.due.filter(|_| !cs.spec.suspend) {
        status.last_schedule_time = Some(Time(due));
    }
    status.next_schedule_time = if cs.spec.suspend {
        None
    } else {
        tick.next.map(Time)
    };

    // Head check (deduplicated across CodeSources).
    let mut fetch_failed: Option<(&'static str, String)> = None;
    let mut fetch_error: Option<Error> = None;
    // What moved among the floating modules, in words, when this check found it.
    let mut moved_text: Option<String> = None;
    if check_now {
        // Which listings this check may share: see `shared_listing_since`.
        let never_reconciled = old.observed_generation.is_none() && old.last_check_time.is_none();
        let fresh_wanted = new_request
            || check_request.is_some()
            || retry_fetch
            || (!never_reconciled && (spec_changed || old.last_check_time.is_none()));
        let created = cs.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let since = shared_listing_since(fresh_wanted, never_reconciled, created, tick.due);
        let not_before = match since {
            Some(since) => instant_of(since, now, now_instant),
            None => Instant::now(),
        };
        match check_heads(ctx, cs, &ns, valid.git_timeout, not_before).await {
            Ok((heads, auth)) => {
                status.heads = heads;
                status.last_check_time = Some(Time(now));
                if check_request.is_some() {
                    status.last_handled_check_requested_at = check_request.clone();
                }
                // The floating modules of the last build, looked at in the same check.
                let found = match &old.last_build {
                    Some(build) => {
                        check_floating(ctx, cs, build, &auth, valid.git_timeout, not_before).await
                    }
                    None => Found::default(),
                };
                if !found.moved.is_empty() {
                    moved_text = Some(found.describe_moved());
                }
                ctx.memory.modules_moved(&key(cs), found.moved_digest());
                status.unreachable_modules = found.unreachable;
            }
            Err(e) => {
                fetch_failed = Some((e.reason(), e.to_string()));
                fetch_error = Some(e);
            }
        }
    }
    let heads =
        (status.last_check_time.is_some() && fetch_failed.is_none()).then_some(&status.heads);

    // Decide (pure).
    let spec_hash = spec_hash(&cs.spec);
    let decision = decide(&Facts {
        suspended: cs.spec.suspend,
        heads,
        spec_hash: &spec_hash,
        requested_at: requested_at.as_deref(),
        last_handled_requested_at: old.last_handled_requested_at.as_deref(),
        last_launch: old.last_launch.as_ref(),
        last_build_inputs: old
            .last_build
            .as_ref()
            .and_then(|b| b.inputs_hash.as_deref()),
        last_build_partial: old
            .last_build
            .as_ref()
            .is_some_and(|b| !b.failed.is_empty()),
        jobs: &summaries,
        tick: tick.due,
        modules_moved: ctx.memory.moved(&key(cs)).as_deref(),
    });

    // Apply.
    let mut building: Option<String> = None;
    let mut build_failed: Option<String> = None;
    // A launch held up by a missing or wrong Secret: reported, retried with backoff.
    let mut launch_error: Option<Error> = None;
    let launched = match &decision {
        Decision::Launch {
            inputs_hash,
            name_seed,
            ..
        } => {
            let job = job_name(&name, name_seed);
            match launch(ctx, cs, &ns, &job, inputs_hash).await {
                Ok(()) => {
                    ctx.memory.launched(&key(cs), &job, inputs_hash);
                    Some(job)
                }
                Err(e @ (Error::Secret { .. } | Error::ClaimNotFound(_))) => {
                    launch_error = Some(e);
                    None
                }
                Err(e) => return Err(e),
            }
        }
        _ => None,
    };
    match (&decision, launched) {
        (
            Decision::Launch {
                inputs_hash,
                reason,
                ..
            },
            Some(job),
        ) => {
            // Recorded at once: a restart or the Job's TTL must never launch it again.
            status.last_launch = Some(LaunchRecord {
                job_name: job.clone(),
                inputs_hash: inputs_hash.clone(),
                heads: status.heads.clone(),
                time: Time(now),
                modules: match reason {
                    LaunchReason::ModulesMoved(digest) => Some(digest.clone()),
                    _ => None,
                },
            });
            if let LaunchReason::Requested(value) = reason {
                status.last_handled_requested_at = Some(value.clone());
            }
            status.active_job = Some(job.clone());
            write_status(ctx, cs, &ns, &status, now).await?;
            ctx.metrics.build("started");
            let why = match reason {
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
                    moved_text.as_deref().unwrap_or("see the previous check")
                ),
            };
            info!(codesource = %key(cs), job = %job, "launched build ({why})");
            publish(
                ctx,
                cs,
                EventType::Normal,
                reasons::BUILD_STARTED,
                "Build",
                format!("building {} in job {job} ({why})", revisions(&status.heads)),
            )
            .await;
            building = Some(job);
        }
        (Decision::WaitForJob(job), _) => building = Some(job.clone()),
        (Decision::FailedWaitingForRetry { job }, _) => {
            build_failed = Some(failure_message(ctx, &ns, job.as_deref(), &jobs, &old).await);
        }
        // The partial image stands, but say why its retry failed.
        (
            Decision::PartialWaitingForRetry {
                failed_retry: Some(job),
            },
            _,
        ) => {
            build_failed = Some(failure_message(ctx, &ns, Some(job), &jobs, &old).await);
        }
        _ => {}
    }
    status.active_job = building.clone();
    // A Job that replaces a failed pod (a crashed or killed worker) is still building;
    // the status says so, so the wait for the replacement is explained.
    let building = building.map(|job| {
        let spec_and_status = jobs
            .iter()
            .find(|j| j.name_any() == job)
            .map(|j| (j.spec.as_ref(), j.status.as_ref()));
        let failed = spec_and_status.and_then(|(_, s)| s?.failed).unwrap_or(0);
        let limit = spec_and_status.and_then(|(s, _)| s?.backoff_limit);
        building_text(&job, failed, limit)
    });
    if build_failed.is_some() && !is_true(&old.conditions, types::BUILD_FAILED) {
        ctx.metrics.build("failed");
    }

    // Publish the last build into the Config.
    let last_build_job_active = old
        .last_build
        .as_ref()
        .and_then(|b| b.job_name.as_deref())
        .is_some_and(|j| {
            summaries
                .iter()
                .any(|s| s.name == j && s.state == JobState::Active)
        });
    let mut config_error: Option<Error> = None;
    // What the Config carries once this reconcile is done, when that is ours.
    let mut published: Option<CodeTarget> = None;
    let config_state = match (&cs.spec.config_ref, &old.last_build) {
        (Some(config_name), Some(build)) if !config_name.is_empty() => {
            if last_build_job_active {
                ConfigState::Pending
            } else if let Some(target) = code_target(&cs.spec.output, &build.image) {
                match publish_config(ctx, cs, &ns, config_name, &target, &old, now).await {
                    Ok(record) => {
                        if let Some(record) = record {
                            status.config = Some(record);
                        }
                        published = Some(target);
                        ConfigState::Updated {
                            name: config_name.clone(),
                            image: build.image.clone(),
                        }
                    }
                    Err(Error::ConfigNotFound(n)) => {
                        config_error = Some(Error::ConfigNotFound(n.clone()));
                        ConfigState::NotFound(n)
                    }
                    Err(e) => {
                        let state = ConfigState::Failed(e.to_string());
                        config_error = Some(e);
                        state
                    }
                }
            } else {
                // The last build was made for another output (switched since): the
                // Config keeps what it has until the first build for this one lands.
                ConfigState::Pending
            }
        }
        _ => ConfigState::NotWanted,
    };

    // Roll the servers to what the Config carries, and see how far they are.
    let rollout = roll_out(
        ctx,
        &key(cs),
        &ns,
        &config_state,
        published.as_ref(),
        &mut status,
        &old,
        now,
    )
    .await;

    // Status.
    let up_to_date = matches!(decision, Decision::UpToDate);
    let partial_build = match (&decision, &old.last_build) {
        (Decision::PartialWaitingForRetry { .. }, Some(build)) => {
            Some(partial_message(&build.image, &build.failed))
        }
        _ => None,
    };
    let observed = Observed {
        invalid_spec: None,
        suspended: cs.spec.suspend,
        fetch_failed: fetch_failed.clone(),
        launch_blocked: launch_error.as_ref().map(|e| (e.reason(), e.to_string())),
        no_matching_branches: matches!(decision, Decision::NoMatchingBranches),
        building,
        build_failed: build_failed.clone(),
        partial_build: partial_build.clone(),
        up_to_date,
        last_image: old.last_build.as_ref().map(|b| b.image.clone()),
        config: config_state.clone(),
        rolled_out: rollout.condition.clone(),
    };
    status.conditions = merge_conditions_at(
        &old.conditions,
        &codesource_conditions(&observed),
        cs.metadata.generation,
        now,
    );
    let written = write_status(ctx, cs, &ns, &status, now).await?;
    if let Some(due) = status.last_schedule_time.as_ref() {
        let stored = if written {
            status.last_schedule_time.as_ref()
        } else {
            old.last_schedule_time.as_ref()
        };
        ctx.memory
            .handled_tick(&key(cs), due.0, stored.map(|t| t.0));
    }

    // Events, on transitions only.
    if let Some((reason, message)) = &fetch_failed
        && !is_true(&old.conditions, types::FETCH_FAILED)
    {
        publish(
            ctx,
            cs,
            EventType::Warning,
            reason,
            "CheckHeads",
            message.clone(),
        )
        .await;
    }
    if let Some(e) = &launch_error
        && find(&old.conditions, types::READY).is_none_or(|c| c.reason != e.reason())
    {
        publish(
            ctx,
            cs,
            EventType::Warning,
            e.reason(),
            "Build",
            e.to_string(),
        )
        .await;
    }
    if let Some(message) = &build_failed
        && old_message(&old, types::BUILD_FAILED) != Some(message)
    {
        publish(
            ctx,
            cs,
            EventType::Warning,
            reasons::BUILD_FAILED,
            "Build",
            message.clone(),
        )
        .await;
    }
    // A build just landed when Ready leaves "Progressing" (a Job was running or its
    // record was awaited) for "up to date"; otherwise an up-to-date check after a
    // failure says so once.
    let was_ready = is_true(&old.conditions, types::READY);
    let was_building =
        find(&old.conditions, types::READY).is_some_and(|c| c.reason == reasons::PROGRESSING);
    // A partial build warns once when it lands (each retry that is partial again lands
    // anew), not at every reconcile while it waits for its retry.
    if let Some(message) = &partial_build
        && build_failed.is_none()
        && find(&old.conditions, types::READY)
            .is_none_or(|c| c.reason != reasons::PARTIAL_BUILD || c.message != *message)
    {
        if was_building {
            ctx.metrics.build("partial");
        }
        publish(
            ctx,
            cs,
            EventType::Warning,
            reasons::PARTIAL_BUILD,
            "Build",
            message.clone(),
        )
        .await;
    }
    if up_to_date && was_building {
        let image = old
            .last_build
            .as_ref()
            .map(|b| b.image.clone())
            .unwrap_or_default();
        ctx.metrics.build("succeeded");
        publish(
            ctx,
            cs,
            EventType::Normal,
            reasons::NEW_ARTIFACT,
            "Build",
            format!("stored artifact {image} for {}", revisions(&status.heads)),
        )
        .await;
    } else if up_to_date && find(&old.conditions, types::READY).is_some() && !was_ready {
        // Back to up to date after a failure. A CodeSource seen for the first time
        // with its build current (a restore, a restart before its first status) says
        // nothing: 10,000 of them made 10,000 Events at start in the scale bench.
        publish(
            ctx,
            cs,
            EventType::Normal,
            reasons::UP_TO_DATE,
            "CheckHeads",
            format!(
                "no changes since the last build ({})",
                revisions(&status.heads)
            ),
        )
        .await;
    }
    if let (
        ConfigState::Updated {
            name: config,
            image,
        },
        Some(_),
    ) = (
        &config_state,
        status
            .config
            .as_ref()
            .filter(|c| Some(*c) != old.config.as_ref()),
    ) {
        publish(
            ctx,
            cs,
            EventType::Normal,
            reasons::CONFIG_UPDATED,
            "PublishConfig",
            format!("Config {config} now uses {image}"),
        )
        .await;
    }

    rollout.publish_events(ctx, cs, &old).await;

    // Prune finished Jobs beyond the history limits.
    prune_history(ctx, cs, &ns, &jobs).await?;

    if let Some(e) = fetch_error
        .or(launch_error)
        .or(config_error)
        .or(rollout.error)
    {
        return Err(e);
    }
    // Running Jobs and rolling Deployments wake us through watches; these waits are
    // only safety nets.
    let rolling = rollout
        .condition
        .as_ref()
        .is_some_and(|c| c.2 == reasons::PROGRESSING);
    let cap = if rolling { 30.0 } else { 3600.0 };
    Ok(match (cs.spec.suspend, tick.next) {
        (true, _) => Action::await_change(),
        (false, Some(next)) => {
            let wait = next.duration_since(now);
            let secs = wait.as_secs_f64().max(1.0);
            Action::requeue(Duration::from_secs_f64(secs.min(cap)))
        }
        (false, None) if rolling => Action::requeue(Duration::from_secs_f64(cap)),
        (false, None) => Action::await_change(),
    })
}

/// What following the rollout found in one reconcile.
#[derive(Debug, Default)]
struct RolloutFound {
    /// The `RolledOut` condition, when there is a rollout to speak of.
    condition: Option<ConditionFacts>,
    /// How long the rollout took, when it completed now (`status.rollout.image`).
    completed_in: Option<(Duration, String)>,
    /// Servers annotated now, and with what.
    nudged: Option<(Vec<String>, String)>,
    /// Following failed (the last known state is kept); retried with backoff.
    error: Option<Error>,
}

impl RolloutFound {
    /// Events and the metric, on transitions only.
    async fn publish_events(&self, ctx: &Context, cs: &CodeSource, old: &CodeSourceStatus) {
        if let Some((servers, code)) = self.nudged.as_ref().filter(|(s, _)| !s.is_empty()) {
            publish(
                ctx,
                cs,
                EventType::Normal,
                reasons::ROLLOUT_STARTED,
                "RollOut",
                format!("asked Servers {} to roll to {code}", servers.join(", ")),
            )
            .await;
        }
        if let Some((took, code)) = &self.completed_in {
            ctx.metrics.rolled_out(*took);
            publish(
                ctx,
                cs,
                EventType::Normal,
                reasons::ROLLED_OUT,
                "RollOut",
                format!(
                    "every Server runs {code}, {:.1} s after it was written into the Config",
                    took.as_secs_f64()
                ),
            )
            .await;
        }
        if let Some((_, _, reason, message)) = &self.condition
            && *reason == reasons::PROGRESS_DEADLINE_EXCEEDED
            && find(&old.conditions, types::ROLLED_OUT).is_none_or(|c| c.reason != *reason)
        {
            publish(
                ctx,
                cs,
                EventType::Warning,
                reason,
                "RollOut",
                message.clone(),
            )
            .await;
        }
    }
}

/// Follows the rollout of what the Config carries (see `servers` and `rollout`), into
/// `status.rollout`. Without a Config to follow the rollout goes; while a new build is
/// pending or the Config cannot be written, the last known rollout stands. A complete
/// rollout is looked at again only after a Server or Deployment event, so a scheduled
/// check at rest reads no Deployment.
#[allow(clippy::too_many_arguments)]
async fn roll_out(
    ctx: &Context,
    key: &str,
    ns: &str,
    config_state: &ConfigState,
    published: Option<&CodeTarget>,
    status: &mut CodeSourceStatus,
    old: &CodeSourceStatus,
    now: Timestamp,
) -> RolloutFound {
    let config = cs_config_name(status);
    let known = |status: &CodeSourceStatus| RolloutFound {
        condition: status
            .rollout
            .as_ref()
            .map(|r| rolled_out(&config, r, None)),
        ..Default::default()
    };
    match (config_state, published, status.config.clone()) {
        (ConfigState::NotWanted, _, _) => {
            status.rollout = None;
            RolloutFound::default()
        }
        (ConfigState::Updated { .. }, Some(target), Some(record)) => {
            let event = ctx.memory.take_rollout_event(key);
            let complete = old
                .rollout
                .as_ref()
                .is_some_and(|r| r.image == record.image && r.completed_at.is_some());
            if complete && !event {
                return known(status);
            }
            match follow_rollout(ctx, ns, target, &record, old.rollout.as_ref(), Time(now)).await {
                Ok(followed) => {
                    let found = RolloutFound {
                        condition: Some(followed.condition),
                        completed_in: followed
                            .completed_in
                            .map(|took| (took, followed.status.image.clone())),
                        nudged: Some((followed.nudged, record.image.clone())),
                        error: None,
                    };
                    status.rollout = Some(followed.status);
                    found
                }
                Err(e) => RolloutFound {
                    error: Some(e),
                    ..known(status)
                },
            }
        }
        _ => known(status),
    }
}

/// Name of the Config the status says we publish into.
fn cs_config_name(status: &CodeSourceStatus) -> String {
    status
        .config
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn old_message<'a>(status: &'a CodeSourceStatus, type_: &str) -> Option<&'a String> {
    find(&status.conditions, type_).map(|c| &c.message)
}

fn revisions(heads: &BTreeMap<String, String>) -> String {
    let list: Vec<&str> = heads.values().map(String::as_str).collect();
    if list.is_empty() {
        "no branches".into()
    } else {
        list.join(", ")
    }
}

/// The worker Jobs of `cs` in the watch cache (label and owner reference).
async fn owned_jobs(ctx: &Context, cs: &CodeSource, ns: &str) -> Vec<Job> {
    // Filled once at start; a reconcile before that would miss running Jobs.
    crate::client::store_ready(&ctx.jobs).await;
    let label = codesource_label(&cs.name_any());
    let uid = cs.uid().unwrap_or_default();
    ctx.jobs
        .state()
        .iter()
        .filter(|j| {
            j.metadata.namespace.as_deref() == Some(ns)
                && j.labels().get(labels::CODESOURCE) == Some(&label)
                && j.owner_references().iter().any(|o| o.uid == uid)
        })
        .map(|j| (**j).clone())
        .collect()
}

/// Where a Job stands, from its status conditions.
pub fn summarize(job: &Job) -> JobSummary {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    let has =
        |t: &str| conditions.is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"));
    let state = if has("Complete") {
        JobState::Succeeded
    } else if has("Failed") {
        JobState::Failed
    } else {
        JobState::Active
    };
    JobSummary {
        name: job.name_any(),
        inputs_hash: job.labels().get(labels::INPUTS).cloned(),
        state,
    }
}

/// The wanted heads of the control repository, and the credentials it was listed with.
async fn check_heads(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    timeout: Duration,
    not_before: Instant,
) -> Result<(BTreeMap<String, String>, GitAuth), Error> {
    let auth = match &cs.spec.git.secret_ref {
        None => GitAuth::default(),
        Some(secret_ref) => match ctx.memory.git_secret(ns, &secret_ref.name) {
            Some(auth) => auth,
            None => read_git_secret(ctx, ns, &secret_ref.name).await?,
        },
    };
    let request = HeadRequest {
        url: cs.spec.git.url.clone(),
        auth: auth.clone(),
        timeout,
        module_of: None,
    };
    let all = match ctx.heads.heads(request, not_before).await {
        Ok(all) => all,
        Err(e) => {
            // Perhaps the credentials changed: read the Secret again next time.
            if let Some(secret_ref) = &cs.spec.git.secret_ref {
                ctx.memory.forget_git_secret(ns, &secret_ref.name);
            }
            return Err(e.into());
        }
    };
    let wanted = wanted_heads(&all, &cs.spec.git.branches, &cs.spec.git.exclude_branches);
    Ok((wanted, auth))
}

/// Reads the git Secret `name` and remembers what it holds (see `Memory::git_secret`).
async fn read_git_secret(ctx: &Context, ns: &str, name: &str) -> Result<GitAuth, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(kube("get git Secret"))?
        .ok_or_else(|| Error::Secret {
            name: name.to_owned(),
            problem: "does not exist".into(),
        })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let auth = GitAuth::from_secret_data(&data);
    ctx.memory.remember_git_secret(ns, name, auth.clone());
    Ok(auth)
}

/// Looks at the floating modules of `build`: every module repository listed and every
/// Forge module looked up once per tick, shared with the other CodeSources (see
/// `floating` for what counts as moved). Module repositories get the credentials the
/// worker's fetches give them.
async fn check_floating(
    ctx: &Context,
    cs: &CodeSource,
    build: &BuildRecord,
    auth: &GitAuth,
    timeout: Duration,
    not_before: Instant,
) -> Found {
    let lookups = floating::lookups(build);
    if lookups.is_empty() {
        return Found::default();
    }
    let git = futures::future::join_all(lookups.git.iter().map(|url| async {
        let request = HeadRequest {
            url: url.clone(),
            auth: auth.clone(),
            timeout,
            module_of: Some(cs.spec.git.url.clone()),
        };
        let listed = ctx.heads.heads(request, not_before).await;
        (url.clone(), listed.map_err(|e| e.to_string()))
    }));
    let forge = futures::future::join_all(lookups.forge.iter().map(|(base, slug)| async {
        let current = ctx
            .forge
            .current(base, slug, auth.ca_crt.as_deref(), timeout, not_before)
            .await;
        ((base.clone(), slug.clone()), current)
    }));
    let (git, forge) = futures::join!(git, forge);
    floating::compare(
        build,
        &git.into_iter().collect(),
        &forge.into_iter().collect(),
    )
}

/// The image of the Puppet validator: `spec.validate.image`, else the server image of
/// the Config (`spec.validate` set, checked by `validate.rs` to have one of them).
async fn validator_image(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
) -> Result<Option<String>, Error> {
    let Some(validate) = &cs.spec.validate else {
        return Ok(None);
    };
    if let Some(image) = validate.image.as_ref().filter(|i| !i.is_empty()) {
        return Ok(Some(image.clone()));
    }
    let config_name = cs.spec.config_ref.clone().unwrap_or_default();
    let configs: Api<Config> = Api::namespaced(ctx.client.clone(), ns);
    let config = configs
        .get_opt(&config_name)
        .await
        .map_err(kube("get Config for its server image"))?
        .ok_or(Error::ConfigNotFound(config_name))?;
    Ok(Some(config.spec.server_image()))
}

async fn launch(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    job: &str,
    inputs_hash: &str,
) -> Result<(), Error> {
    // A missing push Secret would leave the pod waiting for its volume until the
    // deadline; say so now instead.
    if let Some(secret_ref) = &cs.spec.output.push_secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let secret = secrets
            .get_opt(&secret_ref.name)
            .await
            .map_err(kube("get push Secret"))?
            .ok_or_else(|| Error::Secret {
                name: secret_ref.name.clone(),
                problem: "does not exist (output.pushSecretRef)".into(),
            })?;
        if !secret
            .data
            .is_some_and(|d| d.contains_key(".dockerconfigjson"))
        {
            return Err(Error::Secret {
                name: secret_ref.name.clone(),
                problem: "has no .dockerconfigjson key (output.pushSecretRef wants a \
                          kubernetes.io/dockerconfigjson Secret)"
                    .into(),
            });
        }
    }
    // Likewise a missing output claim: the pod would wait unscheduled until the deadline.
    if let Some(claim) = cs.spec.output.claim_name.as_ref().filter(|c| !c.is_empty()) {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
        if claims
            .get_opt(claim)
            .await
            .map_err(kube("get output PersistentVolumeClaim"))?
            .is_none()
        {
            return Err(Error::ClaimNotFound(claim.clone()));
        }
    }
    let previous_image = cs
        .status
        .as_ref()
        .and_then(|s| s.last_build.as_ref())
        .map(|b| b.image.as_str())
        // Only a pushed image (not a claim's record) has layers to reuse.
        .filter(|i| {
            i.contains("@sha256:")
                && matches!(code_target(&cs.spec.output, i), Some(CodeTarget::Image(_)))
        });
    let params = apply_params();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let sa = desired_service_account(cs);
    sas.patch(&sa.name_any(), &params, &Patch::Apply(&sa))
        .await
        .map_err(kube("apply worker ServiceAccount"))?;
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), ns);
    let role = desired_role(cs);
    roles
        .patch(&role.name_any(), &params, &Patch::Apply(&role))
        .await
        .map_err(kube("apply worker Role"))?;
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
    let binding = desired_role_binding(cs);
    bindings
        .patch(&binding.name_any(), &params, &Patch::Apply(&binding))
        .await
        .map_err(kube("apply worker RoleBinding"))?;

    let worker_image = cs
        .spec
        .job
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| ctx.worker_image.clone());
    let validator_image = validator_image(ctx, cs, ns).await?;
    let desired = desired_job(
        cs,
        &LaunchParams {
            job_name: job,
            inputs_hash,
            worker_image: &worker_image,
            previous_image,
            defaults: &ctx.worker_defaults,
            validator_image: validator_image.as_deref(),
        },
    );
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    match jobs
        .create(
            &PostParams {
                field_manager: Some(CONTROLLER_MANAGER.into()),
                ..Default::default()
            },
            &desired,
        )
        .await
    {
        Ok(_) => Ok(()),
        // Same name = same launch (a restart between create and status write).
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(Error::Kube {
            action: "create Job",
            source: e,
        }),
    }
}

/// Why the last Job failed: the Job's Failed condition and the worker's termination
/// message (its last log lines when it wrote none).
async fn failure_message(
    ctx: &Context,
    ns: &str,
    job: Option<&str>,
    jobs: &[Job],
    old: &CodeSourceStatus,
) -> String {
    let Some(job) = job else {
        return old_message(old, types::BUILD_FAILED)
            .cloned()
            .unwrap_or_else(|| {
                "the last build failed (its Job is gone); retrying at the next scheduled time"
                    .into()
            });
    };
    if let Some(previous) = old_message(old, types::BUILD_FAILED).filter(|m| m.contains(job)) {
        return previous.clone();
    }
    let job_reason = jobs
        .iter()
        .find(|j| j.name_any() == job)
        .and_then(|j| {
            j.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Failed")
                .cloned()
        })
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let termination = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .ok()
        .and_then(|list| {
            list.items.iter().rev().find_map(|p| {
                p.status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .iter()
                    .find_map(|s| {
                        let t = s.state.as_ref()?.terminated.as_ref()?;
                        t.message.clone().filter(|m| !m.trim().is_empty())
                    })
            })
        })
        .map(|m| m.trim().to_owned());
    failure_note(job, &job_reason, termination.as_deref())
}

/// The running Job as the status names it: its name, and when pods of it failed and
/// were replaced, how many of the retries its backoff limit allows are used.
fn building_text(job: &str, failed_pods: i32, backoff_limit: Option<i32>) -> String {
    match (failed_pods, backoff_limit) {
        (0, _) => job.to_owned(),
        (n, Some(limit)) => format!("{job} (a pod failed and was replaced: retry {n} of {limit})"),
        (n, None) => format!("{job} (a pod failed and was replaced: retry {n})"),
    }
}

/// The BuildFailed message: which Job failed, the Job's reason, and the worker's
/// termination message, within [`MAX_FAILURE_MESSAGE`] bytes. A long termination
/// message loses its start, never the Job name in front: the Event carrying this
/// message keeps only the end of longer notes, which would cut the name off.
fn failure_note(job: &str, job_reason: &str, termination: Option<&str>) -> String {
    let head = format!("job {job} failed ({job_reason})");
    match termination {
        Some(t) => {
            // ": " and the ellipsis a cut adds.
            let room = MAX_FAILURE_MESSAGE.saturating_sub(head.len() + 2 + '…'.len_utf8());
            format!("{head}: {}", crate::events::truncate_keeping_end(t, room))
        }
        None => head,
    }
}

async fn config_shape(ctx: &Context) -> Result<ShapeKind, Error> {
    if let Some((at, shape)) = *ctx.config_shape.lock().unwrap_or_else(|e| e.into_inner())
        && at.elapsed() < SHAPE_TTL
    {
        return Ok(shape);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let crd = crds
        .get_opt(CONFIG_CRD)
        .await
        .map_err(kube("get Config CRD"))?
        .ok_or_else(|| Error::ConfigShape(format!("CRD {CONFIG_CRD} is not installed")))?;
    let shape = shape_from_crd(&crd).map_err(Error::ConfigShape)?;
    *ctx.config_shape.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), shape));
    Ok(shape)
}

/// Puts `target` into the Config unless status says it is there already. Returns the
/// new record when something was written.
async fn publish_config(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    config_name: &str,
    target: &CodeTarget,
    old: &CodeSourceStatus,
    now: Timestamp,
) -> Result<Option<ConfigRecord>, Error> {
    let image = match target {
        CodeTarget::Image(i) => i.clone(),
        CodeTarget::Claim(_) => old
            .last_build
            .as_ref()
            .map(|b| b.image.clone())
            .unwrap_or_default(),
    };
    if old
        .config
        .as_ref()
        .is_some_and(|c| c.name == config_name && c.image == image)
        && is_true(&old.conditions, types::CONFIG_UPDATED)
    {
        return Ok(None);
    }
    let configs: Api<Config> = Api::namespaced(ctx.client.clone(), ns);
    let config = configs
        .get_opt(config_name)
        .await
        .map_err(kube("get Config"))?
        .ok_or_else(|| Error::ConfigNotFound(config_name.to_string()))?;
    if !carries(&config, target) {
        let shape = config_shape(ctx).await?;
        let patch = code_patch(shape, config.spec.code.as_ref(), target);
        if let Err(e) = configs
            .patch(config_name, &apply_params(), &Patch::Apply(&patch))
            .await
        {
            // The CRD may have changed shape under us: read it again next time.
            *ctx.config_shape.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(Error::Kube {
                action: "apply Config.spec.code",
                source: e,
            });
        }
        info!(codesource = %key(cs), config = config_name, image = %image, "Config updated");
    }
    Ok(Some(ConfigRecord {
        name: config_name.to_string(),
        image,
        updated_at: Time(now),
    }))
}

/// Names of finished Jobs beyond the history limits, oldest first out: the newest
/// `successful` succeeded and `failed` failed Jobs are kept. Running Jobs are never
/// listed.
pub fn jobs_to_prune(jobs: &[Job], successful: i32, failed: i32) -> Vec<String> {
    let finished_at = |j: &Job| {
        let status = j.status.as_ref();
        status
            .and_then(|s| s.completion_time.clone())
            .or_else(|| {
                status
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"))
                    .and_then(|c| c.last_transition_time.clone())
            })
            .or_else(|| status.and_then(|s| s.start_time.clone()))
            .or_else(|| j.metadata.creation_timestamp.clone())
            .map(|t| t.0)
    };
    let mut out = Vec::new();
    for (state, limit) in [
        (JobState::Succeeded, successful),
        (JobState::Failed, failed),
    ] {
        let mut finished: Vec<&Job> = jobs
            .iter()
            .filter(|j| summarize(j).state == state)
            .collect();
        finished.sort_by_key(|j| std::cmp::Reverse(finished_at(j)));
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        out.extend(finished.iter().skip(keep).map(|j| j.name_any()));
    }
    out
}

async fn prune_history(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    jobs: &[Job],
) -> Result<(), Error> {
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let doomed = jobs_to_prune(
        jobs,
        cs.spec.successful_jobs_history_limit,
        cs.spec.failed_jobs_history_limit,
    );
    for name in doomed {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match jobs_api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(Error::Kube {
                    action: "delete old Job",
                    source: e,
                });
            }
        }
    }
    Ok(())
}

/// Writes the status unless only its check times changed (see `status::must_write`);
/// says whether it wrote.
async fn write_status(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    status: &CodeSourceStatus,
    now: Timestamp,
) -> Result<bool, Error> {
    if !must_write(cs.status.as_ref(), status, now) {
        return Ok(false);
    }
    let api: Api<CodeSource> = Api::namespaced(ctx.client.clone(), ns);
    // Apply only the fields the controller owns; `lastBuild` belongs to the worker.
    let mut ours = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = ours.as_object_mut() {
        map.remove("lastBuild");
    }
    let patch = json!({
        "apiVersion": CodeSource::api_version(&()),
        "kind": CodeSource::kind(&()),
        "status": ours,
    });
    let written = api
        .patch_status(&cs.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(kube("apply CodeSource status"))?;
    ctx.own_writes.record(&written.metadata);
    Ok(true)
}

async fn publish(
    ctx: &Context,
    cs: &CodeSource,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::events::publish(
        &ctx.recorder,
        &cs.object_ref(&()),
        type_,
        reason,
        action,
        &note,
    )
    .await;
}

/// A URL fit for logs.
pub fn loggable_url(cs: &CodeSource) -> String {
    redact_url(&cs.spec.git.url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_state_comes_from_conditions() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "p-1", "labels": {labels::INPUTS: "abc"}},
            "status": {"conditions": [{"type": "Failed", "status": "True"}]}
        }))
        .unwrap();
        let s = summarize(&job);
        assert_eq!(s.state, JobState::Failed);
        assert_eq!(s.inputs_hash.as_deref(), Some("abc"));
        let running: Job =
            serde_json::from_value(json!({"metadata": {"name": "p-2"}, "status": {"active": 1}}))
                .unwrap();
        assert_eq!(summarize(&running).state, JobState::Active);
    }

    fn finished(name: &str, state: &str, at: &str) -> Job {
        let status = match state {
            "Complete" => {
                json!({"completionTime": at, "conditions": [{"type": "Complete", "status": "True"}]})
            }
            "Failed" => {
                json!({"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": at}]})
            }
            _ => json!({"active": 1, "startTime": at}),
        };
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status})).unwrap()
    }

    #[test]
    fn given_more_finished_jobs_than_the_limits_the_oldest_are_pruned() {
        let jobs = [
            finished("ok-1", "Complete", "2026-01-01T00:00:00Z"),
            finished("ok-3", "Complete", "2026-01-03T00:00:00Z"),
            finished("ok-2", "Complete", "2026-01-02T00:00:00Z"),
            finished("bad-1", "Failed", "2026-01-01T00:00:00Z"),
            finished("bad-2", "Failed", "2026-01-02T00:00:00Z"),
            finished("running", "Active", "2025-01-01T00:00:00Z"),
        ];
        assert_eq!(jobs_to_prune(&jobs, 2, 1), ["ok-1", "bad-1"]);
        assert_eq!(
            jobs_to_prune(&jobs, 0, 0),
            ["ok-3", "ok-2", "ok-1", "bad-2", "bad-1"]
        );
        assert!(jobs_to_prune(&jobs, 3, 3).is_empty());
    }

    #[test]
    fn a_job_replacing_a_failed_pod_says_so() {
        assert_eq!(building_text("p-1", 0, Some(2)), "p-1");
        assert_eq!(
            building_text("p-1", 1, Some(2)),
            "p-1 (a pod failed and was replaced: retry 1 of 2)"
        );
        assert_eq!(
            building_text("p-1", 2, None),
            "p-1 (a pod failed and was replaced: retry 2)"
        );
    }

    #[test]
    fn a_long_failure_keeps_the_job_name_and_the_end_of_the_reason() {
        let long = format!("{}the real reason", "x".repeat(5000));
        let note = failure_note(
            "production-1234",
            "BackoffLimitExceeded: limit",
            Some(&long),
        );
        assert!(note.starts_with("job production-1234 failed (BackoffLimitExceeded: limit): …"));
        assert!(note.ends_with("the real reason"));
        assert!(note.len() <= MAX_FAILURE_MESSAGE, "{}", note.len());
        assert_eq!(
            crate::events::truncate_keeping_end(&note, 1000),
            note,
            "the Event keeps it whole"
        );
        assert_eq!(
            failure_note("p-1", "DeadlineExceeded: x", None),
            "job p-1 failed (DeadlineExceeded: x)"
        );
    }

    #[test]
    fn long_messages_keep_their_end() {
        let long = format!("{}tail", "x".repeat(2000));
        let cut = crate::events::truncate_keeping_end(&long, 100);
        assert!(cut.ends_with("tail") && cut.len() <= 104);
    }
}
