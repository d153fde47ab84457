//! The simulated Node object and its heartbeat (a Lease in kube-node-lease, renewed
//! like a kubelet's, so the node-lifecycle controller never marks it unreachable and
//! taints its pods away).

use crate::time::{now, now_micro};
use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use std::time::Duration;

const FIELD_MANAGER: &str = "openvox-node-sim";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;

/// Creates (or takes over) the Node and reports it Ready.
pub(crate) async fn register(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "openvox-code.test/simulated-node": "true",
            },
        },
    });
    nodes
        .patch(name, &apply, &Patch::Apply(&node))
        .await
        .with_context(|| format!("registering node {name}"))?;
    let now = serde_json::to_value(now())?;
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"},
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "openvox node simulation is posting ready status",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "nodeInfo": {
                "kubeletVersion": "v0.0.0-openvox-node-sim",
                "containerRuntimeVersion": "openvox-node-sim://local-processes",
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH,
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                "osImage": "openvox node simulation", "kubeProxyVersion": "",
            },
        },
    });
    nodes
        .patch_status(name, &apply, &Patch::Apply(&status))
        .await
        .with_context(|| format!("reporting node {name} ready"))?;
    renew_lease(client, name).await
}

/// Renews the node's Lease every 10 seconds until aborted.
pub(crate) async fn heartbeat(client: Client, name: String) {
    let mut ticks = tokio::time::interval(Duration::from_secs(10));
    loop {
        ticks.tick().await;
        if let Err(e) = renew_lease(&client, &name).await {
            tracing::warn!("renewing the lease of node {name}: {e:#}");
        }
    }
}

async fn renew_lease(client: &Client, name: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(now_micro()),
            ..LeaseSpec::default()
        }),
    };
    let mut value = serde_json::to_value(&lease)?;
    value["apiVersion"] = json!("coordination.k8s.io/v1");
    value["kind"] = json!("Lease");
    leases
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .with_context(|| format!("renewing lease {LEASE_NAMESPACE}/{name}"))?;
    Ok(())
}
