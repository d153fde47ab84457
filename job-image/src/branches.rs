//! Which branches become environments, and under which names. Pure: no I/O.
//!
//! Selection: a branch is wanted when it equals one of the `include` entries or matches
//! one of them as a glob, and matches none of the `exclude` globs; the rule is
//! [`openvox_git::glob`], shared with the controller's head check.
//!
//! Naming: Puppet accepts environment names matching `\A[a-z0-9_]+\z`. With
//! [`InvalidBranches::Correct`] every other character becomes `_` and letters are
//! lower-cased (r10k's rule plus lower-casing); with [`InvalidBranches::Error`] such a
//! branch is refused. Two branches that end up with one name are both refused, naming
//! each other: an environment is never silently overwritten by another branch.

use std::collections::BTreeMap;

pub use openvox_codeconfig::RefKind;
pub use openvox_crds::codesource::InvalidBranches;

use crate::git::FetchWant;

/// Why a branch did not become an environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BranchError {
    #[error(
        "branch {branch:?} is not a valid Puppet environment name (allowed: a-z, 0-9, _); \
         with invalidBranches=Correct it would become {corrected:?}"
    )]
    InvalidName { branch: String, corrected: String },
    #[error(
        "branches {} all map to environment {environment:?}; rename or exclude all but one",
        quote_list(branches)
    )]
    Collision {
        environment: String,
        branches: Vec<String>,
    },
    #[error(
        "branch {branch:?} is not UTF-8 (its bad bytes are shown as U+FFFD); rename it to build it"
    )]
    NotUtf8 { branch: String },
    #[error("an empty branch name cannot become an environment")]
    EmptyName,
    #[error("branch pattern list is empty: give at least one --branch")]
    NoPatterns,
    #[error("branch pattern {0:?} is empty")]
    EmptyPattern(String),
}

fn quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|b| format!("{b:?}")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The include and exclude patterns of a CodeSource (`git.branches`, `git.excludeBranches`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchSelection {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl BranchSelection {
    /// Checks the patterns: at least one include, none empty.
    pub fn new(include: Vec<String>, exclude: Vec<String>) -> Result<Self, BranchError> {
        if include.is_empty() {
            return Err(BranchError::NoPatterns);
        }
        if let Some(empty) = include.iter().chain(&exclude).find(|p| p.trim().is_empty()) {
            return Err(BranchError::EmptyPattern(empty.clone()));
        }
        Ok(Self { include, exclude })
    }

    /// Whether `branch` (a short name, without `refs/heads/`) is wanted.
    pub fn matches(&self, branch: &str) -> bool {
        openvox_git::branch_selected(branch, &self.include, &self.exclude)
    }

    /// The wanted branches among `branches`, sorted and without duplicates.
    pub fn select<'a>(&self, branches: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut wanted: Vec<String> = branches
            .into_iter()
            .filter(|b| self.matches(b))
            .map(str::to_owned)
            .collect();
        wanted.sort();
        wanted.dedup();
        wanted
    }

    /// Selects no branch: a CodeConfig's static environments are all there is to build.
    pub fn nothing() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    /// The include patterns, as given.
    pub fn include(&self) -> &[String] {
        &self.include
    }
}

/// Whether `name` is a valid Puppet environment name.
pub fn is_valid_environment_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// r10k's correction, lower-cased: every character outside `[A-Za-z0-9_]` becomes `_`.
pub fn corrected_name(branch: &str) -> String {
    branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The environment name of `branch` under `policy`.
pub fn environment_name(branch: &str, policy: InvalidBranches) -> Result<String, BranchError> {
    if is_valid_environment_name(branch) {
        return Ok(branch.to_owned());
    }
    // The git crate lists ref names lossily, so a name that is not UTF-8 arrives with
    // U+FFFD in place of its bad bytes. No ref of that name exists to fetch, and the
    // failed fetch failed every environment of the run (found by tests/hostile.rs).
    if branch.contains(char::REPLACEMENT_CHARACTER) {
        return Err(BranchError::NotUtf8 {
            branch: branch.to_owned(),
        });
    }
    // Corrected, "" stayed "": an environment named "" is the output directory itself
    // (found by tests/properties.rs). git refuses such a branch, a hostile server may not.
    if branch.is_empty() {
        return Err(BranchError::EmptyName);
    }
    let corrected = corrected_name(branch);
    match policy {
        InvalidBranches::Correct => Ok(corrected),
        InvalidBranches::Error => Err(BranchError::InvalidName {
            branch: branch.to_owned(),
            corrected,
        }),
    }
}

/// One branch (or static environment) and the environment it becomes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvironmentPlan {
    /// Environment name (directory name).
    pub name: String,
    /// Branch short name; for a static environment, its `ref` as written.
    pub branch: String,
    /// `Some` for a static environment of the CodeConfig (`environments`): what its
    /// `ref` is in the control repository.
    pub declared: Option<RefKind>,
}

impl EnvironmentPlan {
    /// A discovered branch's plan.
    pub fn branch(name: String, branch: String) -> Self {
        Self {
            name,
            branch,
            declared: None,
        }
    }

    /// The name `:control_branch` and `follow_branch` modules follow: the branch, or
    /// for a static environment its name (openvox-code's "the branch named like the
    /// environment").
    pub fn follows(&self) -> &str {
        match self.declared {
            None => &self.branch,
            Some(_) => &self.name,
        }
    }

    /// What to fetch for this environment, whose ref was found at `commit`.
    pub fn fetch_want(&self, commit: gix::ObjectId) -> FetchWant {
        match self.declared {
            None => FetchWant::Ref(format!("refs/heads/{}", self.branch)),
            Some(kind) => match kind.full_name(&self.branch) {
                Some(name) => FetchWant::Ref(name),
                None => FetchWant::Commit(commit),
            },
        }
    }
}

/// A branch that was selected but does not become an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedBranch {
    pub branch: String,
    /// The name it would have had, when there is one. An environment of that name is
    /// neither written nor purged in this run (the previous one stays).
    pub environment: Option<String>,
    pub reason: BranchError,
}

