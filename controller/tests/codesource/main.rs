//! The CodeSource controller against a real kube-apiserver (with
//! kube-controller-manager) and a real git repository served over `file://` (git's own
//! upload-pack). The worker is not run here: where a test needs a finished build it
//! writes `status.lastBuild` itself under the worker's field manager, as the worker does.
//! `rollout` follows the published code to openvox-operator's Servers; `quiet` shows
//! that a check which finds nothing new costs no request.

mod quiet;
mod rollout;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use harness::TestNamespace;
use harness::fixtures::{ControlRepo, Scratch, eventually};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use openvox_code_controller::codesource::worker_defaults::{
    WorkerDefaults, parse_node_selector, parse_resources, parse_tolerations,
};
use openvox_code_controller::codesource::{self, Settings};
use openvox_code_controller::metrics::Metrics;
use openvox_crds::CodeSource;
use openvox_crds::names::{WORKER_MANAGER, labels};
use serde_json::{Value, json};

// Runs the CodeSource controller for one namespace until dropped.
use harness::fixtures::StopOnDrop as Running;

fn start_controller(client: &Client, namespace: &str, scratch: &Path) -> Running {
    start_controller_with(client, namespace, scratch, Metrics::new())
}

/// [`start_controller`] recording into `metrics`.
fn start_controller_with(
    client: &Client,
    namespace: &str,
    scratch: &Path,
    metrics: Metrics,
) -> Running {
    run_controller(client, settings_for(namespace, scratch), metrics)
}

/// The settings the tests run the controller with in `namespace`.
fn settings_for(namespace: &str, scratch: &Path) -> Settings {
    let mut settings = Settings::new("openvox-code-worker:test");
    settings.namespace = Some(namespace.to_string());
    settings.scratch_dir = scratch.to_path_buf();
    // What the chart's worker.* values give; `spec.job` overrides them field by field.
    settings.worker_defaults = worker_defaults();
    settings
}

/// The CodeSource controller with `settings` until the value is dropped.
fn run_controller(client: &Client, settings: Settings, metrics: Metrics) -> Running {
    let (running, shutdown) = Running::shutdown();
    tokio::spawn(codesource::run(client.clone(), settings, metrics, shutdown));
    running
}

