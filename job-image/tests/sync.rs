//! `openvox-code-worker sync` end to end: a control repository and module repositories
//! on a git daemon, a Forge as static files, the output directory in PVC layout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::world::World;
use harness::fixtures::*;

/// Some environments failed, the others are in place: exit 0, the failures named on the
/// last line of stderr after `warning: partial:`, the claim reference last on stdout.
fn assert_partial(run: &common::Run) -> &str {
    assert_eq!(
        run.code, 0,
        "a partial sync succeeds:\n{}\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.reason().starts_with("warning: partial: "),
        "last line is not the partial warning: {}",
        run.stderr
    );
    let reference = run.stdout.lines().last().unwrap_or_default();
    assert!(reference.starts_with("pvc:"), "{}", run.stdout);
    run.reason()
}

/// Module repositories and Forge releases used by the control branches.
struct Modules {
    profile: Bare,
    role_tagged: String,
    facts_a: String,
    stdlib_96_sha: String,
}

fn modules(world: &World) -> Modules {
    let profile = world.repo("profile.git");
    profile.commit(
        "main",
        "main",
        &[
            ("manifests/init.pp", file("class profile {}\n")),
            ("spec/profile_spec.rb", file("spec\n")),
        ],
    );
    profile.commit(
        "production",
        "prod",
        &[(
            "manifests/init.pp",
            file("class profile { # production\n}\n"),
        )],
    );

    let role = world.repo("role.git");
    let role_tagged = role.commit(
        "main",
        "v1.2.0",
        &[("manifests/init.pp", file("class role { # v1.2.0\n}\n"))],
    );
    role.tag("v1.2.0", "main");
    role.commit(
        "main",
        "later",
        &[(
            "manifests/init.pp",
            file("class role { # after the tag\n}\n"),
        )],
    );

    let facts = world.repo("facts.git");
    let facts_a = facts.commit(
        "main",
        "A",
        &[
            ("lib/facter/site.rb", file("# A\n")),
            ("spec/unit/site_spec.rb", file("spec A\n")),
        ],
    );
    facts.commit("main", "B", &[("lib/facter/site.rb", file("# B\n"))]);

    let stdlib_96_sha = world.forge.release(
        "puppetlabs-stdlib",
        "9.6.0",
        &[
            ("manifests/init.pp", file("class stdlib { # 9.6.0\n}\n")),
            ("lib/puppet/functions/x.rb", file("# x\n")),
            ("files/run.sh", exec("#!/bin/sh\n")),
            ("link.pp", link("manifests/init.pp")),
            ("spec/spec_helper.rb", file("spec\n")),
            (
                "metadata.json",
                file("{\"name\": \"puppetlabs-stdlib\", \"version\": \"9.6.0\"}\n"),
            ),
        ],
        false,
    );
    world.forge.release(
        "puppetlabs-stdlib",
        "9.7.0",
        &[("manifests/init.pp", file("class stdlib { # 9.7.0\n}\n"))],
        true,
    );
    world.forge.release(
        "puppetlabs-concat",
        "1.0.0",
        &[("manifests/init.pp", file("class concat {}\n"))],
        true,
    );
    Modules {
        profile,
        role_tagged,
        facts_a,
        stdlib_96_sha,
    }
}

fn puppetfile(world: &World, stdlib: &str, facts_commit: &str) -> String {
    format!(
        "# r10k syntax\nforge 'https://forgeapi.puppetlabs.com'\n\n\
         mod 'puppetlabs/stdlib', {stdlib}\n\
         mod 'puppetlabs-concat', :latest\n\
         mod 'profile',\n  :git => '{profile}',\n  :branch => :control_branch,\n  :default_branch => 'main'\n\
         mod 'role', git: '{role}', tag: 'v1.2.0'\n\
         mod 'facts', :git => '{facts}', :commit => '{facts_commit}', :install_path => 'site', :exclude_spec => false\n",
        profile = world.git_url("profile.git"),
        role = world.git_url("role.git"),
        facts = world.git_url("facts.git"),
        stdlib = stdlib,
        facts_commit = facts_commit,
    )
}

