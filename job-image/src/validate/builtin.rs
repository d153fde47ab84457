//! Built-in checks of an environment before it is published, always on and without
//! Puppet: what would make every agent of that environment fail at once, found in
//! milliseconds.
//!
//! - every `hiera.yaml` (of the environment, and of each module: a `hiera.yaml` two
//!   directories down, `<moduledir>/<module>/hiera.yaml`) parses as YAML, and every
//!   data file below its data directories (`defaults.datadir` and each hierarchy
//!   level's `datadir` of a version 5 file, else `data`) parses as YAML (`.yaml`,
//!   `.yml`) or JSON (`.json`) and holds a hash (Hiera refuses any other top level);
//! - every module's `metadata.json` (`<moduledir>/<module>/metadata.json`) parses;
//! - `environment.conf` is UTF-8 text of `key = value` lines (and comments).
//!
//! A problem names the file (relative to the environment), line and column.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::Problem;
use crate::tree::{Content, ContentReader, EntryKind, EnvironmentTree};

/// Results of checks already made in this build, by the git blob checked: the branches
/// of a control repository share most of their files, and every environment holds the
/// same modules, so a cold build of many branches would otherwise parse the same data
/// files once per environment. A check depends on nothing but the file's bytes, which a
/// blob id fixes; the cached problem carries no file name (the caller's is put in).
#[derive(Debug, Default)]
pub struct CheckCache {
    results: Mutex<HashMap<(gix::ObjectId, Check), Option<Problem>>>,
}

impl CheckCache {
    fn get(&self, key: &(gix::ObjectId, Check)) -> Option<Option<Problem>> {
        let results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        results.get(key).cloned()
    }

    fn put(&self, key: (gix::ObjectId, Check), found: Option<Problem>) {
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        results.insert(key, found);
    }

    /// Records that every file of `published` passed the checks its path got there: it
    /// was in a published layer, and an environment with any problem is not published.
    /// Sound as long as the checks are those of the layer's format version (a change
    /// to them bumps [`crate::image::LAYER_FORMAT_VERSION`], and layers of another
    /// version are never read).
    pub fn trust(&self, published: &PublishedFiles) {
        let hiera = |path: &str| published.hiera.get(path).cloned().unwrap_or_default();
        let paths: Vec<&str> = published.files.keys().map(String::as_str).collect();
        for (path, check) in classify(&paths, hiera) {
            if let Some(id) = published.files.get(&path) {
                self.put((*id, check), None);
            }
        }
    }
}

/// Files of a published layer that checks may read, relative to the environment: the
/// git blob id of each (`.yaml`, `.yml`, `.json`, `environment.conf`), and the text of
/// each `hiera.yaml` (which decides what else is checked).
#[derive(Debug, Default)]
pub struct PublishedFiles {
    pub files: BTreeMap<String, gix::ObjectId>,
    pub hiera: BTreeMap<String, String>,
}

impl PublishedFiles {
    /// Whether a check may read the file at `path` (every name [`classify`] can give a
    /// check): its id is worth recording.
    pub fn may_check(path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        name == "environment.conf"
            || [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext))
    }

    /// Whether `path` is a `hiera.yaml` whose text decides the data directories (the
    /// one rule for it, in [`classify`] too).
    pub fn is_hiera_config(path: &str) -> bool {
        let depth = path.matches('/').count();
        path.rsplit('/').next() == Some("hiera.yaml") && matches!(depth, 0 | 2)
    }
}

/// What kind of check a file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Check {
    HieraConfig,
    DataYaml,
    DataJson,
    Metadata,
    EnvironmentConf,
}

/// What the checks of an environment found.
#[derive(Debug, Default)]
pub struct Checked {
    /// The problems, in path order (empty: it is fine).
    pub problems: Vec<Problem>,
    /// Files checked.
    pub files: usize,
    /// Of those, files whose result was known (same blob earlier in this build, or in
    /// a layer of the previous image).
    pub known: usize,
}

