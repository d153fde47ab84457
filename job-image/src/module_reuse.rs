//! Git modules the previous image already holds: their files are taken from its layer
//! instead of being fetched again.
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
//! module that asks. Whatever goes wrong with it (gone from the registry, bytes that do
//! not match its digest, an entry that cannot be unpacked) is logged once and its
//! modules are fetched as usual.
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
use crate::limits::{Bytes, Limits};
use crate::pins::{Declared, Pins};
use crate::progress::{Step, count};
use crate::tree::{LocalDir, LocalEntry, LocalKind};

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

/// A previous layer and the git modules its pins say it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousLayerModules {
    pub environment: String,
    /// `sha256:<hex>` of the compressed layer.
    pub digest: String,
    pub size: u64,
    pub pins: Pins,
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

/// The modules of one unpacked layer, by path in its environment.
#[derive(Debug)]
struct Unpacked {
    modules: BTreeMap<String, Arc<ReusedModule>>,
}

/// The git modules of the previous image, found by [`ModuleKey`].
pub struct PreviousModules {
    /// Every module the layers hold: the layers (indexes into `layers`) and its path in
    /// each.
    holders: BTreeMap<ModuleKey, Vec<(usize, String)>>,
    layers: Vec<PreviousLayerModules>,
    blobs: Arc<dyn LayerBlobs>,
    limits: Limits,
    /// Where layers are downloaded and unpacked. Each unpacked layer is a temporary
    /// directory of its own, which lives as long as a tree uses its files (trees
    /// outlive this value: layers are written after the resolver is gone).
    work_dir: PathBuf,
    unpacked: Flights<usize, Unpacked>,
}

impl std::fmt::Debug for PreviousModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousModules")
            .field("modules", &self.holders.len())
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl PreviousModules {
    /// The modules `layers` record, read through `blobs`, unpacked below `work_dir`.
    /// `None` when no layer records a git module with its path.
    pub fn new(
        layers: Vec<PreviousLayerModules>,
        blobs: Arc<dyn LayerBlobs>,
        work_dir: &Path,
        limits: Limits,
    ) -> Option<Self> {
        let holders = index(&layers);
        if holders.is_empty() {
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

    /// Downloads (if need be) and unpacks every module of layer `index`, with one log
    /// line saying what was read or why it cannot be used.
    async fn unpack(&self, index: usize) -> Result<Unpacked, String> {
        let layer = &self.layers[index];
        let step = Step::start("reuse", format!("layer of {}", layer.environment));
        let result = self.read_layer(layer).await;
        match &result {
            Ok((unpacked, files, bytes)) => step.done(format!(
                "{} modules, {} files, {} unpacked from {} ({})",
                unpacked.modules.len(),
                count(*files),
                Bytes(*bytes),
                short(&layer.digest),
                Bytes(layer.size)
            )),
            Err(reason) => step.failed(format!(
                "{} unusable: {reason}; fetching its modules instead",
                short(&layer.digest)
            )),
        }
        result.map(|(unpacked, _, _)| unpacked)
    }

    async fn read_layer(
        &self,
        layer: &PreviousLayerModules,
    ) -> Result<(Unpacked, u64, u64), String> {
        let blob = self
            .blobs
            .open(&layer.digest, layer.size, &self.work_dir)
            .await?;
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
        let (environment, digest, limits) =
            (layer.environment.clone(), layer.digest.clone(), self.limits);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(blob.path()).map_err(|e| e.to_string())?;
            unpack_modules(file, &digest, &environment, &paths, dest, limits)
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
fn index(layers: &[PreviousLayerModules]) -> BTreeMap<ModuleKey, Vec<(usize, String)>> {
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

/// Unpacks the modules at `paths` (in environment `environment`) of the gzip'd tar
/// `layer`, each into its own directory below `dest`, and checks that the whole blob
/// has `digest`. Returns them with the files and bytes unpacked.
fn unpack_modules(
    layer: impl Read,
    digest: &str,
    environment: &str,
    paths: &[String],
    dest: tempfile::TempDir,
    limits: Limits,
) -> Result<(Unpacked, u64, u64), String> {
    let mut hashing = Hashing {
        inner: layer,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut found: BTreeMap<String, Vec<LocalEntry>> = BTreeMap::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let dest_path = dest.path().to_owned();
    let module_dir = |path: &str| -> PathBuf {
        let index = paths.iter().position(|p| p == path).unwrap_or_default();
        dest_path.join(index.to_string())
    };
    {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&mut hashing));
        let entries = archive.entries().map_err(|e| e.to_string())?;
        for entry in entries {
            let mut entry = entry.map_err(|e| e.to_string())?;
            let raw = String::from_utf8(entry.path_bytes().into_owned())
                .map_err(|_| "an entry path is not UTF-8".to_owned())?;
            let Some((module, inside)) = locate(&raw, environment, paths) else {
                continue;
            };
            check_inside(&raw, inside)?;
            let dir = module_dir(module);
            let entries = found.entry(module.to_owned()).or_insert_with(|| {
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
                    let mut out =
                        std::fs::File::create(&target).map_err(|e| format!("{raw}: {e}"))?;
                    let copied =
                        std::io::copy(&mut entry, &mut out).map_err(|e| format!("{raw}: {e}"))?;
                    files += 1;
                    bytes += copied;
                    if bytes > limits.max_environment_bytes {
                        return Err(format!("more than {} to unpack", Bytes(bytes)));
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
    }
    // The rest of the blob (the gzip trailer and anything after it) counts too.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| e.to_string())?;
    let got = format!("sha256:{}", hex(&hashing.hasher.finalize()));
    if got != digest {
        return Err(format!("its bytes have digest {got}"));
    }
    let dest = Arc::new(dest);
    let modules = found
        .into_iter()
        .map(|(path, entries)| {
            let dir = Arc::new(LocalDir::inside(dest.clone(), module_dir(&path)));
            let module = ReusedModule {
                dir,
                entries: Arc::new(entries),
                environment: environment.to_owned(),
            };
            (path, Arc::new(module))
        })
        .collect();
    Ok((Unpacked { modules }, files, bytes))
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
