//! Runs the Pool controller only while it should (see `ownership`): the Pool CRD is
//! read at start and every `crd_poll`, so installing openvox-operator (its CRD
//! replaces ours) or removing it is noticed without a restart. Each change is said
//! once: a log line, the `openvox_code_pool_controller_running` gauge, and an Event on
//! the controller's pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{EventType, Recorder, Reporter};
use openvox_crds::names::{CONTROLLER_MANAGER, reasons};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::controller::{Settings, run};
use super::ownership::{
    CrdOwner, POOL_CRD, PoolControllerMode, crd_owner, declared_status_fields, runs,
    standing_aside_message,
};
use crate::metrics::Metrics;

/// How the supervisor decides and whom it tells.
#[derive(Clone, Debug)]
pub struct Supervision {
    /// `--enable-pool`.
    pub mode: PoolControllerMode,
    /// How often the Pool CRD is read again.
    pub crd_poll: Duration,
    /// The controller's own pod, which Events about standing aside are about (from
    /// `POD_NAME` and `POD_NAMESPACE`); `None`: no Event, the log says it.
    pub regarding: Option<ObjectReference>,
}

/// The Pool controller task and the switch that stops it.
struct Running {
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Supervises the Pool controller until `shutdown` resolves. An error when the Pool
/// controller ended by itself (its watches gave up, or it panicked): the process
/// must not go on saying it is ready while Pools are not reconciled.
pub async fn supervise(
    client: Client,
    settings: Settings,
    supervision: Supervision,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter::from(CONTROLLER_MANAGER.to_string()),
    );
    let mut running: Option<Running> = None;
    let mut last: Option<CrdOwner> = None;
    metrics.pool_controller_running(false);
    tokio::pin!(shutdown);
    loop {
        match crds.get_opt(POOL_CRD).await {
            Err(e) => warn!("cannot read the Pool CRD {POOL_CRD}; Pools keep their state: {e}"),
            Ok(crd) => {
                let owner = crd_owner(crd.as_ref());
                if last != Some(owner) {
                    last = Some(owner);
                    if let Some(current) = running.take() {
                        current.stop().await;
                    }
                    if runs(supervision.mode, owner) {
                        let mut settings = settings.clone();
                        // On a CRD that is not ours, status carries only its fields.
                        settings.status_fields = match owner {
                            CrdOwner::Foreign => crd.as_ref().and_then(declared_status_fields),
                            _ => None,
                        };
                        info!(crd = ?owner, status_fields = ?settings.status_fields, "Pool controller started");
                        running = Some(start(client.clone(), settings, metrics.clone()));
                        metrics.pool_controller_running(true);
                    } else {
                        let message = standing_aside_message(supervision.mode, owner);
                        info!("Pool controller stands aside: {message}");
                        metrics.pool_controller_running(false);
                        // The Event is for the case a user may not expect: another
                        // controller owns Pools here. Turned off or no CRD: the log says it.
                        if owner == CrdOwner::Foreign && supervision.mode != PoolControllerMode::Off
                        {
                            announce(&recorder, supervision.regarding.as_ref(), &message).await;
                        }
                    }
                }
            }
        }
        let ended = async {
            match running.as_mut() {
                Some(current) => (&mut current.task).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(supervision.crd_poll) => {}
            () = &mut shutdown => break,
            joined = ended => {
                metrics.pool_controller_running(false);
                return Err(match joined {
                    Ok(()) => "the Pool controller stopped by itself".to_owned(),
                    Err(e) => format!("the Pool controller stopped: {e}"),
                });
            }
        }
    }
    if let Some(current) = running {
        current.stop().await;
    }
    Ok(())
}

fn start(client: Client, settings: Settings, metrics: Metrics) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(client, settings, metrics, async move {
        let _ = stopped.await;
    }));
    Running { task, stop }
}

async fn announce(recorder: &Recorder, regarding: Option<&ObjectReference>, message: &str) {
    if let Some(pod) = regarding {
        crate::events::publish(
            recorder,
            pod,
            EventType::Normal,
            reasons::MANAGED_ELSEWHERE,
            "SupervisePools",
            message,
        )
        .await;
    }
}
