//! `--code-config` end to end: modules described by openvox-code's CodeConfig, module
//! files and lockfile instead of a Puppetfile, fetched through a mirror from a git
//! daemon while the URLs the files name point at a closed port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::world::World;
use common::{Run, worker};
use harness::fixtures::*;
use openvox_crds::names::WORKER_PERMANENT_FAILURE_EXIT_CODE;

/// A port nothing listens on: the "original host" of every module, reachable only
/// through the mirror.
fn dead_host() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Writes the CodeConfig directory (the main file and an included file, as a ConfigMap
/// would hold them) and returns the main file's path.
fn config_dir(world: &World, dead: &str, modulefiles: &str) -> PathBuf {
    let dir = world.scratch.mkdir("codeconfig");
    let main = format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\n\
         kind: CodeConfig\n\
         spec:\n\
         \x20 includes: [mirrors.yaml]\n\
         \x20 sources:\n\
         \x20   - url: https://git.example.com/other-control.git\n\
         \x20   - url: git://{dead}/control.git\n\
         \x20     modulefiles:\n{modulefiles}\
         \x20 cachedir: /var/cache/openvox-code\n"
    );
    std::fs::write(dir.join("openvox-code.yaml"), main).unwrap();
    let mirrors = format!(
        "overrides:\n  gitmirrors:\n    \"{dead}\": git://127.0.0.1:{}\n",
        world.daemon.port
    );
    std::fs::write(dir.join("mirrors.yaml"), mirrors).unwrap();
    dir.join("openvox-code.yaml")
}

const MODULEFILES: &str = "        - name: modulefiles/base.yaml\n        - name: 'modulefiles/team-*.yaml'\n          required: false\n";

/// Commits of the module repositories the tests look for.
struct Modules {
    stdlib_old: String,
    stdlib_new: String,
    profile_production: String,
    profile_main: String,
    apache_head: String,
    apache_v1: String,
    firewall: String,
    roles: String,
    apache: Bare,
}

fn modules(world: &World) -> Modules {
    let stdlib = world.repo("stdlib.git");
    let stdlib_old = stdlib.commit(
        "main",
        "old",
        &[
            ("manifests/init.pp", file("class stdlib { # old\n}\n")),
            ("spec/stdlib_spec.rb", file("spec\n")),
        ],
    );
    let stdlib_new = stdlib.commit(
        "main",
        "new",
        &[("manifests/init.pp", file("class stdlib { # new\n}\n"))],
    );

    let profile = world.repo("profile.git");
    let profile_main = profile.commit(
        "main",
        "main",
        &[("manifests/init.pp", file("class profile { # main\n}\n"))],
    );
    let profile_production = profile.commit(
        "production",
        "production",
        &[(
            "manifests/init.pp",
            file("class profile { # production\n}\n"),
        )],
    );

    // HEAD is `develop`, not `main`: a module without a ref follows HEAD.
    let apache = world.repo("apache.git");
    let apache_v1 = apache.commit(
        "main",
        "v1",
        &[("manifests/init.pp", file("class apache { # v1\n}\n"))],
    );
    apache.tag("v1", "main");
    apache.commit(
        "main",
        "after v1",
        &[("manifests/init.pp", file("class apache { # main\n}\n"))],
    );
    let apache_head = apache.commit(
        "develop",
        "develop",
        &[("manifests/init.pp", file("class apache { # develop\n}\n"))],
    );
    run(git(&apache.path).args(["symbolic-ref", "HEAD", "refs/heads/develop"]));

    let firewall = world.repo("firewall.git").commit(
        "main",
        "fw",
        &[("manifests/init.pp", file("class firewall {}\n"))],
    );
    let roles = world.repo("role.git").commit(
        "main",
        "roles",
        &[("manifests/init.pp", file("class roles {}\n"))],
    );
    Modules {
        stdlib_old,
        stdlib_new,
        profile_production,
        profile_main,
        apache_head,
        apache_v1,
        firewall,
        roles,
        apache,
    }
}

