//! One image layer per environment: the environment's tree under `<name>/` at the image
//! root, as a deterministic tar ([`super::tar`]) compressed by the pinned gzip
//! ([`super::gzip`]), streamed into a temporary file while both digests are computed.
//!
//! Entries come in the tree's path order, every one with the commit time as mtime,
//! owner 0:0, 0755 for directories and executables, 0644 for other files. Nothing but
//! the tree and the time goes in, so the same inputs give the same bytes anywhere.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::gzip::{Encoded, LayerEncoder};
use super::tar::{TarError, TarWriter};
use crate::tree::{ContentReader, EntryKind, EnvironmentTree, TreeError};

/// Buffer between the tar writer and the compressor, so headers are compressed in
/// batches rather than 512 bytes at a time.
const TAR_BUFFER: usize = 128 * 1024;
/// Buffer in front of the layer file.
const FILE_BUFFER: usize = 256 * 1024;

/// Why a layer could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("environment {environment}: {source}")]
    Tar {
        environment: String,
        #[source]
        source: TarError,
    },
    #[error("environment {environment}: {source}")]
    Content {
        environment: String,
        #[source]
        source: TreeError,
    },
    #[error(
        "environment {environment}: {path:?} is named like an OCI whiteout ('.wh.' prefix); a container runtime would delete it instead of creating it"
    )]
    Whiteout { environment: String, path: String },
    #[error("environment {environment}: layer file in {dir}: {message}")]
    File {
        environment: String,
        dir: String,
        message: String,
    },
}

/// A layer written to a temporary file (removed when dropped).
#[derive(Debug)]
pub struct LayerFile {
    pub path: tempfile::TempPath,
    pub encoded: Encoded,
}

/// Writes the layer of environment `name` with `tree` into `out` and returns it with
/// the digests. Every entry gets `mtime` (seconds since the epoch: the commit time).
pub fn write_layer<W: Write>(
    name: &str,
    tree: &EnvironmentTree,
    mtime: i64,
    reader: &mut ContentReader,
    out: W,
) -> Result<(W, Encoded), LayerError> {
    let tar_error = |source| LayerError::Tar {
        environment: name.to_owned(),
        source,
    };
    let encoder = LayerEncoder::new(out);
    let mut tar = TarWriter::new(BufWriter::with_capacity(TAR_BUFFER, encoder));
    tar.directory(name, 0o755, mtime).map_err(tar_error)?;
    for (path, kind) in tree.entries() {
        if path.split('/').any(|part| part.starts_with(".wh.")) {
            return Err(LayerError::Whiteout {
                environment: name.to_owned(),
                path: path.to_owned(),
            });
        }
        let full = format!("{name}/{path}");
        match kind {
            EntryKind::Directory => tar
                .directory(&full, kind.permissions(), mtime)
                .map_err(tar_error)?,
            EntryKind::Symlink { target } => {
                tar.symlink(&full, target, mtime).map_err(tar_error)?
            }
            EntryKind::File { size, content, .. } => {
                let mut entry = tar
                    .file(&full, kind.permissions(), *size, mtime)
                    .map_err(tar_error)?;
                reader
                    .copy_to(content, &mut entry, path)
                    .map_err(|source| LayerError::Content {
                        environment: name.to_owned(),
                        source,
                    })?;
                entry.finish().map_err(tar_error)?;
            }
        }
    }
    let buffered = tar.finish().map_err(tar_error)?;
    let encoder = buffered
        .into_inner()
        .map_err(|e| tar_error(TarError::Io(e.into_error())))?;
    encoder.finish().map_err(|e| tar_error(TarError::Io(e)))
}

