//! `CodeSource`: a control repository, the branches to deploy, when to look at them,
//! and where the built Puppet environments go.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a CodeSource: which branches of which repository become Puppet
/// environments, how often to check them, and where the result is published.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openvox.voxpupuli.org",
    version = "v1alpha1",
    kind = "CodeSource",
    doc = "A control repository whose branches openvox-code builds into a digest-pinned OCI image (or a PVC) of Puppet environments, and pins into an openvox-operator Config.",
    namespaced,
    status = "CodeSourceStatus",
    shortname = "codesrc",
    category = "openvox",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","description":"Short digest of the last image built","jsonPath":".status.lastBuild.shortDigest"}"#,
    printcolumn = r#"{"name":"Rolled-Out","type":"string","description":"Whether every Server of the Config runs the published code","jsonPath":".status.conditions[?(@.type==\"RolledOut\")].status"}"#,
    printcolumn = r#"{"name":"Job","type":"string","description":"Worker Job running now","jsonPath":".status.activeJob"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CodeSourceSpec {
    /// Name of the openvox-operator Config (same namespace) whose `spec.code` receives
    /// the digest-pinned image after every successful build. Unset: the image is built
    /// and reported in status, and nothing else is changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_ref: Option<String>,

    /// The control repository and the branches to deploy.
    pub git: GitSpec,

    /// When to look at the remote heads: a standard 5-field cron expression (minute hour
    /// day-of-month month day-of-week) or a macro such as `@hourly`, `@daily`, `@weekly`.
    /// A look lists the heads only; a build runs only when something changed.
    #[x_kube(validation = Rule::new(
        "self.matches('^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$') || self.matches('^\\\\S+( +\\\\S+){4}$')"
    ).message("schedule must have 5 cron fields (minute hour day-of-month month day-of-week) or be a macro like @hourly"))]
    #[schemars(length(max = 200))]
    pub schedule: String,

    /// IANA time zone the schedule is read in, like CronJob's `timeZone`
    /// (for example `Europe/Berlin`). Unset: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub time_zone: Option<String>,

    /// Stops scheduled checks and builds while true. The last image stays in place;
    /// the manual trigger annotation is ignored until resumed.
    #[serde(default)]
    pub suspend: bool,

    /// How the Puppetfile of each branch is resolved.
    #[serde(default)]
    pub modules: ModulesSpec,

    /// Where the environments go: an OCI image repository or a PersistentVolumeClaim.
    pub output: OutputSpec,

    /// Settings of the worker Job that runs each build.
    #[serde(default)]
    pub job: JobSpec,

    /// Puppet's own parser as a gate before publishing: each rebuilt environment's
    /// manifests and EPP templates are validated in a validator container of the
    /// worker pod, and an environment that fails keeps its previous layer. Unset: only
    /// the built-in checks run (Hiera YAML and JSON, `metadata.json`,
    /// `environment.conf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateSpec>,

    /// Push webhooks from the Git host: a push to a watched branch triggers a head
    /// check at once instead of waiting for the schedule. Unset: the webhook endpoint
    /// of this CodeSource answers 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,

    /// How many finished successful worker Jobs to keep.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,

    /// How many finished failed worker Jobs to keep.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,
}

fn default_history_limit() -> i32 {
    3
}

