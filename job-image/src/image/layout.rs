//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`), so a
//! person can build without a registry and look at the result with `skopeo copy
//! oci:<dir> …` or `umoci`.
//!
//! The directory belongs to the build: `index.json` is replaced by the new image
//! (one entry per tag, or one without a name), and the blobs of the image it replaced
//! that the new image does not use are removed. Every file is written under a
//! temporary name and renamed into place, so an interrupted build leaves the previous
//! image readable.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{Descriptor, Manifest};
use super::reuse::{PreviousImage, PreviousImageError};
use super::{annotations, media_types};

/// A layout directory that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("OCI layout {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("OCI layout {dir}: {message}")]
    Invalid { dir: PathBuf, message: String },
    #[error(transparent)]
    Previous(#[from] PreviousImageError),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// An OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> LayoutError + '_ {
    move |e| LayoutError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

impl Layout {
    /// Opens `dir` as a layout, creating it (and `oci-layout`, `blobs/sha256`) if needed.
    /// A directory that exists, is not empty and has no `oci-layout` file is refused:
    /// the build would otherwise remove files from it.
    pub fn open(dir: &Path) -> Result<Self, LayoutError> {
        let marker = dir.join("oci-layout");
        let non_empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if non_empty && !marker.exists() {
            return Err(LayoutError::Invalid {
                dir: dir.to_owned(),
                message: "not empty and not an OCI image layout (no oci-layout file); give a new or empty directory".into(),
            });
        }
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
        if !marker.exists() {
            write_atomically(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(Self {
            root: dir.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of blob `digest`; refuses anything but `sha256:<64 hex>`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, LayoutError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .ok_or_else(|| LayoutError::Invalid {
                dir: self.root.clone(),
                message: format!("{digest:?} is not a sha256 digest"),
            })?;
        Ok(self.root.join("blobs").join("sha256").join(hex))
    }

    /// Whether blob `digest` is there with `size` bytes.
    pub fn has_blob(&self, digest: &str, size: u64) -> bool {
        self.blob_path(digest)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Moves the finished file `file` in as blob `digest`.
    pub fn put_file(&self, file: tempfile::TempPath, digest: &str) -> Result<(), LayoutError> {
        let dest = self.blob_path(digest)?;
        match file.persist(&dest) {
            Ok(()) => Ok(()),
            // Another file system: copy under a temporary name, then rename.
            Err(e) => {
                let source = e.path;
                let temp = temp_beside(&dest)?;
                std::fs::copy(&source, &temp).map_err(io_error(&dest))?;
                temp.persist(&dest).map_err(|e| io_error(&dest)(e.error))?;
                Ok(())
            }
        }
    }

    /// Writes blob `digest` with `bytes`.
    pub fn put_bytes(&self, bytes: &[u8], digest: &str) -> Result<(), LayoutError> {
        write_atomically(&self.blob_path(digest)?, bytes)
    }

    fn read_blob(&self, digest: &str, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest)?;
        let size = std::fs::metadata(&path).map_err(io_error(&path))?.len();
        if size > limit {
            return Err(LayoutError::Invalid {
                dir: self.root.clone(),
                message: format!("blob {digest} is larger than expected"),
            });
        }
        std::fs::read(&path).map_err(io_error(&path))
    }

    fn read_index(&self) -> Result<Option<Index>, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LayoutError::Invalid {
                dir: self.root.clone(),
                message: format!("index.json: {e}"),
            })
    }

    /// The image `index.json` points at, if there is one.
    pub fn previous(&self) -> Result<Option<PreviousImage>, LayoutError> {
        let Some(index) = self.read_index()? else {
            return Ok(None);
        };
        let Some(entry) = index
            .manifests
            .iter()
            .find(|d| d.media_type == media_types::MANIFEST)
        else {
            return Ok(None);
        };
        let manifest = self.read_blob(&entry.digest, 4 * 1024 * 1024)?;
        let parsed = Manifest::parse(&manifest).map_err(|message| LayoutError::Invalid {
            dir: self.root.clone(),
            message,
        })?;
        let config = self.read_blob(&parsed.config.digest, 4 * 1024 * 1024)?;
        let origin = format!("oci:{}", self.root.display());
        Ok(Some(PreviousImage::from_documents(
            &origin, None, &manifest, &config,
        )?))
    }

    /// Points `index.json` at `manifest`: one entry per tag, or one without a name.
    pub fn write_index(&self, manifest: &Descriptor, tags: &[String]) -> Result<(), LayoutError> {
        let entry = |tag: Option<&String>| {
            let mut d = Descriptor::new(&manifest.media_type, &manifest.digest, manifest.size);
            if let Some(tag) = tag {
                d.annotations
                    .insert(annotations::REF_NAME.to_owned(), tag.clone());
            }
            d
        };
        let manifests = if tags.is_empty() {
            vec![entry(None)]
        } else {
            tags.iter().map(Some).map(entry).collect()
        };
        let index = Index {
            schema_version: 2,
            media_type: media_types::INDEX.to_owned(),
            manifests,
        };
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        write_atomically(&self.root.join("index.json"), &bytes)
    }

    /// Removes the blobs of `previous` (its manifest, config and layers) that `keep`
    /// does not list. Returns how many were removed.
    pub fn remove_unused(&self, previous: &[String], keep: &BTreeSet<String>) -> usize {
        let mut removed = 0;
        for digest in previous {
            if keep.contains(digest) {
                continue;
            }
            if let Ok(path) = self.blob_path(digest)
                && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// Digests of every blob the image `index.json` points at uses (manifest, config,
    /// layers); empty when there is none.
    pub fn current_blobs(&self) -> Vec<String> {
        let Ok(Some(index)) = self.read_index() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in index.manifests {
            if let Ok(bytes) = self.read_blob(&entry.digest, 4 * 1024 * 1024)
                && let Ok(manifest) = Manifest::parse(&bytes)
            {
                out.push(manifest.config.digest.clone());
                out.extend(manifest.layers.iter().map(|l| l.digest.clone()));
            }
            out.push(entry.digest);
        }
        out
    }
}

fn temp_beside(dest: &Path) -> Result<tempfile::TempPath, LayoutError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map(tempfile::NamedTempFile::into_temp_path)
        .map_err(io_error(dest))
}

fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_error(dest))?;
    file.write_all(bytes).map_err(io_error(dest))?;
    file.as_file().sync_all().map_err(io_error(dest))?;
    file.persist(dest).map_err(|e| io_error(dest)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::gzip::sha256_digest;

    #[test]
    fn layouts_have_the_standard_files() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let blob = b"hello";
        let digest = sha256_digest(blob);
        layout.put_bytes(blob, &digest).unwrap();
        assert!(layout.has_blob(&digest, 5));
        assert!(!layout.has_blob(&digest, 6));
        let manifest = Descriptor::new(media_types::MANIFEST, &digest, 5);
        layout
            .write_index(&manifest, &["latest".into(), "v1".into()])
            .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(
            index["manifests"][1]["annotations"][annotations::REF_NAME],
            "v1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let names: Vec<String> = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [digest.trim_start_matches("sha256:").to_owned()],
            "no temporary files left"
        );
    }

    #[test]
    fn other_directories_are_not_taken_for_layouts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = Layout::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not an OCI image layout"), "{err}");
        assert!(!dir.path().join("blobs").exists());
        let empty = tempfile::tempdir().unwrap();
        Layout::open(empty.path()).unwrap();
        Layout::open(empty.path()).unwrap();
    }

    #[test]
    fn only_sha256_digests_name_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:00",
            "sha256:ABC",
            "sha256:",
        ] {
            assert!(layout.blob_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_move_in_as_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(&dir.path().join("layout")).unwrap();
        let mut file = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        file.write_all(b"layer").unwrap();
        let digest = sha256_digest(b"layer");
        layout.put_file(file.into_temp_path(), &digest).unwrap();
        assert_eq!(
            std::fs::read(layout.blob_path(&digest).unwrap()).unwrap(),
            b"layer"
        );
        let removed = layout.remove_unused(
            std::slice::from_ref(&digest),
            &BTreeSet::from([digest.clone()]),
        );
        assert_eq!(removed, 0);
        assert_eq!(
            layout.remove_unused(std::slice::from_ref(&digest), &BTreeSet::new()),
            1
        );
        assert!(!layout.has_blob(&digest, 5));
    }
}
