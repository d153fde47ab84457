//! Rolling the servers. openvox-operator renders a Server's Deployment from its Config
//! but reconciles a Server only on changes of the Server (or what it owns), never of
//! the Config: measured, a new `Config.spec.code` reached no Deployment in over five
//! minutes. Here the stand-in for the operator's Server controller follows exactly
//! that, the real Deployment controller rolls the pods, node simulation makes them
//! ready, and the tests show the digest reaching the Deployment within seconds of the
//! Config write, then `RolledOut`.

use std::process::Command;
use std::time::Instant;

use harness::operator::{OperatorServerController, SERVER_LABEL};
use k8s_openapi::api::apps::v1::Deployment;
use openvox_crds::codesource::{RolloutStatus, ServerRolloutState};
use openvox_crds::names::annotations;
use openvox_crds::operator::Server;

use super::*;

const OLD: &str = "registry.example/puppet-code@sha256:0000000000000000000000000000000000000000000000000000000000000000";
const FIRST: &str = "registry.example/puppet-code@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const SECOND: &str = "registry.example/puppet-code@sha256:2222222222222222222222222222222222222222222222222222222222222222";
const CANARY: &str = "registry.example/canary-code@sha256:9999999999999999999999999999999999999999999999999999999999999999";

/// What the operator would have in the namespace: the Config `prod` (with or without
/// a `puppet` block), a Server with two replicas taking the Config's code, a canary
/// Server with code of its own, a CA-only Server; the stand-in Server controller; a
/// node that runs the worker (exit 0) and makes server pods ready.
async fn operator_namespace(
    ns: &TestNamespace,
    puppet: bool,
) -> Result<(harness::NodeSim, OperatorServerController)> {
    let node = harness::NodeSim::for_namespace_with(ns, |config| {
        config
            .with_image(
                "openvox-code-worker:test",
                &["/bin/sh", "-c", "exit 0", "worker"],
            )
            .with_ready_only(SERVER_LABEL)
    })
    .await?;
    let mut prod = config("prod", json!({"image": OLD}));
    if puppet {
        prod["spec"]["puppet"] = json!({});
    }
    let server = |name: &str, extra: Value| {
        let mut spec = json!({"configRef": "prod", "certificateRef": name});
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Server",
               "metadata": {"name": name}, "spec": spec})
    };
    for object in [
        prod,
        server("puppet", json!({"replicas": 2})),
        server("canary", json!({"code": {"image": CANARY}})),
        server("ca", json!({"ca": true, "server": false})),
    ] {
        harness::apply::apply(ns.client(), Some(ns.name()), object).await?;
    }
    let operator = OperatorServerController::start(ns.client().clone(), ns.name());
    Ok((node, operator))
}

/// The code the pod template of Server `name`'s Deployment carries.
async fn deployment_code(ns: &TestNamespace, name: &str) -> Result<Option<String>> {
    let deployments: Api<Deployment> = ns.api();
    Ok(deployments.get_opt(name).await?.and_then(|d| {
        d.spec
            .template
            .metadata?
            .annotations?
            .get(annotations::CODE_IMAGE)
            .cloned()
    }))
}

async fn rollout(ns: &TestNamespace) -> Result<Option<RolloutStatus>> {
    let codesources: Api<CodeSource> = ns.api();
    Ok(codesources
        .get("prod")
        .await?
        .status
        .and_then(|s| s.rollout))
}