/// The control repository: where it is, which branches become environments, and how
/// to authenticate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitSpec {
    /// Repository URL: `https://`, `http://`, `ssh://`, scp-like `git@host:path`,
    /// `git://` or `file://`. Credentials never belong in the URL; use `secretRef`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// Branches to deploy, each becoming one Puppet environment: exact names or globs
    /// (`feature_*`, `release/*`).
    #[x_kube(validation = Rule::new("size(self) > 0").message("at least one branch is required"))]
    #[x_kube(validation = Rule::new("self.all(b, size(b) > 0)").message("branch names must not be empty"))]
    #[schemars(length(max = 100), inner(length(max = 255)))]
    pub branches: Vec<String>,

    /// Globs of branches to leave out even when `branches` matches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 255)))]
    pub exclude_branches: Vec<String>,

    /// What to do with a branch whose name is not a valid Puppet environment name
    /// (`[a-z0-9_]`): `Correct` maps it like r10k (other characters become `_`,
    /// letters lower-cased); `Error` refuses the branch.
    #[serde(default)]
    pub invalid_branches: InvalidBranches,

    /// Secret with the credentials, by key: `username` + `password` or `bearerToken`
    /// (https), `identity` + `known_hosts` (ssh), `ca.crt` (custom CA for https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// Time limit of one git operation (a head check, one fetch), as a duration such
    /// as `60s` or `2m`.
    #[serde(default = "default_git_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: String,
}

fn default_git_timeout() -> String {
    "60s".into()
}

/// The Puppet validation step of every build (see `CodeSourceSpec::validate`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidateSpec {
    /// Image with Puppet: `puppet` on the PATH or in `/opt/puppetlabs/bin`, a POSIX
    /// shell and `find`. Unset: the server image of the Config named by `configRef`
    /// (`spec.image` of openvox-operator's Config), the Puppet that compiles the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub image: Option<String>,

    /// Time limit of the validation of one build (all rebuilt environments), as a
    /// duration (`10m`, `90s`). Environments not validated in time are held back.
    #[serde(default = "default_validate_timeout")]
    pub timeout: String,

    /// CPU and memory of the validator container. Unset: requests 250m CPU and
    /// 256Mi memory, memory limit 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_validate_timeout() -> String {
    "10m".into()
}

/// The webhook receiver of a CodeSource, served by the controller at
/// `POST /hook/<namespace>/<name>`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Secret (same namespace) whose key `token` holds the webhook secret: the HMAC key
    /// of GitHub, Gitea and Forgejo signatures, GitLab's secret token, or the bearer
    /// token of the generic form. Changing it takes effect with the next request.
    pub secret_ref: LocalObjectReference,
}

/// Treatment of branch names that are not valid Puppet environment names.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InvalidBranches {
    /// Map the name like r10k: every character outside `[A-Za-z0-9_]` becomes `_`,
    /// then the name is lower-cased.
    #[default]
    Correct,
    /// Refuse the branch with an error naming it.
    Error,
}

/// How each branch's modules are described and resolved.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModulesSpec {
    /// Base URL of the Forge v3 API used for Forge modules, unless the Puppetfile names
    /// its own with `forge`.
    #[serde(default = "default_forge_url")]
    #[schemars(length(min = 1, max = 2048))]
    pub forge_url: String,

    /// Describe modules in openvox-code's YAML instead of a Puppetfile: the
    /// `CodeConfig` (`openvox-code.yaml`, with its `includes`) in a ConfigMap. Each
    /// branch's modules come from the module files its source names (`modulefiles`),
    /// pinned by the branch's `openvox-code.lock` when there is one; the source's
    /// `branchSelector` narrows `git.branches`; `overrides.gitmirrors` apply to every
    /// git URL the controller and the worker contact. Unset: each branch's Puppetfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_config: Option<CodeConfigRef>,
}

impl Default for ModulesSpec {
    fn default() -> Self {
        Self {
            forge_url: default_forge_url(),
            code_config: None,
        }
    }
}

/// Where the openvox-code `CodeConfig` is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodeConfigRef {
    /// ConfigMap in the CodeSource's namespace holding the CodeConfig and the files it
    /// includes, one key per file.
    pub config_map_ref: LocalObjectReference,
    /// Key of the main file in the ConfigMap.
    #[serde(default = "default_code_config_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_code_config_key() -> String {
    "openvox-code.yaml".into()
}

fn default_forge_url() -> String {
    "https://forgeapi.puppet.com".into()
}

