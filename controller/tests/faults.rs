//! Fault tests: the whole installation of `harness::world` (controller binary, real
//! worker run by node simulation, git daemon, registry, real control plane), with one
//! part broken while it works. After each fault: no duplicate Job, no tag or Config
//! pointing at a half-pushed image, the Config still names a complete image, the
//! CodeSource status says what happened, and the next check or trigger recovers.
//!
//! Each test has its own namespace on the control plane shared by this binary; only the
//! API server restart has a control plane of its own. `docs/faults.md` describes each
//! scenario and what the product does.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use harness::fixtures::registry::skopeo;
use harness::world::{NAME, World, WorldOptions};
use harness::{ControlPlane, Options, TestNamespace};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams};
use openvox_crds::CodeSource;
use openvox_crds::names::annotations;
use serde_json::{Value, json};

/// Longest wait for one step (a build, a retry); a bound, not a target.
const STEP: Duration = Duration::from_secs(120);
/// The tag every build also pushes, so the tests can check what it points at.
const TAG: &str = "latest";

/// The controller binary of this package and the worker binary built beside it.
fn binaries() -> Result<(PathBuf, PathBuf)> {
    harness::world::binaries(env!("CARGO_BIN_EXE_openvox-code-controller"))
}

async fn start(ns: TestNamespace) -> Result<World> {
    let (controller, worker) = binaries()?;
    let options = WorldOptions {
        tags: &[TAG],
        ..WorldOptions::default()
    };
    World::start_with(ns, &controller, &worker, options).await
}

/// Polls `probe` every 250 ms until it returns `Some`, for at most [`STEP`].
async fn until<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            // The API server may be down on purpose; keep polling.
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {STEP:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn codesource(world: &World) -> Result<CodeSource> {
    Ok(world.ns.api::<CodeSource>().get(NAME).await?)
}

fn condition(cs: &CodeSource, type_: &str) -> Option<Condition> {
    cs.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

fn is_true(cs: &CodeSource, type_: &str) -> bool {
    condition(cs, type_).is_some_and(|c| c.status == "True")
}

async fn jobs(world: &World) -> Result<Vec<Job>> {
    Ok(world
        .ns
        .api::<Job>()
        .list(&ListParams::default())
        .await?
        .items)
}

fn job_name(job: &Job) -> String {
    job.metadata.name.clone().unwrap_or_default()
}

fn job_has(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Waits for a Job other than `known` and a Running pod of it: the build of the last
/// trigger, held at the worker gate. Returns the Job and pod names.
async fn running_build(world: &World, known: &[String]) -> Result<(String, String)> {
    until("a running build pod of a new Job", || async {
        let Some(job) = jobs(world)
            .await?
            .into_iter()
            .map(|j| job_name(&j))
            .find(|n| !known.contains(n))
        else {
            return Ok(None);
        };
        let pods = world
            .ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await?;
        Ok(pods
            .items
            .iter()
            .find(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .map(|p| (job.clone(), p.metadata.name.clone().unwrap_or_default())))
    })
    .await
}

/// Waits until the Config names an image other than `not`.
async fn new_config_image(world: &World, not: &str) -> Result<String> {
    until("a new image in the Config", || async {
        Ok(world.config_image().await.filter(|i| i != not))
    })
    .await
}

/// Merge-patches the CodeSource with `patch`.
async fn patch_codesource(world: &World, patch: Value) -> Result<()> {
    world
        .ns
        .api::<CodeSource>()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Sets the manual trigger annotation, which asks for a build now.
async fn request_build(world: &World, value: &str) -> Result<()> {
    patch_codesource(
        world,
        json!({"metadata": {"annotations": {annotations::REQUESTED_AT: value}}}),
    )
    .await
}

async fn warnings(world: &World, reason: &str) -> Result<Vec<String>> {
    Ok(world
        .ns
        .api::<Event>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect())
}

/// HTTP status of a HEAD request to the registry.
fn head(host: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "HEAD {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).context("no HTTP status line")?;
    Ok(status.parse()?)
}

/// The registry's `host` and repository path of `world.repository`.
fn registry_parts(world: &World) -> (String, String) {
    let (host, path) = world.repository.split_once('/').unwrap_or_default();
    (host.to_owned(), path.to_owned())
}

/// Fails unless the manifest `reference` and every blob it names are in the registry.
fn assert_complete(world: &World, reference: &str) -> Result<()> {
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]);
    let manifest: Value = serde_json::from_str(&raw)?;
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap_or_default()];
    for layer in manifest["layers"].as_array().context("no layers")? {
        blobs.push(layer["digest"].as_str().unwrap_or_default());
    }
    let (host, repo) = registry_parts(world);
    for blob in blobs {
        let status = head(&host, &format!("/v2/{repo}/blobs/{blob}"))?;
        ensure!(
            status == 200,
            "{reference}: blob {blob} is missing ({status})"
        );
    }
    Ok(())
}

/// The digest the tag points at, if the tag exists.
fn tag_digest(world: &World, tag: &str) -> Result<Option<String>> {
    let output = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{}:{tag}", world.repository))
        .output()?;
    if !output.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8(output.stdout)?.trim().to_owned()))
}