/// Polls `probe` every 50 ms for up to 60 s; returns when it held.
async fn when<F, Fut>(what: &str, mut probe: F) -> Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if probe().await? {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `digest` as the build of the current launch, then measures the seconds
/// from the Config write to the digest in the Deployment, and to `RolledOut`.
async fn publish_and_measure(ns: &TestNamespace, digest: &str) -> Result<(f64, f64)> {
    report_build(ns, "prod", digest).await?;
    let written = when("the digest in the Config", || async {
        Ok(config_code(ns, "prod").await?["image"] == digest)
    })
    .await?;
    let in_deployment = when("the digest in the Deployment", || async {
        Ok(deployment_code(ns, "puppet").await?.as_deref() == Some(digest))
    })
    .await?;
    let rolled_out = when("RolledOut", || async {
        let st = status(ns, "prod").await?;
        Ok(
            condition(&st, "RolledOut").is_some_and(|c| c["status"] == "True")
                && st["rollout"]["image"] == digest,
        )
    })
    .await?;
    Ok((
        (in_deployment - written).as_secs_f64(),
        (rolled_out - written).as_secs_f64(),
    ))
}

#[tokio::test]
async fn each_new_digest_rolls_the_servers_and_rolled_out_follows() -> Result<()> {
    let repo = ControlRepo::new();
    let scratch = Scratch::new();
    let ns = TestNamespace::new("cs-rollout").await?;
    let (_node, operator) = operator_namespace(&ns, true).await?;
    // The operator rendered the Server from the Config as it was: the old code.
    when("the Deployment with the old code", || async {
        Ok(deployment_code(&ns, "puppet").await?.as_deref() == Some(OLD))
    })
    .await?;

    let metrics = Metrics::new();
    let _controller =
        start_controller_with(ns.client(), ns.name(), scratch.dir.path(), metrics.clone());
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("prod", with_config(&repo.url(), "prod")),
    )
    .await?;
    let first_job = completed_job(&ns, "prod").await?;
    let (first_deployment, first_rolled_out) = publish_and_measure(&ns, FIRST).await?;

    let st = rollout(&ns).await?.context("no status.rollout")?;
    assert_eq!(st.image, FIRST);
    assert!(
        st.started_at.is_some() && st.completed_at.is_some(),
        "{st:?}"
    );
    let names: Vec<(&str, ServerRolloutState)> = st
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.state))
        .collect();
    // The CA-only Server mounts no code and is not part of the rollout.
    assert_eq!(
        names,
        [
            ("canary", ServerRolloutState::OverridesCode),
            ("puppet", ServerRolloutState::RolledOut)
        ]
    );
    let puppet = &st.servers[1];
    assert_eq!(puppet.image.as_deref(), Some(FIRST));
    assert_eq!(
        (
            puppet.desired_replicas,
            puppet.updated_replicas,
            puppet.ready_replicas
        ),
        (2, 2, 2)
    );
    // The canary is reported, not touched: no annotation, its own code stays.
    let servers: Api<Server> = ns.api();
    let canary = servers.get("canary").await?;
    assert!(
        !canary
            .annotations()
            .contains_key(annotations::PUBLISHED_CODE),
        "{:?}",
        canary.annotations()
    );
    assert_eq!(
        deployment_code(&ns, "canary").await?.as_deref(),
        Some(CANARY)
    );
    assert_eq!(
        servers.get("puppet").await?.annotations()[annotations::PUBLISHED_CODE],
        FIRST
    );
    let st = status(&ns, "prod").await?;
    assert_eq!(
        condition(&st, "Ready").map(|c| c["status"].clone()),
        Some(json!("True")),
        "Ready still means published"
    );
    let message = condition(&st, "RolledOut").context("RolledOut")?["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("canary set their own spec.code")),
        "{message}"
    );

    // kubectl waits on the condition as users will.
    let kubectl = harness::tools::kubectl_path()?;
    let kubeconfig = ns.control_plane().kubeconfig().to_owned();
    let namespace = ns.name().to_owned();
    let waited = tokio::task::spawn_blocking(move || {
        Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["-n", &namespace, "wait", "--for=condition=RolledOut"])
            .args(["codesource/prod", "--timeout=20s"])
            .output()
    })
    .await??;
    assert!(
        waited.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&waited.stderr)
    );

    // A second build: the same path again, to the new digest.
    let codesources: Api<CodeSource> = ns.api();
    codesources
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                annotations::REQUESTED_AT: "second"}}})),
        )
        .await?;
    eventually("a second completed Job", || async {
        Ok(worker_jobs(&ns, "prod").await?.into_iter().find(|j| {
            j.name_any() != first_job.name_any()
                && j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0
        }))
    })
    .await?;
    eventually("the second launch recorded", || async {
        let st = status(&ns, "prod").await?;
        Ok((st["lastLaunch"]["jobName"] != first_job.name_any().as_str()).then_some(()))
    })
    .await?;
    let (second_deployment, second_rolled_out) = publish_and_measure(&ns, SECOND).await?;
    eprintln!(
        "rollout: Config write -> Deployment {first_deployment:.2} s and {second_deployment:.2} s; \
         -> RolledOut {first_rolled_out:.2} s and {second_rolled_out:.2} s"
    );

    // One Event per rollout started and completed; the second of each is recorded as
    // the series of the first (the Events API keeps the first note).
    // The Event of the second rollout is published right after the status says it.
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let listed = eventually("both rollouts in the Events", || async {
        let listed = events.list(&ListParams::default()).await?.items;
        let twice = |reason: &str| {
            listed.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.series.as_ref().is_some_and(|s| s.count == 2)
            })
        };
        Ok((twice("RolloutStarted") && twice("RolledOut")).then_some(listed))
    })
    .await?;
    for reason in ["RolloutStarted", "RolledOut"] {
        let event = listed
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .with_context(|| format!("no {reason} Event"))?;
        let note = event.note.clone().unwrap_or_default();
        assert!(note.contains(FIRST), "{reason}: {note}");
    }
    let completed = listed
        .iter()
        .find(|e| e.reason.as_deref() == Some("RolledOut"))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(
        completed.contains(" s after it was written into the Config"),
        "{completed}"
    );
    let text = metrics.encode();
    assert!(
        text.contains("openvox_code_rollout_duration_seconds_count 2"),
        "{text}"
    );
    assert!(operator.errors().is_empty(), "{:?}", operator.errors());
    Ok(())
}

