//! `includes`: order, merge rules, nesting, limits, and the caller's reader.

use std::collections::BTreeMap;
use std::fmt;

use openvox_codeconfig::{
    ConfigFiles, Error, ErrorKind, LoadedConfig, MAX_INCLUDED_FILES, load_code_config,
};

const MAIN: &str = "config/openvox-code.yaml";

fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .collect()
}

fn load(files: &[(&str, &str)]) -> Result<LoadedConfig, Error> {
    load_code_config(&tree(files), MAIN)
}

fn module(name: &str, reference: &str) -> String {
    format!("    - name: {name}\n      git: https://g/{name}.git\n      ref: {reference}\n")
}

#[test]
fn includes_are_sorted_and_merged() {
    let main = format!(
        "includes:\n  - 'sets/*.yaml'\n  - envs/production.yaml\ncachedir: /c\noverrides:\n  gitmirror: https://one.example.com\n  gitmirrors:\n    github.com: https://gh.example.com\nmodulesets:\n  base:\n{}",
        module("stdlib", "v1")
    );
    // Listed out of order on purpose: matches are taken sorted.
    let b_sets = format!("modulesets:\n  web:\n{}", module("apache", "v2"));
    let a_sets = format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: CodeConfig\nspec:\n  overrides:\n    gitmirror: https://two.example.com\n    gitmirrors:\n      gitlab.com: https://gl.example.com\n  modulesets:\n    base:\n  {}",
        module("concat", "1.10").replace('\n', "\n  ").trim_end()
    );
    let production = "environments:\n  production:\n    ref: v1.5.0\n    modulesets: [base, web]\noffline: true\n";
    let loaded = load(&[
        (MAIN, &main),
        ("config/sets/b.yaml", &b_sets),
        ("config/sets/a.yaml", &a_sets),
        ("config/sets/sub/c.yaml", "this: is not read"),
        ("config/envs/production.yaml", production),
        ("elsewhere/sets/x.yaml", "not: read"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        loaded.files,
        [
            MAIN,
            "config/sets/a.yaml",
            "config/sets/b.yaml",
            "config/envs/production.yaml"
        ]
    );
    let config = &loaded.config;
    // Lists concatenated, in merge order.
    let base: Vec<&str> = config.modulesets["base"]
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(base, ["stdlib", "concat"]);
    // A scalar keeps the form its file wrote (a generic merge would make 1.10 a number).
    assert_eq!(
        config.modulesets["base"][1].reference.as_deref(),
        Some("1.10")
    );
    // Maps merged key by key.
    assert_eq!(
        config.modulesets.keys().collect::<Vec<_>>(),
        ["base", "web"]
    );
    assert_eq!(config.overrides.gitmirrors.len(), 2);
    // Scalars overridden by later files.
    assert_eq!(
        config.overrides.gitmirror.as_deref(),
        Some("https://two.example.com")
    );
    assert_eq!(
        config.environments["production"].modulesets,
        ["base", "web"]
    );
    // Ignored keys are reported with the file that sets them.
    let ignored: Vec<(&str, &str)> = loaded
        .ignored
        .iter()
        .map(|k| (k.file.as_str(), k.key))
        .collect();
    assert_eq!(
        ignored,
        [
            (MAIN, "cachedir"),
            ("config/envs/production.yaml", "offline")
        ]
    );
}

#[test]
fn an_include_can_extend_an_environment_and_a_later_scalar_wins() {
    let loaded = load(&[
        (
            MAIN,
            "includes: [extra.yaml]\nenvironments:\n  production:\n    ref: v1\n    modules:\n      - name: a\n        git: https://g/a.git\n",
        ),
        (
            "config/extra.yaml",
            "environments:\n  production:\n    ref: v2\n    modules:\n      - name: b\n        git: https://g/b.git\n  staging:\n    ref: staging\n",
        ),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let production = &loaded.config.environments["production"];
    assert_eq!(production.reference.as_deref(), Some("v2"));
    assert_eq!(production.modules.len(), 2);
    assert!(loaded.config.environments.contains_key("staging"));
}

#[test]
fn a_null_in_a_later_file_changes_nothing() {
    let loaded = load(&[
        (
            MAIN,
            "includes: [extra.yaml]\noverrides:\n  gitmirror: https://m.example.com\nsources:\n  - url: https://g/c.git\n",
        ),
        ("config/extra.yaml", "overrides:\nsources:\nmodulesets:\n"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.config.overrides.gitmirror.as_deref(),
        Some("https://m.example.com")
    );
    assert_eq!(loaded.config.sources.len(), 1);
}

#[test]
fn nested_includes_are_refused_naming_the_file() {
    let e = load(&[
        (MAIN, "includes: [a.yaml]\n"),
        ("config/a.yaml", "includes: [b.yaml]\n"),
        ("config/b.yaml", "sources: []\n"),
    ])
    .expect_err("nested");
    assert_eq!(e.kind, ErrorKind::Include);
    assert_eq!(e.file, "config/a.yaml");
    assert_eq!(e.key.as_deref(), Some("includes"));
}

#[test]
fn errors_point_into_the_included_file() {
    let e = load(&[
        (MAIN, "includes: ['*.yaml']\n"),
        (
            "config/sets.yaml",
            "modulesets:\n  base:\n    - name: a\n      git: https://g/a.git\n      colour: blue\n",
        ),
    ])
    .expect_err("unknown key");
    assert_eq!(e.file, "config/sets.yaml");
    assert_eq!(e.line, Some(5));
    assert!(e.message.contains("unknown field `colour`"), "{e}");

    let e = load(&[
        (MAIN, "includes: [envs.yaml]\nmodulesets: {}\n"),
        (
            "config/envs.yaml",
            "environments:\n  production:\n    ref: main\n    modulesets: [missing]\n",
        ),
    ])
    .expect_err("unknown moduleset");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.file, "config/envs.yaml");
}

#[test]
fn missing_literal_include_is_an_error_but_an_empty_glob_is_not() {
    let e = load(&[(MAIN, "includes: [typo.yaml]\n")]).expect_err("missing");
    assert_eq!(e.kind, ErrorKind::Include);
    assert_eq!(e.key.as_deref(), Some("includes[0]"));
    assert!(e.message.contains("config/typo.yaml"), "{e}");
    let loaded = load(&[(MAIN, "includes: ['none/*.yaml']\n")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.files, [MAIN]);
}

#[test]
fn the_main_file_and_duplicates_are_read_once() {
    let loaded = load(&[
        (MAIN, "includes: ['*.yaml', a.yaml]\nsources: []\n"),
        ("config/a.yaml", "modulesets: {}\n"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.files, [MAIN, "config/a.yaml"]);
}

#[test]
fn include_patterns_cannot_leave_the_tree() {
    for pattern in ["../secret.yaml", "/etc/x.yaml", "a/../../b.yaml"] {
        let main = format!("includes: ['{pattern}']\n");
        let e = load(&[(MAIN, &main)]).expect_err(pattern);
        assert_eq!(e.kind, ErrorKind::Schema, "{e}");
        assert_eq!(e.line, Some(1), "{e}");
    }
}

#[test]
fn too_many_includes() {
    let names: Vec<String> = (0..=MAX_INCLUDED_FILES)
        .map(|i| format!("config/inc/{i:03}.yaml"))
        .collect();
    let mut files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "{}")).collect();
    files.push((MAIN, "includes: ['inc/*.yaml']\n"));
    let e = load(&files).expect_err("too many");
    assert_eq!(e.kind, ErrorKind::Include);
    assert!(e.message.contains("more than 64"), "{e}");
    let fits = &files[1..];
    assert!(load(fits).is_ok(), "exactly the limit is accepted");
}

/// A reader like the worker's: lists lazily, and can fail.
struct Tree {
    files: BTreeMap<String, String>,
    fail_list: bool,
    listed: std::cell::Cell<usize>,
}

#[derive(Debug)]
struct TreeError(&'static str);

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl ConfigFiles for Tree {
    type Error = TreeError;

    fn read(&self, path: &str) -> Result<Option<String>, TreeError> {
        Ok(self.files.get(path).cloned())
    }

    fn list(&self) -> Result<Vec<String>, TreeError> {
        self.listed.set(self.listed.get() + 1);
        if self.fail_list {
            return Err(TreeError("tree listing failed"));
        }
        // Reverse order, as a tree walk might give: the loader must sort.
        Ok(self.files.keys().rev().cloned().collect())
    }
}

#[test]
fn custom_reader_lists_only_for_globs_and_its_errors_surface() {
    let literal_only = Tree {
        files: tree(&[(MAIN, "includes: [a.yaml]\n"), ("config/a.yaml", "{}")]),
        fail_list: true,
        listed: std::cell::Cell::new(0),
    };
    assert!(load_code_config(&literal_only, MAIN).is_ok());
    assert_eq!(literal_only.listed.get(), 0);

    let reversed = Tree {
        files: tree(&[
            (MAIN, "includes: ['sets/*.yaml']\n"),
            ("config/sets/a.yaml", "{}"),
            ("config/sets/b.yaml", "{}"),
            ("config/sets/c.yaml", "{}"),
        ]),
        fail_list: false,
        listed: std::cell::Cell::new(0),
    };
    let loaded = load_code_config(&reversed, MAIN).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.files,
        [
            MAIN,
            "config/sets/a.yaml",
            "config/sets/b.yaml",
            "config/sets/c.yaml"
        ]
    );
    assert_eq!(reversed.listed.get(), 1);

    let globbing = Tree {
        files: tree(&[(MAIN, "includes: ['*.yaml']\n")]),
        fail_list: true,
        listed: std::cell::Cell::new(0),
    };
    let e = load_code_config(&globbing, MAIN).expect_err("listing fails");
    assert_eq!(e.kind, ErrorKind::Read);
    assert!(e.message.contains("tree listing failed"), "{e}");
}
