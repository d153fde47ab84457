//! Module files, an environment's module set, and which environments exist.

use std::collections::BTreeMap;

use openvox_codeconfig::{
    ErrorKind, Glob, Module, ModuleFile, ModuleFileSpec, Origin, RefKind, StaticEnvironment,
    environment_modules, find_static_ref, plan_environments, select_module_files,
};

fn module_file(text: &str) -> ModuleFile {
    ModuleFile::parse("modules.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn module(name: &str, reference: &str) -> Module {
    let file = module_file(&format!(
        "modules:\n  - name: {name}\n    git: https://g/{name}.git\n    ref: {reference}\n"
    ));
    file.modules[0].clone()
}

fn names_and_refs(modules: &[Module]) -> Vec<(String, String)> {
    modules
        .iter()
        .map(|m| (m.name.clone(), m.reference.clone().unwrap_or_default()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn module_file_forms_and_contents() {
    let flat = "modules:\n  - name: stdlib\n    git: https://g/stdlib.git\n    ref: v9\n  - name: myapp\n    git: git@g:me/myapp.git\n    target_dir: site-modules\nexclude:\n  - firewall\n";
    let envelope = format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: ModuleFile\nspec:\n{}",
        flat.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let parsed = module_file(flat);
    assert_eq!(module_file(&envelope), parsed);
    assert_eq!(parsed.modules.len(), 2);
    assert_eq!(parsed.modules[1].install_path(), "site-modules/myapp");
    assert_eq!(parsed.exclude, ["firewall"]);
    assert_eq!(module_file("exclude: [a]\n").modules, []);

    let wrong_kind = ModuleFile::parse(
        "modules.yaml",
        "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: CodeConfig\nspec: {}\n",
    )
    .expect_err("wrong kind");
    assert_eq!(wrong_kind.kind, ErrorKind::Envelope);

    let unknown = ModuleFile::parse("team.yaml", "modules: []\nexcludes: [a]\n").expect_err("typo");
    assert_eq!(unknown.file, "team.yaml");
    assert_eq!(unknown.line, Some(2));
    assert!(
        unknown.message.contains("unknown field `excludes`"),
        "{unknown}"
    );

    let bad = ModuleFile::parse(
        "modules.yaml",
        "modules:\n  - name: x\n    git: https://g/x.git\n    install_as: ..\n",
    )
    .expect_err("unsafe install_as");
    assert_eq!(bad.line, Some(4));
    assert!(bad.message.contains("modules[0].install_as"), "{bad}");
}

fn spec(pattern: &str, required: bool) -> ModuleFileSpec {
    ModuleFileSpec {
        pattern: Glob::new(pattern).unwrap_or_else(|e| panic!("{e}")),
        required,
    }
}

#[test]
fn module_files_are_selected_in_order_with_sorted_glob_matches() {
    let present: Vec<String> = [
        "modules/b.yaml",
        "modules/a.yaml",
        "modules/sub/c.yaml",
        "modules.yaml",
        "README.md",
    ]
    .map(str::to_owned)
    .to_vec();
    /// The files chosen, or the pattern a missing-file error names.
    type Want<'a> = Result<Vec<&'a str>, &'a str>;
    let cases: [(Vec<ModuleFileSpec>, Want); 6] = [
        (
            vec![spec("modules.yaml", true), spec("modules/*.yaml", true)],
            Ok(vec!["modules.yaml", "modules/a.yaml", "modules/b.yaml"]),
        ),
        (
            vec![spec("modules/*.yaml", true), spec("modules/a.yaml", true)],
            Ok(vec!["modules/a.yaml", "modules/b.yaml"]),
        ),
        (
            vec![spec("team.yaml", false), spec("modules.yaml", true)],
            Ok(vec!["modules.yaml"]),
        ),
        (vec![spec("team.yaml", true)], Err("team.yaml")),
        (vec![spec("extra/*.yaml", true)], Err("extra/*.yaml")),
        (vec![spec("extra/*.yaml", false)], Ok(vec![])),
    ];
    for (specs, want) in cases {
        match (select_module_files(&specs, &present), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(e), Err(file)) => {
                assert_eq!(e.kind, ErrorKind::MissingModuleFile);
                assert_eq!(e.file, file);
            }
            (got, want) => panic!("{specs:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn discovered_environment_modules_come_from_its_module_files() {
    let first = module_file(
        "modules:\n  - {name: stdlib, git: 'https://g/stdlib.git', ref: v1}\n  - {name: firewall, git: 'https://g/fw.git'}\n  - {name: concat, git: 'https://g/concat.git', ref: v1}\n",
    );
    let second = module_file(
        "modules:\n  - {name: stdlib, git: 'https://g/stdlib.git', ref: v2}\n  - {name: apache, git: 'https://g/apache.git', ref: v3}\nexclude: [firewall]\n",
    );
    let modulesets = BTreeMap::from([("base".to_owned(), vec![module("ntp", "v0")])]);
    let got =
        environment_modules(&modulesets, None, &[first, second]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        names_and_refs(&got),
        pairs(&[("stdlib", "v2"), ("concat", "v1"), ("apache", "v3")]),
        "later files override by name, excludes remove, modulesets are not implied"
    );
    assert_eq!(
        environment_modules(&modulesets, None, &[]).map(|m| m.len()),
        Ok(0)
    );
}

#[test]
fn static_environment_modules_layer_sets_then_modules_then_files() {
    let modulesets = BTreeMap::from([
        (
            "base".to_owned(),
            vec![module("stdlib", "v1"), module("concat", "v1")],
        ),
        (
            "web".to_owned(),
            vec![module("apache", "v1"), module("stdlib", "v2")],
        ),
    ]);
    let environment = StaticEnvironment {
        reference: Some("production".to_owned()),
        modulesets: vec!["base".to_owned(), "web".to_owned()],
        modules: vec![module("apache", "v5")],
    };
    let without_files =
        environment_modules(&modulesets, Some(&environment), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        names_and_refs(&without_files),
        pairs(&[("stdlib", "v2"), ("concat", "v1"), ("apache", "v5")])
    );
    let branch_file = module_file(
        "modules:\n  - {name: concat, git: 'https://g/concat.git', ref: v9}\nexclude: [stdlib]\n",
    );
    let with_files = environment_modules(&modulesets, Some(&environment), &[branch_file])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        names_and_refs(&with_files),
        pairs(&[("concat", "v9"), ("apache", "v5")])
    );
    let unknown = StaticEnvironment {
        modulesets: vec!["nope".to_owned()],
        ..environment
    };
    let e = environment_modules(&modulesets, Some(&unknown), &[]).expect_err("unknown set");
    assert_eq!(e.to_string(), "unknown moduleset `nope`");
}

#[test]
fn a_static_environment_wins_over_a_discovered_branch() {
    let statics = BTreeMap::from([(
        "production".to_owned(),
        StaticEnvironment {
            reference: Some("v1.5.0".to_owned()),
            ..StaticEnvironment::default()
        },
    )]);
    let discovered = vec![
        vec!["production".to_owned(), "staging".to_owned()],
        vec!["staging".to_owned(), "dev".to_owned()],
    ];
    let plan = plan_environments(&discovered, &statics);
    let got: Vec<(&str, &Origin, usize)> = plan
        .iter()
        .map(|p| (p.name.as_str(), &p.origin, p.shadowed.len()))
        .collect();
    let branch = |source, name: &str| Origin::Branch {
        source,
        branch: name.to_owned(),
    };
    let production = Origin::Static {
        reference: "v1.5.0".to_owned(),
    };
    assert_eq!(
        got,
        [
            ("dev", &branch(1, "dev"), 0),
            ("production", &production, 1),
            ("staging", &branch(0, "staging"), 1),
        ]
    );
    assert_eq!(plan[1].shadowed, [branch(0, "production")]);
    assert_eq!(plan[2].shadowed, [branch(1, "staging")]);
}

#[test]
fn a_static_ref_is_a_branch_then_a_tag_then_a_full_commit_id() {
    let listing: BTreeMap<&str, &str> = [
        ("refs/heads/release", "b1"),
        ("refs/tags/release", "t1"),
        ("refs/tags/v1.0", "t2"),
        ("refs/heads/main", "m1"),
    ]
    .into();
    let find = |reference: &str| {
        find_static_ref(reference, |name| listing.get(name).map(|c| c.to_string()))
    };
    let commit = "0123456789abcdef0123456789ABCDEF01234567";
    let cases: [(&str, Option<(RefKind, &str)>); 6] = [
        ("release", Some((RefKind::Branch, "b1"))),
        ("v1.0", Some((RefKind::Tag, "t2"))),
        ("main", Some((RefKind::Branch, "m1"))),
        (
            commit,
            Some((RefKind::Commit, &commit.to_ascii_lowercase())),
        ),
        ("0123456", None),
        ("nothing", None),
    ];
    for (reference, want) in cases {
        let got = find(reference);
        let got = got.as_ref().map(|(k, c)| (*k, c.as_str()));
        assert_eq!(got, want, "{reference}");
    }
    assert_eq!(
        RefKind::Tag.full_name("v1.0").as_deref(),
        Some("refs/tags/v1.0")
    );
    assert_eq!(RefKind::Commit.full_name(commit), None);
}
