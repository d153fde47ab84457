//! A source's `branchSelector`: which branches of a control repository become
//! environments.

use serde::Deserialize;

use crate::checks::de_with;
use crate::glob::Glob;

/// `matchPatterns` select branches, `excludePatterns` drop some of them again. No
/// `matchPatterns` (or no selector at all) selects every branch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BranchSelector {
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub match_patterns: Vec<Glob>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub exclude_patterns: Vec<Glob>,
}

impl BranchSelector {
    /// Whether `branch` (a short name, without `refs/heads/`) is selected.
    pub fn selects(&self, branch: &str) -> bool {
        let included =
            self.match_patterns.is_empty() || self.match_patterns.iter().any(|p| p.matches(branch));
        included && !self.exclude_patterns.iter().any(|p| p.matches(branch))
    }

    /// The branch names when every `matchPatterns` entry is an exact name, in the order
    /// written and without those an exclude pattern drops: such a source needs no
    /// listing of the remote's branches. `None` when there are no match patterns (every
    /// branch) or at least one is a glob.
    pub fn exact_names(&self) -> Option<Vec<String>> {
        if self.match_patterns.is_empty() {
            return None;
        }
        let names: Option<Vec<String>> = self.match_patterns.iter().map(Glob::literal).collect();
        let mut names = names?;
        names.retain(|name| !self.exclude_patterns.iter().any(|p| p.matches(name)));
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|name| seen.insert(name.clone()));
        Some(names)
    }

    /// Whether the remote's branches must be listed to know what this selects.
    pub fn needs_discovery(&self) -> bool {
        self.exact_names().is_none()
    }
}
