//! The pinned layer compressor: gzip through flate2's zlib-rs backend at a fixed level,
//! with a header that carries no file name and no time, hashing both sides on the way
//! (or zstd frames, when the layer's [`Codec`] says so; the chunking is the same).
//!
//! The tar stream is cut into chunks at entry boundaries chosen by the entries
//! themselves ([`ends_chunk`]: a draw from the entry's path, so an edit in one file
//! changes its own chunk and, unless it shrinks that chunk below [`MIN_CHUNK`] or
//! grows it past [`MAX_CHUNK`], no boundary), or inside an entry after [`MAX_CHUNK`]
//! bytes. Each chunk is deflated on its own (no shared window) and ends with a sync
//! flush; an empty final block closes the stream, so the chunks concatenate into one
//! valid deflate stream inside one gzip member (what `pigz --independent` does).
//!
//! Two things follow. Chunks are compressed on several threads, so one layer uses every
//! core, yet the bytes depend only on the input, the chunking, the backend and the
//! level, never on the number of threads or on how the input was written. And a chunk
//! whose bytes the previous layer of the environment already held compresses to the
//! same bytes, so they are copied from there instead ([`super::chunks`]); the digest
//! is the same either way. The deflate bytes differ between backends (miniz_oxide, C
//! zlib, zlib-rs) at the same level, so all of it is the layer format: a test pins the
//! digest of a known input and fails when any of it changes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use sha2::{Digest as _, Sha256};

use super::chunks::{ChunkIndex, ChunkSize, ChunkTable};
use super::codec::Codec;
use crate::forge::hex;

/// gzip level of every layer (the zlib default: within 1 % of level 9 on Puppet code at
/// half its CPU cost).
pub const GZIP_LEVEL: u32 = 6;
/// Fewest tar bytes in a chunk before it may end at an entry: chunks stay large enough
/// that losing the 32 KiB window at each boundary costs well under 1 % of the ratio.
pub const MIN_CHUNK: usize = 512 << 10;
/// Scale of the boundary draw: past [`MIN_CHUNK`], an entry of `n` bytes ends its
/// chunk with probability `min(1, n / SPACING)`, so chunks average about
/// `MIN_CHUNK + SPACING` (1 MiB) whatever the sizes of the files.
const SPACING: u64 = 512 << 10;
/// Most tar bytes in a chunk: a large file is cut inside. Bounds the memory (a few
/// chunks per thread) and keeps one big file spread over the cores.
pub const MAX_CHUNK: usize = 4 << 20;
/// Operating system byte of the gzip header: 255, "unknown", the same on every machine.
const GZIP_OS_UNKNOWN: u8 = 255;
/// The gzip header: magic, deflate, no flags (no name), mtime 0, no extra flags, OS
/// unknown.
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, GZIP_OS_UNKNOWN];
/// An empty final block (fixed Huffman, end-of-block only): what ends the deflate
/// stream after the last sync-flushed chunk.
pub const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// `sha256:<hex>` of a byte string.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Whether a chunk holding `pending` bytes ends after the entry `path` of `entry_len`
/// bytes (header, content and padding). Depends on nothing else, so the boundaries
/// after an edited file fall where they fell before (or come back within a chunk or
/// two), and unchanged chunks come back with them.
pub fn ends_chunk(pending: usize, path: &str, entry_len: u64) -> bool {
    if pending < MIN_CHUNK {
        return false;
    }
    // FNV-1a, then MurmurHash3's finalizer (FNV alone leaves the upper bits of short
    // paths badly spread): a fixed hash whose upper half is the draw in [0, 2^32).
    let mut hash = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash >> 32) * SPACING < entry_len.min(SPACING) << 32
}

/// What came out of a [`LayerEncoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `sha256:` of the compressed bytes: the layer's digest in the manifest.
    pub digest: String,
    /// Size of the compressed bytes.
    pub size: u64,
    /// `sha256:` of the uncompressed tar: the layer's `diff_id` in the config.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The chunks, in order: recorded on the layer so the next build can reuse them.
    pub chunks: ChunkTable,
}

