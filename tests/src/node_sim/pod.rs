//! One pod on the simulated node: bind it, materialise its volumes, run its init
//! containers in order and then its containers side by side as local processes, and
//! report every step in the pod status the way a kubelet does.

use super::volumes::{Mounts, container_mounts, field_value, materialise};
use super::{Context, MAX_GRACE, confirm_deletion};
use crate::time::now;
use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Directory of the most recent run of pod `namespace/pod` under `work_dir`.
pub(crate) fn find_pod_dir(work_dir: &Path, namespace: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{pod}_");
    std::fs::read_dir(work_dir.join("pods"))
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
}

/// Runs one pod to its end; errors are logged, the pod is left as the API has it.
pub(crate) async fn run_pod(context: Arc<Context>, pod: Pod, deleted: watch::Receiver<bool>) {
    let id = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    match PodRun::new(context, pod, deleted) {
        Ok(run) => {
            if let Err(e) = run.run().await {
                tracing::warn!("node simulation, pod {id}: {e:#}");
            }
        }
        Err(e) => tracing::warn!("node simulation, pod {id}: {e:#}"),
    }
}

/// Status writes that fail for want of an API server are retried every 0.5 s, this
/// many times (two minutes).
const STATUS_TRIES: u32 = 240;

/// How one run of a container ended.
#[derive(Debug, Clone)]
struct Outcome {
    exit_code: i32,
    reason: &'static str,
    message: String,
    started_at: Value,
    finished_at: Value,
}

struct PodRun {
    context: Arc<Context>,
    pod: Pod,
    api: Api<Pod>,
    name: String,
    uid: String,
    dir: PathBuf,
    deleted: watch::Receiver<bool>,
    /// Last reported status of every container (init containers under "init:" keys).
    statuses: Mutex<BTreeMap<String, Value>>,
    start_time: Value,
}

