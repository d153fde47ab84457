//! The desired worker Job of a launch: a pure builder, no client.
//!
//! The pod is hardened (non-root, read-only root filesystem with an emptyDir at /tmp,
//! seccomp RuntimeDefault, all capabilities dropped, no privilege escalation). It keeps
//! its ServiceAccount token because the worker writes `status.lastBuild` of its own
//! CodeSource, and nothing else (see `rbac.rs`). Pod failures caused by node scale-down
//! or eviction (`DisruptionTarget`) are not counted against the backoff limit; the
//! worker's permanent-failure exit code fails the Job at once.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec as K8sJobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, KeyToPath,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use openvox_crds::CodeSource;
use openvox_crds::codesource::{InvalidBranches, LayerCompression};
use openvox_crds::names::{WORKER_PERMANENT_FAILURE_EXIT_CODE, annotations, labels};

use super::names::{codesource_label, worker_identity};
use super::validator;
use super::worker_defaults::{WorkerDefaults, effective_job};

/// Name of the worker container (the pod failure policy refers to it).
pub const CONTAINER: &str = "worker";
/// Where the git Secret is mounted.
pub const GIT_SECRET_DIR: &str = "/var/run/secrets/openvox-code/git";
/// Where the registry push Secret is mounted, as `config.json` (the `DOCKER_CONFIG` dir).
pub const REGISTRY_SECRET_DIR: &str = "/var/run/secrets/openvox-code/registry";
/// Where the output PVC is mounted in claim mode.
pub const CLAIM_DIR: &str = "/var/lib/openvox-code/claim";
/// UID and GID the worker runs as (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;
/// Where the worker writes its one-line result, given to it explicitly and set as the
/// container's `terminationMessagePath` (the Kubernetes default), so the path the
/// worker writes is always the one the runtime reads, whatever the worker's default.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Value of `app.kubernetes.io/component` on worker objects.
pub const COMPONENT: &str = "worker";

/// What varies between launches.
#[derive(Clone, Debug)]
pub struct LaunchParams<'a> {
    /// Job name (see `names::job_name`).
    pub job_name: &'a str,
    /// Inputs hash the Job is launched for.
    pub inputs_hash: &'a str,
    /// Worker image: `spec.job.image` or the controller default.
    pub worker_image: &'a str,
    /// The last image built (`status.lastBuild.image`), for layer reuse.
    pub previous_image: Option<&'a str>,
    /// The controller's worker pod defaults, under `spec.job` (see `worker_defaults`).
    pub defaults: &'a WorkerDefaults,
    /// The Puppet validator's image when `spec.validate` is set: its `image`, or the
    /// server image of the Config (resolved by the caller).
    pub validator_image: Option<&'a str>,
    /// With `spec.modules.codeConfig`: what the controller took from it.
    pub code_config: Option<WorkerCodeConfig<'a>>,
}

/// What the worker is told when modules come from an openvox-code CodeConfig.
#[derive(Clone, Debug)]
pub struct WorkerCodeConfig<'a> {
    /// Where to fetch the control repository (its mirror, if the config names one).
    pub url: &'a str,
    /// The branches the head check selected (`git.branches` narrowed by the source's
    /// `branchSelector`), passed by name: the worker builds exactly these.
    pub branches: Vec<&'a str>,
}

/// Where the CodeConfig's ConfigMap is mounted in the worker container.
pub const CODE_CONFIG_DIR: &str = "/etc/openvox-code/code-config";

/// Labels on the worker Job, its pod, ServiceAccount, Role and RoleBinding.
pub fn worker_labels(codesource: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::NAME.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::COMPONENT.to_string(), COMPONENT.to_string()),
        (labels::CODESOURCE.to_string(), codesource_label(codesource)),
    ])
}

