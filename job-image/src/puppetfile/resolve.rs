//! Turns declared modules into content at a fixed version: a commit of a git repository
//! or a checked Forge release.
//!
//! Work is shared across environments: every ref listing, git fetch, Forge lookup and
//! download runs once per build however many environments need it (concurrent callers
//! wait for the first), with at most `jobs` network operations at a time. A failure is
//! remembered the same way and reported to every environment that needs that module.

use std::sync::Arc;

use openvox_crds::codesource::ModuleRecord;
use tokio::sync::Semaphore;

use super::{ForgeVersion, GitWant, ModuleDecl, ModuleSource};
use crate::decode::decode_ahead;
use crate::flights::Flights;
use crate::forge::{ForgeClient, ForgeRelease, UnpackedRelease};
use crate::git::fetch::Depth;
use crate::git::{FetchWant, FetchedRepo, GitAccess, REMOTE_HEAD, RemoteRef};
use crate::limits::{Bytes, Limits};
use crate::module_reuse::{ModuleKey, PreviousLayers, ReusedModule};
use crate::progress::Step;

/// A module that could not be resolved, with where it was declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module {name} ({location}): {message}")]
pub struct ModuleError {
    pub name: String,
    /// `Puppetfile line 3`, or the module file (see [`ModuleDecl::location`]).
    pub location: String,
    pub message: String,
}

/// The content of a resolved module.
#[derive(Debug, Clone)]
pub enum ModuleContent {
    /// A tree in a fetched repository.
    Git {
        repo: Arc<FetchedRepo>,
        tree: gix::ObjectId,
    },
    /// An unpacked Forge release.
    Forge(Arc<UnpackedRelease>),
    /// A git module's files at the resolved commit, taken from a previous image's layer
    /// (see [`crate::module_reuse`]).
    Reused(Arc<ReusedModule>),
}

/// A module at a fixed version.
#[derive(Debug, Clone)]
pub struct ResolvedModule {
    pub record: ModuleRecord,
    pub content: ModuleContent,
}

/// Host names of the public Forge. A Puppetfile's `forge` line naming one of them means
/// "the Forge", which is the configured Forge URL (so a mirror configured for the
/// CodeSource is used, as r10k does without `allow_puppetfile_override`).
const PUBLIC_FORGE_HOSTS: &[&str] = &[
    "forge.puppetlabs.com",
    "forgeapi.puppetlabs.com",
    "forge.puppet.com",
    "forgeapi.puppet.com",
];

/// The Forge base URL for a Puppetfile's `forge` line.
pub fn forge_base(puppetfile_forge: Option<&str>, configured: &str) -> String {
    let Some(forge) = puppetfile_forge else {
        return configured.trim_end_matches('/').to_owned();
    };
    let host = forge
        .split("://")
        .nth(1)
        .unwrap_or(forge)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if PUBLIC_FORGE_HOSTS.contains(&host.as_str()) {
        configured.trim_end_matches('/').to_owned()
    } else {
        forge.trim_end_matches('/').to_owned()
    }
}

/// Resolves modules for all environments of one build.
#[derive(Debug)]
pub struct Resolver {
    git: GitAccess,
    forge: ForgeClient,
    configured_forge: String,
    network: Semaphore,
    listings: Flights<String, Vec<RemoteRef>>,
    fetches: Flights<(String, FetchWant, bool), FetchedRepo>,
    releases: Flights<(String, String, Option<String>), ForgeRelease>,
    downloads: Flights<(String, String), UnpackedRelease>,
    /// Bounds the objects decoded ahead from shallow fetches.
    limits: Limits,
    /// The git modules of the previous image, whose files need no fetch.
    previous: Option<Arc<PreviousLayers>>,
}

impl Resolver {
    pub fn new(
        git: GitAccess,
        forge: ForgeClient,
        configured_forge: &str,
        jobs: usize,
        limits: Limits,
    ) -> Self {
        Self {
            git,
            forge,
            configured_forge: configured_forge.trim_end_matches('/').to_owned(),
            network: Semaphore::new(jobs.max(1)),
            listings: Flights::new(),
            fetches: Flights::new(),
            releases: Flights::new(),
            downloads: Flights::new(),
            limits,
            previous: None,
        }
    }

