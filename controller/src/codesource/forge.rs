//! The current release of a Forge module (`GET <base>/v3/modules/<slug>`, its
//! `current_release.version`), for floating Forge modules: looked up once per module
//! (and extra CA) per tick however many CodeSources use it, as the worker resolves
//! `:latest`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use sha2::{Digest as _, Sha256};

use super::shared::SharedLookups;

/// Largest answer read: a module's document lists its releases.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Current releases, shared across CodeSources.
#[derive(Debug)]
pub struct ForgeReleases {
    lookups: SharedLookups<String, String>,
}

impl ForgeReleases {
    /// Keeps every answer for `ttl` (the head listings' time to live).
    pub fn new(ttl: Duration) -> Self {
        Self {
            lookups: SharedLookups::new(ttl),
        }
    }

    /// The version of the current release of `slug` on the Forge at `base`, trusting
    /// `ca_pem` in addition to the system roots, within `timeout`; shared from a lookup
    /// started at or after `not_before`.
    pub async fn current(
        &self,
        base: &str,
        slug: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
        not_before: Instant,
    ) -> Result<Arc<String>, String> {
        let ca = ca_pem.map(|pem| hex::encode(Sha256::digest(pem)));
        let key = format!("{base}#{slug}#{}", ca.as_deref().unwrap_or(""));
        let url = format!("{}/v3/modules/{slug}", base.trim_end_matches('/'));
        let ca_pem = ca_pem.map(<[u8]>::to_vec);
        self.lookups
            .get(key, not_before, move || {
                async move { current_version(&url, ca_pem.as_deref(), timeout).await }.boxed()
            })
            .await
    }
}

async fn current_version(
    url: &str,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<String, String> {
    crate::tls::install_ring_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!(
            "openvox-code-controller/",
            env!("CARGO_PKG_VERSION")
        ));
    if let Some(pem) = ca_pem {
        let certificates =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca.crt: {e}"))?;
        builder = builder.tls_certs_merge(certificates);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", openvox_git::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{url}: {}", openvox_git::error_chain(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "{url}: answer larger than {MAX_ANSWER_BYTES} bytes"
            ));
        }
    }
    version_of(&body).map_err(|e| format!("{url}: {e}"))
}

/// `current_release.version` of a module document.
pub fn version_of(body: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Module {
        current_release: Option<Release>,
    }
    #[derive(serde::Deserialize)]
    struct Release {
        version: String,
    }
    let module: Module = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    module
        .current_release
        .map(|r| r.version)
        .ok_or_else(|| "the module has no current release".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_current_release() {
        let doc = br#"{"slug":"p-s","current_release":{"version":"9.6.0","file_sha256":"x"},"releases":[]}"#;
        assert_eq!(version_of(doc).unwrap(), "9.6.0");
        assert!(
            version_of(br#"{"slug":"p-s"}"#)
                .unwrap_err()
                .contains("no current release")
        );
        assert!(version_of(b"<html>").is_err());
    }
}
