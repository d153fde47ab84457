//! Hostile input through the real pipeline: escaping symlinks and `..` paths in git
//! trees and Forge tarballs, checksum mismatches, limits. Each fails its environment
//! with a clear reason; the other environments are still deployed; nothing is written
//! outside the output directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::world::World;
use harness::fixtures::*;

/// A world with a `production` branch that is always fine.
fn world() -> World {
    let world = World::new();
    world.control.commit(
        "production",
        "p",
        &[("manifests/site.pp", file("node default {}\n"))],
    );
    world
}

/// Runs a sync of all branches, expects only `bad` to fail, and returns its reason. A
/// partial sync exits 0 and ends with `warning: partial: …` (the rest is switched).
fn only_bad_fails(world: &World, extra: &[&str]) -> String {
    only_bad_fails_as(world, extra, "bad")
}

/// [`only_bad_fails`] where the failure is reported as `bad` (an environment name, or
/// `branch <name>` for a branch that never got one).
fn only_bad_fails_as(world: &World, extra: &[&str], bad: &str) -> String {
    let mut args = vec!["--branch", "*"];
    args.extend_from_slice(extra);
    let run = world.sync(&args);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run.assert_ok();
    assert!(
        run.reason().starts_with("warning: partial: "),
        "{}",
        run.stderr
    );
    assert!(
        world.out.join("production/manifests/site.pp").is_file(),
        "production must still be deployed"
    );
    assert!(
        !world.out.join(bad).exists(),
        "the bad environment must not be deployed"
    );
    let reason = run.reason().to_owned();
    assert!(
        reason.contains(&format!("1 of 2 environments failed: {bad}")),
        "{reason}"
    );
    reason
}

