//! The gate before publishing (`spec.validate` and the built-in checks), end to end:
//! the controller and the real worker as processes, the worker pod with its validator
//! sidecar run by node simulation under the restricted Pod Security Standard, and
//! Debian's `puppet` (7.x) standing in for the validator image: the sidecar's command
//! runs on this machine, so `puppet` is the host's. A second stand-in image
//! (`STUCK_VALIDATOR_IMAGE`) puts a `puppet` first on the PATH that never answers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harness::TestNamespace;
use harness::fixtures::{Node, eventually_some, file};
use harness::world::{NAME, STUCK_VALIDATOR_IMAGE, World, WorldOptions};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use openvox_crds::CodeSource;
use openvox_crds::codesource::{BuildRecord, FailedEnvironment};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(240);
const BRANCHES: &[&str] = &["dev", "production", "qa", "staging"];

fn binaries() -> Result<(PathBuf, PathBuf)> {
    harness::world::binaries(env!("CARGO_BIN_EXE_openvox-code-controller"))
}

/// A branch shaped like a real control repository with public modules: a `site/`
/// module with functions, types and an EPP template the server compiles, and the
/// files it never compiles — `examples/` and Bolt `plans/` that Puppet's parser
/// rejects, `spec/` fixtures — plus Hiera configuration and data.
fn branch_tree(world: &World, comment: &str) -> Vec<(&'static str, Node)> {
    let mut tree = World::tree(world.daemon_port, &format!("# {comment}"));
    tree.extend([
        (
            "site/profile/manifests/init.pp",
            file("class profile {\n  notify { profile::greet('motd'): }\n}\n"),
        ),
        (
            "site/profile/functions/greet.pp",
            file("function profile::greet(String $n) >> String {\n  \"hello ${n}\"\n}\n"),
        ),
        (
            "site/profile/types/port.pp",
            file("type Profile::Port = Integer[1, 65535]\n"),
        ),
        (
            "site/profile/templates/motd.epp",
            file("<%- | String $name | -%>\nHello <%= $name %>\n"),
        ),
        (
            "site/profile/metadata.json",
            file("{\"name\": \"example-profile\", \"version\": \"0.1.0\"}\n"),
        ),
        // Rejected by `puppet parser validate`, never loaded by a server.
        (
            "site/profile/examples/init.pp",
            file("include profile\nprofile::greet(\n"),
        ),
        (
            "site/profile/spec/fixtures/broken.pp",
            file("class {\n"),
        ),
        (
            "site/profile/plans/deploy.pp",
            file("plan profile::deploy(TargetSpec $targets) {\n  run_task('x', $targets)\n}\n"),
        ),
        (
            "plans/rollout.pp",
            file("plan rollout(TargetSpec $targets) {\n  run_plan('profile::deploy', $targets)\n}\n"),
        ),
        (
            "hiera.yaml",
            file("---\nversion: 5\ndefaults:\n  datadir: data\n  data_hash: yaml_data\nhierarchy:\n  - name: common\n    path: common.yaml\n"),
        ),
        ("data/common.yaml", file("---\nprofile::port: 8140\n")),
    ]);
    tree
}

