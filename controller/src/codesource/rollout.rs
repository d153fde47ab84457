//! Rolling the servers to the published code, as pure decisions.
//!
//! openvox-operator renders a Server's Deployment from its Config, but reconciles a
//! Server only when the Server object (or something it owns) changes, never when the
//! Config does (measured: over 5 minutes without a rollout). So after the Config takes
//! new code, every Server that takes its code from that Config gets an annotation of
//! ours carrying that code ([`servers_to_nudge`], [`nudge_patch`]), and the rollout
//! is followed on the Servers' Deployments until each runs it, complete
//! ([`server_rollout`], [`rolled_out`]).
//!
//! Facts about the operator this relies on: a Server's Deployment has the Server's
//! name; its pod template carries the annotation `openvox.voxpupuli.org/code-image`
//! with the code image reference (comma-joined for several code entries) and a volume
//! `code` with that image (or the claim); a Server that sets its own `spec.code`
//! ignores the Config's; a CA-only Server (`server: false`) mounts no code.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use openvox_crds::codesource::{RolloutStatus, ServerRollout, ServerRolloutState};
use openvox_crds::names::{annotations, conditions as types, reasons};
use openvox_crds::operator::Server;
use serde_json::{Value, json};

use super::config::{CLAIM_RECORD_PREFIX, CodeTarget};
use crate::conditions::ConditionFacts;

/// Name of the code volume in a Server's pod template.
const CODE_VOLUME: &str = "code";

/// The Servers naming `config` that run a Puppet server (CA-only Servers mount no
/// code), by name.
pub fn servers_of<'a>(servers: &'a [Server], config: &str) -> Vec<&'a Server> {
    let mut of: Vec<&Server> = servers
        .iter()
        .filter(|s| s.spec.config_ref == config && s.spec.server != Some(false))
        .collect();
    of.sort_by_key(|s| s.name_any());
    of
}

/// Names of the Servers of `config` that take its code and do not carry `published`
/// in our annotation yet.
pub fn servers_to_nudge(servers: &[&Server], published: &str) -> Vec<String> {
    servers
        .iter()
        .filter(|s| s.spec.takes_config_code())
        .filter(|s| {
            s.annotations()
                .get(annotations::PUBLISHED_CODE)
                .map(String::as_str)
                != Some(published)
        })
        .map(|s| s.name_any())
        .collect()
}

/// The server-side apply body that sets our annotation on Server `name`: a change of
/// the Server object, which is what makes the operator render its Deployment again.
pub fn nudge_patch(name: &str, published: &str) -> Value {
    json!({
        "apiVersion": format!("{}/{}", openvox_crds::names::GROUP, openvox_crds::names::VERSION),
        "kind": "Server",
        "metadata": {"name": name, "annotations": {annotations::PUBLISHED_CODE: published}},
    })
}

/// The code a Deployment's pod template carries: the operator's annotation, else the
/// `code` volume (`pvc:<claim>` for a claim).
pub fn deployment_code(deployment: &Deployment) -> Option<String> {
    let template = deployment.spec.template.clone();
    let annotated = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(annotations::CODE_IMAGE))
        .filter(|v| !v.is_empty())
        .cloned();
    annotated.or_else(|| {
        let volume = template
            .spec?
            .volumes?
            .into_iter()
            .find(|v| v.name == CODE_VOLUME)?;
        match (volume.image, volume.persistent_volume_claim) {
            (Some(image), _) => image.reference,
            (None, Some(claim)) => Some(format!("{CLAIM_RECORD_PREFIX}{}", claim.claim_name)),
            (None, None) => None,
        }
    })
}

/// Whether the code a Deployment carries (see [`deployment_code`]) is `target`.
pub fn carries(carried: &str, target: &CodeTarget) -> bool {
    match target {
        CodeTarget::Image(image) => carried.split(',').any(|c| c.trim() == image),
        CodeTarget::Claim(claim) => carried
            .strip_prefix(CLAIM_RECORD_PREFIX)
            .is_some_and(|c| c == claim),
    }
}

