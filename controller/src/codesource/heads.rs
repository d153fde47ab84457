//! The head check: which commit each branch of the remote points at, from one ref
//! advertisement (like `git ls-remote --heads`; no objects are fetched).
//!
//! Identical repositories are listed once per tick however many CodeSources share them:
//! [`HeadCache`] keys requests by URL and a fingerprint of the credentials, shares a
//! listing that is in flight and keeps a finished one for a short time (less than the
//! shortest schedule interval). The listing itself sits behind [`HeadLister`] so unit
//! tests can stand in for the network; [`GixHeadLister`] is the real one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use sha2::{Digest as _, Sha256};

/// All branches of a remote: short branch name → commit (hex).
pub type RemoteHeads = BTreeMap<String, String>;

/// Why listing the heads failed. Messages never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The remote did not answer in time.
    #[error("no answer from the remote within {0}s")]
    Timeout(u64),
    /// Connecting, authenticating or reading the advertisement failed.
    #[error("{url}: {message}")]
    Git {
        /// The URL without user info.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The credentials could not be used (for example a malformed CA bundle).
    #[error("credentials: {0}")]
    Credentials(String),
    /// The listing task died.
    #[error("head listing task failed: {0}")]
    Task(String),
}

/// Credentials for a remote, from the CodeSource's git Secret. `Debug` never shows
/// the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GitAuth {
    /// `username` (https basic auth).
    pub username: Option<String>,
    /// `password` (https basic auth).
    pub password: Option<String>,
    /// `bearerToken` (https).
    pub bearer_token: Option<String>,
    /// `identity`: private key (ssh).
    pub identity: Option<Vec<u8>>,
    /// `known_hosts` (ssh).
    pub known_hosts: Option<Vec<u8>>,
    /// `ca.crt`: PEM bundle trusted for https.
    pub ca_crt: Option<Vec<u8>>,
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAuth")
            .field("username", &self.username.as_ref().map(|_| "<set>"))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("known_hosts", &self.known_hosts.as_ref().map(|_| "<set>"))
            .field("ca_crt", &self.ca_crt.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl GitAuth {
    /// Reads the keys openvox-code knows from a Secret's data; other keys are ignored.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Self {
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
        };
        Self {
            username: text("username"),
            password: text("password"),
            bearer_token: text("bearerToken"),
            identity: data.get("identity").cloned(),
            known_hosts: data.get("known_hosts").cloned(),
            ca_crt: data.get("ca.crt").cloned(),
        }
    }

    /// A hash of all values: equal credentials give equal fingerprints, and the
    /// fingerprint reveals nothing about them.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |name: &str, value: Option<&[u8]>| {
            hasher.update(name.as_bytes());
            match value {
                Some(v) => {
                    hasher.update([1]);
                    hasher.update((v.len() as u64).to_be_bytes());
                    hasher.update(v);
                }
                None => hasher.update([0]),
            }
        };
        field("username", self.username.as_deref().map(str::as_bytes));
        field("password", self.password.as_deref().map(str::as_bytes));
        field(
            "bearerToken",
            self.bearer_token.as_deref().map(str::as_bytes),
        );
        field("identity", self.identity.as_deref());
        field("known_hosts", self.known_hosts.as_deref());
        field("ca.crt", self.ca_crt.as_deref());
        hex::encode(hasher.finalize())
    }
}

/// One head check to make.
#[derive(Clone, Debug)]
pub struct HeadRequest {
    /// Repository URL as in the spec.
    pub url: String,
    /// Credentials, possibly empty.
    pub auth: GitAuth,
    /// Time limit of the whole listing.
    pub timeout: Duration,
}

impl HeadRequest {
    /// The deduplication key: URL plus credential fingerprint.
    pub fn key(&self) -> String {
        format!("{}#{}", self.url, self.auth.fingerprint())
    }
}

/// Lists the branches of a remote.
pub trait HeadLister: Send + Sync + 'static {
    /// All `refs/heads/*` of the remote with their commits.
    fn list_heads(
        &self,
        request: HeadRequest,
    ) -> BoxFuture<'static, Result<RemoteHeads, HeadError>>;
}

type SharedListing = Shared<BoxFuture<'static, Result<Arc<RemoteHeads>, HeadError>>>;

/// Called with the duration and outcome of every real listing (not for cache hits).
pub type ListingObserver = Arc<dyn Fn(Duration, bool) + Send + Sync>;

