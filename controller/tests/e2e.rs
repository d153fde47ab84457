//! End to end, with nothing faked but the kubelet: the controller binary runs as a
//! process against the real API server; the Job controller makes the worker pod; node
//! simulation runs the real worker binary, which fetches from a git daemon, resolves a
//! Puppetfile with a git module, pushes to a real registry and writes the CodeSource
//! status; the controller pins the digest into the Config. Then a commit to one branch
//! gives a new digest in which only that branch's layer changed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harness::TestNamespace;
use harness::fixtures::{Bare, file};
use harness::world::{NAME, World, WorldOptions};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};
use openvox_code_controller::webhook::signature::sign_hex;
use openvox_crds::CodeSource;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(180);

/// The controller binary of this package and the worker binary built beside it.
fn binaries() -> Result<(PathBuf, PathBuf)> {
    harness::world::binaries(env!("CARGO_BIN_EXE_openvox-code-controller"))
}

#[tokio::test]
async fn a_commit_becomes_a_new_digest_in_the_config_through_the_real_worker() -> Result<()> {
    let (controller, worker) = binaries()?;
    let ns = TestNamespace::new("e2e").await?;
    // The worker pod must pass the "restricted" Pod Security Standard: enforce it, so
    // the API server refuses the pod (and the build never happens) if it does not.
    let namespaces: Api<Namespace> = Api::all(ns.client().clone());
    let restricted = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    namespaces
        .patch(
            ns.name(),
            &PatchParams::default(),
            &Patch::Merge(&restricted),
        )
        .await?;
    let world = World::start(ns, &controller, &worker).await?;

    let first = world.wait_for_image(None, TIMEOUT).await?;
    assert!(
        first.starts_with(&format!("{}@sha256:", world.repository)),
        "pinned by digest: {first}"
    );
    let first_layers = World::layers(&first)?;
    assert_eq!(first_layers.len(), 2, "one layer per environment");

    let codesources: Api<CodeSource> = world.ns.api();
    let build = codesources
        .get(NAME)
        .await?
        .status
        .and_then(|s| s.last_build)
        .context("no lastBuild")?;
    assert_eq!(build.image, first);
    let names: Vec<&str> = build.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["production", "staging"]);
    assert!(
        build
            .environments
            .iter()
            .all(|e| e.modules.iter().any(|m| m.name == "motd")),
        "the git module is recorded"
    );

    // A commit to staging, then a check: a new image in which only staging changed.
    world.commit("staging", "changed");
    world.request_check("after-commit").await?;
    let second = world.wait_for_image(Some(&first), TIMEOUT).await?;
    let second_layers = World::layers(&second)?;
    assert_eq!(
        second_layers[0], first_layers[0],
        "production's layer is reused"
    );
    assert_ne!(second_layers[1], first_layers[1], "staging's layer is new");

    let jobs: Api<Job> = world.ns.api();
    assert_eq!(
        jobs.list(&ListParams::default()).await?.items.len(),
        2,
        "one Job per build, no more"
    );

    // zstd layers asked for: another output, so a build without any new commit, whose
    // layers are all zstd (none reused from the gzip image).
    codesources
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"output": {"compression": "zstd"}}})),
        )
        .await?;
    let third = world.wait_for_image(Some(&second), TIMEOUT).await?;
    assert_eq!(
        World::layer_media_types(&third)?,
        ["application/vnd.oci.image.layer.v1.tar+zstd"; 2]
    );
    let third_layers = World::layers(&third)?;
    assert!(
        third_layers.iter().all(|l| !second_layers.contains(l)),
        "{third_layers:?}"
    );
    Ok(())
}

