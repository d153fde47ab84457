//! The pinned layer compressor: gzip through flate2's zlib-rs backend at a fixed level,
//! with a header that carries no file name and no time, hashing both sides on the way.
//!
//! The deflate bytes depend on the backend and the level (miniz_oxide, C zlib and
//! zlib-rs all differ at the same level), so both are part of the layer format: a test
//! pins the digest of a known input and fails when either changes.

use std::io::{self, Write};

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};

use crate::forge::hex;

/// gzip level of every layer (the zlib default: within 1 % of level 9 on Puppet code at
/// half its CPU cost).
pub const GZIP_LEVEL: u32 = 6;
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

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Takes the uncompressed tar stream, writes its gzip into `W`, and hashes both. Memory
/// stays at the compressor's window and buffers whatever the layer's size.
pub struct LayerEncoder<W: Write> {
    gzip: flate2::write::GzEncoder<Hashing<W>>,
    diff: Sha256,
    uncompressed: u64,
}

impl<W: Write> std::fmt::Debug for LayerEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerEncoder")
            .field("uncompressed", &self.uncompressed)
            .finish_non_exhaustive()
    }
}

impl<W: Write> LayerEncoder<W> {
    pub fn new(out: W) -> Self {
        let hashing = Hashing {
            inner: out,
            hasher: Sha256::new(),
            count: 0,
        };
        let gzip = GzBuilder::new()
            .mtime(0)
            .operating_system(GZIP_OS_UNKNOWN)
            .write(hashing, Compression::new(GZIP_LEVEL));
        Self {
            gzip,
            diff: Sha256::new(),
            uncompressed: 0,
        }
    }

    /// Ends the gzip stream and returns the inner writer (flushed) with the digests.
    pub fn finish(self) -> io::Result<(W, Encoded)> {
        let mut hashing = self.gzip.finish()?;
        hashing.flush()?;
        let encoded = Encoded {
            digest: format!("sha256:{}", hex(&hashing.hasher.finalize())),
            size: hashing.count,
            diff_id: format!("sha256:{}", hex(&self.diff.finalize())),
            uncompressed_size: self.uncompressed,
        };
        Ok((hashing.inner, encoded))
    }
}

impl<W: Write> Write for LayerEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.gzip.write(buf)?;
        self.diff.update(&buf[..n]);
        self.uncompressed += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.gzip.flush()
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
        // Computed once with flate2 1.1.11 + zlib-rs 0.6.8 at level 6. If this fails, the
        // compressor or its level changed: every layer digest changes with it, so bump
        // the layer format version (image::LAYER_FORMAT_VERSION) and update the vector.
        let (bytes, encoded) = encode(&corpus());
        assert_eq!(encoded.uncompressed_size, 1_048_607);
        assert_eq!(
            encoded.diff_id,
            "sha256:4b138b73f536d4d1eb4588ba165e3bab20214f40a3e5a5bdd56a8bc7a9237717"
        );
        assert_eq!(
            encoded.digest,
            "sha256:ca616dd24700b01d79a14a5838fa13fee9abfe686a6e5601fcb6fac1405f4752"
        );
        assert_eq!(encoded.size, bytes.len() as u64);
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
