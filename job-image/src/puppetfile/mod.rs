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

/// One `mod` line, or one module of openvox-code's module files ([`crate::codeconfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDecl {
    /// Line of the `mod` keyword (1-based); 0 for a module from a module file.
    pub line: usize,
    /// The module file that declared the module (`None`: the Puppetfile at `line`), so
    /// errors send the reader to the file to fix.
    pub file: Option<String>,
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

impl ModuleDecl {
    /// Where the module was declared, for messages: `Puppetfile line 3` or the module
    /// file's path.
    pub fn location(&self) -> String {
        match &self.file {
            Some(file) => file.clone(),
            None => format!("Puppetfile line {}", self.line),
        }
    }

    /// [`ModuleDecl::location`] after another module's location in the same message:
    /// `line 3` or the module file's path.
    pub fn short_location(&self) -> String {
        match &self.file {
            Some(file) => file.clone(),
            None => format!("line {}", self.line),
        }
    }
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
    /// The remote's `HEAD` (its default branch): an openvox-code module without `ref`.
    Head,
    /// openvox-code's `follow_branch`: the branch named like the control branch when
    /// the repository has one, else the module's `ref` (a branch, tag or commit id, as
    /// [`GitWant::Ref`]), else the remote's `HEAD`. Unlike `:default_branch`, the
    /// fallback need not be a branch.
    FollowBranch(Option<String>),
}

impl std::fmt::Display for GitWant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitWant::Ref(r) => write!(f, "ref {r:?}"),
            GitWant::Tag(t) => write!(f, "tag {t:?}"),
            GitWant::Commit(c) => write!(f, "commit {c}"),
            GitWant::Branch(b) => write!(f, "branch {b:?}"),
            GitWant::ControlBranch => f.write_str("the control branch"),
            GitWant::Head => f.write_str("the remote's HEAD"),
            GitWant::FollowBranch(Some(r)) => write!(f, "the control branch, else ref {r:?}"),
            GitWant::FollowBranch(None) => {
                f.write_str("the control branch, else the remote's HEAD")
            }
        }
    }
}
