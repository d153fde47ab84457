//! The `sync` command: build the environments of a control repository and write them into
//! a directory in PVC layout ([`crate::pvc`]), purge environments whose branch went away,
//! and clean up old versions.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::environments::{
    BuildError, Environment, EnvironmentFailure, EnvironmentInputs, SourceOptions,
    build_environments,
};
use crate::limits::Bytes;
use crate::progress::{Step, count};
use crate::pvc::{Installed, OutputDir, PvcError};
use crate::tree::ContentReader;

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
    #[error("{0}")]
    Local(String),
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
}

impl SyncReport {
    /// One line naming every failure, or `None` when all went well.
    pub fn failure_summary(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let total = self.failed.len() + self.installed.len();
        let reasons: Vec<String> = self.failed.iter().map(ToString::to_string).collect();
        Some(format!(
            "{} of {total} environments failed: {}",
            self.failed.len(),
            reasons.join("; ")
        ))
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
            }),
        }
    }
    drop(built);
    failed.sort_by(|a, b| a.branch.cmp(&b.branch));

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
    Ok(SyncReport {
        installed,
        failed,
        purged,
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
