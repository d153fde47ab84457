//! Which environments exist and which modules each one gets: pure rules over parsed
//! files, so the controller (planning) and the worker (building) cannot disagree.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::StaticEnvironment;
use crate::module::{Module, put};
use crate::modulefile::ModuleFile;

/// Where an environment comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Declared in `environments`, built from this control repository ref.
    Static { reference: String },
    /// A selected branch of `sources[source]`.
    Branch { source: usize, branch: String },
}

/// One environment to build, and the candidates of the same name it won over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEnvironment {
    pub name: String,
    pub origin: Origin,
    /// Same-named candidates that lost, most preferred first (for warnings).
    pub shadowed: Vec<Origin>,
}

/// Merges the branches each source selected (`discovered[i]` for `sources[i]`) with the
/// static environments, sorted by name.
///
/// A static environment wins over a discovered branch of the same name: it was
/// declared on purpose, while discovery takes whatever branches exist. Between sources,
/// the earlier source wins, as it comes first in the configuration.
pub fn plan_environments(
    discovered: &[Vec<String>],
    statics: &BTreeMap<String, StaticEnvironment>,
) -> Vec<PlannedEnvironment> {
    let mut candidates: BTreeMap<&str, Vec<Origin>> = BTreeMap::new();
    for (name, environment) in statics {
        candidates.entry(name).or_default().push(Origin::Static {
            reference: environment.reference.clone().unwrap_or_default(),
        });
    }
    for (source, branches) in discovered.iter().enumerate() {
        for branch in branches {
            let origins = candidates.entry(branch).or_default();
            let origin = Origin::Branch {
                source,
                branch: branch.clone(),
            };
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
    }
    candidates
        .into_iter()
        .filter_map(|(name, mut origins)| {
            let origin = (!origins.is_empty()).then(|| origins.remove(0))?;
            Some(PlannedEnvironment {
                name: name.to_owned(),
                origin,
                shadowed: origins,
            })
        })
        .collect()
}

/// What a static environment's `ref` names in the control repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefKind {
    /// A branch (`refs/heads/<ref>`): the environment follows it.
    Branch,
    /// A tag (`refs/tags/<ref>`, annotated tags peeled to their commit).
    Tag,
    /// A full commit id, which no listing shows and which never moves.
    Commit,
}

impl RefKind {
    /// The full ref name of `reference` of this kind; `None` for a commit id.
    pub fn full_name(self, reference: &str) -> Option<String> {
        match self {
            RefKind::Branch => Some(format!("refs/heads/{reference}")),
            RefKind::Tag => Some(format!("refs/tags/{reference}")),
            RefKind::Commit => None,
        }
    }
}

/// Finds a static environment's `ref` in the control repository: a branch of that
/// name, else a tag of that name, else a full commit id (40 hex digits, taken as it
/// is: a listing cannot show it, the fetch finds out whether it exists). `commit_of`
/// answers a full ref name (`refs/heads/x`, `refs/tags/x`) from a listing of the
/// repository. The controller (to notice a moved ref) and the worker (to fetch it) use
/// this one rule, so they always mean the same commit.
///
/// Abbreviated commit ids are not found: resolving one takes the repository's history,
/// which neither side fetches.
pub fn find_static_ref(
    reference: &str,
    commit_of: impl Fn(&str) -> Option<String>,
) -> Option<(RefKind, String)> {
    for kind in [RefKind::Branch, RefKind::Tag] {
        if let Some(commit) = kind.full_name(reference).and_then(|name| commit_of(&name)) {
            return Some((kind, commit));
        }
    }
    let full_id = reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit());
    full_id.then(|| (RefKind::Commit, reference.to_ascii_lowercase()))
}

/// A static environment names a moduleset that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown moduleset `{0}`")]
pub struct UnknownModuleSet(pub String);

/// The modules of one environment; see the crate documentation for the rule.
///
/// `environment` is the static environment's declaration, or `None` for a discovered
/// branch. `module_files` are the module files read from the environment's branch, in
/// the order [`crate::select_module_files`] returned them (empty when there are none,
/// e.g. a static environment built from a tag).
pub fn environment_modules(
    modulesets: &BTreeMap<String, Vec<Module>>,
    environment: Option<&StaticEnvironment>,
    module_files: &[ModuleFile],
) -> Result<Vec<Module>, UnknownModuleSet> {
    let mut modules: Vec<Module> = Vec::new();
    if let Some(environment) = environment {
        for set in &environment.modulesets {
            let set_modules = modulesets
                .get(set)
                .ok_or_else(|| UnknownModuleSet(set.clone()))?;
            for module in set_modules {
                put(&mut modules, module.clone());
            }
        }
        for module in &environment.modules {
            put(&mut modules, module.clone());
        }
    }
    let mut excluded: BTreeSet<&str> = BTreeSet::new();
    for file in module_files {
        for module in &file.modules {
            put(&mut modules, module.clone());
        }
        excluded.extend(file.exclude.iter().map(String::as_str));
    }
    modules.retain(|m| !excluded.contains(m.name.as_str()));
    Ok(modules)
}