fn base_yaml(dead: &str) -> String {
    format!(
        "modules:\n\
         \x20 - name: stdlib\n    git: git://{dead}/stdlib.git\n    ref: main\n\
         \x20 - name: profile\n    git: git://{dead}/profile.git\n    ref: main\n    follow_branch: true\n\
         \x20 - name: apache\n    git: git://{dead}/apache.git\n\
         \x20 - name: firewall\n    git: git://{dead}/firewall.git\n    ref: main\n\
         \x20 - name: role\n    git: git://{dead}/role.git\n    ref: main\n    target_dir: site\n    install_as: roles\n"
    )
}

/// staging's own module file: apache at a tag in another place, no firewall.
fn team_yaml(dead: &str) -> String {
    format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\n\
         kind: ModuleFile\n\
         spec:\n\
         \x20 modules:\n\
         \x20   - name: apache\n      git: git://{dead}/apache.git\n      ref: v1\n      target_dir: site\n      install_as: httpd\n\
         \x20 exclude: [firewall]\n"
    )
}

fn lockfile(dead: &str, stdlib: &str) -> String {
    format!(
        "version: 1\nenvironments:\n  production:\n    ref: production\n    modules:\n      - name: stdlib\n        git: git://{dead}/stdlib.git\n        ref: main\n        sha: {stdlib}\n"
    )
}

/// The control branches: production (base module file, lockfile) and staging (base and
/// team module files, no lockfile).
fn control_branches(world: &World, dead: &str, m: &Modules) {
    world.control.commit(
        "production",
        "p",
        &[
            ("manifests/site.pp", file("node default {}\n")),
            ("modulefiles/base.yaml", file(&base_yaml(dead))),
            ("openvox-code.lock", file(&lockfile(dead, &m.stdlib_old))),
        ],
    );
    world.control.commit(
        "staging",
        "s",
        &[
            ("manifests/site.pp", file("node default { # staging\n}\n")),
            ("modulefiles/base.yaml", file(&base_yaml(dead))),
            ("modulefiles/team-web.yaml", file(&team_yaml(dead))),
        ],
    );
}

/// Every file of environment `env` as servers see it, with its content.
fn deployed(world: &World, env: &str) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{prefix}{name}");
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{path}/"), out);
            } else {
                out.insert(path, std::fs::read_to_string(entry.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&world.out.join(env), "", &mut out);
    out
}

fn files(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(p, c)| ((*p).to_owned(), c.clone()))
        .collect()
}

