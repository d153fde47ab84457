//! Repository URLs: which transport they use, which host credentials belong to, and how
//! they are printed without secrets.

use std::fmt;

/// The transport of a repository URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Https,
    Http,
    Ssh,
    Git,
    File,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Https => "https",
            Transport::Http => "http",
            Transport::Ssh => "ssh",
            Transport::Git => "git",
            Transport::File => "file",
        })
    }
}

/// A repository URL that gix understands, with its transport and host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    raw: String,
    transport: Transport,
    host: Option<String>,
    port: Option<u16>,
}

/// A URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("repository URL {url}: {reason}")]
pub struct UrlError {
    /// The URL, masked.
    pub url: String,
    pub reason: String,
}

impl RepoUrl {
    /// Parses `https://`, `http://`, `ssh://`, scp-like `user@host:path`, `git://` and
    /// `file://` URLs (and plain absolute paths, as `file://`). A password or token in
    /// the URL is refused: credentials come from the secret directory.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let fail = |reason: &str| UrlError {
            url: mask_url(raw),
            reason: reason.to_owned(),
        };
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(fail("is empty"));
        }
        // gix's parse errors quote the input (`input="https://u:p@h"`): mask it there too,
        // or a mistyped URL with a password would print it (found by tests/properties.rs).
        let parsed = gix::url::parse(gix::bstr::BStr::new(raw))
            .map_err(|e| fail(&mask_text(&e.to_string().replace(raw, &mask_url(raw)))))?;
        let transport = match parsed.scheme {
            gix::url::Scheme::Https => Transport::Https,
            gix::url::Scheme::Http => Transport::Http,
            gix::url::Scheme::Ssh => Transport::Ssh,
            gix::url::Scheme::Git => Transport::Git,
            gix::url::Scheme::File => Transport::File,
            _ => {
                return Err(fail(
                    "unsupported scheme (use https, http, ssh, git or file)",
                ));
            }
        };
        if matches!(transport, Transport::Https | Transport::Http)
            && (parsed.user().is_some() || parsed.password().is_some())
        {
            return Err(fail(
                "credentials do not belong in the URL; put them in the secret (username/password or bearerToken)",
            ));
        }
        if parsed.password().is_some() {
            return Err(fail("a password does not belong in the URL"));
        }
        if transport != Transport::File && parsed.host().is_none_or(str::is_empty) {
            return Err(fail("has no host"));
        }
        Ok(Self {
            raw: raw.to_owned(),
            transport,
            host: parsed.host().map(str::to_ascii_lowercase),
            port: parsed.port,
        })
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Lower-cased host name, when the transport has one.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Whether `other` talks to the same server as `self` for the purpose of sending
    /// https credentials: same scheme, host and port.
    pub fn same_origin(&self, other: &RepoUrl) -> bool {
        self.transport == other.transport && self.host == other.host && self.port == other.port
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_url(&self.raw))
    }
}

/// `url` with any `user:password@` (or token-as-user `token@`) of an http(s) URL replaced by
/// `***@`. ssh user names (`git@`) are kept: they are not secret.
pub fn mask_url(url: &str) -> String {
    mask_text(url)
}

