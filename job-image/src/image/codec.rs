//! How a layer's chunks are compressed: gzip (the default, what every runtime reads) or
//! zstd (opt-in: about the size of gzip 6 in under half its CPU; containerd, CRI-O and
//! Podman read `tar+zstd` layers).
//!
//! Either way a layer is a sequence of chunks compressed independently
//! ([`super::gzip`]): for gzip, raw deflate pieces ending in a sync flush inside one
//! gzip member (header first; final block, CRC and size last); for zstd, one zstd frame
//! per chunk, concatenated (a valid zstd stream, with nothing before or after). The
//! bytes of a chunk depend only on its raw bytes, the codec and its pinned level and
//! library, so they can be copied from the previous layer.

use std::io;

use super::gzip::{FINAL_BLOCK, GZIP_HEADER, GZIP_LEVEL, deflate_chunk_at};
use super::media_types;

/// zstd level of zstd layers: zstd's default, gzip 6's size on Puppet code.
pub const ZSTD_LEVEL: i32 = 3;

/// The compression of a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Codec {
    #[default]
    Gzip,
    Zstd,
}

impl Codec {
    /// The layer's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Codec::Gzip => media_types::LAYER_GZIP,
            Codec::Zstd => media_types::LAYER_ZSTD,
        }
    }

    /// The codec of a layer with `media_type`, if it is one openvox-code writes.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        [Codec::Gzip, Codec::Zstd]
            .into_iter()
            .find(|c| c.media_type() == media_type)
    }

    /// What the bytes depend on besides the input: part of every layer's reuse key.
    pub fn key(self) -> String {
        match self {
            Codec::Gzip => format!("gzip zlib-rs level {GZIP_LEVEL}"),
            Codec::Zstd => format!(
                "zstd {} level {ZSTD_LEVEL}",
                zstd::zstd_safe::version_string()
            ),
        }
    }

    /// Bytes before the first chunk.
    pub fn header(self) -> &'static [u8] {
        match self {
            Codec::Gzip => &GZIP_HEADER,
            Codec::Zstd => &[],
        }
    }

    /// Bytes after the last chunk, for a stream of `size` raw bytes with CRC-32 `crc`.
    pub fn trailer(self, crc: u32, size: u64) -> Vec<u8> {
        match self {
            Codec::Gzip => {
                let mut trailer = FINAL_BLOCK.to_vec();
                trailer.extend_from_slice(&crc.to_le_bytes());
                // ISIZE: the size modulo 2^32, as gzip defines it.
                trailer.extend_from_slice(&((size & 0xffff_ffff) as u32).to_le_bytes());
                trailer
            }
            Codec::Zstd => Vec::new(),
        }
    }

    /// Compresses one chunk on its own.
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Codec::Gzip => deflate_chunk_at(data, false, GZIP_LEVEL),
            // One frame, with the content size in its header and no checksum (the
            // layer's digests cover the bytes). Single-threaded: the bytes do not
            // depend on the machine.
            Codec::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_the_codec() {
        for codec in [Codec::Gzip, Codec::Zstd] {
            assert_eq!(Codec::of_media_type(codec.media_type()), Some(codec));
        }
        assert_eq!(
            Codec::of_media_type("application/vnd.oci.image.layer.v1.tar"),
            None
        );
        assert_ne!(Codec::Gzip.key(), Codec::Zstd.key());
    }

    #[test]
    fn zstd_chunks_are_frames_that_concatenate() {
        let a = b"class profile::base {}\n".repeat(500);
        let b = b"node default { include role::web }\n".repeat(300);
        let mut stream = Codec::Zstd.compress(&a).unwrap();
        assert_eq!(stream, Codec::Zstd.compress(&a).unwrap(), "deterministic");
        stream.extend(Codec::Zstd.compress(&b).unwrap());
        let back = zstd::stream::decode_all(&stream[..]).unwrap();
        assert_eq!(back, [a, b].concat());
    }
}
