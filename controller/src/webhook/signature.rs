//! Who sent a webhook and whether they know the CodeSource's secret. Pure: headers,
//! body and secret in, a verdict out. Every comparison runs in constant time, and no
//! message carries a signature, a token or the secret.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body.
//! - Gitea: `X-Gitea-Signature: <hex>`, HMAC-SHA256 of the body.
//! - Forgejo: `X-Forgejo-Signature: <hex>` (it also sends Gitea's header).
//! - GitLab: `X-Gitlab-Token: <secret>`, the secret itself.
//! - Generic (scripts, CI): `Authorization: Bearer <secret>`.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The Git host (or the generic form) a request comes from, told by its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// GitHub (and GitHub Enterprise).
    GitHub,
    /// GitLab.
    GitLab,
    /// Gitea.
    Gitea,
    /// Forgejo (Codeberg).
    Forgejo,
    /// Any caller with the bearer token.
    Generic,
}

impl Provider {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::GitLab => "gitlab",
            Self::Gitea => "gitea",
            Self::Forgejo => "forgejo",
            Self::Generic => "generic",
        }
    }

    /// The provider whose headers the request carries. Forgejo and Gitea also send
    /// GitHub's headers, so their own are looked at first. `None`: no known header at
    /// all, so nothing can be verified.
    pub fn detect(headers: &HeaderMap) -> Option<Self> {
        let has = |name: &str| headers.contains_key(name);
        if has(FORGEJO_SIGNATURE) || has(FORGEJO_EVENT) {
            Some(Self::Forgejo)
        } else if has(GITEA_SIGNATURE) || has(GITEA_EVENT) {
            Some(Self::Gitea)
        } else if has(GITLAB_TOKEN) || has(GITLAB_EVENT) {
            Some(Self::GitLab)
        } else if has(GITHUB_SIGNATURE) || has(GITHUB_EVENT) {
            Some(Self::GitHub)
        } else if has(AUTHORIZATION) {
            Some(Self::Generic)
        } else {
            None
        }
    }

    /// The event name header of this provider (`push`, `ping`, `Push Hook`, …).
    pub fn event(self, headers: &HeaderMap) -> Option<&str> {
        let name = match self {
            Self::GitHub => GITHUB_EVENT,
            Self::GitLab => GITLAB_EVENT,
            Self::Gitea => GITEA_EVENT,
            Self::Forgejo => FORGEJO_EVENT,
            Self::Generic => return None,
        };
        header(headers, name)
    }
}

/// GitHub's signature header.
pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// GitHub's event header (Gitea and Forgejo send it too).
pub const GITHUB_EVENT: &str = "x-github-event";
/// Gitea's signature header (Forgejo sends it too).
pub const GITEA_SIGNATURE: &str = "x-gitea-signature";
/// Gitea's event header.
pub const GITEA_EVENT: &str = "x-gitea-event";
/// Forgejo's signature header.
pub const FORGEJO_SIGNATURE: &str = "x-forgejo-signature";
/// Forgejo's event header.
pub const FORGEJO_EVENT: &str = "x-forgejo-event";
/// GitLab's secret token header.
pub const GITLAB_TOKEN: &str = "x-gitlab-token";
/// GitLab's event header.
pub const GITLAB_EVENT: &str = "x-gitlab-event";
/// The generic form's header.
pub const AUTHORIZATION: &str = "authorization";

/// Why a request is not authenticated. The messages name headers, never values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries none of the headers that could prove it (401).
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The signature or token does not match the secret, or is malformed (403).
    #[error("the {0} header does not match the webhook secret")]
    Mismatch(&'static str),
}

/// Checks the request against `secret` the way `provider` signs it.
pub fn authenticate(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), AuthError> {
    match provider {
        Provider::GitHub => {
            let value =
                header(headers, GITHUB_SIGNATURE).ok_or(AuthError::Missing(GITHUB_SIGNATURE))?;
            let hex_sig = value
                .strip_prefix("sha256=")
                .ok_or(AuthError::Mismatch(GITHUB_SIGNATURE))?;
            verify_hmac_sha256(secret, body, hex_sig)
                .then_some(())
                .ok_or(AuthError::Mismatch(GITHUB_SIGNATURE))
        }
        Provider::Gitea | Provider::Forgejo => {
            let (name, value) = [FORGEJO_SIGNATURE, GITEA_SIGNATURE]
                .into_iter()
                .filter(|n| provider == Provider::Forgejo || *n == GITEA_SIGNATURE)
                .find_map(|n| header(headers, n).map(|v| (n, v)))
                .ok_or(AuthError::Missing(match provider {
                    Provider::Forgejo => FORGEJO_SIGNATURE,
                    _ => GITEA_SIGNATURE,
                }))?;
            verify_hmac_sha256(secret, body, value)
                .then_some(())
                .ok_or(AuthError::Mismatch(name))
        }
        Provider::GitLab => {
            let token = header(headers, GITLAB_TOKEN).ok_or(AuthError::Missing(GITLAB_TOKEN))?;
            tokens_equal(token.as_bytes(), secret)
                .then_some(())
                .ok_or(AuthError::Mismatch(GITLAB_TOKEN))
        }
        Provider::Generic => {
            let value = header(headers, AUTHORIZATION).ok_or(AuthError::Missing(AUTHORIZATION))?;
            let token = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or(AuthError::Mismatch(AUTHORIZATION))?;
            tokens_equal(token.as_bytes(), secret)
                .then_some(())
                .ok_or(AuthError::Mismatch(AUTHORIZATION))
        }
    }
}

