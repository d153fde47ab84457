//! PVC mode: environments written into a directory that servers mount as their
//! environment path, switched in atomically.
//!
//! ```text
//! <dir>/
//!   production -> .versions/production/1a2b3c4d5e6f-9f8e7d6c5b4a   (relative symlink)
//!   .versions/production/1a2b3c4d5e6f-9f8e7d6c5b4a/                 (the environment)
//!   .versions/production/1a2b3c4d5e6f-9f8e7d6c5b4a.json             (its inputs)
//!   .openvox-code.lock
//! ```
//!
//! A version is named `<commit 12>-<inputs digest 12>`, so unchanged inputs reuse the
//! existing directory. It is written under a `.partial-*` name and renamed when complete;
//! the environment symlink is then replaced with `rename(2)`, which is atomic: a server
//! sees the old version or the new one, never a mix within one file or a half-written
//! directory. Puppet ignores the dot entries (not valid environment names).
//!
//! Only symlinks into `.versions/` are managed: a directory or file of the same name that
//! someone else put there is never replaced or purged.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use openvox_crds::codesource::EnvironmentRecord;
use sha2::{Digest, Sha256};

use crate::environments::Environment;
use crate::tree::{ContentReader, TreeError, TreeStats};

const VERSIONS: &str = ".versions";
const LOCK: &str = ".openvox-code.lock";

/// An output directory operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PvcError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0} is being written by another sync (lock {LOCK} is held)")]
    Locked(PathBuf),
    #[error(
        "{path} exists and is not a symlink managed by openvox-code; move it away to deploy environment {name:?}"
    )]
    Unmanaged { path: PathBuf, name: String },
    #[error("environment {name}: {source}")]
    Tree { name: String, source: TreeError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PvcError + '_ {
    move |e| PvcError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// What happened to one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    /// Version directory name.
    pub version: String,
    /// True when the version existed already and was not rewritten.
    pub reused: bool,
    /// What was written (zero when reused).
    pub written: TreeStats,
}

/// An output directory, locked for the lifetime of the value.
#[derive(Debug)]
pub struct OutputDir {
    root: PathBuf,
    _lock: File,
}