/// POSTs a GitHub push event `body` signed with `signature` to `hook`: the answer's
/// status and text.
async fn post_github_push(hook: String, body: String, signature: String) -> Result<(u16, String)> {
    openvox_code_controller::tls::install_ring_provider();
    let response = reqwest::Client::new()
        .post(hook)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// A GitHub push of `branch` to the repository at `url`, and its signature.
fn github_push(url: &str, branch: &str, secret: &str) -> (String, String) {
    let body = json!({
        "ref": format!("refs/heads/{branch}"),
        "after": "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5",
        "repository": {"full_name": "puppet/repo", "clone_url": url, "html_url": url.trim_end_matches(".git")}
    })
    .to_string();
    let signature = format!("sha256={}", sign_hex(secret.as_bytes(), body.as_bytes()));
    (body, signature)
}

#[tokio::test]
async fn a_moved_floating_module_rebuilds_only_the_environments_that_follow_it() -> Result<()> {
    const SECRET: &str = "module-webhook-secret";
    let (controller, worker) = binaries()?;
    let options = WorldOptions {
        webhook_secret: Some(SECRET),
        ..WorldOptions::default()
    };
    let world = World::start_with(
        TestNamespace::new("e2e-floating").await?,
        &controller,
        &worker,
        options,
    )
    .await?;
    let first = world.wait_for_image(None, TIMEOUT).await?;

    // production pins motd by commit and adds a module pinned by commit too; staging
    // keeps following motd's main.
    let repos = world.control.path.parent().context("repos dir")?.to_owned();
    let motd = Bare {
        path: repos.join("modules/motd.git"),
    };
    let pinned = Bare::init(&repos.join("modules/pinned.git"));
    let pinned_commit = pinned.commit(
        "main",
        "pinned module",
        &[("manifests/init.pp", file("class pinned {}\n"))],
    );
    let motd_commit = motd.head("main").context("motd main")?;
    let codesources: Api<CodeSource> = world.ns.api();
    let control_url = codesources.get(NAME).await?.spec.git.url.clone();
    let base = control_url.trim_end_matches("control.git").to_owned();
    let production_puppetfile = format!(
        "mod 'motd', :git => '{base}modules/motd.git', :commit => '{motd_commit}'\n\
         mod 'pinned', :git => '{base}modules/pinned.git', :commit => '{pinned_commit}'\n"
    );
    world.control.commit(
        "production",
        "pin the modules",
        &[
            ("Puppetfile", file(&production_puppetfile)),
            ("manifests/site.pp", file("node default { include motd }\n")),
        ],
    );
    world.request_check("pinned").await?;
    let second = world.wait_for_image(Some(&first), TIMEOUT).await?;
    let second_layers = World::layers(&second)?;
    let build = codesources
        .get(NAME)
        .await?
        .status
        .and_then(|s| s.last_build)
        .context("lastBuild")?;
    let floating: Vec<(&str, Vec<&str>)> = build
        .environments
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.floating.iter().map(|f| f.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        floating,
        [("production", vec![]), ("staging", vec!["motd"])],
        "only staging's motd floats"
    );

    // A pinned module repository moving builds nothing.
    let jobs: Api<Job> = world.ns.api();
    let jobs_before = jobs.list(&ListParams::default()).await?.items.len();
    pinned.commit(
        "main",
        "moved",
        &[("manifests/init.pp", file("class pinned { }\n"))],
    );
    world.request_check("after-pinned-moved").await?;
    eventually_checked(&codesources, "after-pinned-moved").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        jobs.list(&ListParams::default()).await?.items.len(),
        jobs_before
    );

    // motd's main moves; a push from the module repository asks for the check.
    motd.commit(
        "main",
        "motd changed",
        &[
            (
                "manifests/init.pp",
                file("class motd { notify { 'changed': } }\n"),
            ),
            (
                "metadata.json",
                file("{\"name\": \"example-motd\", \"version\": \"1.0.1\"}\n"),
            ),
        ],
    );
    let hook = format!(
        "http://{}/hook/{}/{NAME}",
        world.webhook_addr.context("no webhook receiver")?,
        world.ns.name()
    );
    let (body, signature) = github_push(&format!("{base}modules/motd.git"), "main", SECRET);
    let (status, answer) = post_github_push(hook, body, signature).await?;
    assert_eq!(status, 202, "{answer}");
    let third = world.wait_for_image(Some(&second), TIMEOUT).await?;
    let third_layers = World::layers(&third)?;
    assert_eq!(
        third_layers[0], second_layers[0],
        "production's layer is reused"
    );
    assert_ne!(
        third_layers[1], second_layers[1],
        "staging's layer is rebuilt"
    );
    // The controller says why it built (the Event repeats the first build's note: the
    // Events API keeps a series' first note).
    let log = std::fs::read_to_string(&world.controller_log)?;
    assert!(
        log.contains("launched build (floating modules moved: motd (staging): "),
        "{log}"
    );
    Ok(())
}

