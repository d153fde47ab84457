//! Shell-style globs for branch selectors, module file paths and includes, written
//! here so the crate stays pure (no filesystem, no git library).
//!
//! The rules are those of openvox-code, which uses Go's `filepath.Match`: `*` matches
//! any run of characters except `/`, `?` one character except `/`, `[abc]`, `[a-z]` and
//! the negated `[!a]` / `[^a]` one character (never `/`), and `\` escapes the next
//! character. So `feature/*` selects `feature/login` but not `feature/a/b`, and
//! `modules/*.yaml` does not descend into subdirectories. (This differs from
//! `openvox_git::glob`, where `*` also matches `/`; a CodeConfig is read with the
//! rules of the tool that wrote it.)
//!
//! Matching is a row-by-row walk over the pattern's tokens, so its cost is bounded by
//! pattern length times text length whatever the pattern (no backtracking blow-up).
//! Patterns are capped at [`Glob::MAX_LEN`] characters and [`Glob::MAX_WILDCARDS`]
//! wildcards, and runs of `*` count as one, because include globs are matched against
//! every file of a tree the configuration's author controls.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A compiled glob pattern. Equality compares the pattern text.
#[derive(Clone)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Why a pattern is not a glob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad glob pattern `{pattern}`: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: &'static str,
}

impl Glob {
    /// Longest accepted pattern, in characters: above any branch name (git allows 255
    /// bytes) or real path pattern, low enough that matching stays cheap.
    pub const MAX_LEN: usize = 256;

    /// Most wildcards (`*`, `?`, `[...]`) in one pattern.
    pub const MAX_WILDCARDS: usize = 32;

    /// Compiles `pattern`; an empty pattern, an unclosed `[`, a reversed range (`[z-a]`)
    /// or a trailing `\` is an error, so a typo is reported instead of matching nothing.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let fail = |reason| GlobError {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(fail("empty pattern"));
        }
        if pattern.chars().count() > Self::MAX_LEN {
            return Err(fail("longer than 256 characters"));
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let token = match c {
                '*' if matches!(tokens.last(), Some(Token::Star)) => continue,
                '*' => Token::Star,
                '?' => Token::One,
                '\\' => Token::Char(chars.next().ok_or_else(|| fail("trailing `\\`"))?),
                '[' => {
                    let negated = chars.next_if(|c| *c == '!' || *c == '^').is_some();
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let lo = match chars.next() {
                            None => return Err(fail("unclosed `[`")),
                            Some(']') if !first => break,
                            Some('\\') => chars.next().ok_or_else(|| fail("trailing `\\`"))?,
                            Some(c) => c,
                        };
                        first = false;
                        let mut hi = lo;
                        if chars.peek() == Some(&'-') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            if ahead.peek().is_some_and(|c| *c != ']') {
                                chars.next();
                                hi = match chars.next() {
                                    Some('\\') => {
                                        chars.next().ok_or_else(|| fail("trailing `\\`"))?
                                    }
                                    Some(c) => c,
                                    None => return Err(fail("unclosed `[`")),
                                };
                                if hi < lo {
                                    return Err(fail("range out of order"));
                                }
                            }
                        }
                        ranges.push((lo, hi));
                    }
                    Token::Class { negated, ranges }
                }
                c => Token::Char(c),
            };
            tokens.push(token);
        }
        let wildcards = tokens
            .iter()
            .filter(|t| !matches!(t, Token::Char(_)))
            .count();
        if wildcards > Self::MAX_WILDCARDS {
            return Err(fail("more than 32 wildcards"));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// The one name this pattern matches when it has no wildcard (escapes removed), so
    /// callers can use it directly instead of listing what exists: an exact branch name
    /// needs no discovery, an exact file path no tree listing.
    pub fn literal(&self) -> Option<String> {
        self.tokens
            .iter()
            .map(|token| match token {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whether the pattern has no wildcard (see [`Glob::literal`]).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Char(_)))
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // reach[j]: the tokens so far can match exactly text[..j].
        let mut reach = vec![false; text.len() + 1];
        reach[0] = true;
        let mut next = vec![false; text.len() + 1];
        for token in &self.tokens {
            next.fill(false);
            match token {
                Token::Star => {
                    let mut open = false;
                    for j in 0..=text.len() {
                        open |= reach[j];
                        next[j] = open;
                        if text.get(j) == Some(&'/') {
                            open = false;
                        }
                    }
                }
                single => {
                    for j in 0..text.len() {
                        next[j + 1] = reach[j] && single_matches(single, text[j]);
                    }
                }
            }
            if !next.contains(&true) {
                return false;
            }
            std::mem::swap(&mut reach, &mut next);
        }
        reach[text.len()]
    }
}

