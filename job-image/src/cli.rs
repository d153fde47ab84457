//! Command line of the worker.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use crate::branches::{BranchSelection, InvalidBranches};
use crate::codeconfig::CodeConfigModules;
use crate::environments::SourceOptions;
use crate::git::{Credentials, CredentialsError};
use crate::image::codec::Codec;
use crate::limits::{Limits, parse_bytes};
use crate::progress::line;
use crate::status::{CodeSourceRef, StatusClient, StatusError, job_name_from_hostname};
use crate::validate::puppet::PuppetValidation;

/// openvox-code worker: turns a control repository into Puppet environments.
#[derive(Debug, Parser)]
#[command(name = "openvox-code-worker", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// `--log-format text|json` (env OPENVOX_CODE_LOG_FORMAT), for every command.
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
}

// Parsed once at start; the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the environments of the selected branches and write them into a directory
    /// (PVC layout: one symlink per environment, switched atomically).
    Sync(SyncArgs),
    /// Build the environments of the selected branches into a digest-pinned OCI image
    /// and push it (or write an OCI layout); prints the pinned reference last.
    Build(BuildArgs),
}

/// What to do with branch names that are not valid environment names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InvalidBranchesArg {
    /// Non-word characters become `_`, letters are lower-cased (r10k).
    Correct,
    /// Refuse such branches.
    Error,
}

impl From<InvalidBranchesArg> for InvalidBranches {
    fn from(value: InvalidBranchesArg) -> Self {
        match value {
            InvalidBranchesArg::Correct => InvalidBranches::Correct,
            InvalidBranchesArg::Error => InvalidBranches::Error,
        }
    }
}

/// Where the environments come from: the flags shared by every command that builds
/// environments (`sync` here; an image build reuses them with `#[command(flatten)]`).
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Control repository: https://, http://, ssh://, user@host:path, git:// or file://.
    #[arg(long, env = "OPENVOX_CODE_URL")]
    pub url: String,
    /// Branch to deploy: an exact name or a glob (`feature_*`). Repeat for more. Only
    /// with `--code-config` may there be none: its static environments are then built.
    #[arg(
        long = "branch",
        required_unless_present = "code_config",
        value_name = "NAME_OR_GLOB"
    )]
    pub branches: Vec<String>,
    /// Glob of branches to leave out. Repeat for more.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Branch names that are not valid environment names: correct them or refuse them.
    #[arg(long, value_enum, default_value = "correct")]
    pub invalid_branches: InvalidBranchesArg,
    /// Directory with the git credentials, one file per key: username, password,
    /// bearerToken, identity, known_hosts, ca.crt (a mounted Secret).
    #[arg(long, env = "OPENVOX_CODE_SECRET_DIR")]
    pub secret_dir: Option<PathBuf>,
    /// Forge v3 API base URL for Forge modules.
    #[arg(long, default_value = "https://forgeapi.puppet.com")]
    pub forge_url: String,
    /// Time limit of one git operation or Forge request (`60s`, `2m`, `1m30s`).
    #[arg(long, default_value = "60s", value_parser = openvox_crds::duration::parse)]
    pub timeout: Duration,
    /// Network operations (ref listings, fetches, Forge requests) at a time.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
    /// Accept full history from a git server that ignores depth 1 (it does not speak
    /// protocol v2 on that transport) instead of failing.
    #[arg(long)]
    pub allow_full_history: bool,
    /// Directory for temporary files (Forge downloads). Default: the system's.
    #[arg(long, env = "OPENVOX_CODE_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Most files, directories and symlinks in one environment.
    #[arg(long)]
    pub max_files: Option<u64>,
    /// Largest file (`100M`).
    #[arg(long, value_parser = parse_bytes)]
    pub max_file_size: Option<u64>,
    /// Largest environment, all files added up (`4G`).
    #[arg(long, value_parser = parse_bytes)]
    pub max_environment_size: Option<u64>,
    /// Size of the scratch space (the pod's scratch volume, `spec.job.scratchSize`):
    /// fetched packs may take half, an environment half, decoded blobs what is left.
    #[arg(long, value_parser = parse_bytes)]
    pub scratch_size: Option<u64>,
    /// Directory shared with a Puppet validator container (`spec.validate`): rebuilt
    /// environments are validated there before they are published.
    #[arg(long, value_name = "DIR")]
    pub validate_dir: Option<PathBuf>,
    /// Time limit of the Puppet validation of one build.
    #[arg(long, default_value = "10m", value_parser = openvox_crds::duration::parse)]
    pub validate_timeout: Duration,
    /// openvox-code configuration (`openvox-code.yaml`, kind CodeConfig); its includes
    /// are read from the same directory. Each branch's modules then come from the module
    /// files its source names (and `openvox-code.lock`), not from its Puppetfile.
    #[arg(long, value_name = "PATH")]
    pub code_config: Option<PathBuf>,
}

