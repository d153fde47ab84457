//! Gates an environment passes before it is published.
//!
//! - [`builtin`]: always on, in the worker, without Puppet (Hiera YAML and JSON,
//!   `metadata.json`, `environment.conf`);
//! - [`puppet`]: opt-in (`spec.validate`), Puppet's own parser in a validator container
//!   of the same pod, which sees the rebuilt environments' compiled files in a shared
//!   directory.
//!
//! An environment that fails a gate is held back like any failed environment: its
//! previous layer stays in the image.

pub mod builtin;
pub mod puppet;

use std::fmt;

/// Something in an environment that Puppet would not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File, relative to the environment's root.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}
