//! Every blob of a fetched pack, decoded once into a scratch file beside it.
//!
//! Why: a pack stores most blobs as deltas against other objects, in chains up to 50
//! deep (git's default `pack.depth`). Read one at a time in path order, as an
//! environment's tar or directory needs them, each blob's chain is inflated again from
//! its base, because gix caches only the object asked for; even a size lookup walks the
//! chain to learn the object's kind. In the 8-branch benchmark, inflating took half of a
//! cold build's CPU and the lookups kept the whole pack mapped. Walking the pack's delta
//! tree instead (what index-pack does) inflates every object exactly once, on every
//! core. The blobs are appended to one unlinked file and read back by offset, which the
//! page cache turns into a copy.
//!
//! A pack without many deltas is left alone ([`worth_decoding`]): there, reading blobs
//! one by one inflates each once anyway, and the scratch file would only add a copy.
//!
//! It is only a faster path: an object missing from the file (a loose object, a pack left
//! alone or one that could not be walked) is read from the repository as before.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use gix::odb::pack;

/// Buffer in front of the scratch file.
const WRITE_BUFFER: usize = 1 << 20;

/// Where one blob lies in the scratch file.
#[derive(Debug, Clone, Copy)]
struct Extent {
    offset: u64,
    len: usize,
}

/// The objects of a pack and the sum of their delta chain lengths: how many extra
/// objects reading each of them on its own would inflate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainStats {
    pub objects: u64,
    pub chained: u64,
}

impl std::ops::AddAssign for ChainStats {
    fn add_assign(&mut self, other: Self) {
        self.objects += other.objects;
        self.chained += other.chained;
    }
}

/// Whether walking a pack once beats reading its objects one by one: when reading them
/// one by one would inflate at least twice as much (chains of one or more on average).
pub fn worth_decoding(stats: ChainStats) -> bool {
    stats.objects > 0 && stats.chained >= stats.objects
}

/// Decoded blobs by id.
#[derive(Debug)]
pub struct DecodedBlobs {
    file: std::fs::File,
    extents: HashMap<gix::ObjectId, Extent>,
    bytes: u64,
}

/// The scratch file while packs are walked (shared by the walking threads).
struct Spill {
    out: BufWriter<std::fs::File>,
    extents: HashMap<gix::ObjectId, Extent>,
    bytes: u64,
    /// Bytes the file may grow to (the scratch space it may take).
    limit: u64,
}

impl Spill {
    fn append(&mut self, id: gix::ObjectId, data: &[u8]) -> std::io::Result<()> {
        if self.extents.contains_key(&id) {
            return Ok(());
        }
        if self.bytes + data.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "the decoded blobs would take more than {} bytes of scratch space",
                self.limit
            )));
        }
        self.out.write_all(data)?;
        self.extents.insert(
            id,
            Extent {
                offset: self.bytes,
                len: data.len(),
            },
        );
        self.bytes += data.len() as u64;
        Ok(())
    }
}

impl DecodedBlobs {
    /// Decodes every blob of the packs `indexes` that are [worth it](worth_decoding)
    /// into a new unlinked file in `dir`, on `threads` threads; returns the blobs (`None`
    /// when no pack was worth it) and the packs' chain statistics. An object larger than
    /// `max_object_bytes` stops the walk with an error (it bounds the memory one object
    /// takes); so does a file that would grow beyond `max_total_bytes` (the scratch
    /// space it may take) and any other failure, and then nothing was decoded.
    pub fn decode(
        indexes: &[PathBuf],
        object_hash: gix::hash::Kind,
        dir: &Path,
        threads: usize,
        max_object_bytes: u64,
        max_total_bytes: u64,
    ) -> Result<(Option<Self>, ChainStats), String> {
        let file = tempfile::tempfile_in(dir)
            .map_err(|e| format!("scratch file in {}: {e}", dir.display()))?;
        let spill = Arc::new(Mutex::new(Spill {
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            extents: HashMap::new(),
            bytes: 0,
            limit: max_total_bytes,
        }));
        let alloc_limit = usize::try_from(max_object_bytes).ok();
        let mut total = ChainStats::default();
        let mut walked = false;
        for index in indexes {
            let name = || index.file_name().unwrap_or_default().to_string_lossy();
            let bundle =
                pack::Bundle::at(index, object_hash).map_err(|e| format!("{}: {e}", name()))?;
            let stats = chain_stats(&bundle).map_err(|e| format!("{}: {e}", name()))?;
            total += stats;
            if worth_decoding(stats) {
                walk_pack(&bundle, &spill, threads, alloc_limit)
                    .map_err(|e| format!("{}: {e}", name()))?;
                walked = true;
            }
        }
        if !walked {
            return Ok((None, total));
        }
        let spill = Arc::into_inner(spill)
            .and_then(|m| m.into_inner().ok())
            .ok_or("a decoding thread is still running")?;
        let file = spill
            .out
            .into_inner()
            .map_err(|e| format!("scratch file: {}", e.error()))?;
        let decoded = Self {
            file,
            extents: spill.extents,
            bytes: spill.bytes,
        };
        Ok((Some(decoded), total))
    }