/// `text` with the user info of every `http://` and `https://` URL in it masked, and
/// every `user:password@` of any other scheme masked as well.
pub fn mask_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (before, after_scheme) = rest.split_at(pos + 3);
        out.push_str(before);
        let scheme_start = before[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |i| i + 1);
        let scheme = before[scheme_start..pos].to_ascii_lowercase();
        // The authority ends at the first '/', whitespace, double quote or backtick or at
        // the end of text. Not at a single quote: RFC 3986 allows `'` in a password, and
        // ending there printed the rest of such a password (found by tests/properties.rs);
        // a URL quoted as 'https://host/x' still ends at its '/'.
        let authority_end = after_scheme
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '`')
            .unwrap_or(after_scheme.len());
        let authority = &after_scheme[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let is_http = scheme == "http" || scheme == "https";
                if is_http || userinfo.contains(':') {
                    out.push_str("***");
                } else {
                    out.push_str(userinfo);
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after_scheme[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `url` without user info (`https://user:token@host/x` → `https://host/x`, and
/// `ssh://git@host/x` → `ssh://host/x`), for the controller's status messages and logs,
/// which name a repository rather than how to log in to it. scp-like `user@host:path`
/// is kept: its user is not a secret.
pub fn strip_user_info(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if path.is_empty() && !rest.contains('/') {
            return format!("{scheme}://{host}");
        }
        return format!("{scheme}://{host}/{path}");
    }
    url.to_string()
}

/// `text` with every non-empty secret replaced by `***`, then URLs masked.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        // Very short values would blank out ordinary words; they are not plausible secrets.
        if secret.len() >= 4 {
            out = out.replace(secret, "***");
        }
    }
    mask_text(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked() {
        let cases = [
            (
                "https://user:pass@git.example.com/x.git",
                "https://***@git.example.com/x.git",
            ),
            (
                "https://ghp_token@github.com/o/r",
                "https://***@github.com/o/r",
            ),
            ("http://u:p@127.0.0.1:8080/r", "http://***@127.0.0.1:8080/r"),
            (
                "https://git.example.com/x.git",
                "https://git.example.com/x.git",
            ),
            ("ssh://git@host:22/x.git", "ssh://git@host:22/x.git"),
            ("ssh://git:secret@host/x.git", "ssh://***@host/x.git"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            ("file:///srv/git/x", "file:///srv/git/x"),
            (
                "failed: GET https://a:b@h/x/info/refs and https://c@d/y",
                "failed: GET https://***@h/x/info/refs and https://***@d/y",
            ),
            ("no url here", "no url here"),
            ("\"https://a:b@h\"", "\"https://***@h\""),
            ("'https://a:b@h'", "'https://***@h'"),
            ("https://a:it's@h/x", "https://***@h/x"),
            ("://weird", "://weird"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_text(input), want, "{input}");
        }
    }

    #[test]
    fn urls_lose_their_user_info() {
        let cases = [
            (
                "https://user:token@git.example/a/b.git",
                "https://git.example/a/b.git",
            ),
            ("https://git.example/a.git", "https://git.example/a.git"),
            ("ssh://git@host:22/r.git", "ssh://host:22/r.git"),
            ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
            ("http://u:p@host", "http://host"),
        ];
        for (url, want) in cases {
            assert_eq!(strip_user_info(url), want);
        }
    }

    #[test]
    fn secrets_are_redacted_anywhere() {
        let text = "auth failed for token s3cr3t-token at https://x:y@h/r";
        assert_eq!(
            redact(text, &["s3cr3t-token", "", "ab"]),
            "auth failed for token *** at https://***@h/r"
        );
    }

    #[test]
    fn urls_are_classified() {
        let cases = [
            (
                "https://git.example.com/a.git",
                Transport::Https,
                Some("git.example.com"),
            ),
            (
                "http://127.0.0.1:8080/a.git",
                Transport::Http,
                Some("127.0.0.1"),
            ),
            (
                "ssh://git@Host.Example.com:2222/a.git",
                Transport::Ssh,
                Some("host.example.com"),
            ),
            ("git@github.com:o/r.git", Transport::Ssh, Some("github.com")),
            (
                "git://127.0.0.1:9418/a.git",
                Transport::Git,
                Some("127.0.0.1"),
            ),
            ("file:///srv/git/a.git", Transport::File, None),
            ("/srv/git/a.git", Transport::File, None),
        ];
        for (raw, transport, host) in cases {
            let url = RepoUrl::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(url.transport(), transport, "{raw}");
            assert_eq!(url.host(), host, "{raw}");
        }
    }

    #[test]
    fn credentials_in_urls_are_refused_and_masked() {
        for raw in [
            "https://u:p@h/r.git",
            "https://token@h/r.git",
            "ssh://git:pw@h/r.git",
        ] {
            let e = RepoUrl::parse(raw).unwrap_err();
            assert!(
                !e.to_string().contains("p@") || e.to_string().contains("***"),
                "{e}"
            );
            assert!(!e.to_string().contains(":pw"), "{e}");
            assert!(!e.to_string().contains("token@"), "{e}");
        }
        assert!(RepoUrl::parse("").is_err());
        assert!(RepoUrl::parse("ftp://h/r").is_err());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = RepoUrl::parse("https://git.example.com/a.git").unwrap();
        let b = RepoUrl::parse("https://GIT.example.com/b.git").unwrap();
        let c = RepoUrl::parse("https://git.example.com:8443/a.git").unwrap();
        let d = RepoUrl::parse("http://git.example.com/a.git").unwrap();
        let e = RepoUrl::parse("https://other.example.com/a.git").unwrap();
        assert!(a.same_origin(&b));
        assert!(!a.same_origin(&c));
        assert!(!a.same_origin(&d));
        assert!(!a.same_origin(&e));
    }
}
