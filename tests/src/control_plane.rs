//! A real Kubernetes control plane for the tests.
//!
//! `tests/scripts/cluster.sh run DIR` is started as a child process with a pipe as its
//! standard input. It prints the admin kubeconfig path once etcd, kube-apiserver and
//! kube-controller-manager are up and the CRDs are installed, then waits for EOF on
//! that pipe. The pipe's only write end lives in this process, so when the test binary
//! exits — normally, by panic or by SIGKILL — the kernel closes it, the supervisor sees
//! EOF and stops every process it started. No signal handler, no unsafe code.

use anyhow::{Context, Result, anyhow, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Set to the kubeconfig of a running control plane (for example the one `make
/// cluster-up` printed) to run the tests against it instead of starting one.
pub const KUBECONFIG_ENV: &str = "OPENVOX_CODE_KUBECONFIG";

/// Which shape of openvox-operator's `Config.spec.code` the installed fixture CRD has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigShape {
    /// `spec.code` is one object, with the operator's CEL rules: the shape of the
    /// operator's release the product was measured against.
    #[default]
    Single,
    /// `spec.code` is a list of entries (later releases).
    List,
}

/// Which Pool CRD the control plane has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolCrd {
    /// Ours (`crds/pools.yaml`).
    #[default]
    Ours,
    /// One shaped like openvox-operator's (`tests/fixtures/crds/pool-operator.yaml`),
    /// as its chart installs it.
    Operator,
    /// None.
    None,
}

impl PoolCrd {
    fn flag(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Operator => "operator",
            Self::None => "none",
        }
    }
}

impl ConfigShape {
    fn flag(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::List => "list",
        }
    }
}

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// Install the Gateway API TLSRoute CRD at start. Off: install it later with
    /// [`ControlPlane::install_gateway_api`], like an operator who adds it afterwards.
    pub gateway_api: bool,
    /// Which fixture CRD of openvox-operator's Config to install.
    pub config_shape: ConfigShape,
    /// Which Pool CRD to install.
    pub pool_crd: PoolCrd,
    /// Install our CodeSource CRD (off: a chart test installs it).
    pub codesource_crd: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateway_api: true,
            config_shape: ConfigShape::Single,
            pool_crd: PoolCrd::Ours,
            codesource_crd: true,
        }
    }
}

impl Options {
    /// A cluster as openvox-operator's chart leaves it: its CRDs (Config with the
    /// single-object `spec.code`, Server, Certificate, its own Pool), none of ours.
    pub fn operator_only() -> Self {
        Self {
            pool_crd: PoolCrd::Operator,
            codesource_crd: false,
            ..Self::default()
        }
    }
}

/// A running control plane: its admin kubeconfig, and the supervisor that stops it.
#[derive(Debug)]
pub struct ControlPlane {
    kubeconfig: PathBuf,
    /// Kept for its `Drop`, which stops the control plane.
    _supervisor: Option<Supervisor>,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static STARTED: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// The control plane shared by all tests of this test binary: started on first use
    /// with default [`Options`], or the one named by `$OPENVOX_CODE_KUBECONFIG`. It is
    /// stopped when the test binary exits.
    pub fn shared() -> Result<&'static ControlPlane> {
        SHARED
            .get_or_init(|| {
                let started = match std::env::var_os(KUBECONFIG_ENV) {
                    Some(path) if !path.is_empty() => Ok(Self::existing(PathBuf::from(path))),
                    _ => Self::start(&Options::default()),
                };
                started.map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("the shared control plane did not start: {e}"))
    }

