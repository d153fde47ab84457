//! Floating modules, as pure decisions: which module repositories and Forge modules
//! the last build's record says to look at ([`lookups`]), and which of them moved
//! ([`compare`]). A git module moved when the first of its candidate refs that the
//! repository has now points at another commit than the build used (or none of them
//! exists any more); a Forge module when its current release is another version. A
//! lookup that failed is reported by module and blocks nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use openvox_crds::codesource::{BuildRecord, UnreachableModule};
use sha2::{Digest as _, Sha256};

use super::heads::RemoteHeads;

/// What to look up for a build: module repository URLs and Forge (base, slug) pairs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lookups {
    /// Module repositories, listed once each.
    pub git: BTreeSet<String>,
    /// Forge modules, looked up once each.
    pub forge: BTreeSet<(String, String)>,
}

impl Lookups {
    /// Whether there is nothing to look up.
    pub fn is_empty(&self) -> bool {
        self.git.is_empty() && self.forge.is_empty()
    }
}

/// The lookups the floating modules of `build` need.
pub fn lookups(build: &BuildRecord) -> Lookups {
    let mut out = Lookups::default();
    for module in build.environments.iter().flat_map(|e| &e.floating) {
        if let Some(git) = &module.git {
            out.git.insert(git.url.clone());
        }
        if let Some(forge) = &module.forge {
            out.forge.insert((forge.base.clone(), forge.slug.clone()));
        }
    }
    out
}

/// A module that moved since the build.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moved {
    /// Environment it is in.
    pub environment: String,
    /// Module name.
    pub module: String,
    /// What the build used (a commit or a version).
    pub from: String,
    /// What it is now (`(gone)` when no candidate ref exists any more).
    pub to: String,
}

/// What looking at the floating modules found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Modules that moved, sorted.
    pub moved: Vec<Moved>,
    /// Modules whose lookup failed, by name, sorted.
    pub unreachable: Vec<UnreachableModule>,
}

impl Found {
    /// A digest of what moved where: it names the rebuild for exactly this movement
    /// (`None` when nothing moved).
    pub fn moved_digest(&self) -> Option<String> {
        if self.moved.is_empty() {
            return None;
        }
        let mut hasher = Sha256::new();
        for m in &self.moved {
            for part in [&m.environment, &m.module, &m.from, &m.to] {
                hasher.update(part.as_bytes());
                hasher.update([0]);
            }
        }
        let mut hex = hex::encode(hasher.finalize());
        hex.truncate(16);
        Some(hex)
    }

