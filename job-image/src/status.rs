//! `status.lastBuild` of the worker's CodeSource: read to find the previous image (and
//! the modules of environments whose layer is kept), written after the image is
//! published, by server-side apply under the worker's own field manager
//! ([`WORKER_MANAGER`]), which owns nothing else. In a pod the service account is used;
//! outside a cluster, the kubeconfig (`KUBECONFIG` or `~/.kube/config`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use openvox_crds::CodeSource;
use openvox_crds::codesource::{BuildRecord, EnvironmentRecord};
use openvox_crds::names::WORKER_MANAGER;

use crate::git::error_chain;
use crate::image::builder::PublishedImage;
use crate::progress::Step;

/// A status that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("--codesource {0:?}: give it as <namespace>/<name>")]
    Reference(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("CodeSource {namespace}/{name}: {operation}: {message}")]
    Api {
        namespace: String,
        name: String,
        operation: &'static str,
        message: String,
    },
}

/// The CodeSource a build reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSourceRef {
    pub namespace: String,
    pub name: String,
}

impl CodeSourceRef {
    /// Parses `<namespace>/<name>`.
    pub fn parse(text: &str) -> Result<Self, StatusError> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(StatusError::Reference(text.to_owned())),
        }
    }
}

impl std::fmt::Display for CodeSourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The API of one CodeSource.
#[derive(Clone)]
pub struct StatusClient {
    api: Api<CodeSource>,
    target: CodeSourceRef,
}

impl std::fmt::Debug for StatusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusClient")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl StatusClient {
    /// A client from the pod's service account or the kubeconfig.
    pub async fn connect(target: CodeSourceRef) -> Result<Self, StatusError> {
        crate::git::install_tls_provider();
        let client = kube::Client::try_default()
            .await
            .map_err(|e| StatusError::Client(error_chain(&e)))?;
        Ok(Self {
            api: Api::namespaced(client, &target.namespace),
            target,
        })
    }

    /// A client for `target` over an existing connection.
    pub fn with_client(client: kube::Client, target: CodeSourceRef) -> Self {
        Self {
            api: Api::namespaced(client, &target.namespace),
            target,
        }
    }

    fn api_error(&self, operation: &'static str, error: &kube::Error) -> StatusError {
        StatusError::Api {
            namespace: self.target.namespace.clone(),
            name: self.target.name.clone(),
            operation,
            message: error_chain(error),
        }
    }

    /// `status.lastBuild`, if the CodeSource has one.
    pub async fn last_build(&self) -> Result<Option<BuildRecord>, StatusError> {
        let codesource = self
            .api
            .get(&self.target.name)
            .await
            .map_err(|e| self.api_error("read", &e))?;
        Ok(codesource.status.and_then(|s| s.last_build))
    }

    /// Applies `status.lastBuild` (only that field) as [`WORKER_MANAGER`].
    pub async fn write_last_build(&self, record: &BuildRecord) -> Result<(), StatusError> {
        self.apply_last_build(record)
            .await
            .map_err(|e| self.api_error("apply status.lastBuild", &e))
    }

    async fn apply_last_build(&self, record: &BuildRecord) -> Result<(), kube::Error> {
        let patch = last_build_patch(record);
        let params = PatchParams::apply(WORKER_MANAGER).force();
        self.api
            .patch_status(&self.target.name, &params, &Patch::Apply(&patch))
            .await?;
        Ok(())
    }
}

/// How long [`write_status`] keeps trying while the API server cannot be reached or
/// answers with a server error. Long enough to outlast an API server restart or a
/// control-plane upgrade (the fault tests restart it mid-build): the image is already
/// published, and giving up would fail the pod and make the Job build it all again.
pub const STATUS_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(90);

/// Whether a failed status write may succeed when tried again: no answer at all
/// (connection refused, timeout), a server error, or throttling. Other answers
/// (forbidden, not found, invalid) will not change.
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// Applies `status.lastBuild`, retrying transient failures with backoff (1 s doubling
/// to 8 s) for up to [`STATUS_RETRY_BUDGET`]: the output is published, and without
/// the record the controller would not know it.
pub async fn write_status(client: &StatusClient, record: &BuildRecord) -> Result<(), StatusError> {
    let step = Step::start("status", &client.target);
    let started = tokio::time::Instant::now();
    let mut attempt: u32 = 1;
    loop {
        match client.apply_last_build(record).await {
            Ok(()) => {
                step.done(format!("lastBuild {}", record.image));
                return Ok(());
            }
            Err(e) => {
                let delay = std::time::Duration::from_secs(1 << (attempt - 1).min(3));
                let error = client.api_error("apply status.lastBuild", &e);
                if !is_transient(&e) || started.elapsed() + delay > STATUS_RETRY_BUDGET {
                    step.failed(&error);
                    return Err(error);
                }
                tracing::warn!("{error} (try {attempt}; trying again in {delay:?})");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// The apply patch: apiVersion, kind and `status.lastBuild` only, so the worker's field
/// manager owns exactly that field.
pub fn last_build_patch(record: &BuildRecord) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": format!("{}/{}", openvox_crds::names::GROUP, openvox_crds::names::VERSION),
        "kind": "CodeSource",
        "status": { "lastBuild": record },
    })
}

/// What else goes into the record besides the image.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    pub inputs_hash: Option<String>,
    pub job_name: Option<String>,
    pub start_time: Option<jiff::Timestamp>,
    pub completion_time: Option<jiff::Timestamp>,
}

