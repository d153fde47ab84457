//! A module: one git repository installed as one directory of an environment. The
//! same shape appears in modulesets, static environments and ModuleFiles.

use serde::Deserialize;

use crate::checks::de_with;

/// Where modules go when `target_dir` is not given, as for Puppet's default modulepath.
pub const DEFAULT_TARGET_DIR: &str = "modules";

/// A module with its defaults filled in (`target_dir` = `modules`, `install_as` =
/// `name`), so every reader computes the same install path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawModule")]
pub struct Module {
    /// The module's identity: later definitions with the same name replace earlier ones,
    /// and a ModuleFile's `exclude` lists these names.
    pub name: String,
    /// The repository URL, before any mirror is applied (see [`crate::mirror`]).
    pub git: String,
    /// A branch, tag or commit; `None` means the remote's HEAD.
    pub reference: Option<String>,
    /// Use the branch named like the environment when the repository has one.
    pub follow_branch: bool,
    /// The directory under the environment that holds the module.
    pub target_dir: String,
    /// The module's directory name inside `target_dir`.
    pub install_as: String,
}

impl Module {
    /// Where the module lands inside its environment, e.g. `modules/stdlib`.
    pub fn install_path(&self) -> String {
        format!("{}/{}", self.target_dir, self.install_as)
    }
}

/// The module as written. Every string is checked by its own deserializer, so a bad
/// value is reported at its line and key (`modulesets.base[0].install_as`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    #[serde(deserialize_with = "de_with::dir_name")]
    name: String,
    #[serde(deserialize_with = "de_with::git_url")]
    git: String,
    #[serde(rename = "ref", default, deserialize_with = "de_with::opt_git_ref")]
    reference: Option<String>,
    #[serde(default)]
    follow_branch: bool,
    #[serde(default, deserialize_with = "de_with::opt_relative_path")]
    target_dir: Option<String>,
    #[serde(default, deserialize_with = "de_with::opt_dir_name")]
    install_as: Option<String>,
}

impl From<RawModule> for Module {
    fn from(raw: RawModule) -> Self {
        let install_as = raw.install_as.unwrap_or_else(|| raw.name.clone());
        Self {
            name: raw.name,
            git: raw.git,
            reference: raw.reference,
            follow_branch: raw.follow_branch,
            target_dir: raw
                .target_dir
                .unwrap_or_else(|| DEFAULT_TARGET_DIR.to_owned()),
            install_as,
        }
    }
}

/// Adds `module` to `modules`, replacing (in place) a module of the same name: the one
/// rule for "later overrides earlier by name" wherever module lists are combined.
pub(crate) fn put(modules: &mut Vec<Module>, module: Module) {
    match modules.iter_mut().find(|m| m.name == module.name) {
        Some(existing) => *existing = module,
        None => modules.push(module),
    }
}
