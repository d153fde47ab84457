//! What a run of `build` or `sync` tells: the one-line summary of failed environments,
//! the `lastBuild.failed` records, and the termination message the controller reads.
//! Both commands report through here, so their lines read alike.

use std::path::Path;

use openvox_crds::codesource::FailedEnvironment;

use crate::environments::EnvironmentFailure;
use crate::git::mask_text;

/// Default path of the termination message in a pod.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// `<n> of <total> environments failed: <each failure>`.
pub fn failures_line(failures: &[EnvironmentFailure], total: usize) -> String {
    format!(
        "{} of {total} environments failed: {}",
        failures.len(),
        reasons(failures)
    )
}

/// `every environment failed<consequence>: <each failure>` (the consequence, such as
/// ", nothing switched", says what the command left alone).
pub fn all_failed_line(failures: &[EnvironmentFailure], consequence: &str) -> String {
    format!(
        "every environment failed{consequence}: {}",
        reasons(failures)
    )
}

fn reasons(failures: &[EnvironmentFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `lastBuild.failed`: one entry per failed environment, reasons masked.
pub fn failed_records(failures: &[EnvironmentFailure]) -> Vec<FailedEnvironment> {
    failures
        .iter()
        .map(|f| FailedEnvironment {
            branch: f.branch.clone(),
            name: f.name.clone(),
            reason: mask_text(&f.reason.replace('\n', " ")),
            file: f.problem.as_ref().map(|p| mask_text(&p.file)),
            line: f.problem.as_ref().and_then(|p| p.line),
            column: f.problem.as_ref().and_then(|p| p.column),
        })
        .collect()
}

/// Writes `text` as the termination message (see [`may_write_termination`]); errors
/// are only logged: the message is a courtesy to the controller.
pub fn write_termination_message(path: &Path, text: &str) {
    let parent_is_dir = path
        .parent()
        .is_some_and(|p| p.as_os_str().is_empty() || p.is_dir());
    if !may_write_termination(path, path.is_file(), parent_is_dir) {
        return;
    }
    // Kubernetes keeps at most 4096 bytes of it.
    let line: String = mask_text(&text.replace('\n', " "))
        .chars()
        .take(4000)
        .collect();
    if let Err(e) = std::fs::write(path, line) {
        tracing::debug!("termination message {}: {e}", path.display());
    }
}

/// Whether to write the termination message at `path`. A path given with
/// `--termination-log` is written when its directory exists. The default
/// `/dev/termination-log` only when the file is already there: in a pod the runtime
/// creates it; on a host (a worker run by hand, or by the tests' node simulation) `/dev`
/// exists too, and a stray `/dev/termination-log` must not be created there.
pub fn may_write_termination(path: &Path, file_exists: bool, parent_is_dir: bool) -> bool {
    if path == Path::new(TERMINATION_LOG) {
        file_exists
    } else {
        parent_is_dir
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two failures: one with a credential in its reason, one without an environment name.
    pub(crate) fn failures() -> Vec<EnvironmentFailure> {
        vec![
            EnvironmentFailure {
                name: Some("feature_x".into()),
                branch: "feature/x".into(),
                reason: "module m: fetch https://user:pw@git.example/m.git:\nrefused".into(),
                problem: None,
            },
            EnvironmentFailure {
                name: None,
                branch: "Bad-Name".into(),
                reason: "not a valid environment name".into(),
                problem: None,
            },
        ]
    }

    #[test]
    fn both_commands_name_every_failure_the_same_way() {
        let line = failures_line(&failures(), 5);
        assert!(
            line.starts_with("2 of 5 environments failed: feature_x (branch feature/x): "),
            "{line}"
        );
        assert!(line.contains("; branch Bad-Name: not a valid"), "{line}");
        let all = all_failed_line(&failures(), ", nothing switched");
        assert!(
            all.starts_with("every environment failed, nothing switched: feature_x"),
            "{all}"
        );
    }

    #[test]
    fn failed_records_are_masked_one_line_each() {
        let records = failed_records(&failures());
        assert_eq!(records[0].branch, "feature/x");
        assert_eq!(records[0].name.as_deref(), Some("feature_x"));
        assert!(!records[0].reason.contains("pw@"), "{}", records[0].reason);
        assert!(!records[0].reason.contains('\n'));
        assert_eq!(records[1].name, None);
    }

    #[test]
    fn the_default_termination_log_is_written_only_where_the_runtime_made_it() {
        let default = Path::new(TERMINATION_LOG);
        assert!(may_write_termination(default, true, true), "in a pod");
        assert!(!may_write_termination(default, false, true), "on a host");
        let given = Path::new("/tmp/pod/termination/worker");
        assert!(
            may_write_termination(given, false, true),
            "an explicit path"
        );
        assert!(
            !may_write_termination(given, false, false),
            "no such directory"
        );
    }

    #[test]
    fn termination_messages_are_one_masked_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write_termination_message(
            &path,
            "fetch https://user:pw@git.example/c.git: failed\nsecond line",
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("pw@"), "{text}");
        assert!(!text.contains('\n'));
        write_termination_message(&dir.path().join("missing/termination-log"), "x");
    }
}