/// Writes the layer of environment `name` into a new temporary file in `dir`.
pub fn write_layer_file(
    name: &str,
    tree: &EnvironmentTree,
    mtime: i64,
    reader: &mut ContentReader,
    dir: &Path,
) -> Result<LayerFile, LayerError> {
    let file_error = |e: std::io::Error| LayerError::File {
        environment: name.to_owned(),
        dir: dir.display().to_string(),
        message: e.to_string(),
    };
    let file = tempfile::Builder::new()
        .prefix(&format!("layer-{name}-"))
        .suffix(".tar.gz")
        .tempfile_in(dir)
        .map_err(file_error)?;
    let (file, path) = file.into_parts();
    let (out, encoded) = write_layer(
        name,
        tree,
        mtime,
        reader,
        BufWriter::with_capacity(FILE_BUFFER, file),
    )?;
    let file = out.into_inner().map_err(|e| file_error(e.into_error()))?;
    file.sync_all().map_err(file_error)?;
    Ok(LayerFile { path, encoded })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use super::*;
    use crate::limits::Limits;
    use crate::tree::{LocalDir, LocalEntry, LocalKind};

    /// A tree made of real files in a temporary directory: `(path, content)` where a
    /// content of `None` is a directory, `Some("->x")` a symlink to `x`, and a leading
    /// `!` an executable file.
    pub(crate) fn local_tree(files: &[(&str, Option<&str>)]) -> EnvironmentTree {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for (path, content) in files {
            let full = dir.path().join(path);
            let kind = match content {
                None => {
                    std::fs::create_dir_all(&full).unwrap();
                    LocalKind::Directory
                }
                Some(text) if text.starts_with("->") => LocalKind::Symlink {
                    target: text[2..].to_owned(),
                },
                Some(text) => {
                    let (executable, body) = match text.strip_prefix('!') {
                        Some(body) => (true, body),
                        None => (false, *text),
                    };
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(&full, body).unwrap();
                    LocalKind::File {
                        executable,
                        size: body.len() as u64,
                    }
                }
            };
            entries.push(LocalEntry {
                path: path.to_string(),
                kind,
            });
        }
        let local = Arc::new(LocalDir::temporary(dir));
        let mut tree = EnvironmentTree::new(Limits::default());
        tree.add_local_tree("", &local, &entries, &[]).unwrap();
        tree.check().unwrap();
        tree
    }

    fn sample() -> EnvironmentTree {
        local_tree(&[
            ("manifests", None),
            ("manifests/site.pp", Some("node default {}\n")),
            ("modules", None),
            ("modules/app", None),
            ("modules/app/files", None),
            ("modules/app/files/run.sh", Some("!#!/bin/sh\n")),
            ("modules/app/link", Some("->files")),
            ("environment.conf", Some("modulepath = modules\n")),
        ])
    }

    fn entries_of(layer: &[u8]) -> Vec<(String, u32, u64, Option<String>, String)> {
        let mut archive = ::tar::Archive::new(flate2::read::GzDecoder::new(layer));
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().unwrap();
            let mtime = entry.header().mtime().unwrap();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            out.push((path, mode, mtime, link, body));
        }
        out
    }

    #[test]
    fn layers_put_the_environment_at_the_image_root_in_path_order() {
        let (bytes, encoded) = write_layer(
            "production",
            &sample(),
            1_700_000_000,
            &mut ContentReader::new(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(encoded.size, bytes.len() as u64);
        let entries = entries_of(&bytes);
        let summary: Vec<(&str, u32)> = entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            summary,
            [
                ("production/", 0o755),
                ("production/environment.conf", 0o644),
                ("production/manifests/", 0o755),
                ("production/manifests/site.pp", 0o644),
                ("production/modules/", 0o755),
                ("production/modules/app/", 0o755),
                ("production/modules/app/files/", 0o755),
                ("production/modules/app/files/run.sh", 0o755),
                ("production/modules/app/link", 0o777),
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 1_700_000_000));
        assert_eq!(entries[3].4, "node default {}\n");
        assert_eq!(entries[8].3.as_deref(), Some("files"));
    }

    #[test]
    fn the_same_tree_gives_the_same_layer_and_time_changes_it() {
        let a = write_layer(
            "production",
            &sample(),
            1_700_000_000,
            &mut ContentReader::new(),
            Vec::new(),
        )
        .unwrap();
        let b = write_layer(
            "production",
            &sample(),
            1_700_000_000,
            &mut ContentReader::new(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(a, b);
        let later = write_layer(
            "production",
            &sample(),
            1_700_000_001,
            &mut ContentReader::new(),
            Vec::new(),
        )
        .unwrap();
        assert_ne!(a.1.diff_id, later.1.diff_id);
        let renamed = write_layer(
            "staging",
            &sample(),
            1_700_000_000,
            &mut ContentReader::new(),
            Vec::new(),
        )
        .unwrap();
        assert_ne!(a.1.digest, renamed.1.digest);
    }

    #[test]
    fn whiteout_names_are_refused() {
        let tree = local_tree(&[("files", None), ("files/.wh.secret", Some("x"))]);
        let err = write_layer(
            "production",
            &tree,
            0,
            &mut ContentReader::new(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, LayerError::Whiteout { .. }), "{err}");
    }

    #[test]
    fn layer_files_match_the_in_memory_layer() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_layer_file(
            "production",
            &sample(),
            7,
            &mut ContentReader::new(),
            dir.path(),
        )
        .unwrap();
        let (bytes, encoded) = write_layer(
            "production",
            &sample(),
            7,
            &mut ContentReader::new(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&file.path).unwrap(), bytes);
        assert_eq!(file.encoded, encoded);
        let path = file.path.to_path_buf();
        drop(file);
        assert!(
            !path.exists(),
            "temporary layer files are removed when dropped"
        );
    }
}
