//! The deterministic file tree of one environment: the control repository's tree at a
//! commit, with each Puppetfile module mounted at its path.
//!
//! Entries are kept in byte order of their `/`-separated paths (a directory before its
//! contents), with git modes (`040000`, `100644`, `100755`, `120000`), symlink targets,
//! file sizes and where each file's bytes come from ([`Content`]): a blob in a fetched
//! repository, or a file unpacked from a Forge release. Nothing is checked out to build
//! it; [`ContentReader`] streams the bytes when the tree is written to a directory
//! ([`EnvironmentTree::write_into`]) or into an image layer.
//!
//! Safety: every path component is checked (no empty, `.`, `..`, `.git`, no `/`, NUL or
//! non-UTF-8 names), nothing is placed below a file or a symlink, and every symlink is
//! resolved inside the tree (following other symlinks, as the kernel would) and refused
//! when it leaves the environment at any step. Counts and sizes are bounded by
//! [`Limits`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::git::{FetchedRepo, error_chain};
use crate::limits::{Bytes, Limits};

/// Longest symlink target accepted.
const MAX_SYMLINK_TARGET: u64 = 4096;
/// Longest path component, like Linux's `NAME_MAX`.
pub const MAX_NAME_BYTES: usize = 255;
/// Symlinks followed while resolving one path, like Linux's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

/// A relative path that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is absolute; it must be relative to the environment")]
    Absolute,
    #[error("contains '..'")]
    DotDot,
    #[error("is empty")]
    Empty,
}

/// Normalises a relative path given in a Puppetfile (`moduledir`, `install_path`): drops
/// `.` and empty components and trailing slashes; refuses absolute paths and `..`.
pub fn normalize_relative_path(path: &str) -> Result<String, PathError> {
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::DotDot),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

