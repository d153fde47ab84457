//! Loading a CodeConfig with its `includes`, through a reader the caller supplies: the
//! controller reads a ConfigMap, the worker a git tree, tests a map in memory.
//!
//! Include patterns are relative to the main file's directory; each pattern's matches
//! are taken in sorted order, patterns in the order written. A pattern without glob
//! characters names one file that must exist (a typo should not silently drop part of
//! the configuration); a glob may match nothing. A file matched twice, or the main file
//! matched by its own pattern, is read once. Included files cannot include others.
//! Every file is checked against the schema on its own before anything is merged, so
//! errors point into the file that has the mistake.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::hash::BuildHasher;

use crate::config::{CODE_CONFIG_KIND, CodeConfig, IgnoredKey, Spec};
use crate::envelope::parse_document;
use crate::error::{Error, ErrorKind};
use crate::glob::Glob;

/// Most files one configuration may include, so a pattern like `**` over a large tree
/// fails clearly instead of reading thousands of files.
pub const MAX_INCLUDED_FILES: usize = 64;

/// Where configuration files come from. Paths are `/`-separated and relative to the
/// root of whatever the reader serves.
pub trait ConfigFiles {
    type Error: fmt::Display;

    /// The text of `path`, or `None` when there is no such file.
    fn read(&self, path: &str) -> Result<Option<String>, Self::Error>;

    /// Every file path there is, for matching include globs. Only called when an
    /// include pattern has glob characters.
    fn list(&self) -> Result<Vec<String>, Self::Error>;
}

/// A ConfigMap's data, or any path-to-text map.
impl ConfigFiles for BTreeMap<String, String> {
    type Error = Infallible;

    fn read(&self, path: &str) -> Result<Option<String>, Infallible> {
        Ok(self.get(path).cloned())
    }

    fn list(&self) -> Result<Vec<String>, Infallible> {
        Ok(self.keys().cloned().collect())
    }
}

impl<S: BuildHasher> ConfigFiles for HashMap<String, String, S> {
    type Error = Infallible;

    fn read(&self, path: &str) -> Result<Option<String>, Infallible> {
        Ok(self.get(path).cloned())
    }

    fn list(&self) -> Result<Vec<String>, Infallible> {
        Ok(self.keys().cloned().collect())
    }
}

/// A merged configuration and what was learnt while reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    pub config: CodeConfig,
    /// The files read, in merge order: the main file first.
    pub files: Vec<String>,
    /// CI-runner keys that were set, per file, so the product can warn about them.
    pub ignored: Vec<IgnoredKey>,
}

/// Reads `main` and its includes from `files`, checks each, merges them and checks
/// the result (every static environment has a `ref`, every moduleset it names exists).
pub fn load_code_config<F: ConfigFiles + ?Sized>(
    files: &F,
    main: &str,
) -> Result<LoadedConfig, Error> {
    let text =
        read(files, main)?.ok_or_else(|| Error::new(ErrorKind::Read, main, "file not found"))?;
    let mut spec: Spec = parse_document(main, &text, CODE_CONFIG_KIND)?;
    let mut origins = Origins::default();
    origins.record(main, &spec);
    let mut ignored = spec.ignored_keys(main);
    let mut loaded = vec![main.to_owned()];

    for (path, pattern_index) in expand(files, main, &spec.includes)? {
        let Some(text) = read(files, &path)? else {
            return Err(Error::new(
                ErrorKind::Include,
                main,
                format!("included file `{path}` not found"),
            )
            .with_key(format!("includes[{pattern_index}]")));
        };
        let included: Spec = parse_document(&path, &text, CODE_CONFIG_KIND)?;
        if !included.includes.is_empty() {
            return Err(Error::new(
                ErrorKind::Include,
                &path,
                format!("an included file cannot include others (included from {main})"),
            )
            .with_key("includes"));
        }
        origins.record(&path, &included);
        ignored.extend(included.ignored_keys(&path));
        spec.merge(included);
        loaded.push(path);
    }

    origins.check(&spec)?;
    Ok(LoadedConfig {
        config: CodeConfig {
            includes: spec.includes,
            sources: spec.sources,
            modulesets: spec.modulesets,
            environments: spec.environments,
            overrides: spec.overrides,
        },
        files: loaded,
        ignored,
    })
}

