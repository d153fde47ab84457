//! The head check against a hostile control repository (issue 9): 3,000 branches and a
//! branch whose name is not UTF-8, served by a real `git daemon` on 127.0.0.1. The
//! listing succeeds, matches `git ls-remote`, and the glob selection picks exactly the
//! wanted branches. The time is printed, not asserted (docs/hostile-input.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::time::{Duration, Instant};

use harness::fixtures::{Bare, Scratch, file, git, git_daemon, run};
use openvox_code_controller::codesource::heads::{
    GixHeadLister, HeadLister, HeadRequest, wanted_heads,
};

#[tokio::test]
async fn three_thousand_branches_and_a_non_utf8_one_are_listed_and_selected() {
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    let control = Bare::init(&repos.join("control.git"));
    let production = control.commit("production", "p", &[("site.pp", file("p\n"))]);
    let mut stdin = String::new();
    for i in 0..3000 {
        stdin.push_str(&format!("create refs/heads/feature_{i:04} {production}\n"));
    }
    let mut child = git(&control.path)
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let bad = std::ffi::OsStr::from_bytes(b"refs/heads/caf\xe9");
    let out = git(&control.path)
        .arg("update-ref")
        .arg(bad)
        .arg(&production)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed_by_git = run(git(&control.path).args(["for-each-ref", "refs/heads"]))
        .lines()
        .count();
    assert_eq!(listed_by_git, 3002);

    let daemon = git_daemon(&repos, scratch.path("daemon.log"));
    let started = Instant::now();
    let heads = GixHeadLister::new(scratch.dir.path())
        .unwrap()
        .list_heads(HeadRequest {
            url: format!("git://127.0.0.1:{}/control.git", daemon.port),
            auth: openvox_git::Credentials::none(),
            timeout: Duration::from_secs(30),
            module_of: None,
        })
        .await
        .unwrap();
    eprintln!(
        "head check: {} heads listed in {:?}",
        heads.len(),
        started.elapsed()
    );
    assert_eq!(heads.len(), 3002);
    assert_eq!(heads.get("production"), Some(&production));
    // The name that is not UTF-8 is kept, with U+FFFD for its bad byte; the worker
    // refuses it by that name (job-image/tests/hostile.rs).
    assert!(heads.contains_key("caf\u{fffd}"));

    let wanted = wanted_heads(
        &heads,
        &["production".into(), "feature_123*".into()],
        &["feature_1239".into()],
    );
    let mut want: Vec<String> = (1230..1239).map(|i| format!("feature_{i}")).collect();
    want.push("production".into());
    assert_eq!(wanted.keys().cloned().collect::<Vec<_>>(), want);
}
