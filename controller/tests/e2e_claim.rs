//! PVC output end to end, with nothing faked but the kubelet: the controller binary runs
//! as a process against the real API server; the Job controller makes the worker pod;
//! node simulation runs the real worker binary (`sync`) with the claim as one host
//! directory, fetching from a git daemon and resolving a Puppetfile with a git module;
//! the worker writes `status.lastBuild`; the controller points the Config at the claim.
//! Then a commit to one branch gives a second Job that switches only that environment.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harness::fixtures::{Bare, Scratch, Server, eventually, file, git_daemon};
use harness::world::{Process, spawn_controller};
use harness::{NodeSim, TestNamespace};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use openvox_crds::CodeSource;
use openvox_crds::codesource::{BuildRecord, CodeSourceStatus};
use openvox_crds::names::annotations::CHECK_REQUESTED_AT;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(180);
const WORKER_IMAGE: &str = "openvox-code-worker:local";
const NAME: &str = "production";
const CLAIM: &str = "puppet-code";

/// The controller binary of this package and the worker binary built beside it.
fn binaries() -> Result<(PathBuf, PathBuf)> {
    harness::world::binaries(env!("CARGO_BIN_EXE_openvox-code-controller"))
}

fn tree(daemon_port: u16, comment: &str) -> Vec<(&'static str, harness::fixtures::Node)> {
    let puppetfile = format!(
        "mod 'motd',\n  :git => 'git://127.0.0.1:{daemon_port}/modules/motd.git',\n  :branch => 'main'\n"
    );
    vec![
        ("Puppetfile", file(&puppetfile)),
        (
            "environment.conf",
            file("modulepath = site:modules:$basemodulepath\n"),
        ),
        (
            "manifests/site.pp",
            file(&format!("node default {{ include motd }} # {comment}\n")),
        ),
    ]
}

