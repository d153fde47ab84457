//! The `build` command: environments of a control repository into a digest-pinned OCI
//! image, pushed to a registry (`--image`) or written as an OCI layout
//! (`--oci-layout`). The pinned reference is the last line of standard output and,
//! in a pod, the termination message; a failure writes its one-line reason there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::auth::{AuthError, DockerConfig};
use super::builder::{
    ImageEnvironment, ImageError, ImageOptions, ImageRequest, Output, PublishedImage, build_image,
    previous_layers, recorded_environments,
};
use super::layout::Layout;
use super::push::{PushError, Registry, RegistryOptions, Repository, RetryPolicy, read_ca};
use super::reuse::PreviousImage;
use crate::cli::{BuildArgs, CliError};
use crate::environments::{BuildError, EnvironmentFailure, build_environments_reusing};
use crate::git::{FetchedRepo, mask_url};
use crate::progress::Step;
use crate::report::{all_failed_line, failed_records, failures_line, write_termination_message};
use crate::status::{BuildContext, StatusError, build_record, write_status};

/// The result of `build`.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// `<repository>@sha256:…` (or `oci:<dir>@sha256:…`).
    pub reference: String,
    pub image: PublishedImage,
    /// Selected branches that failed; the image keeps their previous layer if it had
    /// one.
    pub failures: Vec<EnvironmentFailure>,
}

impl BuiltImage {
    /// The termination message: the reference, or `partial: <reference>; N
    /// environments failed: …` when the image was published without some of them.
    pub fn result_line(&self) -> String {
        match self.failure_summary() {
            Some(summary) => format!("partial: {}; {summary}", self.reference),
            None => self.reference.clone(),
        }
    }

    /// One line naming every failure, or `None` when all went well.
    pub fn failure_summary(&self) -> Option<String> {
        if self.failures.is_empty() {
            return None;
        }
        // Every environment of the run: those in the image (a failed one may keep its
        // previous layer there) and those that failed without one.
        let mut names: std::collections::BTreeSet<&str> = self
            .image
            .layers
            .iter()
            .map(|l| l.environment.as_str())
            .collect();
        names.extend(
            self.failures
                .iter()
                .map(|f| f.name.as_deref().unwrap_or(&f.branch)),
        );
        Some(failures_line(&self.failures, names.len()))
    }
}

/// A build that did not publish an image.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Environments(#[from] BuildError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Push(#[from] PushError),
    #[error("{}", first_failure(.0))]
    AllFailed(Vec<EnvironmentFailure>),
    #[error(transparent)]
    Status(#[from] StatusError),
}

impl RunError {
    /// True when running again cannot help (bad arguments, unusable credentials
    /// files): the worker then exits with
    /// [`openvox_crds::names::WORKER_PERMANENT_FAILURE_EXIT_CODE`].
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RunError::Cli(_)
                | RunError::Usage(_)
                | RunError::Status(StatusError::Reference(_))
                | RunError::Push(
                    PushError::Reference { .. }
                        | PushError::Auth(AuthError::Config { .. })
                        | PushError::Client(_)
                )
        )
    }
}

fn first_failure(failures: &[EnvironmentFailure]) -> String {
    all_failed_line(failures, "")
}

impl BuildArgs {
    fn work_dir(&self) -> PathBuf {
        self.source
            .work_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }

    fn registry_options(&self) -> Result<RegistryOptions, RunError> {
        let config_path = self.registry_config.clone().or_else(|| {
            std::env::var_os("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json"))
        });
        let docker_config = match config_path {
            Some(path) if self.registry_config.is_some() || path.exists() => {
                DockerConfig::load(&path).map_err(PushError::from)?
            }
            _ => DockerConfig::default(),
        };
        let ca_pem = self.registry_ca.as_deref().map(read_ca).transpose()?;
        Ok(RegistryOptions {
            insecure: self.insecure,
            ca_pem,
            docker_config,
            retry: RetryPolicy {
                attempts: self.push_retries.max(1),
                ..RetryPolicy::default()
            },
            timeout: Some(self.source.timeout),
        })
    }

    /// Checks what can be checked before any network work.
    fn validate(&self) -> Result<(), RunError> {
        for tag in &self.tags {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(RunError::Usage(format!(
                    "--tag {tag:?} is not a valid tag (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
                )));
            }
        }
        if self.architecture.is_empty() {
            return Err(RunError::Usage("--architecture must not be empty".into()));
        }
        Ok(())
    }
}

