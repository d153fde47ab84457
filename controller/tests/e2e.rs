//! End to end, with nothing faked but the kubelet: the controller binary runs as a
//! process against the real API server; the Job controller makes the worker pod; node
//! simulation runs the real worker binary, which fetches from a git daemon, resolves a
//! Puppetfile with a git module, pushes to a real registry and writes the CodeSource
//! status; the controller pins the digest into the Config. Then a commit to one branch
//! gives a new digest in which only that branch's layer changed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harness::fixtures::registry::{Settings as RegistrySettings, TestRegistry, skopeo};
use harness::fixtures::{Bare, Scratch, file, git_daemon};
use harness::{NodeSim, TestNamespace};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, Patch, PatchParams};
use openvox_crds::CodeSource;
use openvox_crds::operator::Config;
use serde_json::{Value, json};

const WORKER_IMAGE: &str = "openvox-code-worker:e2e";
const TIMEOUT: Duration = Duration::from_secs(180);

/// The controller binary of this package and the worker binary built beside it.
fn binaries() -> Result<(PathBuf, PathBuf)> {
    let controller = PathBuf::from(env!("CARGO_BIN_EXE_openvox-code-controller"));
    let worker = controller.with_file_name("openvox-code-worker");
    if !worker.is_file() {
        bail!(
            "{} is missing: run `cargo build -p openvox-code-worker` (make test does)",
            worker.display()
        );
    }
    Ok((controller, worker))
}

/// The controller process, killed when dropped.
struct ControllerProcess(Child);

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_controller(
    binary: &PathBuf,
    ns: &TestNamespace,
    log: PathBuf,
) -> Result<ControllerProcess> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(binary)
        .env("KUBECONFIG", ns.control_plane().kubeconfig())
        .env("RUST_LOG", "info")
        .args(["--worker-image", WORKER_IMAGE, "--namespace", ns.name()])
        .args(["--enable-pool", "false", "--metrics-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the controller")?;
    Ok(ControllerProcess(child))
}

/// A control repository with two branches whose Puppetfile installs a git module.
fn control_repo(root: &std::path::Path, daemon_port: u16) -> Bare {
    let module = Bare::init(&root.join("modules/motd.git"));
    module.commit(
        "main",
        "motd module",
        &[
            (
                "manifests/init.pp",
                file("class motd { notify { 'hello': } }\n"),
            ),
            (
                "metadata.json",
                file("{\"name\": \"example-motd\", \"version\": \"1.0.0\"}\n"),
            ),
        ],
    );
    let control = Bare::init(&root.join("control.git"));
    let puppetfile = format!(
        "mod 'motd',\n  :git => 'git://127.0.0.1:{daemon_port}/modules/motd.git',\n  :branch => 'main'\n"
    );
    for branch in ["production", "staging"] {
        control.commit(
            branch,
            "initial",
            &[
                ("Puppetfile", file(&puppetfile)),
                (
                    "environment.conf",
                    file("modulepath = site:modules:$basemodulepath\n"),
                ),
                (
                    "manifests/site.pp",
                    file(&format!("node default {{ include motd }} # {branch}\n")),
                ),
            ],
        );
    }
    control
}

async fn config_image(ns: &TestNamespace) -> Option<String> {
    let configs: Api<Config> = ns.api();
    let config = configs.get_opt("production").await.ok()??;
    let code = serde_json::to_value(config.spec.code?).ok()?;
    let entry = if code.is_array() {
        code[0].clone()
    } else {
        code
    };
    entry["image"].as_str().map(str::to_owned)
}

