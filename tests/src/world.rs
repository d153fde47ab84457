//! A small, complete openvox-code installation on loopback, for the end-to-end test and
//! `make demo`: a git daemon serving a control repository (two branches, a Puppetfile
//! with a git module), a real OCI registry, node simulation running the real worker
//! binary, the controller binary as a process, and a Config plus a CodeSource in one
//! namespace of a real control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::fixtures::registry::{Settings as RegistrySettings, TestRegistry, skopeo};
use crate::fixtures::servers::http_git;
use crate::fixtures::{Bare, Scratch, Server, file, free_port, git_daemon, git_daemon_at};
use crate::{NodeSim, TestNamespace};

/// Image name the Jobs use; node simulation maps it to the local worker binary.
pub const WORKER_IMAGE: &str = "openvox-code-worker:local";
/// Name of the Config and the CodeSource.
pub const NAME: &str = "production";

/// The running installation. Everything stops when it is dropped.
#[derive(Debug)]
pub struct World {
    /// Namespace of the Config and CodeSource.
    pub ns: TestNamespace,
    /// Where the image is pushed (`127.0.0.1:<port>/puppet/code`).
    pub repository: String,
    /// The control repository.
    pub control: Bare,
    /// Log file of the controller process.
    pub controller_log: PathBuf,
    /// The git daemon; `None` while a fault test has it stopped.
    daemon: Option<Server>,
    pub daemon_port: u16,
    /// The registry (fault tests stop and restart it).
    pub registry: TestRegistry,
    /// The node running the worker pods (their logs).
    pub node: NodeSim,
    /// The controller process; `None` while a fault test has it killed.
    controller: Option<Process>,
    controller_binary: PathBuf,
    /// Worker pods start only while this file exists (see [`World::hold_workers`]).
    gate: PathBuf,
    /// Smart HTTP git with basic auth, when [`WorldOptions::git_auth`] is set.
    _http_git: Option<Server>,
    /// Where the controller's webhook receiver listens, when
    /// [`WorldOptions::webhook_secret`] is set.
    pub webhook_addr: Option<std::net::SocketAddr>,
    /// Whether the controller runs with leader election.
    leader_election: bool,
    scratch: Scratch,
}

/// A child process, killed (by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The controller binary against the namespace's control plane, output into `log`
/// (appended): the CodeSource controller only, watching only the test's namespace.
pub fn spawn_controller(
    controller: &Path,
    ns: &TestNamespace,
    log: &Path,
    webhook_addr: Option<std::net::SocketAddr>,
    leader_election: bool,
) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)?;
    let mut command = Command::new(controller);
    if let Some(addr) = webhook_addr {
        command.arg(format!("--webhook-addr={addr}"));
    }
    if leader_election {
        command.args([
            "--leader-election=true",
            "--leader-election-namespace",
            ns.name(),
        ]);
    }
    command
        .env("KUBECONFIG", ns.control_plane().kubeconfig())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .args(["--worker-image", WORKER_IMAGE, "--namespace", ns.name()])
        .args(["--enable-pool", "false", "--metrics-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", controller.display()))
}

fn puppetfile(daemon_port: u16) -> String {
    format!(
        "mod 'motd',\n  :git => 'git://127.0.0.1:{daemon_port}/modules/motd.git',\n  :branch => 'main'\n"
    )
}

/// Variations of the installation.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldOptions {
    /// Make the registry require this user and password (htpasswd), and give the
    /// CodeSource a `kubernetes.io/dockerconfigjson` push Secret with them.
    pub registry_auth: Option<(&'static str, &'static str)>,
    /// Extra tags (`spec.output.tags`) pushed with every build.
    pub tags: &'static [&'static str],
    /// Serve the control repository over smart HTTP with basic auth for this user and
    /// password (instead of git://), and give the CodeSource a git Secret with them.
    pub git_auth: Option<(&'static str, &'static str)>,
    /// Run the controller's webhook receiver and give the CodeSource a webhook Secret
    /// holding this shared secret.
    pub webhook_secret: Option<&'static str>,
    /// Run the controller with leader election (a Lease in the test namespace), as the
    /// chart does by default.
    pub leader_election: bool,
    /// Branches of the control repository and of the CodeSource; empty: production and
    /// staging.
    pub branches: &'static [&'static str],
    /// `spec.validate` of the CodeSource, as JSON.
    pub validate: Option<&'static str>,
}