fn worker_defaults() -> WorkerDefaults {
    WorkerDefaults {
        resources: parse_resources(r#"{"requests":{"cpu":"250m"},"limits":{"memory":"1Gi"}}"#)
            .expect("a valid worker default")
            .0,
        node_selector: parse_node_selector(r#"{"openvox.example/pool":"builds"}"#)
            .expect("a valid worker default")
            .0,
        tolerations: parse_tolerations(r#"[{"key":"builds","operator":"Exists"}]"#)
            .expect("a valid worker default")
            .0,
        log_format: None,
    }
}

/// What the tests here start from: a control repository, a namespace of their own,
/// node simulation running each worker pod as `script` (none: Jobs stay active, like
/// a build in progress) and the CodeSource controller watching the namespace.
struct Setup {
    // Dropped in this order: the controller, the node, the namespace, the rest.
    controller: Option<Running>,
    _node: Option<harness::NodeSim>,
    ns: TestNamespace,
    scratch: Scratch,
    repo: ControlRepo,
}

impl Setup {
    async fn start(namespace: &str, script: Option<&str>) -> Result<Self> {
        let ns = TestNamespace::new(namespace).await?;
        let node = match script {
            Some(script) => Some(node_running(&ns, script).await?),
            None => None,
        };
        let mut setup = Self {
            controller: None,
            _node: node,
            ns,
            scratch: Scratch::new(),
            repo: ControlRepo::new(),
        };
        setup.restart_controller();
        Ok(setup)
    }

    /// Stops the controller (if it runs) and starts a new one, as a restart does.
    fn restart_controller(&mut self) {
        self.controller = None;
        self.controller = Some(start_controller(
            self.ns.client(),
            self.ns.name(),
            self.scratch.dir.path(),
        ));
    }

    /// Applies `object` in the namespace.
    async fn apply(&self, object: Value) -> Result<()> {
        harness::apply::apply(self.ns.client(), Some(self.ns.name()), object).await?;
        Ok(())
    }
}

fn codesource(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
           "metadata": {"name": name}, "spec": spec})
}

fn spec(url: &str, schedule: &str) -> Value {
    json!({"git": {"url": url, "branches": ["production"]}, "schedule": schedule,
           "output": {"image": "registry.example/puppet-code"}})
}

async fn worker_jobs(ns: &TestNamespace, name: &str) -> Result<Vec<Job>> {
    let jobs: Api<Job> = ns.api();
    Ok(jobs
        .list(&ListParams::default().labels(&format!("{}={name}", labels::CODESOURCE)))
        .await?
        .items)
}

/// The first worker Job of `name` that succeeded, once there is one.
async fn completed_job(ns: &TestNamespace, name: &str) -> Result<Job> {
    eventually("the Job to complete", || async {
        Ok(worker_jobs(ns, name)
            .await?
            .into_iter()
            .find(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0))
    })
    .await
}

async fn status(ns: &TestNamespace, name: &str) -> Result<Value> {
    let api: Api<CodeSource> = ns.api();
    Ok(serde_json::to_value(
        api.get(name).await?.status.unwrap_or_default(),
    )?)
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[tokio::test]
async fn a_new_codesource_launches_one_job_and_unchanged_heads_launch_none() -> Result<()> {
    let setup = Setup::start("cs-launch", None).await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    let mut first = spec(&repo.url(), "@hourly");
    first["job"] =
        json!({"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]});
    setup.apply(codesource("prod", first)).await?;

    // A Job with a deterministic name, recorded in status, with the worker's identity.
    let job = eventually("the first Job", || async {
        Ok(worker_jobs(ns, "prod").await?.into_iter().next())
    })
    .await?;
    let job_name = job.name_any();
    assert!(
        job_name.starts_with("prod-") && job_name.len() == "prod-".len() + 8,
        "{job_name}"
    );
    let st = eventually("lastLaunch in status", || async {
        let st = status(ns, "prod").await?;
        Ok((st["lastLaunch"]["jobName"] == job_name.as_str()).then_some(st))
    })
    .await?;
    assert_eq!(st["activeJob"], job_name.as_str());
    let first_commit = repo.head();
    assert_eq!(
        st["heads"]["production"],
        format!("production@sha1:{first_commit}")
    );
    let identity = "openvox-code-worker-prod";
    ns.api::<ServiceAccount>().get(identity).await?;
    let role = ns.api::<Role>().get(identity).await?;
    for rule in role.rules.unwrap_or_default() {
        assert_eq!(rule.resource_names, Some(vec!["prod".to_string()]));
    }
    ns.api::<RoleBinding>().get(identity).await?;
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")?;
    assert_eq!(pod.service_account_name.as_deref(), Some(identity));
    // The controller's worker defaults, except what spec.job sets (the tolerations),
    // as the API server stored them.
    let defaults = worker_defaults();
    assert_eq!(pod.node_selector.as_ref(), Some(&defaults.node_selector));
    // Plus the scratch volume's ephemeral-storage request.
    let mut expected = defaults.resources.clone().unwrap_or_default();
    expected
        .requests
        .get_or_insert_with(Default::default)
        .insert(
            "ephemeral-storage".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("8Gi".into()),
        );
    assert_eq!(pod.containers[0].resources.as_ref(), Some(&expected));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert_eq!(tolerations.len(), 1, "{tolerations:?}");
    assert_eq!(tolerations[0].key.as_deref(), Some("spot"));

    // The worker reports the build; then the Job disappears (its TTL).
    let inputs = st["lastLaunch"]["inputsHash"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let codesources: Api<CodeSource> = ns.api();
    codesources
        .patch_status(
            "prod",
            &PatchParams::apply(WORKER_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                "status": {"lastBuild": {"image": "registry.example/puppet-code@sha256:aaaa",
                                         "inputsHash": inputs, "jobName": job_name}}
            })),
        )
        .await?;
    ns.api::<Job>()
        .delete(&job_name, &DeleteParams::background())
        .await?;

    // A spec change that does not shape the output makes the controller look again:
    // same heads, so it is Ready and launches nothing, even though the Job is gone.
    setup
        .apply(codesource("prod", spec(&repo.url(), "*/30 * * * *")))
        .await?;
    eventually("Ready after the recheck", || async {
        let st = status(ns, "prod").await?;
        let ready = condition(&st, "Ready")
            .map(|c| c["status"] == "True")
            .unwrap_or(false);
        Ok((st["observedGeneration"] == 2 && ready).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs = worker_jobs(ns, "prod").await?;
    assert!(
        jobs.iter().all(|j| j.metadata.deletion_timestamp.is_some()),
        "unexpected Jobs: {:?}",
        jobs.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    );

    // A new commit, seen at the next look, launches a new Job under a new name.
    let second = repo.commit("second");
    setup
        .apply(codesource("prod", spec(&repo.url(), "@daily")))
        .await?;
    let new_job = eventually("a Job for the new commit", || async {
        Ok(worker_jobs(ns, "prod")
            .await?
            .into_iter()
            .find(|j| j.name_any() != job_name && j.metadata.deletion_timestamp.is_none()))
    })
    .await?;
    // The status is written right after the Job is created.
    let st = eventually("the launch recorded", || async {
        let st = status(ns, "prod").await?;
        Ok((st["lastLaunch"]["jobName"] == new_job.name_any().as_str()).then_some(st))
    })
    .await?;
    assert_eq!(
        st["heads"]["production"],
        format!("production@sha1:{second}")
    );
    Ok(())
}

#[tokio::test]
async fn a_suspended_codesource_launches_nothing() -> Result<()> {
    let setup = Setup::start("cs-suspend", None).await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    let mut s = spec(&repo.url(), "* * * * *");
    s["suspend"] = json!(true);
    setup.apply(codesource("held", s)).await?;
    eventually("Ready=False Suspended", || async {
        let st = status(ns, "held").await?;
        Ok(condition(&st, "Ready")
            .filter(|c| c["reason"] == "Suspended")
            .map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker_jobs(ns, "held").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_invalid_schedule_stalls_with_a_clear_message() -> Result<()> {
    let setup = Setup::start("cs-invalid", None).await?;
    let ns = &setup.ns;
    setup
        .apply(codesource("bad", spec("file:///nonexistent", "61 * * * *")))
        .await?;
    let stalled = eventually("Stalled", || async {
        let st = status(ns, "bad").await?;
        Ok(condition(&st, "Stalled").cloned())
    })
    .await?;
    assert_eq!(stalled["status"], "True");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid cron expression"),
        "{stalled}"
    );
    assert!(worker_jobs(ns, "bad").await?.is_empty());
    Ok(())
}

/// A node that runs the worker image as a shell script (the real worker is tested in
/// the end-to-end tests; here the controller's side of the contract is).
async fn node_running(ns: &TestNamespace, script: &str) -> Result<harness::NodeSim> {
    let script = script.to_string();
    harness::NodeSim::for_namespace_with(ns, move |config| {
        config.with_image(
            "openvox-code-worker:test",
            &["/bin/sh", "-c", &script, "worker"],
        )
    })
    .await
}

fn config(name: &str, code: Value) -> Value {
    json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Config",
           "metadata": {"name": name},
           "spec": {"image": {"repository": "ghcr.io/slauger/openvox-server", "tag": "8"}, "code": code}})
}

async fn config_code(ns: &TestNamespace, name: &str) -> Result<Value> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &kube::discovery::ApiResource::erase::<openvox_crds::operator::Config>(&()),
    );
    Ok(api.get(name).await?.data["spec"]["code"].clone())
}

/// Writes `status.lastBuild` as the worker does, for the inputs of the last launch.
async fn report_build(ns: &TestNamespace, name: &str, image: &str) -> Result<()> {
    report_build_with(ns, name, image, json!([])).await
}

/// [`report_build`] with `environments` (records as the worker writes them).
async fn report_build_with(
    ns: &TestNamespace,
    name: &str,
    image: &str,
    environments: Value,
) -> Result<()> {
    let st = status(ns, name).await?;
    let codesources: Api<CodeSource> = ns.api();
    codesources
        .patch_status(
            name,
            &PatchParams::apply(WORKER_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                "status": {"lastBuild": {"image": image,
                                         "inputsHash": st["lastLaunch"]["inputsHash"],
                                         "jobName": st["lastLaunch"]["jobName"],
                                         "environments": environments}}
            })),
        )
        .await?;
    Ok(())
}

fn with_config(url: &str, config: &str) -> Value {
    let mut s = spec(url, "@hourly");
    s["configRef"] = json!(config);
    s
}

#[tokio::test]
async fn a_successful_build_is_pinned_into_the_config_by_digest() -> Result<()> {
    let setup = Setup::start("cs-publish", Some("echo building; exit 0")).await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    setup
        .apply(config(
            "prod",
            json!({"image": "registry.example/puppet-code@sha256:0000", "imagePullSecret": "pull"}),
        ))
        .await?;
    setup
        .apply(codesource("prod", with_config(&repo.url(), "prod")))
        .await?;

    let job = completed_job(ns, "prod").await?;
    let digest = "registry.example/puppet-code@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    report_build(ns, "prod", digest).await?;

    let st = eventually("ConfigUpdated", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "ConfigUpdated")
            .filter(|c| c["status"] == "True")
            .map(|_| st.clone()))
    })
    .await?;
    assert_eq!(st["config"]["name"], "prod");
    assert_eq!(st["config"]["image"], digest);
    assert_eq!(
        condition(&st, "Ready").map(|c| c["status"].clone()),
        Some(json!("True"))
    );
    assert!(
        st.get("activeJob").is_none() || st["activeJob"].is_null(),
        "{st}"
    );
    // The Config's code carries the digest; its pull secret (not ours) stays.
    let code = config_code(ns, "prod").await?;
    assert_eq!(code["image"], digest, "{code}");
    assert_eq!(code["imagePullSecret"], "pull");
    // Events: the build started, the artifact landed, the Config took it.
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    for reason in ["BuildStarted", "NewArtifact", "ConfigUpdated"] {
        eventually(reason, || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason)))
        })
        .await?;
    }
    assert_eq!(st["lastLaunch"]["jobName"], job.name_any().as_str());
    Ok(())
}