/// Whether the Deployment has finished its rollout, as `kubectl rollout status`
/// judges it: the controller saw the newest spec, every wanted replica runs it, no
/// old replica is left, and all are available.
fn complete(deployment: &Deployment) -> bool {
    let Some(status) = deployment.status.as_ref() else {
        return false;
    };
    let desired = desired_replicas(deployment);
    let updated = status.updated_replicas.unwrap_or(0);
    status.observed_generation >= deployment.metadata.generation
        && updated == desired
        && status.replicas.unwrap_or(0) == updated
        && status.available_replicas.unwrap_or(0) == updated
}

fn desired_replicas(deployment: &Deployment) -> i32 {
    deployment.spec.replicas.unwrap_or(1)
}

fn deadline_exceeded(deployment: &Deployment) -> bool {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.type_.as_deref() == Some("Progressing")
                    && c.status.as_deref() == Some("False")
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        })
}

/// Where one Server stands with `target`.
pub fn server_rollout(
    server: &Server,
    deployment: Option<&Deployment>,
    target: &CodeTarget,
) -> ServerRollout {
    let image = deployment.and_then(deployment_code);
    let status = deployment.and_then(|d| d.status.as_ref());
    let state = match deployment {
        _ if server.spec.overrides_code() => ServerRolloutState::OverridesCode,
        None => ServerRolloutState::NoDeployment,
        Some(d) if deadline_exceeded(d) => ServerRolloutState::ProgressDeadlineExceeded,
        Some(d) if complete(d) && image.as_deref().is_some_and(|i| carries(i, target)) => {
            ServerRolloutState::RolledOut
        }
        Some(_) => ServerRolloutState::Progressing,
    };
    ServerRollout {
        name: server.name_any(),
        state,
        image,
        desired_replicas: deployment.map_or(0, desired_replicas),
        updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
    }
}

/// The rollout status of `published` given each Server's state. `completedAt` is set
/// to `now` the first time the rollout is complete and then kept for that code (a
/// later scale-up or restart shows in the condition, not as a second completion).
pub fn rollout_status(
    old: Option<&RolloutStatus>,
    published: &str,
    started_at: Option<Time>,
    servers: Vec<ServerRollout>,
    now: Time,
) -> RolloutStatus {
    let completed_at = match old {
        Some(o) if o.image == published && o.completed_at.is_some() => o.completed_at.clone(),
        _ => is_complete(&servers).then_some(now),
    };
    RolloutStatus {
        image: published.to_owned(),
        started_at,
        completed_at,
        servers,
    }
}

/// Whether every Server that takes the Config's code runs it (and at least one does).
fn is_complete(servers: &[ServerRollout]) -> bool {
    let mut takers = servers
        .iter()
        .filter(|s| s.state != ServerRolloutState::OverridesCode)
        .peekable();
    takers.peek().is_some() && takers.all(|s| s.state == ServerRolloutState::RolledOut)
}

/// Why Servers may have no Deployment: openvox-operator's known bug with a Config
/// that has no `spec.puppet` (see `rolled_out`).
pub fn missing_puppet_hint(config: &str) -> String {
    format!(
        "Config {config} has no spec.puppet: openvox-operator then mounts the code at an \
         empty path and the API server refuses its Deployments; set spec.puppet: {{}}"
    )
}

