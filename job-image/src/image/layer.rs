//! One image layer per environment: the environment's tree under `<name>/` at the image
//! root, as a deterministic tar ([`super::tar`]) compressed by the pinned gzip
//! ([`super::gzip`]), streamed into a temporary file while both digests are computed.
//!
//! Entries come in the tree's path order, every one with the fixed mtime
//! [`LAYER_MTIME`], owner 0:0, 0755 for directories and executables, 0644 for other
//! files. Nothing but the environment's name and tree goes in, so the same inputs give
//! the same bytes anywhere, and a file that did not change has the same bytes as in the
//! previous layer (whose chunks can then be copied, see [`super::chunks`]).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use super::LAYER_MTIME;
use super::chunks::ChunkIndex;
use super::codec::Codec;
use super::gzip::{Encoded, LayerEncoder};
use super::tar::{TarError, TarWriter};
use crate::tree::{ContentReader, EntryKind, EnvironmentTree, TreeError};

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

/// How a layer is compressed: the codec, and the chunks of the environment's previous
/// layer (written with the same codec) to copy instead of compressing.
#[derive(Debug, Clone, Default)]
pub struct Packing {
    pub codec: Codec,
    pub previous: Option<Arc<ChunkIndex>>,
}

/// A layer written to a temporary file (removed when dropped).
#[derive(Debug)]
pub struct LayerFile {
    pub path: tempfile::TempPath,
    pub encoded: Encoded,
}

/// Writes the layer of environment `name` with `tree` into `out`, compressed as
/// `packing` says, and returns it with the digests.
pub fn write_layer<W: Write>(
    name: &str,
    tree: &EnvironmentTree,
    reader: &mut ContentReader,
    packing: Packing,
    out: W,
) -> Result<(W, Encoded), LayerError> {
    let tar_error = |source| LayerError::Tar {
        environment: name.to_owned(),
        source,
    };
    let mtime = LAYER_MTIME;
    // No buffer in between: the encoder's pending chunk is the buffer, and it must see
    // where each entry ends.
    let encoder = LayerEncoder::new(out)
        .with_codec(packing.codec)
        .reusing(packing.previous);
    let mut tar = TarWriter::new(encoder);
    let entry_end = |tar: &mut TarWriter<LayerEncoder<W>>, path: &str| {
        tar.get_mut()
            .entry_end(path)
            .map_err(|e| tar_error(TarError::Io(e)))
    };
    tar.directory(name, 0o755, mtime).map_err(tar_error)?;
    entry_end(&mut tar, name)?;
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
        entry_end(&mut tar, &full)?;
    }
    let encoder = tar.finish().map_err(tar_error)?;
    encoder.finish().map_err(|e| tar_error(TarError::Io(e)))
}

