//! Reading one CodeConfig file: both forms, the schema, its errors and the CI keys.

use std::collections::BTreeMap;

use openvox_codeconfig::{
    CodeConfig, Error, ErrorKind, LoadedConfig, MAX_FILE_BYTES, ModuleFileSpec, load_code_config,
};

const FILE: &str = "openvox-code.yaml";

fn load(text: &str) -> Result<LoadedConfig, Error> {
    let files = BTreeMap::from([(FILE.to_owned(), text.to_owned())]);
    load_code_config(&files, FILE)
}

fn config(text: &str) -> CodeConfig {
    match load(text) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn error(text: &str) -> Error {
    match load(text) {
        Ok(loaded) => panic!("accepted: {loaded:?}"),
        Err(e) => e,
    }
}

const SPEC: &str = "\
sources:
  - url: https://git.example.com/control.git
    branchSelector:
      matchPatterns: [production, 'feature/*']
modulesets:
  base:
    - name: stdlib
      git: https://github.com/puppetlabs/puppetlabs-stdlib.git
      ref: v9.7.0
environments:
  production:
    ref: v1.5.0
    modulesets: [base]
";

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[test]
fn envelope_and_flat_forms_read_the_same() {
    let envelope = format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: CodeConfig\nmetadata:\n  name: x\nspec:\n{}",
        indent(SPEC)
    );
    let flat = config(SPEC);
    assert_eq!(config(&envelope), flat);
    assert_eq!(flat.sources.len(), 1);
    assert_eq!(flat.sources[0].url, "https://git.example.com/control.git");
    assert_eq!(flat.modulesets["base"][0].name, "stdlib");
    assert_eq!(
        flat.environments["production"].reference.as_deref(),
        Some("v1.5.0")
    );
    assert!(
        config("").sources.is_empty(),
        "an empty file is an empty spec"
    );
}

#[test]
fn wrong_kind_or_api_version_is_an_error() {
    let cases = [
        (
            "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: ModuleFile\nspec: {}\n",
            "kind",
            2,
            "found `ModuleFile`",
        ),
        (
            "apiVersion: openvox.voxpupuli.org/v1\nkind: CodeConfig\nspec: {}\n",
            "apiVersion",
            1,
            "found `openvox.voxpupuli.org/v1`",
        ),
        ("kind: CodeConfig\nspec: {}\n", "apiVersion", 0, "missing"),
    ];
    for (text, key, line, words) in cases {
        let e = error(text);
        assert_eq!(e.kind, ErrorKind::Envelope, "{text}");
        assert_eq!(e.key.as_deref(), Some(key), "{text}");
        assert_eq!(e.line, (line > 0).then_some(line), "{text}");
        assert!(e.message.contains(words), "{e}");
    }
}

#[test]
fn modulefiles_in_both_forms() {
    let map_form = "sources:\n  - url: https://g/c.git\n    modulefiles:\n      modules.yaml: required\n      team.yaml: optional\n      'modules/*.yaml': required\n";
    let list_form = "sources:\n  - url: https://g/c.git\n    modulefiles:\n      - name: modules.yaml\n      - name: team.yaml\n        required: false\n      - name: 'modules/*.yaml'\n        required: true\n";
    let want = [
        ("modules.yaml", true),
        ("team.yaml", false),
        ("modules/*.yaml", true),
    ];
    for text in [map_form, list_form] {
        let got: Vec<(String, bool)> = config(text).sources[0]
            .modulefiles
            .iter()
            .map(|ModuleFileSpec { pattern, required }| (pattern.to_string(), *required))
            .collect();
        let want: Vec<(String, bool)> = want.iter().map(|(p, r)| ((*p).to_owned(), *r)).collect();
        assert_eq!(got, want, "{text}");
    }
}

#[test]
fn modulefiles_errors_name_the_key() {
    let cases = [
        (
            "sources:\n  - url: https://g/c.git\n    modulefiles:\n      modules.yaml: maybe\n",
            "sources[0].modulefiles.modules.yaml",
            4,
        ),
        (
            "sources:\n  - url: https://g/c.git\n    modulefiles:\n      - name: ../x.yaml\n",
            "sources[0].modulefiles[0].name",
            4,
        ),
        (
            "sources:\n  - url: https://g/c.git\n    modulefiles:\n      - name: a.yaml\n        requird: true\n",
            "unknown field `requird`",
            5,
        ),
    ];
    for (text, words, line) in cases {
        let e = error(text);
        assert_eq!(e.kind, ErrorKind::Schema, "{e}");
        assert!(e.message.contains(words), "{e}");
        assert_eq!(e.line, Some(line), "{e}");
    }
}

