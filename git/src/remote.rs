//! Connecting to a remote with the right credentials, and listing its refs without
//! fetching any object (the `git ls-remote` equivalent, through gix's
//! `Connection::ref_map`). [`list_heads`] is what the controller needs to decide
//! whether anything changed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix::protocol::transport::client::blocking_io::Transport as GixTransport;
use gix::protocol::transport::client::blocking_io::http;

use super::credentials::{Credentials, HttpAuth, basic_auth_token};
use super::url::{RepoUrl, Transport, redact};
use super::{GitError, error_chain, install_tls_provider, run_with_deadline};

/// A ref on a remote: its full name and the object it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// Full name, such as `refs/heads/main` or `refs/tags/v1.0.0`.
    pub name: String,
    /// The object the ref points to (a tag object for annotated tags).
    pub target: gix::ObjectId,
    /// The commit an annotated tag points to, when the server said so.
    pub peeled: Option<gix::ObjectId>,
}

impl RemoteRef {
    /// The commit this ref designates: the peeled object for annotated tags.
    pub fn commit(&self) -> gix::ObjectId {
        self.peeled.unwrap_or(self.target)
    }
}

/// A branch head: short branch name and commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Head {
    pub branch: String,
    pub commit: gix::ObjectId,
}

/// The branch heads of `url` (`refs/heads/*`, sorted by branch name), listed with
/// `credentials` within `timeout`; no object is fetched. Scratch files (the ssh key,
/// an empty repository) live below `temp_root` for the duration of the listing.
pub fn list_heads(
    url: &str,
    credentials: Credentials,
    timeout: Duration,
    temp_root: &Path,
) -> Result<Vec<Head>, GitError> {
    let origin = RepoUrl::parse(url)?;
    GitAccess::new_in(credentials, origin, timeout, temp_root)?
        .origin()?
        .list_heads()
}

/// The refs of `url` under `prefixes` (such as `refs/heads/` and `refs/tags/`) and its
/// `HEAD` (see [`Remote::list_refs`]), listed within `timeout` with the credentials
/// that apply to `url` when `credentials` belong to the repository `origin` (https
/// credentials only for its host, as in a build's module fetches). No object is
/// fetched.
pub fn list_refs(
    url: &str,
    origin: &str,
    credentials: Credentials,
    timeout: Duration,
    temp_root: &Path,
    prefixes: &[&str],
) -> Result<Vec<RemoteRef>, GitError> {
    let origin = RepoUrl::parse(origin)?;
    GitAccess::new_in(credentials, origin, timeout, temp_root)?
        .remote(url)?
        .list_refs(prefixes)
}

/// The ssh key and known_hosts written to files `ssh` can read, and the command line
/// that uses them. The files live as long as the value.
#[derive(Debug)]
struct SshFiles {
    _dir: tempfile::TempDir,
    command: String,
}

impl SshFiles {
    fn write(
        auth: Option<&super::SshAuth>,
        timeout: Duration,
        temp_root: &Path,
    ) -> Result<Self, GitError> {
        use std::os::unix::fs::PermissionsExt;
        let setup = |e: std::io::Error| GitError::SshSetup(e.to_string());
        let dir = tempfile::Builder::new()
            .prefix("openvox-code-ssh-")
            .tempdir_in(temp_root)
            .map_err(setup)?;
        let known_hosts = dir.path().join("known_hosts");
        let content = auth.map(|a| a.known_hosts.as_str()).unwrap_or("");
        std::fs::write(&known_hosts, content).map_err(setup)?;
        let mut command = format!(
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} \
             -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout={} -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
            shell_quote(&known_hosts),
            timeout.as_secs().max(1)
        );
        if let Some(auth) = auth.filter(|a| !a.identity.expose().is_empty()) {
            let identity = dir.path().join("identity");
            let mut options = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(options.write(true).create_new(true), 0o600);
            let mut file = options.open(&identity).map_err(setup)?;
            std::io::Write::write_all(&mut file, auth.identity.expose().as_bytes())
                .map_err(setup)?;
            std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600))
                .map_err(setup)?;
            command.push_str(&format!(
                " -o IdentitiesOnly=yes -o IdentityAgent=none -i {}",
                shell_quote(&identity)
            ));
        }
        Ok(Self { _dir: dir, command })
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Credentials and settings shared by every remote of one build: the control repository
/// and the git modules of its Puppetfiles.
#[derive(Debug, Clone)]
pub struct GitAccess {
    credentials: Arc<Credentials>,
    origin: RepoUrl,
    /// Written when the first ssh remote needs them, then shared.
    ssh: Arc<Mutex<Option<Arc<SshFiles>>>>,
    timeout: Duration,
    allow_full_history: bool,
    temp_root: std::path::PathBuf,
}

