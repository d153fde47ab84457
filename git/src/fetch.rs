//! Fetching wanted refs or commits into a bare temporary repository, shallow (depth 1)
//! by default, and checking that the result really is shallow.
//!
//! Nothing is checked out: trees and blobs are read from the object database by the
//! environment builder.

use std::sync::atomic::AtomicBool;

use super::decoded::{ChainStats, DecodedBlobs};
use super::remote::{Remote, ScratchDir, ScratchRepo};
use super::{GitError, error_chain, run_with_deadline};

/// Something to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FetchWant {
    /// A full ref name, such as `refs/heads/main` or `refs/tags/v1.0.0`.
    Ref(String),
    /// A commit by id. Servers with protocol v2 allow this for reachable commits.
    Commit(gix::ObjectId),
}

impl std::fmt::Display for FetchWant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchWant::Ref(name) => f.write_str(name),
            FetchWant::Commit(id) => write!(f, "commit {id}"),
        }
    }
}

/// How much history to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Only the wanted commits (depth 1). The result is checked to be shallow.
    Shallow,
    /// Full history of the wanted refs (for abbreviated commit ids).
    Full,
}

/// A bare repository holding fetched commits; removed from disk when dropped.
#[derive(Debug)]
pub struct FetchedRepo {
    scratch: ScratchRepo,
    url: String,
    tips: Vec<(FetchWant, gix::ObjectId)>,
    received_bytes: u64,
    /// Blobs decoded ahead ([`FetchedRepo::decode_blobs`]).
    decoded: std::sync::OnceLock<DecodedBlobs>,
}

impl FetchedRepo {
    /// The commit fetched for `want`.
    pub fn commit_of(&self, want: &FetchWant) -> Option<gix::ObjectId> {
        self.tips.iter().find(|(w, _)| w == want).map(|(_, c)| *c)
    }

    /// Every wanted item with its commit, in the order asked for.
    pub fn tips(&self) -> &[(FetchWant, gix::ObjectId)] {
        &self.tips
    }

    /// A handle on this thread to read objects.
    pub fn repo(&self) -> gix::Repository {
        self.scratch.repo.to_thread_local()
    }

    /// The URL fetched from, masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bytes of pack data received.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Path of the bare repository (for diagnostics and tests).
    pub fn path(&self) -> &std::path::Path {
        self.scratch.dir.path()
    }

    /// Decodes every blob of the fetched pack into a scratch file beside it, on `threads`
    /// threads ([`DecodedBlobs`]), when the pack has enough deltas to make that pay
    /// ([`worth_decoding`](super::decoded::worth_decoding)); blob sizes and contents
    /// then come from there. Returns the pack's chain statistics. An object larger than
    /// `max_object_bytes` (or any failure) leaves the repository as it was: reads then go
    /// to the pack, only slower. Meant for a shallow fetch, where nearly every blob is
    /// wanted; not for a full history.
    pub fn decode_blobs(
        &self,
        threads: usize,
        max_object_bytes: u64,
        max_total_bytes: u64,
    ) -> Result<ChainStats, GitError> {
        let dir = self.scratch.repo.objects_dir().join("pack");
        let mut indexes: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| GitError::Local(format!("{}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "idx"))
            .collect();
        indexes.sort();
        let (decoded, stats) = DecodedBlobs::decode(
            &indexes,
            self.scratch.repo.objects.object_hash(),
            self.scratch.dir.path(),
            threads,
            max_object_bytes,
            max_total_bytes,
        )
        .map_err(|e| GitError::Local(format!("{}: decoding blobs: {e}", self.url)))?;
        if let Some(decoded) = decoded {
            // A second caller racing this one decoded the same blobs; either copy will do.
            let _ = self.decoded.set(decoded);
        }
        Ok(stats)
    }

    /// The blobs decoded ahead, if [`FetchedRepo::decode_blobs`] succeeded.
    pub fn decoded(&self) -> Option<&DecodedBlobs> {
        self.decoded.get()
    }

    /// The tree of `commit`.
    pub fn tree_of(&self, commit: gix::ObjectId) -> Result<gix::ObjectId, GitError> {
        let repo = self.repo();
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree_id().map(|id| id.detach()))
            .map_err(|e| {
                GitError::Local(format!(
                    "{}: commit {commit}: {}",
                    self.url,
                    error_chain(&e)
                ))
            })?;
        Ok(tree)
    }

    /// Resolves an abbreviated commit id (7 to 40 hex digits) among the fetched objects.
    pub fn resolve_prefix(&self, prefix: &str) -> Result<gix::ObjectId, GitError> {
        let repo = self.repo();
        let id = repo
            .rev_parse_single(prefix)
            .map_err(|e| GitError::NotFound {
                url: self.url.clone(),
                what: format!("commit {prefix} ({})", error_chain(&e)),
            })?
            .detach();
        peel_to_commit(&repo, id).map_err(|m| GitError::NotFound {
            url: self.url.clone(),
            what: format!("commit {prefix} ({m})"),
        })
    }
}

fn peel_to_commit(repo: &gix::Repository, id: gix::ObjectId) -> Result<gix::ObjectId, String> {
    let object = repo.find_object(id).map_err(|e| error_chain(&e))?;
    let commit = object
        .peel_to_kind(gix::object::Kind::Commit)
        .map_err(|e| format!("{id} is not a commit or a tag of one: {}", error_chain(&e)))?;
    Ok(commit.id)
}

impl Remote {
    /// Fetches `wants` into a new bare temporary repository. Refs that the remote does
    /// not have are an error naming them.
    pub fn fetch(&self, wants: &[FetchWant], depth: Depth) -> Result<FetchedRepo, GitError> {
        let mut this = self.clone();
        let wants = wants.to_vec();
        let url = self.display_url();
        let dir = ScratchDir::new(self.temp_root())?;
        let thread_dir = dir.clone();
        let result = run_with_deadline(self.timeout(), "fetch", &url, move |interrupt| {
            this.fetch_now(&wants, depth, interrupt, &thread_dir)
        });
        dir.remove_if_abandoned(&result);
        result
    }