#[test]
fn ci_runner_keys_are_accepted_and_reported() {
    let text = "cachedir: /var/cache/openvox-code\nenvironmentdir: /tmp/envs\noffline: true\noci:\n  registry: ghcr.io/x\ngit:\n  ssh_key: /k\n  credential_helper: store\nsources: []\n";
    let loaded = match load(text) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{e}"),
    };
    let keys: Vec<&str> = loaded.ignored.iter().map(|k| k.key).collect();
    assert_eq!(
        keys,
        ["cachedir", "environmentdir", "offline", "oci", "git"]
    );
    assert!(
        loaded
            .ignored
            .iter()
            .all(|k| k.file == FILE && !k.reason.is_empty())
    );
    let git = &loaded.ignored[4];
    assert!(git.reason.contains("git Secret"), "{}", git.reason);
    assert!(loaded.ignored[3].reason.contains("output"));
    assert!(
        load("sources: []\n")
            .map(|l| l.ignored)
            .unwrap_or_default()
            .is_empty()
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: CodeConfig\nspec:\n  sources:\n    - url: https://g/c.git\n      branchselector: {}\n";
    let e = error(text);
    assert_eq!(e.kind, ErrorKind::Schema);
    assert_eq!((e.line, e.column), (Some(6), Some(7)));
    let shown = e.to_string();
    assert!(
        shown.starts_with("openvox-code.yaml:6:7: spec.sources[0]: unknown field `branchselector`"),
        "{shown}"
    );
    assert!(shown.contains("expected one of"), "{shown}");
}

#[test]
fn bad_yaml_reports_its_line() {
    let e = error("sources:\n  - url: https://g/c.git\n   bad: [\n");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert!(e.line.is_some_and(|l| l >= 3), "{e}");
    assert!(e.to_string().starts_with("openvox-code.yaml:"), "{e}");
    let duplicate = error("sources: []\nsources: []\n");
    assert_eq!(duplicate.kind, ErrorKind::Syntax, "{duplicate}");
}

#[test]
fn wrong_types_and_missing_fields() {
    let cases = [
        ("sources: yes\n", "sources", 1),
        (
            "sources:\n  - branchSelector: {}\n",
            "missing field `url`",
            2,
        ),
        (
            "modulesets:\n  base:\n    - name: stdlib\n",
            "missing field `git`",
            3,
        ),
        (
            "modulesets:\n  base:\n    - name: x\n      git: https://g/x.git\n      follow_branch: sometimes\n",
            "follow_branch",
            5,
        ),
    ];
    for (text, words, line) in cases {
        let e = error(text);
        assert_eq!(e.kind, ErrorKind::Schema, "{e}");
        assert!(e.message.contains(words), "{e}");
        assert_eq!(e.line, Some(line), "{e}");
    }
}

#[test]
fn module_values_are_validated_where_they_are() {
    let module = |extra: &str| {
        format!("modulesets:\n  base:\n    - name: apache\n      git: https://g/a.git\n{extra}")
    };
    let cases = [
        (
            module("      install_as: ../httpd\n"),
            "modulesets.base[0].install_as",
            5,
        ),
        (module("      install_as: a/b\n"), "install_as", 5),
        (
            module("      target_dir: ../site\n"),
            "modulesets.base[0].target_dir",
            5,
        ),
        (module("      target_dir: /etc\n"), "target_dir", 5),
        (module("      target_dir: site/../../x\n"), "target_dir", 5),
        (module("      ref: --upload-pack=x\n"), "ref", 5),
        (
            "modulesets:\n  base:\n    - name: ..\n      git: https://g/a.git\n".to_owned(),
            "modulesets.base[0].name",
            3,
        ),
        (
            "modulesets:\n  base:\n    - name: a\n      git: -oProxyCommand=x\n".to_owned(),
            "git",
            4,
        ),
        (
            "environments:\n  ../prod:\n    ref: main\n".to_owned(),
            "not a safe directory name",
            2,
        ),
    ];
    for (text, words, line) in cases {
        let e = error(&text);
        assert_eq!(e.kind, ErrorKind::Schema, "{e}");
        assert!(e.message.contains(words), "{e}");
        assert_eq!(e.line, Some(line), "{e}");
    }
}

