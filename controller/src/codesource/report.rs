//! Phase 7 of a CodeSource reconcile: report. The conditions from what the phases
//! found (`status::codesource_conditions`), one status write, then the Events and
//! metrics of the transitions (`notices`); and the finished Jobs beyond the history
//! limits deleted.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PropagationPolicy};
use kube::{Resource, ResourceExt};
use openvox_crds::{CodeSource, CodeSourceStatus};
use serde_json::json;

use super::context::{Context, apply_params, key};
use super::decide::JobState;
use super::error::{Error, kube};
use super::notices::{Happened, Notice, notices};
use super::observe::summarize;
use super::status::{Observed, codesource_conditions, must_write};
use crate::client::is_not_found;
use crate::conditions::merge_conditions_at;

/// Sets the conditions `observed` gives, writes the status and tells what changed.
#[allow(clippy::too_many_arguments)]
pub async fn report(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    old: &CodeSourceStatus,
    status: &mut CodeSourceStatus,
    observed: &Observed,
    happened: &Happened<'_>,
    now: Timestamp,
) -> Result<(), Error> {
    status.conditions = merge_conditions_at(
        &old.conditions,
        &codesource_conditions(observed),
        cs.metadata.generation,
        now,
    );
    let told = notices(old, status, observed, happened);
    let written = write_status(ctx, cs, ns, status, now).await;
    // The launch is recorded already, whatever this write does.
    tell(ctx, cs, told.of_launch).await;
    let written = written?;
    // An invalid spec handles no tick: the one remembered stays for when it is valid.
    if let Some(due) = status.last_schedule_time.as_ref()
        && observed.invalid_spec.is_none()
    {
        let stored = if written {
            status.last_schedule_time.as_ref()
        } else {
            old.last_schedule_time.as_ref()
        };
        ctx.memory
            .handled_tick(&key(cs), due.0, stored.map(|t| t.0));
    }
    tell(ctx, cs, told.of_status).await;
    Ok(())
}

/// Publishes the Events and records the metrics of `notices`.
async fn tell(ctx: &Context, cs: &CodeSource, notices: Vec<Notice>) {
    for notice in notices {
        match notice {
            Notice::Event {
                type_,
                reason,
                action,
                note,
            } => {
                crate::events::publish(
                    &ctx.recorder,
                    &cs.object_ref(&()),
                    type_,
                    reason,
                    action,
                    &note,
                )
                .await
            }
            Notice::Build(result) => ctx.metrics.build(result),
            Notice::RolloutTook(took) => ctx.metrics.rolled_out(took),
        }
    }
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

/// Deletes the finished Jobs of `cs` beyond its history limits.
pub async fn prune_history(
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
pub async fn write_status(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