impl SourceArgs {
    /// The source options, reading the secret directory.
    pub fn to_source_options(&self) -> Result<SourceOptions, CliError> {
        let credentials = match &self.secret_dir {
            Some(dir) => Credentials::from_secret_dir(dir)?,
            None => Credentials::none(),
        };
        let mut limits = Limits::default();
        if let Some(n) = self.max_files {
            limits.max_files_per_environment = n;
        }
        if let Some(n) = self.max_file_size {
            limits.max_file_bytes = n;
        }
        if let Some(n) = self.max_environment_size {
            limits.max_environment_bytes = n;
        }
        if let Some(n) = self.scratch_size {
            limits = limits.with_scratch(n);
        }
        let selection = if self.branches.is_empty() && self.code_config.is_some() {
            BranchSelection::nothing()
        } else {
            BranchSelection::new(self.branches.clone(), self.excludes.clone())
                .map_err(|e| CliError::Usage(e.to_string()))?
        };
        let code_config = match &self.code_config {
            Some(path) => {
                let loaded =
                    CodeConfigModules::load(path, &self.url).map_err(CliError::CodeConfig)?;
                log_loaded(&loaded);
                Some(Arc::new(loaded))
            }
            None => None,
        };
        if !(self.forge_url.starts_with("https://") || self.forge_url.starts_with("http://")) {
            return Err(CliError::Usage(format!(
                "--forge-url {:?} must be an http(s) URL",
                self.forge_url
            )));
        }
        Ok(SourceOptions {
            url: self.url.clone(),
            selection,
            invalid_branches: self.invalid_branches.into(),
            credentials,
            forge_url: self.forge_url.clone(),
            timeout: self.timeout,
            limits,
            jobs: self.jobs.max(1),
            allow_full_history: self.allow_full_history,
            work_dir: self.work_dir.clone().unwrap_or_else(std::env::temp_dir),
            puppet: self.validate_dir.clone().map(|dir| PuppetValidation {
                dir,
                timeout: self.validate_timeout,
            }),
            code_config,
        })
    }
}

/// One line for the loaded configuration, and a warning per key that has no effect in
/// the worker (the file is shared with the openvox-code tool, which uses them).
fn log_loaded(loaded: &CodeConfigModules) {
    let source = loaded.source();
    let patterns: Vec<String> = source
        .modulefiles
        .iter()
        .map(|s| s.pattern.to_string())
        .collect();
    tracing::info!(
        "{}",
        line(
            "config",
            &loaded.files.join(" + "),
            &format!(
                "source {}, module files {}",
                source.url,
                if patterns.is_empty() {
                    "none".to_owned()
                } else {
                    patterns.join(", ")
                }
            ),
            Duration::ZERO
        )
    );
    for ignored in &loaded.ignored {
        tracing::warn!(
            "{}",
            line(
                "config",
                &ignored.file,
                &format!("{} has no effect here: {}", ignored.key, ignored.reason),
                Duration::ZERO
            )
        );
    }
}

/// Where a run reports to: the CodeSource whose `status.lastBuild` receives the result
/// and the termination message. Shared by `build` and `sync`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// CodeSource (`<namespace>/<name>`) whose `status.lastBuild` receives the result.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "OPENVOX_CODE_CODESOURCE")]
    pub codesource: Option<String>,
    /// Hash of the inputs the controller launched this build for (`lastBuild.inputsHash`).
    #[arg(long)]
    pub inputs_hash: Option<String>,
    /// Name of the worker Job (`lastBuild.jobName`). Default: the pod name without the
    /// Job controller's suffix.
    #[arg(long, env = "OPENVOX_CODE_JOB_NAME")]
    pub job_name: Option<String>,
    /// Where the one-line result (the reference, or the failure) is written for the
    /// controller. Written only when the file's directory exists.
    #[arg(long, default_value = crate::report::TERMINATION_LOG, value_name = "PATH")]
    pub termination_log: PathBuf,
}