#[tokio::test]
async fn a_failed_build_keeps_the_old_image_and_says_why() -> Result<()> {
    let setup = Setup::start(
        "cs-fail",
        Some("echo 'Puppetfile of production: module foo/bar not found on the Forge' >&2; exit 78"),
    )
    .await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    let old = "registry.example/puppet-code@sha256:0000";
    setup.apply(config("prod", json!({"image": old}))).await?;
    setup
        .apply(codesource("prod", with_config(&repo.url(), "prod")))
        .await?;

    let failed = eventually("BuildFailed", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "BuildFailed").cloned())
    })
    .await?;
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains("module foo/bar not found"), "{message}");
    // The permanent-failure exit code failed the Job at once: one pod, no retries.
    let jobs = worker_jobs(ns, "prod").await?;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status.as_ref().and_then(|s| s.failed), Some(1));
    let code = config_code(ns, "prod").await?;
    assert_eq!(code["image"], old, "{code}");
    let st = status(ns, "prod").await?;
    assert_eq!(
        condition(&st, "Ready").map(|c| c["reason"].clone()),
        Some(json!("BuildFailed"))
    );

    // A Warning Event says the same.
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let warning = eventually("a BuildFailed Event", || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("BuildFailed")))
    })
    .await?;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    Ok(())
}

