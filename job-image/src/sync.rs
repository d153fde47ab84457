//! The `sync` command: build the environments of a control repository and write them into
//! a directory in PVC layout ([`crate::pvc`]), purge environments whose branch went away,
//! and clean up old versions. With `--codesource`, the result goes into
//! `status.lastBuild` like an image build's: `image` is `pvc:<claim>@sha256:<digest of
//! the environment versions in place>`, so it changes exactly when what servers see
//! changes. Some environments failed: the others are switched in, the record lists the
//! failures and the termination message starts with `partial:`. All failed: nothing is
//! switched or purged, no record is written, and the run fails.

use std::path::PathBuf;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::environments::{
    BuildError, Environment, EnvironmentFailure, EnvironmentInputs, SourceOptions,
    build_environments,
};
use openvox_crds::codesource::{BuildRecord, EnvironmentRecord};

use crate::cli::{CliError, SyncArgs};
use crate::limits::Bytes;
use crate::progress::{Step, count};
use crate::pvc::{Installed, OutputDir, PvcError, state_digest};
use crate::report::{all_failed_line, failed_records, failures_line, write_termination_message};
use crate::status::{StatusError, write_status};
use crate::tree::ContentReader;

impl SyncArgs {
    /// The options of a sync, reading the secret directory.
    pub fn to_options(&self) -> Result<SyncOptions, CliError> {
        Ok(SyncOptions {
            source: self.source.to_source_options()?,
            dir: self.dir.clone(),
            keep_previous: self.keep_previous,
            write_jobs: std::thread::available_parallelism().map_or(2, usize::from),
        })
    }
}

/// Options of `sync`.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source: SourceOptions,
    /// The output directory (the volume's mount point).
    pub dir: PathBuf,
    /// Old versions kept per environment besides the current one.
    pub keep_previous: usize,
    /// Environments written at a time.
    pub write_jobs: usize,
}

/// A sync that could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Output(#[from] PvcError),
    #[error("{}", every_failure(.0))]
    AllFailed(Vec<EnvironmentFailure>),
    #[error("{0}")]
    Local(String),
}

fn every_failure(failures: &[EnvironmentFailure]) -> String {
    all_failed_line(failures, ", nothing switched")
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Environments now in place, in name order.
    pub installed: Vec<(Installed, EnvironmentInputs)>,
    /// Environments that failed (their previous version, if any, stays in place).
    pub failed: Vec<EnvironmentFailure>,
    /// Environments removed because their branch is gone.
    pub purged: Vec<String>,
    /// Every environment in place after the sync (failed ones keep their previous
    /// version), in name order, with its version directory.
    pub in_place: Vec<(String, String)>,
    /// The records of `in_place`, in the same order.
    pub records: Vec<EnvironmentRecord>,
}

impl SyncReport {
    /// One line naming every failure, or `None` when all went well.
    pub fn failure_summary(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let total = self.failed.len() + self.installed.len();
        Some(failures_line(&self.failed, total))
    }
}

/// Runs a sync.
pub async fn sync(options: &SyncOptions) -> Result<SyncReport, SyncError> {
    // Take the lock first: a second sync of the same directory fails before any work.
    let output = OutputDir::open(&options.dir)?;
    let environments = build_environments(&options.source).await?;
    let mut failed = environments.failed.clone();

    let mut environments = environments;
    let built = std::mem::take(&mut environments.built);
    let jobs = options.write_jobs.max(1);
    let (output, built, results) = tokio::task::spawn_blocking(move || {
        let results = install_all(&output, &built, jobs);
        (output, built, results)
    })
    .await
    .map_err(|e| SyncError::Local(format!("writing stopped: {e}")))?;

    let mut installed = Vec::new();
    for (env, result) in built.iter().zip(results) {
        match result {
            Ok(done) => installed.push((done, env.inputs.clone())),
            Err(e) => failed.push(EnvironmentFailure {
                name: Some(env.inputs.name.clone()),
                branch: env.inputs.branch.clone(),
                reason: e.to_string(),
                problem: None,
            }),
        }
    }
    drop(built);
    failed.sort_by(|a, b| a.branch.cmp(&b.branch));
    // Nothing built: leave the directory exactly as it was, purge included (a failure
    // to read the repository must not look like deleted branches).
    if installed.is_empty() && !failed.is_empty() {
        return Err(SyncError::AllFailed(failed));
    }

    let step = Step::start("purge", output.root().display());
    let purged = output.purge(&environments.selected_names)?;
    step.done(if purged.is_empty() {
        "nothing to purge".to_owned()
    } else {
        format!("removed {}", purged.join(", "))
    });
    let step = Step::start("cleanup", output.root().display());
    let mut removed = 0;
    for (done, _) in &installed {
        removed += output.cleanup(&done.name, options.keep_previous)?;
    }
    step.done(format!("{removed} old versions removed"));
    drop(environments);
    let in_place = output.current_versions()?;
    let mut records = Vec::with_capacity(in_place.len());
    for (name, version) in &in_place {
        let fresh = installed
            .iter()
            .find(|(done, _)| &done.name == name && &done.version == version);
        records.push(match fresh {
            Some((_, inputs)) => inputs.to_record(None),
            None => output.version_record(name, version)?,
        });
    }
    Ok(SyncReport {
        installed,
        failed,
        purged,
        in_place,
        records,
    })
}