/// The worker's command line, in the worker's own flags (`openvox-code-worker build`
/// for an image, `sync` into the mounted claim for PVC output). Branch patterns are
/// passed as written: the worker selects with the same wildmatch rule as the head check.
pub fn worker_args(cs: &CodeSource, params: &LaunchParams<'_>) -> Vec<String> {
    let spec = &cs.spec;
    let image = spec.output.image.as_ref().filter(|i| !i.is_empty());
    let command = if image.is_some() { "build" } else { "sync" };
    let (url, branches): (&str, Vec<&str>) = match &params.code_config {
        Some(code_config) => (code_config.url, code_config.branches.clone()),
        None => (
            &spec.git.url,
            spec.git.branches.iter().map(String::as_str).collect(),
        ),
    };
    let mut args: Vec<String> = vec![command.into(), "--url".into(), url.into()];
    for branch in branches {
        args.extend(["--branch".into(), branch.into()]);
    }
    if let Some(code_config) = &spec.modules.code_config {
        args.extend([
            "--code-config".into(),
            format!("{CODE_CONFIG_DIR}/{}", code_config.key),
        ]);
    }
    for branch in &spec.git.exclude_branches {
        args.extend(["--exclude".into(), branch.clone()]);
    }
    let invalid = match spec.git.invalid_branches {
        InvalidBranches::Correct => "correct",
        InvalidBranches::Error => "error",
    };
    args.extend([
        "--invalid-branches".into(),
        invalid.into(),
        "--forge-url".into(),
        spec.modules.forge_url.clone(),
        "--timeout".into(),
        spec.git.timeout.clone(),
    ]);
    if spec.git.secret_ref.is_some() {
        args.extend(["--secret-dir".into(), GIT_SECRET_DIR.into()]);
    }
    // The worker keeps within its scratch volume (see `scratch`).
    args.extend(["--scratch-size".into(), spec.job.scratch_size.clone()]);
    match image {
        Some(image) => {
            args.extend(["--image".into(), image.clone()]);
            for tag in &spec.output.tags {
                args.extend(["--tag".into(), tag.clone()]);
            }
            if spec.output.push_secret_ref.is_some() {
                args.extend([
                    "--registry-config".into(),
                    format!("{REGISTRY_SECRET_DIR}/config.json"),
                ]);
            }
            if spec.output.insecure {
                args.push("--insecure".into());
            }
            if spec.output.compression != LayerCompression::Gzip {
                args.extend([
                    "--compression".into(),
                    spec.output.compression.as_arg().into(),
                ]);
            }
            // Layers of environments whose inputs did not change are reused from here.
            if let Some(previous) = params.previous_image {
                args.extend(["--previous".into(), previous.to_string()]);
            }
        }
        None => {
            args.extend(["--dir".into(), CLAIM_DIR.into()]);
            // Named in lastBuild.image (`pvc:<claim>@sha256:…`), which the controller
            // publishes only while it names the claim of the spec.
            if let Some(claim) = spec.output.claim_name.as_ref() {
                args.extend(["--claim-name".into(), claim.clone()]);
            }
        }
    }
    if let (Some(validate), Some(_)) = (&spec.validate, params.validator_image) {
        args.extend(validator::worker_args(validate));
    }
    args.extend([
        "--codesource".into(),
        format!("{}/{}", cs.namespace().unwrap_or_default(), cs.name_any()),
        "--inputs-hash".into(),
        params.inputs_hash.into(),
        "--job-name".into(),
        params.job_name.into(),
        "--termination-log".into(),
        TERMINATION_MESSAGE_PATH.into(),
    ]);
    args.extend(log_format_args(params.defaults.log_format));
    args
}

/// `--log-format <format>` for the worker, or nothing.
pub fn log_format_args(format: Option<&str>) -> Vec<String> {
    format
        .map(|f| vec!["--log-format".to_owned(), f.to_owned()])
        .unwrap_or_default()
}

/// `resources` with an `ephemeral-storage` request for the scratch volume, unless it
/// names one itself: the scheduler places the pod where the scratch can fit, and node
/// pressure does not evict it for using what it asked for.
fn with_scratch_request(
    resources: Option<ResourceRequirements>,
    scratch_size: &str,
) -> ResourceRequirements {
    let mut resources = resources.unwrap_or_default();
    resources
        .requests
        .get_or_insert_with(BTreeMap::new)
        .entry("ephemeral-storage".into())
        .or_insert_with(|| Quantity(scratch_size.to_owned()));
    resources
}