/// Why a tree cannot become an environment.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TreeError {
    #[error("path {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },
    #[error("symlink {path:?} -> {target:?} points outside the environment")]
    SymlinkEscapes { path: String, target: String },
    #[error("symlink {path:?}: more than {MAX_SYMLINK_HOPS} symlinks to follow (a loop?)")]
    SymlinkLoop { path: String },
    #[error("more than {limit} files and directories (limit --max-files)")]
    TooManyFiles { limit: u64 },
    #[error("file {path:?} has {} (limit --max-file-size {})", Bytes(*size), Bytes(*limit))]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("files add up to more than {} (limit --max-environment-size)", Bytes(*limit))]
    TooLarge { limit: u64 },
    #[error("{path:?} {reason}")]
    Collision { path: String, reason: String },
    #[error("reading {what}: {message}")]
    Read { what: String, message: String },
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Unpacked files on disk (a Forge release, a module taken from a previous layer), kept
/// as long as a tree refers to them.
#[derive(Debug)]
pub struct LocalDir {
    path: PathBuf,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl LocalDir {
    /// A directory that is removed when the last tree using it is dropped.
    pub fn temporary(dir: tempfile::TempDir) -> Self {
        Self {
            path: dir.path().to_owned(),
            _temp: Some(Arc::new(dir)),
        }
    }

    /// `path`, a directory below `temp`, which is removed when the last tree using any
    /// directory below it is dropped.
    pub fn inside(temp: Arc<tempfile::TempDir>, path: PathBuf) -> Self {
        Self {
            path,
            _temp: Some(temp),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An entry of an unpacked directory, as listed by whoever unpacked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// `/`-separated path relative to the directory, already checked.
    pub path: String,
    pub kind: LocalKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalKind {
    Directory,
    File { executable: bool, size: u64 },
    Symlink { target: String },
}

/// Where the bytes of a file come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// A blob in a fetched repository.
    Git {
        repo: Arc<FetchedRepo>,
        id: gix::ObjectId,
    },
    /// A file in an unpacked directory.
    Local { dir: Arc<LocalDir>, path: String },
}

/// One entry of an environment.
#[derive(Debug, Clone)]
pub enum EntryKind {
    Directory,
    File {
        executable: bool,
        size: u64,
        content: Content,
    },
    Symlink {
        target: String,
    },
}

impl EntryKind {
    /// The git mode: `0o040000`, `0o100644`, `0o100755` or `0o120000`.
    pub fn git_mode(&self) -> u32 {
        match self {
            EntryKind::Directory => 0o040000,
            EntryKind::File {
                executable: false, ..
            } => 0o100644,
            EntryKind::File {
                executable: true, ..
            } => 0o100755,
            EntryKind::Symlink { .. } => 0o120000,
        }
    }

    /// Unix permission bits used when writing: `0o755` for directories and executables,
    /// `0o644` for other files, `0o777` for symlinks.
    pub fn permissions(&self) -> u32 {
        match self {
            EntryKind::Directory
            | EntryKind::File {
                executable: true, ..
            } => 0o755,
            EntryKind::File {
                executable: false, ..
            } => 0o644,
            EntryKind::Symlink { .. } => 0o777,
        }
    }
}

/// Totals of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// The files of one environment, in path order.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentTree {
    entries: BTreeMap<String, EntryKind>,
    bytes: u64,
    limits: Limits,
}

fn check_component(parent: &str, name: &[u8]) -> Result<String, TreeError> {
    let shown = String::from_utf8_lossy(name);
    let path = if parent.is_empty() {
        shown.to_string()
    } else {
        format!("{parent}/{shown}")
    };
    let unsafe_path = |reason: &str| TreeError::UnsafePath {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let name = std::str::from_utf8(name).map_err(|_| unsafe_path("is not UTF-8"))?;
    match name {
        "" => Err(unsafe_path("has an empty component")),
        "." | ".." => Err(unsafe_path("has a '.' or '..' component")),
        _ if name.eq_ignore_ascii_case(".git") => Err(unsafe_path("has a .git component")),
        _ if name.contains(['/', '\0']) => Err(unsafe_path("has a component with '/' or NUL")),
        // Linux's NAME_MAX. Caught here, not when writing: there it failed late, with the
        // temporary directory's path in the message (found by tests/hostile.rs).
        _ if name.len() > MAX_NAME_BYTES => Err(unsafe_path(&format!(
            "has a component longer than {MAX_NAME_BYTES} bytes (the file system limit)"
        ))),
        _ => Ok(path),
    }
}

impl EnvironmentTree {
    /// An empty tree (the environment root only) bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            entries: BTreeMap::new(),
            bytes: 0,
            limits,
        }
    }

    /// Entries in path order. The root itself is not listed.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &EntryKind)> {
        self.entries.iter().map(|(p, k)| (p.as_str(), k))
    }

    pub fn get(&self, path: &str) -> Option<&EntryKind> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counts and bytes.
    pub fn stats(&self) -> TreeStats {
        let mut stats = TreeStats::default();
        for kind in self.entries.values() {
            match kind {
                EntryKind::Directory => stats.directories += 1,
                EntryKind::File { size, .. } => {
                    stats.files += 1;
                    stats.bytes += size;
                }
                EntryKind::Symlink { .. } => stats.symlinks += 1,
            }
        }
        stats
    }

