//! A deterministic tar writer for image layers.
//!
//! Only what a layer needs, written the same way every time: POSIX ustar headers with
//! owner 0:0, no user or group names, device numbers zero, and a PAX extended header
//! (`path`, `linkpath`, `size`) only when a value does not fit the ustar fields. The
//! archive ends with the two zero blocks of the standard, without padding to a record
//! size. Times and modes are whatever the caller passes; nothing is read from a clock
//! or a file system.

use std::io::{self, Write};

const BLOCK: usize = 512;
/// Largest value of an 11-digit octal field (sizes and times).
const MAX_OCTAL_11: u64 = 0o777_7777_7777;
/// Name of PAX extended headers. A fixed name: GNU tar's default puts a process id in
/// it, which would make archives differ between runs.
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";

/// Why an entry cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar entry {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("tar entry {path:?}: declared {declared} bytes but {written} were written")]
    SizeMismatch {
        path: String,
        declared: u64,
        written: u64,
    },
    #[error("writing the layer: {0}")]
    Io(#[from] io::Error),
}

/// Kind of a tar entry, with the fields only that kind has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    File { size: u64 },
    Directory,
    Symlink { target: &'a str },
}

impl Kind<'_> {
    fn typeflag(self) -> u8 {
        match self {
            Kind::File { .. } => b'0',
            Kind::Symlink { .. } => b'2',
            Kind::Directory => b'5',
        }
    }
}

/// Writes a tar stream into `W`, one entry at a time, in the order given.
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// The writer the entries go to.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// A directory `path` (written with a trailing `/`).
    pub fn directory(&mut self, path: &str, mode: u32, mtime: i64) -> Result<(), TarError> {
        check_path(path)?;
        self.header(&format!("{path}/"), mode, mtime, Kind::Directory)
    }

    /// A symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str, mtime: i64) -> Result<(), TarError> {
        check_path(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(TarError::InvalidPath {
                path: path.to_owned(),
                reason: "symlink target is empty or contains NUL",
            });
        }
        self.header(path, 0o777, mtime, Kind::Symlink { target })
    }

    /// Starts a regular file of exactly `size` bytes; write them into the returned
    /// entry, then call [`FileEntry::finish`].
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        mtime: i64,
    ) -> Result<FileEntry<'_, W>, TarError> {
        check_path(path)?;
        self.header(path, mode, mtime, Kind::File { size })?;
        Ok(FileEntry {
            writer: self,
            path: path.to_owned(),
            declared: size,
            written: 0,
        })
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> Result<W, TarError> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        path: &str,
        mode: u32,
        mtime: i64,
        kind: Kind<'_>,
    ) -> Result<(), TarError> {
        // Times before 1970 or past year 2242 do not fit; commit times are clamped.
        let mtime = u64::try_from(mtime).unwrap_or(0).min(MAX_OCTAL_11);
        let mut pax: Vec<(&str, &[u8])> = Vec::new();
        let (prefix, name) = match split_ustar_path(path.as_bytes()) {
            Some(split) => split,
            None => {
                pax.push(("path", path.as_bytes()));
                (&[][..], truncated(path.as_bytes(), 100))
            }
        };
        let mut linkname: &[u8] = &[];
        if let Kind::Symlink { target } = kind {
            linkname = target.as_bytes();
            if linkname.len() > 100 {
                pax.push(("linkpath", linkname));
                linkname = truncated(linkname, 100);
            }
        }
        let size = match kind {
            Kind::File { size } => size,
            _ => 0,
        };
        let size_text;
        let header_size = if size > MAX_OCTAL_11 {
            size_text = size.to_string();
            pax.push(("size", size_text.as_bytes()));
            0
        } else {
            size
        };
        if !pax.is_empty() {
            let records = pax_records(&pax);
            let header = ustar_header(
                &[],
                PAX_HEADER_NAME,
                0o644,
                records.len() as u64,
                mtime,
                b'x',
                &[],
            );
            self.out.write_all(&header)?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let header = ustar_header(
            prefix,
            name,
            mode,
            header_size,
            mtime,
            kind.typeflag(),
            linkname,
        );
        self.out.write_all(&header)?;
        Ok(())
    }

    fn pad(&mut self, written: u64) -> io::Result<()> {
        let rest = (written % BLOCK as u64) as usize;
        if rest != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rest])?;
        }
        Ok(())
    }
}

/// The content of one regular file being written.
#[derive(Debug)]
pub struct FileEntry<'a, W: Write> {
    writer: &'a mut TarWriter<W>,
    path: String,
    declared: u64,
    written: u64,
}

impl<W: Write> FileEntry<'_, W> {
    /// Checks that exactly the declared size was written and pads to a block.
    pub fn finish(self) -> Result<(), TarError> {
        if self.written != self.declared {
            return Err(TarError::SizeMismatch {
                path: self.path,
                declared: self.declared,
                written: self.written,
            });
        }
        self.writer.pad(self.written)?;
        Ok(())
    }
}