/// `status.lastBuild` once it differs from `not`; fails at once with the reason when
/// the build fails.
async fn wait_for_build(ns: &TestNamespace, not: Option<&str>, log: &Path) -> Result<BuildRecord> {
    let deadline = Instant::now() + TIMEOUT;
    let codesources: Api<CodeSource> = ns.api();
    loop {
        let status = codesources.get(NAME).await?.status.unwrap_or_default();
        if let Some(build) = status
            .last_build
            .clone()
            .filter(|b| Some(b.image.as_str()) != not)
        {
            return Ok(build);
        }
        if let Some(failed) = status
            .conditions
            .iter()
            .find(|c| c.type_ == "BuildFailed" && c.status == "True")
        {
            bail!("the build failed: {}", failed.message);
        }
        if Instant::now() > deadline {
            bail!(
                "no new lastBuild in {TIMEOUT:?}; status: {}\ncontroller log:\n{}",
                serde_json::to_string_pretty(&status).unwrap_or_default(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the CodeSource's `status.config` records `image` with ConfigUpdated
/// True, and returns the Config's `spec.code`.
async fn wait_for_config(ns: &TestNamespace, image: &str) -> Result<Value> {
    let deadline = Instant::now() + TIMEOUT;
    let codesources: Api<CodeSource> = ns.api();
    let configs: Api<openvox_crds::operator::Config> = ns.api();
    loop {
        let status = codesources.get(NAME).await?.status.unwrap_or_default();
        let updated = status
            .conditions
            .iter()
            .any(|c| c.type_ == "ConfigUpdated" && c.status == "True");
        if updated && status.config.as_ref().is_some_and(|c| c.image == image) {
            let config = configs.get(NAME).await?;
            return Ok(serde_json::to_value(config.spec.code)?);
        }
        if Instant::now() > deadline {
            bail!(
                "the Config was not updated to {image} in {TIMEOUT:?}; status: {}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Config's code names the claim and no image: the single object (the
/// harness's default Config), or the one whole-tree entry of the list shape.
fn assert_claim_only(code: &Value) {
    let entry = match code.as_array() {
        Some(entries) => {
            assert_eq!(entries.len(), 1, "{code}");
            &entries[0]
        }
        None => code,
    };
    assert_eq!(entry["claimName"], CLAIM, "{code}");
    assert!(entry.get("image").is_none(), "{code}");
    assert!(entry.get("environment").is_none(), "{code}");
}

/// The version directory the environment symlink `env` in the claim points to.
fn version(claim: &Path, env: &str) -> Result<PathBuf> {
    std::fs::read_link(claim.join(env)).with_context(|| format!("{env} in the claim"))
}

/// The installation of these tests: a git daemon with the control repository (two
/// branches, a Puppetfile with a git module), node simulation running the real worker,
/// the controller process, a claim, a Config and a claim-mode CodeSource.
struct ClaimWorld {
    ns: TestNamespace,
    control: Bare,
    daemon_port: u16,
    /// The claim as node simulation keeps it: one host directory for all pods.
    claim_dir: PathBuf,
    log: PathBuf,
    // Dropped in this order: the controller, then the node, then the servers.
    _controller: Process,
    _node: NodeSim,
    _daemon: Server,
    _scratch: Scratch,
}

impl ClaimWorld {
    async fn start(ns: TestNamespace) -> Result<Self> {
        let world = Self::start_without_claim(ns).await?;
        world.create_claim().await?;
        Ok(world)
    }

    /// The PersistentVolumeClaim the CodeSource names.
    async fn create_claim(&self) -> Result<()> {
        harness::apply::apply(
            self.ns.client(),
            Some(self.ns.name()),
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            }),
        )
        .await?;
        Ok(())
    }

    /// Everything but the claim.
    async fn start_without_claim(ns: TestNamespace) -> Result<Self> {
        let (controller, worker) = binaries()?;
        // The worker pod, claim included, must pass the "restricted" Pod Security
        // Standard.
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

        let scratch = Scratch::new();
        let repos = scratch.mkdir("repos");
        let daemon = git_daemon(&repos, scratch.path("git-daemon.log"));
        let module = Bare::init(&repos.join("modules/motd.git"));
        module.commit(
            "main",
            "motd module",
            &[(
                "manifests/init.pp",
                file("class motd { notify { 'hello from motd': } }\n"),
            )],
        );
        let control = Bare::init(&repos.join("control.git"));
        for branch in ["production", "staging"] {
            control.commit(branch, "initial", &tree(daemon.port, branch));
        }
        let worker_path = worker.display().to_string();
        let node =
            NodeSim::for_namespace_with(&ns, |c| c.with_image(WORKER_IMAGE, &[&worker_path]))
                .await?;
        let claim_dir = node.work_dir().join("claims").join(ns.name()).join(CLAIM);
        let log = scratch.path("controller.log");
        let controller = Process(spawn_controller(&controller, &ns, &log, None, false)?);

        harness::apply::apply(
            ns.client(),
            Some(ns.name()),
            json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Config",
                "metadata": {"name": NAME}, "spec": {"image": {"tag": "8.10.0"}},
            }),
        )
        .await?;
        harness::apply::apply(
            ns.client(),
            Some(ns.name()),
            json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                "metadata": {"name": NAME},
                "spec": {
                    "configRef": NAME,
                    "git": {"url": format!("git://127.0.0.1:{}/control.git", daemon.port),
                            "branches": ["production", "staging"]},
                    "schedule": "@hourly",
                    "output": {"claimName": CLAIM},
                },
            }),
        )
        .await?;
        Ok(Self {
            ns,
            control,
            daemon_port: daemon.port,
            claim_dir,
            log,
            _controller: controller,
            _node: node,
            _daemon: daemon,
            _scratch: scratch,
        })
    }
}

/// The CodeSource's status now (empty when it has none yet).
async fn status_of(ns: &TestNamespace) -> Result<CodeSourceStatus> {
    Ok(ns
        .api::<CodeSource>()
        .get(NAME)
        .await?
        .status
        .unwrap_or_default())
}

/// The first condition of the CodeSource that `wanted` accepts, once there is one.
async fn condition_where(
    ns: &TestNamespace,
    what: &str,
    wanted: impl Fn(&Condition) -> bool,
) -> Result<Condition> {
    eventually(what, || async {
        let status = status_of(ns).await?;
        Ok(status.conditions.into_iter().find(|c| wanted(c)))
    })
    .await
}

#[tokio::test]
async fn a_claim_receives_the_environments_and_the_config_names_the_claim() -> Result<()> {
    let started = Instant::now();
    let world = ClaimWorld::start(TestNamespace::new("e2e-claim").await?).await?;
    let (ns, control, claim_dir, log) = (&world.ns, &world.control, &world.claim_dir, &world.log);

    // The first build: lastBuild written by the worker's sync, the Config names the claim.
    let first = wait_for_build(ns, None, log).await?;
    let code = wait_for_config(ns, &first.image).await?;
    println!(
        "first claim build published {:.1} s after the installation started",
        started.elapsed().as_secs_f64()
    );
    assert!(
        first.image.starts_with(&format!("pvc:{CLAIM}@sha256:")),
        "{}",
        first.image
    );
    assert_eq!(
        first.short_digest.as_deref(),
        first.image.rsplit_once(':').map(|(_, hex)| &hex[..12])
    );
    assert_claim_only(&code);
    let names: Vec<&str> = first.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["production", "staging"]);
    for env in &first.environments {
        let head = control.head(&env.branch).context("branch head")?;
        assert_eq!(env.revision, format!("{}@sha1:{head}", env.branch));
        assert!(
            env.modules.iter().any(|m| m.name == "motd"),
            "the git module is recorded: {env:?}"
        );
        assert_eq!(env.layer_digest, None, "a claim has no layers");
    }
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    assert!(first.start_time.is_some() && first.completion_time.is_some());

    let jobs: Api<Job> = ns.api();
    let job_list = jobs.list(&ListParams::default()).await?.items;
    assert_eq!(job_list.len(), 1, "one Job for the first build");
    let first_job = job_list[0].metadata.name.clone().unwrap_or_default();
    assert_eq!(first.job_name.as_deref(), Some(first_job.as_str()));
    let status = status_of(ns).await?;
    assert_eq!(
        first.inputs_hash,
        status.last_launch.as_ref().map(|l| l.inputs_hash.clone()),
        "the record names the inputs the Job was launched for"
    );
    assert_eq!(status.config.as_ref().map(|c| c.name.as_str()), Some(NAME));

    // Conditions and Events as for an image: Ready, a NewArtifact and a ConfigUpdated
    // Event naming the claim's reference.
    let ready = condition_where(ns, "Ready=True", |c| {
        c.type_ == "Ready" && c.status == "True"
    })
    .await?;
    assert_eq!(ready.reason, "Succeeded");
    assert!(ready.message.contains(&first.image), "{}", ready.message);
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    for reason in ["NewArtifact", "ConfigUpdated"] {
        let event = eventually(reason, || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason)))
        })
        .await?;
        let note = event.note.unwrap_or_default();
        assert!(note.contains(&first.image), "{reason}: {note}");
    }

    // The environments are in the claim, each a symlink into .versions/.
    for env in ["production", "staging"] {
        let site = std::fs::read_to_string(claim_dir.join(env).join("manifests/site.pp"))?;
        assert!(site.contains(&format!("# {env}")), "{env}: {site}");
        assert!(
            claim_dir
                .join(env)
                .join("modules/motd/manifests/init.pp")
                .is_file()
        );
        assert!(version(claim_dir, env)?.starts_with(format!(".versions/{env}/")));
    }
    let production_before = version(claim_dir, "production")?;
    let staging_before = version(claim_dir, "staging")?;

    // A commit to staging, then a check: a second Job switches staging only.
    let again = Instant::now();
    let commit = control.commit(
        "staging",
        "changed",
        &tree(world.daemon_port, "staging changed"),
    );
    ns.api::<CodeSource>()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {CHECK_REQUESTED_AT: "after-commit"}}}),
            ),
        )
        .await?;
    let second = wait_for_build(ns, Some(&first.image), log).await?;
    let code = wait_for_config(ns, &second.image).await?;
    println!(
        "second claim build published in {:.1} s after the commit",
        again.elapsed().as_secs_f64()
    );
    assert_claim_only(&code);
    let staging = second
        .environments
        .iter()
        .find(|e| e.name == "staging")
        .context("staging in the second record")?;
    assert_eq!(staging.revision, format!("staging@sha1:{commit}"));
    assert_ne!(version(claim_dir, "staging")?, staging_before);
    assert_eq!(
        version(claim_dir, "production")?,
        production_before,
        "production did not change and keeps its version"
    );
    let site = std::fs::read_to_string(claim_dir.join("staging/manifests/site.pp"))?;
    assert!(site.contains("# staging changed"), "{site}");
    let job_list = jobs.list(&ListParams::default()).await?.items;
    assert_eq!(job_list.len(), 2, "one Job per build, no more");
    assert_ne!(second.job_name.as_deref(), Some(first_job.as_str()));

    // staging breaks while production moves: a partial build. production is switched,
    // staging keeps its version, the record names the failure, the Config still names
    // the claim, and Ready says PartialBuild.
    let staging_kept = version(claim_dir, "staging")?;
    let production_second = version(claim_dir, "production")?;
    let mut broken = tree(world.daemon_port, "staging broken");
    broken[0] = ("Puppetfile", file("mod 'a-b', :svn => 'https://svn'\n"));
    control.commit("staging", "broken", &broken);
    control.commit(
        "production",
        "moved",
        &tree(world.daemon_port, "production moved"),
    );
    ns.api::<CodeSource>()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {CHECK_REQUESTED_AT: "partial"}}})),
        )
        .await?;
    let third = wait_for_build(ns, Some(&second.image), log).await?;
    let code = wait_for_config(ns, &third.image).await?;
    assert_claim_only(&code);
    assert_eq!(third.failed.len(), 1, "{:?}", third.failed);
    assert_eq!(third.failed[0].branch, "staging");
    assert!(
        third.failed[0].reason.contains("Puppetfile line 1"),
        "{:?}",
        third.failed
    );
    assert_eq!(version(claim_dir, "staging")?, staging_kept);
    assert_ne!(version(claim_dir, "production")?, production_second);
    let site = std::fs::read_to_string(claim_dir.join("production/manifests/site.pp"))?;
    assert!(site.contains("# production moved"), "{site}");
    let ready = condition_where(ns, "Ready=False PartialBuild", |c| {
        c.type_ == "Ready" && c.reason == "PartialBuild"
    })
    .await?;
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("staging"), "{}", ready.message);
    Ok(())
}