/// Lets the static environments named `statics` win over the discovered ones of the
/// same names (openvox-code's rule: a static environment was declared on purpose,
/// discovery takes whatever branches exist): removes those from `plans` and `refused`
/// (a collision between branches no longer matters when neither is built). Returns the
/// branches that lost, for the log.
pub fn make_room_for_statics(
    plans: &mut Vec<EnvironmentPlan>,
    refused: &mut Vec<RefusedBranch>,
    statics: &std::collections::BTreeSet<&str>,
) -> Vec<EnvironmentPlan> {
    let (lost, kept): (Vec<_>, Vec<_>) = std::mem::take(plans)
        .into_iter()
        .partition(|p| statics.contains(p.name.as_str()));
    *plans = kept;
    refused.retain(|r| {
        r.environment
            .as_deref()
            .is_none_or(|name| !statics.contains(name))
    });
    lost
}

/// Environments for the selected `branches`, in name order, and the refused branches.
pub fn plan_environments(
    branches: &[String],
    policy: InvalidBranches,
) -> (Vec<EnvironmentPlan>, Vec<RefusedBranch>) {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut refused = Vec::new();
    for branch in branches {
        match environment_name(branch, policy) {
            Ok(name) => by_name.entry(name).or_default().push(branch.clone()),
            Err(reason) => refused.push(RefusedBranch {
                branch: branch.clone(),
                environment: None,
                reason,
            }),
        }
    }
    let mut plans = Vec::new();
    for (name, mut group) in by_name {
        group.sort();
        group.dedup();
        if let [branch] = group.as_slice() {
            plans.push(EnvironmentPlan::branch(name, branch.clone()));
            continue;
        }
        for branch in &group {
            refused.push(RefusedBranch {
                branch: branch.clone(),
                environment: Some(name.clone()),
                reason: BranchError::Collision {
                    environment: name.clone(),
                    branches: group.clone(),
                },
            });
        }
    }
    refused.sort_by(|a, b| a.branch.cmp(&b.branch));
    (plans, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(include: &[&str], exclude: &[&str]) -> BranchSelection {
        BranchSelection::new(
            include.iter().map(|s| s.to_string()).collect(),
            exclude.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn branches_are_selected_by_exact_name_glob_and_exclude() {
        let heads = [
            "production",
            "staging",
            "feature_login",
            "feature/api",
            "feature_wip",
            "release/1.0",
            "release/1.0/hotfix",
            "main",
        ];
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&["production"], &[], &["production"]),
            (&["production", "staging"], &[], &["production", "staging"]),
            (
                &["feature*"],
                &[],
                &["feature/api", "feature_login", "feature_wip"],
            ),
            (&["feature_*"], &["*_wip"], &["feature_login"]),
            (&["release/*"], &[], &["release/1.0", "release/1.0/hotfix"]),
            (&["release/?.?"], &[], &["release/1.0"]),
            (&["[ps]*"], &["staging"], &["production"]),
            (
                &["*"],
                &["feature*", "release*"],
                &["main", "production", "staging"],
            ),
            (&["nope"], &[], &[]),
            (&["production", "prod*"], &[], &["production"]),
        ];
        for (include, exclude, want) in cases {
            let got = selection(include, exclude).select(heads.iter().copied());
            assert_eq!(
                got,
                want.to_vec(),
                "include {include:?} exclude {exclude:?}"
            );
        }
    }

    #[test]
    fn empty_patterns_are_refused() {
        assert_eq!(
            BranchSelection::new(vec![], vec![]),
            Err(BranchError::NoPatterns)
        );
        assert!(matches!(
            BranchSelection::new(vec!["a".into()], vec![" ".into()]),
            Err(BranchError::EmptyPattern(_))
        ));
    }

    #[test]
    fn names_follow_r10k_correction_lower_cased() {
        let cases = [
            ("production", "production"),
            ("feature/login", "feature_login"),
            ("Feature-Login", "feature_login"),
            ("release-1.2.3", "release_1_2_3"),
            ("JIRA-123_fix", "jira_123_fix"),
            ("caf\u{e9}", "caf_"),
            ("a b", "a_b"),
            ("already_ok_42", "already_ok_42"),
        ];
        for (branch, want) in cases {
            assert_eq!(
                environment_name(branch, InvalidBranches::Correct).unwrap(),
                want,
                "{branch}"
            );
        }
    }

    #[test]
    fn invalid_names_are_refused_under_error_policy() {
        assert_eq!(
            environment_name("production", InvalidBranches::Error).unwrap(),
            "production"
        );
        let err = environment_name("feature/x", InvalidBranches::Error).unwrap_err();
        assert_eq!(
            err,
            BranchError::InvalidName {
                branch: "feature/x".into(),
                corrected: "feature_x".into()
            }
        );
        assert!(err.to_string().contains("\"feature/x\""));
        assert!(environment_name("Upper", InvalidBranches::Error).is_err());
    }

    #[test]
    fn colliding_branches_are_both_refused_naming_each_other() {
        let branches: Vec<String> = ["feature/a", "feature-a", "Feature_A", "production"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (plans, refused) = plan_environments(&branches, InvalidBranches::Correct);
        assert_eq!(
            plans,
            vec![EnvironmentPlan::branch(
                "production".into(),
                "production".into()
            )]
        );
        assert_eq!(refused.len(), 3);
        for r in &refused {
            assert_eq!(r.environment.as_deref(), Some("feature_a"));
            let message = r.reason.to_string();
            for b in ["\"Feature_A\"", "\"feature-a\"", "\"feature/a\""] {
                assert!(message.contains(b), "{message}");
            }
            assert!(message.contains("\"feature_a\""), "{message}");
        }
    }

    #[test]
    fn a_valid_branch_collides_with_a_corrected_one() {
        let branches = vec!["feature_a".to_string(), "feature/a".to_string()];
        let (plans, refused) = plan_environments(&branches, InvalidBranches::Correct);
        assert!(plans.is_empty());
        assert_eq!(refused.len(), 2);
        let (plans, refused) = plan_environments(&branches, InvalidBranches::Error);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].branch, "feature_a");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].branch, "feature/a");
    }

    #[test]
    fn static_environments_take_the_place_of_branches_of_their_names() {
        let branches: Vec<String> = ["production", "feature/a", "feature-a", "staging"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (mut plans, mut refused) = plan_environments(&branches, InvalidBranches::Correct);
        assert_eq!(refused.len(), 2, "feature/a and feature-a collide");
        let statics = ["production", "feature_a", "pinned"].into();
        let lost = make_room_for_statics(&mut plans, &mut refused, &statics);
        let lost: Vec<&str> = lost.iter().map(|p| p.branch.as_str()).collect();
        assert_eq!(lost, ["production"]);
        let kept: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(kept, ["staging"]);
        assert!(refused.is_empty(), "{refused:?}");
        assert!(!BranchSelection::nothing().matches("production"));
    }

    #[test]
    fn a_static_environment_fetches_its_ref_and_follows_its_name() {
        let commit = gix::ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").unwrap();
        let plan = |declared| EnvironmentPlan {
            name: "pinned".into(),
            branch: "v1.0".into(),
            declared,
        };
        let cases = [
            (None, FetchWant::Ref("refs/heads/v1.0".into()), "v1.0"),
            (
                Some(RefKind::Branch),
                FetchWant::Ref("refs/heads/v1.0".into()),
                "pinned",
            ),
            (
                Some(RefKind::Tag),
                FetchWant::Ref("refs/tags/v1.0".into()),
                "pinned",
            ),
            (Some(RefKind::Commit), FetchWant::Commit(commit), "pinned"),
        ];
        for (declared, want, follows) in cases {
            let plan = plan(declared);
            assert_eq!(plan.fetch_want(commit), want, "{declared:?}");
            assert_eq!(plan.follows(), follows, "{declared:?}");
        }
    }

    #[test]
    fn plans_are_in_name_order() {
        let branches: Vec<String> = ["zeta", "alpha", "Mid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (plans, refused) = plan_environments(&branches, InvalidBranches::Correct);
        assert!(refused.is_empty());
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
    }
}
