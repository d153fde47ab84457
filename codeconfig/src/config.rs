//! `kind: CodeConfig` (usually `openvox-code.yaml`): the typed schema of one file, and
//! the merged configuration the rest of the crate works on.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use crate::checks::de_with;
use crate::glob::{Glob, deserialize_path_glob};
use crate::mirrors::{Overrides, mirror};
use crate::module::Module;
use crate::modulefile::{ModuleFileSpec, deserialize_modulefiles};
use crate::selector::BranchSelector;

/// The `kind` of the main configuration.
pub const CODE_CONFIG_KIND: &str = "CodeConfig";

/// A configuration after its includes are merged (see [`crate::load_code_config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeConfig {
    /// The main file's include patterns, relative to its directory.
    pub includes: Vec<Glob>,
    /// Control repositories whose branches become environments.
    pub sources: Vec<Source>,
    /// Named module lists that static environments combine.
    pub modulesets: BTreeMap<String, Vec<Module>>,
    /// Environments declared by name, built from any branch, tag or commit.
    pub environments: BTreeMap<String, StaticEnvironment>,
    pub overrides: Overrides,
}

impl CodeConfig {
    /// The index of the source for the control repository at `control_url`: the first
    /// whose `url` is `control_url` as written or after mirroring (either side may be
    /// the mirror: the controller holds the original URL, the worker may be given the
    /// mirror's); else the only source there is. The controller and the worker pick
    /// the source with this one rule, so they always agree on it.
    pub fn source_for(&self, control_url: &str) -> Result<usize, NoSource> {
        let mirrored = mirror(control_url, &self.overrides);
        let found = self.sources.iter().position(|s| {
            let source = mirror(&s.url, &self.overrides);
            s.url == control_url || source == control_url || source == mirrored
        });
        match (found, self.sources.len()) {
            (Some(index), _) => Ok(index),
            (None, 1) => Ok(0),
            (None, 0) => Err(NoSource::Empty),
            (None, n) => Err(NoSource::Ambiguous(n)),
        }
    }
}

/// Why no source applies to a control repository (the caller words it, with the URL
/// as it may show it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSource {
    /// `sources` is empty.
    Empty,
    /// None of this many sources has the URL.
    Ambiguous(usize),
}

/// A control repository whose selected branches become environments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(deserialize_with = "de_with::git_url")]
    pub url: String,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub branch_selector: BranchSelector,
    /// The module files to read from each branch, in the order they apply.
    #[serde(default, deserialize_with = "deserialize_modulefiles")]
    pub modulefiles: Vec<ModuleFileSpec>,
}

/// An environment declared by name in `environments`. It wins over a branch of the
/// same name (see [`crate::plan_environments`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticEnvironment {
    /// The control repository's branch, tag or commit. Optional in each file so an
    /// include can add modules to an environment another file declares; required once
    /// the files are merged, so it is never empty in a loaded [`CodeConfig`].
    #[serde(rename = "ref", default, deserialize_with = "de_with::opt_git_ref")]
    pub reference: Option<String>,
    /// Names of `modulesets`, applied in this order.
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub modulesets: Vec<String>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub modules: Vec<Module>,
}

/// A key that only means something to openvox-code on a CI runner. It is accepted, so
/// the same file serves both tools, and reported so the product can warn that it has no
/// effect here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    /// The file that sets it.
    pub file: String,
    pub key: &'static str,
    /// What to do instead.
    pub reason: &'static str,
}

/// The CI-runner keys and why each has no effect in the controller and worker.
pub(crate) const IGNORED_KEYS: [(&str, &str); 5] = [
    (
        "cachedir",
        "the worker keeps its own git cache in its scratch space",
    ),
    (
        "environmentdir",
        "environments are built into images; the CodeSource output says where images go",
    ),
    (
        "offline",
        "the worker always fetches from the remotes; use overrides.gitmirror for a local mirror",
    ),
    ("oci", "the CodeSource output says where images go"),
    (
        "git",
        "use the CodeSource's git Secret for keys, known hosts and credentials",
    ),
];

/// One file's spec as written, including the keys that are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    #[serde(default, deserialize_with = "path_globs")]
    pub(crate) includes: Vec<Glob>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub(crate) sources: Vec<Source>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub(crate) modulesets: BTreeMap<String, Vec<Module>>,
    #[serde(default, deserialize_with = "environment_map")]
    pub(crate) environments: BTreeMap<String, StaticEnvironment>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub(crate) overrides: Overrides,
    #[serde(default)]
    cachedir: Option<Value>,
    #[serde(default)]
    environmentdir: Option<Value>,
    #[serde(default)]
    offline: Option<Value>,
    #[serde(default)]
    oci: Option<Value>,
    #[serde(default)]
    git: Option<Value>,
}

impl Spec {
    /// The CI-runner keys this file sets (a key set to null counts as unset).
    pub(crate) fn ignored_keys(&self, file: &str) -> Vec<IgnoredKey> {
        let set = [
            &self.cachedir,
            &self.environmentdir,
            &self.offline,
            &self.oci,
            &self.git,
        ];
        IGNORED_KEYS
            .iter()
            .zip(set)
            .filter(|(_, value)| value.is_some())
            .map(|((key, reason), _)| IgnoredKey {
                file: file.to_owned(),
                key,
                reason,
            })
            .collect()
    }
}

fn path_globs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Glob>, D::Error> {
    #[derive(Deserialize)]
    struct PathGlob(#[serde(deserialize_with = "deserialize_path_glob")] Glob);
    let globs: Option<Vec<PathGlob>> = Option::deserialize(deserializer)?;
    Ok(globs.into_iter().flatten().map(|g| g.0).collect())
}

/// Environment names become directory names, so they are checked as such, at the key.
fn environment_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, StaticEnvironment>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord, Deserialize)]
    struct Name(#[serde(deserialize_with = "de_with::dir_name")] String);
    let map: Option<BTreeMap<Name, StaticEnvironment>> = Option::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .flatten()
        .map(|(name, env)| (name.0, env))
        .collect())
}