/// Deduplicates head checks: one listing per (URL, credentials) within `ttl`, shared
/// by everyone who asks meanwhile, including while it is still running.
pub struct HeadCache {
    lister: Arc<dyn HeadLister>,
    ttl: Duration,
    observer: Option<ListingObserver>,
    entries: Mutex<HashMap<String, (Instant, SharedListing)>>,
}

impl std::fmt::Debug for HeadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl HeadCache {
    /// A cache over `lister` that keeps listings for `ttl`.
    pub fn new(lister: Arc<dyn HeadLister>, ttl: Duration) -> Self {
        Self {
            lister,
            ttl,
            observer: None,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Reports every real listing to `observer` (for metrics).
    pub fn with_observer(mut self, observer: ListingObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The heads of `request.url`, shared from a listing less than `ttl` old that
    /// started at or after `not_before`, or listed now. Scheduled checks pass the time
    /// their tick came due, so every CodeSource of that tick shares one listing; a spec
    /// change or manual trigger passes the current instant and always looks afresh.
    pub async fn heads(
        &self,
        request: HeadRequest,
        not_before: Instant,
    ) -> Result<Arc<RemoteHeads>, HeadError> {
        let listing = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            entries.retain(|_, (started, _)| now.duration_since(*started) < self.ttl);
            let key = request.key();
            match entries
                .get(&key)
                .filter(|(started, _)| *started >= not_before)
            {
                Some((_, listing)) => listing.clone(),
                None => {
                    let timeout = request.timeout;
                    let fut = self.lister.list_heads(request);
                    let observer = self.observer.clone();
                    let listing = async move {
                        let started = Instant::now();
                        let result = match tokio::time::timeout(timeout, fut).await {
                            Ok(r) => r.map(Arc::new),
                            Err(_) => Err(HeadError::Timeout(timeout.as_secs())),
                        };
                        if let Some(observe) = observer {
                            observe(started.elapsed(), result.is_ok());
                        }
                        result
                    }
                    .boxed()
                    .shared();
                    entries.insert(key, (now, listing.clone()));
                    listing
                }
            }
        };
        listing.await
    }
}

/// The wanted branches among `all`: included by a `branches` entry (exact name or glob)
/// and excluded by no `excludeBranches` glob. Globs follow git's wildmatch, where `*`
/// also matches `/` (the worker selects with the same rule). Values are revisions in
/// Flux's form, `<branch>@sha1:<commit>`.
pub fn wanted_heads(
    all: &RemoteHeads,
    branches: &[String],
    excludes: &[String],
) -> BTreeMap<String, String> {
    all.iter()
        .filter(|(name, _)| {
            branches.iter().any(|p| pattern_matches(p, name))
                && !excludes.iter().any(|p| pattern_matches(p, name))
        })
        .map(|(name, sha)| (name.clone(), revision(name, sha)))
        .collect()
}

/// `<branch>@sha1:<commit>`.
pub fn revision(branch: &str, commit: &str) -> String {
    format!("{branch}@sha1:{commit}")
}

fn pattern_matches(pattern: &str, branch: &str) -> bool {
    use gix::glob::wildmatch;
    pattern == branch || wildmatch(pattern.into(), branch.into(), wildmatch::Mode::empty())
}

/// `url` without user info (`https://user:token@host/x` → `https://host/x`), for
/// messages and logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if path.is_empty() && !rest.contains('/') {
            return format!("{scheme}://{host}");
        }
        return format!("{scheme}://{host}/{path}");
    }
    // scp-like `user@host:path`: the user is not a secret.
    url.to_string()
}

/// Lists heads with gitoxide: `connect` + `ref_map` against a scratch bare repository
/// that holds no objects, under protocol v2 where the server speaks it. Transports:
/// `git://`, `http(s)://` (reqwest with rustls/ring), `file://` and `ssh://` (the
/// `ssh` program, with the Secret's key and known_hosts written to a private temp dir).
pub struct GixHeadLister {
    scratch: PathBuf,
}

impl std::fmt::Debug for GixHeadLister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GixHeadLister")
            .field("scratch", &self.scratch)
            .finish()
    }
}

impl GixHeadLister {
    /// Creates the scratch repository under `dir` (a writable temp directory).
    pub fn new(dir: &Path) -> Result<Self, HeadError> {
        crate::tls::install_ring_provider();
        let scratch = dir.join("openvox-code-heads.git");
        if !scratch.join("HEAD").exists() {
            std::fs::create_dir_all(&scratch).map_err(|e| HeadError::Task(e.to_string()))?;
            gix::init_bare(&scratch).map_err(|e| HeadError::Task(e.to_string()))?;
        }
        Ok(Self { scratch })
    }
}

