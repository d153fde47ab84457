//! Whether a push concerns a CodeSource: the same repository (URLs compared after
//! normalisation) and a watched branch (the globs of `git.branches` minus
//! `git.excludeBranches`, with the same rule the head check uses), or a repository of
//! one of the floating modules of its last build and a branch that module may follow.
//! Pure.

use std::collections::BTreeMap;

use openvox_crds::CodeSourceSpec;
use openvox_crds::codesource::FloatingModule;

use super::payload::Push;
use crate::codesource::heads::wanted_heads;

/// What to do with an authenticated push for a CodeSource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ask for a head check now. `branch` is the pushed branch, when the payload named
    /// one.
    Check {
        /// The pushed branch.
        branch: Option<String>,
    },
    /// Nothing to do, for the reason given (returned to the sender with 200).
    Ignore(String),
}

/// Judges `push` against `spec` and the `floating` modules of its last build.
pub fn verdict(spec: &CodeSourceSpec, floating: &[FloatingModule], push: &Push) -> Verdict {
    if spec.suspend {
        return Verdict::Ignore("the CodeSource is suspended".into());
    }
    let pushed_to = |url: &str| push.repository_urls.iter().any(|u| same_repository(u, url));
    if !push.repository_urls.is_empty() && !pushed_to(&spec.git.url) {
        // A module repository: a push to a ref one of its floating modules follows.
        let modules: Vec<&FloatingModule> = floating
            .iter()
            .filter(|m| m.git.as_ref().is_some_and(|g| pushed_to(&g.url)))
            .collect();
        if modules.is_empty() {
            return Verdict::Ignore(
                "the push is for another repository than spec.git.url or a floating module's"
                    .into(),
            );
        }
        let followed = |branch: &str| {
            let wanted = format!("refs/heads/{branch}");
            modules
                .iter()
                .filter_map(|m| m.git.as_ref())
                .any(|g| g.refs.contains(&wanted))
        };
        return match &push.branch {
            Some(branch) if !followed(branch) => Verdict::Ignore(format!(
                "no floating module follows branch {branch:?} of that repository"
            )),
            branch => Verdict::Check {
                branch: branch.clone(),
            },
        };
    }
    match &push.branch {
        Some(branch) if !branch_watched(branch, &spec.git.branches, &spec.git.exclude_branches) => {
            Verdict::Ignore(format!("branch {branch:?} is not watched"))
        }
        branch => Verdict::Check {
            branch: branch.clone(),
        },
    }
}

/// Whether `branch` is selected by `branches` and not by `excludes`.
pub fn branch_watched(branch: &str, branches: &[String], excludes: &[String]) -> bool {
    let one = BTreeMap::from([(branch.to_string(), String::new())]);
    !wanted_heads(&one, branches, excludes).is_empty()
}

/// Whether two repository URLs name the same repository once scheme, user, port,
/// `.git` suffix, trailing slashes and case are set aside: `https://host/o/r.git`,
/// `git@host:o/r.git` and `ssh://git@host:2222/o/r` are all `host/o/r`.
pub fn same_repository(a: &str, b: &str) -> bool {
    let (a, b) = (normalize_repo_url(a), normalize_repo_url(b));
    !a.is_empty() && a == b
}

/// The `host/path` form [`same_repository`] compares, lower-cased.
pub fn normalize_repo_url(url: &str) -> String {
    let url = url.trim();
    let (authority, path) = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('/').unwrap_or((rest, ""))
    } else if let Some((authority, path)) = scp_like(url) {
        (authority, path)
    } else {
        // A local path.
        ("", url)
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = strip_port(host_port);
    let mut path = path.trim_matches('/');
    while let Some(p) = path.strip_suffix(".git") {
        path = p.trim_end_matches('/');
    }
    let joined = if host.is_empty() {
        path.to_string()
    } else {
        format!("{host}/{path}")
    };
    joined.to_ascii_lowercase()
}

/// `[user@]host:path` as git reads it: a colon before any slash.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let colon = url.find(':')?;
    let slash = url.find('/').unwrap_or(usize::MAX);
    (colon < slash).then(|| (&url[..colon], &url[colon + 1..]))
}

fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        // [v6]:port
        return rest.split_once(']').map_or(host_port, |(h, _)| h);
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => host_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, branches: &[&str], excludes: &[&str]) -> CodeSourceSpec {
        serde_json::from_value(serde_json::json!({
            "git": {"url": url, "branches": branches, "excludeBranches": excludes},
            "schedule": "@hourly",
            "output": {"image": "registry/code"}
        }))
        .unwrap()
    }

    fn push(branch: Option<&str>, urls: &[&str]) -> Push {
        Push {
            branch: branch.map(String::from),
            repository_urls: urls.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn urls_of_one_repository_are_the_same_across_schemes_users_and_suffixes() {
        let same = [
            (
                "https://github.com/example/control.git",
                "https://github.com/example/control",
            ),
            (
                "https://github.com/example/control.git",
                "git@github.com:example/control.git",
            ),
            (
                "https://user@github.com/example/control",
                "ssh://git@github.com/example/control.git",
            ),
            (
                "ssh://git@gitea.example.com:2222/puppet/control.git",
                "https://gitea.example.com/puppet/control",
            ),
            (
                "https://GitHub.com/Example/Control/",
                "git://github.com/example/control.git",
            ),
            ("http://127.0.0.1:3000/o/r.git", "http://127.0.0.1/o/r"),
            ("file:///srv/git/control.git", "/srv/git/control"),
            ("ssh://git@[::1]:22/o/r.git", "https://[::1]/o/r"),
        ];
        for (a, b) in same {
            assert!(
                same_repository(a, b),
                "{a} vs {b}: {} / {}",
                normalize_repo_url(a),
                normalize_repo_url(b)
            );
        }
    }

    #[test]
    fn urls_of_different_repositories_differ() {
        let different = [
            (
                "https://github.com/example/control.git",
                "https://github.com/example/control2.git",
            ),
            (
                "https://github.com/example/control.git",
                "https://gitlab.com/example/control.git",
            ),
            (
                "https://github.com/example/control.git",
                "https://github.com/other/control.git",
            ),
            ("https://github.com/example/control.git", ""),
        ];
        for (a, b) in different {
            assert!(!same_repository(a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn branches_are_matched_by_name_or_glob_minus_excludes() {
        let branches = [
            "production".to_string(),
            "feature_*".to_string(),
            "release/*".to_string(),
        ];
        let excludes = ["feature_wip*".to_string()];
        for (branch, watched) in [
            ("production", true),
            ("staging", false),
            ("feature_x", true),
            ("feature_wip_y", false),
            ("release/2026/03", true),
            ("productionx", false),
        ] {
            assert_eq!(
                branch_watched(branch, &branches, &excludes),
                watched,
                "{branch}"
            );
        }
    }

    #[test]
    fn a_push_to_a_watched_branch_of_the_repository_asks_for_a_check() {
        let s = spec(
            "https://github.com/example/control.git",
            &["production"],
            &[],
        );
        let p = push(Some("production"), &["git@github.com:example/control.git"]);
        assert_eq!(
            verdict(&s, &[], &p),
            Verdict::Check {
                branch: Some("production".into())
            }
        );
    }

    #[test]
    fn a_push_to_another_branch_is_ignored() {
        let s = spec(
            "https://github.com/example/control.git",
            &["production"],
            &[],
        );
        let p = push(Some("staging"), &["https://github.com/example/control.git"]);
        assert!(matches!(verdict(&s, &[], &p), Verdict::Ignore(r) if r.contains("staging")));
    }

    #[test]
    fn a_push_to_another_repository_is_ignored() {
        let s = spec(
            "https://github.com/example/control.git",
            &["production"],
            &[],
        );
        let p = push(
            Some("production"),
            &["https://github.com/example/other.git"],
        );
        assert!(matches!(verdict(&s, &[], &p), Verdict::Ignore(r) if r.contains("repository")));
    }

    #[test]
    fn a_suspended_codesource_ignores_pushes() {
        let mut s = spec(
            "https://github.com/example/control.git",
            &["production"],
            &[],
        );
        s.suspend = true;
        let p = push(
            Some("production"),
            &["https://github.com/example/control.git"],
        );
        assert!(matches!(verdict(&s, &[], &p), Verdict::Ignore(r) if r.contains("suspended")));
    }

    #[test]
    fn a_push_to_a_branch_a_floating_module_follows_asks_for_a_check() {
        use openvox_crds::codesource::FloatingGit;
        let s = spec(
            "https://github.com/example/control.git",
            &["production"],
            &[],
        );
        let floating = [FloatingModule {
            name: "motd".into(),
            git: Some(FloatingGit {
                url: "https://git.example/modules/motd.git".into(),
                refs: vec!["refs/heads/production".into(), "refs/heads/main".into()],
                commit: "1".into(),
            }),
            forge: None,
        }];
        let to = |branch| push(Some(branch), &["git@git.example:modules/motd"]);
        assert_eq!(
            verdict(&s, &floating, &to("main")),
            Verdict::Check {
                branch: Some("main".into())
            }
        );
        assert!(matches!(
            verdict(&s, &floating, &to("feature")),
            Verdict::Ignore(r) if r.contains("no floating module follows")
        ));
        // Without the module recorded, the repository is someone else's.
        assert!(matches!(
            verdict(&s, &[], &to("main")),
            Verdict::Ignore(r) if r.contains("another repository")
        ));
    }

    #[test]
    fn a_generic_request_without_branch_or_url_asks_for_a_check() {
        let s = spec(
            "https://github.com/example/control.git",
            &["production"],
            &[],
        );
        assert_eq!(
            verdict(&s, &[], &push(None, &[])),
            Verdict::Check { branch: None }
        );
    }
}
