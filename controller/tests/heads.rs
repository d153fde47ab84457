//! The head check against real git servers on 127.0.0.1: `file://`, `git daemon`
//! (git://) and smart HTTP (`git http-backend` behind lighttpd) with basic auth and a
//! bearer token. Each result is compared with `git ls-remote --heads` of the same
//! repository.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::fixtures::{self, Scratch, git_daemon, http_git, pki, run, sshd, tls_proxy};
use openvox_code_controller::codesource::heads::{
    GixHeadLister, HeadCache, HeadError, HeadLister, HeadRequest, RemoteHeads,
};
use openvox_git::Credentials;

fn git(dir: &Path, args: &[&str]) -> String {
    run(fixtures::git(dir).args(args)).trim().to_string()
}

/// A bare repository with branches production, staging and feature/login, and an
/// annotated tag (which a head listing must leave out).
fn control_repo(path: &Path) {
    let work = path.with_extension("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        path.parent().unwrap(),
        &["init", "-q", "--bare", path.to_str().unwrap()],
    );
    git(&work, &["init", "-q", "-b", "production"]);
    for (branch, content) in [
        ("production", "p"),
        ("staging", "s"),
        ("feature/login", "f"),
    ] {
        git(&work, &["checkout", "-q", "-B", branch]);
        std::fs::write(work.join("site.pp"), content).unwrap();
        git(&work, &["add", "site.pp"]);
        git(&work, &["commit", "-q", "-m", content]);
        git(
            &work,
            &[
                "push",
                "-q",
                path.to_str().unwrap(),
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
    }
    git(&work, &["tag", "-a", "-m", "v1", "v1.0.0"]);
    git(&work, &["push", "-q", path.to_str().unwrap(), "v1.0.0"]);
}

/// `git ls-remote --heads` of a local path, as branch → commit.
fn ls_remote(path: &Path) -> RemoteHeads {
    git(path, &["ls-remote", "--heads", path.to_str().unwrap()])
        .lines()
        .filter_map(|line| {
            let (sha, name) = line.split_once('\t')?;
            Some((
                name.strip_prefix("refs/heads/")?.to_string(),
                sha.to_string(),
            ))
        })
        .collect()
}

/// Credentials from Secret data, as the controller reads them.
fn secret(pairs: &[(&str, &[u8])]) -> Credentials {
    let data: BTreeMap<String, Vec<u8>> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.to_vec()))
        .collect();
    Credentials::from_secret_data(&data).expect("valid test credentials")
}

fn request(url: String, auth: Credentials) -> HeadRequest {
    HeadRequest {
        url,
        auth,
        timeout: Duration::from_secs(20),
        module_of: None,
    }
}

async fn list(scratch: &Path, request: HeadRequest) -> Result<RemoteHeads, HeadError> {
    GixHeadLister::new(scratch)
        .unwrap()
        .list_heads(request)
        .await
}

#[tokio::test]
async fn file_urls_list_the_same_heads_as_git_ls_remote() {
    let scratch = Scratch::new();
    let repo = scratch.dir.path().join("control.git");
    control_repo(&repo);
    let heads = list(
        scratch.dir.path(),
        request(format!("file://{}", repo.display()), Credentials::none()),
    )
    .await
    .unwrap();
    assert_eq!(heads, ls_remote(&repo));
    assert_eq!(
        heads.keys().collect::<Vec<_>>(),
        ["feature/login", "production", "staging"]
    );
}