/// (name, source, commit) of each module in the input record of `env`.
fn recorded_modules(world: &World, env: &str) -> Vec<(String, String, String)> {
    world.record(env)["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["source"].as_str().unwrap().to_owned(),
                m["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn sync(world: &World, config: &Path) -> Run {
    world.sync(&["--branch", "*", "--code-config", config.to_str().unwrap()])
}

#[test]
fn module_files_lockfile_follow_branch_head_and_mirrors_make_the_environments() {
    let world = World::new();
    let dead = dead_host();
    let m = modules(&world);
    control_branches(&world, &dead, &m);
    let config = config_dir(&world, &dead, MODULEFILES);

    let run = sync(&world, &config);
    run.assert_ok();
    if std::env::var_os("SHOW_WORKER_LOG").is_some() {
        eprintln!("{}", run.stderr);
    }
    assert!(
        run.stdout.contains("synced 2 environments"),
        "{}",
        run.stdout
    );

    // production: stdlib pinned by the lockfile to its older commit (spec/ left out),
    // profile on the branch named like the environment, apache at the remote's HEAD,
    // roles in its own target_dir under its install_as name.
    assert_eq!(
        deployed(&world, "production"),
        files(&[
            ("manifests/site.pp", "node default {}\n".into()),
            ("modulefiles/base.yaml", base_yaml(&dead)),
            ("openvox-code.lock", lockfile(&dead, &m.stdlib_old)),
            (
                "modules/apache/manifests/init.pp",
                "class apache { # develop\n}\n".into()
            ),
            (
                "modules/firewall/manifests/init.pp",
                "class firewall {}\n".into()
            ),
            (
                "modules/profile/manifests/init.pp",
                "class profile { # production\n}\n".into()
            ),
            (
                "modules/stdlib/manifests/init.pp",
                "class stdlib { # old\n}\n".into()
            ),
            ("site/roles/manifests/init.pp", "class roles {}\n".into()),
        ])
    );
    // staging: no lockfile (stdlib at main's tip), no staging branch to follow (main),
    // apache overridden by the team file (tag v1, another path), firewall excluded.
    assert_eq!(
        deployed(&world, "staging"),
        files(&[
            ("manifests/site.pp", "node default { # staging\n}\n".into()),
            ("modulefiles/base.yaml", base_yaml(&dead)),
            ("modulefiles/team-web.yaml", team_yaml(&dead)),
            (
                "modules/profile/manifests/init.pp",
                "class profile { # main\n}\n".into()
            ),
            (
                "modules/stdlib/manifests/init.pp",
                "class stdlib { # new\n}\n".into()
            ),
            (
                "site/httpd/manifests/init.pp",
                "class apache { # v1\n}\n".into()
            ),
            ("site/roles/manifests/init.pp", "class roles {}\n".into()),
        ])
    );

    // The records name the mirror each module came from and the commit it was at, in
    // install-path order.
    let url = |name: &str| world.git_url(name);
    assert_eq!(
        recorded_modules(&world, "production"),
        [
            ("apache".into(), url("apache.git"), m.apache_head.clone()),
            ("firewall".into(), url("firewall.git"), m.firewall.clone()),
            (
                "profile".into(),
                url("profile.git"),
                m.profile_production.clone()
            ),
            ("stdlib".into(), url("stdlib.git"), m.stdlib_old.clone()),
            ("roles".into(), url("role.git"), m.roles.clone()),
        ]
    );
    assert_eq!(
        recorded_modules(&world, "staging"),
        [
            ("profile".into(), url("profile.git"), m.profile_main.clone()),
            ("stdlib".into(), url("stdlib.git"), m.stdlib_new.clone()),
            ("httpd".into(), url("apache.git"), m.apache_v1.clone()),
            ("roles".into(), url("role.git"), m.roles.clone()),
        ]
    );

    // The log says what described each environment's modules, and what is ignored.
    for needle in [
        "5 modules from openvox-code.yaml + modulefiles/base.yaml + openvox-code.lock, production@sha1:",
        "4 modules from openvox-code.yaml + modulefiles/base.yaml + modulefiles/team-web.yaml, staging@sha1:",
        "config   openvox-code.yaml + mirrors.yaml: source git://",
        "config   openvox-code.yaml: cachedir has no effect here",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} in\n{}", run.stderr);
    }
    // Only the configuration's own line names the original host: nothing was fetched
    // from it.
    let used: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(&dead) && !l.contains("config   "))
        .collect();
    assert!(used.is_empty(), "the original host was used: {used:?}");

    // Nothing changed: both environments are kept as they are.
    let run = sync(&world, &config);
    run.assert_ok();
    assert_eq!(
        run.stderr.matches("unchanged, kept").count(),
        2,
        "{}",
        run.stderr
    );
}

