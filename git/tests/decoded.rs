//! Blobs decoded ahead (`FetchedRepo::decode_blobs`) against a real fetch over `file://`
//! (git-upload-pack) of a repository repacked into deep delta chains.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use openvox_git::fetch::Depth;
use openvox_git::{Credentials, FetchWant, FetchedRepo, GitAccess, RepoUrl};

const BRANCHES: usize = 4;
const FILES: usize = 60;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository of `BRANCHES` branches whose files differ by a line each, repacked
/// so that most blobs are deltas in long chains (as `git gc` leaves a real repository).
fn chained_repository(root: &Path) -> std::path::PathBuf {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "b0"]);
    for branch in 0..BRANCHES {
        if branch > 0 {
            git(
                &work,
                &["checkout", "-q", "-b", &format!("b{branch}"), "b0"],
            );
        }
        for file in 0..FILES {
            let body: String = (0..200)
                .map(|line| format!("class profile::f{file} {{ $line{line} = {} }}\n", line * 7))
                .chain(std::iter::once(format!("# branch {branch}\n")))
                .collect();
            std::fs::write(work.join(format!("f{file:03}.pp")), body).unwrap();
        }
        std::fs::write(work.join("empty.pp"), "").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", &format!("branch {branch}")]);
    }
    let bare = root.join("repo.git");
    git(
        root,
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
    );
    git(
        &bare,
        &[
            "repack",
            "-a",
            "-d",
            "-f",
            "-q",
            "--depth=50",
            "--window=250",
        ],
    );
    bare
}

fn deepest_chain(bare: &Path) -> usize {
    let pack_dir = bare.join("objects/pack");
    let index = std::fs::read_dir(&pack_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .expect("a pack index");
    git(bare, &["verify-pack", "-v", index.to_str().unwrap()])
        .lines()
        .filter_map(|line| line.strip_prefix("chain length = "))
        .filter_map(|rest| rest.split(':').next()?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn fetch_all(bare: &Path, temp: &Path) -> FetchedRepo {
    let url = format!("file://{}", bare.display());
    let remote = GitAccess::new_in(
        Credentials::none(),
        RepoUrl::parse(&url).unwrap(),
        Duration::from_secs(60),
        temp,
    )
    .and_then(|access| access.origin())
    .unwrap();
    let wants: Vec<FetchWant> = (0..BRANCHES)
        .map(|b| FetchWant::Ref(format!("refs/heads/b{b}")))
        .collect();
    remote.fetch(&wants, Depth::Shallow).unwrap()
}

/// Every blob of the fetched trees, read from the pack: `(id, content)`.
fn blobs_from_pack(fetched: &FetchedRepo) -> Vec<(gix::ObjectId, Vec<u8>)> {
    let repo = fetched.repo();
    let mut out = Vec::new();
    for (_, commit) in fetched.tips() {
        let tree = repo.find_tree(fetched.tree_of(*commit).unwrap()).unwrap();
        for entry in tree.iter() {
            let entry = entry.unwrap();
            let id = entry.object_id();
            out.push((id, repo.find_object(id).unwrap().data.clone()));
        }
    }
    out
}

#[test]
fn decoded_blobs_match_the_pack_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let bare = chained_repository(root.path());
    assert!(
        deepest_chain(&bare) >= 3,
        "the fixture must have delta chains"
    );
    let fetched = fetch_all(&bare, root.path());
    assert!(fetched.decoded().is_none(), "nothing is decoded unasked");
    let stats = fetched.decode_blobs(2, 64 << 20, u64::MAX).unwrap();
    assert!(
        stats.chained >= stats.objects && stats.objects > 0,
        "{stats:?}"
    );
    let decoded = fetched.decoded().expect("decoded after decode_blobs");

    let expected = blobs_from_pack(&fetched);
    let unique: std::collections::HashSet<_> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(decoded.blobs(), unique.len(), "every blob, once");
    let mut buf = Vec::new();
    for (id, content) in &expected {
        assert_eq!(decoded.size(id), Some(content.len() as u64), "size of {id}");
        let mut copied = Vec::new();
        let n = decoded
            .copy_to(id, &mut buf, &mut copied)
            .expect("decoded")
            .unwrap();
        assert_eq!(n, content.len() as u64);
        assert_eq!(&copied, content, "content of {id}");
    }
    let total: u64 = unique.iter().map(|id| decoded.size(id).unwrap()).sum();
    assert_eq!(decoded.bytes(), total);

    // A tree or commit id is not a blob: it is not there, and callers read the pack.
    let commit = fetched.tips()[0].1;
    assert!(decoded.size(&commit).is_none());
    assert!(
        decoded
            .copy_to(&commit, &mut buf, &mut Vec::new())
            .is_none()
    );
}

#[test]
fn a_pack_without_deltas_is_read_directly() {
    let root = tempfile::tempdir().unwrap();
    let bare = chained_repository(root.path());
    // Served and stored without deltas.
    git(&bare, &["config", "pack.window", "0"]);
    git(&bare, &["repack", "-a", "-d", "-f", "-q", "--window=0"]);
    assert_eq!(deepest_chain(&bare), 0);
    let fetched = fetch_all(&bare, root.path());
    let stats = fetched.decode_blobs(2, 64 << 20, u64::MAX).unwrap();
    assert_eq!(stats.chained, 0, "{stats:?}");
    assert!(stats.objects > 0);
    assert!(
        fetched.decoded().is_none(),
        "nothing to gain, nothing decoded"
    );
    assert!(!blobs_from_pack(&fetched).is_empty());
}

#[test]
fn an_object_over_the_limit_leaves_the_pack_readable() {
    let root = tempfile::tempdir().unwrap();
    let bare = chained_repository(root.path());
    let fetched = fetch_all(&bare, root.path());
    let err = fetched
        .decode_blobs(2, 1024, u64::MAX)
        .unwrap_err()
        .to_string();
    assert!(err.contains("decoding blobs"), "{err}");
    assert!(fetched.decoded().is_none());
    // Reads still work from the pack.
    assert!(!blobs_from_pack(&fetched).is_empty());
    // And a later try with a sane limit succeeds.
    fetched.decode_blobs(1, 64 << 20, u64::MAX).unwrap();
    assert!(fetched.decoded().is_some_and(|d| d.blobs() > 0));
}

#[test]
fn blobs_that_would_not_fit_the_scratch_space_are_left_in_the_pack() {
    let root = tempfile::tempdir().unwrap();
    let bare = chained_repository(root.path());
    let fetched = fetch_all(&bare, root.path());
    let err = fetched
        .decode_blobs(2, 64 << 20, 4096)
        .unwrap_err()
        .to_string();
    assert!(err.contains("scratch space"), "{err}");
    assert!(fetched.decoded().is_none());
    assert!(!blobs_from_pack(&fetched).is_empty());
}
