//! The worker's side of Puppet validation (`spec.validate`): stage the files Puppet
//! compiles of each rebuilt environment into the directory shared with the validator
//! container, ask for them, and read the verdicts. The protocol and the validator's
//! script are in [`openvox_crds::validator`].
//!
//! What is staged is what the server compiles: the environment's manifest (the
//! `manifest` setting of `environment.conf`, default `manifests/`), and in every module
//! of the environment's module path (`modulepath` of `environment.conf`, its relative
//! entries; default `modules`) the `.pp` files under `manifests/`, `functions/` and
//! `types/` and the `.epp` files under `templates/`. Never `examples/`, `spec/`, Bolt
//! `plans/` or `tasks/`: measured on real public modules, every error the parser
//! reports comes from those, and the server loads none of them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openvox_crds::validator::{ENVS, ERROR, REQUEST, RESULTS};

use super::Problem;
use crate::progress::line;
use crate::tree::{ContentReader, EntryKind, EnvironmentTree};

/// Where the validator is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct PuppetValidation {
    /// The directory shared with the validator container.
    pub dir: PathBuf,
    /// Time limit of the whole validation.
    pub timeout: Duration,
}

/// Why an environment did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One line for `status.lastBuild.failed[].reason`.
    pub reason: String,
    /// The first file Puppet found wrong.
    pub problem: Option<Problem>,
}

/// How often the results directory is read.
const POLL: Duration = Duration::from_millis(100);