/// The registry and the Config after a fault: the Config names a complete image,
/// and [`TAG`] points at exactly `expected` (the old or the new complete image).
async fn assert_published(world: &World, expected: &str) -> Result<()> {
    let config = world
        .config_image()
        .await
        .context("the Config has no image")?;
    ensure!(
        config == expected,
        "the Config names {config}, not {expected}"
    );
    assert_complete(world, &config)?;
    let digest = expected.split_once('@').map(|(_, d)| d).unwrap_or_default();
    let tagged = tag_digest(world, TAG)?.context("the tag is missing")?;
    ensure!(
        tagged == digest,
        "tag {TAG} points at {tagged}, the Config at {digest}"
    );
    Ok(())
}

/// A first build, then a held second build (new commit + check) with its pod running.
/// Returns the first image, the first Job and the held Job and pod.
async fn hold_second_build(world: &World) -> Result<(String, String, String, String)> {
    let first = new_config_image(world, "").await?;
    assert_published(world, &first).await?;
    let first_job = until("the first Job to finish", || async {
        Ok(jobs(world)
            .await?
            .into_iter()
            .find(|j| job_has(j, "Complete"))
            .map(|j| job_name(&j)))
    })
    .await?;
    world.hold_workers()?;
    world.commit("staging", "fault");
    world.request_check("after-commit").await?;
    let (job, pod) = running_build(world, std::slice::from_ref(&first_job)).await?;
    Ok((first, first_job, job, pod))
}

/// `backoffLimit: 0`: the first counted pod failure fails the Job.
async fn without_pod_retries(world: &World) -> Result<()> {
    patch_codesource(world, json!({"spec": {"job": {"backoffLimit": 0}}})).await
}

