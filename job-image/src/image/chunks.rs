//! The chunks of a layer ([`super::gzip`]): their sizes, recorded on the layer, and the
//! index of a previous layer's chunks by content, so a build copies the compressed
//! bytes of every chunk that did not change instead of deflating it again.
//!
//! A chunk is deflated on its own, so its compressed bytes are a function of its raw
//! bytes alone: the same raw bytes in the next build give the same compressed bytes,
//! and copying them gives exactly the layer a cold build writes. Chunks are found by
//! the SHA-256 of their raw bytes (computed here by inflating each chunk of the
//! previous layer, which also proves the recorded sizes right); a chunk whose bytes
//! cannot be read back is simply compressed again.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::Crc;
use sha2::{Digest as _, Sha256};

use super::codec::Codec;
use super::gzip::MAX_CHUNK;
use crate::module_reuse::BlobFile;

/// Raw and compressed size of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize {
    pub raw: u64,
    pub compressed: u64,
}

/// The chunks of a layer, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkTable(pub Vec<ChunkSize>);

/// Most compressed bytes a chunk may claim: deflate's worst case on [`MAX_CHUNK`] raw
/// bytes is a little over them, never twice. Keeps a forged table from asking for
/// huge buffers.
const MAX_COMPRESSED: u64 = 2 * MAX_CHUNK as u64;