fn control_files(puppetfile: String, site: &str) -> Vec<(&'static str, Node)> {
    vec![
        ("Puppetfile", Node::File(puppetfile.into_bytes())),
        (
            "environment.conf",
            file("modulepath = site:modules:$basemodulepath\n"),
        ),
        ("manifests/site.pp", file(site)),
        ("data/common.yaml", file("---\nkey: value\n")),
        ("hiera.yaml", file("---\nversion: 5\n")),
        ("data/nodes.yaml", link("common.yaml")),
        ("scripts/check.sh", exec("#!/bin/sh\nexit 0\n")),
    ]
}

#[test]
fn sync_builds_every_selected_branch_with_its_modules() {
    let world = World::new();
    let m = modules(&world);
    let short_a = &m.facts_a[..10];
    world.control.commit(
        "production",
        "p",
        &control_files(
            puppetfile(&world, "'9.6.0'", &m.facts_a),
            "node default { include role }\n",
        ),
    );
    world.control.commit(
        "staging",
        "s",
        &control_files(puppetfile(&world, ":latest", short_a), "node default {}\n"),
    );
    world.control.commit(
        "feature_login",
        "f",
        &[
            ("Puppetfile", file("mod 'puppetlabs-stdlib', '9.6.0'\n")),
            ("manifests/site.pp", file("login\n")),
        ],
    );
    world
        .control
        .commit("feature_wip", "w", &[("manifests/site.pp", file("wip\n"))]);
    world
        .control
        .commit("other", "o", &[("manifests/site.pp", file("other\n"))]);

    let run = world.sync(&[
        "--branch",
        "production",
        "--branch",
        "staging",
        "--branch",
        "feature_*",
        "--exclude",
        "*_wip",
    ]);
    run.assert_ok();
    if std::env::var_os("SHOW_WORKER_LOG").is_some() {
        eprintln!("{}", run.stderr);
    }
    assert!(
        run.stdout.contains("synced 3 environments"),
        "{}",
        run.stdout
    );
    for gone in ["feature_wip", "other"] {
        assert!(
            !world.out.join(gone).exists(),
            "{gone} should not be deployed"
        );
    }

    // production: control files with modes and symlinks, every module at its version.
    assert_eq!(
        world.read("production", "manifests/site.pp"),
        "node default { include role }\n"
    );
    let script = std::fs::metadata(world.env_path("production", "scripts/check.sh")).unwrap();
    assert_eq!(script.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(world.env_path("production", "data/nodes.yaml"))
            .unwrap()
            .to_str(),
        Some("common.yaml")
    );
    assert_eq!(
        world.read("production", "modules/stdlib/manifests/init.pp"),
        "class stdlib { # 9.6.0\n}\n"
    );
    assert!(
        !world.env_path("production", "modules/stdlib/spec").exists(),
        "spec/ must be excluded by default"
    );
    let run_sh =
        std::fs::metadata(world.env_path("production", "modules/stdlib/files/run.sh")).unwrap();
    assert_eq!(run_sh.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        world.read("production", "modules/stdlib/link.pp"),
        "class stdlib { # 9.6.0\n}\n"
    );
    assert_eq!(
        world.read("production", "modules/concat/manifests/init.pp"),
        "class concat {}\n"
    );
    assert_eq!(
        world.read("production", "modules/profile/manifests/init.pp"),
        "class profile { # production\n}\n"
    );
    assert_eq!(
        world.read("production", "modules/role/manifests/init.pp"),
        "class role { # v1.2.0\n}\n"
    );
    assert_eq!(
        world.read("production", "site/facts/lib/facter/site.rb"),
        "# A\n"
    );
    assert!(
        world
            .env_path("production", "site/facts/spec/unit/site_spec.rb")
            .is_file(),
        ":exclude_spec => false keeps spec/"
    );

    // staging: the profile repository has no staging branch, so :default_branch;
    // :latest is the current release; an abbreviated commit id.
    assert_eq!(
        world.read("staging", "modules/profile/manifests/init.pp"),
        "class profile {}\n"
    );
    assert!(!world.env_path("staging", "modules/profile/spec").exists());
    assert_eq!(
        world.read("staging", "modules/stdlib/manifests/init.pp"),
        "class stdlib { # 9.7.0\n}\n"
    );
    assert_eq!(
        world.read("staging", "site/facts/lib/facter/site.rb"),
        "# A\n"
    );
    assert_eq!(world.read("feature_login", "manifests/site.pp"), "login\n");

    // The input record, modules in install-path order.
    let record = world.record("production");
    assert_eq!(record["branch"], "production");
    assert_eq!(
        record["revision"],
        format!(
            "production@sha1:{}",
            world.control.head("production").unwrap()
        )
    );
    let modules: Vec<(String, String, String, Option<String>)> = record["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["source"].as_str().unwrap().to_owned(),
                m["version"].as_str().unwrap().to_owned(),
                m["checksum"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let concat_sha = {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(
            std::fs::read(
                world
                    .forge
                    .root
                    .join("v3/files/puppetlabs-concat-1.0.0.tar.gz"),
            )
            .unwrap(),
        ))
    };
    assert_eq!(
        modules,
        vec![
            (
                "concat".into(),
                "puppetlabs-concat".into(),
                "1.0.0".into(),
                Some(format!("sha256:{concat_sha}"))
            ),
            (
                "profile".into(),
                world.git_url("profile.git"),
                m.profile.head("production").unwrap(),
                None
            ),
            (
                "role".into(),
                world.git_url("role.git"),
                m.role_tagged.clone(),
                None
            ),
            (
                "stdlib".into(),
                "puppetlabs-stdlib".into(),
                "9.6.0".into(),
                Some(format!("sha256:{}", m.stdlib_96_sha))
            ),
            (
                "facts".into(),
                world.git_url("facts.git"),
                m.facts_a.clone(),
                None
            ),
        ]
    );

    // Shared work ran once: stdlib 9.6.0 is used by production and feature_login, the
    // role tag by production and staging.
    assert_eq!(
        world.forge_requests("/v3/files/puppetlabs-stdlib-9.6.0.tar.gz"),
        1
    );
    assert_eq!(
        world.forge_requests("/v3/releases/puppetlabs-stdlib-9.6.0"),
        1
    );
    let role_fetches = run
        .stderr
        .lines()
        .filter(|l| l.contains("module") && l.contains("role.git refs/tags/v1.2.0"))
        .count();
    assert_eq!(role_fetches, 1, "{}", run.stderr);

    // Progress: one line per step with timings and sizes.
    for needle in [
        "list     git://",
        "fetch    git://",
        "env      production: ",
        "write    production: ",
        "purge    ",
        "cleanup  ",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?} in\n{}",
            run.stderr
        );
    }
}