/// Commit time (seconds since the epoch, committer time) of `commit`.
fn commit_time(repo: &FetchedRepo, commit: &str) -> Result<i64, String> {
    let id =
        gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| format!("commit {commit}: {e}"))?;
    let handle = repo.repo();
    let commit = handle
        .find_commit(id)
        .map_err(|e| format!("commit {id}: {e}"))?;
    let time = commit.time().map_err(|e| format!("commit {id}: {e}"))?;
    Ok(time.seconds)
}

/// Reads the previous image from a registry; `None` (with a warning) when it cannot
/// be read: the build then starts from scratch.
async fn previous_from_registry(
    reference: &str,
    options: &RegistryOptions,
) -> Option<PreviousImage> {
    let step = Step::start("previous", reference);
    let parsed = match oci_client::Reference::try_from(reference) {
        Ok(r) => r,
        Err(e) => {
            step.failed(format!(
                "not an image reference ({e}); building every layer"
            ));
            return None;
        }
    };
    let repository = Repository {
        host: parsed.registry().to_owned(),
        path: parsed.repository().to_owned(),
    };
    let result = async {
        let registry = Registry::connect(&repository, options).await?;
        registry.fetch_image_documents(&parsed).await
    }
    .await;
    match result {
        Ok((manifest, _digest, config)) => {
            match PreviousImage::from_documents(
                reference,
                Some(repository.to_string()),
                &manifest,
                &config,
            ) {
                Ok(previous) => {
                    step.done(format!("{} layers to compare", previous.layers.len()));
                    Some(previous)
                }
                Err(e) => {
                    step.failed(format!("{e}; building every layer"));
                    None
                }
            }
        }
        // The first build of a repository: nothing to compare with, nothing wrong.
        Err(PushError::NotFound { .. }) => {
            step.done("none yet (first build to this repository); building every layer");
            None
        }
        Err(e) => {
            step.failed(format!("{e}; building every layer"));
            None
        }
    }
}

/// The control repository for `org.opencontainers.image.source`: the URL without any
/// credentials (masked user info is dropped, not shown as `***`).
pub fn source_annotation(url: &str) -> String {
    mask_url(url).replace("***@", "")
}

/// Runs `build`. The termination message gets the reference (`partial: <reference>;
/// …` when some environments failed) or the failure.
pub async fn run_build(args: BuildArgs) -> Result<BuiltImage, RunError> {
    let result = build(&args).await;
    match &result {
        Ok(built) => write_termination_message(&args.report.termination_log, &built.result_line()),
        Err(e) => write_termination_message(&args.report.termination_log, &e.to_string()),
    }
    result
}