/// Counts and hashes what passes through to `W`.
#[derive(Debug)]
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        self.count += buf.len() as u64;
        Ok(())
    }
}

/// A chunk's compressed bytes: the previous layer's when it held the same bytes
/// (written with the same codec), compressed otherwise.
fn compress_chunk(data: &[u8], codec: Codec, previous: Option<&ChunkIndex>) -> io::Result<Vec<u8>> {
    if let Some(bytes) = previous.and_then(|index| index.compressed(data)) {
        return Ok(bytes);
    }
    codec.compress(data)
}

/// Deflates `data` on its own at `level`, ending with a sync flush, or with the final
/// block when `last`; also what the benchmarks measure other levels with.
pub fn deflate_chunk_at(data: &[u8], last: bool, level: u32) -> io::Result<Vec<u8>> {
    let mut compress = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 3 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = usize::try_from(compress.total_in()).unwrap_or(usize::MAX);
        let rest = data.get(consumed..).unwrap_or_default();
        let status = compress
            .compress_vec(rest, &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = compress.total_in() == data.len() as u64;
        let done = match status {
            Status::StreamEnd => true,
            // A flush is complete once it left room in the output.
            _ => !last && all_in && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
        out.reserve(64 * 1024);
    }
}

/// A chunk being compressed: its size, and the thread compressing it.
type InFlight = (u64, JoinHandle<io::Result<Vec<u8>>>);

/// Takes the uncompressed tar stream, writes its gzip into `W`, and hashes both. Memory
/// stays at a few chunks per thread whatever the layer's size. Call
/// [`LayerEncoder::entry_end`] after each tar entry: that is where chunks may end.
pub struct LayerEncoder<W: Write> {
    out: Hashing<W>,
    pending: Vec<u8>,
    /// Bytes written since the last entry ended.
    entry: u64,
    in_flight: VecDeque<InFlight>,
    threads: usize,
    codec: Codec,
    previous: Option<Arc<ChunkIndex>>,
    chunks: Vec<ChunkSize>,
    crc: Crc,
    diff: Sha256,
    uncompressed: u64,
}

impl<W: Write> std::fmt::Debug for LayerEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerEncoder")
            .field("uncompressed", &self.uncompressed)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl<W: Write> LayerEncoder<W> {
    /// An encoder deflating on as many threads as there are CPUs.
    pub fn new(out: W) -> Self {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        Self::with_threads(out, threads)
    }

    /// An encoder deflating on `threads` threads (the output is the same for any number).
    pub fn with_threads(out: W, threads: usize) -> Self {
        Self {
            out: Hashing {
                inner: out,
                hasher: Sha256::new(),
                count: 0,
            },
            pending: Vec::with_capacity(MIN_CHUNK * 2),
            entry: 0,
            in_flight: VecDeque::new(),
            threads: threads.max(1),
            codec: Codec::Gzip,
            previous: None,
            chunks: Vec::new(),
            crc: Crc::new(),
            diff: Sha256::new(),
            uncompressed: 0,
        }
    }

    /// Compresses with `codec` (gzip unless told).
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Copies the chunks `previous` (a layer written with the same codec) holds instead
    /// of compressing them again (the output is the same).
    pub fn reusing(mut self, previous: Option<Arc<ChunkIndex>>) -> Self {
        self.previous = previous;
        self
    }

    /// Marks the end of a tar entry named `path`: the chunk may end here.
    pub fn entry_end(&mut self, path: &str) -> io::Result<()> {
        let entry = std::mem::take(&mut self.entry);
        if ends_chunk(self.pending.len(), path, entry) {
            self.dispatch()?;
        }
        Ok(())
    }

    /// Writes the oldest chunk in flight (chunks are written in input order).
    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some((raw, handle)) = self.in_flight.pop_front() {
            let bytes = handle
                .join()
                .map_err(|_| io::Error::other("a compression thread stopped"))??;
            if self.out.count == 0 {
                self.out.put(self.codec.header())?;
            }
            self.out.put(&bytes)?;
            self.chunks.push(ChunkSize {
                raw,
                compressed: bytes.len() as u64,
            });
        }
        Ok(())
    }

    /// Hands the pending chunk to a thread, waiting for the oldest when all are busy.
    fn dispatch(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.threads {
            self.write_oldest()?;
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(MIN_CHUNK * 2));
        let (codec, previous) = (self.codec, self.previous.clone());
        let raw = chunk.len() as u64;
        let handle = std::thread::spawn(move || compress_chunk(&chunk, codec, previous.as_deref()));
        self.in_flight.push_back((raw, handle));
        Ok(())
    }

    /// Ends the gzip stream and returns the inner writer (flushed) with the digests.
    pub fn finish(mut self) -> io::Result<(W, Encoded)> {
        self.dispatch()?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        if self.out.count == 0 {
            self.out.put(self.codec.header())?;
        }
        let trailer = self.codec.trailer(self.crc.sum(), self.uncompressed);
        self.out.put(&trailer)?;
        self.out.inner.flush()?;
        let encoded = Encoded {
            digest: format!("sha256:{}", hex(&self.out.hasher.finalize())),
            size: self.out.count,
            diff_id: format!("sha256:{}", hex(&self.diff.finalize())),
            uncompressed_size: self.uncompressed,
            chunks: ChunkTable(self.chunks),
        };
        Ok((self.out.inner, encoded))
    }
}