#[tokio::test]
async fn a_controller_killed_mid_build_adopts_the_running_job_after_a_restart() -> Result<()> {
    let mut world = start(TestNamespace::new("faults-kill-controller").await?).await?;
    let (first, first_job, job, _pod) = hold_second_build(&world).await?;

    world.kill_controller();
    world.start_controller()?;
    // The restarted controller reconciles at once (watch relist) and must see the
    // running Job instead of launching another for the same inputs.
    until(
        "the restarted controller to report the running Job",
        || async {
            let cs = codesource(&world).await?;
            let active = cs.status.as_ref().and_then(|s| s.active_job.clone());
            Ok((active.as_deref() == Some(job.as_str())
                && std::fs::read_to_string(&world.controller_log)?
                    .matches("controllers started")
                    .count()
                    >= 2)
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = jobs(&world).await?.iter().map(job_name).collect();
    assert_eq!(
        names.len(),
        2,
        "no second Job for the held build: {names:?}"
    );

    world.release_workers()?;
    let second = new_config_image(&world, &first).await?;
    assert_published(&world, &second).await?;
    let names: Vec<String> = jobs(&world).await?.iter().map(job_name).collect();
    assert_eq!(names.len(), 2, "one Job per build: {names:?}");
    assert!(names.contains(&first_job) && names.contains(&job));
    let cs = codesource(&world).await?;
    let build = cs
        .status
        .and_then(|s| s.last_build)
        .context("no lastBuild")?;
    assert_eq!(build.job_name.as_deref(), Some(job.as_str()));
    assert_eq!(build.image, second);
    Ok(())
}

#[tokio::test]
async fn a_registry_down_during_the_push_fails_the_build_and_keeps_the_old_image() -> Result<()> {
    let mut world = start(TestNamespace::new("faults-registry").await?).await?;
    // One try per build keeps the test short; retries are the worker Job's own.
    without_pod_retries(&world).await?;
    let (first, first_job, job, _pod) = hold_second_build(&world).await?;

    world.registry.stop();
    world.release_workers()?;
    let failed = until("BuildFailed", || async {
        let cs = codesource(&world).await?;
        Ok(condition(&cs, "BuildFailed").filter(|c| c.status == "True"))
    })
    .await?;
    assert!(
        failed.message.contains(&job) && failed.message.contains("127.0.0.1"),
        "the condition names the Job and the registry: {}",
        failed.message
    );
    let events = until("a BuildFailed Warning Event", || async {
        let w = warnings(&world, "BuildFailed").await?;
        Ok((!w.is_empty()).then_some(w))
    })
    .await?;
    eprintln!("BuildFailed condition: {}", failed.message);
    assert!(events[0].contains(&job), "{events:?}");
    // The worker's one-line reason (its termination message), not a tail of its log.
    assert!(
        events[0].contains("Connection refused") && !events[0].contains(" WARN "),
        "{events:?}"
    );

    world.registry.restart();
    assert_published(&world, &first).await?;
    ensure!(
        jobs(&world).await?.len() == 2,
        "no Job beyond the failed one"
    );

    // The registry is back: the next trigger publishes.
    request_build(&world, "registry-back").await?;
    let second = new_config_image(&world, &first).await?;
    assert_published(&world, &second).await?;
    let cs = codesource(&world).await?;
    assert!(!is_true(&cs, "BuildFailed"), "{:?}", cs.status);
    assert!(is_true(&cs, "Ready"), "{:?}", cs.status);
    let names: Vec<String> = jobs(&world).await?.iter().map(job_name).collect();
    assert_eq!(names.len(), 3, "first, failed and retried build: {names:?}");
    assert!(names.contains(&first_job));
    Ok(())
}

#[tokio::test]
async fn a_git_server_down_during_a_check_is_reported_and_the_next_check_recovers() -> Result<()> {
    let mut world = start(TestNamespace::new("faults-git").await?).await?;
    let first = new_config_image(&world, "").await?;
    until("the first build to be recorded as up to date", || async {
        Ok(is_true(&codesource(&world).await?, "Ready").then_some(()))
    })
    .await?;

    world.stop_git();
    // A commit the controller cannot see yet.
    world.commit("production", "while git is down");
    world.request_check("git-down").await?;
    let failed = until("FetchFailed", || async {
        let cs = codesource(&world).await?;
        Ok(condition(&cs, "FetchFailed").filter(|c| c.status == "True"))
    })
    .await?;
    eprintln!("FetchFailed condition: {}", failed.message);
    let message = failed.message.to_lowercase();
    assert!(
        message.contains("the repository is unreachable"),
        "says the repository cannot be reached: {}",
        failed.message
    );
    assert!(
        failed.message.contains("127.0.0.1"),
        "names the repository: {}",
        failed.message
    );
    let cs = codesource(&world).await?;
    assert!(!is_true(&cs, "Ready"), "not Ready while git is down");
    let events = warnings(&world, &failed.reason).await?;
    assert!(!events.is_empty(), "a Warning Event {}", failed.reason);
    assert_eq!(jobs(&world).await?.len(), 1, "no Job without heads");
    assert_published(&world, &first).await?;

    // Git is back: the controller's retry sees the new commit and builds it, without
    // another trigger.
    world.start_git();
    let second = new_config_image(&world, &first).await?;
    assert_published(&world, &second).await?;
    let cs = codesource(&world).await?;
    assert!(!is_true(&cs, "FetchFailed"), "{:?}", cs.status);
    assert_eq!(jobs(&world).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_killed_worker_is_retried_by_the_job_and_publishes_nothing_half_done() -> Result<()> {
    let world = start(TestNamespace::new("faults-kill-worker").await?).await?;
    let (first, _first_job, job, pod) = hold_second_build(&world).await?;

    world.node.kill_container(world.ns.name(), &pod, "worker")?;
    // The pod fails (exit 137) and counts against the Job's backoff limit (2): the
    // Job controller starts a replacement pod, the controller starts no second Job.
    let failed_pods = until("the killed pod to be counted as failed", || async {
        let j = world.ns.api::<Job>().get(&job).await?;
        Ok(j.status.and_then(|s| s.failed).filter(|f| *f >= 1))
    })
    .await?;
    assert_eq!(failed_pods, 1);
    assert_published(&world, &first).await?;
    // kstatus: Ready is Unknown while the build is in progress; the message names the
    // Job and says its pod is being retried.
    let ready = until("the status to explain the retry", || async {
        let cs = codesource(&world).await?;
        Ok(condition(&cs, "Ready").filter(|c| c.message.contains("retry 1 of 2")))
    })
    .await?;
    eprintln!("Ready condition: {}", ready.message);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("Unknown", "Progressing"),
        "still building: {ready:?}"
    );
    assert!(ready.message.contains(&job), "{ready:?}");
    assert!(!is_true(&codesource(&world).await?, "BuildFailed"));

    world.release_workers()?;
    let second = new_config_image(&world, &first).await?;
    assert_published(&world, &second).await?;
    let names: Vec<String> = jobs(&world).await?.iter().map(job_name).collect();
    assert_eq!(
        names.len(),
        2,
        "the Job retried its pod, no new Job: {names:?}"
    );
    let cs = codesource(&world).await?;
    assert!(!is_true(&cs, "BuildFailed"), "{:?}", cs.status);
    Ok(())
}

#[tokio::test]
async fn a_pod_disrupted_by_a_scale_down_does_not_count_as_a_failed_build() -> Result<()> {
    let world = start(TestNamespace::new("faults-disruption").await?).await?;
    // With no retries at all, a counted failure would fail the Job.
    without_pod_retries(&world).await?;
    let (first, _first_job, job, pod) = hold_second_build(&world).await?;

    harness::node_sim::evict_like_cluster_autoscaler(world.ns.client(), world.ns.name(), &pod)
        .await?;
    let replacement = until("a replacement pod", || async {
        let pods = world
            .ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await?;
        Ok(pods
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .find(|n| *n != pod))
    })
    .await?;
    assert_ne!(replacement, pod);
    world.release_workers()?;
    let second = new_config_image(&world, &first).await?;
    assert_published(&world, &second).await?;
    let j = world.ns.api::<Job>().get(&job).await?;
    assert!(job_has(&j, "Complete"), "the Job completed: {:?}", j.status);
    assert_eq!(
        j.status.and_then(|s| s.failed).unwrap_or(0),
        0,
        "the disrupted pod is not counted"
    );
    let cs = codesource(&world).await?;
    assert!(!is_true(&cs, "BuildFailed"), "{:?}", cs.status);
    assert!(warnings(&world, "BuildFailed").await?.is_empty());
    assert_eq!(jobs(&world).await?.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_mid_build_is_survived_by_controller_and_worker() -> Result<()> {
    // A control plane of its own: the others' tests must not see the outage.
    let plane =
        Arc::new(tokio::task::spawn_blocking(|| ControlPlane::start(&Options::default())).await??);
    let (controller, worker) = binaries()?;
    // Leader election on, as the chart runs the controller.
    let options = WorldOptions {
        tags: &[TAG],
        leader_election: true,
        ..WorldOptions::default()
    };
    let ns = TestNamespace::new_in(&plane, "faults-apiserver").await?;
    let mut world = World::start_with(ns, &controller, &worker, options).await?;
    let (first, first_job, job, _pod) = hold_second_build(&world).await?;

    let stop = plane.clone();
    tokio::task::spawn_blocking(move || stop.stop_apiserver()).await??;
    // The worker runs during the outage: it builds and pushes, then its status write
    // (and the node's pod status) must wait for the API server.
    let (_, repo) = registry_parts(&world);
    let puts = world.registry.manifest_puts(&repo).len();
    let outage = std::time::Instant::now();
    world.release_workers()?;
    until("the worker to push the new manifest", || async {
        Ok((world.registry.manifest_puts(&repo).len() > puts).then_some(()))
    })
    .await?;
    // Down for longer than a few quick retries, and than the leader's renew deadline
    // (10 s after its last renewal, which was at most 5 s before the outage).
    let down_for = Duration::from_secs(16);
    tokio::time::sleep(down_for.saturating_sub(outage.elapsed())).await;
    let restart = plane.clone();
    tokio::task::spawn_blocking(move || restart.start_apiserver()).await??;
    eprintln!("API server outage: {:.1?}", outage.elapsed());

    // The leader could not renew its Lease: it exited rather than keep acting without
    // it; its Deployment would start it again, as the test does.
    assert!(!world.controller_running(), "the leader outlived its Lease");
    let log = std::fs::read_to_string(&world.controller_log)?;
    assert!(log.contains("lost the leader lease"), "{log}");
    world.start_controller()?;

    let second = new_config_image(&world, &first).await?;
    assert_published(&world, &second).await?;
    let names: Vec<String> = jobs(&world).await?.iter().map(job_name).collect();
    assert_eq!(names.len(), 2, "no duplicate Job: {names:?}");
    assert!(names.contains(&first_job) && names.contains(&job));
    let cs = until("Ready after the restart", || async {
        let cs = codesource(&world).await?;
        Ok(is_true(&cs, "Ready").then_some(cs))
    })
    .await?;
    assert!(!is_true(&cs, "BuildFailed"), "{:?}", cs.status);
    // The worker's status write outlasted the outage: its pod did not fail, the
    // build was not redone.
    let j = world.ns.api::<Job>().get(&job).await?;
    assert_eq!(
        j.status.and_then(|s| s.failed).unwrap_or(0),
        0,
        "no pod failed"
    );
    drop(world);
    Ok(())
}