impl ReportArgs {
    /// A status client for `--codesource`, or `None` without it.
    pub async fn status_client(&self) -> Result<Option<StatusClient>, StatusError> {
        match &self.codesource {
            Some(text) => Ok(Some(
                StatusClient::connect(CodeSourceRef::parse(text)?).await?,
            )),
            None => Ok(None),
        }
    }

    /// `--job-name`, or the Job of this pod from `HOSTNAME`.
    pub fn job_name(&self) -> Option<String> {
        self.job_name.clone().or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .as_deref()
                .and_then(job_name_from_hostname)
        })
    }
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where the result is reported (shared with `build`).
    #[command(flatten)]
    pub report: ReportArgs,
    /// Name of the PersistentVolumeClaim mounted at --dir, for the record in
    /// `status.lastBuild.image` (`pvc:<claim>@sha256:…`). Default: the directory.
    #[arg(long, value_name = "NAME")]
    pub claim_name: Option<String>,
    /// Output directory: environments appear as `<dir>/<environment>`.
    #[arg(long)]
    pub dir: PathBuf,
    /// Old versions kept per environment besides the current one (servers may still
    /// be reading them).
    #[arg(long, default_value_t = 1)]
    pub keep_previous: usize,
}

/// Arguments of `build`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("output").required(true).args(["image", "oci_layout"])))]
pub struct BuildArgs {
    /// Where the environments come from (shared with `sync`).
    #[command(flatten)]
    pub source: SourceArgs,

    /// Registry repository to push to (`registry.example.com/puppet/code`, no tag).
    #[arg(long, value_name = "REGISTRY/REPOSITORY")]
    pub image: Option<String>,
    /// Write an OCI image layout into this directory instead of pushing.
    #[arg(long, value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
    /// Extra tag to push (or reference name in the layout). Repeat for more.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Docker config with registry credentials (`config.json` of a
    /// kubernetes.io/dockerconfigjson Secret). Default: `$DOCKER_CONFIG/config.json`
    /// when DOCKER_CONFIG is set.
    #[arg(long, value_name = "PATH")]
    pub registry_config: Option<PathBuf>,
    /// PEM file with CA certificates to trust for the registry, besides the system's.
    #[arg(long, value_name = "PATH")]
    pub registry_ca: Option<PathBuf>,
    /// Talk plain HTTP to the registry (loopback or a trusted network only).
    #[arg(long, visible_alias = "insecure-registry")]
    pub insecure: bool,
    /// Image to reuse unchanged layers from (`registry/repository@sha256:…` or a tag).
    /// Default: the first --tag of --image, or the image already in --oci-layout.
    #[arg(long, value_name = "REFERENCE")]
    pub previous: Option<String>,
    /// Tries per registry request before giving up (transient failures only).
    #[arg(long, default_value_t = 5)]
    pub push_retries: u32,
    /// `architecture` written into the image config.
    #[arg(long, default_value = "amd64")]
    pub architecture: String,
    /// Layer compression: gzip (every runtime reads it) or zstd (about gzip's size in
    /// under half its CPU; containerd 1.5+, CRI-O and Podman read it).
    #[arg(long, value_enum, default_value_t = Codec::Gzip)]
    pub compression: Codec,
    /// Layers built at a time. Default: the number of CPUs.
    #[arg(long)]
    pub build_jobs: Option<usize>,
    /// Blobs sent at a time.
    #[arg(long, default_value_t = 4)]
    pub upload_jobs: usize,
    /// Where the result is reported (shared with `sync`). The CodeSource's
    /// `status.lastBuild` also names the previous image when --previous is not given.
    #[command(flatten)]
    pub report: ReportArgs,
}