#[test]
fn a_symlink_leaving_the_environment_is_refused() {
    let world = world();
    world.control.commit(
        "bad",
        "b",
        &[
            ("manifests/site.pp", file("x\n")),
            ("manifests/evil.pp", link("../../../../../etc/passwd")),
        ],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(reason.contains("symlink \"manifests/evil.pp\" -> \"../../../../../etc/passwd\" points outside the environment"), "{reason}");
}

#[test]
fn an_absolute_symlink_is_refused() {
    let world = world();
    world
        .control
        .commit("bad", "b", &[("secrets", link("/etc/shadow"))]);
    let reason = only_bad_fails(&world, &[]);
    assert!(
        reason.contains("points outside the environment"),
        "{reason}"
    );
}

#[test]
fn symlinks_that_escape_only_when_followed_together_are_refused() {
    let world = world();
    // `here` points to the root (fine), `out` goes one up from it (outside).
    world.control.commit(
        "bad",
        "b",
        &[("here", link(".")), ("sub/out", link("../here/.."))],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(reason.contains("symlink \"sub/out\""), "{reason}");
}

#[test]
fn tree_entries_named_dot_dot_or_dot_git_are_refused() {
    for (name, needle) in [
        (&b".."[..], "'.' or '..' component"),
        (&b".git"[..], ".git component"),
        (&b"a/b"[..], "'/' or NUL"),
    ] {
        let world = world();
        world.control.commit_raw_entry("bad", name, "owned\n");
        let reason = only_bad_fails(&world, &[]);
        assert!(
            reason.contains(needle),
            "{:?}: {reason}",
            String::from_utf8_lossy(name)
        );
        // Nothing was written next to the output directory.
        assert!(!world.out.parent().unwrap().join("owned").exists());
    }
}

#[test]
fn forge_tarballs_with_dot_dot_paths_are_refused() {
    let world = world();
    let tarball = raw_tarball(&[
        ("evil-mod-1.0.0/", tar::EntryType::Directory, b"", None),
        (
            "evil-mod-1.0.0/manifests/init.pp",
            tar::EntryType::Regular,
            b"class mod {}\n",
            None,
        ),
        (
            "evil-mod-1.0.0/../../../../escaped.txt",
            tar::EntryType::Regular,
            b"owned\n",
            None,
        ),
    ]);
    world
        .forge
        .publish("evil-mod", "1.0.0", &tarball, None, true);
    world.control.commit(
        "bad",
        "b",
        &[("Puppetfile", file("mod 'evil-mod', '1.0.0'\n"))],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(
        reason.contains(
            "module mod (Puppetfile line 1): Forge release evil-mod-1.0.0: archive: entry"
        ),
        "{reason}"
    );
    assert!(reason.contains("contains '..'"), "{reason}");
    assert!(!world.scratch.dir.path().join("escaped.txt").exists());
}

#[test]
fn forge_tarballs_with_escaping_symlinks_are_refused() {
    let world = world();
    world.forge.release(
        "evil-link",
        "1.0.0",
        &[
            ("manifests/init.pp", file("class link {}\n")),
            ("files/key", link("../../../../../root/.ssh/id_rsa")),
        ],
        true,
    );
    world.control.commit(
        "bad",
        "b",
        &[("Puppetfile", file("mod 'evil-link', '1.0.0'\n"))],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(
        reason.contains("symlink \"modules/link/files/key\""),
        "{reason}"
    );
    assert!(
        reason.contains("points outside the environment"),
        "{reason}"
    );
}

#[test]
fn a_module_symlink_into_another_module_is_kept() {
    let world = world();
    world.forge.release(
        "ok-linker",
        "1.0.0",
        &[
            ("manifests/init.pp", file("class linker {}\n")),
            ("files/shared", link("../../other/files")),
        ],
        true,
    );
    world.forge.release(
        "ok-other",
        "1.0.0",
        &[("files/data.txt", file("data\n"))],
        true,
    );
    world.control.commit(
        "staging",
        "s",
        &[(
            "Puppetfile",
            file("mod 'ok-linker', '1.0.0'\nmod 'ok-other', '1.0.0'\n"),
        )],
    );
    world.sync(&["--branch", "*"]).assert_ok();
    assert_eq!(
        world.read("staging", "modules/linker/files/shared/data.txt"),
        "data\n"
    );
}

#[test]
fn a_forge_checksum_mismatch_is_refused() {
    let world = world();
    let tarball = raw_tarball(&[(
        "x-mod-1.0.0/manifests/init.pp",
        tar::EntryType::Regular,
        b"class mod {}\n",
        None,
    )]);
    world
        .forge
        .publish("x-mod", "1.0.0", &tarball, Some(&"0".repeat(64)), true);
    world.control.commit(
        "bad",
        "b",
        &[("Puppetfile", file("mod 'x-mod', '1.0.0'\n"))],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(reason.contains("checksum mismatch"), "{reason}");
}

#[test]
fn a_moduledir_that_is_a_symlink_is_refused() {
    let world = world();
    world.forge.release(
        "x-mod",
        "1.0.0",
        &[("manifests/init.pp", file("class mod {}\n"))],
        true,
    );
    world.control.commit(
        "bad",
        "b",
        &[
            ("Puppetfile", file("mod 'x-mod', '1.0.0'\n")),
            ("modules", link("site")),
            ("site/keep.txt", file("k\n")),
        ],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(
        reason.contains(
            "\"modules\" is a symlink, so module mod cannot be placed at \"modules/mod\""
        ),
        "{reason}"
    );
}

#[test]
fn file_count_and_size_limits_fail_with_the_flag_to_raise() {
    let world = world();
    let many: Vec<(String, Node)> = (0..20)
        .map(|i| (format!("data/f{i}.txt"), file("x")))
        .collect();
    let many: Vec<(&str, Node)> = many.iter().map(|(p, n)| (p.as_str(), n.clone())).collect();
    world.control.commit("bad", "b", &many);
    let reason = only_bad_fails(&world, &["--max-files", "10"]);
    assert!(
        reason.contains("more than 10 files and directories (limit --max-files)"),
        "{reason}"
    );

    let world = self::world();
    world
        .control
        .commit("bad", "b", &[("big.bin", file(&"y".repeat(4096)))]);
    let reason = only_bad_fails(&world, &["--max-file-size", "1K"]);
    assert!(
        reason.contains("file \"big.bin\" has 4.00 KiB (limit --max-file-size 1.00 KiB)"),
        "{reason}"
    );
}

#[test]
fn nested_module_paths_are_refused() {
    let world = world();
    world.forge.release(
        "x-outer",
        "1.0.0",
        &[("manifests/init.pp", file("class outer {}\n"))],
        true,
    );
    world.forge.release(
        "x-inner",
        "1.0.0",
        &[("manifests/init.pp", file("class inner {}\n"))],
        true,
    );
    world.control.commit(
        "bad",
        "b",
        &[("Puppetfile", file("mod 'x-outer', '1.0.0'\nmod 'x-inner', '1.0.0', :install_path => 'modules/outer'\n"))],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(
        reason.contains("lies inside module outer (line 1)"),
        "{reason}"
    );
}

// --- Issue 9: more hostile repositories through the real worker and git daemon. ---

/// Runs `git` in the control repository with raw (possibly non-UTF-8) arguments.
fn git_raw(world: &World, args: &[&std::ffi::OsStr]) {
    let out = git(&world.control.path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_environment_above_max_environment_size_is_refused_naming_the_flag() {
    let world = world();
    let files: Vec<(String, Node)> = (0..3)
        .map(|i| (format!("data/{i}.bin"), file(&"z".repeat(600))))
        .collect();
    let files: Vec<(&str, Node)> = files.iter().map(|(p, n)| (p.as_str(), n.clone())).collect();
    world.control.commit("bad", "b", &files);
    let reason = only_bad_fails(&world, &["--max-environment-size", "1K"]);
    assert!(
        reason.contains("bad: files add up to more than 1.00 KiB (limit --max-environment-size)"),
        "{reason}"
    );
}

#[test]
fn a_huge_file_is_refused_before_it_is_read() {
    let world = world();
    // 24 MiB: well above the flag, and above what the worker would want to hold.
    world
        .control
        .commit("bad", "b", &[("huge.bin", file(&"h".repeat(24 << 20)))]);
    let reason = only_bad_fails(&world, &["--max-file-size", "16M"]);
    assert!(
        reason.contains("file \"huge.bin\" has 24.0 MiB (limit --max-file-size 16.0 MiB)"),
        "{reason}"
    );
}

#[test]
fn three_thousand_branches_are_listed_and_selected_by_glob() {
    let world = world();
    let production = world.control.head("production").unwrap();
    // 3,000 refs in one update-ref transaction, all on the production commit.
    let mut stdin = String::new();
    for i in 0..3000 {
        stdin.push_str(&format!("create refs/heads/feature_{i:04} {production}\n"));
    }
    let mut child = git(&world.control.path)
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());

    let started = std::time::Instant::now();
    let run = world.sync(&[
        "--branch",
        "production",
        "--branch",
        "feature_123*",
        "--exclude",
        "feature_1239",
    ]);
    // Printed, not asserted: timing belongs to benchmarks (docs/hostile-input.md).
    eprintln!(
        "3,000 branches: sync of 10 selected took {:?}",
        started.elapsed()
    );
    run.assert_ok();
    // The worker's own timing of the ref listing.
    let listing = run
        .stderr
        .lines()
        .find(|l| l.contains(" list "))
        .unwrap_or_default();
    eprintln!("{listing}");
    assert!(listing.contains("3001 branches, 10 selected"), "{listing}");
    let mut deployed: Vec<String> = std::fs::read_dir(&world.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    deployed.sort();
    let mut want: Vec<String> = (1230..1239).map(|i| format!("feature_{i}")).collect();
    want.push("production".into());
    assert_eq!(deployed, want);
}

#[test]
fn a_non_utf8_file_name_is_refused_naming_the_path() {
    let world = world();
    world.control.commit_raw_entry("bad", b"caf\xe9.pp", "x\n");
    let reason = only_bad_fails(&world, &[]);
    assert!(
        reason.contains("path \"caf\u{fffd}.pp\": is not UTF-8"),
        "{reason}"
    );
}

#[test]
fn a_non_utf8_branch_name_is_refused_and_the_others_still_build() {
    use std::os::unix::ffi::OsStrExt as _;
    let world = world();
    let production = world.control.head("production").unwrap();
    git_raw(
        &world,
        &[
            "update-ref".as_ref(),
            std::ffi::OsStr::from_bytes(b"refs/heads/caf\xe9"),
            production.as_ref(),
        ],
    );
    // The listed name carries U+FFFD for the bad byte; the environment it would map to
    // is never created.
    let reason = only_bad_fails_as(&world, &[], "branch caf\u{fffd}");
    assert!(
        reason.contains("branch \"caf\u{fffd}\" is not UTF-8"),
        "{reason}"
    );
    assert!(!world.out.join("caf_").exists());
}

#[test]
fn an_install_path_leaving_the_environment_is_refused_with_its_line() {
    for (path, why) in [("../../etc", "contains '..'"), ("/etc", "is absolute")] {
        let world = world();
        world.control.commit(
            "bad",
            "b",
            &[(
                "Puppetfile",
                file(&format!(
                    "# vendored\nmod 'x-mod', '1.0.0', :install_path => '{path}'\n"
                )),
            )],
        );
        let reason = only_bad_fails(&world, &[]);
        assert!(
            reason.contains(&format!(
                "Puppetfile line 2: mod \"x-mod\": install_path {path:?}: {why}"
            )),
            "{reason}"
        );
    }
}

#[test]
fn a_git_module_of_a_missing_repository_fails_naming_module_and_url() {
    let world = world();
    let url = world.git_url("does-not-exist.git");
    world.control.commit(
        "bad",
        "b",
        &[(
            "Puppetfile",
            file(&format!(
                "mod 'gone',\n  :git => '{url}',\n  :branch => 'main'\n"
            )),
        )],
    );
    let reason = only_bad_fails(&world, &[]);
    assert!(
        reason.contains("module gone (Puppetfile line 1)"),
        "{reason}"
    );
    assert!(reason.contains(&url), "{reason}");
}

#[test]
fn forge_tarballs_with_device_files_or_foreign_hard_links_are_refused() {
    let cases: [(&str, tar::EntryType, Option<&str>, &str); 3] = [
        (
            "dev-mod-1.0.0/files/null",
            tar::EntryType::Char,
            None,
            "entry \"files/null\" has unsupported type Char",
        ),
        (
            "dev-mod-1.0.0/files/fifo",
            tar::EntryType::Fifo,
            None,
            "entry \"files/fifo\" has unsupported type Fifo",
        ),
        (
            "dev-mod-1.0.0/files/passwd",
            tar::EntryType::Link,
            Some("/etc/passwd"),
            "hard link \"files/passwd\" -> \"/etc/passwd\" does not name an earlier file of the release",
        ),
    ];
    for (path, kind, link, want) in cases {
        let world = world();
        let tarball = raw_tarball(&[
            ("dev-mod-1.0.0/", tar::EntryType::Directory, b"", None),
            ("dev-mod-1.0.0/files/", tar::EntryType::Directory, b"", None),
            (path, kind, b"", link),
        ]);
        world
            .forge
            .publish("dev-mod", "1.0.0", &tarball, None, true);
        world.control.commit(
            "bad",
            "b",
            &[("Puppetfile", file("mod 'dev-mod', '1.0.0'\n"))],
        );
        let reason = only_bad_fails(&world, &[]);
        assert!(
            reason
                .contains("module mod (Puppetfile line 1): Forge release dev-mod-1.0.0: archive:"),
            "{reason}"
        );
        assert!(reason.contains(want), "{reason}");
    }
}

#[test]
fn a_file_name_longer_than_the_file_system_allows_is_refused_naming_it() {
    let world = world();
    let long = format!("manifests/{}.pp", "n".repeat(300));
    world
        .control
        .commit("bad", "b", &[(long.as_str(), file("x\n"))]);
    let reason = only_bad_fails(&world, &[]);
    assert!(reason.contains("manifests/nnnn"), "{reason}");
    assert!(reason.contains("longer than 255 bytes"), "{reason}");
}