    fn fetch_now(
        &mut self,
        wants: &[FetchWant],
        depth: Depth,
        interrupt: &AtomicBool,
        dir: &ScratchDir,
    ) -> Result<FetchedRepo, GitError> {
        let url = self.display_url();
        if wants.is_empty() {
            return Err(GitError::Local(format!("fetch {url}: nothing to fetch")));
        }
        let scratch = self.scratch_repo("fetch", dir)?;
        let repo = scratch.repo.to_thread_local();
        let specs: Vec<String> = wants
            .iter()
            .enumerate()
            .map(|(i, want)| match want {
                FetchWant::Ref(name) => format!("+{name}:refs/openvox/{i}"),
                FetchWant::Commit(id) => format!("+{id}:refs/openvox/{i}"),
            })
            .collect();
        let remote = repo
            .remote_at(self.url().as_str())
            .and_then(|r| {
                r.with_refspecs(
                    specs.iter().map(String::as_str),
                    gix::remote::Direction::Fetch,
                )
            })
            .map(|r| r.with_fetch_tags(gix::remote::fetch::Tags::None))
            .map_err(|e| self.failure("fetch", &e))?;
        let connection = self.connect(&remote, "fetch")?;
        let mut prepare = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| self.failure("fetch", &e))?;
        if depth == Depth::Shallow {
            prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
                std::num::NonZeroU32::MIN,
            ));
        }
        let outcome = prepare
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| self.failure("fetch", &e))?;
        let received_bytes = match &outcome.status {
            gix::remote::fetch::Status::Change { .. } => pack_size(&scratch),
            _ => 0,
        };

        // The refs we asked for, peeled to commits.
        let mut tips = Vec::with_capacity(wants.len());
        for (i, want) in wants.iter().enumerate() {
            let local = format!("refs/openvox/{i}");
            let target = match repo.try_find_reference(local.as_str()) {
                Ok(Some(mut reference)) => reference
                    .peel_to_id()
                    .map(|id| id.detach())
                    .map_err(|e| GitError::Local(format!("{url}: {want}: {}", error_chain(&e))))?,
                Ok(None) => {
                    return Err(GitError::NotFound {
                        url: url.clone(),
                        what: want.to_string(),
                    });
                }
                Err(e) => {
                    return Err(GitError::Local(format!(
                        "{url}: {want}: {}",
                        error_chain(&e)
                    )));
                }
            };
            let commit = peel_to_commit(&repo, target)
                .map_err(|m| GitError::Local(format!("{url}: {want}: {m}")))?;
            tips.push((want.clone(), commit));
        }

        if depth == Depth::Shallow {
            // A parent that is itself a wanted tip (a branch one commit ahead of
            // another) arrived because it was asked for, not because the fetch was deep.
            let tip_ids: std::collections::HashSet<_> =
                tips.iter().map(|(_, commit)| *commit).collect();
            for (want, commit) in &tips {
                let object = repo
                    .find_commit(*commit)
                    .map_err(|e| GitError::Local(format!("{url}: {want}: {}", error_chain(&e))))?;
                let has_parent_locally = object
                    .parent_ids()
                    .any(|parent| !tip_ids.contains(&parent.detach()) && repo.has_object(parent));
                if has_parent_locally {
                    let error = GitError::NotShallow {
                        url: url.clone(),
                        what: want.to_string(),
                    };
                    if !self.allows_full_history() {
                        return Err(error);
                    }
                    tracing::warn!("{error}; continuing because --allow-full-history is set");
                    break;
                }
            }
        }
        drop(remote);
        drop(repo);
        Ok(FetchedRepo {
            scratch,
            url,
            tips,
            received_bytes,
            decoded: std::sync::OnceLock::new(),
        })
    }
}

/// Bytes of the pack files in the repository.
fn pack_size(scratch: &ScratchRepo) -> u64 {
    let pack_dir = scratch.dir.path().join("objects").join("pack");
    std::fs::read_dir(pack_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