impl OutputDir {
    /// Creates `root` if needed and takes its lock (without waiting).
    pub fn open(root: &Path) -> Result<Self, PvcError> {
        std::fs::create_dir_all(root.join(VERSIONS)).map_err(io(root))?;
        let lock_path = root.join(LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PvcError::Locked(root.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        Ok(Self {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The version directory name of `env`.
    pub fn version_name(env: &Environment) -> String {
        let commit: String = env.inputs.commit.chars().take(12).collect();
        let digest: String = env.inputs.digest().chars().take(12).collect();
        format!("{commit}-{digest}")
    }

    /// The version the environment symlink `name` points to, if it is ours.
    pub fn current_version(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.root.join(name)).ok()?;
        let target = target.to_str()?;
        let rest = target.strip_prefix(&format!("{VERSIONS}/{name}/"))?;
        (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
    }

    /// Writes `env` into its version directory (unless it exists) and switches the
    /// environment symlink to it.
    pub fn install(
        &self,
        env: &Environment,
        reader: &mut ContentReader,
    ) -> Result<Installed, PvcError> {
        let name = &env.inputs.name;
        let link = self.root.join(name);
        self.check_managed(name)?;
        let version = Self::version_name(env);
        let versions = self.root.join(VERSIONS).join(name);
        std::fs::create_dir_all(&versions).map_err(io(&versions))?;
        let final_dir = versions.join(&version);
        let record_path = versions.join(format!("{version}.json"));

        let reused = final_dir.is_dir() && record_path.is_file();
        let mut written = TreeStats::default();
        if !reused {
            if final_dir.exists() {
                // A directory without its record: an interrupted earlier run.
                std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
            }
            let partial = tempfile::Builder::new()
                .prefix(".partial-")
                .tempdir_in(&versions)
                .map_err(io(&versions))?;
            written = env
                .tree
                .write_into(partial.path(), reader)
                .map_err(|source| PvcError::Tree {
                    name: name.clone(),
                    source,
                })?;
            let partial = partial.keep();
            if let Err(e) = std::fs::rename(&partial, &final_dir) {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(io(&final_dir)(e));
            }
            let record = serde_json::to_vec_pretty(&env.inputs.to_record(None)).map_err(|e| {
                PvcError::Io {
                    path: record_path.clone(),
                    message: e.to_string(),
                }
            })?;
            write_atomically(&record_path, &record)?;
        }

        // Switch: a new symlink under a temporary name, renamed over the old one.
        let target = format!("{VERSIONS}/{name}/{version}");
        if self.current_version(name).as_deref() != Some(version.as_str()) {
            let temporary = self
                .root
                .join(format!(".{name}.switch-{}", std::process::id()));
            let _ = std::fs::remove_file(&temporary);
            std::os::unix::fs::symlink(&target, &temporary).map_err(io(&temporary))?;
            if let Err(e) = std::fs::rename(&temporary, &link) {
                let _ = std::fs::remove_file(&temporary);
                return Err(io(&link)(e));
            }
            sync_dir(&self.root)?;
        }
        Ok(Installed {
            name: name.clone(),
            version,
            reused,
            written,
        })
    }

    /// Fails when `name` exists in the root as something other than our symlink.
    fn check_managed(&self, name: &str) -> Result<(), PvcError> {
        let link = self.root.join(name);
        match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&link)(e)),
            Ok(meta) if meta.file_type().is_symlink() && self.current_version(name).is_some() => {
                Ok(())
            }
            Ok(_) => Err(PvcError::Unmanaged {
                path: link,
                name: name.to_owned(),
            }),
        }
    }

    /// Environments managed here (symlinks into `.versions/`), in name order.
    pub fn managed_environments(&self) -> Result<Vec<String>, PvcError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if self.current_version(&name).is_some() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The environments in place, in name order, each with its current version.
    pub fn current_versions(&self) -> Result<Vec<(String, String)>, PvcError> {
        Ok(self
            .managed_environments()?
            .into_iter()
            .filter_map(|name| {
                let version = self.current_version(&name)?;
                Some((name, version))
            })
            .collect())
    }

    /// The record `install` wrote next to `version` of environment `name`.
    pub fn version_record(&self, name: &str, version: &str) -> Result<EnvironmentRecord, PvcError> {
        let path = self
            .root
            .join(VERSIONS)
            .join(name)
            .join(format!("{version}.json"));
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| PvcError::Io {
            path,
            message: e.to_string(),
        })
    }

    /// Removes managed environments not in `keep` (their branch disappeared or is no
    /// longer selected) and their versions, and version directories of environments that
    /// have no symlink. Returns the purged names.
    pub fn purge(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, PvcError> {
        let mut purged = Vec::new();
        for name in self.managed_environments()? {
            if keep.contains(&name) {
                continue;
            }
            let link = self.root.join(&name);
            std::fs::remove_file(&link).map_err(io(&link))?;
            purged.push(name);
        }
        if !purged.is_empty() {
            sync_dir(&self.root)?;
        }
        let versions = self.root.join(VERSIONS);
        for entry in std::fs::read_dir(&versions).map_err(io(&versions))? {
            let entry = entry.map_err(io(&versions))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if keep.contains(&name) || self.current_version(&name).is_some() {
                continue;
            }
            std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
            if !purged.contains(&name) {
                purged.push(name);
            }
        }
        purged.sort();
        Ok(purged)
    }

    /// Removes old versions of `name`: keeps the current one and the `keep_previous` most
    /// recent others (a server may still be reading them), and removes leftovers of
    /// interrupted writes. Returns how many versions were removed.
    pub fn cleanup(&self, name: &str, keep_previous: usize) -> Result<usize, PvcError> {
        let versions = self.root.join(VERSIONS).join(name);
        let current = self.current_version(name);
        let mut others: Vec<(std::time::SystemTime, String)> = Vec::new();
        let entries = match std::fs::read_dir(&versions) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&versions)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io(&versions))?;
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let path = entry.path();
            if file_name.starts_with(".partial-") {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
                continue;
            }
            if file_name.ends_with(".json") || Some(&file_name) == current.as_ref() {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            others.push((modified, file_name));
        }
        others.sort();
        others.reverse();
        for (_, version) in others.into_iter().skip(keep_previous) {
            let dir = versions.join(&version);
            let record = versions.join(format!("{version}.json"));
            let _ = std::fs::remove_file(&record);
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            } else {
                let _ = std::fs::remove_file(&dir);
            }
            removed += 1;
        }
        // Records whose directory is gone.
        if let Ok(entries) = std::fs::read_dir(&versions) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str() else {
                    continue;
                };
                if let Some(version) = file_name.strip_suffix(".json")
                    && !versions.join(version).is_dir()
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(removed)
    }
}