/// A `sync` command that did not switch anything in, or whose record could not be
/// written.
#[derive(Debug, thiserror::Error)]
pub enum RunSyncError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Status(#[from] StatusError),
}

impl RunSyncError {
    /// True when running again cannot help (bad arguments or credentials files).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RunSyncError::Cli(_) | RunSyncError::Status(StatusError::Reference(_))
        )
    }
}

/// The result of the `sync` command.
#[derive(Debug)]
pub struct Synced {
    /// `pvc:<claim or directory>@sha256:<state digest>`.
    pub reference: String,
    /// The record (written into `status.lastBuild` with `--codesource`).
    pub record: BuildRecord,
    pub report: SyncReport,
}

impl Synced {
    /// The one-line result: the reference, or `partial: …` naming the failures.
    pub fn message(&self) -> String {
        match self.report.failure_summary() {
            Some(summary) => format!("partial: {}; {summary}", self.reference),
            None => self.reference.clone(),
        }
    }
}

/// The reference of a claim state: `pvc:<label>@sha256:<digest>`.
pub fn claim_reference(label: &str, in_place: &[(String, String)]) -> String {
    format!("pvc:{label}@sha256:{}", state_digest(in_place))
}

/// The `lastBuild` record of a sync.
pub fn sync_record(
    reference: &str,
    report: &SyncReport,
    context: &crate::status::BuildContext,
) -> BuildRecord {
    let hex = reference.rsplit_once("@sha256:").map_or("", |(_, h)| h);
    BuildRecord {
        image: reference.to_owned(),
        short_digest: Some(hex.chars().take(12).collect()),
        inputs_hash: context.inputs_hash.clone(),
        environments: report.records.clone(),
        job_name: context.job_name.clone(),
        start_time: context.start_time.map(Time),
        completion_time: context.completion_time.map(Time),
        failed: failed_records(&report.failed),
    }
}

/// Runs the `sync` command: the sync, the record in status (with `--codesource`) and
/// the termination message.
pub async fn run_sync(args: &SyncArgs) -> Result<Synced, RunSyncError> {
    let result = run(args).await;
    let message = match &result {
        Ok(synced) => synced.message(),
        Err(e) => e.to_string(),
    };
    write_termination_message(&args.report.termination_log, &message);
    result
}

async fn run(args: &SyncArgs) -> Result<Synced, RunSyncError> {
    let start_time = jiff::Timestamp::now();
    let options = args.to_options()?;
    // Connect first: a wrong --codesource fails before any work.
    let status = args.report.status_client().await?;
    let report = sync(&options).await?;
    let label = args
        .claim_name
        .clone()
        .unwrap_or_else(|| options.dir.display().to_string());
    let reference = claim_reference(&label, &report.in_place);
    let context = crate::status::BuildContext {
        inputs_hash: args.report.inputs_hash.clone(),
        job_name: args.report.job_name(),
        start_time: Some(start_time),
        completion_time: Some(jiff::Timestamp::now()),
    };
    let record = sync_record(&reference, &report, &context);
    if let Some(client) = &status {
        write_status(client, &record).await?;
    }
    Ok(Synced {
        reference,
        record,
        report,
    })
}