/// Where a build's environments are published. Exactly one of `image` and `claimName`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.image) && size(self.image) > 0) != (has(self.claimName) && size(self.claimName) > 0)"
).message("exactly one of output.image and output.claimName must be set"))]
#[x_kube(validation = Rule::new(
    "(has(self.image) && size(self.image) > 0) || ((!has(self.tags) || size(self.tags) == 0) && !has(self.pushSecretRef))"
).message("tags and pushSecretRef need output.image"))]
#[x_kube(validation = Rule::new(
    "(has(self.image) && size(self.image) > 0) || !has(self.compression) || self.compression == 'gzip'"
).message("compression needs output.image"))]
pub struct OutputSpec {
    /// OCI image repository without tag or digest (for example
    /// `ghcr.io/example/puppet-code`). Every build is pushed by digest; the Config
    /// receives `<image>@sha256:<digest>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.contains('@')").message("output.image is a repository; the digest is added by the build"))]
    #[schemars(length(max = 1024))]
    pub image: Option<String>,

    /// Extra tags pushed for every build (for example `latest`). The Config is always
    /// pinned by digest, never by these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        inner(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))
    )]
    pub tags: Vec<String>,

    /// Secret of type `kubernetes.io/dockerconfigjson` with push credentials for the
    /// registry of `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret_ref: Option<LocalObjectReference>,

    /// Talk plain HTTP to the registry. Only for registries on loopback or a trusted
    /// network; never for a registry on the internet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,

    /// Compression of the image's layers. `gzip` (the default) is read by every
    /// runtime; `zstd` builds a cold image in less CPU at about the same size, and is
    /// read by containerd 1.5+, CRI-O and Podman. Changing it rebuilds every
    /// environment once.
    #[serde(default, skip_serializing_if = "LayerCompression::is_gzip")]
    pub compression: LayerCompression,

    /// PersistentVolumeClaim (same namespace) that receives the environments: each one
    /// is written to a new directory and switched in atomically, so servers mounting
    /// the claim never see a half-written environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub claim_name: Option<String>,
}

/// How the layers of an image are compressed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LayerCompression {
    #[default]
    Gzip,
    Zstd,
}

impl LayerCompression {
    fn is_gzip(&self) -> bool {
        *self == LayerCompression::Gzip
    }

    /// The worker's `--compression` value.
    pub fn as_arg(self) -> &'static str {
        match self {
            LayerCompression::Gzip => "gzip",
            LayerCompression::Zstd => "zstd",
        }
    }
}

/// The worker Job that runs a build. Builds usually run on autoscaled nodes, so these
/// are the knobs for placing them there.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Worker image for this CodeSource. Unset: the controller's default worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub image: Option<String>,

    /// CPU and memory of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the worker pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the worker pod (for example for a tainted build node pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Seconds a build may run before Kubernetes stops it.
    #[serde(default = "default_active_deadline")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: i64,

    /// Retries of a failed build pod before the Job fails. Pods removed by node
    /// scale-down or eviction do not count.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,

    /// Seconds a finished Job is kept before Kubernetes deletes it.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: i32,

    /// Size of the worker's scratch volume (an emptyDir at `/tmp`): its `sizeLimit` and
    /// the pod's `ephemeral-storage` request. It holds the fetched packs, the blobs
    /// decoded from them and the compressed layers; the worker keeps within it (an
    /// environment may take half of it, blobs that would not fit are read from the pack)
    /// and fails with a clear reason where the kubelet would evict the pod. A number of
    /// bytes with a binary suffix (`Ki`, `Mi`, `Gi`, `Ti`). Default `8Gi`: twice the
    /// default size limit of one environment (4 GiB).
    #[serde(default = "default_scratch_size")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)?$"))]
    pub scratch_size: String,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            image: None,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            priority_class_name: None,
            active_deadline_seconds: default_active_deadline(),
            backoff_limit: default_backoff_limit(),
            ttl_seconds_after_finished: default_ttl(),
            scratch_size: default_scratch_size(),
        }
    }
}