    /// A control plane of its own (for tests that change cluster-wide things such as
    /// CRDs). It is stopped when the value is dropped, or when the test binary exits.
    /// Blocks until the API server is ready and the CRDs are installed.
    pub fn start(options: &Options) -> Result<ControlPlane> {
        // Ports are chosen free but not reserved, so another process can take one
        // between the choice and the bind; a fresh attempt picks new ports.
        let mut attempt = 1;
        loop {
            match Self::start_once(options) {
                Err(e) if attempt < 3 => {
                    eprintln!("control plane start {attempt} failed, trying again: {e:#}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(options: &Options) -> Result<ControlPlane> {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir()
            .join("openvox-code-e2e")
            .join(format!("cluster-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = dir.join("supervisor.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;

        let mut command = Command::new("bash");
        command
            .arg(scripts_dir().join("cluster.sh"))
            .arg("run")
            .arg(&dir)
            .arg("--remove-on-exit")
            .arg("--config-shape")
            .arg(options.config_shape.flag())
            .arg("--pool-crd")
            .arg(options.pool_crd.flag());
        if !options.codesource_crd {
            command.arg("--no-codesource-crd");
        }
        if !options.gateway_api {
            command.arg("--no-gateway-api");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting tests/scripts/cluster.sh run")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let mut supervisor = Supervisor {
            child,
            commands: std::sync::Mutex::new((stdin, None)),
        };

        let mut line = String::new();
        if let Some(stdout) = stdout {
            let mut reader = BufReader::new(stdout);
            reader
                .read_line(&mut line)
                .context("reading the supervisor's output")?;
            if let Ok(pipes) = supervisor.commands.get_mut() {
                pipes.1 = Some(reader.into_inner());
            }
        }
        let kubeconfig = PathBuf::from(line.trim());
        if line.trim().is_empty() || !kubeconfig.is_file() {
            let status = supervisor.child.wait().ok();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the control plane did not start (supervisor exit: {status:?}); logs in {}:\n{}",
                dir.display(),
                tail.join("\n")
            );
        }
        Ok(ControlPlane {
            kubeconfig,
            _supervisor: Some(supervisor),
        })
    }

    /// A control plane somebody else runs; never stopped by us.
    pub fn existing(kubeconfig: PathBuf) -> ControlPlane {
        ControlPlane {
            kubeconfig,
            _supervisor: None,
        }
    }

    /// Path of the admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Client configuration of the cluster admin.
    pub async fn admin_config(&self) -> Result<kube::Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("building a client configuration from the admin kubeconfig")
    }

    /// A client with cluster-admin rights. Make one per tokio runtime (per test): a
    /// client's background tasks belong to the runtime it was made on.
    pub async fn admin_client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.admin_config().await?).context("building the admin client")
    }

    /// A client authenticated by a bearer token (for example a ServiceAccount token from
    /// the TokenRequest API), trusting the cluster CA and nothing else.
    pub async fn token_client(&self, token: &str) -> Result<kube::Client> {
        let admin = self.admin_config().await?;
        let mut config = kube::Config::new(admin.cluster_url.clone());
        config.root_cert = admin.root_cert.clone();
        config.auth_info.token = Some(token.to_owned().into());
        kube::Client::try_from(config).context("building a token client")
    }

    /// `kubectl` (the one tests/scripts/install-kubectl-helm.sh installed, or
    /// `$OPENVOX_CODE_KUBECTL`) pointed at this control plane as admin.
    pub fn kubectl(&self) -> Result<Command> {
        let mut command = Command::new(crate::tools::kubectl_path()?);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        Ok(command)
    }

    /// Installs the Gateway API TLSRoute CRD (the upstream YAML, cached from the Go
    /// module) into a control plane started without it, and waits until it is served.
    pub async fn install_gateway_api(&self, client: &kube::Client) -> Result<()> {
        let output = Command::new("bash")
            .arg(scripts_dir().join("cluster.sh"))
            .arg("fetch-gateway-api")
            .stderr(Stdio::inherit())
            .output()
            .context("running cluster.sh fetch-gateway-api")?;
        if !output.status.success() {
            bail!("cluster.sh fetch-gateway-api failed: {}", output.status);
        }
        let path = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let yaml = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        crate::apply::apply_yaml(client, None, &yaml).await?;
        crate::apply::wait_for_crd(
            client,
            "tlsroutes.gateway.networking.k8s.io",
            Duration::from_secs(60),
        )
        .await
    }
}

impl ControlPlane {
    /// Stops this control plane's kube-apiserver, leaving etcd and the
    /// controller-manager running (a fault test's API server outage). Only for a control
    /// plane from [`ControlPlane::start`]; blocks until the process is gone.
    pub fn stop_apiserver(&self) -> Result<()> {
        self.supervisor_command("stop-apiserver")
    }

    /// Starts the kube-apiserver stopped by [`ControlPlane::stop_apiserver`] again, with
    /// the same flags, port and certificates; blocks until `/readyz` answers ok.
    pub fn start_apiserver(&self) -> Result<()> {
        self.supervisor_command("start-apiserver")
    }

    /// Sends one command line to the supervisor and reads its one-line answer.
    fn supervisor_command(&self, command: &str) -> Result<()> {
        use std::io::{Read as _, Write as _};
        let supervisor = self
            ._supervisor
            .as_ref()
            .context("this control plane is not ours (started elsewhere or shared)")?;
        let mut pipes = supervisor
            .commands
            .lock()
            .map_err(|_| anyhow!("a supervisor command panicked"))?;
        let (stdin, stdout) = &mut *pipes;
        let stdin = stdin.as_mut().context("the supervisor's input is closed")?;
        let stdout = stdout
            .as_mut()
            .context("the supervisor's output is closed")?;
        writeln!(stdin, "{command}").context("writing to the supervisor")?;
        stdin.flush()?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while stdout
            .read(&mut byte)
            .context("reading the supervisor's answer")?
            == 1
        {
            if byte[0] == b'\n' {
                break;
            }
            answer.push(byte[0]);
        }
        let answer = String::from_utf8_lossy(&answer);
        match answer.trim() {
            "ok" => Ok(()),
            "" => bail!("{command}: the supervisor exited"),
            other => bail!("{command}: {other}"),
        }
    }
}

/// The `cluster.sh run` child. Dropping it closes the pipe, which stops the control
/// plane, and waits (bounded) for the supervisor to finish stopping it.
#[derive(Debug)]
struct Supervisor {
    child: Child,
    /// Its standard input (whose EOF stops it; also carries fault-test commands) and
    /// standard output (their answers).
    commands: std::sync::Mutex<(Option<ChildStdin>, Option<ChildStdout>)>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let pipes = self.commands.get_mut().unwrap_or_else(|e| e.into_inner());
        drop(pipes.0.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        // The processes it started die with it (parent-death signal).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/scripts` of this checkout.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The repository root of this checkout.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
