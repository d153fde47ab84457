//! Registry credentials from a Docker config (`kubernetes.io/dockerconfigjson` Secret,
//! mounted as `config.json`), turned into oci-client's [`RegistryAuth`].
//!
//! Per registry host, in this order: `identitytoken` (an OAuth2 refresh token, traded
//! at the registry's token endpoint for an access token with push and pull scope),
//! `registrytoken` (a bearer token used as it is), `auth` (base64 `user:password`) or
//! `username` + `password` (HTTP basic, or traded for a bearer token when the registry
//! asks for one; oci-client does that). The older `.dockercfg` shape (hosts at the top
//! level, without `auths`) is read too. Credential helpers (`credsStore`,
//! `credHelpers`) are not: a pod has none.
//!
//! No value read here is ever printed: errors name the file and the host only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

use crate::git::Secret;

/// Credentials that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("registry config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("registry {host}: {reason}")]
    Token { host: String, reason: String },
}

/// The credential for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: Secret },
    IdentityToken(Secret),
    RegistryToken(Secret),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(***)"),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(***)"),
        }
    }
}

/// Credentials by registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    hosts: BTreeMap<String, Credential>,
}

#[derive(serde::Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The host (and port) of a Docker config key: `https://index.docker.io/v1/`,
/// `registry.example.com:5000`, `http://r.example/v2/` all name a host. Docker Hub's
/// several names are one.
pub fn normalize_host(key: &str) -> String {
    let rest = key.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    let host = rest
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

impl DockerConfig {
    /// Reads a Docker config file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let error = |reason: String| AuthError::Config {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        if bytes.len() > 1024 * 1024 {
            return Err(error("larger than 1 MiB".into()));
        }
        Self::parse(&bytes).map_err(error)
    }

    /// Parses the JSON of a Docker config.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        // serde_json's messages quote no input values, only positions.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let auths = match value.get("auths") {
            Some(auths) => auths.clone(),
            None => value,
        };
        let serde_json::Value::Object(entries) = auths else {
            return Err("`auths` is not an object".into());
        };
        let mut hosts = BTreeMap::new();
        for (key, entry) in entries {
            let host = normalize_host(&key);
            let entry: Entry = serde_json::from_value(entry)
                .map_err(|_| format!("entry {host:?} is not an object of strings"))?;
            if let Some(credential) = credential_of(&host, entry)? {
                hosts.insert(host, credential);
            }
        }
        Ok(Self { hosts })
    }

    /// The credential for `host` (as in an image reference), if any.
    pub fn credential_for(&self, host: &str) -> Option<&Credential> {
        self.hosts.get(&normalize_host(host))
    }
}

fn credential_of(host: &str, entry: Entry) -> Result<Option<Credential>, String> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    if let Some(token) = nonempty(entry.identitytoken) {
        return Ok(Some(Credential::IdentityToken(Secret::new(token))));
    }
    if let Some(token) = nonempty(entry.registrytoken) {
        return Ok(Some(Credential::RegistryToken(Secret::new(token))));
    }
    if let Some(auth) = nonempty(entry.auth) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| format!("entry {host:?}: `auth` is not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("entry {host:?}: `auth` is not UTF-8"))?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(format!("entry {host:?}: `auth` is not `user:password`"));
        };
        return Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: Secret::new(password),
        }));
    }
    match (nonempty(entry.username), nonempty(entry.password)) {
        (Some(username), Some(password)) => Ok(Some(Credential::Basic {
            username,
            password: Secret::new(password),
        })),
        (None, None) => Ok(None),
        _ => Err(format!(
            "entry {host:?} has a username or a password but not both"
        )),
    }
}

/// A `WWW-Authenticate: Bearer realm="…",service="…"` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
}

/// Parses a `WWW-Authenticate` value; `None` when it is not a Bearer challenge with a
/// realm.
pub fn parse_bearer_challenge(value: &str) -> Option<BearerChallenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        found.insert(key, val);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(BearerChallenge {
        realm: found.remove("realm")?,
        service: found.remove("service"),
    })
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    fn encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Credential {
    /// The [`RegistryAuth`] to use as it is; `None` for an identity token, which must
    /// first be traded ([`exchange_identity_token`]).
    pub fn direct_auth(&self) -> Option<RegistryAuth> {
        match self {
            Credential::Basic { username, password } => Some(RegistryAuth::Basic(
                username.clone(),
                password.expose().to_owned(),
            )),
            Credential::RegistryToken(token) => {
                Some(RegistryAuth::Bearer(token.expose().to_owned()))
            }
            Credential::IdentityToken(_) => None,
        }
    }
}