impl HeadLister for GixHeadLister {
    fn list_heads(
        &self,
        request: HeadRequest,
    ) -> BoxFuture<'static, Result<RemoteHeads, HeadError>> {
        let scratch = self.scratch.clone();
        async move {
            // A thread of its own rather than the blocking pool: a listing stuck past
            // its timeout (whatever the transport) must never hold up runtime shutdown.
            let (tx, rx) = futures::channel::oneshot::channel();
            std::thread::Builder::new()
                .name("head-check".into())
                .spawn(move || {
                    let _ = tx.send(list_heads_blocking(&scratch, &request));
                })
                .map_err(|e| HeadError::Task(e.to_string()))?;
            rx.await.map_err(|e| HeadError::Task(e.to_string()))?
        }
        .boxed()
    }
}

/// The error and its sources on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

fn list_heads_blocking(scratch: &Path, request: &HeadRequest) -> Result<RemoteHeads, HeadError> {
    use gix::protocol::transport::client::blocking_io::http;

    let url = redact_url(&request.url);
    let auth = &request.auth;
    // Error texts may echo the URL or a header; none of the secrets may pass.
    let secrets: Vec<String> = [&auth.password, &auth.bearer_token]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    let git_err = |e: &(dyn std::error::Error + 'static)| {
        let mut message = chain(e).replace(&request.url, &url);
        for secret in &secrets {
            message = message.replace(secret.as_str(), "<redacted>");
        }
        HeadError::Git {
            url: url.clone(),
            message,
        }
    };
    let timeout = request.timeout;

    // ssh: the key and known_hosts go to files only this process can read, removed
    // when `_ssh_dir` drops. Keep-alives end a session with a server gone silent.
    let mut overrides: Vec<String> = vec!["protocol.version=2".into(), "core.askpass=".into()];
    let _ssh_dir = match &auth.identity {
        Some(identity) => {
            let dir = private_temp_dir().map_err(|e| HeadError::Credentials(e.to_string()))?;
            let key = dir.path.join("identity");
            write_private(&key, identity).map_err(|e| HeadError::Credentials(e.to_string()))?;
            let mut command = format!(
                "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout={} \
                 -o ServerAliveInterval=5 -o ServerAliveCountMax=2",
                key.display(),
                timeout.as_secs().max(1)
            );
            if let Some(known) = &auth.known_hosts {
                let path = dir.path.join("known_hosts");
                write_private(&path, known).map_err(|e| HeadError::Credentials(e.to_string()))?;
                command.push_str(&format!(
                    " -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
                    path.display()
                ));
            }
            // ssh's own messages ("Host key verification failed.") go to a file so
            // the error can quote them, not to the controller's stderr.
            overrides.push(format!(
                "core.sshCommand={command} \"$@\" 2>>{}",
                dir.path.join("ssh.log").display()
            ));
            Some(dir)
        }
        None => None,
    };
    let repo = gix::open_opts(
        scratch,
        gix::open::Options::isolated()
            .config_overrides(overrides)
            .strict_config(false),
    )
    .map_err(|e| git_err(&e))?;

    let remote = repo
        .remote_at(request.url.as_str())
        .map_err(|e| git_err(&e))?
        .with_refspecs(
            Some("+refs/heads/*:refs/remotes/origin/*"),
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| git_err(&e))?;
    let remote_url = remote
        .url(gix::remote::Direction::Fetch)
        .cloned()
        .ok_or_else(|| HeadError::Git {
            url: url.clone(),
            message: "no URL".into(),
        })?;

    type Connection<'r, 'repo> = gix::remote::Connection<
        'r,
        'static,
        'repo,
        Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
    >;
    let connection: Connection<'_, '_> = match remote_url.scheme {
        // git://: our own socket, with read and write timeouts, so a server that goes
        // silent ends the listing instead of holding a thread forever.
        gix::url::Scheme::Git => {
            let host = remote_url.host().unwrap_or("localhost").to_string();
            let port = remote_url.port.unwrap_or(9418);
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .map_err(|e| git_err(&e))?
                .next()
                .ok_or_else(|| HeadError::Git {
                    url: url.clone(),
                    message: "no address".into(),
                })?;
            let stream =
                std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| git_err(&e))?;
            stream
                .set_read_timeout(Some(timeout))
                .map_err(|e| git_err(&e))?;
            stream
                .set_write_timeout(Some(timeout))
                .map_err(|e| git_err(&e))?;
            let write = stream.try_clone().map_err(|e| git_err(&e))?;
            let transport = gix::protocol::transport::client::git::blocking_io::Connection::new(
                stream,
                write,
                gix::protocol::transport::Protocol::V2,
                remote_url.path.clone(),
                Some((host, remote_url.port)),
                gix::protocol::transport::client::git::ConnectMode::Daemon,
                false,
            );
            remote.to_connection_with_transport(Box::new(transport))
        }
        _ => remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| git_err(&e))?,
    };
    // Credentials go out with the first request; a challenge after that means they
    // were refused, so the callback offers nothing (never helpers, never a prompt).
    let mut connection = connection.with_credentials(|_| Ok(None));

    if matches!(
        remote_url.scheme,
        gix::url::Scheme::Http | gix::url::Scheme::Https
    ) {
        let mut extra_headers = Vec::new();
        if let Some(token) = &auth.bearer_token {
            extra_headers.push(format!("Authorization: Bearer {token}"));
        } else if let (Some(user), Some(pass)) = (&auth.username, &auth.password) {
            let encoded = base64_encode(format!("{user}:{pass}").as_bytes());
            extra_headers.push(format!("Authorization: Basic {encoded}"));
        }
        let certs =
            match &auth.ca_crt {
                Some(ca) => Some(reqwest::Certificate::from_pem_bundle(ca).map_err(|e| {
                    HeadError::Credentials(format!("ca.crt is not a PEM bundle: {e}"))
                })?),
                None => None,
            };
        let backend = http::reqwest::Options {
            configure_client: Some(Box::new(
                move |builder: reqwest::blocking::ClientBuilder| {
                    let mut builder = builder.timeout(timeout).connect_timeout(timeout);
                    if let Some(certs) = &certs {
                        builder = builder.tls_certs_merge(certs.clone());
                    }
                    Ok(builder)
                },
            )),
            configure_request: None,
        };
        let options = http::Options {
            extra_headers,
            connect_timeout: Some(timeout),
            backend: Some(Arc::new(Mutex::new(backend))),
            ..Default::default()
        };
        connection = connection.with_transport_options(Box::new(options));
    }

    let (ref_map, _handshake) = connection
        .ref_map(gix::progress::Discard, Default::default())
        .map_err(|e| match (git_err(&e), &_ssh_dir) {
            (HeadError::Git { url, message }, Some(dir)) => {
                let said = std::fs::read_to_string(dir.path.join("ssh.log")).unwrap_or_default();
                let said: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
                let tail = said[said.len().saturating_sub(3)..].join(" ");
                let message = if tail.is_empty() {
                    message
                } else {
                    format!("{message} (ssh: {tail})")
                };
                HeadError::Git { url, message }
            }
            (other, _) => other,
        })?;
    let mut heads = RemoteHeads::new();
    for r in &ref_map.remote_refs {
        let (name, target, peeled) = r.unpack();
        let Some(branch) = name.strip_prefix(b"refs/heads/") else {
            continue;
        };
        let Some(commit) = peeled.or(target) else {
            continue;
        };
        heads.insert(
            String::from_utf8_lossy(branch).into_owned(),
            commit.to_string(),
        );
    }
    Ok(heads)
}

