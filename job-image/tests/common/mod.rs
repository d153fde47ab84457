//! Test harness: real servers on 127.0.0.1 started per test (git daemon, git
//! http-backend behind lighttpd, sshd, a static Forge over python3's http.server, a TLS
//! proxy), git fixtures written with git itself, and the worker binary.
//!
//! A missing server binary fails the test with the package to install; nothing is
//! skipped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod world;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where to look for server binaries besides `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/lib/git-core", "/usr/bin", "/sbin"];

/// The path of `name`, or a panic naming the Debian package to install.
pub fn require(name: &str, package: &str) -> PathBuf {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_dirs).collect();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed: install the Debian package `{package}` (tests/scripts/install-deps.sh does)"
    );
}

/// A temporary directory for one test.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("ovc-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        p
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// Runs a command and returns its stdout; panics with stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `git` with a clean configuration.
pub fn git(dir: &Path) -> Command {
    let mut cmd = Command::new(require("git", "git"));
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000");
    cmd
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed when dropped.
pub struct Server {
    pub name: &'static str,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Server {
    /// Starts `cmd` (output to `log`) and waits until `port` accepts connections.
    pub fn start(name: &'static str, mut cmd: Command, port: u16, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let mut server = Self {
            name,
            port,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{name} exited with {status} before listening: {}",
                    server.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on {port}: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One file of a fixture tree.
#[derive(Clone, Debug)]
pub enum Node {
    File(Vec<u8>),
    Exec(Vec<u8>),
    Link(String),
}

pub fn file(content: &str) -> Node {
    Node::File(content.as_bytes().to_vec())
}

pub fn exec(content: &str) -> Node {
    Node::Exec(content.as_bytes().to_vec())
}

pub fn link(target: &str) -> Node {
    Node::Link(target.to_owned())
}

/// A bare repository to push fixtures into.
#[derive(Clone, Debug)]
pub struct Bare {
    pub path: PathBuf,
}

impl Bare {
    pub fn init(path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        run(git(path).args(["init", "-q", "--bare", "--initial-branch=main"]));
        // git daemon serves only repositories with this marker unless --export-all.
        std::fs::write(path.join("git-daemon-export-ok"), "").unwrap();
        Self {
            path: path.to_owned(),
        }
    }

    /// The commit `branch` points to, if it exists.
    pub fn head(&self, branch: &str) -> Option<String> {
        let out = git(&self.path)
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Commits exactly `files` as the new tree of `branch` (on top of its current commit)
    /// and returns the commit id.
    pub fn commit(&self, branch: &str, message: &str, files: &[(&str, Node)]) -> String {
        let mut stream: Vec<u8> = Vec::new();
        writeln!(stream, "commit refs/heads/{branch}").unwrap();
        writeln!(stream, "committer Test <test@example.com> 1700000000 +0000").unwrap();
        writeln!(stream, "data {}\n{message}", message.len()).unwrap();
        if let Some(parent) = self.head(branch) {
            writeln!(stream, "from {parent}").unwrap();
        }
        writeln!(stream, "deleteall").unwrap();
        for (path, node) in files {
            let (mode, data) = match node {
                Node::File(d) => ("100644", d.clone()),
                Node::Exec(d) => ("100755", d.clone()),
                Node::Link(t) => ("120000", t.as_bytes().to_vec()),
            };
            writeln!(stream, "M {mode} inline {path}").unwrap();
            writeln!(stream, "data {}", data.len()).unwrap();
            stream.extend_from_slice(&data);
            stream.push(b'\n');
        }
        let mut child = git(&self.path)
            .args(["fast-import", "--quiet", "--force"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&stream).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "fast-import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.head(branch).unwrap()
    }

    /// A commit whose root tree holds `name` (any bytes, even `..`) pointing to a blob
    /// with `content`; git's own tools refuse to make such trees, servers still serve
    /// them.
    pub fn commit_raw_entry(&self, branch: &str, name: &[u8], content: &str) -> String {
        let blob = self.hash_object(&["-w", "--stdin"], content.as_bytes());
        let mut tree = Vec::new();
        tree.extend_from_slice(b"100644 ");
        tree.extend_from_slice(name);
        tree.push(0);
        tree.extend_from_slice(&hex_to_bytes(&blob));
        let tree_id = self.hash_object(&["-w", "-t", "tree", "--literally", "--stdin"], &tree);
        let commit = run(git(&self.path).args(["commit-tree", &tree_id, "-m", "hostile"]))
            .trim()
            .to_owned();
        run(git(&self.path).args(["update-ref", &format!("refs/heads/{branch}"), &commit]));
        commit
    }

    fn hash_object(&self, args: &[&str], input: &[u8]) -> String {
        let mut child = git(&self.path)
            .arg("hash-object")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "hash-object: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn delete_branch(&self, branch: &str) {
        run(git(&self.path).args(["update-ref", "-d", &format!("refs/heads/{branch}")]));
    }

    /// An annotated tag on the head of `branch`.
    pub fn tag(&self, name: &str, branch: &str) {
        run(git(&self.path).args([
            "tag",
            "-a",
            name,
            "-m",
            name,
            &format!("refs/heads/{branch}"),
        ]));
    }
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// `git daemon` serving every repository below `base` (git://127.0.0.1:<port>/<path>).
pub fn git_daemon(base: &Path, log: PathBuf) -> Server {
    let port = free_port();
    let mut cmd = Command::new(require("git", "git"));
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--informative-errors",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base);
    Server::start("git daemon", cmd, port, log)
}

/// Smart HTTP: `git http-backend` as CGI behind lighttpd. Repositories below
/// `repos/private/` need basic auth with `users`, below `repos/token/` a bearer token,
/// the rest is public. URLs: `http://127.0.0.1:<port>/git/<path>`.
pub fn http_git(scratch: &Scratch, repos: &Path, users: &[(&str, &str)], bearer: &str) -> Server {
    let lighttpd = require("lighttpd", "lighttpd");
    let backend = require("git-http-backend", "git");
    let port = free_port();
    let users_file = scratch.path("lighttpd/users");
    let lines: Vec<String> = users.iter().map(|(u, p)| format!("{u}:{p}")).collect();
    std::fs::write(&users_file, lines.join("\n") + "\n").unwrap();
    let docroot = scratch.mkdir("lighttpd/www");
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
        errorlog = scratch.path("lighttpd/error.log").display(),
        backend = backend.display(),
        repos = repos.display(),
        users = users_file.display(),
    );
    let config_path = scratch.path("lighttpd/lighttpd.conf");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(lighttpd);
    cmd.arg("-D").arg("-f").arg(&config_path);
    Server::start("lighttpd", cmd, port, scratch.path("lighttpd/stdout.log"))
}

/// A static file server (the fake Forge).
pub fn static_http(dir: &Path, log: PathBuf) -> Server {
    let python = require("python3", "python3");
    let port = free_port();
    let mut cmd = Command::new(python);
    cmd.args([
        "-u",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(dir)
    .arg(port.to_string());
    Server::start("python3 http.server", cmd, port, log)
}

/// Test PKI: a CA and a server certificate for 127.0.0.1, made with openssl.
pub struct Pki {
    pub ca_pem: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn pki(scratch: &Scratch) -> Pki {
    let openssl = require("openssl", "openssl");
    let dir = scratch.mkdir("pki");
    let ca_key = dir.join("ca.key");
    let ca_pem = dir.join("ca.crt");
    run(Command::new(&openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=openvox-code test CA",
        ])
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_pem));
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.crt");
    run(Command::new(&openssl)
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca_pem)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext));
    Pki { ca_pem, cert, key }
}

const TLS_PROXY: &str = r#"
import socket, ssl, sys, threading
listen_port, backend_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen_port))
srv.listen(64)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except Exception:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
def handle(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
    except Exception as e:
        print("handshake failed:", e, flush=True)
        c.close()
        return
    b = socket.create_connection(("127.0.0.1", backend_port))
    threading.Thread(target=pipe, args=(t, b), daemon=True).start()
    pipe(b, t)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// A TLS-terminating proxy (python3's ssl module) in front of `backend_port`.
pub fn tls_proxy(scratch: &Scratch, pki: &Pki, backend_port: u16, name: &str) -> Server {
    let python = require("python3", "python3");
    let script = scratch.path("tls_proxy.py");
    std::fs::write(&script, TLS_PROXY).unwrap();
    let port = free_port();
    let mut cmd = Command::new(python);
    cmd.arg("-u")
        .arg(&script)
        .arg(port.to_string())
        .arg(backend_port.to_string())
        .arg(&pki.cert)
        .arg(&pki.key);
    Server::start(
        "tls proxy",
        cmd,
        port,
        scratch.path(&format!("{name}-tls-proxy.log")),
    )
}

/// sshd on a loopback port with a generated host key, accepting a generated user key.
pub struct Sshd {
    pub server: Server,
    pub user: String,
    /// Private key of the user (OpenSSH format).
    pub identity: String,
    /// `known_hosts` line for this server.
    pub known_hosts: String,
}

/// Starts sshd. With `accept_git_protocol`, it passes GIT_PROTOCOL to git (protocol
/// v2); without, git falls back to protocol v1.
pub fn sshd(scratch: &Scratch, accept_git_protocol: bool) -> Sshd {
    let sshd = require("sshd", "openssh-server");
    let keygen = require("ssh-keygen", "openssh-client");
    require("ssh", "openssh-client");
    let dir = scratch.mkdir(if accept_git_protocol {
        "sshd"
    } else {
        "sshd-v1"
    });
    // sshd refuses to start without its privilege separation directory.
    let privsep = Path::new("/run/sshd");
    if !privsep.is_dir() {
        std::fs::create_dir_all(privsep).unwrap_or_else(|e| {
            panic!("sshd needs /run/sshd and it cannot be created ({e}); run the tests as root or create it")
        });
    }
    for key in ["host_key", "user_key"] {
        run(Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
            .arg(dir.join(key)));
    }
    std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
    let port = free_port();
    let config = format!(
        "ListenAddress 127.0.0.1:{port}\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
         PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\nLogLevel VERBOSE\n{}",
        if accept_git_protocol {
            "AcceptEnv GIT_PROTOCOL\n"
        } else {
            ""
        },
        dir = dir.display()
    );
    let config_path = dir.join("sshd_config");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(sshd);
    cmd.arg("-D").arg("-e").arg("-f").arg(&config_path);
    let server = Server::start("sshd", cmd, port, dir.join("sshd.log"));
    let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
    let host_key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    let user = run(Command::new("id").arg("-un")).trim().to_owned();
    Sshd {
        server,
        user,
        identity: std::fs::read_to_string(dir.join("user_key")).unwrap(),
        known_hosts: format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
    }
}

/// A Forge served as static files: `v3/releases/<slug>-<version>`, `v3/modules/<slug>`
/// and `v3/files/<slug>-<version>.tar.gz`.
pub struct ForgeDir {
    pub root: PathBuf,
}

impl ForgeDir {
    pub fn new(root: PathBuf) -> Self {
        for d in ["v3/releases", "v3/modules", "v3/files"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Self { root }
    }

    /// A release tarball of `files` below the usual `<slug>-<version>/` top directory,
    /// published as the current release when `current`. Returns its sha256.
    pub fn release(
        &self,
        slug: &str,
        version: &str,
        files: &[(&str, Node)],
        current: bool,
    ) -> String {
        let top = format!("{slug}-{version}");
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut dirs = std::collections::BTreeSet::new();
        dirs.insert(top.clone());
        for (path, _) in files {
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(format!("{top}/{}", p.display()));
                parent = p.parent();
            }
        }
        for dir in &dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{dir}/"), std::io::empty())
                .unwrap();
        }
        for (path, node) in files {
            let mut header = tar::Header::new_gnu();
            match node {
                Node::File(data) | Node::Exec(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(if matches!(node, Node::Exec(_)) {
                        0o755
                    } else {
                        0o644
                    });
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, format!("{top}/{path}"), &data[..])
                        .unwrap();
                }
                Node::Link(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, format!("{top}/{path}"), target)
                        .unwrap();
                }
            }
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        self.publish(slug, version, &bytes, None, current)
    }

    /// Publishes raw tarball bytes; `declared_sha256` overrides the checksum the API
    /// announces (to test mismatches). Returns the sha256 announced.
    pub fn publish(
        &self,
        slug: &str,
        version: &str,
        tarball: &[u8],
        declared_sha256: Option<&str>,
        current: bool,
    ) -> String {
        use sha2::Digest;
        let actual = hex(&sha2::Sha256::digest(tarball));
        let sha = declared_sha256.map_or(actual, str::to_owned);
        let file = format!("{slug}-{version}.tar.gz");
        std::fs::write(self.root.join("v3/files").join(&file), tarball).unwrap();
        let release = serde_json::json!({
            "slug": format!("{slug}-{version}"),
            "version": version,
            "file_uri": format!("/v3/files/{file}"),
            "file_size": tarball.len(),
            "file_sha256": sha,
            "module": {"slug": slug},
        });
        std::fs::write(
            self.root
                .join("v3/releases")
                .join(format!("{slug}-{version}")),
            serde_json::to_vec(&release).unwrap(),
        )
        .unwrap();
        if current {
            let module = serde_json::json!({"slug": slug, "current_release": release});
            std::fs::write(
                self.root.join("v3/modules").join(slug),
                serde_json::to_vec(&module).unwrap(),
            )
            .unwrap();
        }
        sha
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A raw .tar.gz with exact entry names (for hostile archives).
pub fn raw_tarball(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            let l = link.as_bytes();
            header.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// The result of one worker run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last line on stderr (the one-line reason on failure).
    pub fn reason(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "worker failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn assert_failed(&self) -> &Self {
        assert_ne!(
            self.code, 0,
            "worker should have failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.reason().starts_with("error: "),
            "last line is not the reason: {}",
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the worker binary with `args`; its temporary files go to `tmp` (which the caller
/// can check is empty afterwards).
pub fn worker(args: &[&str], tmp: &Path) -> Run {
    std::fs::create_dir_all(tmp).unwrap();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_openvox-code-worker"))
        .args(args)
        .env("TMPDIR", tmp)
        .env_remove("RUST_LOG")
        .env_remove("OPENVOX_CODE_URL")
        .env_remove("OPENVOX_CODE_SECRET_DIR")
        .env_remove("OPENVOX_CODE_WORK_DIR")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Entries left in `dir` (to check that temporary files are gone).
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes a secret directory with `files`.
pub fn secret_dir(scratch: &Scratch, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = scratch.mkdir(name);
    for (k, v) in files {
        std::fs::write(dir.join(k), v).unwrap();
    }
    dir
}
