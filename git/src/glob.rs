//! Branch selection by name or glob, the one rule the controller (which heads to watch)
//! and the worker (which branches to build) must agree on.
//!
//! A branch is selected when it equals one of the `include` entries or matches one of
//! them as a glob, and matches none of the `exclude` globs. Globs follow git's wildmatch
//! (`*`, `?`, `[a-z]`, `[!x]`); `*` also matches `/`, so `feature*` selects
//! `feature/login` as well as `feature_login`.

use gix::bstr::BStr;
use gix::glob::wildmatch;

/// Whether `branch` (a short name, without `refs/heads/`) equals `pattern` or matches it
/// as a glob.
pub fn branch_matches(pattern: &str, branch: &str) -> bool {
    pattern == branch
        || wildmatch(
            BStr::new(pattern),
            BStr::new(branch),
            wildmatch::Mode::empty(),
        )
}

/// Whether `branch` is matched by one of `include` and by none of `exclude`.
pub fn branch_selected(branch: &str, include: &[String], exclude: &[String]) -> bool {
    include.iter().any(|p| branch_matches(p, branch))
        && !exclude.iter().any(|p| branch_matches(p, branch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_wildmatch_where_star_crosses_slashes() {
        assert!(branch_matches("feature*", "feature/login"));
        assert!(branch_matches("feature*", "feature_login"));
        assert!(branch_matches("[ps]*", "staging"));
        assert!(branch_matches("release-?", "release-1"));
        assert!(!branch_matches("release-?", "release-10"));
        assert!(
            branch_matches("a[b", "a[b"),
            "exact names match even when not a glob"
        );
        let include = vec!["production".to_owned(), "feature*".to_owned()];
        let exclude = vec!["*_wip".to_owned()];
        assert!(branch_selected("production", &include, &exclude));
        assert!(!branch_selected("feature_wip", &include, &exclude));
        assert!(!branch_selected("other", &include, &exclude));
    }
}