#[test]
fn unchanged_environments_are_kept_and_changed_ones_switched() {
    let world = World::new();
    world.forge.release(
        "puppetlabs-stdlib",
        "9.6.0",
        &[("manifests/init.pp", file("class stdlib {}\n"))],
        true,
    );
    let pf = "mod 'puppetlabs-stdlib', '9.6.0'\n";
    world.control.commit(
        "production",
        "p1",
        &[
            ("Puppetfile", file(pf)),
            ("manifests/site.pp", file("v1\n")),
        ],
    );
    world.control.commit(
        "staging",
        "s1",
        &[
            ("Puppetfile", file(pf)),
            ("manifests/site.pp", file("s1\n")),
        ],
    );
    let args = ["--branch", "*", "--keep-previous", "1"];
    world.sync(&args).assert_ok();
    let first = world.version("production");

    let run = world.sync(&args);
    run.assert_ok();
    assert_eq!(
        run.stderr.matches("unchanged, kept").count(),
        2,
        "{}",
        run.stderr
    );
    assert_eq!(world.version("production"), first);

    world.control.commit(
        "production",
        "p2",
        &[
            ("Puppetfile", file(pf)),
            ("manifests/site.pp", file("v2\n")),
        ],
    );
    world.sync(&args).assert_ok();
    let second = world.version("production");
    assert_ne!(second, first);
    assert_eq!(world.read("production", "manifests/site.pp"), "v2\n");
    assert_eq!(world.versions("production"), {
        let mut v = vec![first.clone(), second.clone()];
        v.sort();
        v
    });

    world.control.commit(
        "production",
        "p3",
        &[
            ("Puppetfile", file(pf)),
            ("manifests/site.pp", file("v3\n")),
        ],
    );
    world.sync(&args).assert_ok();
    let third = world.version("production");
    let versions = world.versions("production");
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions.contains(&third) && versions.contains(&second) && !versions.contains(&first));
}