impl GitAccess {
    /// `origin` is the control repository: https credentials are sent only to its scheme,
    /// host and port. The ssh key is offered to every ssh remote (public-key
    /// authentication does not reveal the key), always with strict host key checking.
    pub fn new(
        credentials: Credentials,
        origin: RepoUrl,
        timeout: Duration,
    ) -> Result<Self, GitError> {
        Self::new_in(credentials, origin, timeout, &std::env::temp_dir())
    }

    /// Like [`GitAccess::new`], with every temporary file (ssh key, scratch repositories)
    /// below `temp_root`. A caller that removes `temp_root` when it is done also removes
    /// what an operation abandoned at its deadline left behind.
    pub fn new_in(
        credentials: Credentials,
        origin: RepoUrl,
        timeout: Duration,
        temp_root: &Path,
    ) -> Result<Self, GitError> {
        Ok(Self {
            credentials: Arc::new(credentials),
            origin,
            ssh: Arc::new(Mutex::new(None)),
            timeout,
            allow_full_history: false,
            temp_root: temp_root.to_owned(),
        })
    }

    /// Accept a fetch that brought full history instead of depth 1 (a server that does
    /// not speak protocol v2 on that transport) with a warning, instead of failing.
    pub fn with_full_history_allowed(mut self, allowed: bool) -> Self {
        self.allow_full_history = allowed;
        self
    }

    /// The ssh key and known_hosts files, written on first use. Without ssh credentials,
    /// known_hosts is empty and strict checking refuses every host with ssh's message.
    fn ssh_files(&self) -> Result<Arc<SshFiles>, GitError> {
        let mut slot = match self.ssh.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(files) = slot.as_ref() {
            return Ok(files.clone());
        }
        let files = Arc::new(SshFiles::write(
            self.credentials.ssh.as_ref(),
            self.timeout,
            &self.temp_root,
        )?);
        *slot = Some(files.clone());
        Ok(files)
    }

    /// The remote at `url` with the credentials that may be used for it.
    pub fn remote(&self, url: &str) -> Result<Remote, GitError> {
        let url = RepoUrl::parse(url)?;
        let http = match url.transport() {
            Transport::Https | Transport::Http if url.same_origin(&self.origin) => {
                self.credentials.http.clone()
            }
            _ => None,
        };
        let ssh = match url.transport() {
            Transport::Ssh => Some(self.ssh_files()?),
            _ => None,
        };
        let secrets = self.credentials.secret_values();
        Ok(Remote {
            url,
            http,
            ca_pem: self.credentials.ca_pem.clone().map(Arc::new),
            ssh,
            timeout: self.timeout,
            allow_full_history: self.allow_full_history,
            temp_root: self.temp_root.clone(),
            ssh_log: None,
            secrets: Arc::new(secrets),
        })
    }

    /// The control repository.
    pub fn origin(&self) -> Result<Remote, GitError> {
        self.remote(self.origin.as_str())
    }

    /// Time limit of one operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Secret values to redact from any text.
    pub fn secret_values(&self) -> Vec<String> {
        self.credentials.secret_values()
    }
}

/// One remote repository with the credentials that apply to it.
#[derive(Debug, Clone)]
pub struct Remote {
    url: RepoUrl,
    http: Option<HttpAuth>,
    ca_pem: Option<Arc<Vec<u8>>>,
    ssh: Option<Arc<SshFiles>>,
    timeout: Duration,
    allow_full_history: bool,
    temp_root: std::path::PathBuf,
    /// Where ssh writes its messages during one operation (set on the operation's copy).
    ssh_log: Option<std::path::PathBuf>,
    secrets: Arc<Vec<String>>,
}

type Connection<'remote, 'repo> =
    gix::remote::Connection<'remote, 'static, 'repo, Box<dyn GixTransport + Send>>;