/// The controller binary (`env!("CARGO_BIN_EXE_openvox-code-controller")` of the
/// calling test) and the worker binary built beside it.
pub fn binaries(controller: &str) -> Result<(PathBuf, PathBuf)> {
    let controller = PathBuf::from(controller);
    let worker = controller.with_file_name("openvox-code-worker");
    anyhow::ensure!(
        worker.is_file(),
        "{} is missing: run `cargo build -p openvox-code-worker` (make test does)",
        worker.display()
    );
    Ok((controller, worker))
}

/// A validator image whose `puppet` never answers (a stand-in for a validator that
/// hangs: its `puppet --version` works, validation sleeps).
pub const STUCK_VALIDATOR_IMAGE: &str = "stuck-validator:1";

impl World {
    /// Starts everything in `ns` with the given binaries and applies the Config and
    /// CodeSource; returns without waiting for the first build.
    pub async fn start(ns: TestNamespace, controller: &Path, worker: &Path) -> Result<Self> {
        Self::start_with(ns, controller, worker, WorldOptions::default()).await
    }

    /// [`World::start`] with options.
    pub async fn start_with(
        ns: TestNamespace,
        controller: &Path,
        worker: &Path,
        options: WorldOptions,
    ) -> Result<Self> {
        let scratch = Scratch::new();
        let repos = scratch.mkdir("repos");
        let daemon = git_daemon(&repos, scratch.path("git-daemon.log"));
        let module = Bare::init(&repos.join("modules/motd.git"));
        module.commit(
            "main",
            "motd module",
            &[
                (
                    "manifests/init.pp",
                    file("class motd { notify { 'hello from motd': } }\n"),
                ),
                (
                    "metadata.json",
                    file("{\"name\": \"example-motd\", \"version\": \"1.0.0\"}\n"),
                ),
            ],
        );
        // Below repos/private/ the HTTP server wants basic auth.
        let control_path = if options.git_auth.is_some() {
            "private/control.git"
        } else {
            "control.git"
        };
        let control = Bare::init(&repos.join(control_path));
        let http = options
            .git_auth
            .map(|(user, password)| http_git(&scratch, &repos, &[(user, password)], "unused"));
        let branches: &[&str] = if options.branches.is_empty() {
            &["production", "staging"]
        } else {
            options.branches
        };
        for branch in branches {
            control.commit(
                branch,
                "initial",
                &Self::tree(daemon.port, &format!("# {branch}")),
            );
        }
        let registry = TestRegistry::start(RegistrySettings {
            basic_auth: options.registry_auth,
            ..RegistrySettings::default()
        });
        let worker = worker.display().to_string();
        // The worker waits for the gate file before it starts (open unless a fault
        // test holds it), so a test can act while a build pod is running.
        let gate = scratch.path("worker-gate");
        std::fs::write(&gate, b"")?;
        let gate_text = gate.display().to_string();
        let wait_for_gate = "while [ ! -e \"$0\" ]; do sleep 0.1; done; exec \"$@\"";
        let stuck = scratch.mkdir("stuck-validator-bin");
        let stuck_puppet = stuck.join("puppet");
        std::fs::write(
            &stuck_puppet,
            "#!/bin/sh\ncase \"$1\" in --version) echo 0.0-stuck ;; *) sleep 600 ;; esac\n",
        )?;
        std::fs::set_permissions(
            &stuck_puppet,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let node = NodeSim::for_namespace_with(&ns, |c| {
            c.with_image(
                WORKER_IMAGE,
                &["/bin/sh", "-c", wait_for_gate, &gate_text, &worker],
            )
            .with_image_path(STUCK_VALIDATOR_IMAGE, &stuck)
        })
        .await?;

        let controller_log = scratch.path("controller.log");
        std::fs::File::create(&controller_log)?;
        let webhook_addr = options
            .webhook_secret
            .map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], free_port())));
        let child = spawn_controller(
            controller,
            &ns,
            &controller_log,
            webhook_addr,
            options.leader_election,
        )?;

        let repository = format!("{}/puppet/code", registry.host());
        let mut output = json!({"image": repository, "insecure": true});
        if !options.tags.is_empty() {
            output["tags"] = json!(options.tags);
        }
        if let Some((user, password)) = options.registry_auth {
            use base64::Engine as _;
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let config = json!({"auths": {registry.host(): {"auth": auth}}}).to_string();
            crate::apply::apply(
                ns.client(),
                Some(ns.name()),
                json!({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
                    "type": "kubernetes.io/dockerconfigjson",
                    "stringData": {".dockerconfigjson": config},
                }),
            )
            .await?;
            output["pushSecretRef"] = json!({"name": "regcred"});
        }
        crate::apply::apply(
            ns.client(),
            Some(ns.name()),
            json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Config",
                "metadata": {"name": NAME}, "spec": {"image": {"tag": "8.10.0"}},
            }),
        )
        .await?;
        let mut git = json!({"url": format!("git://127.0.0.1:{}/control.git", daemon.port),
                             "branches": branches});
        if let (Some((user, password)), Some(http)) = (options.git_auth, &http) {
            git["url"] = json!(format!("http://127.0.0.1:{}/git/{control_path}", http.port));
            git["secretRef"] = json!({"name": "git-auth"});
            crate::apply::apply(
                ns.client(),
                Some(ns.name()),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git-auth"},
                       "stringData": {"username": user, "password": password}}),
            )
            .await?;
        }
        let mut spec =
            json!({"configRef": NAME, "git": git, "schedule": "@hourly", "output": output});
        if let Some(validate) = options.validate {
            spec["validate"] = serde_json::from_str(validate)?;
        }
        if let Some(secret) = options.webhook_secret {
            let key = openvox_crds::names::WEBHOOK_SECRET_KEY;
            crate::apply::apply(
                ns.client(),
                Some(ns.name()),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "webhook"},
                       "stringData": {key: secret}}),
            )
            .await?;
            spec["webhook"] = json!({"secretRef": {"name": "webhook"}});
        }
        crate::apply::apply(
            ns.client(),
            Some(ns.name()),
            json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                   "metadata": {"name": NAME}, "spec": spec}),
        )
        .await?;
        Ok(Self {
            ns,
            repository,
            control,
            controller_log,
            daemon_port: daemon.port,
            daemon: Some(daemon),
            registry,
            node,
            controller: Some(Process(child)),
            controller_binary: controller.to_owned(),
            gate,
            _http_git: http,
            webhook_addr,
            leader_election: options.leader_election,
            scratch,
        })
    }

    /// Kills the controller process with SIGKILL (no graceful shutdown).
    pub fn kill_controller(&mut self) {
        drop(self.controller.take());
    }

    /// Starts the controller process again (after [`World::kill_controller`] or after
    /// it exited), appending to the same log, as a Deployment restarts its pod.
    pub fn start_controller(&mut self) -> Result<()> {
        drop(self.controller.take());
        let child = spawn_controller(
            &self.controller_binary,
            &self.ns,
            &self.controller_log,
            self.webhook_addr,
            self.leader_election,
        )?;
        self.controller = Some(Process(child));
        Ok(())
    }

    /// Whether the controller process is still running.
    pub fn controller_running(&mut self) -> bool {
        self.controller
            .as_mut()
            .is_some_and(|p| matches!(p.0.try_wait(), Ok(None)))
    }

    /// Stops the git daemon; the repositories stay.
    pub fn stop_git(&mut self) {
        drop(self.daemon.take());
    }

    /// Starts the git daemon again on its port.
    pub fn start_git(&mut self) {
        if self.daemon.is_none() {
            let repos = self.scratch.path("repos");
            let log = self.scratch.path("git-daemon.log");
            self.daemon = Some(git_daemon_at(&repos, self.daemon_port, log));
        }
    }

    /// New worker pods wait (running, before the worker starts) until
    /// [`World::release_workers`].
    pub fn hold_workers(&self) -> Result<()> {
        std::fs::remove_file(&self.gate).context("closing the worker gate")
    }

    /// Lets held and future worker pods run.
    pub fn release_workers(&self) -> Result<()> {
        std::fs::write(&self.gate, b"").context("opening the worker gate")
    }

    /// The files of a control repository branch: a Puppetfile with the git module
    /// `motd`, `environment.conf` and a site manifest ending in `comment`.
    pub fn tree(daemon_port: u16, comment: &str) -> Vec<(&'static str, crate::fixtures::Node)> {
        vec![
            ("Puppetfile", file(&puppetfile(daemon_port))),
            (
                "environment.conf",
                file("modulepath = site:modules:$basemodulepath\n"),
            ),
            (
                "manifests/site.pp",
                file(&format!("node default {{ include motd }} {comment}\n")),
            ),
        ]
    }

    /// Commits a change to `branch` of the control repository.
    pub fn commit(&self, branch: &str, comment: &str) -> String {
        self.control.commit(
            branch,
            comment,
            &Self::tree(self.daemon_port, &format!("# {comment}")),
        )
    }

    /// Asks the controller to look at the heads now (as a webhook would).
    pub async fn request_check(&self, value: &str) -> Result<()> {
        let codesources: Api<openvox_crds::CodeSource> = self.ns.api();
        let annotation = openvox_crds::names::annotations::CHECK_REQUESTED_AT;
        codesources
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {annotation: value}}})),
            )
            .await?;
        Ok(())
    }

    /// The image reference in the Config's `spec.code`, if any.
    pub async fn config_image(&self) -> Option<String> {
        let configs: Api<openvox_crds::operator::Config> = self.ns.api();
        let code = serde_json::to_value(configs.get_opt(NAME).await.ok()??.spec.code?).ok()?;
        let entry = if code.is_array() {
            code[0].clone()
        } else {
            code
        };
        entry["image"].as_str().map(str::to_owned)
    }

    /// Waits until the Config names an image other than `not`; fails at once with the
    /// worker's reason when the build fails.
    pub async fn wait_for_image(&self, not: Option<&str>, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let codesources: Api<openvox_crds::CodeSource> = self.ns.api();
        loop {
            if let Some(image) = self.config_image().await
                && Some(image.as_str()) != not
            {
                return Ok(image);
            }
            let status = codesources.get(NAME).await.ok().and_then(|c| c.status);
            if let Some(failed) = status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "BuildFailed" && c.status == "True")
            }) {
                bail!("the build failed: {}", failed.message);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no new image reached the Config in {timeout:?}; status: {}\ncontroller log:\n{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                    std::fs::read_to_string(&self.controller_log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Layer digests of `image`, in order (one per environment, by name).
    pub fn layers(image: &str) -> Result<Vec<String>> {
        Self::layer_field(image, "digest")
    }

    /// The media types of the layers of `image`, in order.
    pub fn layer_media_types(image: &str) -> Result<Vec<String>> {
        Self::layer_field(image, "mediaType")
    }

    /// One field of each layer descriptor of `image`'s manifest (read with skopeo).
    fn layer_field(image: &str, field: &str) -> Result<Vec<String>> {
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
            .map(|l| l[field].as_str().unwrap_or_default().to_owned())
            .collect())
    }
}