/// The `lastBuild` record of `image`. Environments whose layer was kept from the
/// previous image take their record (modules included) from `previous` when it has one.
pub fn build_record(
    image: &PublishedImage,
    previous: Option<&BuildRecord>,
    context: &BuildContext,
) -> BuildRecord {
    let environments = image
        .layers
        .iter()
        .map(|layer| match &layer.inputs {
            Some(inputs) => EnvironmentRecord {
                floating: layer
                    .pins
                    .as_ref()
                    .map(|p| p.floating(inputs.follows()))
                    .unwrap_or_default(),
                ..inputs.to_record(Some(layer.digest.clone()))
            },
            None => previous
                .and_then(|p| {
                    p.environments
                        .iter()
                        .find(|e| e.name == layer.environment && e.revision == layer.revision)
                })
                .cloned()
                .map(|mut record| {
                    record.layer_digest = Some(layer.digest.clone());
                    record
                })
                .unwrap_or_else(|| EnvironmentRecord {
                    name: layer.environment.clone(),
                    branch: layer.branch.clone(),
                    revision: layer.revision.clone(),
                    layer_digest: Some(layer.digest.clone()),
                    modules: Vec::new(),
                    floating: Vec::new(),
                }),
        })
        .collect();
    let hex = image.manifest_digest.trim_start_matches("sha256:");
    BuildRecord {
        image: image.reference.clone(),
        short_digest: Some(hex[..hex.len().min(12)].to_owned()),
        inputs_hash: context.inputs_hash.clone(),
        environments,
        job_name: context.job_name.clone(),
        start_time: context.start_time.map(Time),
        completion_time: context.completion_time.map(Time),
        failed: Vec::new(),
    }
}

/// The Job of this pod: `--job-name`, or the pod name (`HOSTNAME`) without the suffix
/// the Job controller adds (`<job>-<5 characters>`).
pub fn job_name_from_hostname(hostname: &str) -> Option<String> {
    let (job, suffix) = hostname.rsplit_once('-')?;
    (suffix.len() == 5
        && suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !job.is_empty())
    .then(|| job.to_owned())
}

#[cfg(test)]
mod tests {
    use openvox_crds::codesource::ModuleRecord;

    use super::*;
    use crate::environments::EnvironmentInputs;
    use crate::image::builder::{LayerOrigin, LayerReport, Transfer};

    fn layer(name: &str, origin: LayerOrigin, inputs: bool) -> LayerReport {
        LayerReport {
            environment: name.into(),
            branch: name.into(),
            revision: format!("{name}@sha1:{}", "a".repeat(40)),
            digest: format!("sha256:{}", "1".repeat(64)),
            size: 10,
            origin,
            transfer: Transfer::Present,
            inputs: inputs.then(|| EnvironmentInputs {
                name: name.into(),
                branch: name.into(),
                follows: None,
                commit: "a".repeat(40),
                code_config: None,
                modules: vec![ModuleRecord {
                    name: "stdlib".into(),
                    source: "puppetlabs-stdlib".into(),
                    version: "9.6.0".into(),
                    checksum: None,
                }],
            }),
            pins: None,
        }
    }

    #[test]
    fn records_list_every_layer_with_modules() {
        let image = PublishedImage {
            reference: format!("r.example/code@sha256:{}", "f".repeat(64)),
            manifest_digest: format!("sha256:{}", "f".repeat(64)),
            layers: vec![
                layer("production", LayerOrigin::Built, true),
                layer("staging", LayerOrigin::Kept, false),
            ],
            failed: Vec::new(),
            sent_blobs: 1,
            sent_bytes: 10,
        };
        let previous = BuildRecord {
            environments: vec![EnvironmentRecord {
                name: "staging".into(),
                branch: "staging".into(),
                revision: format!("staging@sha1:{}", "a".repeat(40)),
                layer_digest: None,
                modules: vec![ModuleRecord {
                    name: "old".into(),
                    ..Default::default()
                }],
                floating: Vec::new(),
            }],
            ..Default::default()
        };
        let context = BuildContext {
            inputs_hash: Some("h".into()),
            job_name: Some("job".into()),
            ..Default::default()
        };
        let record = build_record(&image, Some(&previous), &context);
        assert_eq!(record.short_digest.as_deref(), Some("ffffffffffff"));
        assert_eq!(record.environments[0].modules[0].name, "stdlib");
        assert_eq!(
            record.environments[0].layer_digest,
            Some(image.layers[0].digest.clone())
        );
        assert_eq!(
            record.environments[1].modules[0].name, "old",
            "kept layer keeps its modules"
        );
        assert_eq!(record.inputs_hash.as_deref(), Some("h"));

        let patch = last_build_patch(&record);
        assert_eq!(patch["apiVersion"], "openvox.voxpupuli.org/v1alpha1");
        assert_eq!(patch["kind"], "CodeSource");
        assert_eq!(
            patch["status"]["lastBuild"]["image"],
            image.reference.as_str()
        );
        assert_eq!(patch["status"]["lastBuild"]["inputsHash"], "h");
        assert_eq!(
            patch.as_object().unwrap().len(),
            3,
            "nothing but status.lastBuild"
        );
        assert_eq!(patch["status"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn codesource_references_and_job_names_are_parsed() {
        assert_eq!(
            CodeSourceRef::parse("puppet/production").unwrap(),
            CodeSourceRef {
                namespace: "puppet".into(),
                name: "production".into()
            }
        );
        for bad in ["production", "/x", "x/", "a/b/c"] {
            assert!(CodeSourceRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            job_name_from_hostname("production-7f3a9c1e-x2k9p").as_deref(),
            Some("production-7f3a9c1e")
        );
        assert_eq!(job_name_from_hostname("laptop"), None);
        assert_eq!(job_name_from_hostname("my-Host"), None);
    }
}