#[tokio::test]
async fn a_config_without_puppet_says_why_servers_get_no_deployment() -> Result<()> {
    let repo = ControlRepo::new();
    let scratch = Scratch::new();
    let ns = TestNamespace::new("cs-no-puppet").await?;
    let (_node, operator) = operator_namespace(&ns, false).await?;
    let _controller = start_controller(ns.client(), ns.name(), scratch.dir.path());
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("prod", with_config(&repo.url(), "prod")),
    )
    .await?;
    completed_job(&ns, "prod").await?;
    report_build(&ns, "prod", FIRST).await?;

    // The operator's bug: an empty mount path, a Deployment the API server refuses.
    let rolled_out = eventually("RolledOut=False naming spec.puppet", || async {
        let st = status(&ns, "prod").await?;
        Ok(condition(&st, "RolledOut")
            .filter(|c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("spec.puppet"))
            })
            .cloned())
    })
    .await?;
    assert_eq!(rolled_out["status"], "False");
    assert_eq!(rolled_out["reason"], "Progressing");
    assert!(
        rolled_out["message"]
            .as_str()
            .is_some_and(|m| m.contains("puppet (no Deployment yet)")),
        "{rolled_out}"
    );
    assert!(
        operator.errors().iter().any(|e| e.contains("mountPath")),
        "{:?}",
        operator.errors()
    );

    // The fix the message names: the operator's retry renders the Deployment.
    let configs: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &kube::discovery::ApiResource::erase::<openvox_crds::operator::Config>(&()),
    );
    configs
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"puppet": {}}})),
        )
        .await?;
    eventually("RolledOut=True", || async {
        let st = status(&ns, "prod").await?;
        Ok(condition(&st, "RolledOut")
            .filter(|c| c["status"] == "True")
            .map(|_| ()))
    })
    .await?;
    Ok(())
}