impl Remote {
    /// An anonymous remote (no secret), for a controller or a quick check.
    pub fn anonymous(url: &str, timeout: Duration) -> Result<Self, GitError> {
        let parsed = RepoUrl::parse(url)?;
        GitAccess::new(Credentials::none(), parsed, timeout)?.origin()
    }

    /// The URL, masked, for messages.
    pub fn display_url(&self) -> String {
        self.url.to_string()
    }

    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn temp_root(&self) -> &Path {
        &self.temp_root
    }

    /// Whether a non-shallow answer to a shallow fetch is only a warning.
    pub fn allows_full_history(&self) -> bool {
        self.allow_full_history
    }

    /// Lists the branch heads (`refs/heads/*`), sorted by branch name. No object is fetched.
    pub fn list_heads(&self) -> Result<Vec<Head>, GitError> {
        let mut heads: Vec<Head> = self
            .list_refs(&["refs/heads/"])?
            .into_iter()
            .filter_map(|r| {
                r.name.strip_prefix("refs/heads/").map(|branch| Head {
                    branch: branch.to_owned(),
                    commit: r.target,
                })
            })
            .collect();
        heads.sort();
        Ok(heads)
    }

    /// Lists the refs whose names start with one of `prefixes` (each ending in `/`, such
    /// as `refs/heads/` or `refs/tags/`), and `HEAD` when the remote has one (an unborn
    /// or dangling `HEAD` is left out). No object is fetched.
    ///
    /// `HEAD` is the remote's default branch, which a module that names no ref follows.
    /// It is always listed, so every caller (the worker resolving modules, the controller
    /// checking them) sees the same refs; with protocol v2 that is one more `ref-prefix`
    /// line, and protocol v1 servers advertise it anyway.
    pub fn list_refs(&self, prefixes: &[&str]) -> Result<Vec<RemoteRef>, GitError> {
        let mut this = self.clone();
        let mut specs: Vec<String> = prefixes.iter().map(|p| format!("+{p}*:{p}*")).collect();
        // A refspec without a destination: asks the server for `HEAD`, maps it nowhere.
        specs.push(REMOTE_HEAD.to_owned());
        let url = self.display_url();
        let dir = ScratchDir::new(&self.temp_root)?;
        let thread_dir = dir.clone();
        let result = run_with_deadline(self.timeout, "list refs of", &url, move |_interrupt| {
            let scratch = this.scratch_repo("list refs of", &thread_dir)?;
            let repo = scratch.repo.to_thread_local();
            let remote = repo
                .remote_at(this.url.as_str())
                .and_then(|r| {
                    r.with_refspecs(
                        specs.iter().map(String::as_str),
                        gix::remote::Direction::Fetch,
                    )
                })
                .map(|r| r.with_fetch_tags(gix::remote::fetch::Tags::None))
                .map_err(|e| this.failure("list refs of", &e))?;
            let connection = this.connect(&remote, "list refs of")?;
            let (ref_map, _handshake) = connection
                .ref_map(gix::progress::Discard, Default::default())
                .map_err(|e| this.failure("list refs of", &e))?;
            let mut refs = Vec::new();
            for r in &ref_map.remote_refs {
                let (name, target, peeled) = r.unpack();
                let name = name.to_string();
                let Some(target) = target else { continue };
                if name != REMOTE_HEAD && !prefixes_match(&name, &specs) {
                    continue;
                }
                refs.push(RemoteRef {
                    name,
                    target: target.to_owned(),
                    peeled: peeled
                        .map(ToOwned::to_owned)
                        .filter(|p| p.as_ref() != target),
                });
            }
            refs.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(refs)
        });
        dir.remove_if_abandoned(&result);
        result
    }

    /// Options to open or create a local repository used with this remote: isolated
    /// from the environment and global git configuration, protocol v2, and our ssh
    /// command.
    pub(crate) fn open_options(&self) -> gix::open::Options {
        let mut overrides = vec![
            "protocol.version=2".to_owned(),
            format!(
                "gitoxide.userAgent=openvox-code/{}",
                env!("CARGO_PKG_VERSION")
            ),
            "core.askpass=".to_owned(),
        ];
        if let Some(ssh) = &self.ssh {
            // ssh's own messages ("Host key verification failed.") go to a file of this
            // operation, so errors can quote them; gix passes its arguments as "$@".
            match &self.ssh_log {
                Some(log) => overrides.push(format!(
                    "core.sshCommand={} \"$@\" 2>>{}",
                    ssh.command,
                    shell_quote(log)
                )),
                None => overrides.push(format!("core.sshCommand={}", ssh.command)),
            }
        }
        gix::open::Options::isolated()
            .config_overrides(overrides)
            .strict_config(false)
    }

