//! The Puppet validator of a worker pod (`spec.validate`): a native sidecar that runs
//! `puppet parser validate` and `puppet epp validate` on what the worker stages in a
//! shared emptyDir (protocol: `openvox_crds::validator`). Pure builders, no client.
//!
//! The validator runs code from the user's image on files from the user's repository,
//! so it gets no credentials: no git or registry Secret, and no ServiceAccount token —
//! with a validator the pod does not automount the token, and the worker container
//! alone mounts a projected one (the same three sources the ServiceAccount admission
//! plugin injects).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, EnvVar, KeyToPath, ObjectFieldSelector, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use openvox_crds::codesource::ValidateSpec;
use openvox_crds::validator::{CONTAINER, DIR, SCRIPT};

/// The shared volume's name.
pub const VOLUME: &str = "validate";
/// The worker's own ServiceAccount token volume (only with a validator).
pub const TOKEN_VOLUME: &str = "worker-token";
/// Where Kubernetes clients look for the ServiceAccount token.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Pod annotation naming the container `kubectl logs` shows by default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// The shared emptyDir. Bounded: it holds the compiled files of the rebuilt
/// environments only (manifests and templates, a few MiB per environment).
pub fn volume() -> Volume {
    Volume {
        name: VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Gi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The mount of the shared volume (worker and validator alike).
pub fn mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME.into(),
        mount_path: DIR.into(),
        ..Default::default()
    }
}

/// The worker's flags for the validation step.
pub fn worker_args(spec: &ValidateSpec) -> Vec<String> {
    vec![
        "--validate-dir".into(),
        DIR.into(),
        "--validate-timeout".into(),
        spec.timeout.clone(),
    ]
}

/// Requests and limits when `spec.validate.resources` is unset: Puppet's parser in
/// Ruby, measured at about 120 MiB on a control repository with five public modules.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("250m")),
            ("memory".to_string(), q("256Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q("1Gi"))])),
        ..Default::default()
    }
}

/// The validator: an init container with `restartPolicy: Always` (a native sidecar),
/// started before the worker and stopped by the kubelet once the worker has ended.
pub fn container(spec: &ValidateSpec, image: &str) -> Container {
    Container {
        name: CONTAINER.into(),
        image: Some(image.to_owned()),
        image_pull_policy: Some("IfNotPresent".into()),
        restart_policy: Some("Always".into()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()]),
        env: Some(vec![
            EnvVar {
                name: "OPENVOX_VALIDATE_DIR".into(),
                value: Some(DIR.into()),
                ..Default::default()
            },
            EnvVar {
                name: "HOME".into(),
                value: Some(format!("{DIR}/home")),
                ..Default::default()
            },
        ]),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        volume_mounts: Some(vec![mount()]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The worker's ServiceAccount token, CA and namespace, as the admission plugin would
/// have mounted them for every container.
pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..Default::default()
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The worker's mount of [`token_volume`].
pub fn token_mount() -> VolumeMount {
    VolumeMount {
        name: TOKEN_VOLUME.into(),
        mount_path: TOKEN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }
}