/// Trades an identity token (OAuth2 refresh token) for an access token for `scopes`
/// (`repository:<path>:pull,push`) at the realm the registry's `/v2/` challenge names.
pub async fn exchange_identity_token(
    token: &Secret,
    http: &reqwest::Client,
    base_url: &str,
    host: &str,
    scopes: &[String],
) -> Result<String, AuthError> {
    let error = |reason: String| AuthError::Token {
        host: host.to_owned(),
        reason,
    };
    let probe = http
        .get(format!("{base_url}/v2/"))
        .send()
        .await
        .map_err(|e| error(format!("GET /v2/: {}", crate::git::error_chain(&e))))?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_bearer_challenge)
        .ok_or_else(|| {
            error(
                "the config has an identitytoken but the registry offers no bearer token endpoint"
                    .into(),
            )
        })?;
    let scope = scopes.join(" ");
    let mut pairs = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token.expose()),
        ("client_id", "openvox-code"),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = &challenge.service {
        pairs.push(("service", service.as_str()));
    }
    let response = http
        .post(&challenge.realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form(&pairs))
        .send()
        .await
        .map_err(|e| error(format!("token endpoint: {}", crate::git::error_chain(&e))))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| error(format!("token endpoint: {e}")))?;
    if !status.is_success() {
        // The body may echo the request; only the status is shown.
        return Err(error(format!(
            "token endpoint answered {status} to the identity token"
        )));
    }
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        token: Option<String>,
    }
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|_| error("token endpoint answered something that is not a token".into()))?;
    answer
        .access_token
        .or(answer.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| error("token endpoint answered without an access token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn every_credential_shape_is_read() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "registry.example.com:5000": {{"username": "u", "password": "p:w"}},
                "http://ghcr.example/v2/": {{"auth": "{}", "identitytoken": "refresh"}},
                "token.example": {{"registrytoken": "bearer"}},
                "empty.example": {{}}
            }}, "credsStore": "desktop"}}"#,
            b64("hub:secret:with:colons"),
            b64("x:y")
        );
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            config.credential_for("docker.io"),
            Some(&Credential::Basic {
                username: "hub".into(),
                password: Secret::new("secret:with:colons")
            })
        );
        assert_eq!(
            config.credential_for("index.docker.io"),
            config.credential_for("docker.io")
        );
        assert_eq!(
            config.credential_for("REGISTRY.example.com:5000"),
            Some(&Credential::Basic {
                username: "u".into(),
                password: Secret::new("p:w")
            })
        );
        assert_eq!(
            config.credential_for("ghcr.example"),
            Some(&Credential::IdentityToken(Secret::new("refresh")))
        );
        assert_eq!(
            config.credential_for("token.example"),
            Some(&Credential::RegistryToken(Secret::new("bearer")))
        );
        assert_eq!(config.credential_for("empty.example"), None);
        assert_eq!(
            config.credential_for("registry.example.com"),
            None,
            "the port is part of the host"
        );
    }

    #[test]
    fn legacy_dockercfg_is_read() {
        let json = format!(r#"{{"127.0.0.1:5000": {{"auth": "{}"}}}}"#, b64("a:b"));
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        assert!(matches!(
            config.credential_for("127.0.0.1:5000"),
            Some(Credential::Basic { .. })
        ));
    }

    #[test]
    fn errors_never_show_secret_values() {
        for json in [
            r#"{"auths": {"r.example": {"auth": "%%%not-base64-SECRETVALUE"}}}"#.to_owned(),
            format!(
                r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
                b64("SECRETVALUE")
            ),
            r#"{"auths": {"r.example": {"password": "SECRETVALUE"}}}"#.to_owned(),
            r#"{"auths": {"r.example": {"auth": 5}}}"#.to_owned(),
            r#"{"auths": "SECRETVALUE"}"#.to_owned(),
        ] {
            let err = DockerConfig::parse(json.as_bytes()).unwrap_err();
            assert!(!err.contains("SECRETVALUE"), "{err}");
            assert!(!err.contains(&b64("SECRETVALUE")), "{err}");
        }
        let config = DockerConfig::parse(
            br#"{"auths": {"r.example": {"username": "u", "password": "SECRETVALUE"}}}"#,
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("SECRETVALUE"));
    }

    #[test]
    fn hosts_are_normalised() {
        for (key, host) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
            ("Quay.IO", "quay.io"),
        ] {
            assert_eq!(normalize_host(key), host, "{key}");
        }
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let c = parse_bearer_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#).unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        let c =
            parse_bearer_challenge(r#"bearer realm = "https://a/t\"x" , service=plain"#).unwrap();
        assert_eq!(c.realm, "https://a/t\"x");
        assert_eq!(c.service.as_deref(), Some("plain"));
        assert!(parse_bearer_challenge(r#"Basic realm="Registry Realm""#).is_none());
        assert!(parse_bearer_challenge(r#"Bearer service="x""#).is_none());
        assert!(parse_bearer_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            form(&[("scope", "repository:a/b:pull,push x"), ("t", "a+b=c&")]),
            "scope=repository%3Aa%2Fb%3Apull%2Cpush+x&t=a%2Bb%3Dc%26"
        );
    }
}