    /// A new empty bare repository in a temporary directory, configured for this remote.
    /// For ssh, this remote (an operation's own copy) then keeps ssh's messages in it.
    pub(crate) fn scratch_repo(
        &mut self,
        operation: &'static str,
        dir: &ScratchDir,
    ) -> Result<ScratchRepo, GitError> {
        if self.ssh.is_some() {
            self.ssh_log = Some(dir.path().join("ssh-messages.log"));
        }
        let repo = gix::ThreadSafeRepository::init_opts(
            dir.path(),
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            self.open_options(),
        )
        .map_err(|e| {
            GitError::Local(format!(
                "{operation} {}: cannot create a repository: {}",
                self.display_url(),
                error_chain(&e)
            ))
        })?;
        Ok(ScratchRepo {
            dir: dir.clone(),
            repo,
        })
    }

    /// Connects `remote` with this remote's credentials and transport settings.
    pub(crate) fn connect<'remote, 'repo>(
        &self,
        remote: &'remote gix::Remote<'repo>,
        operation: &'static str,
    ) -> Result<Connection<'remote, 'repo>, GitError> {
        install_tls_provider();
        let connection = match self.url.transport() {
            Transport::Git => {
                remote.to_connection_with_transport(self.git_daemon_transport(remote, operation)?)
            }
            _ => remote
                .connect(gix::remote::Direction::Fetch)
                .map_err(|e| self.failure(operation, &e))?,
        };
        // Credentials go out with the first request (see `http_options`); a challenge
        // after that means they were refused, so the callback never offers more (and
        // never falls back to credential helpers or prompts).
        let mut connection = connection.with_credentials(|_| Ok(None));
        if matches!(self.url.transport(), Transport::Https | Transport::Http) {
            connection = connection.with_transport_options(Box::new(self.http_options()));
        }
        Ok(connection)
    }

