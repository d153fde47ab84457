//! Forge modules through the Forge v3 API: release lookup (`/v3/releases/<slug>-<version>`,
//! or `/v3/modules/<slug>` for the current release), download of `file_uri`, SHA-256 check
//! against `file_sha256`, and unpacking with the top directory stripped.
//!
//! A download is written to a temporary file and hashed while it arrives; it is unpacked
//! only after the checksum matched. Unpacking refuses absolute paths, `..`, entries
//! below symlinks, device files and archives with more than one top directory, and
//! enforces the module size and file limits.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::limits::{Bytes, Limits};
use crate::tree::{LocalDir, LocalEntry, LocalKind};

/// A Forge lookup or download that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgeError {
    #[error("Forge {base}: {what}: {message}")]
    Http {
        base: String,
        what: String,
        message: String,
    },
    #[error("Forge {base} has no {what}")]
    NotFound { base: String, what: String },
    #[error("Forge {base}: {what}: unexpected answer: {message}")]
    BadAnswer {
        base: String,
        what: String,
        message: String,
    },
    #[error(
        "Forge release {release}: checksum mismatch (Forge says sha256:{expected}, download has sha256:{actual})"
    )]
    Checksum {
        release: String,
        expected: String,
        actual: String,
    },
    #[error("Forge release {release}: download is larger than {} (limit)", Bytes(*limit))]
    DownloadTooLarge { release: String, limit: u64 },
    #[error("Forge release {release}: archive: {message}")]
    Archive { release: String, message: String },
    #[error("Forge release {release}: {message}")]
    Local { release: String, message: String },
}

/// A release picked on the Forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeRelease {
    /// `author-name`.
    pub slug: String,
    pub version: String,
    /// Download URL.
    pub file_url: String,
    /// Hex SHA-256 of the release tarball, from the Forge.
    pub sha256: String,
}

impl ForgeRelease {
    /// `author-name-version`.
    pub fn release_name(&self) -> String {
        format!("{}-{}", self.slug, self.version)
    }
}

/// An unpacked release: its files on disk and their list.
#[derive(Debug, Clone)]
pub struct UnpackedRelease {
    pub release: ForgeRelease,
    pub dir: Arc<LocalDir>,
    pub entries: Arc<Vec<LocalEntry>>,
    /// Bytes downloaded (compressed).
    pub downloaded: u64,
}

#[derive(Debug, serde::Deserialize)]
struct ReleaseJson {
    version: String,
    file_uri: String,
    #[serde(default)]
    file_sha256: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ModuleJson {
    current_release: Option<ReleaseJson>,
}

/// A Forge v3 client.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    http: reqwest::Client,
    limits: Limits,
    work_dir: std::path::PathBuf,
}

impl ForgeClient {
    /// A client with `timeout` per request, trusting the system roots plus `ca_pem`.
    /// Downloads are unpacked below `work_dir`.
    pub fn new(
        timeout: Duration,
        ca_pem: Option<&[u8]>,
        limits: Limits,
        work_dir: &Path,
    ) -> Result<Self, ForgeError> {
        crate::git::install_tls_provider();
        let local = |message: String| ForgeError::Local {
            release: "client".into(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .user_agent(format!("openvox-code/{}", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(10));
        if let Some(pem) = ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| local(format!("ca.crt: {e}")))?;
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder
            .build()
            .map_err(|e| local(crate::git::error_chain(&e)))?;
        Ok(Self {
            http,
            limits,
            work_dir: work_dir.to_owned(),
        })
    }

    /// Looks up a release: `version` exact, or the current release when `None`.
    pub async fn release(
        &self,
        base: &str,
        slug: &str,
        version: Option<&str>,
    ) -> Result<ForgeRelease, ForgeError> {
        let base = base.trim_end_matches('/');
        let (url, what) = match version {
            Some(v) => (
                format!("{base}/v3/releases/{slug}-{v}"),
                format!("release {slug} {v}"),
            ),
            None => (
                format!("{base}/v3/modules/{slug}"),
                format!("module {slug}"),
            ),
        };
        let body = self.get_json(base, &url, &what).await?;
        let bad = |message: String| ForgeError::BadAnswer {
            base: base.to_owned(),
            what: what.clone(),
            message,
        };
        let release: ReleaseJson = match version {
            Some(_) => serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?,
            None => serde_json::from_slice::<ModuleJson>(&body)
                .map_err(|e| bad(e.to_string()))?
                .current_release
                .ok_or_else(|| bad("the module has no current release".into()))?,
        };
        if let Some(v) = version
            && release.version != v
        {
            return Err(bad(format!(
                "asked for version {v}, got {}",
                release.version
            )));
        }
        let sha256 = release
            .file_sha256
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                bad("no file_sha256 (openvox-code does not install unverified downloads)".into())
            })?
            .to_ascii_lowercase();
        let file_url = if release.file_uri.starts_with("https://")
            || release.file_uri.starts_with("http://")
        {
            release.file_uri
        } else if release.file_uri.starts_with('/') {
            format!("{base}{}", release.file_uri)
        } else {
            return Err(bad(format!(
                "file_uri {:?} is neither a path nor a URL",
                release.file_uri
            )));
        };
        Ok(ForgeRelease {
            slug: slug.to_owned(),
            version: release.version,
            file_url,
            sha256,
        })
    }