impl PodRun {
    fn new(context: Arc<Context>, pod: Pod, deleted: watch::Receiver<bool>) -> Result<Self> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .ok_or_else(|| anyhow!("pod without namespace"))?;
        let name = pod
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("pod without name"))?;
        let uid = pod
            .metadata
            .uid
            .clone()
            .ok_or_else(|| anyhow!("pod without uid"))?;
        let dir = context
            .config
            .work_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        let api = Api::namespaced(context.client.clone(), &namespace);
        Ok(Self {
            context,
            pod,
            api,
            name,
            uid,
            dir,
            deleted,
            statuses: Mutex::new(BTreeMap::new()),
            start_time: serde_json::to_value(now())?,
        })
    }

    fn spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        static EMPTY: std::sync::OnceLock<k8s_openapi::api::core::v1::PodSpec> =
            std::sync::OnceLock::new();
        self.pod
            .spec
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    fn is_deleted(&self) -> bool {
        *self.deleted.borrow()
    }

    async fn run(mut self) -> Result<()> {
        if !self.bind().await? {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join("termination"))
            .with_context(|| format!("creating {}", self.dir.display()))?;
        if let Some(spec) = self.pod.spec.as_mut() {
            spec.node_name = Some(self.context.config.node_name.clone());
        }
        let init_containers = self.spec().init_containers.clone().unwrap_or_default();
        let containers = self.spec().containers.clone();
        for container in &init_containers {
            self.set_status(
                &init_key(container),
                waiting(container, "PodInitializing", "", 0),
            );
        }
        for container in &containers {
            self.set_status(
                &container.name,
                waiting(container, "ContainerCreating", "", 0),
            );
        }
        self.report("Pending", false).await?;

        // Volumes, retried like the kubelet's FailedMount until they can be set up.
        let volumes = loop {
            match materialise(&self.context, &self.pod, &self.dir).await {
                Ok(volumes) => break volumes,
                Err(e) => {
                    let message = format!("MountVolume.SetUp failed: {e:#}");
                    for container in &containers {
                        self.set_status(
                            &container.name,
                            waiting(container, "ContainerCreating", &message, 0),
                        );
                    }
                    self.report("Pending", false).await?;
                    if self.sleep_unless_deleted(Duration::from_secs(1)).await {
                        return self.end_deleted().await;
                    }
                }
            }
        };

        // Native sidecars (init containers with `restartPolicy: Always`) run beside
        // the others and are stopped once the regular containers have ended; the
        // pod's phase is reported after that, as a kubelet does.
        let (sidecars, init_containers): (Vec<Container>, Vec<Container>) = init_containers
            .into_iter()
            .partition(|c| c.restart_policy.as_deref() == Some("Always"));
        let (stop_sidecars, sidecars_stop) = watch::channel(false);
        let sidecar_runs = futures::future::join_all(
            sidecars
                .iter()
                .map(|c| self.run_sidecar(c, &volumes, sidecars_stop.clone())),
        );
        let main = async {
            let phase = self.run_main(&init_containers, &containers, &volumes).await;
            let _ = stop_sidecars.send(true);
            phase
        };
        let (sidecar_results, phase) = tokio::join!(sidecar_runs, main);
        for result in sidecar_results {
            result?;
        }
        self.report(phase?, false).await?;
        self.end_if_deleted().await
    }

    /// Runs the init containers in order, then the regular containers side by side;
    /// returns the pod's phase.
    async fn run_main(
        &self,
        init_containers: &[Container],
        containers: &[Container],
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<&'static str> {
        for container in init_containers {
            let outcome = self
                .run_container(container, &init_key(container), volumes)
                .await?;
            match outcome {
                Some(outcome) if outcome.exit_code == 0 => {}
                _ => {
                    // A failed init container fails the pod (restartPolicy Never) or the
                    // pod was deleted while it ran.
                    for container in containers {
                        self.set_status(
                            &container.name,
                            waiting(container, "PodInitializing", "", 0),
                        );
                    }
                    return Ok("Failed");
                }
            }
        }

        let runs = containers
            .iter()
            .map(|c| self.run_container(c, &c.name, volumes));
        let outcomes = futures::future::join_all(runs).await;
        let mut succeeded = true;
        for outcome in outcomes {
            succeeded &= matches!(outcome?, Some(o) if o.exit_code == 0);
        }
        Ok(if succeeded { "Succeeded" } else { "Failed" })
    }

    /// Runs a native sidecar until `stop` (or the pod's deletion), restarting it
    /// whenever it exits before that (its `restartPolicy` is Always).
    async fn run_sidecar(
        &self,
        container: &Container,
        volumes: &BTreeMap<String, PathBuf>,
        stop: watch::Receiver<bool>,
    ) -> Result<()> {
        let key = init_key(container);
        let mut restart_count = 0;
        loop {
            let outcome = self
                .run_once(container, &key, volumes, restart_count, Some(stop.clone()))
                .await?;
            if outcome.is_none() || *stop.borrow() || self.is_deleted() {
                return Ok(());
            }
            restart_count += 1;
            let mut stopped = stop.clone();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = wait_for_deletion(&mut stopped) => return Ok(()),
            }
        }
    }

    /// What the scheduler does: bind the pod to our node. False when somebody else
    /// bound it first or it is gone.
    async fn bind(&self) -> Result<bool> {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": self.name, "uid": self.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.context.config.node_name},
        });
        match self
            .api
            .create_subresource::<_, Value>("binding", &self.name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if [404, 409].contains(&status.code) => Ok(false),
            Err(e) => Err(e).context("binding the pod to the simulated node"),
        }
    }

    /// Runs a container until it succeeds, fails for good (restartPolicy) or the pod is
    /// deleted. `None`: deleted before it could start.
    async fn run_container(
        &self,
        container: &Container,
        key: &str,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<Option<Outcome>> {
        let restart_on_failure = self.spec().restart_policy.as_deref() == Some("OnFailure");
        let mut restart_count = 0;
        loop {
            let Some(outcome) = self
                .run_once(container, key, volumes, restart_count, None)
                .await?
            else {
                return Ok(None);
            };
            if outcome.exit_code == 0 || !restart_on_failure || self.is_deleted() {
                return Ok(Some(outcome));
            }
            restart_count += 1;
            let backoff = Duration::from_secs(1 << restart_count.min(3));
            if self.sleep_unless_deleted(backoff).await {
                return Ok(Some(outcome));
            }
        }
    }

    async fn run_once(
        &self,
        container: &Container,
        key: &str,
        volumes: &BTreeMap<String, PathBuf>,
        restart_count: i32,
        stop: Option<watch::Receiver<bool>>,
    ) -> Result<Option<Outcome>> {
        let termination_file = self.dir.join("termination").join(&container.name);
        std::fs::write(&termination_file, b"")?;
        let mounts = container_mounts(container, volumes, &termination_file)?;

        // Configuration errors (a missing Secret key, an unknown image) keep the
        // container waiting, as they do on a real node, until the pod is deleted.
        let (env, argv) = loop {
            let prepared = match self.environment(container, &mounts).await {
                Ok(env) => self
                    .command_line(container, &env, &mounts)
                    .map(|argv| (env, argv)),
                Err(e) => Err(("CreateContainerConfigError", format!("{e:#}"))),
            };
            match prepared {
                Ok(prepared) => break prepared,
                Err((reason, message)) => {
                    self.set_status(key, waiting(container, reason, &message, restart_count));
                    self.report("Pending", false).await?;
                    if self.sleep_unless_deleted(Duration::from_secs(1)).await {
                        return Ok(None);
                    }
                }
            }
        };
        if self.is_deleted() {
            return Ok(None);
        }

        let work_dir = match container
            .working_dir
            .as_deref()
            .and_then(|w| mounts.host_path(w))
        {
            Some(dir) => dir,
            None => self.dir.join("workdir").join(&container.name),
        };
        std::fs::create_dir_all(&work_dir)?;
        let log_path = self.dir.join(format!("{}.log", container.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let started_at = serde_json::to_value(now())?;
        let spawned = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(env)
            .current_dir(&work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            // Its own process group, so stopping the container stops every process
            // in it, as a runtime stops a container's cgroup.
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                // What a runtime reports when the entrypoint cannot be executed.
                let outcome = Outcome {
                    exit_code: 128,
                    reason: "StartError",
                    message: format!("exec {:?}: {e}", argv[0]),
                    started_at: started_at.clone(),
                    finished_at: started_at,
                };
                self.set_status(key, terminated(container, &outcome, restart_count));
                return Ok(Some(outcome));
            }
        };
        let group = ProcessGroup(child.id());
        // The process group for fault tests (`NodeSim::kill_container`); removed when
        // the container ends, so a recycled PID is never signalled.
        let pid_file = self.dir.join(format!("{}.pid", container.name));
        if let Some(pid) = child.id() {
            std::fs::write(&pid_file, pid.to_string())?;
        }
        self.set_status(key, running(container, &started_at, restart_count));
        self.report("Running", !key.starts_with("init:")).await?;

        let mut deleted = self.deleted.clone();
        let stopping = async {
            match stop {
                Some(mut stop) => wait_for_deletion(&mut stop).await,
                None => std::future::pending().await,
            }
        };
        let status = tokio::select! {
            status = child.wait() => status?,
            () = async {
                tokio::select! {
                    () = wait_for_deletion(&mut deleted) => {}
                    () = stopping => {}
                }
            } => {
                let grace = self.spec().termination_grace_period_seconds.unwrap_or(30);
                let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0)).min(MAX_GRACE);
                group.signal("TERM");
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        group.signal("KILL");
                        child.kill().await?;
                        child.wait().await?
                    }
                }
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        let exit_code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
        let message = termination_message(container, &termination_file, &log_path, exit_code);
        let outcome = Outcome {
            exit_code,
            reason: if exit_code == 0 { "Completed" } else { "Error" },
            message,
            started_at,
            finished_at: serde_json::to_value(now())?,
        };
        self.set_status(key, terminated(container, &outcome, restart_count));
        Ok(Some(outcome))
    }

    /// The process environment: what a container gets from the kubelet (service
    /// variables of the API server, HOSTNAME), then `envFrom`, then `env` in order with
    /// `$(VAR)` expansion; values under a volume mount rewritten to host paths. The
    /// host's own environment is not passed on, except PATH.
    async fn environment(
        &self,
        container: &Container,
        mounts: &Mounts,
    ) -> Result<Vec<(String, String)>> {
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or_default();
        let (host, port) = &self.context.api_server;
        let host_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
        let image = container.image.as_deref().unwrap_or_default();
        let path = match lookup_image(&self.context.config.image_paths, image) {
            Some(dir) => format!("{}:{host_path}", dir.display()),
            None => host_path,
        };
        let mut env: Vec<(String, String)> = vec![
            ("PATH".to_owned(), path),
            (
                "HOME".to_owned(),
                self.dir.join("home").display().to_string(),
            ),
            ("HOSTNAME".to_owned(), self.name.clone()),
            ("KUBERNETES_SERVICE_HOST".to_owned(), host.clone()),
            ("KUBERNETES_SERVICE_PORT".to_owned(), port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), port.to_string()),
            ("KUBERNETES_PORT".to_owned(), format!("tcp://{host}:{port}")),
        ];
        std::fs::create_dir_all(self.dir.join("home"))?;
        // In a pod, client libraries find the API server through the service variables
        // and the token + CA mounted at a fixed path. A host process cannot have that
        // path, so it gets a kubeconfig naming the same token file and CA instead.
        if let Some(account) = mounts.host_path(SERVICE_ACCOUNT_DIR) {
            let kubeconfig = self.dir.join("kubeconfig");
            std::fs::write(
                &kubeconfig,
                service_account_kubeconfig(host, *port, &account),
            )?;
            env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
        }
        let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        };
        for source in container.env_from.as_deref().unwrap_or_default() {
            let prefix = source.prefix.clone().unwrap_or_default();
            let data = if let Some(secret) = &source.secret_ref {
                self.secret(namespace, &secret.name, secret.optional.unwrap_or(false))
                    .await?
            } else if let Some(config_map) = &source.config_map_ref {
                self.config_map(
                    namespace,
                    &config_map.name,
                    config_map.optional.unwrap_or(false),
                )
                .await?
            } else {
                BTreeMap::new()
            };
            for (key, value) in data {
                set(&mut env, format!("{prefix}{key}"), mounts.rewrite(&value));
            }
        }
        for var in container.env.as_deref().unwrap_or_default() {
            let value = if let Some(value) = &var.value {
                Some(expand(value, &env))
            } else if let Some(from) = &var.value_from {
                if let Some(key) = &from.secret_key_ref {
                    let data = self
                        .secret(namespace, &key.name, key.optional.unwrap_or(false))
                        .await?;
                    match data.get(&key.key) {
                        Some(value) => Some(value.clone()),
                        None if key.optional.unwrap_or(false) => None,
                        None => bail!(
                            "couldn't find key {} in Secret {namespace}/{}",
                            key.key,
                            key.name
                        ),
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    let data = self
                        .config_map(namespace, &key.name, key.optional.unwrap_or(false))
                        .await?;
                    match data.get(&key.key) {
                        Some(value) => Some(value.clone()),
                        None if key.optional.unwrap_or(false) => None,
                        None => bail!(
                            "couldn't find key {} in ConfigMap {namespace}/{}",
                            key.key,
                            key.name
                        ),
                    }
                } else if let Some(field) = &from.field_ref {
                    let mut pod = self.pod.clone();
                    if let Some(spec) = pod.spec.as_mut() {
                        spec.node_name = Some(self.context.config.node_name.clone());
                    }
                    field_value(&pod, &field.field_path)
                } else {
                    // Resource fields (limits, requests) are not simulated.
                    Some(String::new())
                }
            } else {
                Some(String::new())
            };
            if let Some(value) = value {
                set(&mut env, var.name.clone(), mounts.rewrite(&value));
            }
        }
        Ok(env)
    }

    /// The argv the kubelet would run: `command` + `args`, or, without `command`, the
    /// caller's stand-in for the image's entrypoint + `args`.
    fn command_line(
        &self,
        container: &Container,
        env: &[(String, String)],
        mounts: &Mounts,
    ) -> Result<Vec<String>, (&'static str, String)> {
        let in_container = |words: &[String]| -> Vec<String> {
            words
                .iter()
                .map(|a| mounts.rewrite(&expand(a, env)))
                .collect()
        };
        let args = in_container(container.args.as_deref().unwrap_or_default());
        let mut argv = match container.command.as_ref().filter(|c| !c.is_empty()) {
            Some(command) => in_container(command),
            // A host path that stands in for the image: never rewritten, even when it
            // lies under a directory the pod mounts a volume at (such as /tmp).
            None => {
                let image = container.image.as_deref().unwrap_or_default();
                match lookup_image(&self.context.config.images, image) {
                    Some(entrypoint) if !entrypoint.is_empty() => entrypoint.clone(),
                    _ => {
                        return Err((
                            "ErrImagePull",
                            format!(
                                "node simulation: no local executable for image {image:?} (container {} has no command)",
                                container.name
                            ),
                        ));
                    }
                }
            }
        };
        argv.extend(args);
        Ok(argv)
    }

    async fn secret(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<BTreeMap<String, String>> {
        let api: Api<Secret> = Api::namespaced(self.context.client.clone(), namespace);
        match api.get_opt(name).await? {
            Some(secret) => Ok(secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()),
            None if optional => Ok(BTreeMap::new()),
            None => bail!("secret \"{name}\" not found"),
        }
    }

    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<BTreeMap<String, String>> {
        let api: Api<ConfigMap> = Api::namespaced(self.context.client.clone(), namespace);
        match api.get_opt(name).await? {
            Some(config_map) => Ok(config_map.data.unwrap_or_default()),
            None if optional => Ok(BTreeMap::new()),
            None => bail!("configmap \"{name}\" not found"),
        }
    }

    fn set_status(&self, key: &str, status: Value) {
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.insert(key.to_owned(), status);
        }
    }

    /// Writes the pod status: phase, conditions and every container's state.
    /// Strategic merge keeps conditions others added (DisruptionTarget).
    async fn report(&self, phase: &str, ready: bool) -> Result<()> {
        let (init_statuses, statuses): (Vec<Value>, Vec<Value>) = {
            let statuses = self
                .statuses
                .lock()
                .map_err(|_| anyhow!("status lock poisoned"))?;
            let spec = self.spec();
            let init = spec
                .init_containers
                .iter()
                .flatten()
                .filter_map(|c| statuses.get(&init_key(c)).cloned())
                .collect();
            let main = spec
                .containers
                .iter()
                .filter_map(|c| statuses.get(&c.name).cloned())
                .collect();
            (init, main)
        };
        let now = serde_json::to_value(now())?;
        let terminal = phase == "Succeeded" || phase == "Failed";
        let initialized = phase != "Pending"
            || init_statuses
                .iter()
                .all(|s| s["state"]["terminated"]["exitCode"] == json!(0));
        let condition = |type_: &str, status: bool, reason: Option<&str>| {
            let mut c = json!({"type": type_, "status": if status { "True" } else { "False" }, "lastTransitionTime": now});
            if let Some(reason) = reason {
                c["reason"] = json!(reason);
            }
            c
        };
        let not_ready_reason = if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let mut status = json!({
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": [
                condition("PodReadyToStartContainers", !terminal, None),
                condition("Initialized", initialized, if initialized { None } else { Some("ContainersNotInitialized") }),
                condition("ContainersReady", ready, if ready { None } else { Some(not_ready_reason) }),
                condition("Ready", ready, if ready { None } else { Some(not_ready_reason) }),
                condition("PodScheduled", true, None),
            ],
            "containerStatuses": statuses,
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = Value::from(init_statuses);
        }
        // Like a kubelet, keep trying while the API server is unreachable (a fault test
        // restarts it): a pod whose end is never reported would look running forever.
        let patch = Patch::Strategic(json!({"status": status}));
        let mut tries = 0;
        loop {
            match self
                .api
                .patch_status(&self.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code < 500 => {
                    return Err(kube::Error::Api(status))
                        .with_context(|| format!("writing status {phase}"));
                }
                Err(e) if tries >= STATUS_TRIES => {
                    return Err(e).with_context(|| format!("writing status {phase}"));
                }
                Err(e) => {
                    tracing::warn!("pod {}: writing status {phase}: {e}; retrying", self.name);
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Sleeps; true when the pod was deleted meanwhile.
    async fn sleep_unless_deleted(&self, duration: Duration) -> bool {
        let mut deleted = self.deleted.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => self.is_deleted(),
            () = wait_for_deletion(&mut deleted) => true,
        }
    }

    /// The pod was deleted before its containers ran: fail it and confirm.
    async fn end_deleted(&self) -> Result<()> {
        self.report("Failed", false).await?;
        confirm_deletion(&self.context.client, &self.pod).await;
        Ok(())
    }

    async fn end_if_deleted(&self) -> Result<()> {
        if self.is_deleted() {
            confirm_deletion(&self.context.client, &self.pod).await;
        }
        Ok(())
    }
}

/// The process group of a running container. Dropping it (the container ended, or
/// the simulation was stopped mid-run) kills whatever is left in the group.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn signal(&self, signal: &str) {
        if let Some(pid) = self.0 {
            // `kill -SIG -- -PGID` signals the whole group; no unsafe code needed.
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), "--".to_owned(), format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal("KILL");
    }
}

