//! `openvox-code-worker`: see `openvox-code-worker --help`.

use std::process::ExitCode;

use clap::Parser;
use openvox_code_worker::cli::{Cli, Command};
use openvox_code_worker::image::build::run_build;
use openvox_code_worker::logging;
use openvox_code_worker::progress::count;
use openvox_code_worker::sync::run_sync;
use openvox_crds::names::WORKER_PERMANENT_FAILURE_EXIT_CODE;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Wrong arguments will not get better on a retry: exit with the permanent
        // failure code so the Job fails at once instead of using up its backoff.
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(permanent_failure_code());
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    logging::init(cli.log.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Sync(args) => match runtime.block_on(run_sync(&args)) {
            Ok(synced) => {
                let names: Vec<String> = synced
                    .report
                    .installed
                    .iter()
                    .map(|(done, inputs)| {
                        format!(
                            "{}@{}",
                            done.name,
                            &inputs.commit[..inputs.commit.len().min(12)]
                        )
                    })
                    .collect();
                println!(
                    "synced {} environments into {}: {}",
                    count(synced.report.installed.len() as u64),
                    args.dir.display(),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(" ")
                    }
                );
                // The reference is the last line of standard output, as for `build`.
                println!("{}", synced.reference);
                // Some environments failed, the others are in place: a success with a
                // warning (the record in status lists the failures).
                if let Some(summary) = synced.report.failure_summary() {
                    logging::final_warning(&format!("partial: {summary}"));
                }
                ExitCode::SUCCESS
            }
            Err(e) => failed(&e.to_string(), e.is_permanent()),
        },
        Command::Build(args) => match runtime.block_on(run_build(args)) {
            Ok(built) => {
                // The pinned reference is the last line of standard output.
                println!("{}", built.reference);
                // Published without some environments (they keep their previous layer):
                // a success, since a retry would build the same; `lastBuild.failed` and
                // the termination message (`partial: …`) tell the controller.
                if let Some(summary) = built.failure_summary() {
                    logging::final_warning(&format!("partial: {summary}"));
                }
                ExitCode::SUCCESS
            }
            Err(e) => failed(&e.to_string(), e.is_permanent()),
        },
    }
}

/// Prints the one-line reason; a permanent failure (retrying cannot help) exits with
/// the code that makes the Job give up at once.
fn failed(reason: &str, permanent: bool) -> ExitCode {
    let code = fail(reason);
    if permanent {
        ExitCode::from(permanent_failure_code())
    } else {
        code
    }
}

/// The exit code of a permanent failure.
fn permanent_failure_code() -> u8 {
    u8::try_from(WORKER_PERMANENT_FAILURE_EXIT_CODE).unwrap_or(1)
}

/// Prints the one-line reason and returns the failure exit code.
fn fail(reason: &str) -> ExitCode {
    logging::final_error(reason);
    ExitCode::FAILURE
}
