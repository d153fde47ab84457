//! Stand-in for openvox-operator's Server controller, its Deployment and code volume
//! only. It follows the measured facts (../shared/reference/openvox-operator.md,
//! sections 1.4–1.6 and "Measured against the real operator") and nothing more:
//!
//! - it reconciles a Server when the Server object changes or a Deployment it owns
//!   does, and at no other time: **not when the Config changes** (the operator's
//!   periodic resync is hours, longer than any test). A reconcile that fails is
//!   retried, as controller-runtime requeues errors;
//! - each reconcile reads the Server's Config then, and writes a Deployment named like
//!   the Server (plain create or update, controller owner reference to the Server,
//!   selector `openvox.voxpupuli.org/server=<server>`, pod labels `…/server` and
//!   `…/config`), whose pod template carries the annotation
//!   `openvox.voxpupuli.org/code-image` (the code image references, comma-joined) and
//!   a volume `code` (image volume with the reference and pull policy, or the claim)
//!   mounted read-only at the Config's `spec.puppet.environmentPath`;
//! - the Server's own `spec.code` replaces the Config's; a CA-only Server
//!   (`server: false`) mounts no code;
//! - with no `spec.puppet` in the Config the mount path stays empty, and the API
//!   server rejects the Deployment (the operator's bug, reproduced on purpose).
//!
//! As with the Pool writer, it writes only when the Deployment differs from what it
//! would write. The real Deployment controller of kube-controller-manager then rolls
//! the pods, and node simulation (`with_ready_only`) makes them ready.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ImageVolumeSource, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, DynamicObject, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use openvox_crds::names::annotations;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{FIELD_MANAGER, kind_api_resource};

/// Pod label naming the Server (also the Deployment's selector).
pub const SERVER_LABEL: &str = "openvox.voxpupuli.org/server";
/// Pod label naming the Config.
pub const CONFIG_LABEL: &str = "openvox.voxpupuli.org/config";

/// The running stand-in. Dropping it stops it.
#[derive(Debug)]
pub struct OperatorServerController {
    task: JoinHandle<()>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Drop for OperatorServerController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    client: Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl OperatorServerController {
    /// Starts reconciling the Servers of `namespace`.
    pub fn start(client: Client, namespace: &str) -> Self {
        let servers: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &kind_api_resource("Server"));
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let errors = Arc::new(Mutex::new(Vec::new()));
        let ctx = Arc::new(Ctx {
            client,
            errors: errors.clone(),
        });
        let task = tokio::spawn(
            Controller::new_with(
                servers,
                watcher::Config::default(),
                kind_api_resource("Server"),
            )
            .owns(deployments, watcher::Config::default())
            .run(
                reconcile,
                |_, _, _| Action::requeue(Duration::from_secs(1)),
                ctx,
            )
            .for_each(|_| futures::future::ready(())),
        );
        Self { task, errors }
    }

    /// The errors its reconciles met (an invalid Deployment, a missing Config).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

async fn reconcile(server: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let result = write_deployment(&server, &ctx.client).await;
    if let Err(e) = &result
        && let Ok(mut errors) = ctx.errors.lock()
    {
        errors.push(format!("{}: {e}", server.name_any()));
    }
    result.map(|()| Action::await_change())
}

async fn write_deployment(server: &DynamicObject, client: &Client) -> Result<(), kube::Error> {
    let ns = server.namespace().unwrap_or_default();
    let config_name = server.data["spec"]["configRef"]
        .as_str()
        .unwrap_or_default();
    let configs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kind_api_resource("Config"));
    let config = configs.get(config_name).await?;
    let wanted = desired(server, &config);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match deployments.get_opt(&server.name_any()).await? {
        None => {
            deployments.create(&params, &wanted).await?;
        }
        Some(mut current) => {
            let changed = rendered(&current) != rendered(&wanted);
            if changed {
                current.spec.template = wanted.spec.template;
                current.spec.replicas = wanted.spec.replicas;
                deployments
                    .replace(&server.name_any(), &params, &current)
                    .await?;
            }
        }
    }
    Ok(())
}