#[test]
fn environments_of_deleted_branches_are_purged() {
    let world = World::new();
    for b in ["production", "feature_a", "feature_b"] {
        world
            .control
            .commit(b, b, &[("manifests/site.pp", file(b))]);
    }
    world.sync(&["--branch", "*"]).assert_ok();
    assert!(world.out.join("feature_a").exists());

    world.control.delete_branch("feature_a");
    let run = world.sync(&["--branch", "*"]);
    run.assert_ok();
    assert!(!world.out.join("feature_a").exists());
    assert!(!world.out.join(".versions/feature_a").exists());
    assert!(world.out.join("feature_b").exists());
    assert!(run.stderr.contains("removed feature_a"), "{}", run.stderr);
}

#[test]
fn a_failing_module_fails_only_its_environment() {
    let world = World::new();
    world.forge.release(
        "puppetlabs-stdlib",
        "9.6.0",
        &[("manifests/init.pp", file("class stdlib {}\n"))],
        true,
    );
    let good = "mod 'puppetlabs-stdlib', '9.6.0'\n";
    world.control.commit(
        "production",
        "p",
        &[
            ("Puppetfile", file(good)),
            ("manifests/site.pp", file("p1\n")),
        ],
    );
    world
        .control
        .commit("staging", "s", &[("Puppetfile", file(good))]);
    world.sync(&["--branch", "*"]).assert_ok();
    let production_before = world.version("production");

    // production now needs a release the Forge does not have; a new branch needs a git
    // module whose branch does not exist.
    let broken = "mod 'puppetlabs-stdlib', '9.6.0'\n\nmod 'puppetlabs-nope', '1.0.0'\n";
    world.control.commit(
        "production",
        "p2",
        &[
            ("Puppetfile", file(broken)),
            ("manifests/site.pp", file("p2\n")),
        ],
    );
    let module = world.repo("module.git");
    module.commit(
        "main",
        "m",
        &[("manifests/init.pp", file("class module {}\n"))],
    );
    let missing_branch = format!(
        "mod 'module', :git => '{}', :branch => 'nope'\n",
        world.git_url("module.git")
    );
    world
        .control
        .commit("newbranch", "n", &[("Puppetfile", file(&missing_branch))]);

    let run = world.sync(&["--branch", "*"]);
    let reason = assert_partial(&run);
    assert!(reason.contains("2 of 3 environments failed"), "{reason}");
    assert!(
        reason.contains("production: module nope (Puppetfile line 3): Forge"),
        "{reason}"
    );
    assert!(
        reason.contains("has no release puppetlabs-nope 1.0.0"),
        "{reason}"
    );
    assert!(
        reason.contains("newbranch: module module (Puppetfile line 1):"),
        "{reason}"
    );
    assert!(
        reason.contains("branch \"nope\" does not exist"),
        "{reason}"
    );
    // staging was still deployed; production keeps its previous version (not purged).
    assert!(world.out.join("staging/Puppetfile").is_file());
    assert_eq!(world.version("production"), production_before);
    assert_eq!(world.read("production", "manifests/site.pp"), "p1\n");
    assert!(!world.out.join("newbranch").exists());
}

#[test]
fn a_malformed_puppetfile_is_reported_with_its_line() {
    let world = World::new();
    world.control.commit(
        "production",
        "p",
        &[(
            "Puppetfile",
            file("forge 'https://forge.example.com'\n\nmod 'a-b', :svn => 'https://svn'\n"),
        )],
    );
    world
        .control
        .commit("staging", "s", &[("manifests/site.pp", file("s\n"))]);
    let run = world.sync(&["--branch", "*"]);
    assert_partial(&run);
    assert!(
        run.reason().contains(
            "production: Puppetfile line 3: mod \"a-b\": option :svn: SVN modules are not supported"
        ),
        "{}",
        run.reason()
    );
    assert!(world.out.join("staging").exists());
}