#[test]
fn incremental_image_builds_check_head_and_followed_branches_and_the_config() {
    let world = World::new();
    let dead = dead_host();
    let m = modules(&world);
    control_branches(&world, &dead, &m);
    let config = config_dir(&world, &dead, MODULEFILES);
    let layout = world.scratch.path("layout");
    let build = |config: &Path| {
        worker(
            &[
                "build",
                "--url",
                &world.git_url("control.git"),
                "--branch",
                "*",
                "--oci-layout",
                layout.to_str().unwrap(),
                "--timeout",
                "30s",
                "--code-config",
                config.to_str().unwrap(),
            ],
            &world.tmp,
        )
    };
    let first = build(&config);
    first.assert_ok();
    let digest = first.stdout.lines().last().unwrap().to_owned();

    // Nothing moved: HEAD, the followed branches and the refs are checked by listing
    // (the lockfile's full commit needs no lookup), and nothing is fetched.
    let second = build(&config);
    second.assert_ok();
    assert_eq!(second.stdout.lines().last().unwrap(), digest);
    for env in ["production", "staging"] {
        let check = second
            .stderr
            .lines()
            .find(|l| l.contains(&format!("check    {env}: ")))
            .unwrap_or_default();
        assert!(
            check.contains("unchanged at")
                && check.contains("4 floating modules checked; not fetched"),
            "{env}: {}",
            second.stderr
        );
    }
    assert!(!second.stderr.contains("fetch    "), "{}", second.stderr);

    // The module's HEAD moves: only production (which follows it) is rebuilt.
    m.apache.commit(
        "develop",
        "develop 2",
        &[("manifests/init.pp", file("class apache { # develop 2\n}\n"))],
    );
    let third = build(&config);
    third.assert_ok();
    assert!(
        third
            .stderr
            .contains("check    production: module apache moved; fetching"),
        "{}",
        third.stderr
    );
    assert!(
        third.stderr.contains("check    staging: unchanged at"),
        "{}",
        third.stderr
    );

    // Another module file list in the CodeConfig: every environment is built again,
    // though no branch moved.
    let more =
        format!("{MODULEFILES}        - name: modulefiles/extra.yaml\n          required: false\n");
    let changed = config_dir(&world, &dead, &more);
    let fourth = build(&changed);
    fourth.assert_ok();
    assert_eq!(
        fourth
            .stderr
            .matches("the CodeConfig changed; fetching")
            .count(),
        2,
        "{}",
        fourth.stderr
    );
}

#[test]
fn a_bad_module_file_fails_only_its_environment() {
    let world = World::new();
    let dead = dead_host();
    let m = modules(&world);
    control_branches(&world, &dead, &m);
    let broken = format!(
        "modules:\n  - name: stdlib\n    git: git://{dead}/stdlib.git\n  - name: profile\n    git: git://{dead}/profile.git\n    refs: main\n"
    );
    world
        .control
        .commit("broken", "b", &[("modulefiles/base.yaml", file(&broken))]);
    world
        .control
        .commit("bare", "n", &[("manifests/site.pp", file("bare\n"))]);
    let config = config_dir(&world, &dead, MODULEFILES);

    let run = sync(&world, &config);
    assert_eq!(run.code, 0, "a partial sync succeeds:\n{}", run.stderr);
    let reason = run.reason();
    assert!(reason.starts_with("warning: partial: "), "{}", run.stderr);
    assert!(reason.contains("2 of 4 environments failed"), "{reason}");
    assert!(
        reason.contains("broken: modulefiles/base.yaml:6:5: modules[1]: unknown field `refs`"),
        "{reason}"
    );
    assert!(
        reason.contains(
            "bare: modulefiles/base.yaml: modulefiles: required module file is missing from the branch"
        ),
        "{reason}"
    );
    assert!(world.out.join("production/modules/stdlib").is_dir());
    assert!(world.out.join("staging/site/httpd").is_dir());
    assert!(!world.out.join("broken").exists());
}

#[test]
fn a_configuration_that_cannot_be_loaded_fails_at_start() {
    let world = World::new();
    world
        .control
        .commit("production", "p", &[("manifests/site.pp", file("p\n"))]);
    let dir = world.scratch.mkdir("bad-config");
    let cases = [
        (
            "sources:\n  - url: git://x/control.git\n    modulefile: []\n",
            "openvox-code.yaml:3:5: sources[0]: unknown field `modulefile`",
        ),
        (
            "includes: [missing.yaml]\nsources:\n  - url: git://x/control.git\n",
            "included file `missing.yaml` not found",
        ),
        (
            "sources:\n  - url: git://x/a.git\n  - url: git://x/b.git\n",
            "none of the 2 sources has url",
        ),
    ];
    for (text, words) in cases {
        std::fs::write(dir.join("openvox-code.yaml"), text).unwrap();
        let run = sync(&world, &dir.join("openvox-code.yaml"));
        assert_eq!(
            run.code, WORKER_PERMANENT_FAILURE_EXIT_CODE,
            "{text}: {}",
            run.stderr
        );
        assert!(
            run.reason().starts_with("error: --code-config ") && run.reason().contains(words),
            "{text}: {}",
            run.reason()
        );
        assert!(
            !run.stderr.contains("list     "),
            "no git work: {}",
            run.stderr
        );
    }
    assert!(!world.out.join("production").exists());
}