#[tokio::test]
async fn git_daemon_urls_list_the_same_heads_as_git_ls_remote() {
    let scratch = Scratch::new();
    let repo = scratch.dir.path().join("control.git");
    control_repo(&repo);
    let daemon = git_daemon(scratch.dir.path(), scratch.dir.path().join("daemon.log"));
    let port = daemon.port;
    let heads = list(
        scratch.dir.path(),
        request(
            format!("git://127.0.0.1:{port}/control.git"),
            Credentials::none(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(heads, ls_remote(&repo));
}

#[tokio::test]
async fn smart_http_lists_heads_with_basic_auth_and_bearer_tokens() {
    let scratch = Scratch::new();
    let repos = scratch.dir.path().join("repos");
    for dir in ["public", "private", "token"] {
        std::fs::create_dir_all(repos.join(dir)).unwrap();
        control_repo(&repos.join(dir).join("control.git"));
    }
    let want = ls_remote(&repos.join("public/control.git"));
    let server = http_git(&scratch, &repos, &[("bot", "s3cret")], "tok3n");
    let port = server.port;
    let base = format!("http://127.0.0.1:{port}/git");

    let public = list(
        scratch.dir.path(),
        request(format!("{base}/public/control.git"), Credentials::none()),
    )
    .await
    .unwrap();
    assert_eq!(public.len(), want.len());

    let basic = secret(&[("username", b"bot"), ("password", b"s3cret")]);
    let private = list(
        scratch.dir.path(),
        request(format!("{base}/private/control.git"), basic),
    )
    .await
    .unwrap();
    assert_eq!(private, ls_remote(&repos.join("private/control.git")));

    let bearer = secret(&[("bearerToken", b"tok3n")]);
    let token = list(
        scratch.dir.path(),
        request(format!("{base}/token/control.git"), bearer),
    )
    .await
    .unwrap();
    assert_eq!(token, ls_remote(&repos.join("token/control.git")));

    // Wrong or missing credentials fail without prompting, and the message carries
    // neither the password nor user info from the URL.
    let wrong = secret(&[("username", b"bot"), ("password", b"wrong-pass")]);
    let err = list(
        scratch.dir.path(),
        request(format!("{base}/private/control.git"), wrong),
    )
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("wrong-pass"), "{err}");
    // User info in the URL never shows up in a message, whatever the outcome.
    let inline = format!("http://bot:inline-pass@127.0.0.1:{port}/git/private/control.git");
    if let Err(e) = list(scratch.dir.path(), request(inline, Credentials::none())).await {
        assert!(!e.to_string().contains("inline-pass"), "{e}");
    }
    let err = list(
        scratch.dir.path(),
        request(format!("{base}/token/control.git"), Credentials::none()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HeadError::Git { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_repository_is_an_error_naming_the_url() {
    let scratch = Scratch::new();
    let daemon = git_daemon(scratch.dir.path(), scratch.dir.path().join("daemon.log"));
    let port = daemon.port;
    let url = format!("git://127.0.0.1:{port}/nothing-here.git");
    let err = list(
        scratch.dir.path(),
        request(url.clone(), Credentials::none()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let scratch = Scratch::new();
    // Accepts connections and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let cache = HeadCache::new(
        Arc::new(GixHeadLister::new(scratch.dir.path()).unwrap()),
        Duration::from_secs(10),
    );
    let mut req = request(
        format!("git://127.0.0.1:{port}/control.git"),
        Credentials::none(),
    );
    req.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = cache.heads(req, Instant::now()).await.unwrap_err();
    assert_eq!(err, HeadError::Timeout(0));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn https_with_the_secret_ca_lists_heads_and_without_it_fails() {
    let scratch = Scratch::new();
    let repos = scratch.dir.path().join("repos");
    std::fs::create_dir_all(repos.join("public")).unwrap();
    control_repo(&repos.join("public/control.git"));
    let http = http_git(&scratch, &repos, &[("bot", "pw")], "t");
    let pki = pki(&scratch);
    let tls = tls_proxy(&scratch, &pki, http.port, "git");
    let tls_port = tls.port;
    let url = format!("https://127.0.0.1:{tls_port}/git/public/control.git");

    let with_ca = secret(&[("ca.crt", &std::fs::read(&pki.ca_pem).unwrap())]);
    let heads = list(scratch.dir.path(), request(url.clone(), with_ca))
        .await
        .unwrap();
    assert_eq!(heads, ls_remote(&repos.join("public/control.git")));

    let err = list(scratch.dir.path(), request(url, Credentials::none()))
        .await
        .unwrap_err();
    assert!(matches!(err, HeadError::Git { .. }), "{err:?}");

    let bad_ca = Credentials {
        // Past the Secret's checks (which refuse it): the transport must refuse it too.
        ca_pem: Some(b"not a certificate".to_vec()),
        ..Credentials::none()
    };
    let err = list(
        scratch.dir.path(),
        request(format!("https://127.0.0.1:{tls_port}/x.git"), bad_ca),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HeadError::Credentials(_) | HeadError::Git { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn ssh_with_the_secret_key_and_known_hosts_lists_heads() {
    let scratch = Scratch::new();
    let repo = scratch.dir.path().join("control.git");
    control_repo(&repo);
    let sshd = sshd(&scratch, true);
    let port = sshd.server.port;
    let url = format!("ssh://{}@127.0.0.1:{port}{}", sshd.user, repo.display());
    let identity = sshd.identity.clone().into_bytes();

    let good = secret(&[
        ("identity", &identity),
        ("known_hosts", sshd.known_hosts.as_bytes()),
    ]);
    let heads = list(scratch.dir.path(), request(url.clone(), good))
        .await
        .unwrap();
    assert_eq!(heads, ls_remote(&repo));

    // A known_hosts entry for another key: the host is refused, nothing is listed.
    let wrong_host = secret(&[
        ("identity", &identity),
        ("known_hosts", sshd.known_hosts_of_another_key().as_bytes()),
    ]);
    let err = list(scratch.dir.path(), request(url, wrong_host))
        .await
        .unwrap_err();
    assert!(matches!(err, HeadError::Git { .. }), "{err:?}");
}
