//! Git mirrors (`overrides.gitmirror`, `overrides.gitmirrors`): sites that cannot reach
//! GitHub point every repository at an internal mirror that keeps the same paths.
//!
//! A URL is rewritten as `mirror base + "/" + original path`: a mirror for the URL's
//! host first, then the global one, otherwise the URL is left as it is. The forms
//! understood are `scheme://[user@]host[:port]/path` for `https`, `http`, `ssh`, `git`
//! (and `git+ssh`/`ssh+git`), and scp-like `[user@]host:path`. Anything else (local
//! paths, `file://`) has no host and is never rewritten.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::checks::de_with;

/// The `overrides` section of a CodeConfig.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Base URL used for every repository whose host has no mirror of its own.
    #[serde(default, deserialize_with = "de_with::opt_git_url")]
    pub gitmirror: Option<String>,
    /// Mirror base URL per host name (`github.com`), or per `host:port`.
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub gitmirrors: BTreeMap<String, String>,
}

/// The URL to fetch `url` from once `overrides` apply. Pure: no lookups, no I/O.
pub fn mirror(url: &str, overrides: &Overrides) -> String {
    let Some(parts) = split(url) else {
        return url.to_owned();
    };
    let by_host = overrides.gitmirrors.iter().find_map(|(key, base)| {
        let key_matches =
            key.eq_ignore_ascii_case(parts.host) || key.eq_ignore_ascii_case(parts.host_port);
        (key_matches && !base.is_empty()).then_some(base.as_str())
    });
    let global = overrides
        .gitmirror
        .as_deref()
        .filter(|base| !base.is_empty());
    match by_host.or(global) {
        Some(base) => join(base, parts.path),
        None => url.to_owned(),
    }
}

/// `base/path` with exactly one `/` between them.
fn join(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{path}")
    }
}

struct Parts<'a> {
    /// Without user and port, for matching `gitmirrors` keys.
    host: &'a str,
    /// With the port when there is one.
    host_port: &'a str,
    /// The repository path, without the leading `/`.
    path: &'a str,
}

const SCHEMES: [&str; 6] = ["https", "http", "ssh", "git", "git+ssh", "ssh+git"];

fn split(url: &str) -> Option<Parts<'_>> {
    if let Some((scheme, rest)) = url.split_once("://") {
        if !SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            return None;
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = strip_port(host_port);
        return (!host.is_empty()).then_some(Parts {
            host,
            host_port,
            path,
        });
    }
    // scp-like: `[user@]host:path`, where no `/` comes before the `:` (otherwise git
    // reads it as a local path) and an IPv6 host is bracketed.
    let first_colon = url.find(':')?;
    let host_start = url[..first_colon].find('@').map_or(0, |at| at + 1);
    let rest = &url[host_start..];
    let (host, path) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':')?)
        }
        None => rest.split_once(':')?,
    };
    if host.is_empty() || host.contains('/') || url[..host_start].contains('/') {
        return None;
    }
    Some(Parts {
        host,
        host_port: host,
        path,
    })
}

fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    host_port
        .split_once(':')
        .map_or(host_port, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(global: Option<&str>, hosts: &[(&str, &str)]) -> Overrides {
        Overrides {
            gitmirror: global.map(str::to_owned),
            gitmirrors: hosts
                .iter()
                .map(|(h, m)| ((*h).to_owned(), (*m).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn table() {
        let both = overrides(
            Some("https://fallback.example.com/"),
            &[
                ("github.com", "https://gh-mirror.example.com"),
                ("git.corp:8443", "https://corp-mirror.example.com/git/"),
            ],
        );
        let global_only = overrides(Some("https://fallback.example.com"), &[]);
        let hosts_only = overrides(None, &[("github.com", "https://gh-mirror.example.com")]);
        let none = Overrides::default();
        let cases: [(&str, &Overrides, &str); 14] = [
            (
                "https://github.com/puppetlabs/puppetlabs-stdlib.git",
                &both,
                "https://gh-mirror.example.com/puppetlabs/puppetlabs-stdlib.git",
            ),
            (
                "https://gitlab.com/group/sub/repo.git",
                &both,
                "https://fallback.example.com/group/sub/repo.git",
            ),
            (
                "git@github.com:puppetlabs/puppetlabs-stdlib.git",
                &both,
                "https://gh-mirror.example.com/puppetlabs/puppetlabs-stdlib.git",
            ),
            (
                "ssh://git@github.com:22/org/repo.git",
                &both,
                "https://gh-mirror.example.com/org/repo.git",
            ),
            (
                "git://github.com/org/repo",
                &both,
                "https://gh-mirror.example.com/org/repo",
            ),
            (
                "http://user:pw@GitHub.com/org/repo.git",
                &both,
                "https://gh-mirror.example.com/org/repo.git",
            ),
            (
                "https://git.corp:8443/team/repo.git",
                &both,
                "https://corp-mirror.example.com/git/team/repo.git",
            ),
            (
                "https://git.corp/team/repo.git",
                &both,
                "https://fallback.example.com/team/repo.git",
            ),
            (
                "https://github.com/org/repo.git",
                &global_only,
                "https://fallback.example.com/org/repo.git",
            ),
            (
                "https://gitlab.com/org/repo.git",
                &hosts_only,
                "https://gitlab.com/org/repo.git",
            ),
            (
                "https://github.com/org/repo.git",
                &none,
                "https://github.com/org/repo.git",
            ),
            ("/srv/git/repo.git", &both, "/srv/git/repo.git"),
            (
                "file:///srv/git/repo.git",
                &both,
                "file:///srv/git/repo.git",
            ),
            (
                "git@[::1]:org/repo.git",
                &overrides(None, &[("::1", "https://v6.example.com")]),
                "https://v6.example.com/org/repo.git",
            ),
        ];
        for (url, overrides, want) in cases {
            assert_eq!(mirror(url, overrides), want, "{url}");
        }
    }
}
