//! Node simulation: there is no kubelet (and no scheduler) in the test control plane,
//! so this module plays both for the pods of Jobs. It registers a Node, binds each new
//! Job pod to it, runs the pod's containers as local processes and writes the pod
//! status back, so the real Job controller in kube-controller-manager sees Running,
//! Succeeded or Failed pods with real exit codes and completes or fails the Job.
//!
//! What is simulated and what is real is listed in `tests/README.md`.

mod disruption;
mod node;
mod pod;
mod ready_only;
mod volumes;

pub use disruption::{DisruptionReason, evict_like_cluster_autoscaler, mark_disrupted};

use crate::namespace::TestNamespace;
use anyhow::{Context as _, Result};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Label the Job controller puts on the pods of a Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Default name of the simulated node.
pub const DEFAULT_NODE_NAME: &str = "openvox-node-sim";

/// What the simulated node runs and where.
#[derive(Debug, Clone)]
pub struct NodeSimConfig {
    /// Name of the Node object pods are bound to.
    pub node_name: String,
    /// Namespaces whose Job pods this node runs; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Where pod directories (materialised volumes, logs, termination messages) go.
    pub work_dir: PathBuf,
    /// Image → local entrypoint (executable and fixed leading arguments). Used when a
    /// container has no `command`, in place of the image's ENTRYPOINT. Keys match the
    /// whole image reference or the repository without tag or digest.
    pub images: BTreeMap<String, Vec<String>>,
    /// Image → a directory of executables put first on the PATH of its containers:
    /// what the image's file system provides to a container that names a `command`
    /// (a host directory standing in for the image's `/usr/bin`). Keys match like
    /// `images`.
    pub image_paths: BTreeMap<String, PathBuf>,
    /// A label selector of pods that are not run, only made ready (bound, Running,
    /// Ready at once; deletions confirmed): the pods of Deployments in rollout tests.
    pub ready_only: Option<String>,
}

impl NodeSimConfig {
    /// A node running the Job pods of one namespace, with pod directories under
    /// `work_dir`.
    pub fn for_namespace(namespace: &str, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: DEFAULT_NODE_NAME.to_owned(),
            namespaces: vec![namespace.to_owned()],
            work_dir: work_dir.into(),
            images: BTreeMap::new(),
            image_paths: BTreeMap::new(),
            ready_only: None,
        }
    }

    /// Makes the pods matching `selector` ready without running them.
    pub fn with_ready_only(mut self, selector: &str) -> Self {
        self.ready_only = Some(selector.to_owned());
        self
    }

    /// Puts `dir` first on the PATH of containers of `image`.
    pub fn with_image_path(mut self, image: &str, dir: impl Into<PathBuf>) -> Self {
        self.image_paths.insert(image.to_owned(), dir.into());
        self
    }

    /// Adds an image → local executable mapping.
    pub fn with_image(mut self, image: &str, entrypoint: &[&str]) -> Self {
        self.images.insert(
            image.to_owned(),
            entrypoint.iter().map(|s| (*s).to_owned()).collect(),
        );
        self
    }
}

/// Shared by the watch loop and the pod tasks.
pub(crate) struct Context {
    pub client: Client,
    pub config: NodeSimConfig,
    /// host and port of the API server, given to processes as KUBERNETES_SERVICE_*.
    pub api_server: (String, u16),
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("api_server", &self.api_server)
            .finish()
    }
}

/// A running simulated node. Dropping it stops the simulation and kills the processes
/// it started.
#[derive(Debug)]
pub struct NodeSim {
    task: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    ready_only: Option<JoinHandle<()>>,
    work_dir: PathBuf,
    remove_work_dir: bool,
}

