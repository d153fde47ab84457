//! The head check against real git servers on 127.0.0.1: `file://`, `git daemon`
//! (git://) and smart HTTP (`git http-backend` behind lighttpd) with basic auth and a
//! bearer token. Each result is compared with `git ls-remote --heads` of the same
//! repository.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::fixtures::{Server, free_port, git_daemon, require, run};
use openvox_code_controller::codesource::heads::{
    GitAuth, GixHeadLister, HeadCache, HeadError, HeadLister, HeadRequest, RemoteHeads,
};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "openvox-heads-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

/// Smart HTTP through lighttpd: `/git/private/` needs basic auth, `/git/token/` a
/// bearer token, the rest is public.
fn http_git(scratch: &Path, repos: &Path, user: (&str, &str), bearer: &str, port: u16) -> Server {
    let lighttpd = require("lighttpd", "lighttpd");
    let backend = require("git-http-backend", "git");
    let users = scratch.join("users");
    std::fs::write(&users, format!("{}:{}\n", user.0, user.1)).unwrap();
    let docroot = scratch.join("www");
    std::fs::create_dir_all(&docroot).unwrap();
    let config = format!(
        r#"
server.document-root = "{docroot}"
server.bind = "127.0.0.1"
server.port = {port}
server.modules = ("mod_access", "mod_alias", "mod_auth", "mod_authn_file", "mod_setenv", "mod_cgi")
server.errorlog = "{errorlog}"
alias.url = ("/git" => "{backend}")
$HTTP["url"] =~ "^/git" {{
  cgi.assign = ("" => "")
  setenv.set-environment = ("GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1",
    "GIT_CONFIG_NOSYSTEM" => "1", "GIT_CONFIG_COUNT" => "1",
    "GIT_CONFIG_KEY_0" => "safe.directory", "GIT_CONFIG_VALUE_0" => "*")
}}
auth.backend = "plain"
auth.backend.plain.userfile = "{users}"
auth.require = ("/git/private/" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
$HTTP["url"] =~ "^/git/token/" {{
  $REQUEST_HEADER["Authorization"] != "Bearer {bearer}" {{
    url.access-deny = ("")
  }}
}}
"#,
        docroot = docroot.display(),
        errorlog = scratch.join("lighttpd-error.log").display(),
        backend = backend.display(),
        repos = repos.display(),
        users = users.display(),
    );
    let path = scratch.join("lighttpd.conf");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(lighttpd);
    cmd.arg("-D").arg("-f").arg(&path);
    Server::start("lighttpd", cmd, port, scratch.join("lighttpd.log"))
}

fn request(url: String, auth: GitAuth) -> HeadRequest {
    HeadRequest {
        url,
        auth,
        timeout: Duration::from_secs(20),
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
    let scratch = Scratch::new("file");
    let repo = scratch.0.join("control.git");
    control_repo(&repo);
    let heads = list(
        &scratch.0,
        request(format!("file://{}", repo.display()), GitAuth::default()),
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
    let scratch = Scratch::new("daemon");
    let repo = scratch.0.join("control.git");
    control_repo(&repo);
    let daemon = git_daemon(&scratch.0, scratch.0.join("daemon.log"));
    let port = daemon.port;
    let heads = list(
        &scratch.0,
        request(
            format!("git://127.0.0.1:{port}/control.git"),
            GitAuth::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(heads, ls_remote(&repo));
}

#[tokio::test]
async fn smart_http_lists_heads_with_basic_auth_and_bearer_tokens() {
    let scratch = Scratch::new("http");
    let repos = scratch.0.join("repos");
    for dir in ["public", "private", "token"] {
        std::fs::create_dir_all(repos.join(dir)).unwrap();
        control_repo(&repos.join(dir).join("control.git"));
    }
    let want = ls_remote(&repos.join("public/control.git"));
    let port = free_port();
    let _server = http_git(&scratch.0, &repos, ("bot", "s3cret"), "tok3n", port);
    let base = format!("http://127.0.0.1:{port}/git");

    let public = list(
        &scratch.0,
        request(format!("{base}/public/control.git"), GitAuth::default()),
    )
    .await
    .unwrap();
    assert_eq!(public.len(), want.len());

    let basic = GitAuth {
        username: Some("bot".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let private = list(
        &scratch.0,
        request(format!("{base}/private/control.git"), basic),
    )
    .await
    .unwrap();
    assert_eq!(private, ls_remote(&repos.join("private/control.git")));

    let bearer = GitAuth {
        bearer_token: Some("tok3n".into()),
        ..Default::default()
    };
    let token = list(
        &scratch.0,
        request(format!("{base}/token/control.git"), bearer),
    )
    .await
    .unwrap();
    assert_eq!(token, ls_remote(&repos.join("token/control.git")));

    // Wrong or missing credentials fail without prompting, and the message carries
    // neither the password nor user info from the URL.
    let wrong = GitAuth {
        username: Some("bot".into()),
        password: Some("wrong-pass".into()),
        ..Default::default()
    };
    let err = list(
        &scratch.0,
        request(format!("{base}/private/control.git"), wrong),
    )
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("wrong-pass"), "{err}");
    // User info in the URL never shows up in a message, whatever the outcome.
    let inline = format!("http://bot:inline-pass@127.0.0.1:{port}/git/private/control.git");
    if let Err(e) = list(&scratch.0, request(inline, GitAuth::default())).await {
        assert!(!e.to_string().contains("inline-pass"), "{e}");
    }
    let err = list(
        &scratch.0,
        request(format!("{base}/token/control.git"), GitAuth::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HeadError::Git { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_repository_is_an_error_naming_the_url() {
    let scratch = Scratch::new("missing");
    let daemon = git_daemon(&scratch.0, scratch.0.join("daemon.log"));
    let port = daemon.port;
    let url = format!("git://127.0.0.1:{port}/nothing-here.git");
    let err = list(&scratch.0, request(url.clone(), GitAuth::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let scratch = Scratch::new("silent");
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
        Arc::new(GixHeadLister::new(&scratch.0).unwrap()),
        Duration::from_secs(10),
    );
    let mut req = request(
        format!("git://127.0.0.1:{port}/control.git"),
        GitAuth::default(),
    );
    req.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = cache.heads(req, Instant::now()).await.unwrap_err();
    assert_eq!(err, HeadError::Timeout(0));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A CA and a server certificate for 127.0.0.1, made with openssl. Returns
/// (ca.crt, server.crt, server.key).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = require("openssl", "openssl");
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.crt"));
    run(Command::new(&openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=heads test CA",
        ])
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    let (key, csr, cert) = (
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.crt"),
    );
    run(Command::new(&openssl)
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "1", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext));
    (ca, cert, key)
}

/// Terminates TLS on `port` and forwards to `backend` (python3's ssl module).
fn tls_proxy(dir: &Path, cert: &Path, key: &Path, port: u16, backend: u16) -> Server {
    let script = dir.join("tls_proxy.py");
    std::fs::write(
        &script,
        r#"
import socket, ssl, sys, threading
port, backend, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
def copy(src, dst):
    try:
        while (data := src.recv(65536)):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(conn):
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError):
        conn.close(); return
    upstream = socket.create_connection(("127.0.0.1", backend))
    threading.Thread(target=copy, args=(tls, upstream), daemon=True).start()
    copy(upstream, tls)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#,
    )
    .unwrap();
    let mut cmd = Command::new(require("python3", "python3"));
    cmd.arg("-u")
        .arg(&script)
        .arg(port.to_string())
        .arg(backend.to_string())
        .arg(cert)
        .arg(key);
    Server::start("tls proxy", cmd, port, dir.join("tls_proxy.log"))
}

#[tokio::test]
async fn https_with_the_secret_ca_lists_heads_and_without_it_fails() {
    let scratch = Scratch::new("https");
    let repos = scratch.0.join("repos");
    std::fs::create_dir_all(repos.join("public")).unwrap();
    control_repo(&repos.join("public/control.git"));
    let http_port = free_port();
    let _http = http_git(&scratch.0, &repos, ("bot", "pw"), "t", http_port);
    let (ca, cert, key) = pki(&scratch.0);
    let tls_port = free_port();
    let _tls = tls_proxy(&scratch.0, &cert, &key, tls_port, http_port);
    let url = format!("https://127.0.0.1:{tls_port}/git/public/control.git");

    let with_ca = GitAuth {
        ca_crt: Some(std::fs::read(&ca).unwrap()),
        ..Default::default()
    };
    let heads = list(&scratch.0, request(url.clone(), with_ca))
        .await
        .unwrap();
    assert_eq!(heads, ls_remote(&repos.join("public/control.git")));

    let err = list(&scratch.0, request(url, GitAuth::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, HeadError::Git { .. }), "{err:?}");

    let bad_ca = GitAuth {
        ca_crt: Some(b"not a certificate".to_vec()),
        ..Default::default()
    };
    let err = list(
        &scratch.0,
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
    let scratch = Scratch::new("ssh");
    let repo = scratch.0.join("control.git");
    control_repo(&repo);
    let sshd = require("sshd", "openssh-server");
    let keygen = require("ssh-keygen", "openssh-client");
    require("ssh", "openssh-client");
    // sshd refuses to start without its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").expect("sshd needs /run/sshd (run the tests as root)");
    for key in ["host_key", "user_key", "other_host_key"] {
        run(Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
            .arg(scratch.0.join(key)));
    }
    std::fs::copy(
        scratch.0.join("user_key.pub"),
        scratch.0.join("authorized_keys"),
    )
    .unwrap();
    let port = free_port();
    let config = format!(
        "ListenAddress 127.0.0.1:{port}\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
         PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAcceptEnv GIT_PROTOCOL\n",
        dir = scratch.0.display()
    );
    std::fs::write(scratch.0.join("sshd_config"), config).unwrap();
    let mut cmd = Command::new(sshd);
    cmd.arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(scratch.0.join("sshd_config"));
    let _server = Server::start("sshd", cmd, port, scratch.0.join("sshd.log"));

    let host_key = |file: &str| {
        let text = std::fs::read_to_string(scratch.0.join(file)).unwrap();
        let parts: Vec<&str> = text.split_whitespace().take(2).collect();
        format!("[127.0.0.1]:{port} {}\n", parts.join(" "))
    };
    let user = run(Command::new("id").arg("-un")).trim().to_string();
    let url = format!("ssh://{user}@127.0.0.1:{port}{}", repo.display());
    let identity = std::fs::read(scratch.0.join("user_key")).unwrap();

    let good = GitAuth {
        identity: Some(identity.clone()),
        known_hosts: Some(host_key("host_key.pub").into_bytes()),
        ..Default::default()
    };
    let heads = list(&scratch.0, request(url.clone(), good)).await.unwrap();
    assert_eq!(heads, ls_remote(&repo));

    // A known_hosts entry for another key: the host is refused, nothing is listed.
    let wrong_host = GitAuth {
        identity: Some(identity),
        known_hosts: Some(host_key("other_host_key.pub").into_bytes()),
        ..Default::default()
    };
    let err = list(&scratch.0, request(url, wrong_host))
        .await
        .unwrap_err();
    assert!(matches!(err, HeadError::Git { .. }), "{err:?}");
}