/// Checks `tree`, answering from `cache` for blobs checked or trusted before.
pub fn check_environment(
    tree: &EnvironmentTree,
    reader: &mut ContentReader,
    cache: &CheckCache,
) -> Checked {
    let mut out = Checked::default();
    for (path, check) in files_to_check(tree, reader) {
        out.files += 1;
        let blob = match tree.get(&path) {
            Some(EntryKind::File {
                content: Content::Git { id, .. },
                ..
            }) => Some((*id, check)),
            _ => None,
        };
        if let Some(cached) = blob.as_ref().and_then(|key| cache.get(key)) {
            out.known += 1;
            out.problems
                .extend(cached.map(|p| Problem { file: path, ..p }));
            continue;
        }
        let text = match read_text(tree, reader, &path) {
            Ok(text) => text,
            Err(problem) => {
                out.problems.push(problem);
                continue;
            }
        };
        let found = match check {
            Check::HieraConfig => yaml(&path, &text).err(),
            Check::DataYaml => yaml(&path, &text).and_then(|v| hash_yaml(&path, &v)).err(),
            Check::DataJson => json(&path, &text).and_then(|v| hash_json(&path, &v)).err(),
            Check::Metadata => json(&path, &text).err(),
            Check::EnvironmentConf => environment_conf(&path, &text).err(),
        };
        if let Some(key) = blob {
            cache.put(key, found.clone());
        }
        out.problems.extend(found);
    }
    out.problems.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The files of `tree` to check, in path order.
fn files_to_check(tree: &EnvironmentTree, reader: &mut ContentReader) -> Vec<(String, Check)> {
    let files: Vec<&str> = tree
        .entries()
        .filter(|(_, kind)| matches!(kind, EntryKind::File { .. }))
        .map(|(path, _)| path)
        .collect();
    classify(&files, |path| {
        read_text(tree, reader, path).unwrap_or_default()
    })
}

/// Which of `files` (paths of regular files) get which check, in path order;
/// `hiera_text` gives a `hiera.yaml`'s text. A `hiera.yaml` that does not parse is
/// reported by its own check; its data directories are then the default one.
fn classify(files: &[&str], mut hiera_text: impl FnMut(&str) -> String) -> Vec<(String, Check)> {
    let mut data_dirs: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for path in files {
        if PublishedFiles::is_hiera_config(path) {
            out.push((path.to_string(), Check::HieraConfig));
            let base = path.strip_suffix("hiera.yaml").unwrap_or_default();
            let text = hiera_text(path);
            for dir in hiera_data_dirs(&text) {
                data_dirs.insert(format!("{base}{}/", dir.trim_matches('/')));
            }
            continue;
        }
        let depth = path.matches('/').count();
        let name = path.rsplit('/').next().unwrap_or(path);
        match (name, depth) {
            ("metadata.json", 2) => out.push((path.to_string(), Check::Metadata)),
            ("environment.conf", 0) => out.push((path.to_string(), Check::EnvironmentConf)),
            _ => {}
        }
    }
    for path in files {
        if !data_dirs.iter().any(|d| path.starts_with(d.as_str())) {
            continue;
        }
        if path.ends_with(".yaml") || path.ends_with(".yml") {
            out.push((path.to_string(), Check::DataYaml));
        } else if path.ends_with(".json") {
            out.push((path.to_string(), Check::DataJson));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The data directories a `hiera.yaml` names (`data` when it names none or does not
/// parse). Only relative directories inside the environment or module count.
pub fn hiera_data_dirs(text: &str) -> BTreeSet<String> {
    let mut dirs = BTreeSet::new();
    if let Ok(config) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        let mut add = |v: &serde_yaml::Value| {
            if let Some(dir) = v.get("datadir").and_then(|d| d.as_str())
                && !dir.starts_with('/')
                && !dir.split('/').any(|c| c == "..")
            {
                dirs.insert(dir.trim_end_matches('/').to_owned());
            }
        };
        if let Some(defaults) = config.get("defaults") {
            add(defaults);
        }
        for level in config
            .get("hierarchy")
            .and_then(|h| h.as_sequence())
            .into_iter()
            .flatten()
        {
            add(level);
        }
    }
    if dirs.is_empty() {
        dirs.insert("data".to_owned());
    }
    dirs
}

fn read_text(
    tree: &EnvironmentTree,
    reader: &mut ContentReader,
    path: &str,
) -> Result<String, Problem> {
    let problem = |message: String| Problem {
        file: path.to_owned(),
        line: None,
        column: None,
        message,
    };
    let Some(EntryKind::File { content, .. }) = tree.get(path) else {
        return Err(problem("is not a file".into()));
    };
    let mut bytes = Vec::new();
    reader
        .copy_to(content, &mut bytes, path)
        .map_err(|e| problem(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        Problem {
            file: path.to_owned(),
            line: u32::try_from(line).ok(),
            column: u32::try_from(column).ok(),
            message: "is not UTF-8 text".into(),
        }
    })
}

fn yaml(path: &str, text: &str) -> Result<serde_yaml::Value, Problem> {
    serde_yaml::from_str(text).map_err(|e| {
        let location = e.location();
        Problem {
            file: path.to_owned(),
            line: location.as_ref().and_then(|l| u32::try_from(l.line()).ok()),
            column: location
                .as_ref()
                .and_then(|l| u32::try_from(l.column()).ok()),
            message: format!("not valid YAML: {}", strip_location(&e.to_string())),
        }
    })
}

fn json(path: &str, text: &str) -> Result<serde_json::Value, Problem> {
    serde_json::from_str(text).map_err(|e| Problem {
        file: path.to_owned(),
        line: u32::try_from(e.line()).ok(),
        column: u32::try_from(e.column()).ok(),
        message: format!("not valid JSON: {}", strip_location(&e.to_string())),
    })
}

/// A parser's message without the ` at line L column C` it ends with (the problem
/// carries them).
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn top_level_is_not_a_hash(path: &str, what: &str) -> Problem {
    Problem {
        file: path.to_owned(),
        line: Some(1),
        column: Some(1),
        message: format!("Hiera data must be a hash, this is {what}"),
    }
}

fn hash_yaml(path: &str, value: &serde_yaml::Value) -> Result<(), Problem> {
    use serde_yaml::Value;
    match value {
        Value::Mapping(_) | Value::Null => Ok(()),
        Value::Sequence(_) => Err(top_level_is_not_a_hash(path, "a list")),
        Value::Tagged(_) => Err(top_level_is_not_a_hash(path, "a tagged value")),
        _ => Err(top_level_is_not_a_hash(path, "a single value")),
    }
}

fn hash_json(path: &str, value: &serde_json::Value) -> Result<(), Problem> {
    use serde_json::Value;
    match value {
        Value::Object(_) => Ok(()),
        Value::Array(_) => Err(top_level_is_not_a_hash(path, "a list")),
        _ => Err(top_level_is_not_a_hash(path, "a single value")),
    }
}

/// `environment.conf`: blank lines, comments (`#`, `;`) and `key = value` lines.
fn environment_conf(path: &str, text: &str) -> Result<(), Problem> {
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let ok = trimmed
            .split_once('=')
            .is_some_and(|(key, _)| !key.trim().is_empty() && !key.trim().contains(' '));
        if !ok {
            return Err(Problem {
                file: path.to_owned(),
                line: u32::try_from(index + 1).ok(),
                column: Some(1),
                message: format!("not a `setting = value` line: {trimmed:?}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_problems_carry_their_line_and_column() {
        let p = yaml("data/common.yaml", "a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert_eq!(p.file, "data/common.yaml");
        assert!(p.line.is_some() && p.column.is_some(), "{p:?}");
        assert!(p.to_string().starts_with("data/common.yaml:"), "{p}");
        assert!(!p.message.contains(" at line "), "{p}");
        let p = json("m/x/metadata.json", "{\n  \"name\": \"x\",\n}\n").unwrap_err();
        assert_eq!((p.line, p.column), (Some(3), Some(1)), "{p:?}");
        assert!(p.message.starts_with("not valid JSON"), "{p}");
    }

    #[test]
    fn a_published_layer_s_files_pass_the_checks_their_paths_got_there() {
        let id = |text: &str| {
            gix::objs::compute_hash(
                gix::hash::Kind::Sha1,
                gix::objs::Kind::Blob,
                text.as_bytes(),
            )
            .unwrap()
        };
        let hiera = "version: 5\ndefaults:\n  datadir: hieradata\n";
        let mut published = PublishedFiles::default();
        for (path, text) in [
            ("hiera.yaml", hiera),
            ("hieradata/common.yaml", "a: 1\n"),
            ("data/other.yaml", "b: 2\n"),
            ("environment.conf", "modulepath = modules\n"),
            ("modules/x/metadata.json", "{}"),
        ] {
            published.files.insert(path.into(), id(text));
        }
        published.hiera.insert("hiera.yaml".into(), hiera.into());
        let cache = CheckCache::default();
        cache.trust(&published);
        let passed = |text: &str, check| cache.get(&(id(text), check)) == Some(None);
        assert!(passed(hiera, Check::HieraConfig));
        assert!(passed("a: 1\n", Check::DataYaml));
        assert!(passed("modulepath = modules\n", Check::EnvironmentConf));
        assert!(passed("{}", Check::Metadata));
        // Outside the data directory there: it was never checked, so nothing is known.
        assert_eq!(cache.get(&(id("b: 2\n"), Check::DataYaml)), None);
        assert!(PublishedFiles::may_check("data/x.yml") && !PublishedFiles::may_check("x.pp"));
    }

    #[test]
    fn hiera_data_must_be_a_hash() {
        let list = yaml("d.yaml", "- a\n- b\n").unwrap();
        assert!(
            hash_yaml("d.yaml", &list)
                .unwrap_err()
                .message
                .contains("a list")
        );
        assert!(hash_yaml("d.yaml", &yaml("d.yaml", "").unwrap()).is_ok());
        assert!(hash_yaml("d.yaml", &yaml("d.yaml", "a: 1").unwrap()).is_ok());
        assert!(hash_json("d.json", &json("d.json", "3").unwrap()).is_err());
    }

    #[test]
    fn data_dirs_come_from_hiera_yaml_version_5() {
        let text = "version: 5\ndefaults:\n  datadir: hieradata\nhierarchy:\n  - name: n\n    datadir: other/\n    path: common.yaml\n  - name: abs\n    datadir: /etc/x\n";
        assert_eq!(
            hiera_data_dirs(text).into_iter().collect::<Vec<_>>(),
            ["hieradata", "other"]
        );
        assert_eq!(
            hiera_data_dirs("version: 5\n")
                .into_iter()
                .collect::<Vec<_>>(),
            ["data"]
        );
        assert_eq!(
            hiera_data_dirs(": : :").into_iter().collect::<Vec<_>>(),
            ["data"]
        );
    }

    #[test]
    fn environment_conf_lines() {
        assert!(environment_conf("environment.conf", "# c\nmodulepath = site:modules\n\n").is_ok());
        let p = environment_conf("environment.conf", "modulepath = a\nbroken line\n").unwrap_err();
        assert_eq!(p.line, Some(2));
    }
}
