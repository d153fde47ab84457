//! Git credentials from a mounted secret directory (one file per key, as Kubernetes
//! mounts a Secret).
//!
//! | key | used for |
//! |---|---|
//! | `username` + `password` | https basic auth (a token usually goes into `password`) |
//! | `bearerToken` | https `Authorization: Bearer` header |
//! | `identity` | ssh private key (unencrypted; OpenSSH or PEM format) |
//! | `known_hosts` | ssh host keys, checked strictly; required with `identity` |
//! | `ca.crt` | extra PEM CA certificates trusted for https (git and Forge) |
//!
//! Other files in the directory are ignored. Values of `username`, `password` and
//! `bearerToken` lose one trailing newline (secrets made with `echo` have one).
//! Credentials never appear in `Debug` output, logs or errors.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest credential file read (a key, a known_hosts or a CA bundle).
const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// A secret directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("secret directory {dir}: {source}")]
    Directory {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("secret key {key:?} in {dir}: {reason}")]
    Key {
        dir: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("secret {dir}: {reason}")]
    Combination { dir: PathBuf, reason: String },
}

/// A string that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for handing to the transport. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// https authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAuth {
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

/// ssh authentication: a private key and the host keys to trust.
#[derive(Clone, PartialEq, Eq)]
pub struct SshAuth {
    pub identity: Secret,
    pub known_hosts: String,
}

impl fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshAuth")
            .field("identity", &"***")
            .field("known_hosts_lines", &self.known_hosts.lines().count())
            .finish()
    }
}

/// Everything the secret directory provides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub http: Option<HttpAuth>,
    pub ssh: Option<SshAuth>,
    /// Extra trusted CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
}