#[test]
fn colliding_and_invalid_branch_names_are_refused_by_name() {
    let world = World::new();
    for b in ["feature/a", "feature-a", "production", "Hotfix-1"] {
        world
            .control
            .commit(b, b, &[("manifests/site.pp", file(b))]);
    }
    let run = world.sync(&["--branch", "*"]);
    let reason = assert_partial(&run);
    assert!(reason.contains("2 of 4 environments failed"), "{reason}");
    assert!(
        reason.contains(
            "branches \"feature-a\" and \"feature/a\" all map to environment \"feature_a\""
        ),
        "{reason}"
    );
    assert!(!world.out.join("feature_a").exists());
    assert_eq!(world.read("hotfix_1", "manifests/site.pp"), "Hotfix-1");

    let run = world.sync(&[
        "--branch",
        "production",
        "--branch",
        "Hotfix-1",
        "--invalid-branches",
        "error",
    ]);
    assert_partial(&run);
    assert!(
        run.reason()
            .contains("branch \"Hotfix-1\" is not a valid Puppet environment name"),
        "{}",
        run.reason()
    );
    // The refused branch's old environment is purged: under this policy the branch has
    // no environment name any more.
    assert!(!world.out.join("hotfix_1").exists());
    assert!(world.out.join("production").exists());
}

#[test]
fn no_matching_branch_is_an_error_that_changes_nothing() {
    let world = World::new();
    world
        .control
        .commit("production", "p", &[("manifests/site.pp", file("p\n"))]);
    world.sync(&["--branch", "production"]).assert_ok();
    let run = world.sync(&["--branch", "release_*"]);
    run.assert_failed();
    assert!(
        run.reason().contains("no branch of git://"),
        "{}",
        run.reason()
    );
    assert!(
        run.reason().contains("matches \"release_*\""),
        "{}",
        run.reason()
    );
    assert!(world.out.join("production/manifests/site.pp").is_file());
}

#[test]
fn a_second_sync_of_the_same_directory_is_refused() {
    let world = World::new();
    world
        .control
        .commit("production", "p", &[("manifests/site.pp", file("p\n"))]);
    std::fs::create_dir_all(&world.out).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(world.out.join(".openvox-code.lock"))
        .unwrap();
    lock.lock().unwrap();
    let run = world.sync(&["--branch", "production"]);
    run.assert_failed();
    assert!(
        run.reason().contains("being written by another sync"),
        "{}",
        run.reason()
    );
}

#[test]
fn a_branch_one_commit_ahead_of_another_is_still_a_shallow_fetch() {
    let world = World::new();
    let base = world
        .control
        .commit("production", "p", &[("manifests/site.pp", file("p\n"))]);
    // feature starts at production's tip and adds one commit: with depth 1, the
    // parent of feature's tip is production's tip, which was asked for anyway.
    run(git(&world.control.path).args(["update-ref", "refs/heads/feature", &base]));
    world
        .control
        .commit("feature", "f", &[("manifests/site.pp", file("f\n"))]);
    world
        .sync(&["--branch", "production", "--branch", "feature"])
        .assert_ok();
    assert_eq!(world.read("production", "manifests/site.pp"), "p\n");
    assert_eq!(world.read("feature", "manifests/site.pp"), "f\n");
}