/// Waits until the flag (pod deleted, sidecars stopped) is true.
async fn wait_for_deletion(deleted: &mut watch::Receiver<bool>) {
    while !*deleted.borrow_and_update() {
        if deleted.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn init_key(container: &Container) -> String {
    format!("init:{}", container.name)
}

fn base_status(container: &Container, restart_count: i32) -> Value {
    json!({
        "name": container.name,
        "image": container.image.clone().unwrap_or_default(),
        "imageID": "",
        "restartCount": restart_count,
        "ready": false,
        "started": false,
    })
}

fn waiting(container: &Container, reason: &str, message: &str, restart_count: i32) -> Value {
    let mut status = base_status(container, restart_count);
    status["state"] = json!({"waiting": {"reason": reason}});
    if !message.is_empty() {
        status["state"]["waiting"]["message"] = json!(message);
    }
    status
}

fn running(container: &Container, started_at: &Value, restart_count: i32) -> Value {
    let mut status = base_status(container, restart_count);
    status["state"] = json!({"running": {"startedAt": started_at}});
    status["ready"] = json!(true);
    status["started"] = json!(true);
    status["containerID"] = json!(format!("openvox-node-sim://{}", container.name));
    status
}

fn terminated(container: &Container, outcome: &Outcome, restart_count: i32) -> Value {
    let mut status = base_status(container, restart_count);
    let mut state = json!({
        "exitCode": outcome.exit_code,
        "reason": outcome.reason,
        "startedAt": outcome.started_at,
        "finishedAt": outcome.finished_at,
        "containerID": format!("openvox-node-sim://{}", container.name),
    });
    if !outcome.message.is_empty() {
        state["message"] = json!(outcome.message);
    }
    status["state"] = json!({"terminated": state});
    status["containerID"] = json!(format!("openvox-node-sim://{}", container.name));
    status
}

/// The termination message the kubelet reports: the file at terminationMessagePath
/// (at most 4096 bytes), or with `FallbackToLogsOnError` and a failure, the log tail
/// (at most 80 lines and 2048 bytes).
fn termination_message(container: &Container, file: &Path, log: &Path, exit_code: i32) -> String {
    let read_capped = |path: &Path, cap: u64, from_end: bool| -> Option<String> {
        let mut file = std::fs::File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        if from_end && len > cap {
            file.seek(SeekFrom::Start(len - cap)).ok()?;
        }
        let mut bytes = Vec::new();
        file.take(cap).read_to_end(&mut bytes).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    };
    let message = read_capped(file, 4096, false).unwrap_or_default();
    let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if message.is_empty() && fallback && exit_code != 0 {
        let tail = read_capped(log, 2048, true).unwrap_or_default();
        let lines: Vec<&str> = tail.lines().collect();
        return lines[lines.len().saturating_sub(80)..].join("\n");
    }
    message
}

/// The entrypoint mapped to `image`: by the whole reference, then by the repository
/// without digest, then without tag.
fn lookup_image<'a, T>(images: &'a BTreeMap<String, T>, image: &str) -> Option<&'a T> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let without_tag = match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    images
        .get(image)
        .or_else(|| images.get(without_digest))
        .or_else(|| images.get(without_tag))
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal
/// `$`, and references to undefined variables are left as written.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(after_escape) = after.strip_prefix('$') {
            out.push('$');
            rest = after_escape;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(close) = reference.find(')')
        {
            let name = &reference[..close];
            match env.iter().rev().find(|(n, _)| n == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &reference[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Where the kubelet mounts a pod's service-account token, CA and namespace.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A kubeconfig that authenticates like in-cluster configuration would: the pod's
/// projected token file and the cluster CA, against the API server's address.
fn service_account_kubeconfig(host: &str, port: u16, account: &Path) -> String {
    let namespace = std::fs::read_to_string(account.join("namespace")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: in-cluster\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority: {ca}\nusers:\n- name: service-account\n  user:\n    tokenFile: {token}\ncontexts:\n- name: in-cluster\n  context:\n    cluster: in-cluster\n    user: service-account\n    namespace: {namespace}\ncurrent-context: in-cluster\n",
        ca = account.join("ca.crt").display(),
        token = account.join("token").display(),
        namespace = namespace.trim(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn variable_references_expand_like_kubernetes() {
        let env = env(&[("A", "x"), ("B", "y")]);
        assert_eq!(expand("$(A)-$(B)", &env), "x-y");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(UNDEFINED)", &env), "$(UNDEFINED)");
        assert_eq!(expand("cost: $5 $(A", &env), "cost: $5 $(A");
        assert_eq!(expand("$$$(A)", &env), "$x");
    }

    #[test]
    fn images_match_by_reference_then_repository() {
        let images = BTreeMap::from([
            (
                "registry:5000/worker".to_owned(),
                vec!["/bin/worker".to_owned()],
            ),
            ("exact:1".to_owned(), vec!["/bin/exact".to_owned()]),
        ]);
        assert_eq!(lookup_image(&images, "exact:1").unwrap()[0], "/bin/exact");
        assert_eq!(
            lookup_image(&images, "registry:5000/worker:v2").unwrap()[0],
            "/bin/worker"
        );
        assert_eq!(
            lookup_image(&images, "registry:5000/worker@sha256:ab").unwrap()[0],
            "/bin/worker"
        );
        assert_eq!(
            lookup_image(&images, "registry:5000/worker:v2@sha256:ab").unwrap()[0],
            "/bin/worker"
        );
        assert!(lookup_image(&images, "exact:2").is_none());
    }
}