    async fn get_json(&self, base: &str, url: &str, what: &str) -> Result<Vec<u8>, ForgeError> {
        let http_error = |message: String| ForgeError::Http {
            base: base.to_owned(),
            what: what.to_owned(),
            message,
        };
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| http_error(crate::git::error_chain(&e)))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(ForgeError::NotFound {
                base: base.to_owned(),
                what: what.to_owned(),
            });
        }
        if !response.status().is_success() {
            return Err(http_error(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| http_error(crate::git::error_chain(&e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > self.limits.max_api_response_bytes {
                return Err(http_error(format!(
                    "answer larger than {}",
                    Bytes(self.limits.max_api_response_bytes)
                )));
            }
        }
        Ok(body)
    }

    /// Downloads `release`, checks its SHA-256 and unpacks it into a new temporary
    /// directory.
    pub async fn download(&self, release: &ForgeRelease) -> Result<UnpackedRelease, ForgeError> {
        let name = release.release_name();
        let local = |message: String| ForgeError::Local {
            release: name.clone(),
            message,
        };
        let http_error = |message: String| ForgeError::Http {
            base: release.file_url.clone(),
            what: format!("download of {name}"),
            message,
        };
        let tarball = tempfile::Builder::new()
            .prefix("forge-download-")
            .tempfile_in(&self.work_dir)
            .map_err(|e| local(format!("temporary file: {e}")))?;
        let mut response = self
            .http
            .get(&release.file_url)
            .send()
            .await
            .map_err(|e| http_error(crate::git::error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(http_error(format!("HTTP {}", response.status())));
        }
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut file = tarball.as_file();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| http_error(crate::git::error_chain(&e)))?
        {
            size += chunk.len() as u64;
            if size > self.limits.max_download_bytes {
                return Err(ForgeError::DownloadTooLarge {
                    release: name,
                    limit: self.limits.max_download_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .map_err(|e| local(format!("writing download: {e}")))?;
        }
        let actual = hex(&hasher.finalize());
        if actual != release.sha256 {
            return Err(ForgeError::Checksum {
                release: name,
                expected: release.sha256.clone(),
                actual,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("forge-module-")
            .tempdir_in(&self.work_dir)
            .map_err(|e| local(format!("temporary directory: {e}")))?;
        let limits = self.limits;
        let release_name = name.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(tarball.path()).map_err(|e| e.to_string())?;
            let entries =
                unpack_release(file, dir.path(), &limits).map_err(|message| ForgeError::Archive {
                    release: release_name.clone(),
                    message,
                });
            drop(tarball);
            Ok::<_, String>((entries, dir))
        })
        .await
        .map_err(|e| local(format!("unpacking stopped: {e}")))?
        .map_err(local)?;
        let (entries, dir) = unpacked;
        Ok(UnpackedRelease {
            release: release.clone(),
            dir: Arc::new(LocalDir::temporary(dir)),
            entries: Arc::new(entries?),
            downloaded: size,
        })
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Unpacks a gzip-compressed release tarball into `dest`, dropping its single top
/// directory. Returns the entries in archive order.
pub fn unpack_release(
    tarball: impl Read,
    dest: &Path,
    limits: &Limits,
) -> Result<Vec<LocalEntry>, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    let mut top: Option<String> = None;
    let mut kinds: BTreeMap<String, LocalKind> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut total = 0u64;
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let entry_type = entry.header().entry_type();
        if matches!(
            entry_type,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        let raw_path = entry.path_bytes().into_owned();
        let raw =
            String::from_utf8(raw_path).map_err(|_| "an entry path is not UTF-8".to_owned())?;
        if raw.starts_with('/') {
            return Err(format!("entry {raw:?} has an absolute path"));
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(format!("entry {raw:?} contains '..'")),
                p if p.eq_ignore_ascii_case(".git") => {
                    return Err(format!("entry {raw:?} has a .git component"));
                }
                p if p.contains('\0') || p.contains('\\') => {
                    return Err(format!("entry {raw:?} has an invalid component"));
                }
                // Refused by name rather than by the file system's "File name too long".
                p if p.len() > crate::tree::MAX_NAME_BYTES => {
                    return Err(format!(
                        "entry {raw:?} has a component longer than {} bytes",
                        crate::tree::MAX_NAME_BYTES
                    ));
                }
                p => parts.push(p),
            }
        }
        let Some((first, rest)) = parts.split_first() else {
            continue;
        };
        match &top {
            None => top = Some((*first).to_owned()),
            Some(t) if t == first => {}
            Some(t) => return Err(format!("more than one top directory ({t:?} and {first:?})")),
        }
        if rest.is_empty() {
            if !entry_type.is_dir() {
                return Err(format!("top-level entry {raw:?} is not a directory"));
            }
            continue;
        }
        let path = rest.join("/");
        if kinds.contains_key(&path) {
            return Err(format!("entry {path:?} appears twice"));
        }
        // Parents must be directories we made; create missing ones.
        let mut parent = String::new();
        for part in &rest[..rest.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match kinds.get(&parent) {
                Some(LocalKind::Directory) => {}
                Some(_) => {
                    return Err(format!(
                        "entry {path:?} lies below {parent:?}, which is not a directory"
                    ));
                }
                None => {
                    std::fs::create_dir(dest.join(&parent))
                        .map_err(|e| format!("{parent}: {e}"))?;
                    kinds.insert(parent.clone(), LocalKind::Directory);
                    order.push(parent.clone());
                }
            }
        }
        if order.len() as u64 >= limits.max_module_files {
            return Err(format!(
                "more than {} entries (limit)",
                limits.max_module_files
            ));
        }
        let target = dest.join(&path);
        let kind = match entry_type {
            tar::EntryType::Directory => {
                std::fs::create_dir(&target).map_err(|e| format!("{path}: {e}"))?;
                LocalKind::Directory
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => {
                let executable = entry.header().mode().map_err(|e| e.to_string())? & 0o111 != 0;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if executable { 0o755 } else { 0o644 })
                    .open(&target)
                    .map_err(|e| format!("{path}: {e}"))?;
                let size = if entry_type == tar::EntryType::Link {
                    let link = entry
                        .link_name_bytes()
                        .map(|l| String::from_utf8_lossy(&l).into_owned())
                        .ok_or_else(|| format!("hard link {path:?} has no target"))?;
                    let source = strip_top(&link, top.as_deref())
                        .filter(|s| matches!(kinds.get(s), Some(LocalKind::File { .. })))
                        .ok_or_else(|| format!("hard link {path:?} -> {link:?} does not name an earlier file of the release"))?;
                    let mut from = std::fs::File::open(dest.join(&source))
                        .map_err(|e| format!("{source}: {e}"))?;
                    std::io::copy(&mut from, &mut file).map_err(|e| format!("{path}: {e}"))?
                } else {
                    let declared = entry.header().size().map_err(|e| e.to_string())?;
                    if declared > limits.max_file_bytes {
                        return Err(format!(
                            "file {path:?} has {} (limit {})",
                            Bytes(declared),
                            Bytes(limits.max_file_bytes)
                        ));
                    }
                    std::io::copy(&mut (&mut entry).take(limits.max_file_bytes + 1), &mut file)
                        .map_err(|e| format!("{path}: {e}"))?
                };
                total += size;
                if total > limits.max_module_bytes {
                    return Err(format!(
                        "unpacked files add up to more than {} (limit)",
                        Bytes(limits.max_module_bytes)
                    ));
                }
                file.set_permissions(std::fs::Permissions::from_mode(if executable {
                    0o755
                } else {
                    0o644
                }))
                .map_err(|e| format!("{path}: {e}"))?;
                LocalKind::File { executable, size }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| format!("symlink {path:?} has no target"))?;
                let link = String::from_utf8(link.into_owned())
                    .map_err(|_| format!("symlink {path:?} target is not UTF-8"))?;
                // Containment is checked on the whole environment later; an absolute
                // target can be refused right away.
                if link.is_empty() || link.starts_with('/') {
                    return Err(format!(
                        "symlink {path:?} -> {link:?} points outside the module"
                    ));
                }
                std::os::unix::fs::symlink(&link, &target).map_err(|e| format!("{path}: {e}"))?;
                LocalKind::Symlink { target: link }
            }
            other => return Err(format!("entry {path:?} has unsupported type {other:?}")),
        };
        kinds.insert(path.clone(), kind);
        order.push(path);
    }
    if top.is_none() {
        return Err("the archive is empty".into());
    }
    Ok(order
        .into_iter()
        .filter_map(|path| {
            kinds
                .get(&path)
                .cloned()
                .map(|kind| LocalEntry { path, kind })
        })
        .collect())
}

fn strip_top(link: &str, top: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = link
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    match (parts.split_first(), top) {
        (Some((first, rest)), Some(top))
            if *first == top && !rest.is_empty() && !rest.contains(&"..") =>
        {
            Some(rest.join("/"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a .tar.gz with raw header control, so hostile names can be written.
    /// Path, type, content and link target of one archive entry.
    type RawEntry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);

    fn tarball(entries: &[RawEntry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
            // Bypass the builder's path checks to produce what a hostile archive holds.
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                let l = link.as_bytes();
                header.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    const F: tar::EntryType = tar::EntryType::Regular;
    const D: tar::EntryType = tar::EntryType::Directory;
    const L: tar::EntryType = tar::EntryType::Symlink;
    const H: tar::EntryType = tar::EntryType::Link;

    #[test]
    fn releases_are_unpacked_without_their_top_directory() {
        let data = tarball(&[
            ("puppetlabs-x-1.0.0/", D, b"", None),
            (
                "puppetlabs-x-1.0.0/manifests/init.pp",
                F,
                b"class x {}",
                None,
            ),
            ("puppetlabs-x-1.0.0/files/run.sh", F, b"#!/bin/sh", None),
            ("puppetlabs-x-1.0.0/files/link", L, b"", Some("run.sh")),
            (
                "puppetlabs-x-1.0.0/files/copy",
                H,
                b"",
                Some("puppetlabs-x-1.0.0/files/run.sh"),
            ),
            ("./puppetlabs-x-1.0.0/metadata.json", F, b"{}", None),
        ]);
        let dest = tempfile::tempdir().unwrap();
        let entries = unpack_release(&data[..], dest.path(), &Limits::default()).unwrap();
        let got: Vec<(&str, &LocalKind)> =
            entries.iter().map(|e| (e.path.as_str(), &e.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("manifests", &LocalKind::Directory),
                (
                    "manifests/init.pp",
                    &LocalKind::File {
                        executable: false,
                        size: 10
                    }
                ),
                ("files", &LocalKind::Directory),
                (
                    "files/run.sh",
                    &LocalKind::File {
                        executable: true,
                        size: 9
                    }
                ),
                (
                    "files/link",
                    &LocalKind::Symlink {
                        target: "run.sh".into()
                    }
                ),
                (
                    "files/copy",
                    &LocalKind::File {
                        executable: false,
                        size: 9
                    }
                ),
                (
                    "metadata.json",
                    &LocalKind::File {
                        executable: false,
                        size: 2
                    }
                ),
            ]
        );
        assert_eq!(
            std::fs::read(dest.path().join("files/copy")).unwrap(),
            b"#!/bin/sh"
        );
    }

    #[test]
    fn hostile_archives_are_refused() {
        let cases: &[(&[RawEntry<'_>], &str)] = &[
            (&[("m/../../etc/passwd", F, b"x", None)], "'..'"),
            (&[("/etc/passwd", F, b"x", None)], "absolute"),
            (
                &[("m/a", F, b"x", None), ("n/b", F, b"x", None)],
                "more than one top directory",
            ),
            (&[("m/abs", L, b"", Some("/etc/passwd"))], "points outside"),
            (
                &[
                    ("m/link", L, b"", Some("../..")),
                    ("m/link/x", F, b"x", None),
                ],
                "not a directory",
            ),
            (
                &[("m/a", F, b"x", None), ("m/a", F, b"y", None)],
                "appears twice",
            ),
            (
                &[("m/dev", tar::EntryType::Char, b"", None)],
                "unsupported type",
            ),
            (&[("m/h", H, b"", Some("/etc/shadow"))], "earlier file"),
            (&[("m/.git/config", F, b"x", None)], ".git"),
            (&[("m", F, b"x", None)], "not a directory"),
            (&[], "empty"),
        ];
        for (entries, needle) in cases {
            let dest = tempfile::tempdir().unwrap();
            let err = unpack_release(&tarball(entries)[..], dest.path(), &Limits::default())
                .expect_err(needle);
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn unpack_limits_are_enforced() {
        let limits = Limits {
            max_module_files: 2,
            ..Limits::default()
        };
        let data = tarball(&[
            ("m/a", F, b"x", None),
            ("m/b", F, b"x", None),
            ("m/c", F, b"x", None),
        ]);
        let dest = tempfile::tempdir().unwrap();
        assert!(
            unpack_release(&data[..], dest.path(), &limits)
                .unwrap_err()
                .contains("entries")
        );

        let limits = Limits {
            max_module_bytes: 3,
            ..Limits::default()
        };
        let data = tarball(&[("m/a", F, b"xx", None), ("m/b", F, b"xx", None)]);
        let dest = tempfile::tempdir().unwrap();
        assert!(
            unpack_release(&data[..], dest.path(), &limits)
                .unwrap_err()
                .contains("add up")
        );

        let limits = Limits {
            max_file_bytes: 1,
            ..Limits::default()
        };
        let data = tarball(&[("m/a", F, b"xx", None)]);
        let dest = tempfile::tempdir().unwrap();
        assert!(
            unpack_release(&data[..], dest.path(), &limits)
                .unwrap_err()
                .contains("limit")
        );
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