impl ChunkTable {
    /// `raw:compressed` pairs joined by `,`: the layer annotation.
    pub fn to_annotation(&self) -> String {
        self.0
            .iter()
            .map(|c| format!("{}:{}", c.raw, c.compressed))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads [`ChunkTable::to_annotation`]'s text back, refusing sizes no chunk has.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        text.split(',')
            .map(|pair| {
                let (raw, compressed) = pair
                    .split_once(':')
                    .ok_or_else(|| format!("chunk {pair:?} is not raw:compressed"))?;
                let number = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| format!("chunk {pair:?} has a size that is not a number"))
                };
                let (raw, compressed) = (number(raw)?, number(compressed)?);
                if raw == 0 || raw > MAX_CHUNK as u64 || compressed == 0 {
                    return Err(format!("chunk {pair:?} has a size no chunk has"));
                }
                if compressed > MAX_COMPRESSED {
                    return Err(format!("chunk {pair:?} claims too many compressed bytes"));
                }
                Ok(ChunkSize { raw, compressed })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// Where a chunk's compressed bytes are in the previous layer.
#[derive(Debug, Clone, Copy)]
struct Place {
    offset: u64,
    len: u64,
}

/// The chunks of a previous layer by the SHA-256 of their raw bytes, read from its blob
/// file (kept while the index lives). Counts what it gave.
#[derive(Debug)]
pub struct ChunkIndex {
    file: std::fs::File,
    _blob: Arc<BlobFile>,
    places: HashMap<[u8; 32], Place>,
    reused_chunks: AtomicU64,
    reused_bytes: AtomicU64,
}

impl ChunkIndex {
    /// The compressed bytes of a chunk with exactly the raw bytes `raw`, when the
    /// previous layer has one and it can be read.
    pub fn compressed(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let hash: [u8; 32] = Sha256::digest(raw).into();
        let place = self.places.get(&hash)?;
        let mut bytes = vec![0u8; usize::try_from(place.len).ok()?];
        self.file.read_exact_at(&mut bytes, place.offset).ok()?;
        self.reused_chunks.fetch_add(1, Ordering::Relaxed);
        self.reused_bytes
            .fetch_add(raw.len() as u64, Ordering::Relaxed);
        Some(bytes)
    }

    /// Distinct chunks it holds.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Chunks and raw bytes given so far.
    pub fn reused(&self) -> (u64, u64) {
        (
            self.reused_chunks.load(Ordering::Relaxed),
            self.reused_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Reads a layer written by [`super::gzip::LayerEncoder`] chunk by chunk as its
/// `table` says, giving the raw tar and indexing every chunk on the way. Each chunk
/// must decompress on its own to exactly its recorded size, and the stream must end as
/// the encoder ends it (for gzip: final block, CRC and size): a table that does not
/// fit the bytes is an error, never a wrong chunk.
pub struct ChunkedLayer<R> {
    inner: R,
    codec: Codec,
    table: Vec<ChunkSize>,
    next: usize,
    /// Offset of the next chunk's compressed bytes in the blob.
    offset: u64,
    current: Vec<u8>,
    position: usize,
    crc: Crc,
    places: HashMap<[u8; 32], Place>,
    ended: bool,
}

impl<R> std::fmt::Debug for ChunkedLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedLayer")
            .field("chunks", &self.table.len())
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl<R: Read> ChunkedLayer<R> {
    /// Starts reading `inner` (the layer compressed with `codec`, from its first byte).
    pub fn new(mut inner: R, table: &ChunkTable, codec: Codec) -> io::Result<Self> {
        let mut header = vec![0u8; codec.header().len()];
        inner.read_exact(&mut header)?;
        if header != codec.header() {
            return Err(invalid("its header is not the one openvox-code writes"));
        }
        Ok(Self {
            inner,
            codec,
            table: table.0.clone(),
            next: 0,
            offset: header.len() as u64,
            current: Vec::new(),
            position: 0,
            crc: Crc::new(),
            places: HashMap::new(),
            ended: false,
        })
    }

    /// Loads the next chunk; `false` once the stream has ended (and was checked).
    fn load_next(&mut self) -> io::Result<bool> {
        let Some(&size) = self.table.get(self.next) else {
            if !self.ended {
                self.check_end()?;
                self.ended = true;
            }
            return Ok(false);
        };
        let mut compressed = vec![0u8; size.compressed as usize];
        self.inner.read_exact(&mut compressed)?;
        let raw = self
            .codec
            .decompress(&compressed, size.raw)
            .map_err(|reason| {
                invalid(&format!(
                    "chunk {} (at byte {}) {reason}",
                    self.next + 1,
                    self.offset
                ))
            })?;
        self.crc.update(&raw);
        let hash: [u8; 32] = Sha256::digest(&raw).into();
        self.places.entry(hash).or_insert(Place {
            offset: self.offset,
            len: size.compressed,
        });
        self.offset += size.compressed;
        self.next += 1;
        self.current = raw;
        self.position = 0;
        Ok(true)
    }

    /// The stream must end with exactly the codec's trailer.
    fn check_end(&mut self) -> io::Result<()> {
        let raw_total = self.table.iter().map(|c| c.raw).sum();
        let expected = self.codec.trailer(self.crc.sum(), raw_total);
        let mut end = vec![0u8; expected.len() + 1];
        let mut read = 0;
        while read < end.len() {
            match self.inner.read(&mut end[read..])? {
                0 => break,
                n => read += n,
            }
        }
        if end[..read] != expected[..] {
            return Err(invalid(
                "the stream does not end where its chunk table says",
            ));
        }
        Ok(())
    }

    /// Reads what is left of the tar and returns the index of the chunks, with the blob
    /// file their bytes are read from.
    pub fn into_index(mut self, blob: Arc<BlobFile>) -> io::Result<ChunkIndex> {
        io::copy(&mut self, &mut io::sink())?;
        let file = std::fs::File::open(blob.path())?;
        Ok(ChunkIndex {
            file,
            _blob: blob,
            places: self.places,
            reused_chunks: AtomicU64::new(0),
            reused_bytes: AtomicU64::new(0),
        })
    }
}

impl<R: Read> Read for ChunkedLayer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            if !self.load_next()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_refuse_impossible_sizes() {
        let table = ChunkTable(vec![
            ChunkSize {
                raw: 600_000,
                compressed: 120_000,
            },
            ChunkSize {
                raw: 1,
                compressed: 7,
            },
        ]);
        assert_eq!(table.to_annotation(), "600000:120000,1:7");
        assert_eq!(ChunkTable::parse(&table.to_annotation()).unwrap(), table);
        assert_eq!(ChunkTable::parse("").unwrap(), ChunkTable::default());
        for bad in [
            "1",
            "0:1",
            "1:0",
            "x:1",
            "99999999999:1",
            "1:99999999999",
            "1:2,",
        ] {
            assert!(ChunkTable::parse(bad).is_err(), "{bad}");
        }
    }
}
