//! Phase 7 of a CodeSource reconcile, roll out ([`roll_out`]; sets `RolledOut`), and
//! the API side of rolling the servers: our annotation on each Server that takes the
//! Config's code (the change that makes openvox-operator reconcile it), and the
//! Servers' Deployments read back to see how far the rollout is. What to do and what
//! it means is decided in `rollout`.

use std::time::Duration;

use jiff::Timestamp;

use futures::FutureExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use openvox_crds::CodeSourceStatus;
use openvox_crds::codesource::{ConfigRecord, RolloutStatus, ServerRolloutState};
use openvox_crds::names::CONTROLLER_MANAGER;
use openvox_crds::operator::{Config, Server};
use tracing::info;

use super::config::CodeTarget;
use super::context::Context;
use super::error::{Error, kube};
use super::rollout::{
    just_completed, missing_puppet_hint, nudge_patch, rolled_out, rollout_status, server_rollout,
    servers_of, servers_to_nudge,
};
use super::status::ConfigState;
use crate::conditions::ConditionFacts;

/// Where the rollout of the Config's code stands after one look.
#[derive(Debug)]
pub struct Followed {
    /// The new `status.rollout`.
    pub status: RolloutStatus,
    /// The `RolledOut` condition.
    pub condition: ConditionFacts,
    /// How long the rollout took, when it completed in this look.
    pub completed_in: Option<Duration>,
    /// Servers that got our annotation in this look.
    pub nudged: Vec<String>,
}

/// Brings the Servers of Config `config` (in `ns`) to the code the Config carries
/// (`record`, which is `target`), and reads where their Deployments are.
pub async fn follow_rollout(
    ctx: &Context,
    ns: &str,
    target: &CodeTarget,
    record: &ConfigRecord,
    old: Option<&RolloutStatus>,
    now: Time,
) -> Result<Followed, Error> {
    let all = servers_in(ctx, ns).await?;
    let servers = servers_of(&all, &record.name);

    let nudged = servers_to_nudge(&servers, &record.image);
    let api: Api<Server> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams::apply(CONTROLLER_MANAGER).force();
    for name in &nudged {
        match api
            .patch(
                name,
                &params,
                &Patch::Apply(nudge_patch(name, &record.image)),
            )
            .await
        {
            Ok(_) => {
                info!(server = %format!("{ns}/{name}"), code = %record.image, "asked the Server to roll to the new code");
            }
            // Deleted since it was listed (an apply cannot create a valid Server).
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => {}
            Err(e) => return Err(kube("annotate Server")(e)),
        }
    }

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let mut entries = Vec::with_capacity(servers.len());
    for server in &servers {
        let name = kube::ResourceExt::name_any(*server);
        let deployment = deployments
            .get_opt(&name)
            .await
            .map_err(kube("get Server Deployment"))?;
        entries.push(server_rollout(server, deployment.as_ref(), target));
    }
    let status = rollout_status(
        old,
        &record.image,
        Some(record.updated_at.clone()),
        entries,
        now,
    );
    // A Server without a Deployment: say so when the Config is why.
    let hint = if status
        .servers
        .iter()
        .any(|s| s.state == ServerRolloutState::NoDeployment)
    {
        let configs: Api<Config> = Api::namespaced(ctx.client.clone(), ns);
        configs
            .get_opt(&record.name)
            .await
            .map_err(kube("get Config"))?
            .filter(|c| c.spec.puppet.is_none())
            .map(|_| missing_puppet_hint(&record.name))
    } else {
        None
    };
    Ok(Followed {
        condition: rolled_out(&record.name, &status, hint.as_deref()),
        completed_in: just_completed(old, &status),
        status,
        nudged,
    })
}

/// The Servers of `ns`: from the watch cache once it is filled, else listed (which
/// also says when the Server kind is not installed).
async fn servers_in(ctx: &Context, ns: &str) -> Result<Vec<Server>, Error> {
    if matches!(ctx.servers.wait_until_ready().now_or_never(), Some(Ok(()))) {
        return Ok(ctx
            .servers
            .state()
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
            .map(|s| (**s).clone())
            .collect());
    }
    let api: Api<Server> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(kube("list Servers"))?
        .items)
}

/// What following the rollout found in one reconcile.
#[derive(Debug, Default)]
pub struct RolloutFound {
    /// The `RolledOut` condition, when there is a rollout to speak of.
    pub condition: Option<ConditionFacts>,
    /// How long the rollout took, when it completed now (`status.rollout.image`).
    pub completed_in: Option<(Duration, String)>,
    /// Servers annotated now, and with what.
    pub nudged: Option<(Vec<String>, String)>,
    /// Following failed (the last known state is kept); retried with backoff.
    pub error: Option<Error>,
}

/// Follows the rollout of what the Config carries (see `servers` and `rollout`), into
/// `status.rollout`. Without a Config to follow the rollout goes; while a new build is
/// pending or the Config cannot be written, the last known rollout stands. A complete
/// rollout is looked at again only after a Server or Deployment event, so a scheduled
/// check at rest reads no Deployment.
#[allow(clippy::too_many_arguments)]
pub async fn roll_out(
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