/// Static environments, added by an included file: one from a tag and one from a full
/// commit id (neither reads the module files of its tree), one from a branch that takes
/// the place of the discovered branch of its name, and one whose ref does not exist.
fn statics_yaml(dead: &str, frozen: &str) -> String {
    format!(
        "modulesets:\n\
         \x20 core:\n\
         \x20   - name: stdlib\n      git: git://{dead}/stdlib.git\n      ref: main\n\
         \x20   - name: firewall\n      git: git://{dead}/firewall.git\n      ref: main\n\
         environments:\n\
         \x20 pinned:\n    ref: release-1\n    modulesets: [core]\n    modules:\n\
         \x20     - name: apache\n        git: git://{dead}/apache.git\n        ref: v1\n\
         \x20 frozen:\n    ref: {frozen}\n    modulesets: [core]\n\
         \x20 production:\n    ref: staging\n    modulesets: [core]\n\
         \x20 missing:\n    ref: v9\n"
    )
}

/// The branches of [`control_branches`], tag `release-1` on production, staging moved
/// on after the commit `frozen` pins, and [`statics_yaml`] in the included file (whose
/// path comes second).
fn static_world() -> (World, String, Modules, PathBuf, PathBuf) {
    let world = World::new();
    let dead = dead_host();
    let m = modules(&world);
    control_branches(&world, &dead, &m);
    world.control.tag("release-1", "production");
    let frozen = world.control.head("staging").unwrap();
    let config = config_dir(&world, &dead, MODULEFILES);
    let include = config.with_file_name("mirrors.yaml");
    let mut text = std::fs::read_to_string(&include).unwrap();
    text.push_str(&statics_yaml(&dead, &frozen));
    std::fs::write(&include, text).unwrap();
    // A commit's files are its whole tree.
    world.control.commit(
        "staging",
        "s2",
        &[
            ("manifests/site.pp", file("node default { # staging 2\n}\n")),
            ("modulefiles/base.yaml", file(&base_yaml(&dead))),
            ("modulefiles/team-web.yaml", file(&team_yaml(&dead))),
        ],
    );
    (world, dead, m, config, include)
}

/// The moduleset `core` changes: firewall follows its HEAD (the same commit) instead
/// of naming `main`.
fn change_moduleset(include: &Path) {
    let text = std::fs::read_to_string(include).unwrap();
    let changed = text.replace("firewall.git\n      ref: main\n", "firewall.git\n");
    assert_ne!(changed, text);
    std::fs::write(include, changed).unwrap();
}

