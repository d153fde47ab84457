//! Phase 1 of a CodeSource reconcile: what is there before anything is done. The
//! worker Jobs the CodeSource owns (watch cache), and which triggers are due: the
//! schedule, a manual request, a webhook's check request, a spec change, a failed
//! check to retry. Sets no condition; an invalid spec never gets here (`validate`).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use openvox_crds::names::{annotations, conditions as types, labels};
use openvox_crds::{CodeSource, CodeSourceStatus};

use super::context::Context;
use super::decide::{JobState, JobSummary};
use super::names::codesource_label;
use super::schedule::Tick;
use crate::conditions::is_true;

/// Which triggers are due in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Triggers {
    /// What the schedule says now.
    pub tick: Tick,
    /// The requestedAt annotation.
    pub requested_at: Option<String>,
    /// The requestedAt annotation holds a value not handled yet.
    pub new_request: bool,
    /// A webhook's check request not handled yet: fresh heads, a build only if they moved.
    pub check_request: Option<String>,
    /// The generation moved since the last reconcile.
    pub spec_changed: bool,
    /// The last check failed (`FetchFailed`): check again.
    pub retry_fetch: bool,
    /// Whether the heads are listed in this reconcile.
    pub check_now: bool,
}

impl Triggers {
    /// Whether this check must not share a listing made before the trigger (a
    /// request, a retry or a change asks for the remote as it is now).
    pub fn fresh_wanted(&self, old: &CodeSourceStatus) -> bool {
        let never_reconciled = never_reconciled(old);
        self.new_request
            || self.check_request.is_some()
            || self.retry_fetch
            || (!never_reconciled && (self.spec_changed || old.last_check_time.is_none()))
    }
}

/// Whether `old` is the status of a CodeSource never reconciled.
pub fn never_reconciled(old: &CodeSourceStatus) -> bool {
    old.observed_generation.is_none() && old.last_check_time.is_none()
}

/// The triggers of `cs` at `tick` (the schedule's answer for the last tick handled).
pub fn triggers(cs: &CodeSource, old: &CodeSourceStatus, tick: Tick) -> Triggers {
    let requested_at = cs.annotations().get(annotations::REQUESTED_AT).cloned();
    let new_request = requested_at.is_some() && requested_at != old.last_handled_requested_at;
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
    Triggers {
        tick,
        requested_at,
        new_request,
        check_request,
        spec_changed,
        retry_fetch,
        check_now,
    }
}

/// The schedule times of the status: the tick handled now and the next one (none
/// while suspended).
pub fn schedule_into(status: &mut CodeSourceStatus, tick: Tick, suspended: bool) {
    if let Some(due) = tick.due.filter(|_| !suspended) {
        status.last_schedule_time = Some(Time(due));
    }
    status.next_schedule_time = if suspended { None } else { tick.next.map(Time) };
}

/// The worker Jobs of `cs` in the watch cache (label and owner reference).
pub async fn owned_jobs(ctx: &Context, cs: &CodeSource, ns: &str) -> Vec<Job> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

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

    fn codesource(annotations: serde_json::Value, generation: i64, suspend: bool) -> CodeSource {
        serde_json::from_value(json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
            "metadata": {"name": "p", "namespace": "puppet", "generation": generation,
                         "annotations": annotations},
            "spec": {"git": {"url": "https://git.example/control.git", "branches": ["*"]},
                     "output": {"image": "reg/code"}, "schedule": "*/5 * * * *",
                     "suspend": suspend}
        }))
        .unwrap()
    }

    fn checked(generation: i64) -> CodeSourceStatus {
        CodeSourceStatus {
            observed_generation: Some(generation),
            last_check_time: Some(Time(at("2026-12-05T10:00:00Z"))),
            ..Default::default()
        }
    }

    #[test]
    fn checks_happen_when_a_trigger_is_due() {
        let quiet = Tick {
            due: None,
            next: Some(at("2026-12-05T10:05:00Z")),
        };
        let due = Tick {
            due: Some(at("2026-12-05T10:05:00Z")),
            ..quiet
        };
        let request = json!({annotations::REQUESTED_AT: "now"});
        // (case, annotations, generation, suspend, status, tick, check now, fresh listing)
        let cases = [
            (
                "at rest",
                json!({}),
                1,
                false,
                checked(1),
                quiet,
                false,
                false,
            ),
            (
                "the schedule",
                json!({}),
                1,
                false,
                checked(1),
                due,
                true,
                false,
            ),
            (
                "a spec change",
                json!({}),
                2,
                false,
                checked(1),
                quiet,
                true,
                true,
            ),
            (
                "a request",
                request.clone(),
                1,
                false,
                checked(1),
                quiet,
                true,
                true,
            ),
            (
                "never checked",
                json!({}),
                1,
                false,
                CodeSourceStatus::default(),
                quiet,
                true,
                false,
            ),
            ("suspended", request, 2, true, checked(1), due, false, true),
        ];
        for (case, annotations, generation, suspend, old, tick, check_now, fresh) in cases {
            let cs = codesource(annotations, generation, suspend);
            let t = triggers(&cs, &old, tick);
            assert_eq!(t.check_now, check_now, "{case}");
            assert_eq!(t.fresh_wanted(&old), fresh, "{case}");
        }
    }

    #[test]
    fn a_suspended_codesource_has_no_next_schedule_time() {
        let tick = Tick {
            due: Some(at("2026-12-05T10:05:00Z")),
            next: Some(at("2026-12-05T10:10:00Z")),
        };
        let mut status = CodeSourceStatus::default();
        schedule_into(&mut status, tick, true);
        assert!(status.last_schedule_time.is_none() && status.next_schedule_time.is_none());
        schedule_into(&mut status, tick, false);
        assert_eq!(status.last_schedule_time.map(|t| t.0), tick.due);
        assert_eq!(status.next_schedule_time.map(|t| t.0), tick.next);
    }
}
