//! What the previous image's layers give a build: the files of git modules that did not
//! change (instead of fetching them again) and the index of each layer's chunks (so
//! the environment's new layer copies the chunks that did not change, see
//! [`crate::image::chunks`]). Both come from one pass over the layer.
//!
//! A layer holds each git module of its environment at `<environment>/<path>/`, and its
//! pins record the module's URL, resolved commit, path and whether `spec/` was left out
//! ([`crate::pins::Pin`]). A module of this build with the same URL, commit and
//! `exclude_spec` has exactly those files: a commit fixes a tree, and the layer was
//! written from that tree by the same assembly (the layer's reuse key, which
//! [`RecordedEnvironment::from_layer`] checked, includes the assembly's format
//! version). So the environment assembled from them is byte-identical to one assembled
//! from a fresh fetch, and its layer has the same digest.
//!
//! The resolver still lists the module's repository to learn the commit (cheap, and
//! shared); only the fetch is saved. A layer is downloaded (or, in an OCI layout, read
//! in place) and unpacked once per build, for every module it can give, on the first
//! module or layer writer that asks. Whatever goes wrong with it (gone from the
//! registry, bytes that do not match its digest or its chunk table, an entry that
//! cannot be unpacked) is logged once, its modules are fetched and its environment's
//! layer is compressed whole, as if there were no previous layer.
//!
//! [`RecordedEnvironment::from_layer`]: crate::unchanged::RecordedEnvironment::from_layer

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sha2::{Digest as _, Sha256};

use crate::flights::Flights;
use crate::forge::hex;
use crate::image::chunks::{ChunkIndex, ChunkTable, ChunkedLayer};
use crate::image::codec::Codec;
use crate::limits::{Bytes, Limits};
use crate::pins::{Declared, Pins};
use crate::progress::{Step, count};
use crate::tree::{LocalDir, LocalEntry, LocalKind};
use crate::validate::builtin::PublishedFiles;

/// A layer blob as a local file: the output's own file, or a download that is removed
/// when dropped.
#[derive(Debug)]
pub enum BlobFile {
    InPlace(PathBuf),
    Downloaded(tempfile::TempPath),
}

impl BlobFile {
    pub fn path(&self) -> &Path {
        match self {
            BlobFile::InPlace(path) => path,
            BlobFile::Downloaded(path) => path,
        }
    }
}

/// Where the previous image's layer blobs are read from (the build's output).
pub trait LayerBlobs: Send + Sync {
    /// The blob `digest` of `size` bytes as a local file, downloaded into `dir` if it
    /// has to be. The caller checks the bytes against the digest.
    fn open<'a>(
        &'a self,
        digest: &'a str,
        size: u64,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<BlobFile, String>>;
}

/// A previous layer: the git modules its pins say it holds, and its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReusableLayer {
    pub environment: String,
    /// `sha256:<hex>` of the compressed layer.
    pub digest: String,
    pub size: u64,
    /// How it is compressed (its media type).
    pub codec: Codec,
    pub pins: Pins,
    /// Its chunk table, when its annotations record one.
    pub chunks: Option<ChunkTable>,
}

/// What a module's files depend on: the declared URL, the commit and `exclude_spec`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleKey {
    pub url: String,
    pub commit: String,
    pub exclude_spec: bool,
}

/// A module's files unpacked from a previous layer.
#[derive(Debug)]
pub struct ReusedModule {
    pub dir: Arc<LocalDir>,
    pub entries: Arc<Vec<LocalEntry>>,
    /// The environment whose layer it came from, for the log.
    pub environment: String,
}

/// What one unpacked layer gives: its modules, by path in its environment, the index
/// of its chunks when it has a chunk table, and the files the built-in checks passed.
#[derive(Debug)]
struct Unpacked {
    modules: BTreeMap<String, Arc<ReusedModule>>,
    chunks: Option<Arc<ChunkIndex>>,
    published: Arc<PublishedFiles>,
}

/// The layers of the previous image: git modules found by [`ModuleKey`], chunks by
/// environment.
pub struct PreviousLayers {
    /// Every module the layers hold: the layers (indexes into `layers`) and its path in
    /// each.
    holders: BTreeMap<ModuleKey, Vec<(usize, String)>>,
    layers: Vec<ReusableLayer>,
    blobs: Arc<dyn LayerBlobs>,
    limits: Limits,
    /// Where layers are downloaded and unpacked. Each unpacked layer is a temporary
    /// directory of its own, which lives as long as a tree uses its files (trees
    /// outlive this value: layers are written after the resolver is gone).
    work_dir: PathBuf,
    unpacked: Flights<usize, Unpacked>,
}

