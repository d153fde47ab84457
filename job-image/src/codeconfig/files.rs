//! The CodeConfig's directory (a ConfigMap mounted in the pod, or any directory by
//! hand) as the [`ConfigFiles`] the loader reads the main file and its includes from.
//!
//! A mounted ConfigMap keeps its real files in a hidden `..<timestamp>` directory and
//! links each key to it through `..data`; names starting with `..` are skipped when
//! listing, so every key is seen once, under its own name.

use std::io::Read;
use std::path::{Path, PathBuf};

use openvox_codeconfig::{ConfigFiles, MAX_FILE_BYTES};

/// Most entries looked at when listing the directory for include globs: a ConfigMap
/// holds a handful, so this only stops a wrong directory (`/`) from being walked.
const MAX_LISTED: usize = 10_000;

/// A directory of configuration files; paths are `/`-separated and relative to it.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    root: PathBuf,
}

impl ConfigDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
}

impl ConfigFiles for ConfigDir {
    type Error = String;

    fn read(&self, path: &str) -> Result<Option<String>, String> {
        let full = self.root.join(path);
        let file = match std::fs::File::open(&full) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", full.display())),
        };
        let metadata = file
            .metadata()
            .map_err(|e| format!("{}: {e}", full.display()))?;
        if !metadata.is_file() {
            return Err(format!("{}: not a regular file", full.display()));
        }
        // One byte more than accepted, so the parser still reports the size clearly.
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", full.display()))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("{}: not UTF-8 text", full.display()))
    }

    fn list(&self) -> Result<Vec<String>, String> {
        let mut found = Vec::new();
        let mut pending = vec![(self.root.clone(), String::new())];
        let mut seen = 0usize;
        while let Some((dir, prefix)) = pending.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
                seen += 1;
                if seen > MAX_LISTED {
                    return Err(format!(
                        "{}: more than {MAX_LISTED} entries; is this the configuration's directory?",
                        self.root.display()
                    ));
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if name.starts_with("..") {
                    continue;
                }
                let path = format!("{prefix}{name}");
                // Symlinked files count (ConfigMap keys are links); symlinked
                // directories are not entered, so a link loop cannot trap the walk.
                let own = entry
                    .file_type()
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
                if own.is_dir() {
                    pending.push((entry.path(), format!("{path}/")));
                } else if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                    found.push(path);
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_mounted_configmap_lists_each_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The layout the kubelet writes for a ConfigMap volume.
        let data = root.join("..2024_01_01_00_00_00.000000001");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("openvox-code.yaml"), "sources: []\n").unwrap();
        std::fs::write(data.join("modulesets.yaml"), "modulesets: {}\n").unwrap();
        symlink(data.file_name().unwrap(), root.join("..data")).unwrap();
        for key in ["openvox-code.yaml", "modulesets.yaml"] {
            symlink(format!("..data/{key}"), root.join(key)).unwrap();
        }
        std::fs::create_dir(root.join("team")).unwrap();
        std::fs::write(root.join("team/extra.yaml"), "").unwrap();
        symlink(".", root.join("team/loop")).unwrap();

        let files = ConfigDir::new(root);
        assert_eq!(
            files.list().unwrap(),
            ["modulesets.yaml", "openvox-code.yaml", "team/extra.yaml"]
        );
        assert_eq!(
            files.read("openvox-code.yaml").unwrap().as_deref(),
            Some("sources: []\n")
        );
        assert_eq!(files.read("missing.yaml").unwrap(), None);
        assert!(
            files
                .read("team")
                .unwrap_err()
                .contains("not a regular file")
        );
        std::fs::write(root.join("binary.yaml"), [0xff, 0xfe]).unwrap();
        assert!(files.read("binary.yaml").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_huge_file_is_read_only_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let big = "#".repeat(MAX_FILE_BYTES * 2);
        std::fs::write(dir.path().join("big.yaml"), &big).unwrap();
        let text = ConfigDir::new(dir.path())
            .read("big.yaml")
            .unwrap()
            .unwrap();
        assert_eq!(text.len(), MAX_FILE_BYTES + 1);
    }
}
