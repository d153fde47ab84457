//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a free
//! port of 127.0.0.1 with its storage in a temporary directory, optionally with TLS (a
//! CA and a server certificate made here with `openssl`) and htpasswd basic auth (the
//! bcrypt line made here). Its access log tells what clients sent. The process is
//! stopped when the value is dropped.
//!
//! A missing binary fails the test naming the Debian package; nothing is skipped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to run the registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub tls: bool,
    pub basic_auth: Option<(&'static str, &'static str)>,
}

pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    settings: Settings,
}

fn require(binary: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{binary}` is not installed: install the Debian package `{package}` (tests/scripts/install-deps.sh does)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs skopeo and returns its standard output; fails the test when it fails.
pub fn skopeo(args: &[&str]) -> String {
    require("skopeo", "skopeo");
    let output = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

impl TestRegistry {
    pub fn start(settings: Settings) -> Self {
        require("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("ovc-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let root = dir.path();
        let mut http = format!("{{addr: \"127.0.0.1:{port}\"");
        if settings.tls {
            make_certificates(root);
            http.push_str(&format!(
                ", tls: {{certificate: \"{}\", key: \"{}\"}}",
                root.join("server.crt").display(),
                root.join("server.key").display()
            ));
        }
        http.push('}');
        let mut config = format!(
            "version: 0.1\nlog: {{level: info, formatter: text}}\nstorage: {{filesystem: {{rootdirectory: \"{}\"}}, delete: {{enabled: true}}}}\nhttp: {http}\n",
            root.join("data").display()
        );
        if let Some((user, password)) = settings.basic_auth {
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(root.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: \"openvox-code-test\", path: \"{}\"}}}}\n",
                root.join("htpasswd").display()
            ));
        }
        std::fs::write(root.join("config.yml"), config).unwrap();
        let mut registry = Self {
            dir,
            port,
            child: None,
            settings,
        };
        registry.restart();
        registry
    }

    /// Starts the registry (again) on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the registry process (the storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The CA certificate (PEM) of a TLS registry.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.settings
            .tls
            .then(|| self.dir.path().join("certs/ca.crt"))
    }

    /// A directory holding only the CA as `ca.crt` (skopeo's `--cert-dir`).
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.settings.tls.then(|| self.dir.path().join("certs"))
    }

    /// Access log request lines (`METHOD URI STATUS`), in order.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                // 127.0.0.1 - - [date] "PUT /v2/... HTTP/1.1" 201 0 "" "agent"
                let (_, rest) = line.split_once("] \"")?;
                let (request, rest) = rest.split_once("\" ")?;
                let mut parts = request.split(' ');
                let method = parts.next()?.to_owned();
                let uri = parts.next()?.to_owned();
                let status = rest.split(' ').next()?.parse().ok()?;
                Some((method, uri, status))
            })
            .collect()
    }

    /// Requests whose `"METHOD URI` starts with `prefix`.
    pub fn requests_matching(&self, prefix: &str) -> Vec<(String, String, u16)> {
        self.requests()
            .into_iter()
            .filter(|(m, u, _)| format!("{m} {u}").starts_with(prefix))
            .collect()
    }

    /// Digests of the blobs uploads completed into `repo` (the final `PUT ?digest=`).
    pub fn blob_uploads(&self, repo: &str) -> Vec<String> {
        self.requests_matching(&format!("PUT /v2/{repo}/blobs/uploads/"))
            .into_iter()
            .filter(|(_, _, status)| *status == 201)
            .filter_map(|(_, uri, _)| {
                let query = uri.split_once('?')?.1;
                let digest = query.split('&').find_map(|p| p.strip_prefix("digest="))?;
                Some(digest.replace("%3A", ":").replace("%3a", ":"))
            })
            .collect()
    }

    /// Manifests put into `repo` (by digest or tag) with success.
    pub fn manifest_puts(&self, repo: &str) -> Vec<String> {
        self.requests_matching(&format!("PUT /v2/{repo}/manifests/"))
            .into_iter()
            .filter(|(_, _, status)| *status == 201)
            .map(|(_, uri, _)| uri)
            .collect()
    }

    /// Whether the registry's storage holds any manifest revision of `repo`.
    pub fn has_manifests(&self, repo: &str) -> bool {
        let dir = self
            .dir
            .path()
            .join("data/docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/revisions/sha256");
        std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Body of a plain-HTTP GET to the registry.
    pub fn get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.host()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for 127.0.0.1 in `root/certs/ca.crt` and
/// `root/server.{crt,key}`.
fn make_certificates(root: &Path) {
    require("openssl", "openssl");
    let certs = root.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=openvox-code test CA", "-keyout"])
        .arg(root.join("ca.key"))
        .arg("-out")
        .arg(certs.join("ca.crt"))
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(root.join("server.key"))
        .arg("-out")
        .arg(root.join("server.csr")));
    std::fs::write(
        root.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(root.join("server.csr"))
        .arg("-CA")
        .arg(certs.join("ca.crt"))
        .arg("-CAkey")
        .arg(root.join("ca.key"))
        .arg("-CAcreateserial")
        .arg("-out")
        .arg(root.join("server.crt"))
        .arg("-extfile")
        .arg(root.join("server.ext")));
}