impl<W: Write> Write for FileEntry<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.declared - self.written;
        if buf.len() as u64 > room {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{:?} is longer than its declared {} bytes",
                    self.path, self.declared
                ),
            ));
        }
        let n = self.writer.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.out.flush()
    }
}

fn check_path(path: &str) -> Result<(), TarError> {
    let invalid = |reason| {
        Err(TarError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return invalid("is empty");
    }
    if path.starts_with('/') || path.ends_with('/') {
        return invalid("starts or ends with '/'");
    }
    if path.contains('\0') {
        return invalid("contains NUL");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return invalid("has an empty, '.' or '..' component");
    }
    Ok(())
}

fn truncated(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

/// Splits `path` into the ustar `prefix` (≤ 155 bytes) and `name` (≤ 100 bytes) fields
/// at a `/`, preferring the longest prefix; `None` when no split fits.
fn split_ustar_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    // The trailing '/' of a directory belongs to the name, never a split point.
    let searchable = &path[..path.len() - 1];
    searchable
        .iter()
        .enumerate()
        .rev()
        .filter(|&(i, &b)| b == b'/' && i <= 155 && i > 0)
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(_, name)| !name.is_empty() && name.len() <= 100)
}

/// PAX records `"<length> <key>=<value>\n"`, where the length counts the whole record,
/// its own digits included.
fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut length = rest + 1;
        while length != rest + length.to_string().len() {
            length = rest + length.to_string().len();
        }
        out.extend_from_slice(length.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn ustar_header(
    prefix: &[u8],
    name: &[u8],
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &[u8],
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[157..157 + linkname.len()].copy_from_slice(linkname);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname and gname stay empty.
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    // The checksum is computed with its own field as eight spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}");
    h[148..154].copy_from_slice(digits.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

/// Zero-padded octal digits filling `field` but its last byte, which is NUL. Callers
/// keep values within the field.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    let digits = digits.as_bytes();
    let start = digits.len().saturating_sub(width);
    field[..width].copy_from_slice(&digits[start..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small archive with every kind of entry.
    fn sample() -> Vec<u8> {
        let mut tar = TarWriter::new(Vec::new());
        tar.directory("production", 0o755, 1_700_000_000).unwrap();
        tar.directory("production/manifests", 0o755, 1_700_000_000)
            .unwrap();
        let mut f = tar
            .file("production/manifests/site.pp", 0o644, 11, 1_700_000_000)
            .unwrap();
        f.write_all(b"node df {}\n").unwrap();
        f.finish().unwrap();
        let mut f = tar
            .file("production/run.sh", 0o755, 0, 1_700_000_000)
            .unwrap();
        f.write_all(b"").unwrap();
        f.finish().unwrap();
        tar.symlink("production/site", "manifests", 1_700_000_000)
            .unwrap();
        tar.finish().unwrap()
    }

    fn field(h: &[u8], range: std::ops::Range<usize>) -> &[u8] {
        let f = &h[range];
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        &f[..end]
    }

    #[test]
    fn same_entries_give_the_same_bytes() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn headers_have_fixed_owner_modes_and_no_names() {
        let bytes = sample();
        // Entries: 2 dirs, file header + 1 data block, empty file, symlink, 2 end blocks.
        assert_eq!(bytes.len(), 8 * BLOCK);
        let headers = [0, 1, 2, 4, 5].map(|i| &bytes[i * BLOCK..(i + 1) * BLOCK]);
        let names: Vec<&[u8]> = headers.iter().map(|h| field(h, 0..100)).collect();
        assert_eq!(
            names,
            [
                &b"production/"[..],
                b"production/manifests/",
                b"production/manifests/site.pp",
                b"production/run.sh",
                b"production/site"
            ]
        );
        let modes: Vec<&[u8]> = headers.iter().map(|h| field(h, 100..108)).collect();
        assert_eq!(
            modes,
            [
                &b"0000755"[..],
                b"0000755",
                b"0000644",
                b"0000755",
                b"0000777"
            ]
        );
        for h in headers {
            assert_eq!(field(h, 108..116), b"0000000", "uid");
            assert_eq!(field(h, 116..124), b"0000000", "gid");
            assert_eq!(field(h, 136..148), b"14524770400", "mtime 1700000000");
            assert_eq!(field(h, 265..297), b"", "uname");
            assert_eq!(field(h, 297..329), b"", "gname");
            assert_eq!(&h[257..265], b"ustar\x0000");
        }
        let flags: Vec<u8> = headers.iter().map(|h| h[156]).collect();
        assert_eq!(flags, b"55002");
        assert_eq!(field(headers[4], 157..257), b"manifests");
        assert_eq!(field(headers[2], 124..136), b"00000000013");
        assert_eq!(&bytes[3 * BLOCK..3 * BLOCK + 11], b"node df {}\n");
        assert!(bytes[6 * BLOCK..].iter().all(|&b| b == 0));
    }

    #[test]
    fn checksums_match_the_standard_definition() {
        let bytes = sample();
        let h = &bytes[..BLOCK];
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        let stored = std::str::from_utf8(field(h, 148..154)).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
    }

    #[test]
    fn long_paths_use_the_ustar_prefix_then_pax() {
        // 150 bytes: fits as prefix + name, no PAX header.
        let dir = "d".repeat(80);
        let path = format!("env/{dir}/{}", "f".repeat(65));
        let mut tar = TarWriter::new(Vec::new());
        tar.file(&path, 0o644, 0, 0).unwrap().finish().unwrap();
        let bytes = tar.finish().unwrap();
        assert_eq!(bytes.len(), 3 * BLOCK);
        assert_eq!(field(&bytes, 345..500), format!("env/{dir}").as_bytes());
        assert_eq!(field(&bytes, 0..100), "f".repeat(65).as_bytes());

        // A 120-byte file name cannot be split: PAX path record.
        let path = format!("env/{}", "n".repeat(120));
        let target = format!("../{}", "t".repeat(150));
        let mut tar = TarWriter::new(Vec::new());
        tar.symlink(&path, &target, 0).unwrap();
        let bytes = tar.finish().unwrap();
        assert_eq!(bytes[156], b'x');
        assert_eq!(field(&bytes, 0..100), PAX_HEADER_NAME);
        let records_len: usize =
            usize::from_str_radix(std::str::from_utf8(field(&bytes, 124..136)).unwrap(), 8)
                .unwrap();
        let records = std::str::from_utf8(&bytes[BLOCK..BLOCK + records_len]).unwrap();
        assert_eq!(records, format!("134 path={path}\n167 linkpath={target}\n"));
        for record in records.lines() {
            let (len, _) = record.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), record.len() + 1);
        }
        let entry = &bytes[2 * BLOCK..3 * BLOCK];
        assert_eq!(entry[156], b'2');
        assert_eq!(field(entry, 0..100), &path.as_bytes()[..100]);
    }

    #[test]
    fn long_paths_read_back_with_an_independent_reader() {
        let long_dir = format!("env/{}", "x".repeat(200));
        let long_file = format!("{long_dir}/{}", "y".repeat(150));
        let mut tar = TarWriter::new(Vec::new());
        tar.directory("env", 0o755, 5).unwrap();
        tar.directory(&long_dir, 0o755, 5).unwrap();
        let mut f = tar.file(&long_file, 0o755, 3, 5).unwrap();
        f.write_all(b"abc").unwrap();
        f.finish().unwrap();
        tar.symlink("env/l", &"z/".repeat(80), 5).unwrap();
        let bytes = tar.finish().unwrap();

        let mut archive = ::tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let header = entry.header();
            let mode = header.mode().unwrap();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            assert_eq!(header.mtime().unwrap(), 5);
            assert_eq!(header.uid().unwrap(), 0);
            let mut content = String::new();
            io::Read::read_to_string(&mut entry, &mut content).unwrap();
            seen.push((path, mode, link, content));
        }
        assert_eq!(
            seen,
            [
                ("env/".to_string(), 0o755, None, String::new()),
                (format!("{long_dir}/"), 0o755, None, String::new()),
                (long_file.clone(), 0o755, None, "abc".to_string()),
                (
                    "env/l".to_string(),
                    0o777,
                    Some("z/".repeat(80)),
                    String::new()
                ),
            ]
        );
    }

    #[test]
    fn wrong_sizes_and_bad_paths_are_errors() {
        let mut tar = TarWriter::new(Vec::new());
        let mut f = tar.file("a", 0o644, 4, 0).unwrap();
        f.write_all(b"ab").unwrap();
        assert!(matches!(
            f.finish(),
            Err(TarError::SizeMismatch {
                declared: 4,
                written: 2,
                ..
            })
        ));
        let mut f = tar.file("b", 0o644, 1, 0).unwrap();
        assert!(f.write_all(b"ab").is_err());
        for bad in ["", "/abs", "a/../b", "a//b", "a/", "nul\0"] {
            assert!(
                matches!(
                    tar.directory(bad, 0o755, 0),
                    Err(TarError::InvalidPath { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(tar.symlink("s", "", 0).is_err());
    }

    #[test]
    fn times_outside_the_field_are_clamped() {
        let mut tar = TarWriter::new(Vec::new());
        tar.directory("old", 0o755, -5).unwrap();
        tar.directory("far", 0o755, i64::MAX).unwrap();
        let bytes = tar.finish().unwrap();
        assert_eq!(field(&bytes, 136..148), b"00000000000");
        assert_eq!(field(&bytes[BLOCK..], 136..148), b"77777777777");
    }

    #[test]
    fn pax_lengths_cross_digit_boundaries() {
        // 9 + 1-digit length would be 10: the length needs two digits.
        for value_len in 0..200 {
            let value = vec![b'v'; value_len];
            let records = pax_records(&[("path", &value)]);
            let text = std::str::from_utf8(&records).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), records.len(), "{value_len}");
        }
    }
}
