//! kubectl and helm for the tests: installed (and cached) by
//! `tests/scripts/install-kubectl-helm.sh`, once per test binary.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use crate::control_plane::{repo_root, scripts_dir};

/// The directory holding `kubectl` and `helm`.
pub fn tools_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let output = Command::new("bash")
            .arg(scripts_dir().join("install-kubectl-helm.sh"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running install-kubectl-helm.sh: {e}"))?;
        if !output.status.success() {
            return Err(format!("install-kubectl-helm.sh failed: {}", output.status));
        }
        // The script prints the directory as its last line.
        let dir = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(PathBuf::from(dir))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// `kubectl`: `$OPENVOX_CODE_KUBECTL` when set, else the installed one.
pub fn kubectl_path() -> Result<PathBuf> {
    match std::env::var_os("OPENVOX_CODE_KUBECTL").filter(|p| !p.is_empty()) {
        Some(path) => Ok(PathBuf::from(path)),
        None => Ok(tools_dir()?.join("kubectl")),
    }
}

/// A `helm` command whose caches and config stay out of the user's home.
pub fn helm() -> Result<Command> {
    let mut command = Command::new(tools_dir()?.join("helm"));
    let home = std::env::temp_dir().join("openvox-code-e2e-helm");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    Ok(command)
}

/// The chart `charts/openvox-code`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/openvox-code")
}

/// `helm template` of the chart as release `release` in `namespace`, with `--set`
/// values, as parsed documents.
pub fn chart_template(release: &str, namespace: &str, sets: &[&str]) -> Result<Vec<Value>> {
    let mut command = helm()?;
    command
        .args(["template", release])
        .arg(chart_dir())
        .args(["--namespace", namespace]);
    for set in sets {
        command.args(["--set", set]);
    }
    let out = command.output()?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    crate::apply::yaml_documents(&String::from_utf8_lossy(&out.stdout))
}