fn default_scratch_size() -> String {
    "8Gi".into()
}

fn default_active_deadline() -> i64 {
    1800
}
fn default_backoff_limit() -> i32 {
    2
}
fn default_ttl() -> i32 {
    86400
}

/// Observed state of a CodeSource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodeSourceStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready`, `Reconciling`, `Stalled` (kstatus) and the specific
    /// types `FetchFailed`, `BuildFailed`, `ConfigUpdated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// When the schedule last fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the schedule fires next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// When the remote heads were last listed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,

    /// Heads of the wanted branches seen at the last check, by branch:
    /// `<branch>@sha1:<commit>`. With a CodeConfig, each static environment whose ref
    /// was found adds `static:<name>`: `<ref>@sha1:<commit>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub heads: BTreeMap<String, String>,

    /// Name of the worker Job running now; `kubectl logs job/<name>` shows the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_job: Option<String>,

    /// The last build launched, recorded right after the Job was created so that a
    /// restarted controller, or a Job removed by its TTL, never launches it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_launch: Option<LaunchRecord>,

    /// The last successful build, written by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_build: Option<BuildRecord>,

    /// Value of the `openvox.voxpupuli.org/requestedAt` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,

    /// Value of the `openvox.voxpupuli.org/checkRequestedAt` annotation (set by the
    /// webhook receiver) last acted on with a head check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_check_requested_at: Option<String>,

    /// What was last written into the Config's `spec.code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigRecord>,

    /// Floating modules of the last build whose repository (or Forge) could not be
    /// asked at the last check; the other modules were still checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_modules: Vec<UnreachableModule>,

    /// How far the servers are with the code in the Config: per Server that names the
    /// Config, what its Deployment runs. Condition `RolledOut` sums it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// The rollout of the code in the Config to the Servers that take it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The code being rolled out: `status.config.image`.
    pub image: String,
    /// When that code was written into the Config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When every Server's Deployment was first seen complete with it; unset until
    /// then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// One entry per Server whose `configRef` names the Config, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub servers: Vec<ServerRollout>,
}

/// Where one Server stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerRollout {
    /// Name of the Server (and of its Deployment).
    pub name: String,
    /// `RolledOut`, `Progressing`, `ProgressDeadlineExceeded`, `NoDeployment`, or
    /// `OverridesCode` (the Server sets its own `spec.code`; it is not touched).
    pub state: ServerRolloutState,
    /// The code the Deployment's pod template carries: its image reference, or
    /// `pvc:<claim>` for a claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replicas the Deployment wants.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Replicas already running the pod template (with its code).
    #[serde(default)]
    pub updated_replicas: i32,
    /// Replicas ready, of any template.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// Where one Server's Deployment stands with the code in the Config.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerRolloutState {
    /// Complete: every replica runs the published code and is available.
    RolledOut,
    /// The Deployment does not carry the code yet, or is replacing its pods.
    Progressing,
    /// The Deployment stopped progressing within its `progressDeadlineSeconds`.
    ProgressDeadlineExceeded,
    /// The Server has no Deployment yet.
    NoDeployment,
    /// The Server sets its own `spec.code`; the Config's code does not reach it.
    OverridesCode,
}

/// A floating module whose lookup failed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct UnreachableModule {
    /// Module name.
    pub name: String,
    /// Its repository URL (without credentials) or Forge slug.
    pub source: String,
    /// Why, in one line (credentials never included).
    pub message: String,
}

/// A worker Job launched for a set of inputs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchRecord {
    /// Name of the Job.
    pub job_name: String,
    /// Hash over everything that shapes the output (heads, output spec, modules spec);
    /// the Job is named after it.
    pub inputs_hash: String,
    /// Heads the Job was launched for, by branch: `<branch>@sha1:<commit>` (and
    /// `static:<name>` for a CodeConfig's static environments).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub heads: BTreeMap<String, String>,
    /// When the Job was created.
    pub time: Time,
    /// For a rebuild because floating modules moved: a digest of what moved where (the
    /// same movement is built once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<String>,
}