/// Installs every environment, `jobs` at a time, each thread with its own reader.
fn install_all(
    output: &OutputDir,
    built: &[Environment],
    jobs: usize,
) -> Vec<Result<Installed, PvcError>> {
    let next = Mutex::new(0usize);
    let results: Vec<Mutex<Option<Result<Installed, PvcError>>>> =
        built.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(built.len()) {
            scope.spawn(|| {
                let mut reader = ContentReader::new();
                loop {
                    let index = {
                        let mut guard = match next.lock() {
                            Ok(g) => g,
                            Err(poisoned) => poisoned.into_inner(),
                        };
                        let i = *guard;
                        *guard += 1;
                        i
                    };
                    let Some(env) = built.get(index) else { break };
                    let step = Step::start("write", &env.inputs.name);
                    let result = output.install(env, &mut reader);
                    match &result {
                        Ok(done) if done.reused => step.done(format!(
                            "unchanged, kept .versions/{}/{}",
                            done.name, done.version
                        )),
                        Ok(done) => step.done(format!(
                            "{} files, {} -> .versions/{}/{}",
                            count(done.written.files),
                            Bytes(done.written.bytes),
                            done.name,
                            done.version
                        )),
                        Err(e) => step.failed(e),
                    }
                    if let Ok(mut slot) = results[index].lock() {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(PvcError::Io {
                    path: PathBuf::new(),
                    message: "the writer thread stopped".into(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use openvox_crds::codesource::FailedEnvironment;

    use super::*;
    use crate::status::BuildContext;

    fn report(in_place: &[(&str, &str)], failed: &[&str]) -> SyncReport {
        SyncReport {
            in_place: in_place
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            failed: failed
                .iter()
                .map(|b| EnvironmentFailure {
                    name: Some((*b).to_owned()),
                    branch: (*b).to_owned(),
                    reason: "broken".into(),
                    problem: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_reference_changes_with_any_switched_added_or_removed_environment() {
        let base = report(&[("production", "a-1"), ("staging", "b-1")], &[]);
        let reference = claim_reference("code", &base.in_place);
        assert!(reference.starts_with("pvc:code@sha256:"), "{reference}");
        assert_eq!(reference, claim_reference("code", &base.in_place));
        for other in [
            report(&[("production", "a-1"), ("staging", "b-2")], &[]),
            report(&[("production", "a-1")], &[]),
            report(
                &[("production", "a-1"), ("staging", "b-1"), ("x", "c")],
                &[],
            ),
        ] {
            assert_ne!(claim_reference("code", &other.in_place), reference);
        }
    }

    #[test]
    fn the_record_carries_the_failures_and_the_context() {
        let r = report(&[("production", "a-1")], &["staging"]);
        let reference = claim_reference("code", &r.in_place);
        let context = BuildContext {
            inputs_hash: Some("h".into()),
            job_name: Some("production-1".into()),
            ..Default::default()
        };
        let record = sync_record(&reference, &r, &context);
        assert_eq!(record.image, reference);
        assert_eq!(
            record.short_digest.as_deref(),
            Some(&reference["pvc:code@sha256:".len()..][..12])
        );
        assert_eq!(record.inputs_hash.as_deref(), Some("h"));
        assert_eq!(record.job_name.as_deref(), Some("production-1"));
        assert_eq!(
            record.failed,
            [FailedEnvironment {
                branch: "staging".into(),
                name: Some("staging".into()),
                reason: "broken".into(),
                ..Default::default()
            }]
        );
        let synced = Synced {
            reference: reference.clone(),
            record,
            report: r,
        };
        let message = synced.message();
        // Reasons in the record are masked like an image build's.
        let mut leaky = report(&[("production", "a-1")], &["staging"]);
        leaky.failed[0].reason = "fetch https://deploy:s3cret@git.example/m.git: refused".into();
        let record = sync_record(&reference, &leaky, &context);
        assert!(
            !record.failed[0].reason.contains("s3cret"),
            "{:?}",
            record.failed
        );
        assert!(
            message.starts_with(&format!("partial: {reference}; ")),
            "{message}"
        );
        assert!(message.ends_with("staging: broken"), "{message}");
    }
}