fn single_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Char(expected) => *expected == c,
        Token::One => c != '/',
        Token::Class { negated, ranges } => {
            c != '/' && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
        Token::Star => false,
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Glob {}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Compiles inside the string visitor, so serde_yaml reports a bad pattern at the
/// pattern's own line and key rather than at the enclosing list.
impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(GlobVisitor { path: false })
    }
}

/// Deserializes a glob that names files in a tree: on top of the glob rules it must be
/// a relative path without `..` or empty components (see [`crate::checks`]).
pub(crate) fn deserialize_path_glob<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Glob, D::Error> {
    deserializer.deserialize_str(GlobVisitor { path: true })
}

pub(crate) struct GlobVisitor {
    pub(crate) path: bool,
}

impl Visitor<'_> for GlobVisitor {
    type Value = Glob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a glob pattern")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Glob, E> {
        if self.path {
            crate::checks::relative_path(v).map_err(E::custom)?;
        }
        Glob::new(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).expect("valid pattern").matches(text)
    }

    #[test]
    fn wildcards_follow_go_filepath_match() {
        let cases = [
            ("production", "production", true),
            ("production", "production2", false),
            ("feature/*", "feature/login", true),
            ("feature/*", "feature/a/b", false),
            ("feature*", "feature/login", false),
            ("release-*", "release-", true),
            ("release-?", "release-1", true),
            ("release-?", "release-10", false),
            ("?", "/", false),
            ("[ps]*", "staging", true),
            ("[ps]*", "dev", false),
            ("[a-c]x", "bx", true),
            ("[!a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("[]]", "]", true),
            ("[a-]", "-", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*", "", true),
            ("a**b", "axyb", true),
            ("**", "a/b", false),
            ("*.yaml", "modules.yaml", true),
            ("modules/*.yaml", "modules/team/a.yaml", false),
            ("*/*.yaml", "modules/a.yaml", true),
            ("*a*a*a*a*a*b", &"a".repeat(200), false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(matches(pattern, text), want, "{pattern} vs {text}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for pattern in ["", "[abc", "a\\", "[z-a]", "[", "[!"] {
            assert!(Glob::new(pattern).is_err(), "{pattern:?} accepted");
        }
        assert!(Glob::new(&"a".repeat(Glob::MAX_LEN + 1)).is_err());
        assert!(Glob::new(&"?".repeat(Glob::MAX_WILDCARDS + 1)).is_err());
        assert!(
            Glob::new(&"*".repeat(Glob::MAX_LEN)).is_ok(),
            "a run of `*` is one"
        );
    }

    #[test]
    fn literals_are_names_without_wildcards() {
        let cases = [
            ("production", Some("production")),
            ("feature/x", Some("feature/x")),
            ("a\\*b", Some("a*b")),
            ("feature/*", None),
            ("release-?", None),
            ("[ps]roduction", None),
        ];
        for (pattern, want) in cases {
            let glob = Glob::new(pattern).expect("valid");
            assert_eq!(glob.literal().as_deref(), want, "{pattern}");
            assert_eq!(glob.is_literal(), want.is_some(), "{pattern}");
        }
    }
}