impl Credentials {
    /// No credentials: anonymous access, system CA roots.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads the documented keys from `dir`.
    pub fn from_secret_dir(dir: &Path) -> Result<Self, CredentialsError> {
        let meta = std::fs::metadata(dir).map_err(|source| CredentialsError::Directory {
            dir: dir.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(CredentialsError::Directory {
                dir: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let username = read_key(dir, "username", true)?;
        let password = read_key(dir, "password", true)?;
        let bearer = read_key(dir, "bearerToken", true)?;
        let identity = read_key(dir, "identity", false)?;
        let known_hosts = read_key(dir, "known_hosts", false)?;
        let ca = read_key(dir, "ca.crt", false)?;
        let combination = |reason: &str| CredentialsError::Combination {
            dir: dir.to_owned(),
            reason: reason.to_owned(),
        };

        let http = match (username, password, bearer) {
            (None, None, None) => None,
            (Some(username), Some(password), None) => Some(HttpAuth::Basic {
                username,
                password: Secret(password),
            }),
            (None, None, Some(token)) => Some(HttpAuth::Bearer(Secret(token))),
            (_, _, Some(_)) => {
                return Err(combination(
                    "give either username + password or bearerToken, not both",
                ));
            }
            (Some(_), None, None) => return Err(combination("username without password")),
            (None, Some(_), None) => return Err(combination("password without username")),
        };
        if let Some(HttpAuth::Basic { username, password }) = &http {
            if username.contains(':') || username.contains('\n') {
                return Err(combination("username must not contain ':' or a newline"));
            }
            if password.0.contains('\n') || password.0.is_empty() {
                return Err(combination("password must be one non-empty line"));
            }
        }
        if let Some(HttpAuth::Bearer(token)) = &http
            && (token.0.is_empty() || token.0.contains(['\n', '\r']))
        {
            return Err(combination("bearerToken must be one non-empty line"));
        }
        let ssh = match (identity, known_hosts) {
            (None, None) => None,
            (Some(identity), Some(known_hosts)) => {
                if !identity.contains("PRIVATE KEY") {
                    return Err(CredentialsError::Key {
                        dir: dir.to_owned(),
                        key: "identity",
                        reason: "is not a private key (no PRIVATE KEY block)".into(),
                    });
                }
                if identity.contains("ENCRYPTED") || identity.contains("Proc-Type: 4,ENCRYPTED") {
                    return Err(CredentialsError::Key {
                        dir: dir.to_owned(),
                        key: "identity",
                        reason: "is encrypted; give an unencrypted deploy key".into(),
                    });
                }
                if known_hosts.trim().is_empty() {
                    return Err(CredentialsError::Key {
                        dir: dir.to_owned(),
                        key: "known_hosts",
                        reason: "is empty; the server's host key must be known".into(),
                    });
                }
                let identity = if identity.ends_with('\n') {
                    identity
                } else {
                    identity + "\n"
                };
                Some(SshAuth {
                    identity: Secret(identity),
                    known_hosts,
                })
            }
            (Some(_), None) => {
                return Err(combination(
                    "identity without known_hosts: ssh host keys are always checked",
                ));
            }
            (None, Some(known_hosts)) => Some(SshAuth {
                identity: Secret(String::new()),
                known_hosts,
            }),
        };
        let ca_pem = match ca {
            None => None,
            Some(pem) => {
                if !pem.contains("BEGIN CERTIFICATE") {
                    return Err(CredentialsError::Key {
                        dir: dir.to_owned(),
                        key: "ca.crt",
                        reason: "has no PEM certificate".into(),
                    });
                }
                Some(pem.into_bytes())
            }
        };
        Ok(Self { http, ssh, ca_pem })
    }

    /// The secret values, for redacting them from any text that might echo them.
    /// Includes the base64 form of `username:password`, as sent in a basic auth header.
    pub fn secret_values(&self) -> Vec<String> {
        use base64::Engine as _;
        let mut out = Vec::new();
        match &self.http {
            Some(HttpAuth::Basic { username, password }) => {
                out.push(password.expose().to_owned());
                out.push(
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", password.expose())),
                );
            }
            Some(HttpAuth::Bearer(token)) => out.push(token.expose().to_owned()),
            None => {}
        }
        out
    }
}

fn read_key(
    dir: &Path,
    key: &'static str,
    trim_newline: bool,
) -> Result<Option<String>, CredentialsError> {
    let path = dir.join(key);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredentialsError::Key {
                dir: dir.to_owned(),
                key,
                reason: format!("cannot be read: {e}"),
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CredentialsError::Key {
            dir: dir.to_owned(),
            key,
            reason: format!("cannot be read: {e}"),
        })?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(CredentialsError::Key {
            dir: dir.to_owned(),
            key,
            reason: "is larger than 1 MiB".into(),
        });
    }
    let mut text = String::from_utf8(bytes).map_err(|_| CredentialsError::Key {
        dir: dir.to_owned(),
        key,
        reason: "is not UTF-8 text".into(),
    })?;
    if trim_newline {
        if text.ends_with('\n') {
            text.pop();
        }
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in files {
            std::fs::write(dir.path().join(k), v).unwrap();
        }
        dir
    }

    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----";

    #[test]
    fn secret_directories_are_read_by_documented_keys() {
        let d = dir_with(&[
            ("username", "deploy\n"),
            ("password", "hunter22\n"),
            ("other", "x"),
        ]);
        let c = Credentials::from_secret_dir(d.path()).unwrap();
        assert_eq!(
            c.http,
            Some(HttpAuth::Basic {
                username: "deploy".into(),
                password: Secret::new("hunter22")
            })
        );
        assert_eq!(c.secret_values(), ["hunter22", "ZGVwbG95Omh1bnRlcjIy"]);

        let d = dir_with(&[("bearerToken", "tok-123")]);
        let c = Credentials::from_secret_dir(d.path()).unwrap();
        assert_eq!(c.http, Some(HttpAuth::Bearer(Secret::new("tok-123"))));

        let d = dir_with(&[
            ("identity", KEY),
            ("known_hosts", "h ssh-ed25519 AAAA\n"),
            ("ca.crt", "-----BEGIN CERTIFICATE-----\n"),
        ]);
        let c = Credentials::from_secret_dir(d.path()).unwrap();
        let ssh = c.ssh.unwrap();
        assert!(ssh.identity.expose().ends_with('\n'));
        assert!(c.ca_pem.is_some());
        assert!(c.http.is_none());
    }

    #[test]
    fn bad_combinations_are_refused_without_echoing_secrets() {
        let cases: &[&[(&str, &str)]] = &[
            &[("username", "u")],
            &[("password", "topsecret")],
            &[
                ("username", "u"),
                ("password", "topsecret"),
                ("bearerToken", "topsecret2"),
            ],
            &[("identity", KEY)],
            &[("identity", "topsecret"), ("known_hosts", "h k")],
            &[("identity", KEY), ("known_hosts", "  \n")],
            &[("ca.crt", "topsecret")],
            &[("bearerToken", "")],
            &[("username", "u"), ("password", "a\nb")],
        ];
        for files in cases {
            let d = dir_with(files);
            let e = Credentials::from_secret_dir(d.path()).expect_err(&format!("{files:?}"));
            assert!(!e.to_string().contains("topsecret"), "{e}");
        }
        let missing = Credentials::from_secret_dir(Path::new("/nonexistent/secret"));
        assert!(matches!(missing, Err(CredentialsError::Directory { .. })));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Credentials {
            http: Some(HttpAuth::Basic {
                username: "u".into(),
                password: Secret::new("hunter22"),
            }),
            ssh: Some(SshAuth {
                identity: Secret::new(KEY),
                known_hosts: "h k".into(),
            }),
            ca_pem: None,
        };
        let text = format!("{c:?}");
        assert!(!text.contains("hunter22"), "{text}");
        assert!(!text.contains("abc"), "{text}");
    }
}
