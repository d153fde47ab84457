//! Disruptions for fault tests: a pod taken away by the platform rather than failing
//! by itself. Kubernetes marks such pods with the `DisruptionTarget` condition, and a
//! Job's `podFailurePolicy` can ignore failures that carry it (so a node scaled away
//! by the cluster autoscaler does not count against `backoffLimit`).

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{EvictParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// Reasons of the `DisruptionTarget` pod condition, as Kubernetes documents them
/// ("Pod disruption conditions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisruptionReason {
    /// The pod was evicted through the Eviction API — what the cluster autoscaler does
    /// when it drains a node to scale it down.
    EvictionByEvictionApi,
    /// The taint-eviction controller deletes the pod for a NoExecute taint it does not
    /// tolerate.
    DeletionByTaintManager,
    /// The kubelet terminates the pod (node-pressure eviction, graceful node shutdown).
    TerminationByKubelet,
    /// The scheduler preempts the pod for a pod of higher priority.
    PreemptionByScheduler,
    /// The pod garbage collector deletes the pod of a node that is gone.
    DeletionByPodGc,
}

impl DisruptionReason {
    /// The condition reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EvictionByEvictionApi => "EvictionByEvictionAPI",
            Self::DeletionByTaintManager => "DeletionByTaintManager",
            Self::TerminationByKubelet => "TerminationByKubelet",
            Self::PreemptionByScheduler => "PreemptionByScheduler",
            Self::DeletionByPodGc => "DeletionByPodGC",
        }
    }
}

/// Adds `DisruptionTarget=True` with `reason` to the pod's conditions, without
/// deleting it. Use it to stage a disruption step by step; for the whole autoscaler
/// scale-down use [`evict_like_cluster_autoscaler`].
pub async fn mark_disrupted(
    client: &Client,
    namespace: &str,
    pod: &str,
    reason: DisruptionReason,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let condition = json!({
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason.as_str(),
        "message": "openvox node simulation: the pod is disrupted by the platform",
        "lastTransitionTime": crate::time::now(),
    });
    pods.patch_status(
        pod,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [condition]}})),
    )
    .await
    .with_context(|| format!("marking pod {namespace}/{pod} disrupted"))?;
    Ok(())
}

/// What the cluster autoscaler does to the pods of a node it removes: evict them
/// through the Eviction API (honouring PodDisruptionBudgets). The API server adds
/// `DisruptionTarget=True` (reason `EvictionByEvictionAPI`) and starts a graceful
/// deletion; the node simulation then stops the process, reports the pod Failed and
/// confirms the deletion, like a kubelet.
pub async fn evict_like_cluster_autoscaler(
    client: &Client,
    namespace: &str,
    pod: &str,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.evict(pod, &EvictParams::default())
        .await
        .with_context(|| format!("evicting pod {namespace}/{pod}"))?;
    Ok(())
}