/// What this stand-in renders into a Deployment, without the API server's defaults:
/// replicas, pod labels and annotations, volumes and mounts.
fn rendered(d: &Deployment) -> Value {
    let template = &d.spec.template;
    let pod = template.spec.as_ref();
    let volumes: Vec<Value> = pod
        .and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .map(|v| {
            serde_json::json!([
                v.name,
                v.image.as_ref().and_then(|i| i.reference.clone()),
                v.persistent_volume_claim
                    .as_ref()
                    .map(|c| c.claim_name.clone())
            ])
        })
        .collect();
    let mounts: Vec<Value> = pod
        .and_then(|p| p.containers.first())
        .and_then(|c| c.volume_mounts.as_ref())
        .into_iter()
        .flatten()
        .map(|m| serde_json::json!([m.name, m.mount_path]))
        .collect();
    let meta = template.metadata.as_ref();
    serde_json::json!({
        "replicas": d.spec.replicas,
        "labels": meta.and_then(|m| m.labels.clone()),
        "annotations": meta.and_then(|m| m.annotations.clone()),
        "volumes": volumes,
        "mounts": mounts,
        "image": pod.and_then(|p| p.containers.first()).and_then(|c| c.image.clone()),
    })
}

/// The code entries a Server mounts: its own `spec.code`, else its Config's, as a list
/// (either shape); none for a CA-only Server.
fn code_entries(server: &DynamicObject, config: &DynamicObject) -> Vec<Value> {
    if server.data["spec"]["server"] == Value::Bool(false) {
        return Vec::new();
    }
    let own = &server.data["spec"]["code"];
    let code = if own.is_null() || own.as_array().is_some_and(Vec::is_empty) {
        &config.data["spec"]["code"]
    } else {
        own
    };
    match code {
        Value::Array(entries) => entries.clone(),
        Value::Object(_) => vec![code.clone()],
        _ => Vec::new(),
    }
}

/// The Deployment the operator renders for `server` with `config`.
fn desired(server: &DynamicObject, config: &DynamicObject) -> Deployment {
    let name = server.name_any();
    let config_name = config.name_any();
    let environment_path = config.data["spec"]["puppet"]["environmentPath"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let entries = code_entries(server, config);
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut images = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        // One entry: the volume `code` at the environment path. Several: `code-<i>` at
        // the environment's directory or the entry's mount path.
        let (volume_name, mount_path) = if entries.len() == 1 {
            ("code".to_owned(), environment_path.clone())
        } else {
            let path = match (entry["environment"].as_str(), entry["mountPath"].as_str()) {
                (Some(env), _) => format!("{environment_path}/{env}"),
                (None, Some(path)) => path.to_owned(),
                (None, None) => environment_path.clone(),
            };
            (format!("code-{i}"), path)
        };
        let mut volume = Volume {
            name: volume_name.clone(),
            ..Default::default()
        };
        if let Some(image) = entry["image"].as_str().filter(|i| !i.is_empty()) {
            images.push(image.to_owned());
            volume.image = Some(ImageVolumeSource {
                reference: Some(image.to_owned()),
                pull_policy: Some(
                    entry["imagePullPolicy"]
                        .as_str()
                        .unwrap_or("IfNotPresent")
                        .to_owned(),
                ),
            });
        } else if let Some(claim) = entry["claimName"].as_str() {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_owned(),
                read_only: Some(true),
            });
        }
        volumes.push(volume);
        mounts.push(VolumeMount {
            name: volume_name,
            mount_path,
            read_only: Some(true),
            ..Default::default()
        });
    }
    let pod_labels = BTreeMap::from([
        (SERVER_LABEL.to_owned(), name.clone()),
        (CONFIG_LABEL.to_owned(), config_name),
    ]);
    let mut pod_annotations = BTreeMap::new();
    if !entries.is_empty() {
        pod_annotations.insert(annotations::CODE_IMAGE.to_owned(), images.join(","));
    }
    let image = &config.data["spec"]["image"];
    let server_image = format!(
        "{}:{}",
        image["repository"]
            .as_str()
            .unwrap_or("ghcr.io/slauger/openvox-server"),
        image["tag"].as_str().unwrap_or("latest")
    );
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: server
                    .types
                    .as_ref()
                    .map(|t| t.api_version.clone())
                    .unwrap_or_default(),
                kind: "Server".into(),
                name: name.clone(),
                uid: server.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(
                server.data["spec"]["replicas"]
                    .as_i64()
                    .and_then(|r| i32::try_from(r).ok())
                    .unwrap_or(1),
            ),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(SERVER_LABEL.to_owned(), name)])),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "openvox-server".into(),
                        image: Some(server_image),
                        volume_mounts: (!mounts.is_empty()).then_some(mounts),
                        ..Default::default()
                    }],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}