#[test]
fn static_environments_come_from_tags_commits_and_branches_with_their_modulesets() {
    let (world, dead, m, config, include) = static_world();

    let run = sync(&world, &config);
    assert_eq!(run.code, 0, "a partial sync succeeds:\n{}", run.stderr);
    let reason = run.reason();
    assert!(reason.contains("1 of 5 environments failed"), "{reason}");
    assert!(
        reason.contains("missing: environments.missing.ref \"v9\" is neither a branch nor a tag"),
        "{reason}"
    );
    assert!(
        run.stderr
            .contains("static environment production wins over this branch"),
        "{}",
        run.stderr
    );

    let stdlib_new = (
        "modules/stdlib/manifests/init.pp",
        "class stdlib { # new\n}\n".to_owned(),
    );
    let firewall = (
        "modules/firewall/manifests/init.pp",
        "class firewall {}\n".to_owned(),
    );
    // pinned: production's tree at the tag, the moduleset and its own apache; the tree's
    // module files are not read (a tag), its lockfile has no entry for `pinned`.
    assert_eq!(
        deployed(&world, "pinned"),
        files(&[
            ("manifests/site.pp", "node default {}\n".into()),
            ("modulefiles/base.yaml", base_yaml(&dead)),
            ("openvox-code.lock", lockfile(&dead, &m.stdlib_old)),
            (
                "modules/apache/manifests/init.pp",
                "class apache { # v1\n}\n".into()
            ),
            firewall.clone(),
            stdlib_new.clone(),
        ])
    );
    // frozen: staging as it was at the pinned commit, and the moduleset.
    assert_eq!(
        deployed(&world, "frozen"),
        files(&[
            ("manifests/site.pp", "node default { # staging\n}\n".into()),
            ("modulefiles/base.yaml", base_yaml(&dead)),
            ("modulefiles/team-web.yaml", team_yaml(&dead)),
            firewall.clone(),
            stdlib_new.clone(),
        ])
    );
    // production: staging's tip and module files over the moduleset (the team file
    // excludes firewall, whoever brought it in); profile follows the environment's
    // name, so it is at profile's production branch.
    let production = deployed(&world, "production");
    assert_eq!(
        production["manifests/site.pp"],
        "node default { # staging 2\n}\n"
    );
    assert_eq!(
        production["modules/profile/manifests/init.pp"],
        "class profile { # production\n}\n"
    );
    assert_eq!(
        production["site/httpd/manifests/init.pp"],
        "class apache { # v1\n}\n"
    );
    assert!(!production.contains_key("modules/firewall/manifests/init.pp"));
    assert!(!production.contains_key("openvox-code.lock"));
    // The discovered staging is built as before.
    assert_eq!(
        deployed(&world, "staging")["modules/profile/manifests/init.pp"],
        "class profile { # main\n}\n"
    );
    assert_eq!(world.record("pinned")["branch"], "release-1");

    // Nothing changed: every built environment is kept; the missing one fails again.
    let again = sync(&world, &config);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stderr.matches("unchanged, kept").count(),
        4,
        "{}",
        again.stderr
    );

    // The moduleset changes: the three static environments that name it are built
    // again, the discovered staging is not.
    change_moduleset(&include);
    let changed = sync(&world, &config);
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    for env in ["frozen", "pinned", "production"] {
        let written = format!("write    {env}: ");
        assert!(
            changed.stderr.contains(&written)
                && !changed.stderr.contains(&format!("{written}unchanged")),
            "{env}: {}",
            changed.stderr
        );
    }
    assert!(
        changed.stderr.contains("write    staging: unchanged, kept"),
        "{}",
        changed.stderr
    );
}

#[test]
fn incremental_image_builds_of_static_environments() {
    let (world, _dead, _m, config, include) = static_world();
    let layout = world.scratch.path("layout");
    let build = || {
        let run = worker(
            &[
                "build",
                "--url",
                &world.git_url("control.git"),
                "--code-config",
                config.to_str().unwrap(),
                "--oci-layout",
                layout.to_str().unwrap(),
                "--timeout",
                "30s",
            ],
            &world.tmp,
        );
        assert_eq!(run.code, 0, "partial builds publish:\n{}", run.stderr);
        run
    };
    // No --branch: the static environments are all there is to build.
    let first = build();
    let digest = first.stdout.lines().last().unwrap().to_owned();
    assert!(
        first.stderr.contains("0 selected, 4 static environments"),
        "{}",
        first.stderr
    );
    assert!(
        !first.stderr.contains("env      staging"),
        "{}",
        first.stderr
    );

    // Nothing moved: each is checked by listing only, nothing fetched, the same image.
    let second = build();
    assert_eq!(second.stdout.lines().last().unwrap(), digest);
    for env in ["frozen", "pinned", "production"] {
        assert!(
            second
                .stderr
                .contains(&format!("check    {env}: unchanged at")),
            "{env}: {}",
            second.stderr
        );
    }
    assert!(!second.stderr.contains("fetch    "), "{}", second.stderr);

    // A moduleset edit rebuilds the environments that name it.
    change_moduleset(&include);
    let third = build();
    for env in ["frozen", "pinned", "production"] {
        assert!(
            third
                .stderr
                .contains(&format!("check    {env}: the CodeConfig changed; fetching")),
            "{env}: {}",
            third.stderr
        );
    }
    assert_ne!(third.stdout.lines().last().unwrap(), digest);
}
