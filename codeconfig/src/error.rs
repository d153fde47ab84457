//! One error type for every format, shaped like a compiler message
//! (`file:line:col: key: what`), because the people who read it fix YAML by hand and
//! need to know which file of a control repository or ConfigMap to open, and where.

use std::fmt;

/// What went wrong, so callers can react (retry a read, report a user mistake) without
/// parsing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not YAML, or YAML that is refused before any schema applies (duplicate keys,
    /// several documents, anchors nested or repeated beyond the parser's limits).
    Syntax,
    /// YAML that does not fit the schema: an unknown key, a wrong type, a missing
    /// field, or a value that is not allowed (an unsafe directory name, a bad glob).
    Schema,
    /// A wrong `apiVersion` or `kind` for the file being read.
    Envelope,
    /// Each file fits the schema but together they do not (an environment names a
    /// moduleset nobody defines, a static environment has no `ref`).
    Invalid,
    /// A file larger than [`crate::MAX_FILE_BYTES`].
    TooLarge,
    /// An `includes` problem: too many files, a nested `includes`, a missing file.
    Include,
    /// A required module file is missing from a branch.
    MissingModuleFile,
    /// The caller's reader failed, or the main file does not exist.
    Read,
}

/// An error pointing at a file and, when known, a line, a column and a key.
///
/// Errors from the YAML parser carry the key path inside their message (serde_yaml
/// prefixes it, e.g. `spec.sources[0]: unknown field ...`), so `key` is only set for
/// the checks this crate makes after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    /// The file as the caller named it (a path in a git tree or a ConfigMap key).
    pub file: String,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    /// Where in the document, e.g. `environments.production.ref`.
    pub key: Option<String>,
    pub message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, file: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            file: file.to_owned(),
            line: None,
            column: None,
            key: None,
            message: message.into(),
        }
    }

    pub(crate) fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub(crate) fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// Wraps a serde_yaml error, moving its location into `line`/`column` and dropping
    /// the ` at line L column C` it adds so the location is not said twice (a syntax
    /// error may name a second place, its context, which is kept).
    pub(crate) fn from_yaml(kind: ErrorKind, file: &str, err: &serde_yaml::Error) -> Self {
        let mut message = err.to_string();
        let mut error = Self::new(kind, file, String::new());
        if let Some(location) = err.location() {
            let said = format!(" at line {} column {}", location.line(), location.column());
            if let Some(at) = message.find(&said) {
                message.replace_range(at..at + said.len(), "");
            }
            error = error.at(location.line(), location.column());
        }
        error.message = message;
        error
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_like_a_compiler_message() {
        let error = Error::new(
            ErrorKind::Invalid,
            "openvox-code.yaml",
            "unknown moduleset `x`",
        )
        .with_key("environments.production.modulesets")
        .at(12, 3);
        assert_eq!(
            error.to_string(),
            "openvox-code.yaml:12:3: environments.production.modulesets: unknown moduleset `x`"
        );
        let bare = Error::new(ErrorKind::Read, "a.yaml", "file not found");
        assert_eq!(bare.to_string(), "a.yaml: file not found");
    }
}
