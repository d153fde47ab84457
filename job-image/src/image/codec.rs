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

use flate2::{Decompress, FlushDecompress, Status};

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

    /// Decompresses one chunk compressed by [`Codec::compress`], which must give
    /// exactly `raw` bytes from all of `compressed`; the reason it does not otherwise.
    pub fn decompress(self, compressed: &[u8], raw: u64) -> Result<Vec<u8>, String> {
        match self {
            Codec::Gzip => inflate_chunk(compressed, raw),
            Codec::Zstd => unframe_chunk(compressed, raw),
        }
    }

    /// Suffix of a layer file.
    pub fn file_suffix(self) -> &'static str {
        match self {
            Codec::Gzip => ".tar.gz",
            Codec::Zstd => ".tar.zst",
        }
    }
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

    #[test]
    fn chunks_inflate_alone_to_exactly_their_size() {
        let data = b"node default { include role::web }\n".repeat(1000);
        let compressed = deflate_chunk_at(&data, false, 6).unwrap();
        assert_eq!(inflate_chunk(&compressed, data.len() as u64).unwrap(), data);
        assert!(inflate_chunk(&compressed, data.len() as u64 - 1).is_err());
        assert!(inflate_chunk(&compressed, data.len() as u64 + 1).is_err());
        assert!(inflate_chunk(&compressed[..compressed.len() - 1], data.len() as u64).is_err());
        let last = deflate_chunk_at(&data, true, 6).unwrap();
        assert!(
            inflate_chunk(&last, data.len() as u64).is_err(),
            "a final block"
        );

        let frame = Codec::Zstd.compress(&data).unwrap();
        let size = data.len() as u64;
        assert_eq!(Codec::Zstd.decompress(&frame, size).unwrap(), data);
        assert!(Codec::Zstd.decompress(&frame, size - 1).is_err());
        assert!(Codec::Zstd.decompress(&frame, size + 1).is_err());
        assert!(
            Codec::Zstd
                .decompress(&frame[..frame.len() - 1], size)
                .is_err()
        );
        assert!(Codec::Gzip.decompress(&frame, size).is_err(), "not deflate");
    }
}
