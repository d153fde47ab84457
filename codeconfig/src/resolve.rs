//! Which commit of a module's repository an environment wants, decided the same way
//! by whoever asks: a lockfile pin first, then `follow_branch`, then `ref`, then the
//! remote's HEAD.

use std::fmt;

use crate::lockfile::LockedModule;
use crate::module::Module;

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Exactly this commit (from the lockfile).
    Commit(String),
    /// The tip of this branch (named like the environment, via `follow_branch`).
    Branch(String),
    /// The module's `ref`: a branch, tag or commit, to be resolved on the remote.
    Ref(String),
    /// Whatever the remote's HEAD points at.
    Head,
}

/// Why that was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Lockfile,
    FollowBranch,
    Ref,
    Head,
}

/// A rule that applied but could not be used, so a later one was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// The lockfile entry is for another repository (the module's `git` changed since
    /// it was locked), so it no longer pins this module.
    StaleLock { locked_git: String },
    /// `follow_branch` is set but the repository has no branch of this name.
    NoSuchBranch(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub want: Want,
    pub reason: Reason,
    pub skipped: Vec<Skipped>,
}

/// Decides what `module` wants in `environment`.
///
/// `locked` is the lockfile's entry for the module in this environment, if any; it pins
/// the module when it is for the same repository (`git` equal), whatever `ref` says,
/// since pinning is what a lockfile is for. `has_branch` answers whether the module's
/// repository has a branch of the given name; it is only called for `follow_branch`
/// modules without a usable lock, so callers may answer it from a remote listing.
pub fn resolve_want(
    module: &Module,
    environment: &str,
    locked: Option<&LockedModule>,
    has_branch: impl FnOnce(&str) -> bool,
) -> Resolution {
    let mut skipped = Vec::new();
    if let Some(locked) = locked {
        if locked.git == module.git && locked.name == module.name {
            return Resolution {
                want: Want::Commit(locked.sha.clone()),
                reason: Reason::Lockfile,
                skipped,
            };
        }
        skipped.push(Skipped::StaleLock {
            locked_git: locked.git.clone(),
        });
    }
    if module.follow_branch {
        if has_branch(environment) {
            return Resolution {
                want: Want::Branch(environment.to_owned()),
                reason: Reason::FollowBranch,
                skipped,
            };
        }
        skipped.push(Skipped::NoSuchBranch(environment.to_owned()));
    }
    match &module.reference {
        Some(reference) => Resolution {
            want: Want::Ref(reference.clone()),
            reason: Reason::Ref,
            skipped,
        },
        None => Resolution {
            want: Want::Head,
            reason: Reason::Head,
            skipped,
        },
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.want {
            Want::Commit(sha) => write!(f, "commit {sha} from the lockfile")?,
            Want::Branch(branch) => write!(f, "branch `{branch}` (follow_branch)")?,
            Want::Ref(reference) => write!(f, "ref `{reference}`")?,
            Want::Head => f.write_str("the remote's HEAD (no ref)")?,
        }
        for skipped in &self.skipped {
            match skipped {
                Skipped::StaleLock { locked_git } => {
                    write!(f, "; lockfile entry ignored (locked from {locked_git})")?;
                }
                Skipped::NoSuchBranch(branch) => {
                    write!(f, "; no branch `{branch}` to follow")?;
                }
            }
        }
        Ok(())
    }
}
