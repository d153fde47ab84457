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

use flate2::{Crc, Decompress, FlushDecompress, Status};
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

    /// Total raw and compressed bytes of the chunks.
    fn totals(&self) -> (u64, u64) {
        self.0
            .iter()
            .fold((0, 0), |(r, c), s| (r + s.raw, c + s.compressed))
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
        let raw = match self.codec {
            Codec::Gzip => inflate_chunk(&compressed, size.raw),
            Codec::Zstd => unframe_chunk(&compressed, size.raw),
        };
        let raw = raw.map_err(|reason| {
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
        let (raw_total, _) = ChunkTable(self.table.clone()).totals();
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

/// Inflates one independently deflated chunk, which must give exactly `raw` bytes,
/// use all of `compressed` and not end the stream.
fn inflate_chunk(compressed: &[u8], raw: u64) -> Result<Vec<u8>, String> {
    let raw = usize::try_from(raw).map_err(|_| "is too large".to_owned())?;
    // Every chunk ends with a sync flush: an empty stored block, whose length fields
    // are these four bytes.
    if !compressed.ends_with(&[0, 0, 0xff, 0xff]) {
        return Err("does not end with a sync flush".into());
    }
    let mut inflate = Decompress::new(false);
    // One byte of room past the expected size: a chunk holding more shows up as more,
    // and the decoder always has room to read the closing empty stored block.
    let mut out = Vec::with_capacity(raw + 1);
    loop {
        let consumed = inflate.total_in() as usize;
        let before = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress_vec(&compressed[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("does not inflate: {e}"))?;
        if status == Status::StreamEnd {
            return Err("ends the stream before its last chunk".into());
        }
        if out.len() > raw {
            return Err(format!("holds more than its {raw} bytes"));
        }
        if inflate.total_in() as usize == compressed.len()
            || (inflate.total_in(), inflate.total_out()) == before
        {
            break;
        }
    }
    if inflate.total_in() as usize != compressed.len() || out.len() != raw {
        return Err(format!(
            "gives {} bytes from {} of its {} compressed bytes, not {raw} from all",
            out.len(),
            inflate.total_in(),
            compressed.len()
        ));
    }
    Ok(out)
}

/// Decompresses one zstd chunk, which must be whole frames giving exactly `raw` bytes.
fn unframe_chunk(compressed: &[u8], raw: u64) -> Result<Vec<u8>, String> {
    let raw = usize::try_from(raw).map_err(|_| "is too large".to_owned())?;
    // Room for one byte more: a chunk holding more shows up as more.
    let out = zstd::bulk::decompress(compressed, raw + 1)
        .map_err(|e| format!("does not decompress: {e}"))?;
    if out.len() != raw {
        return Err(format!("gives {} bytes, not {raw}", out.len()));
    }
    Ok(out)
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

    #[test]
    fn chunks_inflate_alone_to_exactly_their_size() {
        let data = b"node default { include role::web }\n".repeat(1000);
        let compressed = super::super::gzip::deflate_chunk_at(&data, false, 6).unwrap();
        assert_eq!(inflate_chunk(&compressed, data.len() as u64).unwrap(), data);
        assert!(inflate_chunk(&compressed, data.len() as u64 - 1).is_err());
        assert!(inflate_chunk(&compressed, data.len() as u64 + 1).is_err());
        assert!(inflate_chunk(&compressed[..compressed.len() - 1], data.len() as u64).is_err());
        let last = super::super::gzip::deflate_chunk_at(&data, true, 6).unwrap();
        assert!(
            inflate_chunk(&last, data.len() as u64).is_err(),
            "a final block"
        );
    }
}
