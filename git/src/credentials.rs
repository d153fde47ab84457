//! Git credentials from a mounted secret directory (one file per key, as Kubernetes
//! mounts a Secret; the worker) or from a Secret's data read through the API (the
//! controller, which keeps secrets off the disk except the ssh files `ssh` must read).
//!
//! | key | used for |
//! |---|---|
//! | `username` + `password` | https basic auth (a token usually goes into `password`) |
//! | `bearerToken` | https `Authorization: Bearer` header |
//! | `identity` | ssh private key (unencrypted; OpenSSH or PEM format) |
//! | `known_hosts` | ssh host keys, checked strictly; required with `identity` |
//! | `ca.crt` | extra PEM CA certificates trusted for https (git and Forge) |
//!
//! Other keys are ignored. Values of `username`, `password` and `bearerToken` lose one
//! trailing newline (secrets made with `echo` have one).
//! Credentials never appear in `Debug` output, logs or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest credential file read (a key, a known_hosts or a CA bundle).
const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Secret data (a directory or a Secret's data) that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("secret directory {dir}: {source}")]
    Directory {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// `secret` names where the key came from: the directory, or "the Secret".
    #[error("secret key {key:?} in {secret}: {reason}")]
    Key {
        secret: String,
        key: &'static str,
        reason: String,
    },
    #[error("secret {secret}: {reason}")]
    Combination { secret: String, reason: String },
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
        let secret = dir.display().to_string();
        Self::from_keys(&secret, |key, trim| read_key(dir, &secret, key, trim))
    }

    /// Reads the documented keys from a Secret's `data` (as the API returns it), with the
    /// same rules as [`Credentials::from_secret_dir`].
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CredentialsError> {
        let secret = "the Secret";
        Self::from_keys(secret, |key, trim| match data.get(key) {
            None => Ok(None),
            Some(bytes) => value_text(bytes.clone(), secret, key, trim).map(Some),
        })
    }

    /// Checks the values `read(key, trim_newline)` gives for the documented keys.
    fn from_keys(
        secret: &str,
        mut read: impl FnMut(&'static str, bool) -> Result<Option<String>, CredentialsError>,
    ) -> Result<Self, CredentialsError> {
        let username = read("username", true)?;
        let password = read("password", true)?;
        let bearer = read("bearerToken", true)?;
        let identity = read("identity", false)?;
        let known_hosts = read("known_hosts", false)?;
        let ca = read("ca.crt", false)?;
        let combination = |reason: &str| CredentialsError::Combination {
            secret: secret.to_owned(),
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
                        secret: secret.to_owned(),
                        key: "identity",
                        reason: "is not a private key (no PRIVATE KEY block)".into(),
                    });
                }
                if identity.contains("ENCRYPTED") || identity.contains("Proc-Type: 4,ENCRYPTED") {
                    return Err(CredentialsError::Key {
                        secret: secret.to_owned(),
                        key: "identity",
                        reason: "is encrypted; give an unencrypted deploy key".into(),
                    });
                }
                if known_hosts.trim().is_empty() {
                    return Err(CredentialsError::Key {
                        secret: secret.to_owned(),
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
                        secret: secret.to_owned(),
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
        let mut out = Vec::new();
        match &self.http {
            Some(HttpAuth::Basic { username, password }) => {
                out.push(password.expose().to_owned());
                out.push(basic_auth_token(username, password));
            }
            Some(HttpAuth::Bearer(token)) => out.push(token.expose().to_owned()),
            None => {}
        }
        out
    }
}

/// The token of an `Authorization: Basic` header: standard base64 of `username:password`.
pub(crate) fn basic_auth_token(username: &str, password: &Secret) -> String {
    base64_standard(format!("{username}:{}", password.expose()).as_bytes())
}

fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn read_key(
    dir: &Path,
    secret: &str,
    key: &'static str,
    trim_newline: bool,
) -> Result<Option<String>, CredentialsError> {
    let unreadable = |e: std::io::Error| CredentialsError::Key {
        secret: secret.to_owned(),
        key,
        reason: format!("cannot be read: {e}"),
    };
    let file = match std::fs::File::open(dir.join(key)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    value_text(bytes, secret, key, trim_newline).map(Some)
}

/// A key's value as text: bounded, UTF-8, and for one-line values without the trailing
/// newline.
fn value_text(
    bytes: Vec<u8>,
    secret: &str,
    key: &'static str,
    trim_newline: bool,
) -> Result<String, CredentialsError> {
    let refuse = |reason: &str| CredentialsError::Key {
        secret: secret.to_owned(),
        key,
        reason: reason.to_owned(),
    };
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(refuse("is larger than 1 MiB"));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| refuse("is not UTF-8 text"))?;
    if trim_newline {
        if text.ends_with('\n') {
            text.pop();
        }
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
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
    fn secret_data_follows_the_directory_rules() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let c = Credentials::from_secret_data(&data(&[
            ("username", "deploy\n"),
            ("password", "hunter22\n"),
            ("other", "x"),
        ]))
        .unwrap();
        assert_eq!(
            c.http,
            Some(HttpAuth::Basic {
                username: "deploy".into(),
                password: Secret::new("hunter22")
            })
        );
        assert_eq!(
            Credentials::from_secret_data(&BTreeMap::new()).unwrap(),
            Credentials::none()
        );
        let e = Credentials::from_secret_data(&data(&[("ca.crt", "topsecret")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret key \"ca.crt\" in the Secret: has no PEM certificate"
        );
        let e = Credentials::from_secret_data(&data(&[("password", "topsecret")])).unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64_standard(plain.as_bytes()), encoded);
        }
        assert_eq!(
            basic_auth_token("deploy", &Secret::new("hunter22")),
            "ZGVwbG95Omh1bnRlcjIy"
        );
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