/// The `RolledOut` condition for a rollout of the code in Config `config`; `hint`
/// is added when a Server has no Deployment.
pub fn rolled_out(config: &str, rollout: &RolloutStatus, hint: Option<&str>) -> ConditionFacts {
    let servers = &rollout.servers;
    let named = |state: ServerRolloutState| -> Vec<&str> {
        servers
            .iter()
            .filter(|s| s.state == state)
            .map(|s| s.name.as_str())
            .collect()
    };
    let overriding = named(ServerRolloutState::OverridesCode);
    let aside = if overriding.is_empty() {
        String::new()
    } else {
        format!(
            "; {} set their own spec.code and are not rolled",
            overriding.join(", ")
        )
    };
    if servers.is_empty() {
        return (
            types::ROLLED_OUT,
            "False",
            reasons::NO_SERVERS,
            format!("no Server has configRef {config}"),
        );
    }
    if overriding.len() == servers.len() {
        return (
            types::ROLLED_OUT,
            "False",
            reasons::SERVER_OVERRIDES_CODE,
            format!(
                "every Server of Config {config} sets its own spec.code: {}",
                overriding.join(", ")
            ),
        );
    }
    let stuck = named(ServerRolloutState::ProgressDeadlineExceeded);
    if !stuck.is_empty() {
        return (
            types::ROLLED_OUT,
            "False",
            reasons::PROGRESS_DEADLINE_EXCEEDED,
            format!(
                "the Deployments of {} exceeded their progress deadline rolling out {}{aside}",
                stuck.join(", "),
                rollout.image
            ),
        );
    }
    if is_complete(servers) {
        let done = named(ServerRolloutState::RolledOut);
        return (
            types::ROLLED_OUT,
            "True",
            reasons::ROLLED_OUT,
            format!("{} run {}{aside}", done.join(", "), rollout.image),
        );
    }
    let waiting: Vec<String> = servers
        .iter()
        .filter(|s| {
            !matches!(
                s.state,
                ServerRolloutState::RolledOut | ServerRolloutState::OverridesCode
            )
        })
        .map(|s| match s.state {
            ServerRolloutState::NoDeployment => format!("{} (no Deployment yet)", s.name),
            _ => format!(
                "{} ({}/{} updated, {} ready)",
                s.name, s.updated_replicas, s.desired_replicas, s.ready_replicas
            ),
        })
        .collect();
    let hint = match hint {
        Some(h)
            if servers
                .iter()
                .any(|s| s.state == ServerRolloutState::NoDeployment) =>
        {
            format!(" ({h})")
        }
        _ => String::new(),
    };
    (
        types::ROLLED_OUT,
        "False",
        reasons::PROGRESSING,
        format!(
            "rolling out {}: waiting for {}{aside}{hint}",
            rollout.image,
            waiting.join(", ")
        ),
    )
}

