//! One environment's modules under a CodeConfig: a static environment's modulesets and
//! modules, then the module files the source's `modulefiles` select from the tree (for
//! a branch), combined by openvox-code's rule, pinned by the tree's
//! `openvox-code.lock`, as the [`Puppetfile`] shape the build uses.
//!
//! Every error is one line naming the file (and, for YAML mistakes, the line, column
//! and key), and fails only this branch's environment.

use openvox_codeconfig::{
    LOCKFILE_NAME, Lockfile, MAX_FILE_BYTES, ModuleFile, Skipped, environment_modules,
    select_module_files,
};

use super::CodeConfigModules;
use super::mapping::module_decls;
use super::statics::reads_module_files;
use crate::branches::EnvironmentPlan;
use crate::git::{FetchedRepo, error_chain};
use crate::limits::Bytes;
use crate::puppetfile::Puppetfile;
use openvox_codeconfig::DEFAULT_TARGET_DIR;

/// A branch's modules and where they were described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchModules {
    /// The modules, in the Puppetfile shape (no `forge`: openvox-code modules are git).
    pub puppetfile: Puppetfile,
    /// The module files read, in the order applied.
    pub module_files: Vec<String>,
    /// Whether the branch has a lockfile.
    pub lockfile: bool,
    /// Lockfile entries that no longer pin their module, as `module: why` (for the log).
    pub stale_locks: Vec<String>,
}

impl BranchModules {
    /// `openvox-code.yaml + modules/base.yaml + openvox-code.lock`: what the modules
    /// were described by, for the log.
    pub fn description(&self, main_file: &str) -> String {
        let mut parts = vec![main_file];
        parts.extend(self.module_files.iter().map(String::as_str));
        if self.lockfile {
            parts.push(LOCKFILE_NAME);
        }
        parts.join(" + ")
    }
}

/// Reads the modules of the environment `plan`, whose commit has the root tree `tree`
/// in `control`.
pub fn read_environment_modules(
    config: &CodeConfigModules,
    control: &FetchedRepo,
    tree: gix::ObjectId,
    plan: &EnvironmentPlan,
) -> Result<BranchModules, String> {
    let repo = control.repo();
    let root = repo.find_tree(tree).map_err(|e| error_chain(&e))?;
    let files = if reads_module_files(plan.declared) {
        read_module_files(config, &repo, &root, tree)?
    } else {
        Vec::new()
    };
    let lockfile = match read_text(&repo, &root, LOCKFILE_NAME)? {
        Some(text) => Some(Lockfile::parse(LOCKFILE_NAME, &text).map_err(|e| e.to_string())?),
        None => None,
    };
    let parsed: Vec<ModuleFile> = files.iter().map(|(_, f)| f.clone()).collect();
    // Modulesets reach static environments only, as their declaration names them.
    let declared = plan
        .declared
        .and_then(|_| config.config.environments.get(&plan.name));
    let modules = environment_modules(&config.config.modulesets, declared, &parsed)
        .map_err(|e| e.to_string())?;
    let decls = module_decls(
        &modules,
        &files,
        &config.main_file,
        plan.follows(),
        lockfile.as_ref(),
        &config.config.overrides,
    )?;
    let stale_locks = decls
        .iter()
        .filter(|(_, r)| {
            r.skipped
                .iter()
                .any(|s| matches!(s, Skipped::StaleLock { .. }))
        })
        .map(|(d, r)| format!("{}: {r}", d.name))
        .collect();
    Ok(BranchModules {
        puppetfile: Puppetfile {
            forge: None,
            moduledir: DEFAULT_TARGET_DIR.to_owned(),
            modules: decls.into_iter().map(|(d, _)| d).collect(),
        },
        module_files: files.into_iter().map(|(path, _)| path).collect(),
        lockfile: lockfile.is_some(),
        stale_locks,
    })
}

/// The module files the source's `modulefiles` select in `root` (the tree `tree`),
/// parsed, in the order they apply.
fn read_module_files(
    config: &CodeConfigModules,
    repo: &gix::Repository,
    root: &gix::Tree<'_>,
    tree: gix::ObjectId,
) -> Result<Vec<(String, ModuleFile)>, String> {
    let specs = &config.source().modulefiles;
    let present = if specs.iter().all(|s| s.pattern.is_literal()) {
        // Only exact paths: look each up instead of walking the whole tree.
        let mut present = Vec::new();
        for path in specs.iter().filter_map(|s| s.pattern.literal()) {
            if lookup(root, &path)?.is_some() {
                present.push(path);
            }
        }
        present
    } else {
        file_paths(repo, tree)?
    };
    let chosen = select_module_files(specs, &present).map_err(|e| e.to_string())?;
    let mut files: Vec<(String, ModuleFile)> = Vec::with_capacity(chosen.len());
    for path in chosen {
        let text = read_text(repo, root, &path)?
            .ok_or_else(|| format!("{path}: not found in the branch"))?;
        let parsed = ModuleFile::parse(&path, &text).map_err(|e| e.to_string())?;
        files.push((path, parsed));
    }
    Ok(files)
}

/// The entry at `path` (`/`-separated) below `root`, if there is one.
fn lookup<'repo>(
    root: &gix::Tree<'repo>,
    path: &str,
) -> Result<Option<gix::object::tree::Entry<'repo>>, String> {
    root.lookup_entry(path.split('/').map(str::as_bytes))
        .map_err(|e| format!("{path}: {}", error_chain(&e)))
}

/// The text of the regular file at `path`, `None` when there is no such entry.
fn read_text(
    repo: &gix::Repository,
    root: &gix::Tree<'_>,
    path: &str,
) -> Result<Option<String>, String> {
    let Some(entry) = lookup(root, path)? else {
        return Ok(None);
    };
    if !entry.mode().is_blob() {
        return Err(format!("{path}: not a regular file"));
    }
    let id = entry.object_id();
    let size = repo
        .find_header(id)
        .map_err(|e| format!("{path}: {}", error_chain(&e)))?
        .size();
    if size > MAX_FILE_BYTES as u64 {
        return Err(format!(
            "{path}: file has {} (limit {})",
            Bytes(size),
            Bytes(MAX_FILE_BYTES as u64)
        ));
    }
    let blob = repo
        .find_object(id)
        .map_err(|e| format!("{path}: {}", error_chain(&e)))?;
    String::from_utf8(blob.data.clone())
        .map(Some)
        .map_err(|_| format!("{path}: not UTF-8 text"))
}

/// Every non-directory path of the tree (`/`-separated), for matching module file
/// globs. Names that are not UTF-8 cannot match a pattern and are left out.
fn file_paths(repo: &gix::Repository, tree: gix::ObjectId) -> Result<Vec<String>, String> {
    let mut paths = Vec::new();
    let mut pending = vec![(tree, String::new())];
    while let Some((id, dir)) = pending.pop() {
        let tree = repo.find_tree(id).map_err(|e| error_chain(&e))?;
        for entry in tree.iter() {
            let entry = entry.map_err(|e| error_chain(&e))?;
            let Ok(name) = std::str::from_utf8(entry.filename()) else {
                continue;
            };
            let path = if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            };
            if entry.mode().is_tree() {
                pending.push((entry.object_id(), path));
            } else {
                paths.push(path);
            }
        }
    }
    paths.sort();
    Ok(paths)
}