impl std::fmt::Debug for PreviousLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousLayers")
            .field("modules", &self.holders.len())
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl PreviousLayers {
    /// `layers`, read through `blobs`, unpacked below `work_dir`. `None` when no layer
    /// records a git module with its path or a chunk table.
    pub fn new(
        layers: Vec<ReusableLayer>,
        blobs: Arc<dyn LayerBlobs>,
        work_dir: &Path,
        limits: Limits,
    ) -> Option<Self> {
        let holders = index(&layers);
        if holders.is_empty() && layers.iter().all(|l| l.chunks.is_none()) {
            return None;
        }
        Some(Self {
            holders,
            layers,
            blobs,
            limits,
            work_dir: work_dir.to_owned(),
            unpacked: Flights::new(),
        })
    }

    /// The files of the module `key`, when a previous layer holds it and can be read.
    /// The previous layer of `environment` (the one asking) is preferred when it holds
    /// the module: then one download serves all of that environment's modules.
    pub async fn module(&self, key: &ModuleKey, environment: &str) -> Option<Arc<ReusedModule>> {
        let holders = self.holders.get(key)?;
        let (layer, path) = holders
            .iter()
            .find(|(i, _)| self.layers[*i].environment == environment)
            .or_else(|| holders.first())?;
        let unpacked = self.unpacked.get(layer, self.unpack(*layer)).await.ok()?;
        unpacked.modules.get(path).cloned()
    }

    /// The chunks of the previous layer of `environment`, when it was compressed with
    /// `codec`, has a chunk table and can be read.
    pub async fn chunks(&self, environment: &str, codec: Codec) -> Option<Arc<ChunkIndex>> {
        let layer = self
            .layers
            .iter()
            .position(|l| l.environment == environment && l.codec == codec && l.chunks.is_some())?;
        let unpacked = self.unpacked.get(&layer, self.unpack(layer)).await.ok()?;
        unpacked.chunks.clone()
    }

    /// The files of the previous layer of `environment` that the built-in checks
    /// passed, when it can be read.
    pub async fn published_files(&self, environment: &str) -> Option<Arc<PublishedFiles>> {
        let layer = self
            .layers
            .iter()
            .position(|l| l.environment == environment)?;
        let unpacked = self.unpacked.get(&layer, self.unpack(layer)).await.ok()?;
        Some(unpacked.published.clone())
    }

    /// Downloads (if need be) and unpacks every module of layer `index`, with one log
    /// line saying what was read or why it cannot be used.
    async fn unpack(&self, index: usize) -> Result<Unpacked, String> {
        let layer = &self.layers[index];
        let step = Step::start("reuse", format!("layer of {}", layer.environment));
        let result = self.read_layer(layer).await;
        match &result {
            Ok((unpacked, files, bytes)) => step.done(format!(
                "{} modules, {} files, {} unpacked from {} ({}){}",
                unpacked.modules.len(),
                count(*files),
                Bytes(*bytes),
                short(&layer.digest),
                Bytes(layer.size),
                unpacked
                    .chunks
                    .as_ref()
                    .map_or(String::new(), |c| format!(", {} chunks indexed", c.len()))
            )),
            Err(reason) => step.failed(format!(
                "{} unusable: {reason}; fetching its modules and compressing its environment whole instead",
                short(&layer.digest)
            )),
        }
        result.map(|(unpacked, _, _)| unpacked)
    }

    async fn read_layer(&self, layer: &ReusableLayer) -> Result<(Unpacked, u64, u64), String> {
        let blob = Arc::new(
            self.blobs
                .open(&layer.digest, layer.size, &self.work_dir)
                .await?,
        );
        let mut paths: Vec<String> = self
            .holders
            .values()
            .flatten()
            .filter(|(i, _)| self.layers[*i].digest == layer.digest)
            .map(|(_, path)| path.clone())
            .collect();
        paths.sort();
        paths.dedup();
        let dest = tempfile::Builder::new()
            .prefix("openvox-code-reused-")
            .tempdir_in(&self.work_dir)
            .map_err(|e| e.to_string())?;
        let (environment, digest, limits, table, codec) = (
            layer.environment.clone(),
            layer.digest.clone(),
            self.limits,
            layer.chunks.clone(),
            layer.codec,
        );
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(blob.path()).map_err(|e| e.to_string())?;
            let file = std::io::BufReader::with_capacity(256 * 1024, file);
            let wanted = Wanted {
                environment: &environment,
                paths: &paths,
                limits,
            };
            unpack_layer(file, &digest, (codec, table.as_ref()), &wanted, dest, blob)
        })
        .await
        .map_err(|e| format!("unpacking stopped: {e}"))?
    }
}