fn read<F: ConfigFiles + ?Sized>(files: &F, path: &str) -> Result<Option<String>, Error> {
    files
        .read(path)
        .map_err(|e| Error::new(ErrorKind::Read, path, e.to_string()))
}

/// The files the patterns name, each with the index of the pattern that named it.
fn expand<F: ConfigFiles + ?Sized>(
    files: &F,
    main: &str,
    patterns: &[Glob],
) -> Result<Vec<(String, usize)>, Error> {
    let dir = main.rsplit_once('/').map(|(dir, _)| escape(dir));
    let mut listing: Option<Vec<String>> = None;
    let mut chosen: Vec<(String, usize)> = Vec::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let key = format!("includes[{index}]");
        let joined = match &dir {
            Some(dir) => format!("{dir}/{pattern}"),
            None => pattern.to_string(),
        };
        let glob = Glob::new(&joined).map_err(|e| {
            Error::new(ErrorKind::Include, main, e.to_string()).with_key(key.clone())
        })?;
        let matches = match glob.literal() {
            Some(path) => vec![path],
            None => {
                let all = match &listing {
                    Some(all) => all,
                    None => listing.insert(
                        files
                            .list()
                            .map_err(|e| Error::new(ErrorKind::Read, main, e.to_string()))?,
                    ),
                };
                let mut matches: Vec<String> = all
                    .iter()
                    .map(|p| p.strip_prefix("./").unwrap_or(p))
                    .filter(|p| glob.matches(p))
                    .map(str::to_owned)
                    .collect();
                matches.sort();
                matches
            }
        };
        for path in matches {
            if path == main || chosen.iter().any(|(p, _)| *p == path) {
                continue;
            }
            if chosen.len() == MAX_INCLUDED_FILES {
                return Err(Error::new(
                    ErrorKind::Include,
                    main,
                    format!("more than {MAX_INCLUDED_FILES} included files"),
                )
                .with_key(key));
            }
            chosen.push((path, index));
        }
    }
    Ok(chosen)
}

/// Escapes glob characters in the main file's directory so only the pattern globs.
fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Which file said what, so checks on the merged configuration can name the file.
#[derive(Default)]
struct Origins {
    /// The first file that mentions each static environment.
    environments: BTreeMap<String, String>,
    /// (file, environment, moduleset) for every moduleset an environment names.
    moduleset_uses: Vec<(String, String, String)>,
}

impl Origins {
    fn record(&mut self, file: &str, spec: &Spec) {
        for (name, environment) in &spec.environments {
            self.environments
                .entry(name.clone())
                .or_insert_with(|| file.to_owned());
            for set in &environment.modulesets {
                self.moduleset_uses
                    .push((file.to_owned(), name.clone(), set.clone()));
            }
        }
    }

    fn check(&self, merged: &Spec) -> Result<(), Error> {
        for (name, environment) in &merged.environments {
            if environment.reference.is_none() {
                let file = self.environments.get(name).map_or("", String::as_str);
                return Err(Error::new(
                    ErrorKind::Invalid,
                    file,
                    "a static environment needs a ref (branch, tag or commit)",
                )
                .with_key(format!("environments.{name}.ref")));
            }
        }
        for (file, environment, set) in &self.moduleset_uses {
            if !merged.modulesets.contains_key(set) {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    file,
                    format!("unknown moduleset `{set}`"),
                )
                .with_key(format!("environments.{environment}.modulesets")));
            }
        }
        Ok(())
    }
}
