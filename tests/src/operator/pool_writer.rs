//! Stand-in for openvox-operator's Pool controller, its Service step only. It follows
//! the measured facts (../shared/reference/openvox-operator.md, "Pool" step 2 and
//! "Measured against the real operator") and nothing more:
//!
//! - it reconciles each Pool of its namespace, and again whenever a Service it owns
//!   changes (it watches its Services);
//! - the Service is named after the Pool; its labels are `app.kubernetes.io/name:
//!   openvox`, `app.kubernetes.io/managed-by: openvox-operator` and the Pool's selector
//!   label, with `spec.service.labels` on top; its annotations are exactly
//!   `spec.service.annotations`; selector, one port `https` → 8140, type and external
//!   IPs from the spec; a controller owner reference to the Pool;
//! - it writes with a plain create or update (no server-side apply), under the field
//!   manager `openvox-operator`.
//!
//! One inference: it updates only when one of those fields differs from what it
//! reads, as controller-runtime's create-or-update does. An operator that wrote on
//! every reconcile would rewrite its own Service forever, alone, which the operator
//! does not; beside a second writer it rewrote about 20 times a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use openvox_crds::names::labels;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{FIELD_MANAGER, PoolObject, pool_api_resource};

/// The running stand-in. Dropping it stops it.
#[derive(Debug)]
pub struct OperatorPoolWriter {
    task: JoinHandle<()>,
    writes: Arc<AtomicU64>,
}

impl Drop for OperatorPoolWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    client: Client,
    writes: Arc<AtomicU64>,
}

impl OperatorPoolWriter {
    /// Starts reconciling the Pools of `namespace`.
    pub fn start(client: Client, namespace: &str) -> Self {
        let writes = Arc::new(AtomicU64::new(0));
        let pools: Api<PoolObject> =
            Api::namespaced_with(client.clone(), namespace, &pool_api_resource());
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let ctx = Arc::new(Ctx {
            client,
            writes: writes.clone(),
        });
        let task = tokio::spawn(
            Controller::new_with(pools, watcher::Config::default(), pool_api_resource())
                .owns(services, watcher::Config::default())
                .run(
                    reconcile,
                    |_, _, _| Action::requeue(Duration::from_secs(1)),
                    ctx,
                )
                .for_each(|_| futures::future::ready(())),
        );
        Self { task, writes }
    }

    /// How many times it created or updated a Service.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

async fn reconcile(pool: Arc<PoolObject>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let wanted = desired(&pool);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match services.get_opt(&name).await? {
        None => {
            services.create(&params, &wanted).await?;
            ctx.writes.fetch_add(1, Ordering::Relaxed);
        }
        Some(mut current) => {
            let spec = current.spec.get_or_insert_with(Default::default);
            let wanted_spec = wanted.spec.clone().unwrap_or_default();
            let same = current.metadata.labels == wanted.metadata.labels
                && current.metadata.annotations == wanted.metadata.annotations
                && current.metadata.owner_references == wanted.metadata.owner_references
                && spec.selector == wanted_spec.selector
                && spec.ports == wanted_spec.ports
                && spec.type_ == wanted_spec.type_
                && spec.external_ips == wanted_spec.external_ips;
            if !same {
                // Only these fields are rewritten; clusterIP and the rest stay.
                current.metadata.labels = wanted.metadata.labels;
                current.metadata.annotations = wanted.metadata.annotations;
                current.metadata.owner_references = wanted.metadata.owner_references;
                spec.selector = wanted_spec.selector;
                spec.ports = wanted_spec.ports;
                spec.type_ = wanted_spec.type_;
                spec.external_ips = wanted_spec.external_ips;
                services.replace(&name, &params, &current).await?;
                ctx.writes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(Action::await_change())
}

/// The Service the operator wants for `pool`.
fn desired(pool: &PoolObject) -> Service {
    let name = pool.name_any();
    let service = &pool.data["spec"]["service"];
    let strings = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect()
    };
    let selector = BTreeMap::from([(labels::pool(&name), labels::POOL_MEMBER_VALUE.to_owned())]);
    let mut service_labels = BTreeMap::from([
        (
            labels::NAME.to_owned(),
            labels::OPENVOX_NAME_VALUE.to_owned(),
        ),
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_OPERATOR.to_owned(),
        ),
    ]);
    service_labels.extend(selector.clone());
    service_labels.extend(strings(&service["labels"]));
    let annotations = strings(&service["annotations"]);
    let port = service["port"].as_i64().filter(|p| *p != 0).unwrap_or(8140);
    let node_port = service["nodePort"].as_i64().filter(|p| *p > 0);
    let external_ips: Vec<String> = service["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    Service {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            labels: Some(service_labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: PoolObject::api_version(&pool_api_resource()).into_owned(),
                kind: "Pool".into(),
                name: pool.name_any(),
                uid: pool.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: i32::try_from(port).unwrap_or(8140),
                target_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8140),
                ),
                protocol: Some("TCP".into()),
                node_port: node_port.and_then(|p| i32::try_from(p).ok()),
                ..Default::default()
            }]),
            type_: service["type"]
                .as_str()
                .map(str::to_owned)
                .or(Some("ClusterIP".into())),
            external_ips: (!external_ips.is_empty()).then_some(external_ips),
            ..Default::default()
        }),
        ..Default::default()
    }
}