/// `sha256:0123456789ab` (the first 12 hex digits), for logs.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// Every git module the layers record, by key: each layer holding it, with the path.
fn index(layers: &[ReusableLayer]) -> BTreeMap<ModuleKey, Vec<(usize, String)>> {
    let mut holders: BTreeMap<ModuleKey, Vec<(usize, String)>> = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate() {
        for pin in &layer.pins.modules {
            let (Declared::Git { url, .. }, Some(path), Some(exclude_spec)) =
                (&pin.declared, &pin.path, pin.exclude_spec)
            else {
                continue;
            };
            let key = ModuleKey {
                url: url.clone(),
                commit: pin.resolved.version.to_ascii_lowercase(),
                exclude_spec,
            };
            holders.entry(key).or_default().push((i, path.clone()));
        }
    }
    holders
}

/// Counts and hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The modules to unpack from a layer: at `paths` in `environment`.
struct Wanted<'a> {
    environment: &'a str,
    paths: &'a [String],
    limits: Limits,
}

/// Reads the compressed tar `layer` once: unpacks the `wanted` modules, each into its
/// own directory below `dest`, indexes its chunks when it has a chunk table (their
/// bytes are then read from `blob`), and checks that the whole blob has `digest`.
/// Returns what it gives with the files and bytes unpacked.
fn unpack_layer(
    layer: impl Read,
    digest: &str,
    (codec, table): (Codec, Option<&ChunkTable>),
    wanted: &Wanted<'_>,
    dest: tempfile::TempDir,
    blob: Arc<BlobFile>,
) -> Result<(Unpacked, u64, u64), String> {
    let mut hashing = Hashing {
        inner: layer,
        hasher: Sha256::new(),
        count: 0,
    };
    let dest_path = dest.path().to_owned();
    let (unpacked, chunks) = match table {
        Some(table) => {
            let mut raw = ChunkedLayer::new(&mut hashing, table, codec)
                .map_err(|e| format!("its chunk table: {e}"))?;
            let unpacked = unpack_modules(&mut raw, wanted, &dest_path)?;
            let index = raw
                .into_index(blob)
                .map_err(|e| format!("its chunk table: {e}"))?;
            (unpacked, Some(Arc::new(index)))
        }
        // No chunk table (a layer of an older worker): the modules only.
        None => {
            let mut raw: Box<dyn Read> = match codec {
                Codec::Gzip => Box::new(flate2::read::GzDecoder::new(&mut hashing)),
                Codec::Zstd => Box::new(
                    zstd::stream::read::Decoder::new(&mut hashing).map_err(|e| e.to_string())?,
                ),
            };
            let unpacked = unpack_modules(&mut raw, wanted, &dest_path)?;
            std::io::copy(&mut raw, &mut std::io::sink()).map_err(|e| e.to_string())?;
            (unpacked, None)
        }
    };
    let Extracted {
        found,
        published,
        files,
        bytes,
    } = unpacked;
    // The rest of the blob (anything after the gzip trailer) counts too.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| e.to_string())?;
    let got = format!("sha256:{}", hex(&hashing.hasher.finalize()));
    if got != digest {
        return Err(format!("its bytes have digest {got}"));
    }
    let dest = Arc::new(dest);
    let modules = found
        .into_iter()
        .map(|(path, entries)| {
            let dir = Arc::new(LocalDir::inside(
                dest.clone(),
                module_dir(&dest_path, wanted.paths, &path),
            ));
            let module = ReusedModule {
                dir,
                entries: Arc::new(entries),
                environment: wanted.environment.to_owned(),
            };
            (path, Arc::new(module))
        })
        .collect();
    let unpacked = Unpacked {
        modules,
        chunks,
        published: Arc::new(published),
    };
    Ok((unpacked, files, bytes))
}

/// Where the module at `path` (one of `paths`) is unpacked below `dest`.
fn module_dir(dest: &Path, paths: &[String], path: &str) -> PathBuf {
    let index = paths.iter().position(|p| p == path).unwrap_or_default();
    dest.join(index.to_string())
}

/// What one pass over a layer's tar found.
struct Extracted {
    /// The `wanted` modules' entries, by module path.
    found: BTreeMap<String, Vec<LocalEntry>>,
    /// The files checks may read, with their blob ids.
    published: PublishedFiles,
    /// Files and bytes unpacked.
    files: u64,
    bytes: u64,
}

