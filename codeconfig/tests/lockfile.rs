//! The lockfile, and the order in which a module's commit is decided.

use openvox_codeconfig::{
    ErrorKind, LockedEnvironment, LockedModule, Lockfile, Module, ModuleFile, Reason, Skipped,
    Want, resolve_want,
};

const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";
const SHA2: &str = "89abcdef0123456789abcdef0123456789abcdef";

const LOCK: &str = "\
version: 1
generated_at: 2025-01-02T03:04:05Z
environments:
  production:
    ref: v1.5.0
    control_repo_url: https://g/control.git
    control_repo_sha: 0123456789abcdef0123456789abcdef01234567
    modules:
      - name: stdlib
        git: https://g/stdlib.git
        ref: v9.7.0
        sha: 89abcdef0123456789abcdef0123456789abcdef
      - name: concat
        git: https://g/concat.git
        ref: ''
        sha: 0123456789abcdef0123456789abcdef01234567
  development:
    ref: development
    modules: []
";

fn lockfile() -> Lockfile {
    Lockfile::parse("openvox-code.lock", LOCK).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn parse_reads_every_field() {
    let lock = lockfile();
    assert_eq!(lock.version, 1);
    assert_eq!(lock.generated_at.as_deref(), Some("2025-01-02T03:04:05Z"));
    assert_eq!(
        lock.environments.keys().collect::<Vec<_>>(),
        ["development", "production"]
    );
    let production = &lock.environments["production"];
    assert_eq!(production.control_repo_sha.as_deref(), Some(SHA1));
    assert_eq!(
        lock.module("production", "stdlib").map(|m| m.sha.as_str()),
        Some(SHA2)
    );
    assert_eq!(lock.module("production", "nope"), None);
    assert_eq!(lock.module("nope", "stdlib"), None);
}

#[test]
fn serialize_is_sorted_and_round_trips() {
    let lock = lockfile();
    let text = lock.to_yaml().unwrap_or_else(|e| panic!("{e}"));
    let again = Lockfile::parse("openvox-code.lock", &text).unwrap_or_else(|e| panic!("{e}"));
    let modules: Vec<&str> = again.environments["production"]
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(modules, ["concat", "stdlib"], "modules sorted by name");
    assert!(
        text.find("development:") < text.find("production:"),
        "environments sorted by name:\n{text}"
    );
    assert_eq!(again.to_yaml().ok(), Some(text.clone()), "deterministic");
    let mut sorted = lock.clone();
    if let Some(production) = sorted.environments.get_mut("production") {
        production.modules.reverse();
    }
    assert_eq!(again, sorted);

    let mut built = Lockfile::new();
    built.environments.insert(
        "dev".to_owned(),
        LockedEnvironment {
            reference: "dev".to_owned(),
            modules: vec![LockedModule {
                name: "a".to_owned(),
                git: "https://g/a.git".to_owned(),
                reference: String::new(),
                sha: SHA1.to_owned(),
            }],
            ..LockedEnvironment::default()
        },
    );
    let text = built.to_yaml().unwrap_or_else(|e| panic!("{e}"));
    assert!(text.starts_with("version: 1\n"), "{text}");
    assert!(!text.contains("generated_at"), "{text}");
    assert!(!text.contains("control_repo_sha"), "{text}");
    assert_eq!(Lockfile::parse("l", &text).ok(), Some(built));
}

#[test]
fn bad_lockfiles_are_refused() {
    let module = |sha: &str| {
        format!(
            "version: 1\nenvironments:\n  p:\n    ref: p\n    modules:\n      - name: a\n        git: https://g/a.git\n        sha: {sha}\n"
        )
    };
    let cases = [
        (
            "version: 2\nenvironments: {}\n".to_owned(),
            "unsupported lockfile version 2",
            Some(1),
        ),
        (
            "version: 0\n".to_owned(),
            "unsupported lockfile version 0",
            Some(1),
        ),
        (
            "environments: {}\n".to_owned(),
            "missing field `version`",
            Some(1),
        ),
        (module("abc123"), "not a commit id", Some(8)),
        (module(&"A".repeat(40)), "not a commit id", Some(8)),
        (module(&"a".repeat(64)), "", None),
        (
            format!("{}        colour: red\n", module(SHA1)),
            "unknown field `colour`",
            Some(9),
        ),
        (
            format!(
                "{}      - name: a\n        git: https://g/a.git\n        sha: {SHA1}\n",
                module(SHA1)
            ),
            "locked twice",
            None,
        ),
        (String::new(), "empty lockfile", None),
    ];
    for (text, words, line) in cases {
        match Lockfile::parse("openvox-code.lock", &text) {
            Ok(_) if words.is_empty() => {}
            Ok(lock) => panic!("accepted {text:?}: {lock:?}"),
            Err(e) => {
                assert!(!words.is_empty(), "refused {text:?}: {e}");
                assert!(e.message.contains(words), "{e}");
                assert_eq!(e.line, line, "{e}");
                assert_ne!(e.kind, ErrorKind::Syntax, "{e}");
            }
        }
    }
}

fn module(text: &str) -> Module {
    let file = ModuleFile::parse("m.yaml", &format!("modules:\n  - {text}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    file.modules[0].clone()
}

fn locked(git: &str) -> LockedModule {
    LockedModule {
        name: "app".to_owned(),
        git: git.to_owned(),
        reference: "main".to_owned(),
        sha: SHA1.to_owned(),
    }
}

#[test]
fn resolution_order() {
    let follow = module("{name: app, git: 'https://g/app.git', ref: main, follow_branch: true}");
    let follow_no_ref = module("{name: app, git: 'https://g/app.git', follow_branch: true}");
    let plain = module("{name: app, git: 'https://g/app.git', ref: v1.2.3}");
    let head = module("{name: app, git: 'https://g/app.git'}");
    let lock = locked("https://g/app.git");
    let stale = locked("https://old/app.git");
    let branch = |b: &str| Want::Branch(b.to_owned());
    let reference = |r: &str| Want::Ref(r.to_owned());
    let cases: [(&Module, Option<&LockedModule>, bool, Want, Reason); 9] = [
        (
            &follow,
            Some(&lock),
            true,
            Want::Commit(SHA1.to_owned()),
            Reason::Lockfile,
        ),
        (
            &plain,
            Some(&lock),
            false,
            Want::Commit(SHA1.to_owned()),
            Reason::Lockfile,
        ),
        (&follow, None, true, branch("staging"), Reason::FollowBranch),
        (&follow, None, false, reference("main"), Reason::Ref),
        (&follow_no_ref, None, false, Want::Head, Reason::Head),
        (
            &follow,
            Some(&stale),
            true,
            branch("staging"),
            Reason::FollowBranch,
        ),
        (&plain, None, true, reference("v1.2.3"), Reason::Ref),
        (&head, None, true, Want::Head, Reason::Head),
        (&head, Some(&stale), false, Want::Head, Reason::Head),
    ];
    for (module, lock, has_branch, want, reason) in cases {
        let got = resolve_want(module, "staging", lock, |name| {
            assert_eq!(name, "staging");
            has_branch
        });
        assert_eq!(
            (&got.want, got.reason),
            (&want, reason),
            "{module:?} {lock:?}"
        );
    }
}

#[test]
fn resolution_says_what_it_skipped() {
    let follow = module("{name: app, git: 'https://g/app.git', ref: main, follow_branch: true}");
    let got = resolve_want(
        &follow,
        "staging",
        Some(&locked("https://old/app.git")),
        |_| false,
    );
    assert_eq!(
        got.skipped,
        [
            Skipped::StaleLock {
                locked_git: "https://old/app.git".to_owned()
            },
            Skipped::NoSuchBranch("staging".to_owned()),
        ]
    );
    assert_eq!(
        got.to_string(),
        "ref `main`; lockfile entry ignored (locked from https://old/app.git); no branch `staging` to follow"
    );
    let mut asked = false;
    let plain = module("{name: app, git: 'https://g/app.git'}");
    let _ = resolve_want(&plain, "staging", None, |_| {
        asked = true;
        true
    });
    assert!(!asked, "has_branch is only asked for follow_branch modules");
}