/// A successful build: the published image and what went into it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    /// Digest-pinned reference of the image: `<repository>@sha256:<digest>`. For PVC
    /// output, `pvc:<claim>@sha256:<digest>`: the digest covers every environment in
    /// the claim and the version directory it is switched to, so it changes exactly when
    /// what the servers see changes.
    pub image: String,
    /// First 12 hex digits of the digest of `image`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_digest: Option<String>,
    /// Hash of the inputs this build was launched for (see `lastLaunch.inputsHash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_hash: Option<String>,
    /// One entry per environment, in name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<EnvironmentRecord>,
    /// Worker Job that made the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// When the build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the image was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Selected branches whose environment failed to build in this build. The image
    /// keeps the environment's previous layer when it had one; the controller retries
    /// them with backoff.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedEnvironment>,
}

/// A selected branch whose environment did not build.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailedEnvironment {
    /// Branch that failed (for a CodeConfig's static environment, its ref, or its name
    /// when the ref was not found).
    pub branch: String,
    /// Environment name, when the branch name could be mapped to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Why, in one line (credentials never included).
    pub reason: String,
    /// The file the reason is about (relative to the environment), when a check of
    /// the environment's files failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its line (1-based), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Its column (1-based), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

/// One Puppet environment of a build.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentRecord {
    /// Environment name (directory at the image root).
    pub name: String,
    /// Branch it was built from (for a CodeConfig's static environment, its ref: a
    /// branch, tag or commit id).
    pub branch: String,
    /// Commit of the branch: `<branch>@sha1:<commit>`.
    pub revision: String,
    /// Digest of the environment's image layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_digest: Option<String>,
    /// Modules installed from the Puppetfile, in install-path order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleRecord>,
    /// The modules of the Puppetfile that can move without the control repository
    /// moving (a git branch, `:control_branch`, a tag or a `:ref` naming one; a Forge
    /// module without a pinned version), and what each resolved to. Every scheduled
    /// check looks at them again; one that moved starts a build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floating: Vec<FloatingModule>,
}

/// A module that floats, and what it resolved to in this build.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct FloatingModule {
    /// Module name as installed.
    pub name: String,
    /// A git module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<FloatingGit>,
    /// A Forge module without a pinned version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<FloatingForge>,
}

/// A git module that follows a ref.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct FloatingGit {
    /// Repository URL (never with credentials).
    pub url: String,
    /// The refs resolution picks from, in order: the first the repository has wins
    /// (`refs/heads/<branch>`, then the default branch; `refs/tags/<tag>`).
    pub refs: Vec<String>,
    /// The commit the picked ref pointed at (annotated tags peeled).
    pub commit: String,
}

/// A Forge module that follows the current release.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct FloatingForge {
    /// Forge base URL.
    pub base: String,
    /// Module slug (`puppetlabs-stdlib`).
    pub slug: String,
    /// The release that was current.
    pub version: String,
}

/// A module resolved from a Puppetfile.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRecord {
    /// Module name as installed (directory under the module dir).
    pub name: String,
    /// Where it came from: a Forge slug (`puppetlabs-stdlib`) or a git URL without
    /// credentials.
    pub source: String,
    /// Resolved version: a Forge release version or a git commit.
    pub version: String,
    /// `sha256:` of the Forge release tarball; unset for git modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// What the controller wrote into the Config.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRecord {
    /// Name of the Config.
    pub name: String,
    /// The image reference written into its `spec.code`. For PVC output, the
    /// `lastBuild.image` whose environments the claim named in `spec.code` now holds.
    pub image: String,
    /// When it was written.
    pub updated_at: Time,
}