/// Unpacks the `wanted` modules of the raw tar `raw` below `dest`, and records the
/// blob id of every file of the environment a built-in check may read.
fn unpack_modules(
    raw: &mut impl Read,
    wanted: &Wanted<'_>,
    dest: &Path,
) -> Result<Extracted, String> {
    let (environment, paths, limits) = (wanted.environment, wanted.paths, wanted.limits);
    let mut out = Extracted {
        found: BTreeMap::new(),
        published: PublishedFiles::default(),
        files: 0,
        bytes: 0,
    };
    let mut archive = tar::Archive::new(raw);
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| "an entry path is not UTF-8".to_owned())?;
        let checkable = entry.header().entry_type() == tar::EntryType::Regular
            && entry
                .header()
                .size()
                .is_ok_and(|s| s <= limits.max_file_bytes)
            && in_environment(&raw, environment).is_some_and(PublishedFiles::may_check);
        let module = locate(&raw, environment, paths);
        if module.is_none() && !checkable {
            continue;
        }
        let content = if checkable {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{raw}: {e}"))?;
            record_published(&mut out.published, &raw, environment, &bytes)?;
            Some(bytes)
        } else {
            None
        };
        let Some((module, inside)) = module else {
            continue;
        };
        check_inside(&raw, inside)?;
        let dir = module_dir(dest, paths, module);
        let entries = out.found.entry(module.to_owned()).or_insert_with(|| {
            let _ = std::fs::create_dir(&dir);
            Vec::new()
        });
        let target = dir.join(inside);
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| format!("{raw}: {e}"))?;
                LocalKind::Directory
            }
            tar::EntryType::Regular => {
                let size = header.size().map_err(|e| e.to_string())?;
                if size > limits.max_file_bytes {
                    return Err(format!(
                        "{raw}: {} is over the file size limit",
                        Bytes(size)
                    ));
                }
                let executable = header.mode().map_err(|e| e.to_string())? & 0o111 != 0;
                let mut file = std::fs::File::create(&target).map_err(|e| format!("{raw}: {e}"))?;
                let copied = match &content {
                    Some(bytes) => {
                        std::io::Write::write_all(&mut file, bytes).map(|()| bytes.len() as u64)
                    }
                    None => std::io::copy(&mut entry, &mut file),
                }
                .map_err(|e| format!("{raw}: {e}"))?;
                out.files += 1;
                out.bytes += copied;
                if out.bytes > limits.max_environment_bytes {
                    return Err(format!("more than {} to unpack", Bytes(out.bytes)));
                }
                LocalKind::File {
                    executable,
                    size: copied,
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .ok_or_else(|| format!("{raw}: symlink without a target"))?;
                LocalKind::Symlink { target }
            }
            other => return Err(format!("{raw}: unexpected entry type {other:?}")),
        };
        entries.push(LocalEntry {
            path: inside.to_owned(),
            kind,
        });
    }
    Ok(out)
}

/// The path of the layer entry `raw` inside `environment`, if it is inside.
fn in_environment<'r>(raw: &'r str, environment: &str) -> Option<&'r str> {
    raw.strip_prefix(environment)?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty())
}

/// Records the file `raw` with `bytes` in `published`: its blob id, and its text when
/// it is a `hiera.yaml` that decides what is checked.
fn record_published(
    published: &mut PublishedFiles,
    raw: &str,
    environment: &str,
    bytes: &[u8],
) -> Result<(), String> {
    let Some(path) = in_environment(raw, environment) else {
        return Ok(());
    };
    let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, bytes)
        .map_err(|e| format!("{raw}: {e}"))?;
    published.files.insert(path.to_owned(), id);
    if PublishedFiles::is_hiera_config(path)
        && let Ok(text) = std::str::from_utf8(bytes)
    {
        published.hiera.insert(path.to_owned(), text.to_owned());
    }
    Ok(())
}

/// The module (one of `paths`) the layer entry `raw` lies in, and its path inside the
/// module; `None` for the module's own directory and for everything else.
fn locate<'p, 'r>(
    raw: &'r str,
    environment: &str,
    paths: &'p [String],
) -> Option<(&'p str, &'r str)> {
    let rest = raw.strip_prefix(environment)?.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    paths.iter().find_map(|path| {
        let inside = rest.strip_prefix(path.as_str())?.strip_prefix('/')?;
        (!inside.is_empty()).then_some((path.as_str(), inside))
    })
}

/// A path inside a module that is safe to create below its directory.
fn check_inside(raw: &str, inside: &str) -> Result<(), String> {
    let bad = inside.starts_with('/')
        || inside
            .split('/')
            .any(|part| matches!(part, "" | "." | "..") || part.contains('\0'));
    if bad {
        return Err(format!("entry {raw:?} has an unsafe path"));
    }
    Ok(())
}