impl NodeSim {
    /// Registers the Node and starts running Job pods. Must be called inside a tokio
    /// runtime; the simulation runs on it until dropped.
    pub async fn start(kube_config: kube::Config, config: NodeSimConfig) -> Result<Self> {
        let api_server = (
            kube_config
                .cluster_url
                .host()
                .unwrap_or("127.0.0.1")
                .to_owned(),
            kube_config.cluster_url.port_u16().unwrap_or(443),
        );
        let client =
            Client::try_from(kube_config).context("building the node simulation's client")?;
        std::fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("creating {}", config.work_dir.display()))?;
        node::register(&client, &config.node_name).await?;
        let heartbeat = tokio::spawn(node::heartbeat(client.clone(), config.node_name.clone()));
        let work_dir = config.work_dir.clone();
        let context = Arc::new(Context {
            client,
            config,
            api_server,
        });
        let ready_only = context.config.ready_only.clone().map(|selector| {
            let context = context.clone();
            tokio::spawn(async move {
                if let Err(e) = ready_only::run(context, selector).await {
                    tracing::error!("node simulation (ready-only pods) stopped: {e:#}");
                }
            })
        });
        let task = tokio::spawn(async move {
            if let Err(e) = run(context).await {
                tracing::error!("node simulation stopped: {e:#}");
            }
        });
        Ok(Self {
            task,
            heartbeat,
            ready_only,
            work_dir,
            remove_work_dir: false,
        })
    }

    /// A node for the Job pods of one test namespace, its pod directories in the temp
    /// dir. They are removed when the node is dropped, unless the test is failing
    /// (panicking), so a failed test leaves its pod logs behind.
    pub async fn for_namespace(namespace: &TestNamespace) -> Result<Self> {
        Self::for_namespace_with(namespace, |config| config).await
    }

    /// Like [`NodeSim::for_namespace`], with the configuration adjusted by `configure`
    /// (for example to map images to local executables).
    pub async fn for_namespace_with(
        namespace: &TestNamespace,
        configure: impl FnOnce(NodeSimConfig) -> NodeSimConfig,
    ) -> Result<Self> {
        let work_dir = std::env::temp_dir()
            .join("openvox-code-e2e")
            .join(format!("node-sim-{}", namespace.name()));
        let config = configure(NodeSimConfig::for_namespace(namespace.name(), work_dir));
        let kube_config = namespace.control_plane().admin_config().await?;
        let mut sim = Self::start(kube_config, config).await?;
        sim.remove_work_dir = true;
        Ok(sim)
    }

    /// Where the pod directories are.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Log file of a container of a pod this node ran (stdout and stderr, appended
    /// across restarts).
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
        pod::find_pod_dir(&self.work_dir, namespace, pod)
            .map(|dir| dir.join(format!("{container}.log")))
    }

    /// Kills the processes of a running container with SIGKILL, as when a build pod's
    /// process is OOM-killed or crashes: the pod then ends Failed with exit code 137.
    /// Fails when the container is not running on this node.
    pub fn kill_container(&self, namespace: &str, pod: &str, container: &str) -> Result<()> {
        let dir = pod::find_pod_dir(&self.work_dir, namespace, pod)
            .with_context(|| format!("pod {namespace}/{pod} never ran on this node"))?;
        let pid_file = dir.join(format!("{container}.pid"));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("container {container} of {namespace}/{pod} is not running"))?
            .trim()
            .parse()
            .context("reading the container's PID")?;
        // The container is its own process group (see pod.rs): kill all of it.
        let status = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -KILL -{pid} failed: {status}");
        Ok(())
    }

    /// The log of a container, or an empty string when it has none yet.
    pub fn log(&self, namespace: &str, pod: &str, container: &str) -> String {
        self.log_path(namespace, pod, container)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }
}

impl Drop for NodeSim {
    fn drop(&mut self) {
        // Aborting drops the pod tasks' child handles, which kill their processes.
        self.task.abort();
        self.heartbeat.abort();
        if let Some(task) = &self.ready_only {
            task.abort();
        }
        if self.remove_work_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        } else if self.remove_work_dir {
            eprintln!(
                "node simulation: pod logs kept in {}",
                self.work_dir.display()
            );
        }
    }
}

/// A pod being run: its task and the switch that tells it the pod is being deleted.
struct Running {
    task: JoinHandle<()>,
    delete: watch::Sender<bool>,
}

/// The pods of the node's namespaces (all when none are given).
pub(crate) fn pod_apis(context: &Context) -> Vec<Api<Pod>> {
    if context.config.namespaces.is_empty() {
        return vec![Api::all(context.client.clone())];
    }
    context
        .config
        .namespaces
        .iter()
        .map(|ns| Api::namespaced(context.client.clone(), ns))
        .collect()
}

/// Watches Job pods and hands each to a task; passes deletions on to the tasks.
async fn run(context: Arc<Context>) -> Result<()> {
    let watch_config = watcher::Config::default().labels(JOB_NAME_LABEL);
    let mut events = stream::select_all(
        pod_apis(&context)
            .into_iter()
            .map(|api| watcher(api, watch_config.clone()).default_backoff().boxed()),
    );
    let mut running: HashMap<String, Running> = HashMap::new();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(pod)) => {
                // Gone for good (force-deleted or finalised): stop its processes.
                if let Some(uid) = pod.metadata.uid.as_deref()
                    && let Some(run) = running.get(uid)
                {
                    let _ = run.delete.send(true);
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("pod watch: {e}");
                continue;
            }
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match (node, deleting) {
            (None, false) if !running.contains_key(&uid) => {
                let (delete, deleted) = watch::channel(false);
                let task = tokio::spawn(pod::run_pod(context.clone(), pod, deleted));
                running.insert(uid, Running { task, delete });
            }
            (Some(node), true) if node == context.config.node_name => match running.get(&uid) {
                Some(run) if !run.task.is_finished() => {
                    let _ = run.delete.send(true);
                }
                // Nothing runs any more: confirm the deletion like a kubelet does.
                _ => confirm_deletion(&context.client, &pod).await,
            },
            _ => {}
        }
        running.retain(|_, run| !run.task.is_finished());
    }
    Ok(())
}

/// The kubelet's last word on a deleted pod: delete it with grace period 0.
pub(crate) async fn confirm_deletion(client: &Client, pod: &Pod) {
    let (Some(namespace), Some(name)) = (
        pod.metadata.namespace.as_deref(),
        pod.metadata.name.as_deref(),
    ) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(name, &params).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404)
    {
        tracing::warn!("confirming deletion of pod {namespace}/{name}: {e}");
    }
}

/// How long a pod is given between SIGTERM and SIGKILL when deleted, at most.
pub(crate) const MAX_GRACE: Duration = Duration::from_secs(10);
