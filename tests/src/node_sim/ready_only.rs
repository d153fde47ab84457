//! Pods that only have to become ready: the pods of Deployments (the servers that
//! openvox-operator runs) in the rollout tests. Nothing is run for them; the node binds
//! each new pod, reports it Running with every container running and ready at once,
//! and confirms its deletion as a kubelet does after the grace period. That is enough
//! for the real ReplicaSet and Deployment controllers (and the EndpointSlice
//! controller) to see a rolling update progress and complete.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::{Context, confirm_deletion};
use crate::time::now;

/// Runs the pods matching `selector` in the node's namespaces until the task is dropped.
pub(crate) async fn run(context: Arc<Context>, selector: String) -> Result<()> {
    let config = watcher::Config::default().labels(&selector);
    let mut events =
        futures::stream::select_all(super::pod_apis(&context).into_iter().map(|api| {
            watcher(api, config.clone())
                .default_backoff()
                .applied_objects()
                .boxed()
        }));
    while let Some(pod) = events.next().await {
        let Ok(pod) = pod else { continue };
        if let Err(e) = step(&context, &pod).await {
            tracing::warn!("ready-only pod {:?}: {e:#}", pod.metadata.name);
        }
    }
    Ok(())
}

/// One step for a pod: bind it, report it ready, or confirm its deletion.
async fn step(context: &Context, pod: &Pod) -> Result<()> {
    let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
        return Ok(());
    };
    if pod.metadata.deletion_timestamp.is_some() {
        confirm_deletion(&context.client, pod).await;
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(context.client.clone(), ns);
    let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if bound.is_none() {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": context.config.node_name},
        });
        return match api
            .create_subresource::<_, Value>("binding", name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if [404, 409].contains(&s.code) => Ok(()),
            Err(e) => Err(e).context("binding"),
        };
    }
    if bound != Some(context.config.node_name.as_str()) || is_ready(pod) {
        return Ok(());
    }
    let now = serde_json::to_value(now())?;
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                   "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let condition =
        |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}], "startTime": now,
        "conditions": [condition("PodScheduled"), condition("Initialized"),
                       condition("PodReadyToStartContainers"), condition("ContainersReady"),
                       condition("Ready")],
        "containerStatuses": containers,
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .context("reporting the pod ready")?;
    Ok(())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
