//! Puppetfiles: the r10k syntax real control repositories use ([`parse`]), and turning
//! each declared module into content at a fixed version ([`resolve`]).

pub mod parse;
pub mod resolve;

pub use parse::{ParseError, parse_puppetfile, puppetfile_text};

/// A parsed Puppetfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Puppetfile {
    /// `forge '<url>'`, when given.
    pub forge: Option<String>,
    /// Directory of the modules, relative to the environment (`moduledir`, default `modules`).
    pub moduledir: String,
    /// Modules in declaration order.
    pub modules: Vec<ModuleDecl>,
}

/// One `mod` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDecl {
    /// Line of the `mod` keyword (1-based).
    pub line: usize,
    /// Directory name of the module (`apache` for `puppetlabs-apache`).
    pub name: String,
    /// Where it comes from and at which version.
    pub source: ModuleSource,
    /// Path of the module directory relative to the environment root:
    /// `<moduledir>/<name>` or `<install_path>/<name>`.
    pub path: String,
    /// Drop the module's top-level `spec/` directory (r10k's `exclude_spec`, default true).
    pub exclude_spec: bool,
}

/// Where a module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// A Forge release.
    Forge {
        /// `author-name`.
        slug: String,
        version: ForgeVersion,
    },
    /// A git repository.
    Git {
        url: String,
        want: GitWant,
        /// Branch used when the wanted branch does not exist in the module repository.
        default_branch: Option<String>,
    },
}

/// Which release of a Forge module.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ForgeVersion {
    /// This exact version.
    Exact(String),
    /// The current release at build time (`:latest`, or no version given).
    Latest,
}

/// Which commit of a git module.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GitWant {
    /// `:ref`: a branch, a tag or a commit id.
    Ref(String),
    /// `:tag`.
    Tag(String),
    /// `:commit`: a full or abbreviated commit id.
    Commit(String),
    /// `:branch`.
    Branch(String),
    /// `:branch => :control_branch`: the branch of the control repository being built.
    ControlBranch,
}

impl std::fmt::Display for GitWant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitWant::Ref(r) => write!(f, "ref {r:?}"),
            GitWant::Tag(t) => write!(f, "tag {t:?}"),
            GitWant::Commit(c) => write!(f, "commit {c}"),
            GitWant::Branch(b) => write!(f, "branch {b:?}"),
            GitWant::ControlBranch => f.write_str("the control branch"),
        }
    }
}