/// Arguments that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("{0}")]
    Usage(String),
    /// `--code-config` cannot be loaded, or has no source for `--url`.
    #[error("{0}")]
    CodeConfig(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_arguments_are_read() {
        let cli = Cli::try_parse_from([
            "openvox-code-worker",
            "sync",
            "--url",
            "git://127.0.0.1/control.git",
            "--branch",
            "production",
            "--branch",
            "feature_*",
            "--exclude",
            "*_wip",
            "--dir",
            "/tmp/envs",
            "--timeout",
            "2m",
            "--invalid-branches",
            "error",
            "--max-file-size",
            "10M",
        ])
        .unwrap();
        let Command::Sync(args) = cli.command else {
            panic!("sync expected");
        };
        let options = args.to_options().unwrap();
        assert_eq!(options.dir, PathBuf::from("/tmp/envs"));
        assert_eq!(options.source.timeout, Duration::from_secs(120));
        assert_eq!(options.source.invalid_branches, InvalidBranches::Error);
        assert_eq!(options.source.limits.max_file_bytes, 10 << 20);
        assert!(options.source.selection.matches("feature_x"));
        assert!(!options.source.selection.matches("feature_wip"));
        assert!(options.source.credentials.http.is_none());
    }

    #[test]
    fn sync_takes_the_reporting_flags_the_controller_passes() {
        let cli = Cli::try_parse_from([
            "openvox-code-worker",
            "sync",
            "--url",
            "git://127.0.0.1/control.git",
            "--branch",
            "production",
            "--dir",
            "/var/lib/openvox-code/claim",
            "--claim-name",
            "code",
            "--codesource",
            "puppet/production",
            "--inputs-hash",
            "0123abcd",
            "--job-name",
            "production-0123abcd",
        ])
        .unwrap();
        let Command::Sync(args) = cli.command else {
            panic!("sync expected");
        };
        assert_eq!(args.claim_name.as_deref(), Some("code"));
        assert_eq!(args.report.codesource.as_deref(), Some("puppet/production"));
        assert_eq!(args.report.inputs_hash.as_deref(), Some("0123abcd"));
        assert_eq!(
            args.report.job_name().as_deref(),
            Some("production-0123abcd")
        );
        assert_eq!(
            args.report.termination_log,
            PathBuf::from("/dev/termination-log")
        );
    }

    #[test]
    fn code_config_is_a_flag_of_both_commands_and_loaded_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openvox-code.yaml");
        std::fs::write(
            &path,
            "sources:\n  - url: git://127.0.0.1/control.git\n    modulefiles:\n      modules.yaml: required\n",
        )
        .unwrap();
        let path_arg = path.to_str().unwrap();
        let common = ["--url", "git://127.0.0.1/control.git", "--branch", "p"];
        let sync = [
            &["openvox-code-worker", "sync", "--dir", "d"][..],
            &common[..],
        ]
        .concat();
        let build = [
            &["openvox-code-worker", "build", "--oci-layout", "l"][..],
            &common[..],
        ]
        .concat();
        for args in [sync, build] {
            let with = [&args[..], &["--code-config", path_arg][..]].concat();
            let source = match Cli::try_parse_from(&with).unwrap().command {
                Command::Sync(a) => a.source,
                Command::Build(a) => a.source,
            };
            assert_eq!(source.code_config.as_deref(), Some(path.as_path()));
            let options = source.to_source_options().unwrap();
            let loaded = options.code_config.expect("loaded");
            assert_eq!(loaded.main_file, "openvox-code.yaml");
            assert_eq!(loaded.source().modulefiles.len(), 1);
            let without = match Cli::try_parse_from(&args).unwrap().command {
                Command::Sync(a) => a.source,
                Command::Build(a) => a.source,
            };
            assert!(without.to_source_options().unwrap().code_config.is_none());
        }

        std::fs::write(&path, "sources:\n  - url: x\n    modulefile: {}\n").unwrap();
        let cli = Cli::try_parse_from([
            "openvox-code-worker",
            "sync",
            "--dir",
            "d",
            "--url",
            "git://127.0.0.1/control.git",
            "--branch",
            "p",
            "--code-config",
            path_arg,
        ])
        .unwrap();
        let Command::Sync(args) = cli.command else {
            panic!("sync expected");
        };
        let e = args.source.to_source_options().unwrap_err();
        assert!(matches!(e, CliError::CodeConfig(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "--code-config {path_arg}: openvox-code.yaml:3:5: "
            )) && text.contains("unknown field `modulefile`"),
            "{text}"
        );
    }

    #[test]
    fn a_branch_is_required() {
        let e = Cli::try_parse_from(["openvox-code-worker", "sync", "--url", "x", "--dir", "d"])
            .unwrap_err();
        assert!(e.to_string().contains("--branch"), "{e}");
    }
}