async fn build(args: &BuildArgs) -> Result<BuiltImage, RunError> {
    args.validate()?;
    let start_time = jiff::Timestamp::now();
    let source = args.source.to_source_options()?;
    let status = args.report.status_client().await?;
    let last_build = match &status {
        Some(client) => match client.last_build().await {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!("{e}; building without the previous build's record");
                None
            }
        },
        None => None,
    };
    // Output first: a bad repository or credentials file fails before any git work.
    let registry_options = args.registry_options()?;
    let output = match (&args.image, &args.oci_layout) {
        (Some(image), _) => {
            let repository = Repository::parse(image)?;
            Output::Registry(Arc::new(
                Registry::connect(&repository, &registry_options).await?,
            ))
        }
        (None, Some(dir)) => Output::Layout(Arc::new(Layout::open(dir).map_err(ImageError::from)?)),
        (None, None) => {
            return Err(RunError::Usage(
                "one of --image and --oci-layout is required".into(),
            ));
        }
    };

    // The previous image first: environments it shows unchanged are not even fetched.
    let from_status = last_build
        .as_ref()
        .map(|b| b.image.clone())
        .filter(|i| !i.starts_with("oci:") && !i.starts_with("pvc:") && !i.is_empty());
    let previous = match (args.previous.as_ref().or(from_status.as_ref()), &output) {
        (Some(reference), Output::Registry(_)) => {
            previous_from_registry(reference, &registry_options).await
        }
        (None, Output::Registry(registry)) => match args.tags.first() {
            Some(tag) => {
                previous_from_registry(
                    &registry.repository().with_tag(tag).to_string(),
                    &registry_options,
                )
                .await
            }
            None => None,
        },
        (_, Output::Layout(layout)) => match layout.previous() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("{e}; building every layer");
                None
            }
        },
    };
    let recorded = match &previous {
        Some(previous) => recorded_environments(previous, &output, args.compression)
            .await
            .map_err(ImageError::from)?,
        None => BTreeMap::new(),
    };

    let previous_layers = previous.as_ref().and_then(|previous| {
        previous_layers(
            previous,
            &recorded,
            &output,
            &source.work_dir,
            source.limits,
        )
    });
    let environments =
        build_environments_reusing(&source, &recorded, previous_layers.clone()).await?;
    let control = environments.control.clone();
    let mut image_environments = Vec::new();
    let mut failures = environments.failed.clone();
    for env in &environments.built {
        let time = match &control {
            Some(repo) => commit_time(repo, &env.inputs.commit),
            None => Err("the control repository is gone".to_owned()),
        };
        match time {
            Ok(commit_time) => image_environments.push(ImageEnvironment {
                inputs: env.inputs.clone(),
                tree: env.tree.clone(),
                commit_time,
                pins: environments.pins.get(&env.inputs.name).cloned(),
            }),
            Err(reason) => failures.push(EnvironmentFailure {
                name: Some(env.inputs.name.clone()),
                branch: env.inputs.branch.clone(),
                reason,
                problem: None,
            }),
        }
    }

    let options = ImageOptions {
        source: source_annotation(&args.source.url),
        architecture: args.architecture.clone(),
        tags: args.tags.clone(),
        codec: args.compression,
        work_dir: args.work_dir(),
        build_jobs: args
            .build_jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
            .max(1),
        upload_jobs: args.upload_jobs.max(1),
    };
    let failed_names: Vec<String> = failures.iter().filter_map(|f| f.name.clone()).collect();
    let request = ImageRequest {
        environments: image_environments,
        unchanged: environments.unchanged.clone(),
        failed: failed_names,
        previous,
        previous_layers,
    };
    // Environments whose layer could not be written (or taken) fail like the others.
    let branch_of = |name: &str| {
        environments
            .built
            .iter()
            .map(|e| &e.inputs)
            .chain(environments.unchanged.iter().map(|e| &e.inputs))
            .find(|i| i.name == name)
            .map(|i| i.branch.clone())
            .unwrap_or_default()
    };
    let image_failures = |failed: &[(String, String)]| -> Vec<EnvironmentFailure> {
        failed
            .iter()
            .map(|(name, reason)| EnvironmentFailure {
                name: Some(name.clone()),
                branch: branch_of(name),
                reason: reason.clone(),
                problem: None,
            })
            .collect()
    };
    let image = match build_image(request, &options, &output).await {
        Ok(image) => image,
        Err(ImageError::NoEnvironments { failed }) => {
            failures.extend(image_failures(&failed));
            failures.sort_by(|a, b| a.branch.cmp(&b.branch));
            return Err(RunError::AllFailed(failures));
        }
        Err(e) => return Err(e.into()),
    };
    failures.extend(image_failures(&image.failed));
    failures.sort_by(|a, b| a.branch.cmp(&b.branch));
    drop(environments);
    if let Some(client) = &status {
        let context = BuildContext {
            inputs_hash: args.report.inputs_hash.clone(),
            job_name: args.report.job_name(),
            start_time: Some(start_time),
            completion_time: Some(jiff::Timestamp::now()),
        };
        let mut record = build_record(&image, last_build.as_ref(), &context);
        record.failed = failed_records(&failures);
        write_status(client, &record).await?;
    }
    Ok(BuiltImage {
        reference: image.reference.clone(),
        image,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::InvalidBranchesArg;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BuildArgs,
    }

    fn parse(extra: &[&str]) -> Result<BuildArgs, clap::Error> {
        let mut argv = vec![
            "build",
            "--url",
            "git://127.0.0.1/control.git",
            "--branch",
            "production",
        ];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).map(|w| w.args)
    }

    #[test]
    fn exactly_one_output_is_required() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--image", "r.example/code", "--oci-layout", "/tmp/x"]).is_err());
        let args = parse(&["--image", "r.example/code", "--tag", "latest", "--insecure"]).unwrap();
        assert_eq!(args.image.as_deref(), Some("r.example/code"));
        assert!(args.insecure);
        assert_eq!(args.tags, ["latest"]);
        assert!(
            parse(&["--oci-layout", "/tmp/x"])
                .unwrap()
                .oci_layout
                .is_some()
        );
    }

    #[test]
    fn source_flags_are_shared_with_sync() {
        let args = parse(&[
            "--exclude",
            "wip_*",
            "--invalid-branches",
            "error",
            "--timeout",
            "2m",
            "--oci-layout",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(args.source.excludes, ["wip_*"]);
        assert_eq!(args.source.invalid_branches, InvalidBranchesArg::Error);
        assert_eq!(args.source.timeout, std::time::Duration::from_secs(120));
    }

    #[test]
    fn bad_tags_are_refused_before_any_work() {
        for tag in ["", "-x", ".x", "a/b", "a:b", &"t".repeat(129)] {
            let tag_arg = format!("--tag={tag}");
            let args = parse(&["--image", "r.example/code", &tag_arg]).unwrap();
            assert!(
                matches!(args.validate(), Err(RunError::Usage(_))),
                "{tag:?}"
            );
        }
        parse(&["--image", "r.example/code", "--tag", "v1.2_3-rc"])
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn source_annotations_carry_no_credentials() {
        assert_eq!(
            source_annotation("https://user:pw@git.example/c.git"),
            "https://git.example/c.git"
        );
        assert_eq!(
            source_annotation("https://token@git.example/c.git"),
            "https://git.example/c.git"
        );
        assert_eq!(
            source_annotation("git@git.example:puppet/c.git"),
            "git@git.example:puppet/c.git"
        );
        assert_eq!(
            source_annotation("git://127.0.0.1/c.git"),
            "git://127.0.0.1/c.git"
        );
    }

    #[test]
    fn partial_results_name_the_reference_and_every_failure() {
        let failures = crate::report::tests::failures();
        let image = PublishedImage {
            reference: "r.example/code@sha256:ab".into(),
            manifest_digest: "sha256:ab".into(),
            layers: Vec::new(),
            failed: Vec::new(),
            sent_blobs: 0,
            sent_bytes: 0,
        };
        let mut built = BuiltImage {
            reference: image.reference.clone(),
            image,
            failures: Vec::new(),
        };
        assert_eq!(built.result_line(), "r.example/code@sha256:ab");
        built.failures = failures;
        let line = built.result_line();
        assert!(
            line.starts_with("partial: r.example/code@sha256:ab; 2 of 2 environments failed: feature_x (branch feature/x): "),
            "{line}"
        );
        assert!(line.contains("branch Bad-Name: not a valid"), "{line}");
    }
}