#[tokio::test]
async fn a_partial_build_is_published_reported_once_and_retried_after_the_backoff() -> Result<()> {
    let setup = Setup::start("cs-partial", Some("exit 0")).await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    setup
        .apply(config(
            "prod",
            json!({"image": "registry.example/puppet-code@sha256:0000"}),
        ))
        .await?;
    setup
        .apply(codesource("prod", with_config(&repo.url(), "prod")))
        .await?;
    let first = completed_job(ns, "prod").await?;

    // The worker's report of a partial build: published, one environment failed.
    let digest = "registry.example/puppet-code@sha256:2222222222222222222222222222222222222222222222222222222222222222";
    let st = status(ns, "prod").await?;
    let codesources: Api<CodeSource> = ns.api();
    codesources
        .patch_status(
            "prod",
            &PatchParams::apply(WORKER_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                "status": {"lastBuild": {"image": digest,
                    "inputsHash": st["lastLaunch"]["inputsHash"], "jobName": st["lastLaunch"]["jobName"],
                    "failed": [{"branch": "feature/x", "name": "feature_x",
                                "reason": "Puppetfile: module foo/bar not found on the Forge"}]}}
            })),
        )
        .await?;

    // The good environments advance: the digest is in the Config; Ready says what failed.
    let ready = eventually("Ready=False PartialBuild", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "Ready")
            .filter(|c| c["reason"] == "PartialBuild")
            .cloned())
    })
    .await?;
    assert_eq!(ready["status"], "False");
    let message = ready["message"].as_str().unwrap_or_default();
    for part in [
        digest,
        "feature_x (branch feature/x)",
        "module foo/bar not found",
    ] {
        assert!(message.contains(part), "{message} lacks {part}");
    }
    eventually("the digest in the Config", || async {
        let code = config_code(ns, "prod").await?;
        Ok((code["image"] == digest).then_some(()))
    })
    .await?;
    let st = status(ns, "prod").await?;
    assert_eq!(
        condition(&st, "ConfigUpdated").map(|c| c["status"].clone()),
        Some(json!("True"))
    );

    // No tight loop: more reconciles (label changes) launch nothing and warn no more.
    for n in 0..3 {
        codesources
            .patch(
                "prod",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"poke": n.to_string()}}})),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let partial_events = || async {
        Ok::<_, anyhow::Error>(
            events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("PartialBuild"))
                .collect::<Vec<_>>(),
        )
    };
    let warnings = partial_events().await?;
    // One Event, never repeated (a repeat would make the recorder start a series).
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].series.is_none(), "{warnings:?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert!(
        warnings[0]
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("feature_x")
    );
    assert_eq!(worker_jobs(ns, "prod").await?.len(), 1);

    // Time passes (backdated): the launch is older than the backoff and a scheduled
    // time is due. The next reconcile retries, under a new Job name, same inputs.
    let two_hours_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2)).to_string();
    codesources
        .patch_status(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastLaunch": {"time": two_hours_ago},
                                            "lastScheduleTime": two_hours_ago}})),
        )
        .await?;
    let retry = eventually("the retry Job", || async {
        Ok(worker_jobs(ns, "prod")
            .await?
            .into_iter()
            .find(|j| j.name_any() != first.name_any()))
    })
    .await?;
    assert_eq!(
        retry.labels().get(labels::INPUTS),
        first.labels().get(labels::INPUTS)
    );
    eventually("the retry recorded as the last launch", || async {
        let st = status(ns, "prod").await?;
        Ok((st["lastLaunch"]["jobName"] == retry.name_any().as_str()).then_some(()))
    })
    .await?;

    // The retry builds everything: Ready.
    eventually("the retry to complete", || async {
        Ok(worker_jobs(ns, "prod").await?.into_iter().find(|j| {
            j.name_any() == retry.name_any()
                && j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0
        }))
    })
    .await?;
    report_build(ns, "prod", digest).await?;
    eventually("Ready=True after the retry", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "Ready")
            .filter(|c| c["status"] == "True")
            .map(|_| ()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_restarted_controller_does_not_launch_a_running_build_again() -> Result<()> {
    // No node: the Job stays active, like a build in progress.
    let mut setup = Setup::start("cs-restart", None).await?;
    let url = setup.repo.url();
    setup
        .apply(codesource("prod", spec(&url, "@hourly")))
        .await?;
    let first = eventually("the first Job", || async {
        Ok(worker_jobs(&setup.ns, "prod").await?.into_iter().next())
    })
    .await?;
    setup.controller = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    setup.restart_controller();
    let (repo, ns) = (&setup.repo, &setup.ns);

    // A new commit and a spec change while the build runs: still one Job at a time.
    repo.commit("second");
    setup
        .apply(codesource("prod", spec(&repo.url(), "@daily")))
        .await?;
    eventually("the new controller to look", || async {
        let st = status(ns, "prod").await?;
        Ok((st["observedGeneration"] == 2).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs = worker_jobs(ns, "prod").await?;
    assert_eq!(
        jobs.iter().map(ResourceExt::name_any).collect::<Vec<_>>(),
        vec![first.name_any()]
    );
    let st = status(ns, "prod").await?;
    assert_eq!(st["activeJob"], first.name_any().as_str());
    Ok(())
}

#[tokio::test]
async fn a_new_requested_at_builds_again_once() -> Result<()> {
    let setup = Setup::start("cs-manual", Some("exit 0")).await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    setup
        .apply(codesource("prod", spec(&repo.url(), "@hourly")))
        .await?;
    let first = eventually("the first Job to complete", || async {
        Ok(worker_jobs(ns, "prod")
            .await?
            .into_iter()
            .find(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0))
    })
    .await?;
    report_build(ns, "prod", "registry.example/puppet-code@sha256:1111").await?;
    eventually("Ready", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "Ready")
            .filter(|c| c["status"] == "True")
            .map(|_| ()))
    })
    .await?;

    let codesources: Api<CodeSource> = ns.api();
    codesources
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
            openvox_crds::names::annotations::REQUESTED_AT: "2026-11-23T10:00:00Z"}}})),
        )
        .await?;
    let second = eventually("a second Job", || async {
        Ok(worker_jobs(ns, "prod")
            .await?
            .into_iter()
            .find(|j| j.name_any() != first.name_any()))
    })
    .await?;
    let st = eventually("lastHandledRequestedAt", || async {
        let st = status(ns, "prod").await?;
        Ok((st["lastHandledRequestedAt"] == "2026-11-23T10:00:00Z").then_some(st))
    })
    .await?;
    assert_eq!(st["lastLaunch"]["jobName"], second.name_any().as_str());
    // Same inputs: the worker gets the same inputs hash.
    assert_eq!(
        second.labels().get(labels::INPUTS),
        first.labels().get(labels::INPUTS)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        worker_jobs(ns, "prod").await?.len(),
        2,
        "the request is handled once"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_config_is_reported_and_filled_once_it_exists() -> Result<()> {
    let setup = Setup::start("cs-noconfig", Some("exit 0")).await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    setup
        .apply(codesource("prod", with_config(&repo.url(), "later")))
        .await?;
    completed_job(ns, "prod").await?;
    let digest = "registry.example/puppet-code@sha256:2222";
    report_build(ns, "prod", digest).await?;
    let missing = eventually("ConfigUpdated=False", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "ConfigUpdated")
            .filter(|c| c["status"] == "False")
            .cloned())
    })
    .await?;
    assert_eq!(missing["reason"], "ConfigNotFound");

    // The Config appears: the retry (with backoff) fills it.
    setup
        .apply(config(
            "later",
            json!({"image": "registry.example/puppet-code@sha256:0000"}),
        ))
        .await?;
    eventually("ConfigUpdated=True", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "ConfigUpdated")
            .filter(|c| c["status"] == "True")
            .map(|_| ()))
    })
    .await?;
    assert_eq!(config_code(ns, "later").await?["image"], digest);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_repository_is_reported_as_fetch_failed() -> Result<()> {
    let setup = Setup::start("cs-unreachable", None).await?;
    let ns = &setup.ns;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("git://127.0.0.1:{port}/control.git");
    setup
        .apply(codesource("prod", spec(&url, "@hourly")))
        .await?;
    let failed = eventually("FetchFailed", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "FetchFailed").cloned())
    })
    .await?;
    assert_eq!(failed["reason"], "GitOperationFailed");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&url),
        "{failed}"
    );
    let st = status(ns, "prod").await?;
    assert_eq!(
        condition(&st, "Ready").map(|c| c["status"].clone()),
        Some(json!("False"))
    );
    assert!(worker_jobs(ns, "prod").await?.is_empty());
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    eventually("a GitOperationFailed Event", || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("GitOperationFailed")))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_list_shape_of_config_code_is_detected_and_becomes_one_whole_tree_entry() -> Result<()>
{
    // A control plane of its own, whose Config CRD has the newer list shape.
    let control_plane = harness::ControlPlane::start(&harness::Options {
        gateway_api: false,
        config_shape: harness::ConfigShape::List,
        ..Default::default()
    })?;
    let repo = ControlRepo::new();
    let scratch = Scratch::new();
    let ns = TestNamespace::new_in(&control_plane, "cs-list").await?;
    let _node = node_running(&ns, "exit 0").await?;
    let apply = |object| harness::apply::apply(ns.client(), Some(ns.name()), object);
    apply(config(
        "prod",
        json!([{"image": "registry.example/puppet-code@sha256:0000", "imagePullPolicy": "Always", "imagePullSecret": "pull"}]),
    ))
    .await?;
    let _controller = start_controller(ns.client(), ns.name(), scratch.dir.path());
    apply(codesource("prod", with_config(&repo.url(), "prod"))).await?;
    completed_job(&ns, "prod").await?;
    let digest = "registry.example/puppet-code@sha256:3333";
    report_build(&ns, "prod", digest).await?;
    eventually("ConfigUpdated", || async {
        let st = status(&ns, "prod").await?;
        Ok(condition(&st, "ConfigUpdated")
            .filter(|c| c["status"] == "True")
            .map(|_| ()))
    })
    .await?;
    // The list is atomic: it becomes the one whole-tree entry, with the digest and
    // the pull settings of the entry it replaces.
    let code = config_code(&ns, "prod").await?;
    assert_eq!(code.as_array().map(Vec::len), Some(1), "{code}");
    assert_eq!(code[0]["image"], digest, "{code}");
    assert_eq!(code[0]["imagePullPolicy"], "Always", "{code}");
    assert_eq!(code[0]["imagePullSecret"], "pull", "{code}");
    Ok(())
}