    /// Takes git modules the previous image holds from its layers (see
    /// [`crate::module_reuse`]) instead of fetching them.
    pub fn with_previous_modules(mut self, previous: Option<Arc<PreviousLayers>>) -> Self {
        self.previous = previous;
        self
    }

    /// Resolves `decl` for the environment `environment` built from `control_branch`,
    /// with the Puppetfile's `forge` line `puppetfile_forge`.
    pub async fn resolve(
        &self,
        decl: &ModuleDecl,
        (environment, control_branch): (&str, &str),
        puppetfile_forge: Option<&str>,
    ) -> Result<ResolvedModule, ModuleError> {
        let fail = |message: String| ModuleError {
            name: decl.name.clone(),
            location: decl.location(),
            message,
        };
        match &decl.source {
            ModuleSource::Forge { slug, version } => {
                let base = forge_base(puppetfile_forge, &self.configured_forge);
                let version = match version {
                    ForgeVersion::Exact(v) => Some(v.clone()),
                    ForgeVersion::Latest => None,
                };
                let release = self
                    .forge_release(&base, slug, version)
                    .await
                    .map_err(fail)?;
                let unpacked = self
                    .downloads
                    .get(&(release.file_url.clone(), release.sha256.clone()), async {
                        let _permit = self.network.acquire().await.map_err(|e| e.to_string())?;
                        let step = Step::start(
                            "module",
                            format!("{} {} (Forge)", release.slug, release.version),
                        );
                        let result = self.forge.download(&release).await;
                        match &result {
                            Ok(unpacked) => step.done(format!(
                                "{} downloaded, sha256 checked, {} entries",
                                Bytes(unpacked.downloaded),
                                unpacked.entries.len()
                            )),
                            Err(e) => step.failed(e),
                        }
                        result.map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(fail)?;
                Ok(ResolvedModule {
                    record: ModuleRecord {
                        name: decl.name.clone(),
                        source: slug.clone(),
                        version: release.version.clone(),
                        checksum: Some(format!("sha256:{}", release.sha256)),
                    },
                    content: ModuleContent::Forge(unpacked),
                })
            }
            ModuleSource::Git {
                url,
                want,
                default_branch,
            } => {
                let remote = self.git.remote(url).map_err(|e| fail(e.to_string()))?;
                let record = |commit: String| ModuleRecord {
                    name: decl.name.clone(),
                    source: remote.display_url(),
                    version: commit,
                    checksum: None,
                };
                let wanted = (
                    url.as_str(),
                    want,
                    default_branch.as_deref(),
                    control_branch,
                );
                let reused = self.reuse(wanted, decl.exclude_spec, environment).await;
                if let Some((commit, reused)) = reused {
                    return Ok(ResolvedModule {
                        record: record(commit),
                        content: ModuleContent::Reused(reused),
                    });
                }
                let (repo, commit) = self
                    .resolve_git(url, want, default_branch.as_deref(), control_branch)
                    .await
                    .map_err(fail)?;
                let tree = repo.tree_of(commit).map_err(|e| fail(e.to_string()))?;
                Ok(ResolvedModule {
                    record: record(commit.to_string()),
                    content: ModuleContent::Git { repo, tree },
                })
            }
        }
    }

    /// The release `version` (or the current one) of `slug` on the Forge at `base`,
    /// looked up once per build.
    pub async fn forge_release(
        &self,
        base: &str,
        slug: &str,
        version: Option<String>,
    ) -> Result<Arc<ForgeRelease>, String> {
        self.releases
            .get(
                &(base.to_owned(), slug.to_owned(), version.clone()),
                async {
                    let _permit = self.network.acquire().await.map_err(|e| e.to_string())?;
                    self.forge
                        .release(base, slug, version.as_deref())
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .await
    }

    /// The `forge` base URL of a Puppetfile whose `forge` line is `puppetfile_forge`.
    pub fn forge_base(&self, puppetfile_forge: Option<&str>) -> String {
        forge_base(puppetfile_forge, &self.configured_forge)
    }

    /// Branches, tags and `HEAD` of `url` (no object fetched), listed once per build.
    pub async fn list(&self, url: &str) -> Result<Arc<Vec<RemoteRef>>, String> {
        self.listings
            .get(&url.to_owned(), async {
                let _permit = self.network.acquire().await.map_err(|e| e.to_string())?;
                let remote = self.git.remote(url).map_err(|e| e.to_string())?;
                tokio::task::spawn_blocking(move || {
                    remote.list_refs(&["refs/heads/", "refs/tags/"])
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            })
            .await
    }

    async fn fetch(
        &self,
        url: &str,
        want: FetchWant,
        depth: Depth,
    ) -> Result<Arc<FetchedRepo>, String> {
        self.fetch_many(url, vec![want], depth).await
    }

    async fn fetch_many(
        &self,
        url: &str,
        wants: Vec<FetchWant>,
        depth: Depth,
    ) -> Result<Arc<FetchedRepo>, String> {
        // Several wants only come from the full-history fallback; key those by the first.
        let key_want = wants
            .first()
            .cloned()
            .ok_or_else(|| "nothing to fetch".to_owned())?;
        self.fetches
            .get(&(url.to_owned(), key_want, depth == Depth::Full), async {
                let _permit = self.network.acquire().await.map_err(|e| e.to_string())?;
                let remote = self.git.remote(url).map_err(|e| e.to_string())?;
                let what = match (wants.as_slice(), depth) {
                    ([one], Depth::Shallow) => one.to_string(),
                    (_, Depth::Shallow) => format!("{} refs", wants.len()),
                    (_, Depth::Full) => format!("{} refs with history", wants.len()),
                };
                let step = Step::start("module", format!("{} {what}", remote.display_url()));
                let result = tokio::task::spawn_blocking(move || remote.fetch(&wants, depth))
                    .await
                    .map_err(|e| e.to_string())?;
                match &result {
                    Ok(repo) => step.done(format!("{} received", Bytes(repo.received_bytes()))),
                    Err(e) => step.failed(e),
                }
                let repo = result.map_err(|e| e.to_string())?;
                if depth == Depth::Full {
                    // Most of a full history is never read: decoding it all would cost more.
                    return Ok(repo);
                }
                let limits = self.limits;
                tokio::task::spawn_blocking(move || {
                    decode_ahead(&repo, limits);
                    repo
                })
                .await
                .map_err(|e| format!("decoding blobs stopped: {e}"))
            })
            .await
    }

    /// The commit `want` resolves to and the module's files from the previous image,
    /// when it holds them (an abbreviated commit id is never looked up there: resolving
    /// it may take the repository's history anyway), preferably from the previous
    /// layer of `environment`.
    async fn reuse(
        &self,
        (url, want, default_branch, control_branch): (&str, &GitWant, Option<&str>, &str),
        exclude_spec: bool,
        environment: &str,
    ) -> Option<(String, Arc<ReusedModule>)> {
        let previous = self.previous.as_ref()?;
        let commit = match want {
            GitWant::Commit(id) if id.len() == 40 => id.to_ascii_lowercase(),
            GitWant::Commit(_) => return None,
            _ => {
                let refs = self.list(url).await.ok()?;
                match pick_ref(&refs, url, want, default_branch, control_branch).ok()? {
                    Picked::Ref(found) => found.commit().to_string(),
                    Picked::Commit(_) => return None,
                }
            }
        };
        let key = ModuleKey {
            url: url.to_owned(),
            commit,
            exclude_spec,
        };
        let reused = previous.module(&key, environment).await?;
        Some((key.commit, reused))
    }

    async fn resolve_git(
        &self,
        url: &str,
        want: &GitWant,
        default_branch: Option<&str>,
        control_branch: &str,
    ) -> Result<(Arc<FetchedRepo>, gix::ObjectId), String> {
        // A full commit id needs no listing: ask for it directly.
        if let GitWant::Commit(hex) = want
            && hex.len() == 40
        {
            let id = gix::ObjectId::from_hex(hex.as_bytes()).map_err(|e| e.to_string())?;
            match self.fetch(url, FetchWant::Commit(id), Depth::Shallow).await {
                Ok(repo) => return Ok((repo.clone(), id)),
                Err(direct) => {
                    // Servers may refuse unadvertised commits; look for it in all history.
                    return self
                        .fetch_all_and_find(url, hex)
                        .await
                        .map_err(|fallback| format!("{direct}; {fallback}"));
                }
            }
        }
        let refs = self.list(url).await?;
        let picked = match pick_ref(&refs, url, want, default_branch, control_branch)? {
            Picked::Ref(found) => found,
            Picked::Commit(prefix) => return self.commit_by_prefix(url, &prefix, &refs).await,
        };
        let repo = self
            .fetch(url, FetchWant::Ref(picked.name.clone()), Depth::Shallow)
            .await?;
        let commit = repo
            .commit_of(&FetchWant::Ref(picked.name.clone()))
            .ok_or_else(|| format!("{url}: {} was not fetched", picked.name))?;
        Ok((repo, commit))
    }

    /// An abbreviated commit id: a listed tip when one matches, else search all history.
    async fn commit_by_prefix(
        &self,
        url: &str,
        prefix: &str,
        refs: &[RemoteRef],
    ) -> Result<(Arc<FetchedRepo>, gix::ObjectId), String> {
        let prefix = prefix.to_ascii_lowercase();
        if let Some(tip) = first_tip_with_prefix(refs, &prefix) {
            let want = FetchWant::Ref(tip.name.clone());
            let repo = self.fetch(url, want.clone(), Depth::Shallow).await?;
            let commit = repo
                .commit_of(&want)
                .ok_or_else(|| format!("{url}: {} was not fetched", tip.name))?;
            if commit.to_string().starts_with(&prefix) {
                return Ok((repo, commit));
            }
        }
        self.fetch_all_and_find(url, &prefix).await
    }

    async fn fetch_all_and_find(
        &self,
        url: &str,
        prefix: &str,
    ) -> Result<(Arc<FetchedRepo>, gix::ObjectId), String> {
        let refs = self.list(url).await?;
        let wants: Vec<FetchWant> = refs
            .iter()
            .map(|r| FetchWant::Ref(r.name.clone()))
            .collect();
        if wants.is_empty() {
            return Err(format!("{url}: the repository has no branches or tags"));
        }
        let repo = self.fetch_many(url, wants, Depth::Full).await?;
        let commit = repo.resolve_prefix(prefix).map_err(|e| e.to_string())?;
        Ok((repo, commit))
    }
}

/// What a listing of a module repository says a git want designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picked<'a> {
    /// This listed branch or tag.
    Ref(&'a RemoteRef),
    /// A commit id (lower-case, possibly abbreviated) to look for by prefix.
    Commit(String),
}

/// The refs [`pick_ref`] would pick from for `want`, in its order: the first that a
/// listing has is the one it picks. `None` when `want` names a commit (a full
/// `:commit`, or a `:ref` that looks like a commit id, also as a `follow_branch`
/// fallback): that does not float. The controller checks floating modules with this
/// list (`status.lastBuild`) without knowing r10k's or openvox-code's rules.
pub fn candidate_refs(
    want: &GitWant,
    default_branch: Option<&str>,
    control_branch: &str,
) -> Option<Vec<String>> {
    let heads = |b: &str| format!("refs/heads/{b}");
    let with_default = |first: String| {
        let mut refs = vec![first];
        refs.extend(default_branch.map(heads));
        refs
    };
    match want {
        GitWant::Branch(b) => Some(with_default(heads(b))),
        GitWant::ControlBranch => Some(with_default(heads(control_branch))),
        GitWant::Tag(t) => Some(vec![format!("refs/tags/{t}")]),
        GitWant::Ref(r) if r.starts_with("refs/") => Some(vec![r.clone()]),
        GitWant::Ref(r) if is_hex_id(r) => None,
        GitWant::Ref(r) => {
            let mut refs = vec![heads(r), format!("refs/tags/{r}")];
            refs.extend(default_branch.map(heads));
            Some(refs)
        }
        GitWant::Commit(_) => None,
        GitWant::Head => Some(vec![REMOTE_HEAD.to_owned()]),
        GitWant::FollowBranch(fallback) => {
            let mut refs = vec![heads(control_branch)];
            refs.extend(candidate_refs(
                &follow_branch_fallback(fallback),
                None,
                control_branch,
            )?);
            Some(refs)
        }
    }
}

/// What a `follow_branch` module wants when the repository has no branch named like
/// the control branch: its `ref`, else the remote's `HEAD`.
fn follow_branch_fallback(fallback: &Option<String>) -> GitWant {
    match fallback {
        Some(reference) => GitWant::Ref(reference.clone()),
        None => GitWant::Head,
    }
}

/// Picks from `refs` (branches, tags and `HEAD` of `url`) what `want` designates,
/// r10k's way: `:branch` and `:control_branch` fall back to the default branch; `:ref`
/// is a branch, else a tag, else a commit id, else the default branch. openvox-code's
/// wants: [`GitWant::Head`] is the listed `HEAD`; [`GitWant::FollowBranch`] is the
/// control branch, else its fallback picked the same way. A full `:commit` id is
/// fetched directly and never comes here. Pure, so the resolver and the unchanged
/// check (`crate::unchanged`) cannot disagree on what a declaration means.
pub fn pick_ref<'a>(
    refs: &'a [RemoteRef],
    url: &str,
    want: &GitWant,
    default_branch: Option<&str>,
    control_branch: &str,
) -> Result<Picked<'a>, String> {
    let find = |name: &str| refs.iter().find(|r| r.name == name);
    let branch_or_default = |branch: &str| -> Result<Picked<'a>, String> {
        find(&format!("refs/heads/{branch}"))
            .or_else(|| default_branch.and_then(|d| find(&format!("refs/heads/{d}"))))
            .map(Picked::Ref)
            .ok_or_else(|| match default_branch {
                Some(d) => {
                    format!("{url}: neither branch {branch:?} nor default branch {d:?} exists")
                }
                None => format!("{url}: branch {branch:?} does not exist"),
            })
    };
    match want {
        GitWant::Branch(b) => branch_or_default(b),
        GitWant::ControlBranch => branch_or_default(control_branch),
        GitWant::Tag(t) => find(&format!("refs/tags/{t}"))
            .map(Picked::Ref)
            .ok_or_else(|| format!("{url}: tag {t:?} does not exist")),
        GitWant::Ref(r) if r.starts_with("refs/") => find(r)
            .map(Picked::Ref)
            .ok_or_else(|| format!("{url}: ref {r:?} does not exist")),
        GitWant::Ref(r) => {
            match find(&format!("refs/heads/{r}")).or_else(|| find(&format!("refs/tags/{r}"))) {
                Some(found) => Ok(Picked::Ref(found)),
                None if is_hex_id(r) => Ok(Picked::Commit(r.to_ascii_lowercase())),
                None => default_branch
                    .and_then(|d| find(&format!("refs/heads/{d}")))
                    .map(Picked::Ref)
                    .ok_or_else(|| {
                        format!("{url}: ref {r:?} is neither a branch, a tag nor a commit id")
                    }),
            }
        }
        GitWant::Commit(prefix) => Ok(Picked::Commit(prefix.to_ascii_lowercase())),
        GitWant::Head => find(REMOTE_HEAD).map(Picked::Ref).ok_or_else(|| {
            format!("{url}: the repository has no HEAD to follow (the module names no ref)")
        }),
        GitWant::FollowBranch(fallback) => match find(&format!("refs/heads/{control_branch}")) {
            Some(found) => Ok(Picked::Ref(found)),
            None => pick_ref(
                refs,
                url,
                &follow_branch_fallback(fallback),
                None,
                control_branch,
            ),
        },
    }
}

/// The first listed ref whose commit starts with `prefix` (lower-case): an abbreviated
/// commit id that is some tip is taken from that tip before history is searched.
pub fn first_tip_with_prefix<'a>(refs: &'a [RemoteRef], prefix: &str) -> Option<&'a RemoteRef> {
    refs.iter()
        .find(|r| r.commit().to_string().starts_with(prefix))
}

fn is_hex_id(text: &str) -> bool {
    (7..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_listed_candidate_is_what_pick_ref_picks() {
        let id = |n: u8| gix::ObjectId::from_hex(format!("{n:040x}").as_bytes()).unwrap();
        let names = [
            "refs/heads/main",
            "refs/heads/production",
            "refs/heads/develop",
            "refs/tags/develop",
            "refs/tags/v1",
            "refs/heads/feature",
            "HEAD",
        ];
        let wants = [
            GitWant::Branch("develop".into()),
            GitWant::Branch("feature".into()),
            GitWant::ControlBranch,
            GitWant::Tag("v1".into()),
            GitWant::Tag("v2".into()),
            GitWant::Ref("develop".into()),
            GitWant::Ref("nothing".into()),
            GitWant::Ref("refs/tags/v1".into()),
            GitWant::Head,
            GitWant::FollowBranch(None),
            GitWant::FollowBranch(Some("develop".into())),
            GitWant::FollowBranch(Some("v1".into())),
            GitWant::FollowBranch(Some("nothing".into())),
        ];
        // Every subset of the refs, every want, with and without a default branch.
        for mask in 0u32..(1 << names.len()) {
            let refs: Vec<RemoteRef> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(i, n)| RemoteRef {
                    name: (*n).to_owned(),
                    target: id(u8::try_from(i).unwrap()),
                    peeled: None,
                })
                .collect();
            for want in &wants {
                for default in [None, Some("main")] {
                    let picked = pick_ref(&refs, "u", want, default, "production");
                    let candidates = candidate_refs(want, default, "production").unwrap();
                    let first = candidates
                        .iter()
                        .find_map(|c| refs.iter().find(|r| r.name == *c));
                    match picked {
                        Ok(Picked::Ref(r)) => assert_eq!(first, Some(r), "{want:?} {default:?}"),
                        Ok(Picked::Commit(_)) => panic!("{want:?}: a commit"),
                        Err(_) => assert_eq!(first, None, "{want:?} {default:?} {mask}"),
                    }
                }
            }
        }
        assert_eq!(
            candidate_refs(&GitWant::Commit("abc1234".into()), None, "p"),
            None
        );
        assert_eq!(
            candidate_refs(&GitWant::Ref("abc1234".into()), None, "p"),
            None
        );
        assert_eq!(
            candidate_refs(&GitWant::FollowBranch(Some("abc1234".into())), None, "p"),
            None,
            "a commit fallback does not float"
        );
        assert_eq!(
            candidate_refs(&GitWant::FollowBranch(None), Some("main"), "p").unwrap(),
            ["refs/heads/p", "HEAD"],
            "follow_branch ignores :default_branch"
        );
    }

    #[test]
    fn public_forge_names_mean_the_configured_forge() {
        let configured = "http://127.0.0.1:8080/";
        let cases = [
            (None, "http://127.0.0.1:8080"),
            (
                Some("https://forge.puppetlabs.com"),
                "http://127.0.0.1:8080",
            ),
            (
                Some("https://forgeapi.puppet.com/"),
                "http://127.0.0.1:8080",
            ),
            (Some("forge.puppet.com"), "http://127.0.0.1:8080"),
            (
                Some("https://forge.internal.example.com/api"),
                "https://forge.internal.example.com/api",
            ),
        ];
        for (puppetfile, want) in cases {
            assert_eq!(forge_base(puppetfile, configured), want, "{puppetfile:?}");
        }
    }

    #[test]
    fn hex_ids_are_recognised() {
        assert!(is_hex_id("abcdef1"));
        assert!(is_hex_id(&"a".repeat(40)));
        assert!(!is_hex_id("abcdef"));
        assert!(!is_hex_id("release-1"));
    }

    #[tokio::test]
    async fn flights_compute_once_per_key() {
        let flights: Flights<u32, u32> = Flights::new();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let run = |k: u32| {
            let calls = &calls;
            let flights = &flights;
            async move {
                flights
                    .get(&k, async {
                        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        if k == 9 {
                            Err("nine".to_owned())
                        } else {
                            Ok(k * 2)
                        }
                    })
                    .await
            }
        };
        let (a, b, c, d) = tokio::join!(run(1), run(1), run(2), run(9));
        assert_eq!((*a.unwrap(), *b.unwrap(), *c.unwrap()), (2, 2, 4));
        assert_eq!(d.unwrap_err(), "nine");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(run(9).await.unwrap_err(), "nine");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