/// Waits until the controller handled the check request `value`.
async fn eventually_checked(codesources: &Api<CodeSource>, value: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = codesources.get(NAME).await?.status.unwrap_or_default();
        if status.last_handled_check_requested_at.as_deref() == Some(value) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the check request {value} was not handled");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Everything a person or another program can read about a build: the controller's
/// log, the worker's log, Events, the CodeSource (status included) and the Job specs.
/// Returns all of it, and the worker logs alone.
async fn observable_text(world: &World) -> Result<(String, String)> {
    let mut text = std::fs::read_to_string(&world.controller_log)?;
    let mut worker_logs = String::new();
    let jobs: Api<Job> = world.ns.api();
    for job in jobs.list(&ListParams::default()).await?.items {
        text.push_str(&serde_json::to_string(&job)?);
        let pods: Api<k8s_openapi::api::core::v1::Pod> = world.ns.api();
        let selector = format!("job-name={}", job.metadata.name.clone().unwrap_or_default());
        for pod in pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            worker_logs.push_str(&world.node.log(world.ns.name(), &name, "worker"));
            text.push_str(&serde_json::to_string(&pod.status)?);
        }
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = world.ns.api();
    text.push_str(&serde_json::to_string(
        &events.list(&ListParams::default()).await?.items,
    )?);
    let codesources: Api<CodeSource> = world.ns.api();
    text.push_str(&serde_json::to_string(&codesources.get(NAME).await?)?);
    text.push_str(&worker_logs);
    Ok((text, worker_logs))
}

#[tokio::test]
async fn planted_secrets_never_show_in_logs_events_status_or_job_specs() -> Result<()> {
    // A registry password (push), a git password (https-style basic auth, for the head
    // check and the worker's fetch) and a webhook secret (a good and a bad signature).
    const PASSWORD: &str = "planted-Registry-Secret-7f3a";
    const GIT_PASSWORD: &str = "planted-Git-Password-91c4";
    const WEBHOOK_SECRET: &str = "planted-Webhook-Secret-5e2d";
    let (controller, worker) = binaries()?;
    let options = WorldOptions {
        registry_auth: Some(("pusher", PASSWORD)),
        git_auth: Some(("puller", GIT_PASSWORD)),
        webhook_secret: Some(WEBHOOK_SECRET),
        ..WorldOptions::default()
    };
    let world = World::start_with(
        TestNamespace::new("e2e-secret").await?,
        &controller,
        &worker,
        options,
    )
    .await?;
    let image = world.wait_for_image(None, TIMEOUT).await?;
    assert!(
        image.starts_with(&world.repository),
        "the authenticated fetch and push worked: {image}"
    );

    // Webhooks: a push with a good signature is accepted and leads to a head check
    // (with the git password again); one with a bad signature is refused.
    let codesources: Api<CodeSource> = world.ns.api();
    let url = codesources.get(NAME).await?.spec.git.url.clone();
    let body = json!({
        "ref": "refs/heads/production",
        "after": "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5",
        "repository": {"full_name": "puppet/control", "clone_url": url, "html_url": url.trim_end_matches(".git")}
    })
    .to_string();
    let hook = format!(
        "http://{}/hook/{}/{NAME}",
        world.webhook_addr.context("no webhook receiver")?,
        world.ns.name()
    );
    let post = |signature: String| post_github_push(hook.clone(), body.clone(), signature);
    let good = format!(
        "sha256={}",
        sign_hex(WEBHOOK_SECRET.as_bytes(), body.as_bytes())
    );
    let bad = format!("sha256={}", sign_hex(b"not-the-secret", body.as_bytes()));
    let (accepted, accepted_body) = post(good).await?;
    assert_eq!(accepted, 202, "{accepted_body}");
    let (refused, refused_body) = post(bad).await?;
    assert!(
        refused == 401 || refused == 403,
        "{refused}: {refused_body}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = codesources.get(NAME).await?.status.unwrap_or_default();
        if status.last_handled_check_requested_at.is_some() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the accepted webhook led to no head check");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (mut text, worker_logs) = observable_text(&world).await?;
    text.push_str(&accepted_body);
    text.push_str(&refused_body);
    // The scan must include the worker's own log, which ends with the pinned reference.
    assert!(
        worker_logs.contains(&image),
        "the worker log was not read: {worker_logs}"
    );
    // …and the controller's log of both webhook requests.
    let controller_log = std::fs::read_to_string(&world.controller_log)?;
    for line in ["webhook: head check requested", "webhook refused"] {
        assert!(
            controller_log.contains(line),
            "the controller log lacks {line:?}"
        );
    }
    use base64::Engine as _;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    for (what, secret) in [
        ("the registry password", PASSWORD.to_string()),
        (
            "the encoded registry credentials",
            b64(format!("pusher:{PASSWORD}")),
        ),
        ("the git password", GIT_PASSWORD.to_string()),
        (
            "the encoded git credentials",
            b64(format!("puller:{GIT_PASSWORD}")),
        ),
        ("the webhook secret", WEBHOOK_SECRET.to_string()),
        (
            "the encoded webhook secret",
            b64(WEBHOOK_SECRET.to_string()),
        ),
    ] {
        assert!(!text.contains(&secret), "{what} leaked");
    }
    Ok(())
}