    /// `module (env): from → to` for each, for logs and Events.
    pub fn describe_moved(&self) -> String {
        let short = |s: &str| s.chars().take(12).collect::<String>();
        self.moved
            .iter()
            .map(|m| {
                format!(
                    "{} ({}): {} → {}",
                    m.module,
                    m.environment,
                    short(&m.from),
                    short(&m.to)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Compares the floating modules of `build` with what the lookups answered: `git` by
/// repository URL (full ref name → commit), `forge` by (base, slug) (current version).
pub fn compare(
    build: &BuildRecord,
    git: &HashMap<String, Result<Arc<RemoteHeads>, String>>,
    forge: &HashMap<(String, String), Result<Arc<String>, String>>,
) -> Found {
    let mut moved = BTreeSet::new();
    let mut unreachable: BTreeMap<String, UnreachableModule> = BTreeMap::new();
    let mut fail = |module: &str, source: &str, message: &str| {
        unreachable
            .entry(format!("{module}\0{source}"))
            .or_insert_with(|| UnreachableModule {
                name: module.to_owned(),
                source: source.to_owned(),
                message: message.to_owned(),
            });
    };
    for env in &build.environments {
        for module in &env.floating {
            let now = if let Some(g) = &module.git {
                match git.get(&g.url) {
                    Some(Ok(refs)) => Some((
                        g.commit.clone(),
                        g.refs
                            .iter()
                            .find_map(|r| refs.get(r))
                            .cloned()
                            .unwrap_or_else(|| "(gone)".to_owned()),
                    )),
                    Some(Err(message)) => {
                        fail(&module.name, &g.url, message);
                        None
                    }
                    None => None,
                }
            } else if let Some(f) = &module.forge {
                match forge.get(&(f.base.clone(), f.slug.clone())) {
                    Some(Ok(version)) => Some((f.version.clone(), (**version).clone())),
                    Some(Err(message)) => {
                        fail(&module.name, &f.slug, message);
                        None
                    }
                    None => None,
                }
            } else {
                None
            };
            if let Some((from, to)) = now
                && !from.eq_ignore_ascii_case(&to)
            {
                moved.insert(Moved {
                    environment: env.name.clone(),
                    module: module.name.clone(),
                    from,
                    to,
                });
            }
        }
    }
    Found {
        moved: moved.into_iter().collect(),
        unreachable: unreachable.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use openvox_crds::codesource::{EnvironmentRecord, FloatingForge, FloatingGit, FloatingModule};

    use super::*;

    fn git(name: &str, url: &str, refs: &[&str], commit: &str) -> FloatingModule {
        FloatingModule {
            name: name.into(),
            git: Some(FloatingGit {
                url: url.into(),
                refs: refs.iter().map(|r| (*r).to_owned()).collect(),
                commit: commit.into(),
            }),
            forge: None,
        }
    }

    fn forge(name: &str, slug: &str, version: &str) -> FloatingModule {
        FloatingModule {
            name: name.into(),
            git: None,
            forge: Some(FloatingForge {
                base: "https://forge.example".into(),
                slug: slug.into(),
                version: version.into(),
            }),
        }
    }

    fn build(envs: Vec<(&str, Vec<FloatingModule>)>) -> BuildRecord {
        BuildRecord {
            environments: envs
                .into_iter()
                .map(|(name, floating)| EnvironmentRecord {
                    name: name.into(),
                    floating,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn listing(pairs: &[(&str, &str)]) -> Result<Arc<RemoteHeads>, String> {
        Ok(Arc::new(
            pairs
                .iter()
                .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
                .collect(),
        ))
    }

    #[test]
    fn the_repositories_and_forge_modules_are_looked_up_once_each() {
        let b = build(vec![
            (
                "production",
                vec![
                    git("a", "u1", &["refs/heads/production"], "1"),
                    forge("s", "p-s", "1.0.0"),
                ],
            ),
            (
                "staging",
                vec![
                    git("a", "u1", &["refs/heads/staging"], "1"),
                    git("b", "u2", &["refs/tags/v1"], "2"),
                ],
            ),
        ]);
        let l = lookups(&b);
        assert_eq!(l.git.iter().collect::<Vec<_>>(), ["u1", "u2"]);
        assert_eq!(l.forge.len(), 1);
        assert!(lookups(&BuildRecord::default()).is_empty());
    }

    #[test]
    fn a_module_moved_when_its_first_existing_ref_points_elsewhere() {
        let b = build(vec![
            (
                "production",
                vec![git(
                    "a",
                    "u1",
                    &["refs/heads/production", "refs/heads/main"],
                    "1",
                )],
            ),
            (
                "staging",
                vec![git(
                    "a",
                    "u1",
                    &["refs/heads/staging", "refs/heads/main"],
                    "1",
                )],
            ),
        ]);
        let forge_none = HashMap::new();
        // production's branch appeared (and points elsewhere); staging still follows main.
        let git_now = HashMap::from([(
            "u1".to_owned(),
            listing(&[("refs/heads/main", "1"), ("refs/heads/production", "9")]),
        )]);
        let found = compare(&b, &git_now, &forge_none);
        assert_eq!(
            found.moved,
            [Moved {
                environment: "production".into(),
                module: "a".into(),
                from: "1".into(),
                to: "9".into()
            }]
        );
        assert!(found.moved_digest().is_some());
        assert!(found.describe_moved().contains("a (production): 1 → 9"));
        // Unchanged: nothing moved, no digest.
        let same = HashMap::from([("u1".to_owned(), listing(&[("refs/heads/main", "1")]))]);
        let found = compare(&b, &same, &forge_none);
        assert!(found.moved.is_empty() && found.moved_digest().is_none());
        // The branch is gone and there is no default: it moved to nothing.
        let gone = HashMap::from([("u1".to_owned(), listing(&[]))]);
        assert!(
            compare(&b, &gone, &forge_none)
                .moved
                .iter()
                .all(|m| m.to == "(gone)")
        );
    }

    #[test]
    fn forge_releases_and_failed_lookups() {
        let b = build(vec![(
            "production",
            vec![
                forge("s", "p-s", "1.0.0"),
                git("a", "u1", &["refs/heads/main"], "1"),
            ],
        )]);
        let git_down = HashMap::from([("u1".to_owned(), Err("unreachable".to_owned()))]);
        let forge_new = HashMap::from([(
            ("https://forge.example".to_owned(), "p-s".to_owned()),
            Ok(Arc::new("1.1.0".to_owned())),
        )]);
        let found = compare(&b, &git_down, &forge_new);
        assert_eq!(
            found.moved.len(),
            1,
            "the Forge module moved; the git one is unknown"
        );
        assert_eq!(found.moved[0].to, "1.1.0");
        assert_eq!(found.unreachable.len(), 1);
        assert_eq!(found.unreachable[0].name, "a");
        assert_eq!(found.unreachable[0].source, "u1");
        // Digests depend on what moved where.
        let other = HashMap::from([(
            ("https://forge.example".to_owned(), "p-s".to_owned()),
            Ok(Arc::new("1.2.0".to_owned())),
        )]);
        assert_ne!(
            compare(&b, &git_down, &other).moved_digest(),
            found.moved_digest()
        );
    }
}