/// Standard base64 with padding (for a Basic authorization header).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct PrivateDir {
    path: PathBuf,
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn private_temp_dir() -> std::io::Result<PrivateDir> {
    use std::os::unix::fs::DirBuilderExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("openvox-code-ssh-{}-{n}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&path)?;
    Ok(PrivateDir { path })
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)?;
    // ssh refuses a key without a final newline.
    if !content.ends_with(b"\n") {
        file.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts calls and answers after a short delay, so overlapping requests overlap.
    struct CountingLister {
        calls: AtomicUsize,
        heads: RemoteHeads,
    }

    impl HeadLister for Arc<CountingLister> {
        fn list_heads(
            &self,
            _request: HeadRequest,
        ) -> BoxFuture<'static, Result<RemoteHeads, HeadError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let heads = self.heads.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(heads)
            }
            .boxed()
        }
    }

    fn heads(pairs: &[(&str, &str)]) -> RemoteHeads {
        pairs
            .iter()
            .map(|(b, c)| (b.to_string(), c.to_string()))
            .collect()
    }

    fn request(url: &str, password: Option<&str>) -> HeadRequest {
        HeadRequest {
            url: url.into(),
            auth: GitAuth {
                password: password.map(Into::into),
                ..Default::default()
            },
            timeout: Duration::from_secs(5),
        }
    }

    fn counting() -> Arc<CountingLister> {
        Arc::new(CountingLister {
            calls: AtomicUsize::new(0),
            heads: heads(&[("main", "aa")]),
        })
    }

    #[tokio::test]
    async fn given_many_codesources_on_one_repository_heads_are_listed_once() {
        let lister = counting();
        let cache = HeadCache::new(Arc::new(lister.clone()), Duration::from_secs(30));
        let start = Instant::now();
        let results = futures::future::join_all(
            (0..10).map(|_| cache.heads(request("https://git.example/r.git", Some("p")), start)),
        )
        .await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().unwrap().get("main").unwrap() == "aa")
        );
        assert_eq!(lister.calls.load(Ordering::SeqCst), 1);
        // Still within the TTL and the same tick: no new listing.
        cache
            .heads(request("https://git.example/r.git", Some("p")), start)
            .await
            .unwrap();
        assert_eq!(lister.calls.load(Ordering::SeqCst), 1);
        // A spec change wants heads from after now: a new listing.
        cache
            .heads(
                request("https://git.example/r.git", Some("p")),
                Instant::now(),
            )
            .await
            .unwrap();
        assert_eq!(lister.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn given_other_credentials_the_repository_is_listed_again() {
        let lister = counting();
        let cache = HeadCache::new(Arc::new(lister.clone()), Duration::from_secs(30));
        let start = Instant::now();
        cache
            .heads(request("https://git.example/r.git", Some("p")), start)
            .await
            .unwrap();
        cache
            .heads(request("https://git.example/r.git", Some("q")), start)
            .await
            .unwrap();
        cache
            .heads(request("https://git.example/other.git", Some("p")), start)
            .await
            .unwrap();
        assert_eq!(lister.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn given_an_expired_entry_the_repository_is_listed_again() {
        let lister = counting();
        let cache = HeadCache::new(Arc::new(lister.clone()), Duration::from_millis(30));
        let start = Instant::now();
        cache
            .heads(request("https://git.example/r.git", None), start)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        cache
            .heads(request("https://git.example/r.git", None), start)
            .await
            .unwrap();
        assert_eq!(lister.calls.load(Ordering::SeqCst), 2);
    }

    struct SlowLister;
    impl HeadLister for SlowLister {
        fn list_heads(
            &self,
            _request: HeadRequest,
        ) -> BoxFuture<'static, Result<RemoteHeads, HeadError>> {
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(RemoteHeads::new())
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn a_listing_that_takes_too_long_times_out() {
        let cache = HeadCache::new(Arc::new(SlowLister), Duration::from_secs(30));
        let mut req = request("git://slow/r.git", None);
        req.timeout = Duration::from_millis(20);
        assert_eq!(
            cache.heads(req, Instant::now()).await.unwrap_err(),
            HeadError::Timeout(0)
        );
    }

    #[test]
    fn wanted_heads_follow_includes_globs_and_excludes() {
        let all = heads(&[
            ("production", "1"),
            ("staging", "2"),
            ("feature_a", "3"),
            ("feature/b", "4"),
            ("feature_wip", "5"),
            ("other", "6"),
        ]);
        let wanted = wanted_heads(
            &all,
            &["production".into(), "staging".into(), "feature*".into()],
            &["*_wip".into()],
        );
        let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
        assert_eq!(names, ["feature/b", "feature_a", "production", "staging"]);
        assert_eq!(wanted["production"], "production@sha1:1");
    }

    #[test]
    fn fingerprints_differ_by_any_value_and_hide_them() {
        let a = GitAuth {
            password: Some("secret".into()),
            ..Default::default()
        };
        let b = GitAuth {
            password: Some("secret2".into()),
            ..Default::default()
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert!(!a.fingerprint().contains("secret"));
        assert!(!format!("{a:?}").contains("secret"));
    }

    #[test]
    fn secret_data_is_read_by_key() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("username".to_string(), b"bot\n".to_vec()),
            ("password".to_string(), b"pw".to_vec()),
            ("unrelated".to_string(), b"x".to_vec()),
        ]
        .into();
        let auth = GitAuth::from_secret_data(&data);
        assert_eq!(auth.username.as_deref(), Some("bot"));
        assert_eq!(auth.password.as_deref(), Some("pw"));
        assert_eq!(auth.bearer_token, None);
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn urls_lose_their_user_info() {
        let cases = [
            (
                "https://user:token@git.example/a/b.git",
                "https://git.example/a/b.git",
            ),
            ("https://git.example/a.git", "https://git.example/a.git"),
            ("ssh://git@host:22/r.git", "ssh://host:22/r.git"),
            ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
            ("http://u:p@host", "http://host"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want);
        }
    }
}
