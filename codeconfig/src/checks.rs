//! Checks on the strings that become directory names, paths and git arguments, run
//! while deserializing so a refused value is reported at its own line and key.
//!
//! They exist because a CodeConfig comes from a repository or a ConfigMap that the
//! worker does not trust: a module named `../etc` or a URL starting with `-` must not
//! reach the filesystem or a `git` command line.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// A name used as one directory (module `name`, `install_as`, environment names):
/// not empty, not `.` or `..`, no `/`, `\` or control characters.
pub(crate) fn dir_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(format!("`{s}` is not a usable directory name"));
    }
    if s.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(format!(
            "`{}` is not a safe directory name (no `/`, `\\` or control characters)",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// A relative path inside an environment or a tree (`target_dir`, module file and
/// include patterns): not empty, not absolute, every `/`-separated part non-empty and
/// neither `.` nor `..`, so it can never leave the directory it is joined to.
pub(crate) fn relative_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty path".to_owned());
    }
    if s.starts_with('/') {
        return Err(format!("`{s}` must be a relative path"));
    }
    for part in s.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "`{}` must be a relative path without `..`, `.` or empty components",
                s.escape_debug()
            ));
        }
        if part.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(format!(
                "`{}` must not contain `\\` or control characters",
                s.escape_debug()
            ));
        }
    }
    Ok(())
}

/// A git URL: not empty, no whitespace or control characters, and not starting with
/// `-` (which `git` and `ssh` would read as an option).
pub(crate) fn git_url(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a git URL is required".to_owned());
    }
    if s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` is not a usable git URL (no leading `-`, whitespace or control characters)",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// A branch, tag or commit name: no leading `-`, whitespace or control characters.
/// Empty is allowed here; callers read it as "the remote's HEAD".
pub(crate) fn git_ref(s: &str) -> Result<(), String> {
    if s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` is not a usable git ref (no leading `-`, whitespace or control characters)",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hexadecimal characters, the form
/// git prints.
pub(crate) fn sha(s: &str) -> Result<(), String> {
    let hex = s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if (s.len() == 40 || s.len() == 64) && hex {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a commit id (40 or 64 lowercase hex characters)",
            s.escape_debug()
        ))
    }
}

type Check = fn(&str) -> Result<(), String>;

/// A string visitor that runs `check` while serde_yaml still knows where the scalar is.
struct Checked(Check);

impl Visitor<'_> for Checked {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        (self.0)(v).map_err(E::custom)?;
        Ok(v.to_owned())
    }
}

/// Like [`Checked`] for optional fields: null is `None`, and so is an empty string
/// (`ref: ""` means the same as no `ref`).
struct OptChecked(Check);

impl<'de> Visitor<'de> for OptChecked {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or nothing")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let s = d.deserialize_str(Checked(self.0))?;
        Ok(Some(s).filter(|s| !s.is_empty()))
    }
}

/// `deserialize_with` helpers, one per check, because serde wants plain functions.
pub(crate) mod de_with {
    use serde::{Deserialize, Deserializer};

    use super::{Checked, OptChecked};

    pub(crate) fn dir_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_str(Checked(super::dir_name))
    }

    pub(crate) fn opt_dir_name<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        d.deserialize_option(OptChecked(super::dir_name))
    }

    pub(crate) fn opt_relative_path<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        d.deserialize_option(OptChecked(super::relative_path))
    }

    pub(crate) fn git_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_str(Checked(super::git_url))
    }

    pub(crate) fn opt_git_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_option(OptChecked(super::git_url))
    }

    pub(crate) fn opt_git_ref<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_option(OptChecked(super::git_ref))
    }

    pub(crate) fn sha<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_str(Checked(super::sha))
    }

    pub(crate) fn opt_sha<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_option(OptChecked(super::sha))
    }

    /// A collection where YAML's null (`modules:` with nothing after it) means empty,
    /// as it does for openvox-code.
    pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names() {
        for ok in ["stdlib", "httpd", "my_app", "a.b"] {
            assert!(dir_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "a\nb"] {
            assert!(dir_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths() {
        for ok in ["modules", "site-modules", "dist/modules", "modules/*.yaml"] {
            assert!(relative_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc", "..", "a/../b", "a//b", "a/", "./a", "a\\b"] {
            assert!(relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_refs_and_shas() {
        assert!(git_url("https://example.com/a.git").is_ok());
        assert!(git_url("git@example.com:a/b.git").is_ok());
        for bad in ["", "-oProxyCommand=x", "https://a b"] {
            assert!(git_url(bad).is_err(), "{bad:?}");
        }
        assert!(git_ref("v1.2.3").is_ok());
        assert!(git_ref("--upload-pack=x").is_err());
        assert!(sha(&"a".repeat(40)).is_ok());
        assert!(sha(&"0".repeat(64)).is_ok());
        for bad in [
            "a".repeat(39),
            "A".repeat(40),
            "g".repeat(40),
            "a".repeat(41),
        ] {
            assert!(sha(&bad).is_err(), "{bad}");
        }
    }
}