#[tokio::test]
async fn a_list_shaped_config_gets_one_whole_tree_entry_naming_the_claim() -> Result<()> {
    // A control plane of its own, whose Config CRD has the newer list shape.
    let control_plane = harness::ControlPlane::start(&harness::Options {
        gateway_api: false,
        config_shape: harness::ConfigShape::List,
        ..Default::default()
    })?;
    let ns = TestNamespace::new_in(&control_plane, "e2e-claim-list").await?;
    let world = ClaimWorld::start(ns).await?;
    let build = wait_for_build(&world.ns, None, &world.log).await?;
    let code = wait_for_config(&world.ns, &build.image).await?;
    assert!(code.is_array(), "{code}");
    assert_claim_only(&code);
    assert!(
        world
            .claim_dir
            .join("production/manifests/site.pp")
            .is_file()
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_claim_is_reported_and_the_build_follows_once_it_exists() -> Result<()> {
    let world =
        ClaimWorld::start_without_claim(TestNamespace::new("e2e-claim-missing").await?).await?;
    let ns = &world.ns;
    let codesources: Api<CodeSource> = ns.api();
    let ready = eventually("Ready=False ClaimNotFound", || async {
        let status = codesources.get(NAME).await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "ClaimNotFound"))
    })
    .await?;
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains(CLAIM), "{}", ready.message);
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    eventually("a ClaimNotFound Warning Event", || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("ClaimNotFound")
                    && e.type_.as_deref() == Some("Warning")
            }))
    })
    .await?;
    let jobs: Api<Job> = ns.api();
    assert!(
        jobs.list(&ListParams::default()).await?.items.is_empty(),
        "no Job waits for a claim that does not exist"
    );

    world.create_claim().await?;
    let build = wait_for_build(ns, None, &world.log).await?;
    assert!(build.image.starts_with(&format!("pvc:{CLAIM}@sha256:")));
    assert_claim_only(&wait_for_config(ns, &build.image).await?);
    Ok(())
}