    /// Number of blobs decoded.
    pub fn blobs(&self) -> usize {
        self.extents.len()
    }

    /// Bytes of blobs decoded.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Size of blob `id`, if it was decoded.
    pub fn size(&self, id: &gix::oid) -> Option<u64> {
        self.extents.get(id).map(|e| e.len as u64)
    }

    /// Copies blob `id` into `out` through `buf`; `None` when it was not decoded.
    pub fn copy_to(
        &self,
        id: &gix::oid,
        buf: &mut Vec<u8>,
        out: &mut dyn Write,
    ) -> Option<std::io::Result<u64>> {
        let extent = *self.extents.get(id)?;
        buf.resize(extent.len, 0);
        Some(
            self.file
                .read_exact_at(buf, extent.offset)
                .and_then(|()| out.write_all(buf))
                .map(|()| extent.len as u64),
        )
    }
}

/// The chain statistics of a pack, from its entry headers (nothing is inflated).
fn chain_stats(bundle: &pack::Bundle) -> Result<ChainStats, String> {
    let mut entries: Vec<(u64, gix::ObjectId)> = bundle
        .index
        .iter()
        .map(|e| (e.pack_offset, e.oid))
        .collect();
    // A base lies before its OFS_DELTA entries, so its depth is known when they come.
    entries.sort_unstable();
    let offset_of: HashMap<gix::ObjectId, u64> = entries.iter().map(|(o, id)| (*id, *o)).collect();
    let mut depth: HashMap<u64, u64> = HashMap::with_capacity(entries.len());
    let mut stats = ChainStats::default();
    for (offset, _) in &entries {
        let entry = bundle.pack.entry(*offset).map_err(|e| e.to_string())?;
        let base = match entry.header {
            pack::data::entry::Header::OfsDelta { base_distance } => {
                entry.checked_base_pack_offset(base_distance)
            }
            pack::data::entry::Header::RefDelta { base_id } => offset_of.get(&base_id).copied(),
            _ => None,
        };
        let own = match (entry.header.is_delta(), base) {
            (false, _) => 0,
            (true, Some(base)) => depth.get(&base).copied().unwrap_or(0) + 1,
            (true, None) => 1,
        };
        depth.insert(*offset, own);
        stats.objects += 1;
        stats.chained += own;
    }
    Ok(stats)
}

/// Walks `bundle`'s pack along its delta tree, appending every blob.
fn walk_pack(
    bundle: &pack::Bundle,
    spill: &Arc<Mutex<Spill>>,
    threads: usize,
    alloc_limit: Option<usize>,
) -> Result<(), String> {
    let interrupt = AtomicBool::new(false);
    let processor = {
        let spill = spill.clone();
        move |kind: gix::object::Kind,
              data: &[u8],
              entry: &pack::index::Entry,
              _: &dyn gix::Progress|
              -> gix::Result {
            if kind != gix::object::Kind::Blob {
                return Ok(());
            }
            let mut spill = spill
                .lock()
                .map_err(|_| gix::Error::from_error(std::io::Error::other("a thread panicked")))?;
            spill
                .append(entry.oid, data)
                .map_err(gix::Error::from_error)
        }
    };
    bundle
        .index
        .traverse(
            &bundle.pack,
            &mut gix::progress::Discard,
            &interrupt,
            processor,
            pack::index::traverse::Options {
                traversal: pack::index::traverse::Algorithm::DeltaTreeLookup,
                thread_limit: Some(threads.max(1)),
                // The fetch computed every object's id from its decoded bytes and checked
                // the pack's checksum; doing it again would only cost time.
                check: pack::index::traverse::SafetyCheck::SkipFileAndObjectChecksumVerification,
                alloc_limit_bytes: alloc_limit,
                make_pack_lookup_cache: || pack::cache::Never,
            },
        )
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_pays_from_one_chained_object_per_object_on() {
        let cases = [
            (0, 0, false),
            (100, 0, false),
            (100, 99, false),
            (100, 100, true),
            // 24,000 objects in chains up to 50 deep: the benchmark's pack.
            (24_000, 600_000, true),
        ];
        for (objects, chained, want) in cases {
            assert_eq!(
                worth_decoding(ChainStats { objects, chained }),
                want,
                "{objects} objects, {chained} chained"
            );
        }
    }
}
