//! Git transports against real servers on 127.0.0.1: file://, git daemon, smart HTTP
//! (git http-backend behind lighttpd) with basic auth and a bearer token, https with a
//! custom CA, and sshd with a key and known_hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use harness::fixtures::*;
use openvox_code_worker::git::fetch::Depth;
use openvox_code_worker::git::{
    Credentials, FetchWant, GitAccess, GitError, Remote, RepoUrl, Secret, SshAuth,
};

/// A control repository with history on `production` (three commits, the first with a
/// large file that a shallow fetch must not bring) and two other branches.
fn control_repo(path: &std::path::Path) -> Bare {
    let bare = Bare::init(path);
    let big = "x".repeat(2 * 1024 * 1024);
    bare.commit(
        "production",
        "one",
        &[
            ("manifests/site.pp", file("node default {}\n")),
            ("big.txt", file(&big)),
        ],
    );
    bare.commit(
        "production",
        "two",
        &[("manifests/site.pp", file("node default { }\n"))],
    );
    bare.commit(
        "production",
        "three",
        &[("manifests/site.pp", file("node default { include role }\n"))],
    );
    bare.commit("staging", "s", &[("manifests/site.pp", file("staging\n"))]);
    bare.commit(
        "feature/x",
        "f",
        &[
            ("manifests/site.pp", file("feature\n")),
            ("only-in-feature.txt", file("f\n")),
        ],
    );
    bare
}

fn assert_shallow_fetch(remote: &Remote, bare: &Bare) {
    let fetched = remote
        .fetch(
            &[FetchWant::Ref("refs/heads/production".into())],
            Depth::Shallow,
        )
        .unwrap_or_else(|e| panic!("fetch {}: {e}", remote.display_url()));
    let head = bare.head("production").unwrap();
    let commit = fetched
        .commit_of(&FetchWant::Ref("refs/heads/production".into()))
        .unwrap();
    assert_eq!(commit.to_string(), head);
    let repo = fetched.repo();
    let object = repo.find_commit(commit).unwrap();
    let parents: Vec<_> = object.parent_ids().collect();
    assert_eq!(parents.len(), 1);
    assert!(
        !repo.has_object(parents[0]),
        "parent of the tip was fetched: not shallow"
    );
    // Only the wanted branch came: the feature branch's commit is not there.
    let feature = gix::ObjectId::from_hex(bare.head("feature/x").unwrap().as_bytes()).unwrap();
    assert!(!repo.has_object(feature));
    // The 2 MiB blob of the first commit did not come either.
    assert!(
        fetched.received_bytes() < 100_000,
        "received {} bytes",
        fetched.received_bytes()
    );
    let path = fetched.path().to_owned();
    drop(fetched);
    assert!(
        !path.exists(),
        "the temporary repository {path:?} was not removed"
    );
}

#[test]
fn file_urls_fetch_only_the_wanted_branch_shallow() {
    let scratch = Scratch::new();
    let bare = control_repo(&scratch.path("control.git"));
    let url = format!("file://{}", bare.path.display());
    let remote = Remote::anonymous(&url, Duration::from_secs(30)).unwrap();
    assert_shallow_fetch(&remote, &bare);
}

#[test]
fn git_daemon_lists_heads_and_fetches_shallow_over_protocol_v2() {
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    let bare = control_repo(&repos.join("control.git"));
    let daemon = git_daemon(&repos, scratch.path("daemon.log"));
    let url = format!("git://127.0.0.1:{}/control.git", daemon.port);
    let remote = Remote::anonymous(&url, Duration::from_secs(30)).unwrap();

    let heads = remote.list_heads().unwrap();
    let got: Vec<(String, String)> = heads
        .iter()
        .map(|h| (h.branch.clone(), h.commit.to_string()))
        .collect();
    let want: Vec<(String, String)> = ["feature/x", "production", "staging"]
        .iter()
        .map(|b| (b.to_string(), bare.head(b).unwrap()))
        .collect();
    assert_eq!(got, want);

    assert_shallow_fetch(&remote, &bare);
}