/// Whether `hex_signature` is the HMAC-SHA256 of `body` under `secret`. The comparison
/// of the MAC runs in constant time; a signature that is not hex never matches.
pub fn verify_hmac_sha256(secret: &[u8], body: &[u8], hex_signature: &str) -> bool {
    let Ok(signature) = hex::decode(hex_signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Whether two tokens are equal, in time that depends on neither their content nor
/// their lengths (both are hashed first, then the hashes compared in constant time).
pub fn tokens_equal(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The HMAC-SHA256 of `body` under `secret` as lower-case hex: what a Git host puts in
/// its signature header. For tests and for callers of the generic form that sign.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The webhook secret as stored in the Secret's `token` key, without the line break
/// `kubectl create secret --from-file` keeps from a file written by `echo`. `None`
/// when nothing is left: an empty key would make every signature trivially forgeable.
pub fn usable_secret(stored: &[u8]) -> Option<&[u8]> {
    let trimmed = stored.trim_ascii_end();
    (!trimmed.is_empty()).then_some(trimmed)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
    const RFC4231_KEY: &[u8] = b"Jefe";
    const RFC4231_DATA: &[u8] = b"what do ya want for nothing?";
    const RFC4231_MAC: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

    // GitHub's documented example: secret "It's a Secret to Everybody", payload
    // "Hello, World!".
    const GITHUB_DOC_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GITHUB_DOC_BODY: &[u8] = b"Hello, World!";
    const GITHUB_DOC_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn hmac_sha256_matches_the_rfc_4231_vector() {
        assert_eq!(sign_hex(RFC4231_KEY, RFC4231_DATA), RFC4231_MAC);
        assert!(verify_hmac_sha256(RFC4231_KEY, RFC4231_DATA, RFC4231_MAC));
        assert!(verify_hmac_sha256(
            RFC4231_KEY,
            RFC4231_DATA,
            &RFC4231_MAC.to_uppercase()
        ));
        assert!(!verify_hmac_sha256(
            RFC4231_KEY,
            b"what do ya want for something?",
            RFC4231_MAC
        ));
        assert!(!verify_hmac_sha256(b"jefe", RFC4231_DATA, RFC4231_MAC));
    }

    #[test]
    fn a_github_signature_from_its_documentation_is_accepted() {
        let h = headers(&[
            ("x-github-event", "push"),
            (GITHUB_SIGNATURE, GITHUB_DOC_SIGNATURE),
        ]);
        assert_eq!(Provider::detect(&h), Some(Provider::GitHub));
        assert_eq!(
            authenticate(Provider::GitHub, &h, GITHUB_DOC_BODY, GITHUB_DOC_SECRET),
            Ok(())
        );
    }

    #[test]
    fn a_github_request_with_a_wrong_or_malformed_signature_is_refused() {
        let wrong = headers(&[(
            GITHUB_SIGNATURE,
            &format!("sha256={}", sign_hex(b"other", GITHUB_DOC_BODY)),
        )]);
        let no_prefix = headers(&[(
            GITHUB_SIGNATURE,
            &sign_hex(GITHUB_DOC_SECRET, GITHUB_DOC_BODY),
        )]);
        let not_hex = headers(&[(GITHUB_SIGNATURE, "sha256=zz")]);
        let truncated = headers(&[(GITHUB_SIGNATURE, &GITHUB_DOC_SIGNATURE[..40])]);
        for h in [wrong, no_prefix, not_hex, truncated] {
            assert_eq!(
                authenticate(Provider::GitHub, &h, GITHUB_DOC_BODY, GITHUB_DOC_SECRET),
                Err(AuthError::Mismatch(GITHUB_SIGNATURE))
            );
        }
    }

    #[test]
    fn a_github_request_without_a_signature_is_unauthenticated() {
        let h = headers(&[("x-github-event", "push")]);
        assert_eq!(Provider::detect(&h), Some(Provider::GitHub));
        assert_eq!(
            authenticate(Provider::GitHub, &h, b"{}", b"s"),
            Err(AuthError::Missing(GITHUB_SIGNATURE))
        );
    }

    #[test]
    fn a_tampered_body_fails_the_signature() {
        let h = headers(&[(
            GITHUB_SIGNATURE,
            &format!("sha256={}", sign_hex(b"s3cret", b"{\"ref\":\"a\"}")),
        )]);
        assert!(authenticate(Provider::GitHub, &h, b"{\"ref\":\"a\"}", b"s3cret").is_ok());
        assert!(authenticate(Provider::GitHub, &h, b"{\"ref\":\"b\"}", b"s3cret").is_err());
    }

    #[test]
    fn gitea_and_forgejo_sign_with_bare_hex() {
        let body = br#"{"ref":"refs/heads/production"}"#;
        let sig = sign_hex(b"s3cret", body);
        // Gitea sends GitHub's headers as well; its own decide.
        let gitea = headers(&[
            ("x-gitea-event", "push"),
            ("x-github-event", "push"),
            (GITEA_SIGNATURE, &sig),
        ]);
        assert_eq!(Provider::detect(&gitea), Some(Provider::Gitea));
        assert_eq!(
            authenticate(Provider::Gitea, &gitea, body, b"s3cret"),
            Ok(())
        );
        assert_eq!(
            authenticate(Provider::Gitea, &gitea, body, b"other"),
            Err(AuthError::Mismatch(GITEA_SIGNATURE))
        );

        let forgejo = headers(&[
            ("x-forgejo-event", "push"),
            ("x-gitea-event", "push"),
            (FORGEJO_SIGNATURE, &sig),
        ]);
        assert_eq!(Provider::detect(&forgejo), Some(Provider::Forgejo));
        assert_eq!(
            authenticate(Provider::Forgejo, &forgejo, body, b"s3cret"),
            Ok(())
        );
        // A Forgejo that only sends the Gitea header is still understood.
        let forgejo_gitea_header = headers(&[("x-forgejo-event", "push"), (GITEA_SIGNATURE, &sig)]);
        assert_eq!(
            authenticate(Provider::Forgejo, &forgejo_gitea_header, body, b"s3cret"),
            Ok(())
        );
        let unsigned = headers(&[("x-forgejo-event", "push")]);
        assert_eq!(
            authenticate(Provider::Forgejo, &unsigned, body, b"s3cret"),
            Err(AuthError::Missing(FORGEJO_SIGNATURE))
        );
    }

    #[test]
    fn gitlab_sends_the_secret_itself() {
        let ok = headers(&[("x-gitlab-event", "Push Hook"), (GITLAB_TOKEN, "s3cret")]);
        assert_eq!(Provider::detect(&ok), Some(Provider::GitLab));
        assert_eq!(Provider::GitLab.event(&ok), Some("Push Hook"));
        assert_eq!(
            authenticate(Provider::GitLab, &ok, b"{}", b"s3cret"),
            Ok(())
        );
        for wrong in ["s3cre", "s3cret ", "S3CRET", ""] {
            let h = headers(&[(GITLAB_TOKEN, wrong)]);
            assert_eq!(
                authenticate(Provider::GitLab, &h, b"{}", b"s3cret"),
                Err(AuthError::Mismatch(GITLAB_TOKEN)),
                "{wrong:?}"
            );
        }
        let missing = headers(&[("x-gitlab-event", "Push Hook")]);
        assert_eq!(
            authenticate(Provider::GitLab, &missing, b"{}", b"s3cret"),
            Err(AuthError::Missing(GITLAB_TOKEN))
        );
    }

    #[test]
    fn the_generic_form_takes_a_bearer_token() {
        let ok = headers(&[(AUTHORIZATION, "Bearer s3cret")]);
        assert_eq!(Provider::detect(&ok), Some(Provider::Generic));
        assert_eq!(Provider::Generic.event(&ok), None);
        assert_eq!(authenticate(Provider::Generic, &ok, b"", b"s3cret"), Ok(()));
        assert!(
            authenticate(
                Provider::Generic,
                &headers(&[(AUTHORIZATION, "bearer s3cret")]),
                b"",
                b"s3cret"
            )
            .is_ok()
        );
        for wrong in ["Bearer other", "Basic czNjcmV0", "s3cret", "Bearer"] {
            assert_eq!(
                authenticate(
                    Provider::Generic,
                    &headers(&[(AUTHORIZATION, wrong)]),
                    b"",
                    b"s3cret"
                ),
                Err(AuthError::Mismatch(AUTHORIZATION)),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn a_request_without_any_known_header_has_no_provider() {
        assert_eq!(
            Provider::detect(&headers(&[("content-type", "application/json")])),
            None
        );
    }

    #[test]
    fn tokens_compare_by_content_not_by_prefix() {
        assert!(tokens_equal(b"abc", b"abc"));
        assert!(!tokens_equal(b"abc", b"abcd"));
        assert!(!tokens_equal(b"", b"abc"));
    }

    #[test]
    fn a_stored_secret_loses_its_trailing_newline_and_an_empty_one_is_refused() {
        assert_eq!(usable_secret(b"s3cret\n"), Some(&b"s3cret"[..]));
        assert_eq!(usable_secret(b"s3cret"), Some(&b"s3cret"[..]));
        assert_eq!(usable_secret(b"\n"), None);
        assert_eq!(usable_secret(b""), None);
    }

    #[test]
    fn error_messages_name_headers_never_values() {
        let h = headers(&[(GITLAB_TOKEN, "leaked-value")]);
        let e = authenticate(Provider::GitLab, &h, b"", b"s3cret").unwrap_err();
        let text = e.to_string();
        assert!(
            !text.contains("leaked-value") && !text.contains("s3cret"),
            "{text}"
        );
    }
}