/// SHA-256 (hex) over the environments in place and their versions: what a server
/// mounting the directory sees. Equal contents give equal digests, any switched,
/// added or purged environment a different one.
pub fn state_digest(versions: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"openvox-code claim state 1\n");
    for (name, version) in versions {
        hasher.update(format!("{name} {version}\n"));
    }
    crate::forge::hex(&hasher.finalize())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PvcError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(".record-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    std::io::Write::write_all(&mut temporary, bytes).map_err(io(path))?;
    temporary.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), PvcError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environments::EnvironmentInputs;
    use crate::limits::Limits;
    use crate::tree::{EnvironmentTree, LocalDir, LocalEntry, LocalKind};
    use std::sync::Arc;

    fn environment(name: &str, commit: char, content: &str) -> Environment {
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("site.pp"), content).unwrap();
        let dir = Arc::new(LocalDir::temporary(source));
        let mut tree = EnvironmentTree::new(Limits::default());
        tree.replace_with_directory("manifests", "manifests")
            .unwrap();
        tree.add_local_tree(
            "manifests",
            &dir,
            &[LocalEntry {
                path: "site.pp".into(),
                kind: LocalKind::File {
                    executable: false,
                    size: content.len() as u64,
                },
            }],
            &[],
        )
        .unwrap();
        let stats = tree.check().unwrap();
        Environment {
            inputs: EnvironmentInputs {
                name: name.into(),
                branch: name.into(),
                follows: None,
                commit: commit.to_string().repeat(40),
                code_config: None,
                modules: vec![],
            },
            tree,
            stats,
        }
    }

    #[test]
    fn environments_are_switched_in_and_reused() {
        let root = tempfile::tempdir().unwrap();
        let out = OutputDir::open(root.path()).unwrap();
        let mut reader = ContentReader::new();
        let v1 = environment("production", 'a', "node default {}");
        let first = out.install(&v1, &mut reader).unwrap();
        assert!(!first.reused);
        assert_eq!(first.written.files, 1);
        let site = root.path().join("production/manifests/site.pp");
        assert_eq!(std::fs::read_to_string(&site).unwrap(), "node default {}");
        assert_eq!(
            out.current_version("production").as_deref(),
            Some(first.version.as_str())
        );
        let link = std::fs::read_link(root.path().join("production")).unwrap();
        assert!(link.is_relative(), "{link:?}");

        let again = out.install(&v1, &mut reader).unwrap();
        assert!(again.reused);
        assert_eq!(again.version, first.version);

        let v2 = environment("production", 'b', "node default { include x }");
        let second = out.install(&v2, &mut reader).unwrap();
        assert_ne!(second.version, first.version);
        assert_eq!(
            std::fs::read_to_string(&site).unwrap(),
            "node default { include x }"
        );
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                root.path()
                    .join(format!(".versions/production/{}.json", second.version)),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            record["revision"],
            format!("production@sha1:{}", "b".repeat(40))
        );
        // Leftovers in the root: only our names.
        let mut names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".openvox-code.lock", ".versions", "production"]);
    }

    #[test]
    fn old_versions_are_cleaned_up_keeping_the_current_one() {
        let root = tempfile::tempdir().unwrap();
        let out = OutputDir::open(root.path()).unwrap();
        let mut reader = ContentReader::new();
        let mut versions = Vec::new();
        for (i, c) in ['a', 'b', 'c', 'd'].into_iter().enumerate() {
            let env = environment("staging", c, &format!("v{i}"));
            versions.push(out.install(&env, &mut reader).unwrap().version);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::create_dir(root.path().join(".versions/staging/.partial-leftover")).unwrap();
        let removed = out.cleanup("staging", 1).unwrap();
        assert_eq!(removed, 2);
        let dir = root.path().join(".versions/staging");
        assert!(dir.join(&versions[3]).is_dir());
        assert!(dir.join(&versions[2]).is_dir());
        assert!(!dir.join(&versions[1]).exists());
        assert!(!dir.join(format!("{}.json", versions[0])).exists());
        assert!(!dir.join(".partial-leftover").exists());
        assert_eq!(
            std::fs::read_to_string(root.path().join("staging/manifests/site.pp")).unwrap(),
            "v3"
        );
    }

    #[test]
    fn vanished_environments_are_purged_but_unmanaged_entries_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let out = OutputDir::open(root.path()).unwrap();
        let mut reader = ContentReader::new();
        for name in ["production", "feature_x", "failed_one"] {
            out.install(&environment(name, 'a', name), &mut reader)
                .unwrap();
        }
        std::fs::create_dir(root.path().join("handmade")).unwrap();
        std::fs::create_dir_all(root.path().join(".versions/orphan/x")).unwrap();
        let keep: BTreeSet<String> = ["production", "failed_one"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let purged = out.purge(&keep).unwrap();
        assert_eq!(purged, ["feature_x", "orphan"]);
        assert!(!root.path().join("feature_x").exists());
        assert!(!root.path().join(".versions/feature_x").exists());
        assert!(root.path().join("handmade").is_dir());
        assert!(root.path().join("failed_one/manifests/site.pp").is_file());
        assert_eq!(
            out.managed_environments().unwrap(),
            ["failed_one", "production"]
        );
    }

    #[test]
    fn unmanaged_directories_are_not_replaced() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("production")).unwrap();
        std::fs::write(root.path().join("production/keep"), "x").unwrap();
        let out = OutputDir::open(root.path()).unwrap();
        let err = out
            .install(
                &environment("production", 'a', "x"),
                &mut ContentReader::new(),
            )
            .unwrap_err();
        assert!(matches!(err, PvcError::Unmanaged { .. }), "{err}");
        assert!(root.path().join("production/keep").is_file());
    }

    #[test]
    fn a_second_writer_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let _first = OutputDir::open(root.path()).unwrap();
        let second = OutputDir::open(root.path());
        assert!(matches!(second, Err(PvcError::Locked(_))));
    }
}