impl<W: Write> Write for LayerEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.diff.update(&buf[..n]);
        self.uncompressed += n as u64;
        self.entry += n as u64;
        if self.pending.len() == MAX_CHUNK {
            self.dispatch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// 1 MiB of Puppet-like text, the same on every machine.
    fn corpus() -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0u64;
        while out.len() < 1 << 20 {
            out.extend_from_slice(
                format!(
                    "class profile::app{i} (\n  String $version = '1.{}.{}',\n  Boolean $enable = {},\n) {{\n  package {{ 'app{i}': ensure => $version }}\n}}\n",
                    i % 17,
                    i % 5,
                    i.is_multiple_of(2)
                )
                .as_bytes(),
            );
            i += 1;
        }
        out
    }

    /// Encodes `data` on `threads` threads as entries of `entry` bytes named `e0`,
    /// `e1`, …, each written in pieces of `piece` bytes.
    fn encode_with(data: &[u8], threads: usize, entry: usize, piece: usize) -> (Vec<u8>, Encoded) {
        encode_as(Codec::Gzip, data, threads, entry, piece)
    }

    /// [`encode_with`] in `codec`.
    fn encode_as(
        codec: Codec,
        data: &[u8],
        threads: usize,
        entry: usize,
        piece: usize,
    ) -> (Vec<u8>, Encoded) {
        let mut encoder = LayerEncoder::with_threads(Vec::new(), threads).with_codec(codec);
        for (i, bytes) in data.chunks(entry).enumerate() {
            for piece in bytes.chunks(piece) {
                encoder.write_all(piece).unwrap();
            }
            encoder.entry_end(&format!("e{i}")).unwrap();
        }
        encoder.finish().unwrap()
    }

    fn encode(data: &[u8]) -> (Vec<u8>, Encoded) {
        encode_with(data, 2, 7919, 4096)
    }

    #[test]
    fn digests_are_pinned_for_the_backend_and_level() {
        // Computed once with flate2 1.1.11 + zlib-rs 0.6.8 at level 6, layer format 3
        // chunking. If this fails, the compressor, its level or the chunking changed:
        // every layer digest changes with it, so bump the layer format version
        // (image::LAYER_FORMAT_VERSION) and update the vector.
        let data = corpus().repeat(2);
        let (bytes, encoded) = encode(&data);
        assert_eq!(encoded.uncompressed_size, 2_097_214);
        assert_eq!(
            encoded.chunks.to_annotation(),
            "752305:43744,1259121:72665,85788:5348"
        );
        assert_eq!(
            encoded.diff_id,
            "sha256:ec0f983417069eab2a54fa59196124d7c85f9a347beb9764b43c5718eead0de1"
        );
        assert_eq!(
            encoded.digest,
            "sha256:5d6459dcefb2d966a965358197a7cc7723e90de5188b26dde3112dd3a586d81d"
        );
        assert_eq!(encoded.size, bytes.len() as u64);
    }

    #[test]
    fn output_does_not_depend_on_threads_or_writes() {
        // Several chunks, the last one partial.
        let mut data = corpus();
        data.extend_from_slice(&corpus());
        data.extend_from_slice(&corpus());
        data.extend_from_slice(&corpus()[..12_345]);
        let one = encode_with(&data, 1, 7919, 4096);
        assert!(one.1.chunks.0.len() >= 2, "{:?}", one.1.chunks);
        assert_eq!(one, encode_with(&data, 3, 7919, 1000));
        assert_eq!(one, encode_with(&data, 8, 7919, 7919));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one.0[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "one gzip member decoding to the input");
        let (raw, compressed) = one
            .1
            .chunks
            .0
            .iter()
            .fold((0, 0), |(r, c), s| (r + s.raw, c + s.compressed));
        assert_eq!(raw, data.len() as u64);
        assert_eq!(
            compressed + 20,
            one.1.size,
            "header, chunks, final block, trailer"
        );
        // Empty input: still a valid, empty gzip.
        let (empty, encoded) = LayerEncoder::with_threads(Vec::new(), 2).finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
        assert_eq!(encoded.uncompressed_size, 0);
        assert!(encoded.chunks.0.is_empty());
    }

    #[test]
    fn zstd_layers_do_not_depend_on_threads_or_writes_either() {
        let data = corpus().repeat(3);
        let one = encode_as(Codec::Zstd, &data, 1, 7919, 4096);
        assert_eq!(one, encode_as(Codec::Zstd, &data, 4, 7919, 1000));
        // The same chunks as gzip (the chunking does not depend on the codec).
        let gzip = encode_with(&data, 2, 7919, 4096);
        let raw = |e: &Encoded| e.chunks.0.iter().map(|c| c.raw).collect::<Vec<_>>();
        assert_eq!(raw(&one.1), raw(&gzip.1));
        assert_eq!(one.1.diff_id, gzip.1.diff_id);
        let back = zstd::stream::decode_all(&one.0[..]).unwrap();
        assert_eq!(back, data, "concatenated frames decode to the input");
    }

    #[test]
    fn chunks_end_at_entries_the_entries_choose_or_at_the_most_bytes() {
        assert!(
            !ends_chunk(MIN_CHUNK - 1, "a", u64::MAX),
            "never below the least"
        );
        assert!(
            ends_chunk(MIN_CHUNK, "a", SPACING),
            "always after a large entry"
        );
        // A quarter of SPACING ends about a quarter of chunks, by path.
        let ends = (0..10_000)
            .filter(|i| {
                ends_chunk(
                    MIN_CHUNK,
                    &format!("production/data/node{i}.yaml"),
                    SPACING / 4,
                )
            })
            .count();
        assert!((2_200..2_800).contains(&ends), "{ends} of 10000");
        // One entry larger than MAX_CHUNK is cut inside.
        let big: Vec<u8> = corpus()
            .into_iter()
            .cycle()
            .take(2 * MAX_CHUNK + 5)
            .collect();
        let (_, encoded) = encode_with(&big, 2, big.len(), 65_536);
        let raw: Vec<u64> = encoded.chunks.0.iter().map(|c| c.raw).collect();
        assert_eq!(raw, [MAX_CHUNK as u64, MAX_CHUNK as u64, 5]);
    }

    #[test]
    fn header_has_no_name_no_time_and_a_fixed_os() {
        let (bytes, _) = encode(b"hello");
        assert_eq!(
            &bytes[..4],
            &[0x1f, 0x8b, 8, 0],
            "magic, deflate, no flags (no name)"
        );
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(bytes[9], 255, "OS unknown");
    }

    #[test]
    fn output_decompresses_to_the_input_and_hashes_match() {
        let data = corpus();
        let (bytes, encoded) = encode(&data);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(encoded.diff_id, sha256_digest(&data));
        assert_eq!(encoded.digest, sha256_digest(&bytes));
        assert!(encoded.size < encoded.uncompressed_size / 4, "{encoded:?}");
    }
}