/// The worker Job for one launch of `cs`.
pub fn desired_job(cs: &CodeSource, params: &LaunchParams<'_>) -> Job {
    let spec = &cs.spec;
    let placement = effective_job(&spec.job, params.defaults);
    let name = cs.name_any();
    let mut labels = worker_labels(&name);
    labels.insert(labels::INPUTS.to_string(), params.inputs_hash.to_string());

    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(spec.job.scratch_size.clone())),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    let mut env = vec![
        EnvVar {
            name: "HOME".into(),
            value: Some("/tmp".into()),
            ..Default::default()
        },
        EnvVar {
            name: "TMPDIR".into(),
            value: Some("/tmp".into()),
            ..Default::default()
        },
    ];
    if let Some(secret) = &spec.git.secret_ref {
        volumes.push(Volume {
            name: "git-auth".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                // Group-readable: the pod's fsGroup is the worker's group.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "git-auth".into(),
            mount_path: GIT_SECRET_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(secret) = &spec.output.push_secret_ref {
        volumes.push(Volume {
            name: "registry-auth".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                default_mode: Some(0o440),
                items: Some(vec![KeyToPath {
                    key: ".dockerconfigjson".into(),
                    path: "config.json".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "registry-auth".into(),
            mount_path: REGISTRY_SECRET_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        env.push(EnvVar {
            name: "DOCKER_CONFIG".into(),
            value: Some(REGISTRY_SECRET_DIR.into()),
            ..Default::default()
        });
    }
    if let Some(code_config) = &spec.modules.code_config {
        volumes.push(Volume {
            name: "code-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: code_config.config_map_ref.name.clone(),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "code-config".into(),
            mount_path: CODE_CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(claim) = spec.output.claim_name.as_ref().filter(|c| !c.is_empty()) {
        volumes.push(Volume {
            name: "claim".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "claim".into(),
            mount_path: CLAIM_DIR.into(),
            ..Default::default()
        });
    }

    // With a validator, the token is the worker's alone (see `validator.rs`).
    let validation = spec.validate.as_ref().zip(params.validator_image);
    let mut init_containers = Vec::new();
    if let Some((validate, image)) = validation {
        volumes.push(validator::volume());
        mounts.push(validator::mount());
        volumes.push(validator::token_volume());
        mounts.push(validator::token_mount());
        init_containers.push(validator::container(validate, image));
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(params.worker_image.to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(worker_args(cs, params)),
        env: Some(env),
        resources: Some(with_scratch_request(
            placement.resources.clone(),
            &spec.job.scratch_size,
        )),
        volume_mounts: Some(mounts),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
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
    };

    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(worker_identity(&name)),
        automount_service_account_token: Some(validation.is_none()),
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: (!placement.node_selector.is_empty()).then_some(placement.node_selector),
        tolerations: (!placement.tolerations.is_empty()).then_some(placement.tolerations),
        affinity: spec.job.affinity.clone(),
        priority_class_name: spec
            .job
            .priority_class_name
            .clone()
            .filter(|p| !p.is_empty()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            run_as_group: Some(WORKER_UID),
            fs_group: Some(WORKER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    Job {
        metadata: ObjectMeta {
            name: Some(params.job_name.to_string()),
            namespace: cs.namespace(),
            labels: Some(labels.clone()),
            owner_references: cs.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(K8sJobSpec {
            backoff_limit: Some(spec.job.backoff_limit),
            active_deadline_seconds: Some(spec.job.active_deadline_seconds),
            ttl_seconds_after_finished: Some(spec.job.ttl_seconds_after_finished),
            pod_failure_policy: Some(pod_failure_policy()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        (annotations::SAFE_TO_EVICT.to_string(), "false".to_string()),
                        // `kubectl logs job/<name>` shows the worker, not the validator.
                        (
                            validator::DEFAULT_CONTAINER_ANNOTATION.to_string(),
                            CONTAINER.to_string(),
                        ),
                    ])),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Node scale-down and eviction mark the pod `DisruptionTarget`: such pods are retried
/// without counting. The worker's permanent-failure exit code fails the Job at once.
pub fn pod_failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                on_exit_codes: None,
            },
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.into()),
                    operator: "In".into(),
                    values: vec![WORKER_PERMANENT_FAILURE_EXIT_CODE],
                }),
                on_pod_conditions: None,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};

    use super::*;

    fn codesource(extra: serde_json::Value) -> CodeSource {
        let mut spec = serde_json::json!({
            "git": {"url": "https://git.example/control.git", "branches": ["production", "feature_*"],
                    "secretRef": {"name": "git-creds"}},
            "schedule": "*/5 * * * *",
            "output": {"image": "registry.example/puppet-code", "pushSecretRef": {"name": "regcred"}},
        });
        merge(&mut spec, extra);
        let mut cs = CodeSource::new("production", serde_json::from_value(spec).unwrap());
        cs.metadata.namespace = Some("puppet".into());
        cs.metadata.uid = Some("uid-1".into());
        cs
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
    }

    fn build(cs: &CodeSource) -> Job {
        desired_job(
            cs,
            &LaunchParams {
                job_name: "production-0123abcd",
                inputs_hash: "0123abcd0123abcd0123abcd0123abcd",
                worker_image: "ghcr.io/voxpupuli/openvox-code-worker:1",
                previous_image: Some("registry.example/puppet-code@sha256:0000"),
                defaults: &WorkerDefaults::default(),
                validator_image: cs.spec.validate.as_ref().map(|_| "openvox-server:8"),
                code_config: None,
            },
        )
    }

    #[test]
    fn a_code_config_is_mounted_and_the_worker_builds_the_selected_branches_from_the_mirror() {
        let cs = codesource(serde_json::json!({"modules": {"codeConfig": {
            "configMapRef": {"name": "openvox-code"}}}}));
        let job = desired_job(
            &cs,
            &LaunchParams {
                job_name: "production-0123abcd",
                inputs_hash: "0123abcd",
                worker_image: "worker:1",
                previous_image: None,
                defaults: &WorkerDefaults::default(),
                validator_image: None,
                code_config: Some(WorkerCodeConfig {
                    url: "git://mirror.example/control.git",
                    branches: vec!["production", "feature_x"],
                }),
            },
        );
        let args = container(&job).args.clone().unwrap();
        let after = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert_eq!(after("--url"), ["git://mirror.example/control.git"]);
        assert_eq!(after("--branch"), ["production", "feature_x"]);
        assert_eq!(
            after("--code-config"),
            ["/etc/openvox-code/code-config/openvox-code.yaml"]
        );
        let volume = pod(&job)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "code-config")
            .unwrap();
        assert_eq!(volume.config_map.as_ref().unwrap().name, "openvox-code");
        let mount = container(&job)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "code-config")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (CODE_CONFIG_DIR, Some(true))
        );
        // Without one: neither the flag nor the volume.
        let plain = build(&codesource(serde_json::json!({})));
        assert!(
            !container(&plain)
                .args
                .clone()
                .unwrap()
                .contains(&"--code-config".to_string())
        );
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn container(job: &Job) -> &Container {
        &pod(job).containers[0]
    }

    #[test]
    fn the_job_has_the_given_name_and_an_owner_reference_to_its_codesource() {
        let job = build(&codesource(serde_json::json!({})));
        assert_eq!(job.metadata.name.as_deref(), Some("production-0123abcd"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("puppet"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("CodeSource", "production", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn the_job_and_pod_carry_the_standard_labels_and_the_inputs() {
        let job = build(&codesource(serde_json::json!({})));
        for l in [
            job.metadata.labels.as_ref().unwrap(),
            job.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap(),
        ] {
            assert_eq!(l[labels::MANAGED_BY], "openvox-code");
            assert_eq!(l[labels::COMPONENT], "worker");
            assert_eq!(l[labels::CODESOURCE], "production");
            assert_eq!(l[labels::INPUTS], "0123abcd0123abcd0123abcd0123abcd");
        }
    }

    #[test]
    fn the_worker_gets_the_build_arguments() {
        let job = build(&codesource(
            serde_json::json!({"output": {"tags": ["latest"]}}),
        ));
        let args = container(&job).args.clone().unwrap().join(" ");
        assert_eq!(
            args,
            "build --url https://git.example/control.git --branch production --branch feature_* \
             --invalid-branches correct --forge-url https://forgeapi.puppet.com --timeout 60s \
             --secret-dir /var/run/secrets/openvox-code/git --scratch-size 8Gi \
             --image registry.example/puppet-code --tag latest \
             --registry-config /var/run/secrets/openvox-code/registry/config.json \
             --previous registry.example/puppet-code@sha256:0000 \
             --codesource puppet/production --inputs-hash 0123abcd0123abcd0123abcd0123abcd \
             --job-name production-0123abcd --termination-log /dev/termination-log"
        );
        assert_eq!(
            container(&job).image.as_deref(),
            Some("ghcr.io/voxpupuli/openvox-code-worker:1")
        );
    }

    #[test]
    fn workers_log_in_the_controllers_format() {
        assert_eq!(log_format_args(Some("json")), ["--log-format", "json"]);
        assert!(log_format_args(None).is_empty());
    }

    #[test]
    fn zstd_layers_are_asked_for_and_gzip_is_the_worker_default() {
        let args = |output: serde_json::Value| {
            container(&build(&codesource(serde_json::json!({ "output": output }))))
                .args
                .clone()
                .unwrap()
        };
        let zstd = args(serde_json::json!({"compression": "zstd"}));
        assert!(
            zstd.windows(2).any(|w| w == ["--compression", "zstd"]),
            "{zstd:?}"
        );
        let default = args(serde_json::json!({}));
        assert!(
            !default.contains(&"--compression".to_string()),
            "{default:?}"
        );
    }

    #[test]
    fn claim_output_syncs_into_the_mounted_claim() {
        let job = build(&codesource(
            serde_json::json!({"output": {"image": null, "pushSecretRef": null, "claimName": "code"}}),
        ));
        let args = container(&job).args.clone().unwrap();
        assert_eq!(args[0], "sync");
        assert!(
            args.windows(2)
                .any(|w| w == ["--termination-log", TERMINATION_MESSAGE_PATH]),
            "the result file is named, not left to the worker's default"
        );
        assert!(args.windows(2).any(|w| w == ["--dir", CLAIM_DIR]));
        assert!(args.windows(2).any(|w| w == ["--claim-name", "code"]));
        // The worker's sync reports like its build does.
        for flag in ["--codesource", "--inputs-hash", "--job-name"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert!(!args.contains(&"--image".to_string()));
        assert!(!args.contains(&"--previous".to_string()));
        let volumes = pod(&job).volumes.as_ref().unwrap();
        assert!(volumes.iter().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == "code")
        }));
    }

    #[test]
    fn secrets_are_mounted_at_the_documented_paths() {
        let job = build(&codesource(serde_json::json!({})));
        let mounts = container(&job).volume_mounts.clone().unwrap();
        let path = |name: &str| {
            mounts
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.mount_path.clone())
        };
        assert_eq!(path("git-auth").as_deref(), Some(GIT_SECRET_DIR));
        assert_eq!(path("registry-auth").as_deref(), Some(REGISTRY_SECRET_DIR));
        let volumes = pod(&job).volumes.clone().unwrap();
        let git = volumes
            .iter()
            .find(|v| v.name == "git-auth")
            .unwrap()
            .secret
            .clone()
            .unwrap();
        assert_eq!(git.secret_name.as_deref(), Some("git-creds"));
        let reg = volumes
            .iter()
            .find(|v| v.name == "registry-auth")
            .unwrap()
            .secret
            .clone()
            .unwrap();
        assert_eq!(reg.items.unwrap()[0].path, "config.json");
        let env = container(&job).env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "DOCKER_CONFIG"
                    && e.value.as_deref() == Some(REGISTRY_SECRET_DIR))
        );
    }

    #[test]
    fn the_scratch_volume_is_bounded_and_requested_and_the_worker_told() {
        let scratch = |job: &Job| {
            let volumes = pod(job).volumes.clone().unwrap();
            let tmp = volumes.iter().find(|v| v.name == "tmp").unwrap();
            let limit = tmp.empty_dir.clone().unwrap().size_limit.map(|q| q.0);
            let requested = container(job)
                .resources
                .clone()
                .and_then(|r| r.requests)
                .and_then(|r| r.get("ephemeral-storage").map(|q| q.0.clone()));
            let args = container(job).args.clone().unwrap();
            let told = args
                .iter()
                .position(|a| a == "--scratch-size")
                .map(|i| args[i + 1].clone());
            (limit, requested, told)
        };
        let default = build(&codesource(serde_json::json!({})));
        let eight = Some("8Gi".to_string());
        assert_eq!(scratch(&default), (eight.clone(), eight.clone(), eight));
        let sized = build(&codesource(serde_json::json!({"job": {
            "scratchSize": "20Gi",
            "resources": {"requests": {"cpu": "1"}}}})));
        let twenty = Some("20Gi".to_string());
        assert_eq!(scratch(&sized), (twenty.clone(), twenty.clone(), twenty));
        let requests = container(&sized)
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(requests["cpu"].0, "1", "the CodeSource's own requests stay");
        // A request the CodeSource names itself is kept.
        let own = build(&codesource(serde_json::json!({"job": {
            "resources": {"requests": {"ephemeral-storage": "2Gi"}}}})));
        assert_eq!(scratch(&own).1.as_deref(), Some("2Gi"));
    }

    #[test]
    fn excludes_and_refused_invalid_branches_are_passed() {
        let job = build(&codesource(
            serde_json::json!({"git": {"excludeBranches": ["*_wip"], "invalidBranches": "Error"}}),
        ));
        let args = container(&job).args.clone().unwrap();
        assert!(args.windows(2).any(|w| w == ["--exclude", "*_wip"]));
        assert!(
            args.windows(2)
                .any(|w| w == ["--invalid-branches", "error"])
        );
    }

    #[test]
    fn without_secrets_nothing_is_mounted_but_tmp() {
        let job = build(&codesource(
            serde_json::json!({"git": {"secretRef": null}, "output": {"pushSecretRef": null}}),
        ));
        let mounts = container(&job).volume_mounts.clone().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_path, "/tmp");
    }

    #[test]
    fn the_pod_is_hardened() {
        let job = build(&codesource(serde_json::json!({})));
        let psc = pod(&job).security_context.clone().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = container(&job).security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            container(&job).termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert!(
            pod(&job)
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .any(|v| v.name == "tmp" && v.empty_dir.is_some())
        );
    }

    #[test]
    fn a_validator_sidecar_shares_a_directory_and_gets_no_credentials() {
        let job = build(&codesource(
            serde_json::json!({"validate": {"timeout": "90s"}}),
        ));
        let pod = pod(&job);
        let init = pod.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        let validator = &init[0];
        assert_eq!(validator.name, "validator");
        assert_eq!(validator.image.as_deref(), Some("openvox-server:8"));
        assert_eq!(validator.restart_policy.as_deref(), Some("Always"));
        // Only the shared directory: no git or registry Secret, no token.
        let mounts: Vec<&str> = validator
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, [validator::VOLUME]);
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = validator.security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert!(validator.resources.as_ref().unwrap().limits.is_some());

        // The worker keeps its token, mounts the shared directory and is told of it.
        let worker = container(&job);
        let worker_mounts: Vec<&str> = worker
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(
            worker_mounts.contains(&validator::TOKEN_DIR),
            "{worker_mounts:?}"
        );
        assert!(worker_mounts.contains(&openvox_crds::validator::DIR));
        let args = worker.args.clone().unwrap();
        assert!(args.windows(2).any(|w| w == ["--validate-timeout", "90s"]));
        assert!(
            args.windows(2)
                .any(|w| w == ["--validate-dir", openvox_crds::validator::DIR])
        );
        let annotations = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(
            annotations.annotations.as_ref().unwrap()[validator::DEFAULT_CONTAINER_ANNOTATION],
            "worker"
        );
    }

    #[test]
    fn without_validate_there_is_no_sidecar() {
        let job = build(&codesource(serde_json::json!({})));
        assert!(pod(&job).init_containers.is_none());
        let args = container(&job).args.clone().unwrap();
        assert!(!args.iter().any(|a| a == "--validate-dir"));
    }

    #[test]
    fn the_pod_uses_the_per_codesource_service_account_with_its_token() {
        let job = build(&codesource(serde_json::json!({})));
        assert_eq!(
            pod(&job).service_account_name.as_deref(),
            Some("openvox-code-worker-production")
        );
        assert_eq!(pod(&job).automount_service_account_token, Some(true));
        assert_eq!(pod(&job).restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn placement_and_resources_come_from_spec_job() {
        let job = build(&codesource(serde_json::json!({"job": {
            "image": "ignored-here",
            "resources": {"requests": {"cpu": "500m"}},
            "nodeSelector": {"pool": "builds"},
            "tolerations": [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {}},
            "priorityClassName": "low"
        }})));
        let pod = pod(&job);
        assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "builds");
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0],
            Toleration {
                key: Some("builds".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }
        );
        assert!(pod.affinity.is_some());
        assert_eq!(pod.priority_class_name.as_deref(), Some("low"));
        assert!(
            container(&job)
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()
                .contains_key("cpu")
        );
    }

    #[test]
    fn the_controller_defaults_fill_what_spec_job_leaves_unset() {
        let cs = codesource(serde_json::json!({"job": {"nodeSelector": {"pool": "fast"}}}));
        let defaults = WorkerDefaults {
            resources: serde_json::from_value(serde_json::json!({"requests": {"cpu": "500m"}}))
                .unwrap(),
            node_selector: BTreeMap::from([("pool".to_string(), "builds".to_string())]),
            tolerations: vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }],
            log_format: None,
        };
        let job = desired_job(
            &cs,
            &LaunchParams {
                job_name: "production-0123abcd",
                inputs_hash: "0123abcd0123abcd0123abcd0123abcd",
                worker_image: "w:1",
                previous_image: None,
                defaults: &defaults,
                validator_image: None,
                code_config: None,
            },
        );
        assert_eq!(pod(&job).node_selector.as_ref().unwrap()["pool"], "fast");
        assert_eq!(pod(&job).tolerations.as_ref().unwrap().len(), 1);
        let requests = container(&job).resources.clone().unwrap().requests.unwrap();
        assert_eq!(requests["cpu"].0, "500m");
    }

    #[test]
    fn deadlines_retries_and_ttl_come_from_spec_job() {
        let job = build(&codesource(
            serde_json::json!({"job": {"activeDeadlineSeconds": 600, "backoffLimit": 1, "ttlSecondsAfterFinished": 60}}),
        ));
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.backoff_limit, Some(1));
        assert_eq!(spec.ttl_seconds_after_finished, Some(60));
    }

    #[test]
    fn disruptions_are_ignored_and_permanent_failures_fail_the_job() {
        let job = build(&codesource(serde_json::json!({})));
        let rules = job.spec.unwrap().pod_failure_policy.unwrap().rules;
        assert_eq!(rules[0].action, "Ignore");
        assert_eq!(
            rules[0].on_pod_conditions.as_ref().unwrap()[0].type_,
            "DisruptionTarget"
        );
        assert_eq!(rules[1].action, "FailJob");
        let codes = rules[1].on_exit_codes.as_ref().unwrap();
        assert_eq!(codes.values, vec![WORKER_PERMANENT_FAILURE_EXIT_CODE]);
        assert_eq!(codes.container_name.as_deref(), Some(CONTAINER));
    }

    #[test]
    fn the_pod_may_not_be_evicted_by_the_autoscaler() {
        let job = build(&codesource(serde_json::json!({})));
        let template = job.spec.unwrap().template.metadata.unwrap();
        assert_eq!(
            template.annotations.unwrap()[annotations::SAFE_TO_EVICT],
            "false"
        );
    }
}