#[test]
fn the_claim_reference_follows_what_servers_see_and_is_the_termination_message() {
    let world = World::new();
    for b in ["production", "staging"] {
        world
            .control
            .commit(b, b, &[("manifests/site.pp", file(&format!("{b} 1\n")))]);
    }
    let log = world.scratch.path("termination-log");
    let log_arg = log.to_str().unwrap();
    let args = [
        "--branch",
        "*",
        "--claim-name",
        "code",
        "--termination-log",
        log_arg,
    ];
    let run = world.sync(&args);
    run.assert_ok();
    let first = run.stdout.lines().last().unwrap().to_owned();
    assert!(first.starts_with("pvc:code@sha256:"), "{first}");
    assert_eq!(first.len(), "pvc:code@sha256:".len() + 64, "{first}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), first);

    // Nothing changed: the same reference (a controller sees no new build).
    let run = world.sync(&args);
    run.assert_ok();
    assert_eq!(run.stdout.lines().last().unwrap(), first);

    // One branch moves: a new reference.
    world.control.commit(
        "staging",
        "s2",
        &[("manifests/site.pp", file("staging 2\n"))],
    );
    let run = world.sync(&args);
    run.assert_ok();
    let second = run.stdout.lines().last().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(world.read("staging", "manifests/site.pp"), "staging 2\n");

    // One branch breaks: the other is still switched; the message says partial.
    world.control.commit(
        "staging",
        "s3",
        &[
            ("Puppetfile", file("mod 'a-b', :svn => 'https://svn'\n")),
            ("manifests/site.pp", file("staging 3\n")),
        ],
    );
    world.control.commit(
        "production",
        "p2",
        &[("manifests/site.pp", file("production 2\n"))],
    );
    let run = world.sync(&args);
    assert_partial(&run);
    let third = run.stdout.lines().last().unwrap().to_owned();
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with(&format!(
            "partial: {third}; 1 of 2 environments failed: staging:"
        )),
        "{message}"
    );
    assert_eq!(
        world.read("production", "manifests/site.pp"),
        "production 2\n"
    );
    assert_eq!(world.read("staging", "manifests/site.pp"), "staging 2\n");
}

#[test]
fn when_every_environment_fails_nothing_is_switched_or_purged() {
    let world = World::new();
    for b in ["production", "staging"] {
        world
            .control
            .commit(b, b, &[("manifests/site.pp", file(&format!("{b} 1\n")))]);
    }
    world.sync(&["--branch", "*"]).assert_ok();
    let before = world.version("production");

    // Only production is selected now (staging would be purged) and it breaks.
    world.control.commit(
        "production",
        "p2",
        &[
            ("Puppetfile", file("mod 'a-b', :svn => 'https://svn'\n")),
            ("manifests/site.pp", file("production 2\n")),
        ],
    );
    let log = world.scratch.path("termination-log");
    let run = world.sync(&[
        "--branch",
        "production",
        "--termination-log",
        log.to_str().unwrap(),
    ]);
    run.assert_failed();
    assert!(
        run.reason()
            .contains("every environment failed, nothing switched: production: Puppetfile line 1"),
        "{}",
        run.reason()
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .starts_with("every environment failed"),
    );
    assert_eq!(world.version("production"), before);
    assert_eq!(
        world.read("production", "manifests/site.pp"),
        "production 1\n"
    );
    assert_eq!(world.read("staging", "manifests/site.pp"), "staging 1\n");
}

#[test]
fn a_bad_data_file_shared_by_branches_fails_each_under_its_own_path() {
    // The built-in checks remember results by blob; the same broken bytes at two paths
    // must still be reported at each path, and good files stay good.
    let world = World::new();
    let bad = "---\nprofile::x: 1\n  bad: [\n";
    let hiera =
        "---\nversion: 5\nhierarchy:\n  - name: all\n    paths: [common.yaml, nodes/x.yaml]\n";
    world.control.commit(
        "alpha",
        "a",
        &[("hiera.yaml", file(hiera)), ("data/common.yaml", file(bad))],
    );
    world.control.commit(
        "beta",
        "b",
        &[
            ("hiera.yaml", file(hiera)),
            ("data/common.yaml", file("---\nok: true\n")),
            ("data/nodes/x.yaml", file(bad)),
        ],
    );
    world.control.commit(
        "gamma",
        "g",
        &[
            ("hiera.yaml", file(hiera)),
            ("data/common.yaml", file("---\nok: true\n")),
        ],
    );
    let run = world.sync(&["--branch", "*"]);
    let reason = run.reason();
    assert!(reason.contains("2 of 3 environments failed"), "{reason}");
    assert!(
        reason.contains("alpha: built-in check: data/common.yaml:3"),
        "{reason}"
    );
    assert!(
        reason.contains("beta: built-in check: data/nodes/x.yaml:3"),
        "{reason}"
    );
    assert!(world.out.join("gamma/data/common.yaml").exists());
}