#[test]
fn module_defaults() {
    let c = config(
        "modulesets:\n  base:\n    - name: stdlib\n      git: https://g/s.git\n    - name: apache\n      git: https://g/a.git\n      ref: ''\n      target_dir: site-modules\n      install_as: httpd\n      follow_branch: true\n",
    );
    let [stdlib, apache] = &c.modulesets["base"][..] else {
        panic!("two modules expected");
    };
    assert_eq!(stdlib.install_path(), "modules/stdlib");
    assert_eq!(stdlib.reference, None);
    assert!(!stdlib.follow_branch);
    assert_eq!(apache.install_path(), "site-modules/httpd");
    assert_eq!(apache.reference, None, "an empty ref means HEAD");
    assert!(apache.follow_branch);
}

#[test]
fn static_environments_need_a_ref_and_known_modulesets() {
    let e = error("environments:\n  production:\n    modulesets: []\n");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.key.as_deref(), Some("environments.production.ref"));
    assert_eq!(e.file, FILE);
    let e = error("environments:\n  production:\n    ref: main\n    modulesets: [nope]\n");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.key.as_deref(), Some("environments.production.modulesets"));
    assert!(e.message.contains("`nope`"), "{e}");
}

#[test]
fn overrides_are_read() {
    let c = config(
        "overrides:\n  gitmirror: https://mirror.example.com\n  gitmirrors:\n    github.com: https://gh.example.com\n",
    );
    assert_eq!(
        c.overrides.gitmirror.as_deref(),
        Some("https://mirror.example.com")
    );
    assert_eq!(
        c.overrides.gitmirrors["github.com"],
        "https://gh.example.com"
    );
    let e = error("overrides:\n  gitmirror: x\n  mirror: y\n");
    assert!(e.message.contains("unknown field `mirror`"), "{e}");
}

#[test]
fn oversized_and_missing_files() {
    let big = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
    assert_eq!(error(&big).kind, ErrorKind::TooLarge);
    let none: BTreeMap<String, String> = BTreeMap::new();
    let e = load_code_config(&none, FILE).expect_err("no file");
    assert_eq!(e.kind, ErrorKind::Read);
    assert_eq!(e.to_string(), "openvox-code.yaml: file not found");
}

#[test]
fn selectors_and_exact_names() {
    let c = config(
        "sources:\n  - url: https://g/a.git\n  - url: https://g/b.git\n    branchSelector:\n      matchPatterns: [production, staging]\n      excludePatterns: [staging]\n  - url: https://g/c.git\n    branchSelector:\n      matchPatterns: [production, 'feature/*']\n      excludePatterns: ['feature/wip-*']\n",
    );
    let [all, exact, globs] = &c.sources[..] else {
        panic!("three sources expected");
    };
    assert!(all.branch_selector.selects("anything/at-all"));
    assert!(all.branch_selector.needs_discovery());
    assert_eq!(
        exact.branch_selector.exact_names(),
        Some(vec!["production".to_owned()])
    );
    assert!(!exact.branch_selector.needs_discovery());
    assert!(!exact.branch_selector.selects("staging"));
    assert_eq!(globs.branch_selector.exact_names(), None);
    let cases = [
        ("production", true),
        ("feature/login", true),
        ("feature/wip-login", false),
        ("feature/a/b", false),
        ("staging", false),
    ];
    for (branch, want) in cases {
        assert_eq!(globs.branch_selector.selects(branch), want, "{branch}");
    }
    let e = error(
        "sources:\n  - url: https://g/a.git\n    branchSelector:\n      matchPatterns: ['[oops']\n",
    );
    assert_eq!(e.kind, ErrorKind::Schema);
    assert!(e.message.contains("unclosed `[`"), "{e}");
    assert_eq!(e.line, Some(4));
}
