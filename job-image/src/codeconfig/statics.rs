//! A CodeConfig's static environments (`environments`): each `ref` found in the
//! control repository's listing by openvox-code's rule
//! ([`openvox_codeconfig::find_static_ref`]: a branch, then a tag, then a full commit
//! id, the rule the controller uses too), as plans the build then handles like
//! branches. A `ref` that is not there fails only its environment.

use std::collections::BTreeMap;

use openvox_codeconfig::{CodeConfig, RefKind, find_static_ref};

use crate::branches::EnvironmentPlan;

/// A static environment whose `ref` was found, and the commit it designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundStatic {
    pub plan: EnvironmentPlan,
    pub commit: gix::ObjectId,
}

/// A static environment whose `ref` is not in the control repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingStatic {
    pub name: String,
    /// Names the key and the ref.
    pub reason: String,
}

/// The static environments of `config`, in name order, found among `refs` (full ref
/// names of the control repository, annotated tags peeled, to commits).
pub fn find_statics(
    config: &CodeConfig,
    refs: &BTreeMap<String, gix::ObjectId>,
) -> Vec<Result<FoundStatic, MissingStatic>> {
    config
        .environments
        .iter()
        .map(|(name, declared)| {
            // A loaded configuration has a ref for every environment (checked at load).
            let reference = declared.reference.clone().unwrap_or_default();
            let found = find_static_ref(&reference, |full| {
                refs.get(full).map(|commit| commit.to_string())
            });
            let missing = || MissingStatic {
                name: name.clone(),
                reason: format!(
                    "environments.{name}.ref {reference:?} is neither a branch nor a tag of the control repository, nor a full 40-digit commit id"
                ),
            };
            let (kind, commit) = found.ok_or_else(missing)?;
            let commit = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|_| missing())?;
            Ok(FoundStatic {
                plan: EnvironmentPlan {
                    name: name.clone(),
                    branch: reference,
                    declared: Some(kind),
                },
                commit,
            })
        })
        .collect()
}

/// Whether an environment of `kind` reads the source's module files from its tree:
/// one that follows a branch does, one pinned to a tag or commit does not (the crate's
/// rule, see [`openvox_codeconfig::environment_modules`]).
pub fn reads_module_files(declared: Option<RefKind>) -> bool {
    matches!(declared, None | Some(RefKind::Branch))
}

#[cfg(test)]
mod tests {
    use openvox_codeconfig::load_code_config;

    use super::*;

    fn id(hex: char) -> gix::ObjectId {
        gix::ObjectId::from_hex(hex.to_string().repeat(40).as_bytes()).unwrap()
    }

    #[test]
    fn statics_are_found_as_branch_tag_or_commit_and_missing_ones_say_so() {
        let text = "sources:\n  - url: https://g/control.git\nenvironments:\n  a_branch: {ref: main}\n  b_tag: {ref: v1.0}\n  c_commit: {ref: cccccccccccccccccccccccccccccccccccccccc}\n  d_missing: {ref: v9}\n";
        let files = BTreeMap::from([("c.yaml".to_owned(), text.to_owned())]);
        let config = load_code_config(&files, "c.yaml").unwrap().config;
        let refs = BTreeMap::from([
            ("refs/heads/main".to_owned(), id('a')),
            ("refs/tags/v1.0".to_owned(), id('b')),
        ]);
        let found = find_statics(&config, &refs);
        let summary: Vec<_> = found
            .iter()
            .map(|f| match f {
                Ok(f) => (f.plan.name.clone(), f.plan.declared, f.commit.to_string()),
                Err(m) => (m.name.clone(), None, m.reason.clone()),
            })
            .collect();
        assert_eq!(
            summary[0],
            (
                "a_branch".into(),
                Some(RefKind::Branch),
                id('a').to_string()
            )
        );
        assert_eq!(
            summary[1],
            ("b_tag".into(), Some(RefKind::Tag), id('b').to_string())
        );
        assert_eq!(
            summary[2],
            (
                "c_commit".into(),
                Some(RefKind::Commit),
                id('c').to_string()
            )
        );
        assert_eq!(summary[3].0, "d_missing");
        assert!(
            summary[3].2.contains("environments.d_missing.ref \"v9\""),
            "{:?}",
            summary[3]
        );
        assert!(reads_module_files(Some(RefKind::Branch)));
        assert!(!reads_module_files(Some(RefKind::Tag)));
        assert!(!reads_module_files(Some(RefKind::Commit)));
    }
}