    /// git://: our own socket with read and write timeouts, so a server that goes silent
    /// ends the operation's thread too, not only the caller's wait (a long-running
    /// controller must not collect stuck threads).
    fn git_daemon_transport(
        &self,
        remote: &gix::Remote<'_>,
        operation: &'static str,
    ) -> Result<Box<dyn GixTransport + Send>, GitError> {
        let fail = |message: String| GitError::Remote {
            operation,
            url: self.display_url(),
            message: self.redact(&message),
        };
        let url = remote
            .url(gix::remote::Direction::Fetch)
            .ok_or_else(|| fail("no URL".to_owned()))?;
        let host = url.host().unwrap_or("localhost").to_owned();
        let port = url.port.unwrap_or(9418);
        let timeout = self.timeout;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| fail(error_chain(&e)))?
            .next()
            .ok_or_else(|| fail(format!("{host}: no address")))?;
        let stream = std::net::TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| fail(error_chain(&e)))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| fail(error_chain(&e)))?;
        let write = stream.try_clone().map_err(|e| fail(error_chain(&e)))?;
        Ok(Box::new(
            gix::protocol::transport::client::git::blocking_io::Connection::new(
                stream,
                write,
                gix::protocol::transport::Protocol::V2,
                url.path.clone(),
                Some((host, url.port)),
                gix::protocol::transport::client::git::ConnectMode::Daemon,
                false,
            ),
        ))
    }

    fn http_options(&self) -> http::Options {
        let mut extra_headers = Vec::new();
        match &self.http {
            Some(HttpAuth::Bearer(token)) => {
                extra_headers.push(format!("Authorization: Bearer {}", token.expose()))
            }
            Some(HttpAuth::Basic { username, password }) => extra_headers.push(format!(
                "Authorization: Basic {}",
                basic_auth_token(username, password)
            )),
            None => {}
        }
        if self.http.is_some() && self.url.transport() == Transport::Http {
            static WARNED: std::sync::Once = std::sync::Once::new();
            let url = self.display_url();
            WARNED.call_once(|| tracing::warn!("credentials are sent over plain http to {url}; use https outside trusted networks"));
        }
        let timeout = self.timeout;
        let ca_pem = self.ca_pem.clone();
        let backend = http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                let mut builder = builder
                    .timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(30)));
                if let Some(pem) = &ca_pem {
                    let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                        gix::Error::from_error(std::io::Error::other(format!("ca.crt: {e}")))
                    })?;
                    builder = builder.tls_certs_merge(certificates);
                }
                Ok(builder)
            })),
            configure_request: None,
        };
        http::Options {
            extra_headers,
            user_agent: Some(format!("openvox-code/{}", env!("CARGO_PKG_VERSION"))),
            connect_timeout: Some(timeout.min(Duration::from_secs(30))),
            backend: Some(Arc::new(Mutex::new(backend))),
            ..Default::default()
        }
    }

    /// Turns a gix error into a masked, redacted [`GitError`], telling authentication
    /// problems apart.
    pub(crate) fn failure(&self, operation: &'static str, error: &gix::Error) -> GitError {
        let mut message = self.redact(&error_chain(error));
        if let Some(ssh) = self.ssh_messages() {
            message = format!("{message} (ssh: {ssh})");
        }
        let auth_class = matches!(
            error.dominant_class(),
            Some(gix::error::Class::Unauthenticated) | Some(gix::error::Class::PermissionDenied)
        );
        let lowered = message.to_ascii_lowercase();
        let auth_text = [
            "401",
            "403",
            "permission denied",
            "authentication",
            "unauthorized",
            "host key verification failed",
        ]
        .iter()
        .any(|needle| lowered.contains(needle));
        if auth_class || auth_text {
            let message = if message.contains("No credentials were returned") {
                if self.http.is_some() {
                    "the server refused the credentials (HTTP 401)".to_owned()
                } else {
                    "the server asks for credentials (HTTP 401) and none are configured".to_owned()
                }
            } else {
                message
            };
            GitError::Auth {
                operation,
                url: self.display_url(),
                message,
            }
        } else {
            GitError::Remote {
                operation,
                url: self.display_url(),
                message,
            }
        }
    }

    /// The last lines ssh printed during this operation, if any.
    fn ssh_messages(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.ssh_log.as_ref()?).ok()?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let tail = &lines[lines.len().saturating_sub(3)..];
        (!tail.is_empty()).then(|| self.redact(&tail.join(" ")))
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        redact(text, &secrets)
    }
}

/// A bare repository in a temporary directory, removed when dropped.
#[derive(Debug)]
pub(crate) struct ScratchRepo {
    pub(crate) dir: ScratchDir,
    pub(crate) repo: gix::ThreadSafeRepository,
}

/// A temporary directory shared by an operation's thread and its caller. It is removed
/// when the last holder drops it, or at once when the caller gives up on the operation
/// at its deadline (the thread may be stuck in a read for much longer).
#[derive(Debug, Clone)]
pub(crate) struct ScratchDir {
    path: std::path::PathBuf,
    slot: Arc<Mutex<Option<tempfile::TempDir>>>,
}

impl ScratchDir {
    pub(crate) fn new(root: &Path) -> Result<Self, GitError> {
        let dir = tempfile::Builder::new()
            .prefix("openvox-code-git-")
            .tempdir_in(root)
            .map_err(|e| GitError::Local(format!("cannot create a temporary directory: {e}")))?;
        Ok(Self {
            path: dir.path().to_owned(),
            slot: Arc::new(Mutex::new(Some(dir))),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now if `result` says the operation was abandoned.
    pub(crate) fn remove_if_abandoned<T>(&self, result: &Result<T, GitError>) {
        if matches!(result, Err(GitError::Timeout { .. })) {
            let taken = match self.slot.lock() {
                Ok(mut guard) => guard.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            drop(taken);
        }
    }
}

/// The remote's symbolic ref to its default branch.
pub const REMOTE_HEAD: &str = "HEAD";

/// Whether `name` lies under one of the glob `specs` (`+<prefix>*:<prefix>*`).
fn prefixes_match(name: &str, specs: &[String]) -> bool {
    specs.iter().filter(|spec| spec.contains('*')).any(|spec| {
        let prefix = spec
            .trim_start_matches('+')
            .split('*')
            .next()
            .unwrap_or_default();
        name.starts_with(prefix)
    })
}