#[tokio::test]
async fn missing_secrets_are_named_and_the_build_follows_once_they_exist() -> Result<()> {
    let setup = Setup::start("cs-secrets", None).await?;
    let (repo, ns) = (&setup.repo, &setup.ns);
    let mut s = spec(&repo.url(), "@hourly");
    s["git"]["secretRef"] = json!({"name": "git-auth"});
    s["output"]["pushSecretRef"] = json!({"name": "regcred"});
    setup.apply(codesource("prod", s)).await?;

    // The git Secret is missing: the head check says so.
    let fetch = eventually("FetchFailed", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "FetchFailed").cloned())
    })
    .await?;
    assert_eq!(fetch["reason"], "SecretNotFound");
    assert!(
        fetch["message"]
            .as_str()
            .unwrap_or_default()
            .contains("git-auth"),
        "{fetch}"
    );

    // With the git Secret, the push Secret is missing: no Job, Ready says why.
    setup
        .apply(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git-auth"},
               "stringData": {"username": "u", "password": "p"}}),
        )
        .await?;
    let ready = eventually("Ready=False naming regcred", || async {
        let st = status(ns, "prod").await?;
        Ok(condition(&st, "Ready")
            .filter(|c| {
                c["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("regcred")
            })
            .cloned())
    })
    .await?;
    assert_eq!(ready["reason"], "SecretNotFound");
    assert!(worker_jobs(ns, "prod").await?.is_empty());

    // With both, the build is launched on the next retry.
    setup
        .apply(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
               "type": "kubernetes.io/dockerconfigjson",
               "stringData": {".dockerconfigjson": "{\"auths\": {}}"}}),
        )
        .await?;
    eventually("a Job", || async {
        Ok(worker_jobs(ns, "prod").await?.into_iter().next())
    })
    .await?;
    Ok(())
}