/// How long the rollout took, when it completed between `old` and `new`.
pub fn just_completed(
    old: Option<&RolloutStatus>,
    new: &RolloutStatus,
) -> Option<std::time::Duration> {
    let was_done = old.is_some_and(|o| o.image == new.image && o.completed_at.is_some());
    if was_done {
        return None;
    }
    let (start, end) = (new.started_at.as_ref()?, new.completed_at.as_ref()?);
    let took = end.0.duration_since(start.0);
    Some(std::time::Duration::try_from(took).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    const IMAGE: &str = "registry.example/code@sha256:2222";

    fn server(name: &str, config: &str, extra: Value) -> Server {
        let mut spec = json!({"configRef": config, "certificateRef": "cert"});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Server",
            "metadata": {"name": name, "namespace": "puppet"}, "spec": spec,
        }))
        .unwrap()
    }

    /// A Deployment shaped like the operator's, with `code` in its pod template and a
    /// status from the Deployment controller.
    fn deployment(
        code: &str,
        desired: i32,
        updated: i32,
        total: i32,
        available: i32,
    ) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "generation": 2},
            "spec": {
                "replicas": desired,
                "selector": {"matchLabels": {"openvox.voxpupuli.org/server": "s"}},
                "template": {
                    "metadata": {"annotations": {annotations::CODE_IMAGE: code}},
                    "spec": {"containers": [], "volumes": [
                        {"name": "code", "image": {"reference": code, "pullPolicy": "IfNotPresent"}}
                    ]}
                }
            },
            "status": {"observedGeneration": 2, "replicas": total, "updatedReplicas": updated,
                       "readyReplicas": available, "availableReplicas": available}
        }))
        .unwrap()
    }

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn only_servers_taking_the_config_code_without_our_annotation_are_nudged() {
        let servers = [
            server("a", "production", json!({})),
            server("ca", "production", json!({"server": false})),
            server(
                "b",
                "production",
                json!({"code": {"image": "own@sha256:1"}}),
            ),
            server("other", "staging", json!({})),
            {
                let mut done = server("c", "production", json!({}));
                done.annotations_mut()
                    .insert(annotations::PUBLISHED_CODE.into(), IMAGE.into());
                done
            },
        ];
        let of = servers_of(&servers, "production");
        // The CA-only Server mounts no code: not part of the rollout.
        assert_eq!(
            of.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(servers_to_nudge(&of, IMAGE), ["a"]);
        assert_eq!(
            servers_to_nudge(&of, "registry.example/code@sha256:3"),
            ["a", "c"]
        );
        let patch = nudge_patch("a", IMAGE);
        assert_eq!(
            patch["metadata"]["annotations"][annotations::PUBLISHED_CODE],
            IMAGE
        );
        assert_eq!(patch["kind"], "Server");
        assert!(
            patch.get("spec").is_none(),
            "only our annotation is applied"
        );
    }

    #[test]
    fn the_deployment_code_comes_from_the_annotation_or_the_code_volume() {
        let d = deployment(IMAGE, 1, 1, 1, 1);
        assert_eq!(deployment_code(&d).as_deref(), Some(IMAGE));
        assert!(carries(IMAGE, &CodeTarget::Image(IMAGE.into())));
        assert!(carries(
            &format!("other@sha256:1,{IMAGE}"),
            &CodeTarget::Image(IMAGE.into())
        ));
        assert!(!carries(
            "registry.example/code@sha256:1",
            &CodeTarget::Image(IMAGE.into())
        ));

        let claim: Deployment = serde_json::from_value(json!({
            "spec": {"selector": {}, "template": {"spec": {"containers": [], "volumes": [
                {"name": "code", "persistentVolumeClaim": {"claimName": "puppet-code", "readOnly": true}}
            ]}}}
        }))
        .unwrap();
        let carried = deployment_code(&claim).unwrap();
        assert_eq!(carried, "pvc:puppet-code");
        assert!(carries(&carried, &CodeTarget::Claim("puppet-code".into())));
        assert!(!carries(&carried, &CodeTarget::Claim("puppet".into())));
    }

    #[test]
    fn a_server_is_rolled_out_when_its_deployment_is_complete_at_the_code() {
        let target = CodeTarget::Image(IMAGE.into());
        let s = server("s", "production", json!({}));
        let state = |d: Option<&Deployment>| server_rollout(&s, d, &target).state;
        assert_eq!(state(None), ServerRolloutState::NoDeployment);
        assert_eq!(
            state(Some(&deployment(IMAGE, 2, 2, 2, 2))),
            ServerRolloutState::RolledOut
        );
        // Old code, complete: still to roll.
        assert_eq!(
            state(Some(&deployment(
                "registry.example/code@sha256:1",
                2,
                2,
                2,
                2
            ))),
            ServerRolloutState::Progressing
        );
        // New template, one old pod left; or not yet available.
        assert_eq!(
            state(Some(&deployment(IMAGE, 2, 2, 3, 2))),
            ServerRolloutState::Progressing
        );
        assert_eq!(
            state(Some(&deployment(IMAGE, 2, 2, 2, 1))),
            ServerRolloutState::Progressing
        );
        // Status of an older generation.
        let mut stale = deployment(IMAGE, 1, 1, 1, 1);
        stale.metadata.generation = Some(3);
        assert_eq!(state(Some(&stale)), ServerRolloutState::Progressing);

        let mut stuck = deployment(IMAGE, 1, 0, 1, 0);
        stuck.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded"}))
            .unwrap(),
        ]);
        assert_eq!(
            state(Some(&stuck)),
            ServerRolloutState::ProgressDeadlineExceeded
        );

        let own = server("s", "production", json!({"code": {"image": "own"}}));
        let entry = server_rollout(&own, Some(&deployment("own", 1, 1, 1, 1)), &target);
        assert_eq!(entry.state, ServerRolloutState::OverridesCode);
        assert_eq!(entry.image.as_deref(), Some("own"));

        let entry = server_rollout(&s, Some(&deployment(IMAGE, 3, 1, 3, 2)), &target);
        assert_eq!(
            (
                entry.desired_replicas,
                entry.updated_replicas,
                entry.ready_replicas
            ),
            (3, 1, 2)
        );
    }

    fn entry(name: &str, state: ServerRolloutState) -> ServerRollout {
        ServerRollout {
            name: name.into(),
            state,
            image: None,
            desired_replicas: 1,
            updated_replicas: 0,
            ready_replicas: 0,
        }
    }

    #[test]
    fn the_condition_sums_up_the_servers() {
        use ServerRolloutState::*;
        let cond = |servers: Vec<ServerRollout>| {
            let status = rollout_status(None, IMAGE, Some(at(0)), servers, at(5));
            let (_, status_, reason, message) = rolled_out("production", &status, Some("HINT"));
            (status_, reason, message)
        };
        assert_eq!(cond(vec![]).1, reasons::NO_SERVERS);
        assert_eq!(
            cond(vec![entry("a", OverridesCode)]).1,
            reasons::SERVER_OVERRIDES_CODE
        );
        let (status, reason, message) =
            cond(vec![entry("a", RolledOut), entry("b", OverridesCode)]);
        assert_eq!((status, reason), ("True", reasons::ROLLED_OUT));
        assert!(message.contains("b set their own spec.code"), "{message}");
        let (status, reason, message) = cond(vec![entry("a", RolledOut), entry("b", NoDeployment)]);
        assert_eq!((status, reason), ("False", reasons::PROGRESSING));
        assert!(message.contains("b (no Deployment yet)"), "{message}");
        assert!(message.ends_with("(HINT)"), "{message}");
        let (_, _, message) = cond(vec![entry("a", Progressing)]);
        assert!(
            !message.contains("HINT"),
            "only for a missing Deployment: {message}"
        );
        assert_eq!(
            cond(vec![
                entry("a", ProgressDeadlineExceeded),
                entry("b", Progressing)
            ])
            .1,
            reasons::PROGRESS_DEADLINE_EXCEEDED
        );
    }

    #[test]
    fn completion_is_stamped_once_and_measured_from_the_config_write() {
        use ServerRolloutState::*;
        let rolling = rollout_status(
            None,
            IMAGE,
            Some(at(100)),
            vec![entry("a", Progressing)],
            at(101),
        );
        assert_eq!(rolling.completed_at, None);
        assert_eq!(just_completed(None, &rolling), None);
        let done = rollout_status(
            Some(&rolling),
            IMAGE,
            Some(at(100)),
            vec![entry("a", RolledOut)],
            at(112),
        );
        assert_eq!(done.completed_at, Some(at(112)));
        assert_eq!(
            just_completed(Some(&rolling), &done),
            Some(std::time::Duration::from_secs(12))
        );
        // Later reconciles keep the first completion and report nothing new.
        let later = rollout_status(
            Some(&done),
            IMAGE,
            Some(at(100)),
            vec![entry("a", RolledOut)],
            at(200),
        );
        assert_eq!(later.completed_at, Some(at(112)));
        assert_eq!(just_completed(Some(&done), &later), None);
        // New code starts over.
        let next = rollout_status(
            Some(&later),
            "registry.example/code@sha256:3",
            Some(at(300)),
            vec![entry("a", Progressing)],
            at(301),
        );
        assert_eq!(next.completed_at, None);
    }
}
