//! The pinned layer compressor: gzip through flate2's zlib-rs backend at a fixed level,
//! with a header that carries no file name and no time, hashing both sides on the way.
//!
//! The tar stream is cut into fixed [`CHUNK`]-byte pieces by stream offset; each piece is
//! deflated on its own (no shared window) and ends with a sync flush, the last one with
//! the final block, so the pieces concatenate into one valid deflate stream inside one
//! gzip member (what `pigz --independent` does). Pieces are compressed on several
//! threads, so one layer uses every core, yet the bytes depend only on the input, the
//! chunk size, the backend and the level, never on the number of threads or on how the
//! input was written. The deflate bytes differ between backends (miniz_oxide, C zlib,
//! zlib-rs) at the same level, so all of it is the layer format: a test pins the digest
//! of a known input and fails when any of it changes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use sha2::{Digest as _, Sha256};

use crate::forge::hex;

/// gzip level of every layer (the zlib default: within 1 % of level 9 on Puppet code at
/// half its CPU cost).
pub const GZIP_LEVEL: u32 = 6;
/// Bytes of tar deflated independently: large enough that losing the 32 KiB window at
/// each boundary costs well under 1 % of the ratio, small enough to spread one layer
/// over the cores with little memory (a few chunks in flight).
pub const CHUNK: usize = 1 << 20;
/// Operating system byte of the gzip header: 255, "unknown", the same on every machine.
const GZIP_OS_UNKNOWN: u8 = 255;

/// `sha256:<hex>` of a byte string.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
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

/// Deflates one chunk on its own: raw deflate, ending byte-aligned with a sync flush,
/// or with the final block when `last`.
fn deflate_chunk(data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    deflate_chunk_at(data, last, GZIP_LEVEL)
}

/// [`deflate_chunk`] at another `level`: what the benchmarks measure the layer format's
/// level against.
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

/// Takes the uncompressed tar stream, writes its gzip into `W`, and hashes both. Memory
/// stays at a few chunks per thread whatever the layer's size.
pub struct LayerEncoder<W: Write> {
    out: Hashing<W>,
    pending: Vec<u8>,
    in_flight: VecDeque<JoinHandle<io::Result<Vec<u8>>>>,
    threads: usize,
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
            pending: Vec::with_capacity(CHUNK),
            in_flight: VecDeque::new(),
            threads: threads.max(1),
            crc: Crc::new(),
            diff: Sha256::new(),
            uncompressed: 0,
        }
    }

    /// Writes the oldest chunk in flight (chunks are written in input order).
    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(handle) = self.in_flight.pop_front() {
            let bytes = handle
                .join()
                .map_err(|_| io::Error::other("a compression thread stopped"))??;
            if self.out.count == 0 {
                self.write_header()?;
            }
            self.out.put(&bytes)?;
        }
        Ok(())
    }

    fn write_header(&mut self) -> io::Result<()> {
        // Magic, deflate, no flags (no name), mtime 0, no extra flags, OS unknown.
        self.out
            .put(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, GZIP_OS_UNKNOWN])
    }

    /// Hands the pending chunk to a thread, waiting for the oldest when all are busy.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight.len() >= self.threads {
            self.write_oldest()?;
        }
        let chunk = std::mem::replace(
            &mut self.pending,
            if last {
                Vec::new()
            } else {
                Vec::with_capacity(CHUNK)
            },
        );
        self.in_flight
            .push_back(std::thread::spawn(move || deflate_chunk(&chunk, last)));
        Ok(())
    }

    /// Ends the gzip stream and returns the inner writer (flushed) with the digests.
    pub fn finish(mut self) -> io::Result<(W, Encoded)> {
        self.dispatch(true)?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE: the size modulo 2^32, as gzip defines it.
        trailer[4..].copy_from_slice(&((self.uncompressed & 0xffff_ffff) as u32).to_le_bytes());
        self.out.put(&trailer)?;
        self.out.inner.flush()?;
        let encoded = Encoded {
            digest: format!("sha256:{}", hex(&self.out.hasher.finalize())),
            size: self.out.count,
            diff_id: format!("sha256:{}", hex(&self.diff.finalize())),
            uncompressed_size: self.uncompressed,
        };
        Ok((self.out.inner, encoded))
    }
}

impl<W: Write> Write for LayerEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.diff.update(&buf[..n]);
        self.uncompressed += n as u64;
        if self.pending.len() == CHUNK {
            self.dispatch(false)?;
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

    fn encode(data: &[u8]) -> (Vec<u8>, Encoded) {
        let mut encoder = LayerEncoder::new(Vec::new());
        // Uneven writes: the output must not depend on how the input was cut.
        for chunk in data.chunks(7919) {
            encoder.write_all(chunk).unwrap();
        }
        encoder.finish().unwrap()
    }

    #[test]
    fn digests_are_pinned_for_the_backend_and_level() {
        // Computed once with flate2 1.1.11 + zlib-rs 0.6.8 at level 6, 1 MiB chunks. If
        // this fails, the compressor, its level or the chunking changed: every layer digest changes with it, so bump
        // the layer format version (image::LAYER_FORMAT_VERSION) and update the vector.
        let (bytes, encoded) = encode(&corpus());
        assert_eq!(encoded.uncompressed_size, 1_048_607);
        assert_eq!(
            encoded.diff_id,
            "sha256:4b138b73f536d4d1eb4588ba165e3bab20214f40a3e5a5bdd56a8bc7a9237717"
        );
        assert_eq!(
            encoded.digest,
            "sha256:7ec89bccee09c8eef1e1ef7ec02b5e875cd709381bd46ae06ce144412a821633"
        );
        assert_eq!(encoded.size, bytes.len() as u64);
    }

    #[test]
    fn output_does_not_depend_on_threads_or_writes() {
        // Several chunks, the last one partial.
        let mut data = corpus();
        data.extend_from_slice(&corpus());
        data.extend_from_slice(&corpus()[..12_345]);
        let encode_with = |threads: usize, piece: usize| {
            let mut encoder = LayerEncoder::with_threads(Vec::new(), threads);
            for chunk in data.chunks(piece) {
                encoder.write_all(chunk).unwrap();
            }
            encoder.finish().unwrap()
        };
        let one = encode_with(1, 4096);
        assert_eq!(one, encode_with(3, 7919));
        assert_eq!(one, encode_with(8, CHUNK + 1));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one.0[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "one gzip member decoding to the input");
        // Empty input: still a valid, empty gzip.
        let (empty, encoded) = LayerEncoder::with_threads(Vec::new(), 2).finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
        assert_eq!(encoded.uncompressed_size, 0);
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