/// Stages `envs` (name and tree of each rebuilt environment), waits for the validator
/// and returns the environments it rejected
/// (by name). Each verdict is logged as one line as it arrives.
pub async fn validate(
    validation: &PuppetValidation,
    envs: &[(String, EnvironmentTree)],
) -> BTreeMap<String, Rejection> {
    let mut rejected = BTreeMap::new();
    if envs.is_empty() {
        return rejected;
    }
    let started = Instant::now();
    let staging = {
        let dir = validation.dir.clone();
        let trees = envs.to_vec();
        tokio::task::spawn_blocking(move || stage_all(&dir, &trees)).await
    };
    let counts = match staging {
        Ok(Ok(counts)) => counts,
        Ok(Err(reason)) => {
            return reject_all(
                envs,
                &format!("staging for Puppet validation failed: {reason}"),
            );
        }
        Err(e) => return reject_all(envs, &format!("staging for Puppet validation stopped: {e}")),
    };
    tracing::info!(
        "{}",
        line(
            "stage",
            "validation",
            &format!(
                "{} environments, {} files for Puppet",
                envs.len(),
                counts.values().sum::<usize>()
            ),
            started.elapsed()
        )
    );

    let results = validation.dir.join(RESULTS);
    let deadline = started + validation.timeout;
    let mut pending: Vec<&str> = envs.iter().map(|(name, _)| name.as_str()).collect();
    // The validator takes two environments at a time: verdicts arrive in any order.
    while !pending.is_empty() {
        if let Ok(reason) = std::fs::read_to_string(results.join(ERROR)) {
            let reason = format!("Puppet validation could not run: {}", reason.trim());
            for name in pending.drain(..) {
                log_verdict(name, &format!("FAILED: {reason}"), Duration::ZERO, true);
                rejected.insert(name.to_owned(), rejection(reason.clone(), None));
            }
            break;
        }
        pending.retain(|&name| {
            let Some(exit) = read_exit(&results, name) else {
                return true;
            };
            let log: String = ["pp", "epp"]
                .iter()
                .map(|kind| {
                    std::fs::read_to_string(results.join(format!("{name}.{kind}.log")))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\n");
            let took = took(&results, name);
            let files = counts.get(name).copied().unwrap_or(0);
            match verdict(name, exit, &log) {
                None => log_verdict(name, &format!("ok, {files} files"), took, false),
                Some(r) => {
                    log_verdict(name, &format!("FAILED: {}", r.reason), took, true);
                    rejected.insert(name.to_owned(), r);
                }
            }
            false
        });
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let reason = format!(
                "Puppet validation did not finish within {} (spec.validate.timeout); see the validator container's log",
                crate::progress::seconds(validation.timeout)
            );
            for name in pending.drain(..) {
                log_verdict(name, &format!("FAILED: {reason}"), Duration::ZERO, true);
                rejected.insert(name.to_owned(), rejection(reason.clone(), None));
            }
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    rejected
}

/// How long the validator took for `name`: from its `.start` file to its `.exit` file.
fn took(results: &Path, name: &str) -> Duration {
    let modified = |suffix: &str| {
        std::fs::metadata(results.join(format!("{name}.{suffix}")))
            .and_then(|m| m.modified())
            .ok()
    };
    match (modified("start"), modified("exit")) {
        (Some(start), Some(exit)) => exit.duration_since(start).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

fn rejection(reason: String, problem: Option<Problem>) -> Rejection {
    Rejection { reason, problem }
}

fn reject_all(envs: &[(String, EnvironmentTree)], reason: &str) -> BTreeMap<String, Rejection> {
    envs.iter()
        .map(|(name, _)| {
            log_verdict(name, &format!("FAILED: {reason}"), Duration::ZERO, true);
            (name.clone(), rejection(reason.to_owned(), None))
        })
        .collect()
}

fn log_verdict(name: &str, detail: &str, took: Duration, failed: bool) {
    let text = line("validate", name, detail, took);
    if failed {
        tracing::warn!("{text}");
    } else {
        tracing::info!("{text}");
    }
}

/// The two exit codes of `results/<name>.exit`, once it is there.
fn read_exit(results: &Path, name: &str) -> Option<(i32, i32)> {
    let text = std::fs::read_to_string(results.join(format!("{name}.exit"))).ok()?;
    let mut codes = text
        .split_whitespace()
        .map(|c| c.parse::<i32>().unwrap_or(-1));
    Some((codes.next()?, codes.next().unwrap_or(-1)))
}

/// The verdict on one environment from the validator's exit codes and output: `None`
/// when it passed.
pub fn verdict(name: &str, (parser, epp): (i32, i32), log: &str) -> Option<Rejection> {
    let problems = parse_errors(name, log);
    if parser == 0 && epp == 0 && problems.is_empty() {
        return None;
    }
    if let Some(first) = problems.first() {
        let more = match problems.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return Some(rejection(
            format!("Puppet validation: {first}{more}"),
            Some(first.clone()),
        ));
    }
    // Failed without an error naming a file: say what it printed last.
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(2)
        .collect();
    let said = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
    let said: String = said.chars().take(300).collect();
    Some(rejection(
        format!("Puppet validation failed (parser exit {parser}, epp exit {epp}): {said}"),
        None,
    ))
}

/// Puppet's error lines (`Error: … (file: F, line: L, column: C)`) as problems, in the
/// order printed, with paths relative to the environment.
pub fn parse_errors(name: &str, log: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    for raw in log.lines() {
        let text = strip_ansi(raw);
        let Some(rest) = text.trim().strip_prefix("Error: ") else {
            continue;
        };
        let Some(open) = rest.rfind("(file: ") else {
            continue;
        };
        let mut message = rest[..open].trim_end().to_owned();
        if let Some(after) = message.strip_prefix("Could not parse for environment ")
            && let Some((_, m)) = after.split_once(": ")
        {
            message = m.to_owned();
        }
        let location = rest[open + "(file: ".len()..].trim_end_matches(')');
        let mut parts = location.split(", ");
        let file = parts.next().unwrap_or_default();
        let mut problem = Problem {
            file: relative_to_environment(name, file),
            line: None,
            column: None,
            message,
        };
        for part in parts {
            if let Some(n) = part.strip_prefix("line: ") {
                problem.line = n.trim().parse().ok();
            } else if let Some(n) = part.strip_prefix("column: ") {
                problem.column = n.trim().parse().ok();
            }
        }
        problems.push(problem);
    }
    problems
}

/// `…/envs/<name>/a/b.pp` or `./a/b.pp` → `a/b.pp`.
fn relative_to_environment(name: &str, file: &str) -> String {
    let marker = format!("/{ENVS}/{name}/");
    if let Some(at) = file.find(&marker) {
        return file[at + marker.len()..].to_owned();
    }
    file.strip_prefix("./").unwrap_or(file).to_owned()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Stages every environment, then writes the request. Returns the file count per
/// environment.
fn stage_all(
    dir: &Path,
    trees: &[(String, EnvironmentTree)],
) -> Result<BTreeMap<String, usize>, String> {
    let mut reader = ContentReader::new();
    let mut counts = BTreeMap::new();
    for (name, tree) in trees {
        let dest = dir.join(ENVS).join(name);
        let count = stage(tree, &mut reader, &dest)?;
        counts.insert(name.clone(), count);
    }
    let request = dir.join(format!(".{REQUEST}.tmp"));
    let mut file =
        std::fs::File::create(&request).map_err(|e| format!("{}: {e}", request.display()))?;
    for (name, _) in trees {
        writeln!(file, "{name}").map_err(|e| e.to_string())?;
    }
    file.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&request, dir.join(REQUEST)).map_err(|e| e.to_string())?;
    Ok(counts)
}

/// Copies the files Puppet compiles of `tree` to `dest`; returns how many.
fn stage(tree: &EnvironmentTree, reader: &mut ContentReader, dest: &Path) -> Result<usize, String> {
    let files = compiled_files(tree, reader);
    for path in &files {
        let Some(EntryKind::File { content, .. }) = tree.get(path) else {
            continue;
        };
        let target = dest.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut file = std::fs::File::create(&target).map_err(|e| format!("{path}: {e}"))?;
        reader
            .copy_to(content, &mut file, path)
            .map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(files.len())
}

/// The files of `tree` the server compiles (regular files only, in path order).
pub fn compiled_files(tree: &EnvironmentTree, reader: &mut ContentReader) -> Vec<String> {
    let conf = match tree.get("environment.conf") {
        Some(EntryKind::File { content, .. }) => {
            let mut bytes = Vec::new();
            let _ = reader.copy_to(content, &mut bytes, "environment.conf");
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::new(),
    };
    let layout = Layout::from_environment_conf(&conf);
    tree.entries()
        .filter(|(_, kind)| matches!(kind, EntryKind::File { .. }))
        .map(|(path, _)| path)
        .filter(|path| layout.compiles(path))
        .map(str::to_owned)
        .collect()
}

/// Where an environment's manifest and modules are, from its `environment.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The main manifest: a directory or one file.
    pub manifest: String,
    /// Module directories, relative to the environment.
    pub module_dirs: Vec<String>,
}

impl Layout {
    /// Reads `manifest` and `modulepath`; entries that leave the environment
    /// (absolute, `..`, `$variables`) are not the environment's and are skipped.
    pub fn from_environment_conf(text: &str) -> Self {
        let inside = |p: &str| {
            let p = p.trim().trim_end_matches('/');
            (!p.is_empty()
                && !p.starts_with('/')
                && !p.contains('$')
                && !p.split('/').any(|c| c == ".." || c == "."))
            .then(|| p.to_owned())
        };
        let mut layout = Layout {
            manifest: "manifests".into(),
            module_dirs: vec!["modules".into()],
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key.trim() {
                "manifest" => {
                    if let Some(m) = inside(value) {
                        layout.manifest = m;
                    }
                }
                "modulepath" => {
                    layout.module_dirs = value.split(':').filter_map(inside).collect();
                }
                _ => {}
            }
        }
        layout
    }

    /// Whether the server compiles the file at `path`.
    pub fn compiles(&self, path: &str) -> bool {
        let in_manifest = path == self.manifest || path.starts_with(&format!("{}/", self.manifest));
        if in_manifest && path.ends_with(".pp") {
            return true;
        }
        self.module_dirs.iter().any(|dir| {
            let Some(rest) = path
                .strip_prefix(dir.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                return false;
            };
            // <module>/<kind>/…
            let mut parts = rest.splitn(3, '/');
            let (Some(_module), Some(kind), Some(_file)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            match kind {
                "manifests" | "functions" | "types" => path.ends_with(".pp"),
                "templates" => path.ends_with(".epp"),
                _ => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puppet_errors_name_file_line_and_column_relative_to_the_environment() {
        let log = "\
Error: Could not parse for environment production: Syntax error at '}' (file: /var/lib/openvox-code/validate/envs/production/site/role/manifests/web.pp, line: 1, column: 16)
Error: Could not parse for environment production: Syntax error at end of input (file: /x/envs/production/manifests/site.pp)
\u{1b}[1;31mError: Syntax error at 'if' (file: ./modules/apache/templates/vhost.epp, line: 2, column: 5)\u{1b}[0m
Error: Errors while validating epp
Error: Try 'puppet help epp validate' for usage
";
        let problems = parse_errors("production", log);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(problems[0].file, "site/role/manifests/web.pp");
        assert_eq!((problems[0].line, problems[0].column), (Some(1), Some(16)));
        assert_eq!(problems[0].message, "Syntax error at '}'");
        assert_eq!(problems[1].file, "manifests/site.pp");
        assert_eq!(problems[1].line, None);
        assert_eq!(problems[2].file, "modules/apache/templates/vhost.epp");
        assert_eq!((problems[2].line, problems[2].column), (Some(2), Some(5)));

        let rejected = verdict("production", (1, 1), log).unwrap();
        assert!(
            rejected
                .reason
                .starts_with("Puppet validation: site/role/manifests/web.pp:1:16: Syntax error"),
            "{}",
            rejected.reason
        );
        assert!(
            rejected.reason.ends_with("(and 2 more)"),
            "{}",
            rejected.reason
        );
        assert_eq!(rejected.problem.unwrap().line, Some(1));
    }

    #[test]
    fn a_clean_run_passes_and_a_failure_without_a_file_says_what_was_printed() {
        assert_eq!(verdict("p", (0, 0), ""), None);
        let r = verdict("p", (1, 0), "something\nruby: cannot load such file\n").unwrap();
        assert!(r.reason.contains("parser exit 1"), "{}", r.reason);
        assert!(r.reason.contains("cannot load such file"), "{}", r.reason);
        assert!(r.problem.is_none());
    }

    #[test]
    fn only_what_the_server_compiles_is_validated() {
        let layout = Layout::from_environment_conf("modulepath = site:modules:$basemodulepath\n");
        assert_eq!(layout.module_dirs, ["site", "modules"]);
        for yes in [
            "manifests/site.pp",
            "manifests/nodes/web.pp",
            "site/role/manifests/init.pp",
            "modules/stdlib/functions/x.pp",
            "modules/stdlib/types/port.pp",
            "modules/apache/templates/vhost.epp",
        ] {
            assert!(layout.compiles(yes), "{yes}");
        }
        for no in [
            "modules/apache/examples/init.pp",
            "modules/apache/spec/fixtures/x.pp",
            "modules/apache/plans/deploy.pp",
            "plans/deploy.pp",
            "site/profile/templates/x.erb",
            "modules/apache/manifests/README.md",
            "modules/init.pp",
            "other/m/manifests/init.pp",
        ] {
            assert!(!layout.compiles(no), "{no}");
        }
        let default = Layout::from_environment_conf("");
        assert_eq!(default.module_dirs, ["modules"]);
        assert!(!default.compiles("site/role/manifests/init.pp"));
        let odd =
            Layout::from_environment_conf("manifest = site.pp\nmodulepath = /etc/x:../y:mods\n");
        assert_eq!(odd.module_dirs, ["mods"]);
        assert!(odd.compiles("site.pp"));
        assert!(!odd.compiles("manifests/site.pp"));
    }
}