#[test]
fn a_missing_branch_is_reported_by_name() {
    let scratch = Scratch::new();
    let bare = control_repo(&scratch.path("control.git"));
    let remote = Remote::anonymous(
        &format!("file://{}", bare.path.display()),
        Duration::from_secs(30),
    )
    .unwrap();
    let err = remote
        .fetch(&[FetchWant::Ref("refs/heads/nope".into())], Depth::Shallow)
        .unwrap_err();
    assert!(err.to_string().contains("refs/heads/nope"), "{err}");
}

#[test]
fn smart_http_with_basic_auth_never_shows_the_password() {
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    let bare = control_repo(&repos.join("private/control.git"));
    let password = "s3cret-Passw0rd";
    let server = http_git(&scratch, &repos, &[("alice", password)], "unused-token");
    let url = format!("http://127.0.0.1:{}/git/private/control.git", server.port);

    // The library: shallow over protocol v2 through http-backend.
    let credentials = Credentials {
        http: Some(openvox_code_worker::git::HttpAuth::Basic {
            username: "alice".into(),
            password: Secret::new(password),
        }),
        ..Credentials::none()
    };
    let access = GitAccess::new(
        credentials,
        RepoUrl::parse(&url).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_shallow_fetch(&access.origin().unwrap(), &bare);

    // The CLI, right password.
    let tmp = scratch.path("tmp");
    let secret = secret_dir(
        &scratch,
        "secret",
        &[
            ("username", "alice\n"),
            ("password", &format!("{password}\n")),
        ],
    );
    let out = scratch.path("out");
    let args = [
        "sync",
        "--url",
        &url,
        "--branch",
        "production",
        "--dir",
        out.to_str().unwrap(),
        "--secret-dir",
        secret.to_str().unwrap(),
    ];
    let run = worker(&args, &tmp);
    run.assert_ok();
    assert!(out.join("production/manifests/site.pp").is_file());
    assert!(!run.all().contains(password));
    assert!(
        leftovers(&tmp).is_empty(),
        "temporary files left: {:?}",
        leftovers(&tmp)
    );

    // Wrong password: refused, the one-line reason says so, no secret printed.
    std::fs::write(secret.join("password"), "wrong-Passw0rd").unwrap();
    let run = worker(&args, &tmp);
    run.assert_failed();
    assert!(
        run.reason().contains("authentication failed"),
        "{}",
        run.reason()
    );
    assert!(
        run.reason().contains("refused the credentials"),
        "{}",
        run.reason()
    );
    assert!(!run.all().contains("wrong-Passw0rd"));
    assert!(
        !run.all().contains("YWxpY2U6d3JvbmctUGFzc3cwcmQ"),
        "base64 of the credentials leaked"
    );
    assert!(
        leftovers(&tmp).is_empty(),
        "temporary files left: {:?}",
        leftovers(&tmp)
    );

    // No secret at all.
    let run = worker(
        &[
            "sync",
            "--url",
            &url,
            "--branch",
            "production",
            "--dir",
            out.to_str().unwrap(),
        ],
        &tmp,
    );
    run.assert_failed();
    assert!(
        run.reason().contains("asks for credentials"),
        "{}",
        run.reason()
    );
}

#[test]
fn smart_http_with_a_bearer_token() {
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    control_repo(&repos.join("token/control.git"));
    let token = "tok-7f3a9c1e5b2d";
    let server = http_git(&scratch, &repos, &[], token);
    let url = format!("http://127.0.0.1:{}/git/token/control.git", server.port);
    let tmp = scratch.path("tmp");
    let out = scratch.path("out");
    let secret = secret_dir(&scratch, "secret", &[("bearerToken", token)]);
    let run = worker(
        &[
            "sync",
            "--url",
            &url,
            "--branch",
            "*",
            "--dir",
            out.to_str().unwrap(),
            "--secret-dir",
            secret.to_str().unwrap(),
        ],
        &tmp,
    );
    run.assert_ok();
    assert!(!run.all().contains(token));
    for env in ["production", "staging", "feature_x"] {
        assert!(out.join(env).join("manifests/site.pp").is_file(), "{env}");
    }

    let wrong = secret_dir(&scratch, "wrong", &[("bearerToken", "tok-wrong-123")]);
    let run = worker(
        &[
            "sync",
            "--url",
            &url,
            "--branch",
            "*",
            "--dir",
            out.to_str().unwrap(),
            "--secret-dir",
            wrong.to_str().unwrap(),
        ],
        &tmp,
    );
    run.assert_failed();
    assert!(run.reason().contains("403"), "{}", run.reason());
    assert!(!run.all().contains("tok-wrong-123"));
    // The failed run changed nothing.
    assert!(out.join("production/manifests/site.pp").is_file());
}

#[test]
fn https_needs_the_custom_ca_from_the_secret() {
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    control_repo(&repos.join("public/control.git"));
    let server = http_git(&scratch, &repos, &[], "unused");
    let pki = pki(&scratch);
    let proxy = tls_proxy(&scratch, &pki, server.port, "git");
    let url = format!("https://127.0.0.1:{}/git/public/control.git", proxy.port);
    let tmp = scratch.path("tmp");
    let out = scratch.path("out");

    let run = worker(
        &[
            "sync",
            "--url",
            &url,
            "--branch",
            "production",
            "--dir",
            out.to_str().unwrap(),
        ],
        &tmp,
    );
    run.assert_failed();
    let reason = run.reason().to_ascii_lowercase();
    assert!(
        reason.contains("certificate")
            || reason.contains("unknownissuer")
            || reason.contains("tls"),
        "{}",
        run.reason()
    );

    let ca = std::fs::read_to_string(&pki.ca_pem).unwrap();
    let secret = secret_dir(&scratch, "secret", &[("ca.crt", &ca)]);
    let run = worker(
        &[
            "sync",
            "--url",
            &url,
            "--branch",
            "production",
            "--dir",
            out.to_str().unwrap(),
            "--secret-dir",
            secret.to_str().unwrap(),
        ],
        &tmp,
    );
    run.assert_ok();
    assert!(out.join("production/manifests/site.pp").is_file());
}

#[test]
fn ssh_with_a_key_and_strict_host_key_checking() {
    let scratch = Scratch::new();
    let bare = control_repo(&scratch.path("repos/control.git"));
    let sshd = sshd(&scratch, true);
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        sshd.user,
        sshd.server.port,
        bare.path.display()
    );

    let credentials = Credentials {
        ssh: Some(SshAuth {
            identity: Secret::new(sshd.identity.clone()),
            known_hosts: sshd.known_hosts.clone(),
        }),
        ..Credentials::none()
    };
    let access = GitAccess::new(
        credentials,
        RepoUrl::parse(&url).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    let remote = access.origin().unwrap();
    assert_eq!(remote.list_heads().unwrap().len(), 3);
    assert_shallow_fetch(&remote, &bare);

    // Through the CLI with a mounted secret; the key file mode does not matter.
    let tmp = scratch.path("tmp");
    let out = scratch.path("out");
    let secret = secret_dir(
        &scratch,
        "secret",
        &[
            ("identity", &sshd.identity),
            ("known_hosts", &sshd.known_hosts),
        ],
    );
    let args = [
        "sync",
        "--url",
        &url,
        "--branch",
        "production",
        "--dir",
        out.to_str().unwrap(),
        "--secret-dir",
        secret.to_str().unwrap(),
    ];
    worker(&args, &tmp).assert_ok();
    assert!(out.join("production/manifests/site.pp").is_file());
    assert!(
        leftovers(&tmp).is_empty(),
        "temporary files left: {:?}",
        leftovers(&tmp)
    );

    // A host key that does not match: refused.
    let other = sshd_other_host_key(&scratch, sshd.server.port);
    std::fs::write(secret.join("known_hosts"), other).unwrap();
    let run = worker(&args, &tmp);
    run.assert_failed();
    assert!(
        run.reason().contains("authentication failed"),
        "{}",
        run.reason()
    );
    assert!(
        run.stderr.to_ascii_lowercase().contains("host key"),
        "{}",
        run.stderr
    );
    assert!(
        leftovers(&tmp).is_empty(),
        "temporary files left: {:?}",
        leftovers(&tmp)
    );
}

/// A known_hosts line for the port with a key that is not the server's.
fn sshd_other_host_key(scratch: &Scratch, port: u16) -> String {
    let path = scratch.path("other_host_key");
    run(
        std::process::Command::new(require("ssh-keygen", "openssh-client"))
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path),
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    format!("[127.0.0.1]:{port} {}\n", key.join(" "))
}

#[test]
fn a_server_without_protocol_v2_is_detected_as_not_shallow() {
    let scratch = Scratch::new();
    let bare = control_repo(&scratch.path("repos/control.git"));
    let sshd = sshd(&scratch, false);
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        sshd.user,
        sshd.server.port,
        bare.path.display()
    );
    let credentials = Credentials {
        ssh: Some(SshAuth {
            identity: Secret::new(sshd.identity.clone()),
            known_hosts: sshd.known_hosts.clone(),
        }),
        ..Credentials::none()
    };
    let access = GitAccess::new(
        credentials.clone(),
        RepoUrl::parse(&url).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap();
    let err = access
        .origin()
        .unwrap()
        .fetch(
            &[FetchWant::Ref("refs/heads/production".into())],
            Depth::Shallow,
        )
        .unwrap_err();
    assert!(matches!(err, GitError::NotShallow { .. }), "{err}");
    assert!(err.to_string().contains("GIT_PROTOCOL"), "{err}");

    let allowed = GitAccess::new(
        credentials,
        RepoUrl::parse(&url).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap()
    .with_full_history_allowed(true);
    let fetched = allowed
        .origin()
        .unwrap()
        .fetch(
            &[FetchWant::Ref("refs/heads/production".into())],
            Depth::Shallow,
        )
        .unwrap();
    assert_eq!(
        fetched
            .commit_of(&FetchWant::Ref("refs/heads/production".into()))
            .unwrap()
            .to_string(),
        bare.head("production").unwrap()
    );
}

#[test]
fn a_silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let scratch = Scratch::new();
    let temp_root = scratch.mkdir("library-tmp");
    let url = format!("git://127.0.0.1:{port}/control.git");
    let access = GitAccess::new_in(
        Credentials::none(),
        RepoUrl::parse(&url).unwrap(),
        Duration::from_millis(800),
        &temp_root,
    )
    .unwrap();
    let started = Instant::now();
    let err = access.origin().unwrap().list_heads().unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The abandoned operation's scratch repository is gone although its thread still waits.
    assert!(
        leftovers(&temp_root).is_empty(),
        "left behind: {:?}",
        leftovers(&temp_root)
    );
    let err = access
        .origin()
        .unwrap()
        .fetch(
            &[FetchWant::Ref("refs/heads/production".into())],
            Depth::Shallow,
        )
        .unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err}");
    assert!(
        leftovers(&temp_root).is_empty(),
        "left behind: {:?}",
        leftovers(&temp_root)
    );

    let tmp = scratch.path("tmp");
    let run = worker(
        &[
            "sync",
            "--url",
            &format!("git://127.0.0.1:{port}/control.git"),
            "--branch",
            "production",
            "--timeout",
            "1s",
            "--dir",
            scratch.path("out").to_str().unwrap(),
        ],
        &tmp,
    );
    run.assert_failed();
    assert!(run.reason().contains("timeout"), "{}", run.reason());
}