/// Writes the layer of environment `name` into a new temporary file in `dir`.
pub fn write_layer_file(
    name: &str,
    tree: &EnvironmentTree,
    reader: &mut ContentReader,
    packing: Packing,
    dir: &Path,
) -> Result<LayerFile, LayerError> {
    let file_error = |e: std::io::Error| LayerError::File {
        environment: name.to_owned(),
        dir: dir.display().to_string(),
        message: e.to_string(),
    };
    let file = tempfile::Builder::new()
        .prefix(&format!("layer-{name}-"))
        .suffix(packing.codec.file_suffix())
        .tempfile_in(dir)
        .map_err(file_error)?;
    let (file, path) = file.into_parts();
    let (out, encoded) = write_layer(
        name,
        tree,
        reader,
        packing,
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
            &mut ContentReader::new(),
            Packing::default(),
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
        assert!(entries.iter().all(|e| e.2 == LAYER_MTIME as u64));
        assert_eq!(entries[3].4, "node default {}\n");
        assert_eq!(entries[8].3.as_deref(), Some("files"));
    }

    fn layer_of(name: &str, tree: &EnvironmentTree) -> (Vec<u8>, Encoded) {
        write_layer(
            name,
            tree,
            &mut ContentReader::new(),
            Packing::default(),
            Vec::new(),
        )
        .unwrap()
    }

    #[test]
    fn the_same_tree_gives_the_same_layer_and_an_edit_or_a_name_changes_it() {
        let a = layer_of("production", &sample());
        assert_eq!(a, layer_of("production", &sample()));
        let edited = local_tree(&[
            ("manifests", None),
            ("manifests/site.pp", Some("node default { }\n")),
        ]);
        assert_ne!(a.1.diff_id, layer_of("production", &edited).1.diff_id);
        assert_ne!(a.1.digest, layer_of("staging", &sample()).1.digest);
    }

    /// `count` files of ~2 KiB of Puppet-like text (several chunks), with `edited`
    /// changed when given.
    fn big_tree(count: usize, edited: Option<usize>) -> EnvironmentTree {
        let bodies: Vec<(String, String)> = (0..count)
            .map(|i| {
                let mut body = String::new();
                for line in 0..40 {
                    body.push_str(&format!(
                        "  file {{ '/etc/app{i}/{line}.conf': ensure => file, content => '{}' }}\n",
                        (i * 7919 + line * 104_729) % 1_000_003
                    ));
                }
                if edited == Some(i) {
                    body.push_str("# edited\n");
                }
                (format!("data/node{i:05}.pp"), body)
            })
            .collect();
        let mut files: Vec<(&str, Option<&str>)> = vec![("data", None)];
        files.extend(bodies.iter().map(|(p, b)| (p.as_str(), Some(b.as_str()))));
        local_tree(&files)
    }

    #[test]
    fn a_layer_reusing_the_previous_chunks_is_the_layer_written_cold() {
        let dir = tempfile::tempdir().unwrap();
        let before = write_layer_file(
            "production",
            &big_tree(1600, None),
            &mut ContentReader::new(),
            Packing::default(),
            dir.path(),
        )
        .unwrap();
        let chunks = before.encoded.chunks.0.len();
        assert!(chunks >= 4, "several chunks: {:?}", before.encoded.chunks);
        let table = before.encoded.chunks.clone();
        let blob = Arc::new(crate::module_reuse::BlobFile::InPlace(
            before.path.to_path_buf(),
        ));
        let file = std::fs::File::open(blob.path()).unwrap();
        let index = Arc::new(
            super::super::chunks::ChunkedLayer::new(file, &table, Codec::Gzip)
                .unwrap()
                .into_index(blob)
                .unwrap(),
        );
        assert_eq!(index.len(), chunks);

        // One file in the middle changed: the rest of the layer comes from `before`.
        let after_tree = big_tree(1600, Some(800));
        let (reused_bytes, reused) = write_layer(
            "production",
            &after_tree,
            &mut ContentReader::new(),
            Packing {
                codec: Codec::Gzip,
                previous: Some(index.clone()),
            },
            Vec::new(),
        )
        .unwrap();
        let cold = layer_of("production", &after_tree);
        assert_eq!(reused_bytes, cold.0, "byte for byte the cold layer");
        assert_eq!(reused, cold.1);
        let (hits, _) = index.reused();
        assert!(
            hits as usize >= chunks - 2 && (hits as usize) < chunks,
            "{hits} of {chunks} chunks copied"
        );
    }

    #[test]
    fn a_chunk_table_that_does_not_fit_the_layer_is_refused() {
        use super::super::chunks::{ChunkSize, ChunkTable, ChunkedLayer};
        let (bytes, encoded) = layer_of("production", &big_tree(600, None));
        let table = encoded.chunks.0.clone();
        assert!(table.len() >= 2, "{table:?}");
        let read = |table: Vec<ChunkSize>| -> std::io::Result<u64> {
            let mut layer = ChunkedLayer::new(&bytes[..], &ChunkTable(table), Codec::Gzip)?;
            std::io::copy(&mut layer, &mut std::io::sink())
        };
        assert_eq!(read(table.clone()).unwrap(), encoded.uncompressed_size);
        // A boundary moved by one byte, a chunk left out, a raw size off by one.
        let mut moved = table.clone();
        moved[0].compressed += 1;
        moved[1].compressed -= 1;
        assert!(read(moved).is_err());
        assert!(read(table[..table.len() - 1].to_vec()).is_err());
        let mut raw = table.clone();
        raw[0].raw -= 1;
        assert!(read(raw).is_err());
        // zstd frames are not what a gzip layer holds.
        assert!(
            ChunkedLayer::new(&bytes[..], &encoded.chunks, Codec::Zstd)
                .and_then(|mut l| std::io::copy(&mut l, &mut std::io::sink()))
                .is_err()
        );
    }

    #[test]
    fn whiteout_names_are_refused() {
        let tree = local_tree(&[("files", None), ("files/.wh.secret", Some("x"))]);
        let err = write_layer(
            "production",
            &tree,
            &mut ContentReader::new(),
            Packing::default(),
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
            &mut ContentReader::new(),
            Packing::default(),
            dir.path(),
        )
        .unwrap();
        let (bytes, encoded) = write_layer(
            "production",
            &sample(),
            &mut ContentReader::new(),
            Packing::default(),
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
