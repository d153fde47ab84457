//! Worker-specific test helpers: running the worker binary and looking at what it left
//! behind. The servers and git fixtures (git daemon, smart HTTP, sshd, a static Forge,
//! TLS) are `harness::fixtures`, shared with the other crates' tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::fixtures::Scratch;

/// The result of one worker run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last line on stderr (the one-line reason on failure).
    pub fn reason(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "worker failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn assert_failed(&self) -> &Self {
        assert_ne!(
            self.code, 0,
            "worker should have failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.reason().starts_with("error: "),
            "last line is not the reason: {}",
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the worker binary with `args`; its temporary files go to `tmp` (which the caller
/// can check is empty afterwards).
pub fn worker(args: &[&str], tmp: &Path) -> Run {
    std::fs::create_dir_all(tmp).unwrap();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_openvox-code-worker"))
        .args(args)
        .env("TMPDIR", tmp)
        .env_remove("RUST_LOG")
        .env_remove("OPENVOX_CODE_URL")
        .env_remove("OPENVOX_CODE_SECRET_DIR")
        .env_remove("OPENVOX_CODE_WORK_DIR")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Entries left in `dir` (to check that temporary files are gone).
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes a secret directory with `files`.
pub fn secret_dir(scratch: &Scratch, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = scratch.mkdir(name);
    for (k, v) in files {
        std::fs::write(dir.join(k), v).unwrap();
    }
    dir
}
