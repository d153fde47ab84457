//! Phase 4 of a CodeSource reconcile: launch. Acts on the decision: creates the worker
//! Job (and its ServiceAccount and Role) when one is due and records the launch in the
//! status at once, so a restart or the Job's TTL can never launch it twice; says which
//! Job builds and why the last one failed. Its findings set, in `report`: `Reconciling`
//! and Ready Progressing while a Job builds, `BuildFailed`, and Ready False
//! (`SecretNotFound`, `ClaimNotFound`) while a launch is blocked.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PostParams};
use openvox_crds::codesource::LaunchRecord;
use openvox_crds::names::{CONTROLLER_MANAGER, conditions as types};
use openvox_crds::operator::Config;
use openvox_crds::{CodeSource, CodeSourceStatus};
use tracing::info;

use super::code_config::{CodeConfigFacts, branches_of, control_url};
use super::config::{CodeTarget, code_target};
use super::context::{Context, apply_params, key};
use super::decide::{Decision, LaunchReason};
use super::error::{Error, kube};
use super::job::{LaunchParams, WorkerCodeConfig, desired_job};
use super::names::job_name;
use super::notices::{launch_why, old_message};
use super::rbac::{desired_role, desired_role_binding, desired_service_account};
use super::report::write_status;
use crate::client::is_conflict;

/// Longest BuildFailed message (Job name, reason and termination message): the Event
/// note limit, so the Event carries it whole.
const MAX_FAILURE_MESSAGE: usize = 1000;

/// What the launch phase did and found.
#[derive(Debug, Default)]
pub struct Launched {
    /// The Job launched now, and why.
    pub job: Option<(String, LaunchReason)>,
    /// The Job that builds, as the status names it (see [`building_text`]).
    pub building: Option<String>,
    /// Why the last Job failed.
    pub build_failed: Option<String>,
    /// A launch held up by a missing or wrong Secret or claim: reported, retried with
    /// backoff.
    pub blocked: Option<Error>,
}

/// Acts on `decision` for `cs`, whose worker Jobs are `jobs`. `moved` says what moved
/// among the floating modules, for the log line of a launch they caused.
#[allow(clippy::too_many_arguments)]
pub async fn act(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    decision: &Decision,
    code_config: Option<&CodeConfigFacts>,
    jobs: &[Job],
    moved: Option<&str>,
    old: &CodeSourceStatus,
    status: &mut CodeSourceStatus,
    now: Timestamp,
) -> Result<Launched, Error> {
    let mut found = Launched::default();
    let building = match decision {
        Decision::Launch {
            inputs_hash,
            name_seed,
            reason,
        } => {
            let job = job_name(&cs.name_any(), name_seed);
            // The branches the check selected: with a CodeConfig, the worker builds these
            // (and every static environment, which it reads from the CodeConfig).
            let branches = branches_of(&status.heads);
            match create_job(ctx, cs, ns, &job, inputs_hash, code_config, &branches).await {
                Ok(()) => {}
                Err(e @ (Error::Secret { .. } | Error::ClaimNotFound(_))) => {
                    found.blocked = Some(e);
                    status.active_job = None;
                    return Ok(found);
                }
                Err(e) => return Err(e),
            }
            ctx.memory.launched(&key(cs), &job, inputs_hash);
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
            write_status(ctx, cs, ns, status, now).await?;
            info!(
                codesource = %key(cs), job = %job,
                "launched build ({})", launch_why(reason, old, moved)
            );
            found.job = Some((job.clone(), reason.clone()));
            Some(job)
        }
        Decision::WaitForJob(job) => Some(job.clone()),
        Decision::FailedWaitingForRetry { job } => {
            found.build_failed = Some(failure_message(ctx, ns, job.as_deref(), jobs, old).await);
            None
        }
        // The partial image stands, but say why its retry failed.
        Decision::PartialWaitingForRetry {
            failed_retry: Some(job),
        } => {
            found.build_failed = Some(failure_message(ctx, ns, Some(job), jobs, old).await);
            None
        }
        _ => None,
    };
    status.active_job = building.clone();
    // A Job that replaces a failed pod (a crashed or killed worker) is still building;
    // the status says so, so the wait for the replacement is explained.
    found.building = building.map(|job| {
        let spec_and_status = jobs
            .iter()
            .find(|j| j.name_any() == job)
            .map(|j| (j.spec.as_ref(), j.status.as_ref()));
        let failed = spec_and_status.and_then(|(_, s)| s?.failed).unwrap_or(0);
        let limit = spec_and_status.and_then(|(s, _)| s?.backoff_limit);
        building_text(&job, failed, limit)
    });
    Ok(found)
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

/// Creates the worker Job `job` of `cs`, after its ServiceAccount, Role and
/// RoleBinding; a Job of that name already there is this launch (a restart between
/// create and status write).
async fn create_job(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
    job: &str,
    inputs_hash: &str,
    code_config: Option<&CodeConfigFacts>,
    branches: &[String],
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
    let control_url = &control_url(cs, code_config);
    let desired = desired_job(
        cs,
        &LaunchParams {
            job_name: job,
            inputs_hash,
            worker_image: &worker_image,
            previous_image,
            defaults: &ctx.worker_defaults,
            validator_image: validator_image.as_deref(),
            code_config: code_config.map(|_| WorkerCodeConfig {
                url: control_url,
                branches: branches.iter().map(String::as_str).collect(),
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

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