async fn wait_for_image(
    ns: &TestNamespace,
    not: Option<&str>,
    controller_log: &std::path::Path,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(image) = config_image(ns).await
            && Some(image.as_str()) != not
        {
            return Ok(image);
        }
        let codesources: Api<CodeSource> = ns.api();
        let status = codesources
            .get("production")
            .await
            .ok()
            .and_then(|c| c.status);
        let failed = status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "BuildFailed" && c.status == "True")
        });
        if let Some(failed) = failed {
            bail!("the build failed: {}", failed.message);
        }
        if tokio::time::Instant::now() > deadline {
            let status = serde_json::to_string_pretty(&status).ok();
            bail!(
                "no new image reached the Config in {TIMEOUT:?}; status: {status:?}\ncontroller log:\n{}",
                std::fs::read_to_string(controller_log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Layer digests of an image, by the environment annotation the worker writes, or in
/// order when it writes none.
fn layers(image: &str) -> Result<Vec<String>> {
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{image}"),
    ]);
    let manifest: Value = serde_json::from_str(&raw)?;
    Ok(manifest["layers"]
        .as_array()
        .context("manifest has no layers")?
        .iter()
        .map(|l| l["digest"].as_str().unwrap_or_default().to_owned())
        .collect())
}

#[tokio::test]
async fn a_commit_becomes_a_new_digest_in_the_config_through_the_real_worker() -> Result<()> {
    let (controller, worker) = binaries()?;
    let ns = TestNamespace::new("e2e").await?;
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    let daemon = git_daemon(&repos, scratch.path("git-daemon.log"));
    let control = control_repo(&repos, daemon.port);
    let registry = TestRegistry::start(RegistrySettings::default());
    let worker = worker.display().to_string();
    let _node =
        NodeSim::for_namespace_with(&ns, |c| c.with_image(WORKER_IMAGE, &[&worker])).await?;
    let controller_log = scratch.path("controller.log");
    let _controller = start_controller(&controller, &ns, controller_log.clone())?;

    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Config",
            "metadata": {"name": "production"}, "spec": {"image": {"tag": "8.10.0"}},
        }),
    )
    .await?;
    let repository = format!("{}/puppet/code", registry.host());
    harness::apply::apply(ns.client(), Some(ns.name()), json!({
        "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
        "metadata": {"name": "production"},
        "spec": {
            "configRef": "production",
            "git": {"url": format!("git://127.0.0.1:{}/control.git", daemon.port), "branches": ["production", "staging"]},
            "schedule": "@hourly",
            "output": {"image": repository, "insecure": true},
        },
    })).await?;

    let first = wait_for_image(&ns, None, &controller_log).await?;
    assert!(
        first.starts_with(&format!("{repository}@sha256:")),
        "pinned by digest: {first}"
    );
    let first_layers = layers(&first)?;
    assert_eq!(first_layers.len(), 2, "one layer per environment");

    let codesources: Api<CodeSource> = ns.api();
    let status = codesources
        .get("production")
        .await?
        .status
        .context("no status")?;
    let build = status.last_build.context("no lastBuild")?;
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
    control.commit(
        "staging",
        "change staging",
        &[
            ("Puppetfile", file(&format!("mod 'motd',\n  :git => 'git://127.0.0.1:{}/modules/motd.git',\n  :branch => 'main'\n", daemon.port))),
            ("environment.conf", file("modulepath = site:modules:$basemodulepath\n")),
            ("manifests/site.pp", file("node default { include motd } # staging, changed\n")),
        ],
    );
    codesources
        .patch("production", &PatchParams::default(), &Patch::Merge(json!({
            "metadata": {"annotations": {openvox_crds::names::annotations::CHECK_REQUESTED_AT: "after-commit"}}
        })))
        .await?;
    let second = wait_for_image(&ns, Some(&first), &controller_log).await?;
    let second_layers = layers(&second)?;
    assert_eq!(
        second_layers[0], first_layers[0],
        "production's layer is reused"
    );
    assert_ne!(second_layers[1], first_layers[1], "staging's layer is new");

    let jobs: Api<Job> = ns.api();
    assert_eq!(
        jobs.list(&ListParams::default()).await?.items.len(),
        2,
        "one Job per build, no more"
    );
    Ok(())
}
