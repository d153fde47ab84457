//! The YAML formats of the openvox-code command-line tool, read the same way by the
//! controller (which plans environments from a ConfigMap) and the worker (which builds
//! them from git trees), so a control repository that works with openvox-code on a CI
//! runner works here unchanged.
//!
//! Pure: no filesystem, network or git. Files come through a caller's reader
//! ([`ConfigFiles`]); branch listings and "does this repository have branch X" come in
//! as arguments.
//!
//! # Formats
//!
//! Every file is YAML, either in a Kubernetes-style envelope
//! (`apiVersion: openvox.voxpupuli.org/v1alpha1`, `kind`, optional `metadata`, `spec`)
//! or flat (the spec's keys at the top level). A wrong `kind` is an error.
//!
//! - `kind: CodeConfig` ([`load_code_config`] → [`CodeConfig`]): `sources`,
//!   `modulesets`, `environments`, `overrides`, `includes`. The CI-runner keys
//!   `cachedir`, `environmentdir`, `offline`, `oci` and `git` are accepted and reported
//!   as [`IgnoredKey`]s.
//! - `kind: ModuleFile` ([`ModuleFile::parse`]): a branch's `modules` and `exclude`.
//! - `openvox-code.lock` ([`Lockfile`]): `version: 1` and the commits each environment
//!   was built from; parsed and written deterministically.
//!
//! Unknown keys, wrong types, missing fields and unsafe values (a module name with `/`,
//! a `target_dir` with `..`, a URL starting with `-`) are errors of the form
//! `file:line:col: key: what` ([`Error`]). Files are capped at [`MAX_FILE_BYTES`] and
//! includes at [`MAX_INCLUDED_FILES`].
//!
//! # An environment's modules
//!
//! [`environment_modules`] applies one rule, where "put" means: add the module, or
//! replace (in place) the module of the same name:
//!
//! 1. A static environment (one in `environments`) starts with the modules of each
//!    moduleset it names, in the order named, then its own `modules`, each put in
//!    turn. A discovered environment (a selected branch of a source) starts empty:
//!    modulesets only reach environments that name them.
//! 2. The module files read from the environment's branch ([`select_module_files`]
//!    says which, from the source's `modulefiles`) are applied in order, each
//!    file's modules put in turn, so later files override earlier ones and the branch
//!    overrides the configuration. A static environment whose `ref` is a branch gets
//!    its module files too; one built from a tag or commit has none.
//! 3. Every name in any of those files' `exclude` is removed, whichever file or
//!    moduleset brought it in.
//!
//! Which environments exist is [`plan_environments`]: a static environment wins over a
//! discovered branch of the same name, and an earlier source over a later one. What a
//! static environment's `ref` is (a branch, then a tag, then a full commit id) is
//! [`find_static_ref`]. What a
//! module fetches is [`resolve_want`]: a lockfile entry, then `follow_branch`, then
//! `ref`, then the remote's HEAD. Where it fetches from is [`mirror`].

mod checks;
mod config;
mod envelope;
mod environments;
mod error;
mod glob;
mod includes;
mod lockfile;
mod merge;
mod mirrors;
mod module;
mod modulefile;
mod resolve;
mod selector;

pub use config::{CODE_CONFIG_KIND, CodeConfig, IgnoredKey, NoSource, Source, StaticEnvironment};
pub use envelope::{API_VERSION, MAX_FILE_BYTES};
pub use environments::{
    Origin, PlannedEnvironment, RefKind, UnknownModuleSet, environment_modules, find_static_ref,
    plan_environments,
};
pub use error::{Error, ErrorKind};
pub use glob::{Glob, GlobError};
pub use includes::{ConfigFiles, LoadedConfig, MAX_INCLUDED_FILES, load_code_config};
pub use lockfile::{LOCKFILE_NAME, LOCKFILE_VERSION, LockedEnvironment, LockedModule, Lockfile};
pub use mirrors::{Overrides, mirror};
pub use module::{DEFAULT_TARGET_DIR, Module};
pub use modulefile::{MODULE_FILE_KIND, ModuleFile, ModuleFileSpec, select_module_files};
pub use resolve::{Reason, Resolution, Skipped, Want, resolve_want};
pub use selector::BranchSelector;