/// `tree` with `path` replaced by `content`.
fn with_file(
    mut tree: Vec<(&'static str, Node)>,
    path: &'static str,
    content: &str,
) -> Vec<(&'static str, Node)> {
    tree.retain(|(p, _)| *p != path);
    tree.push((path, file(content)));
    tree
}

async fn last_build(world: &World) -> Result<BuildRecord> {
    let codesources: Api<CodeSource> = world.ns.api();
    codesources
        .get(NAME)
        .await?
        .status
        .and_then(|s| s.last_build)
        .context("no lastBuild")
}

/// Waits until `lastBuild` satisfies `done`.
async fn wait_for_build(
    world: &World,
    what: &str,
    done: impl Fn(&BuildRecord) -> bool,
) -> Result<BuildRecord> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Ok(build) = last_build(world).await
            && done(&build)
        {
            return Ok(build);
        }
        if tokio::time::Instant::now() > deadline {
            let (worker, validator) = pod_logs(world).await.unwrap_or_default();
            bail!(
                "{what}: not seen in {TIMEOUT:?}; last build: {:#?}\ncontroller log:\n{}\nworker logs:\n{worker}\nvalidator logs:\n{validator}",
                last_build(world).await.ok(),
                std::fs::read_to_string(&world.controller_log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the Config names `image` (the servers get it).
async fn wait_for_config(world: &World, image: &str) -> Result<()> {
    eventually_some(&format!("the Config naming {image}"), || async {
        (world.config_image().await.as_deref() == Some(image)).then_some(())
    })
    .await
}

fn failure<'a>(build: &'a BuildRecord, name: &str) -> Option<&'a FailedEnvironment> {
    build
        .failed
        .iter()
        .find(|f| f.name.as_deref() == Some(name))
}

fn layer_of(build: &BuildRecord, name: &str) -> Option<String> {
    build
        .environments
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.layer_digest.clone())
}

/// The worker and validator logs of every pod of every Job so far.
async fn pod_logs(world: &World) -> Result<(String, String)> {
    let (mut worker, mut validator) = (String::new(), String::new());
    let jobs: Api<Job> = world.ns.api();
    let pods: Api<Pod> = world.ns.api();
    for job in jobs.list(&ListParams::default()).await?.items {
        let selector = format!("job-name={}", job.metadata.name.unwrap_or_default());
        for pod in pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
        {
            let name = pod.metadata.name.unwrap_or_default();
            worker.push_str(&world.node.log(world.ns.name(), &name, "worker"));
            validator.push_str(&world.node.log(world.ns.name(), &name, "validator"));
        }
    }
    Ok((worker, validator))
}

#[tokio::test]
async fn only_environments_puppet_can_read_reach_the_servers() -> Result<()> {
    let (controller, worker) = binaries()?;
    let ns = TestNamespace::new("validate").await?;
    // The validator sidecar must pass the restricted Pod Security Standard too.
    let namespaces: Api<Namespace> = Api::all(ns.client().clone());
    namespaces
        .patch(
            ns.name(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await?;
    let world = World::start_with(
        ns,
        &controller,
        &worker,
        WorldOptions {
            branches: BRANCHES,
            // No image: the Config's server image is the validator (node simulation
            // runs the host's Debian puppet for it).
            validate: Some(r#"{"timeout": "3m"}"#),
            ..WorldOptions::default()
        },
    )
    .await?;
    for branch in BRANCHES {
        world
            .control
            .commit(branch, "public shapes", &branch_tree(&world, branch));
    }
    world.request_check("shapes").await?;

    // 1. Modules shaped like public ones validate clean: examples/, plans/ and spec/
    //    are not the server's code.
    let clean = wait_for_build(&world, "a clean build of the four branches", |b| {
        b.environments.len() == 4
            && b.environments.iter().all(|e| {
                world
                    .control
                    .head(&e.branch)
                    .is_some_and(|h| e.revision.contains(&h))
            })
    })
    .await?;
    assert!(clean.failed.is_empty(), "{:#?}", clean.failed);
    let jobs: Api<Job> = world.ns.api();
    let job = jobs
        .list(&ListParams::default())
        .await?
        .items
        .pop()
        .context("no Job")?;
    let pod_spec = job.spec.unwrap().template.spec.unwrap();
    let sidecar = &pod_spec.init_containers.unwrap()[0];
    assert_eq!(
        sidecar.image.as_deref(),
        Some("ghcr.io/slauger/openvox-server:8.10.0"),
        "defaults to the Config's server image"
    );
    let (worker_log, validator_log) = pod_logs(&world).await?;
    for env in BRANCHES {
        assert!(
            worker_log
                .lines()
                .any(|l| l.contains(&format!("validate {env}: ok, "))),
            "one verdict line per environment:\n{worker_log}"
        );
    }
    assert!(
        validator_log.contains("validator: puppet 7."),
        "{validator_log}"
    );

    // 2. Three kinds of error, each in its own branch; production moves on.
    let base = |branch: &str| branch_tree(&world, branch);
    world.control.commit(
        "staging",
        "broken manifest",
        &with_file(
            base("staging"),
            "manifests/site.pp",
            "node default {\n  include motd\n  $x = \n}\n",
        ),
    );
    world.control.commit(
        "dev",
        "broken template",
        &with_file(
            base("dev"),
            "site/profile/templates/motd.epp",
            "<%- | String $name | -%>\nHello <%= $name %>\n<%= } %>\n",
        ),
    );
    world.control.commit(
        "qa",
        "broken hiera data",
        &with_file(
            base("qa"),
            "data/common.yaml",
            "---\nprofile::port: 8140\nprofile::motd: a: b\n",
        ),
    );
    world
        .control
        .commit("production", "moves on", &base("production changed"));
    world.request_check("planted").await?;
    let partial = wait_for_build(&world, "a build holding back three environments", |b| {
        b.failed.len() == 3
    })
    .await?;
    let staging = failure(&partial, "staging").context("staging not held back")?;
    assert_eq!(
        staging.file.as_deref(),
        Some("manifests/site.pp"),
        "{staging:?}"
    );
    assert_eq!(
        (staging.line, staging.column),
        (Some(4), Some(1)),
        "{staging:?}"
    );
    assert!(
        staging.reason.starts_with("Puppet validation: "),
        "{staging:?}"
    );
    let dev = failure(&partial, "dev").context("dev not held back")?;
    assert_eq!(
        dev.file.as_deref(),
        Some("site/profile/templates/motd.epp"),
        "{dev:?}"
    );
    assert_eq!(dev.line, Some(3), "{dev:?}");
    let qa = failure(&partial, "qa").context("qa not held back")?;
    assert_eq!(qa.file.as_deref(), Some("data/common.yaml"), "{qa:?}");
    assert_eq!(qa.line, Some(3), "{qa:?}");
    assert!(qa.reason.starts_with("built-in check: "), "{qa:?}");
    // The held-back environments keep their layers; production's is new and published.
    for name in ["dev", "qa", "staging"] {
        assert_eq!(layer_of(&partial, name), layer_of(&clean, name), "{name}");
    }
    assert_ne!(
        layer_of(&partial, "production"),
        layer_of(&clean, "production")
    );
    wait_for_config(&world, &partial.image).await?;
    // A partial build is retried after the failed-build backoff, and Ready says
    // Progressing while the retry runs (under load it may already have started): the
    // condition must come to PartialBuild, not be it at one instant.
    let codesources: Api<CodeSource> = world.ns.api();
    eventually_some("Ready with reason PartialBuild", || async {
        let status = codesources.get(NAME).await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "PartialBuild")
    })
    .await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = world.ns.api();
    let warned = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("PartialBuild")
                && e.note.as_deref().is_some_and(|n| {
                    n.contains("staging: Puppet validation") && n.contains("qa: built-in check")
                })
        });
    assert!(
        warned,
        "a Warning Event names the held-back environments and why"
    );

    // 3. Fixing the branch publishes it at the next check.
    world
        .control
        .commit("staging", "fixed", &base("staging fixed"));
    world.request_check("fixed").await?;
    let fixed = wait_for_build(&world, "staging published after its fix", |b| {
        failure(b, "staging").is_none()
            && layer_of(b, "staging").is_some_and(|l| Some(l) != layer_of(&clean, "staging"))
    })
    .await?;
    assert!(failure(&fixed, "dev").is_some() && failure(&fixed, "qa").is_some());
    wait_for_config(&world, &fixed.image).await?;

    // 4. A validator that never answers fails only that step, with a clear reason.
    codesources
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"validate": {
                "image": STUCK_VALIDATOR_IMAGE, "timeout": "3s"}}})),
        )
        .await?;
    world
        .control
        .commit("production", "again", &base("production again"));
    world.request_check("stuck").await?;
    let stuck = wait_for_build(&world, "production held back by a validator timeout", |b| {
        failure(b, "production").is_some_and(|f| f.reason.contains("did not finish within"))
    })
    .await?;
    assert_eq!(
        layer_of(&stuck, "production"),
        layer_of(&fixed, "production"),
        "production keeps its last validated layer"
    );
    assert_eq!(layer_of(&stuck, "staging"), layer_of(&fixed, "staging"));
    Ok(())
}