    fn insert(&mut self, path: String, kind: EntryKind) -> Result<(), TreeError> {
        let replaced = match self.entries.get(&path) {
            Some(EntryKind::File { size, .. }) => *size,
            _ => 0,
        };
        let added = match &kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        };
        if added > self.limits.max_file_bytes {
            return Err(TreeError::FileTooLarge {
                path,
                size: added,
                limit: self.limits.max_file_bytes,
            });
        }
        let bytes = self.bytes - replaced + added;
        if bytes > self.limits.max_environment_bytes {
            return Err(TreeError::TooLarge {
                limit: self.limits.max_environment_bytes,
            });
        }
        let count = self.entries.len() as u64 + u64::from(!self.entries.contains_key(&path));
        if count > self.limits.max_files_per_environment {
            return Err(TreeError::TooManyFiles {
                limit: self.limits.max_files_per_environment,
            });
        }
        self.bytes = bytes;
        self.entries.insert(path, kind);
        Ok(())
    }

    /// Removes `path` and everything below it.
    pub fn remove_subtree(&mut self, path: &str) {
        if let Some(EntryKind::File { size, .. }) = self.entries.remove(path) {
            self.bytes -= size;
        }
        let prefix = format!("{path}/");
        let below: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            if let Some(EntryKind::File { size, .. }) = self.entries.remove(&p) {
                self.bytes -= size;
            }
        }
    }

    /// Makes `path` an empty directory, creating missing parents, replacing whatever was
    /// at `path`. Fails when a parent is a file or a symlink.
    pub fn replace_with_directory(&mut self, path: &str, what: &str) -> Result<(), TreeError> {
        let mut parent = String::new();
        for part in path.split('/') {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if parent.len() == path.len() {
                break;
            }
            match self.entries.get(&parent) {
                None => self.insert(parent.clone(), EntryKind::Directory)?,
                Some(EntryKind::Directory) => {}
                Some(EntryKind::File { .. }) => {
                    return Err(TreeError::Collision {
                        path: parent,
                        reason: format!("is a file, so {what} cannot be placed at {path:?}"),
                    });
                }
                Some(EntryKind::Symlink { .. }) => {
                    return Err(TreeError::Collision {
                        path: parent,
                        reason: format!("is a symlink, so {what} cannot be placed at {path:?}"),
                    });
                }
            }
        }
        self.remove_subtree(path);
        self.insert(path.to_owned(), EntryKind::Directory)
    }

    /// Adds the git tree `tree` of `repo` below `prefix` (`""` for the root), leaving out
    /// the top-level names in `exclude`. Submodules become empty directories, as in a
    /// checkout without `--recurse-submodules`.
    pub fn add_git_tree(
        &mut self,
        prefix: &str,
        repo: &Arc<FetchedRepo>,
        tree: gix::ObjectId,
        exclude: &[&str],
    ) -> Result<(), TreeError> {
        let handle = repo.repo();
        let read_error = |what: String, e: &gix::Error| TreeError::Read {
            what: format!("{} {what}", repo.url()),
            message: error_chain(e),
        };
        let mut pending = vec![(tree, prefix.to_owned(), true)];
        while let Some((tree_id, dir, top)) = pending.pop() {
            let tree = handle
                .find_tree(tree_id)
                .map_err(|e| read_error(format!("tree {tree_id}"), &e))?;
            for entry in tree.iter() {
                let entry = entry.map_err(|e| read_error(format!("tree {tree_id}"), &e))?;
                let name: &[u8] = entry.filename();
                if top && exclude.iter().any(|x| x.as_bytes() == name) {
                    continue;
                }
                let path = check_component(&dir, name)?;
                let id = entry.object_id();
                use gix::objs::tree::EntryKind as Git;
                match entry.kind() {
                    Git::Tree => {
                        self.insert(path.clone(), EntryKind::Directory)?;
                        pending.push((id, path, false));
                    }
                    Git::Commit => self.insert(path, EntryKind::Directory)?,
                    Git::Blob | Git::BlobExecutable => {
                        let size = match repo.decoded().and_then(|d| d.size(&id)) {
                            Some(size) => size,
                            None => handle
                                .find_header(id)
                                .map_err(|e| read_error(format!("blob {id} ({path})"), &e))?
                                .size(),
                        };
                        let kind = EntryKind::File {
                            executable: entry.kind() == Git::BlobExecutable,
                            size,
                            content: Content::Git {
                                repo: repo.clone(),
                                id,
                            },
                        };
                        self.insert(path, kind)?;
                    }
                    Git::Link => {
                        let size = handle
                            .find_header(id)
                            .map_err(|e| read_error(format!("symlink {id} ({path})"), &e))?
                            .size();
                        if size > MAX_SYMLINK_TARGET {
                            return Err(TreeError::UnsafePath {
                                path,
                                reason: format!(
                                    "symlink target is longer than {MAX_SYMLINK_TARGET} bytes"
                                ),
                            });
                        }
                        let blob = handle
                            .find_object(id)
                            .map_err(|e| read_error(format!("symlink {id} ({path})"), &e))?;
                        let target = String::from_utf8(blob.data.clone()).map_err(|_| {
                            TreeError::UnsafePath {
                                path: path.clone(),
                                reason: "symlink target is not UTF-8".into(),
                            }
                        })?;
                        self.insert(path, EntryKind::Symlink { target })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds an unpacked directory below `prefix`, leaving out the top-level names in
    /// `exclude`.
    pub fn add_local_tree(
        &mut self,
        prefix: &str,
        dir: &Arc<LocalDir>,
        entries: &[LocalEntry],
        exclude: &[&str],
    ) -> Result<(), TreeError> {
        for entry in entries {
            let top = entry.path.split('/').next().unwrap_or_default();
            if exclude.contains(&top) {
                continue;
            }
            let mut path = prefix.to_owned();
            for part in entry.path.split('/') {
                path = check_component(&path, part.as_bytes())?;
            }
            let kind = match &entry.kind {
                LocalKind::Directory => EntryKind::Directory,
                LocalKind::File { executable, size } => EntryKind::File {
                    executable: *executable,
                    size: *size,
                    content: Content::Local {
                        dir: dir.clone(),
                        path: entry.path.clone(),
                    },
                },
                LocalKind::Symlink { target } => EntryKind::Symlink {
                    target: target.clone(),
                },
            };
            self.insert(path, kind)?;
        }
        Ok(())
    }

    /// Checks what can only be checked on the whole tree: every entry's parent is a
    /// directory, and every symlink stays inside the environment. Returns the totals.
    pub fn check(&self) -> Result<TreeStats, TreeError> {
        for (path, kind) in &self.entries {
            if let Some((parent, _)) = path.rsplit_once('/') {
                match self.entries.get(parent) {
                    Some(EntryKind::Directory) => {}
                    Some(_) => {
                        return Err(TreeError::Collision {
                            path: path.clone(),
                            reason: format!("lies below {parent:?}, which is not a directory"),
                        });
                    }
                    None => {
                        return Err(TreeError::Collision {
                            path: path.clone(),
                            reason: format!("lies below {parent:?}, which is missing"),
                        });
                    }
                }
            }
            if let EntryKind::Symlink { target } = kind {
                self.check_symlink(path, target)?;
            }
        }
        Ok(self.stats())
    }

    /// Resolves `target` of the symlink at `path` the way the kernel would, inside this
    /// tree, and fails if any step goes above the environment root.
    fn check_symlink(&self, path: &str, target: &str) -> Result<(), TreeError> {
        let escapes = || TreeError::SymlinkEscapes {
            path: path.to_owned(),
            target: target.to_owned(),
        };
        if target.is_empty() || target.starts_with('/') {
            return Err(escapes());
        }
        let mut resolved: Vec<&str> = path.split('/').collect();
        resolved.pop();
        let mut pending: Vec<&str> = target.split('/').rev().collect();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part {
                "" | "." => {}
                ".." => {
                    if resolved.pop().is_none() {
                        return Err(escapes());
                    }
                }
                name => {
                    resolved.push(name);
                    let joined = resolved.join("/");
                    if let Some(EntryKind::Symlink { target: next }) = self.entries.get(&joined) {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(TreeError::SymlinkLoop {
                                path: path.to_owned(),
                            });
                        }
                        if next.starts_with('/') {
                            return Err(escapes());
                        }
                        resolved.pop();
                        pending.extend(next.split('/').rev());
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the tree into the empty or missing directory `dest`. Files are created
    /// exclusively (never through an existing path), with 0644/0755 permissions.
    pub fn write_into(
        &self,
        dest: &Path,
        reader: &mut ContentReader,
    ) -> Result<TreeStats, TreeError> {
        let write_error = |path: &Path, e: std::io::Error| TreeError::Write {
            path: path.to_owned(),
            message: e.to_string(),
        };
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::create_dir_all(dest).map_err(|e| write_error(dest, e))?;
        let mut stats = TreeStats::default();
        for (path, kind) in &self.entries {
            let target_path = dest.join(path);
            match kind {
                EntryKind::Directory => {
                    std::fs::create_dir(&target_path).map_err(|e| write_error(&target_path, e))?;
                    stats.directories += 1;
                }
                EntryKind::File { content, size, .. } => {
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(kind.permissions())
                        .open(&target_path)
                        .map_err(|e| write_error(&target_path, e))?;
                    let written = reader.copy_to(content, &mut file, path)?;
                    if written != *size {
                        return Err(TreeError::Read {
                            what: path.clone(),
                            message: format!("expected {size} bytes, read {written}"),
                        });
                    }
                    file.flush().map_err(|e| write_error(&target_path, e))?;
                    file.set_permissions(std::fs::Permissions::from_mode(kind.permissions()))
                        .map_err(|e| write_error(&target_path, e))?;
                    stats.files += 1;
                    stats.bytes += written;
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &target_path)
                        .map_err(|e| write_error(&target_path, e))?;
                    stats.symlinks += 1;
                }
            }
        }
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| write_error(dest, e))?;
        Ok(stats)
    }
}

/// Reads file contents of trees: git blobs from the repository's decoded blobs when it
/// has them ([`FetchedRepo::decode_blobs`]), else from its pack. Holds one repository
/// handle per fetched repository, so keep one reader per thread.
#[derive(Debug, Default)]
pub struct ContentReader {
    repos: Vec<(Arc<FetchedRepo>, gix::Repository)>,
    /// Holds a blob decoded ahead on its way out.
    buf: Vec<u8>,
}

impl ContentReader {
    pub fn new() -> Self {
        Self::default()
    }

    fn repo_for(&mut self, repo: &Arc<FetchedRepo>) -> &gix::Repository {
        let index = match self.repos.iter().position(|(r, _)| Arc::ptr_eq(r, repo)) {
            Some(i) => i,
            None => {
                self.repos.push((repo.clone(), repo.repo()));
                self.repos.len() - 1
            }
        };
        &self.repos[index].1
    }

    /// Copies the bytes of `content` into `out`; `path` names it in errors. Returns the
    /// number of bytes copied.
    pub fn copy_to(
        &mut self,
        content: &Content,
        out: &mut dyn Write,
        path: &str,
    ) -> Result<u64, TreeError> {
        match content {
            Content::Git { repo, id } => {
                if let Some(copied) = repo
                    .decoded()
                    .and_then(|decoded| decoded.copy_to(id, &mut self.buf, out))
                {
                    return copied.map_err(|e| TreeError::Read {
                        what: format!("{path} (blob {id})"),
                        message: e.to_string(),
                    });
                }
                let handle = self.repo_for(repo);
                let object = handle.find_object(*id).map_err(|e| TreeError::Read {
                    what: format!("{path} (blob {id})"),
                    message: error_chain(&e),
                })?;
                out.write_all(&object.data).map_err(|e| TreeError::Read {
                    what: path.to_owned(),
                    message: e.to_string(),
                })?;
                Ok(object.data.len() as u64)
            }
            Content::Local {
                dir,
                path: relative,
            } => {
                let source = dir.path().join(relative);
                let mut file = std::fs::File::open(&source).map_err(|e| TreeError::Read {
                    what: source.display().to_string(),
                    message: e.to_string(),
                })?;
                std::io::copy(&mut file, out).map_err(|e| TreeError::Read {
                    what: source.display().to_string(),
                    message: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(entries: &[(&str, Option<&str>)]) -> EnvironmentTree {
        let mut tree = EnvironmentTree::new(Limits::default());
        for (path, link) in entries {
            let kind = match link {
                Some(target) => EntryKind::Symlink {
                    target: target.to_string(),
                },
                None => EntryKind::Directory,
            };
            tree.insert(path.to_string(), kind).unwrap();
        }
        tree
    }

    #[test]
    fn relative_paths_are_normalised_or_refused() {
        let cases = [
            ("modules", Ok("modules")),
            ("./site//modules/", Ok("site/modules")),
            ("a/./b", Ok("a/b")),
            ("/etc/puppet", Err(PathError::Absolute)),
            ("../x", Err(PathError::DotDot)),
            ("a/../../x", Err(PathError::DotDot)),
            ("", Err(PathError::Empty)),
            ("./", Err(PathError::Empty)),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_relative_path(input)
                    .as_deref()
                    .map_err(Clone::clone),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn path_components_are_checked() {
        let cases: &[(&[u8], bool)] = &[
            (b"manifests", true),
            (b"site.pp", true),
            (b".hidden", true),
            (b"", false),
            (b".", false),
            (b"..", false),
            (b".git", false),
            (b".GIT", false),
            (b"a/b", false),
            (b"nul\0", false),
            (b"\xff\xfe", false),
        ];
        for (name, ok) in cases {
            assert_eq!(
                check_component("dir", name).is_ok(),
                *ok,
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn symlinks_inside_the_environment_are_kept() {
        let tree = tree_with(&[
            ("modules", None),
            ("modules/a", None),
            ("modules/a/files", None),
            ("modules/b", Some("a")),
            ("modules/a/files/up", Some("../../../site")),
            ("modules/a/files/self", Some(".")),
            ("modules/a/files/dangling", Some("missing/file")),
            ("modules/a/files/via", Some("../../b/files")),
            ("site", None),
            ("root_link", Some("modules/./a/../a")),
        ]);
        tree.check().unwrap();
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let cases: &[&[(&str, Option<&str>)]] = &[
            &[("evil", Some("../etc/passwd"))],
            &[("abs", Some("/etc/passwd"))],
            &[("empty", Some(""))],
            &[("d", None), ("d/up", Some("../../x"))],
            &[("d", None), ("d/up", Some("../d/../../x"))],
            // Each link alone stays inside; followed together they leave the root.
            &[("here", Some(".")), ("out", Some("here/.."))],
            &[
                ("d", None),
                ("d/e", None),
                ("d/e/root", Some("../..")),
                ("esc", Some("d/e/root/..")),
            ],
            &[("a", Some("/abs")), ("b", Some("a/x"))],
            &[("missing_then_up", Some("nope/../../x"))],
        ];
        for entries in cases {
            let tree = tree_with(entries);
            let err = tree.check().expect_err(&format!("{entries:?}"));
            assert!(
                matches!(err, TreeError::SymlinkEscapes { .. }),
                "{entries:?}: {err}"
            );
        }
    }

    #[test]
    fn symlink_loops_are_refused() {
        let tree = tree_with(&[("a", Some("b")), ("b", Some("a"))]);
        assert!(matches!(tree.check(), Err(TreeError::SymlinkLoop { .. })));
    }

    #[test]
    fn modules_are_not_placed_below_files_or_symlinks() {
        let mut tree = tree_with(&[("modules", Some("site")), ("site", None)]);
        let err = tree
            .replace_with_directory("modules/apache", "module apache")
            .unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");

        let mut tree = tree_with(&[
            ("modules", None),
            ("modules/apache", None),
            ("modules/apache/old", None),
        ]);
        tree.replace_with_directory("modules/apache", "module apache")
            .unwrap();
        assert!(tree.get("modules/apache/old").is_none());
        tree.replace_with_directory("site/deep/mod", "module mod")
            .unwrap();
        assert!(matches!(tree.get("site/deep"), Some(EntryKind::Directory)));
    }

    #[test]
    fn limits_are_enforced_while_adding() {
        let limits = Limits {
            max_files_per_environment: 2,
            ..Limits::default()
        };
        let mut tree = EnvironmentTree::new(limits);
        tree.insert("a".into(), EntryKind::Directory).unwrap();
        tree.insert("b".into(), EntryKind::Directory).unwrap();
        assert!(matches!(
            tree.insert("c".into(), EntryKind::Directory),
            Err(TreeError::TooManyFiles { limit: 2 })
        ));

        let limits = Limits {
            max_file_bytes: 10,
            max_environment_bytes: 15,
            ..Limits::default()
        };
        let dir = Arc::new(LocalDir::temporary(tempfile::tempdir().unwrap()));
        let file = |size| LocalEntry {
            path: "f".into(),
            kind: LocalKind::File {
                executable: false,
                size,
            },
        };
        let mut tree = EnvironmentTree::new(limits);
        let err = tree
            .add_local_tree("m", &dir, &[file(11)], &[])
            .unwrap_err();
        assert!(
            matches!(err, TreeError::FileTooLarge { size: 11, .. }),
            "{err}"
        );
        let mut tree = EnvironmentTree::new(limits);
        tree.add_local_tree("m1", &dir, &[file(8)], &[]).unwrap();
        let err = tree
            .add_local_tree("m2", &dir, &[file(8)], &[])
            .unwrap_err();
        assert!(matches!(err, TreeError::TooLarge { .. }), "{err}");
        // Replacing a subtree gives its bytes back.
        tree.remove_subtree("m1");
        tree.add_local_tree("m2", &dir, &[file(8)], &[]).unwrap();
    }

    #[test]
    fn local_trees_are_written_in_path_order_with_modes() {
        let source = tempfile::tempdir().unwrap();
        std::fs::create_dir(source.path().join("spec")).unwrap();
        std::fs::write(source.path().join("init.pp"), b"class x {}").unwrap();
        std::fs::write(source.path().join("run.sh"), b"#!/bin/sh").unwrap();
        let dir = Arc::new(LocalDir::temporary(source));
        let entries = vec![
            LocalEntry {
                path: "init.pp".into(),
                kind: LocalKind::File {
                    executable: false,
                    size: 10,
                },
            },
            LocalEntry {
                path: "run.sh".into(),
                kind: LocalKind::File {
                    executable: true,
                    size: 9,
                },
            },
            LocalEntry {
                path: "spec".into(),
                kind: LocalKind::Directory,
            },
            LocalEntry {
                path: "link".into(),
                kind: LocalKind::Symlink {
                    target: "init.pp".into(),
                },
            },
        ];
        let mut tree = EnvironmentTree::new(Limits::default());
        tree.replace_with_directory("modules/x", "module x")
            .unwrap();
        tree.add_local_tree("modules/x", &dir, &entries, &["spec"])
            .unwrap();
        let paths: Vec<(&str, u32)> = tree.entries().map(|(p, k)| (p, k.git_mode())).collect();
        assert_eq!(
            paths,
            [
                ("modules", 0o040000),
                ("modules/x", 0o040000),
                ("modules/x/init.pp", 0o100644),
                ("modules/x/link", 0o120000),
                ("modules/x/run.sh", 0o100755),
            ]
        );
        let stats = tree.check().unwrap();
        assert_eq!(
            (stats.files, stats.directories, stats.symlinks, stats.bytes),
            (2, 2, 1, 19)
        );

        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("env");
        let written = tree.write_into(&dest, &mut ContentReader::new()).unwrap();
        assert_eq!(written, stats);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::symlink_metadata(dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("modules/x/run.sh"), 0o755);
        assert_eq!(mode("modules/x/init.pp"), 0o644);
        assert_eq!(
            std::fs::read_link(dest.join("modules/x/link")).unwrap(),
            Path::new("init.pp")
        );
        assert_eq!(
            std::fs::read(dest.join("modules/x/init.pp")).unwrap(),
            b"class x {}"
        );
    }
}
