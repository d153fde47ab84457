//! The head check: which commit each branch of the remote points at, from one ref
//! advertisement (like `git ls-remote --heads`; no objects are fetched).
//!
//! Identical repositories are listed once per tick however many CodeSources share them:
//! [`HeadCache`] keys requests by URL and a fingerprint of the credentials, shares a
//! listing that is in flight and keeps a finished one for a short time (less than the
//! shortest schedule interval). The listing itself sits behind [`HeadLister`] so unit
//! tests can stand in for the network; [`GixHeadLister`] is the real one, over
//! [`openvox_git::list_heads`] (the worker's transports, credential rules and masking).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use jiff::Timestamp;
use openvox_git::{Credentials, HttpAuth};
use sha2::{Digest as _, Sha256};

use super::shared::SharedLookups;

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

/// A hash of all values of `credentials`: equal credentials give equal
/// fingerprints, and the fingerprint reveals nothing about them. The key under which
/// listings are shared between CodeSources.
pub fn fingerprint(credentials: &Credentials) -> String {
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
    let (username, password, bearer) = match &credentials.http {
        Some(HttpAuth::Basic { username, password }) => {
            (Some(username.as_str()), Some(password.expose()), None)
        }
        Some(HttpAuth::Bearer(token)) => (None, None, Some(token.expose())),
        None => (None, None, None),
    };
    field("username", username.map(str::as_bytes));
    field("password", password.map(str::as_bytes));
    field("bearerToken", bearer.map(str::as_bytes));
    let ssh = credentials.ssh.as_ref();
    field("identity", ssh.map(|s| s.identity.expose().as_bytes()));
    field("known_hosts", ssh.map(|s| s.known_hosts.as_bytes()));
    field("ca.crt", credentials.ca_pem.as_deref());
    hex::encode(hasher.finalize())
}

/// One head check to make.
#[derive(Clone, Debug)]
pub struct HeadRequest {
    /// Repository URL as in the spec (or the Puppetfile).
    pub url: String,
    /// Credentials, possibly empty.
    pub auth: Credentials,
    /// Time limit of the whole listing.
    pub timeout: Duration,
    /// `None`: `url` is a control repository, whose branches are listed (by short
    /// name). `Some(control)`: `url` is a module repository of a Puppetfile in the
    /// control repository `control`; its branches and tags are listed by full ref name
    /// (`refs/heads/main`, `refs/tags/v1`, annotated tags peeled), with the credentials
    /// that apply to it as in the worker's module fetches: https ones only on the
    /// control repository's host. A control repository whose tags are wanted too (a
    /// CodeConfig's static environments) is listed this way as its own module
    /// (`control` = `url`), so all of its credentials apply.
    pub module_of: Option<String>,
}

impl HeadRequest {
    /// The deduplication key: URL, what is listed, and a fingerprint of the
    /// credentials that apply.
    pub fn key(&self) -> String {
        match &self.module_of {
            None => format!("{}#{}", self.url, fingerprint(&self.auth)),
            Some(control) => format!(
                "{}#module#{}",
                self.url,
                fingerprint(&module_credentials(&self.url, control, &self.auth))
            ),
        }
    }
}

/// The part of `auth` (a control repository's Secret) that applies to the module
/// repository `url`: all of it over ssh and on the control repository's https host,
/// else only the extra CA. Two CodeSources with different Secrets share the listing
/// of a public module repository.
pub fn module_credentials(url: &str, control: &str, auth: &Credentials) -> Credentials {
    use openvox_git::{RepoUrl, Transport};
    let applies = match (RepoUrl::parse(url), RepoUrl::parse(control)) {
        (Ok(module), Ok(control)) => match module.transport() {
            Transport::Ssh => true,
            Transport::Https | Transport::Http => module.same_origin(&control),
            Transport::Git | Transport::File => false,
        },
        _ => true,
    };
    if applies {
        auth.clone()
    } else {
        Credentials {
            ca_pem: auth.ca_pem.clone(),
            ..Credentials::none()
        }
    }
}

/// Lists the branches of a remote.
pub trait HeadLister: Send + Sync + 'static {
    /// All `refs/heads/*` of the remote with their commits (for a module repository
    /// also `refs/tags/*`, by full name; see [`HeadRequest::module_of`]).
    fn list_heads(
        &self,
        request: HeadRequest,
    ) -> BoxFuture<'static, Result<RemoteHeads, HeadError>>;
}

/// Called with the duration and outcome of every real listing (not for cache hits).
pub type ListingObserver = Arc<dyn Fn(Duration, bool) + Send + Sync>;

/// Deduplicates head checks: one listing per (URL, credentials) within `ttl`, shared
/// by everyone who asks meanwhile, including while it is still running.
pub struct HeadCache {
    lister: Arc<dyn HeadLister>,
    observer: Option<ListingObserver>,
    listings: SharedLookups<RemoteHeads, HeadError>,
}

impl std::fmt::Debug for HeadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadCache")
            .field("listings", &self.listings)
            .finish_non_exhaustive()
    }
}

impl HeadCache {
    /// A cache over `lister` that keeps listings for `ttl`.
    pub fn new(lister: Arc<dyn HeadLister>, ttl: Duration) -> Self {
        Self {
            lister,
            observer: None,
            listings: SharedLookups::new(ttl),
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
        let key = request.key();
        let (lister, observer) = (self.lister.clone(), self.observer.clone());
        self.listings
            .get(key, not_before, move || {
                let timeout = request.timeout;
                let fut = lister.list_heads(request);
                async move {
                    let started = Instant::now();
                    let result = match tokio::time::timeout(timeout, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(HeadError::Timeout(timeout.as_secs())),
                    };
                    if let Some(observe) = observer {
                        observe(started.elapsed(), result.is_ok());
                    }
                    result
                }
                .boxed()
            })
            .await
    }
}

/// The monotonic instant of the wall-clock time `at`, given that `now` (wall clock) was
/// read at `now_instant`. Both clocks must be read together: an instant read later
/// than `now` (after an API call, say) moves `at` forward by the time in between, and
/// CodeSources reconciled a little after their tick stop sharing the tick's listing.
/// A time in the future maps to `now_instant`.
pub fn instant_of(at: Timestamp, now: Timestamp, now_instant: Instant) -> Instant {
    let ago = Duration::try_from(now.duration_since(at)).unwrap_or_default();
    now_instant.checked_sub(ago).unwrap_or(now_instant)
}

/// Since when a head listing is recent enough to be shared with a check (`None`: only
/// a listing started now will do), given why the check runs:
/// - a manual trigger, webhook, retry after a failed check, or a spec change of a
///   CodeSource already reconciled (`fresh_wanted`) wants the heads as of now;
/// - a CodeSource never reconciled before may share any listing started since it was
///   `created`: it did not exist before, so such a listing is as new to it as one made
///   now, and many CodeSources applied at once (an install, a restore) then list each
///   repository once instead of once each;
/// - otherwise a scheduled tick shares every listing since the tick came `due`.
pub fn shared_listing_since(
    fresh_wanted: bool,
    never_reconciled: bool,
    created: Option<Timestamp>,
    due: Option<Timestamp>,
) -> Option<Timestamp> {
    if fresh_wanted {
        None
    } else if never_reconciled {
        created
    } else {
        due
    }
}

/// The wanted branches among `all`: included by a `branches` entry (exact name or glob)
/// and excluded by no `excludeBranches` glob, by [`openvox_git::glob`], the rule the
/// worker selects with. Values are revisions in Flux's form, `<branch>@sha1:<commit>`.
pub fn wanted_heads(
    all: &RemoteHeads,
    branches: &[String],
    excludes: &[String],
) -> BTreeMap<String, String> {
    all.iter()
        .filter(|(name, _)| openvox_git::branch_selected(name, branches, excludes))
        .map(|(name, sha)| (name.clone(), revision(name, sha)))
        .collect()
}

/// `<branch>@sha1:<commit>`.
pub fn revision(branch: &str, commit: &str) -> String {
    format!("{branch}@sha1:{commit}")
}

/// `url` without user info (`https://user:token@host/x` → `https://host/x`), for
/// messages and logs.
pub use openvox_git::strip_user_info as redact_url;

/// Lists heads with [`openvox_git::list_heads`]: `connect` + `ref_map` against a scratch
/// bare repository that holds no objects, under protocol v2 where the server speaks it.
/// Transports: `git://`, `http(s)://` (reqwest with rustls/ring), `file://` and `ssh://`
/// (the `ssh` program, with the Secret's key and known_hosts written to a private temp
/// dir below the scratch directory, removed after the listing).
pub struct GixHeadLister {
    scratch: PathBuf,
    /// Listings running at once: each holds a thread and a connection, and a tick of
    /// many repositories (control and module ones) must not start them all together.
    running: Arc<tokio::sync::Semaphore>,
}

/// Listings running at once (see [`GixHeadLister`]).
const CONCURRENT_LISTINGS: usize = 32;

impl std::fmt::Debug for GixHeadLister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GixHeadLister")
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

impl GixHeadLister {
    /// Keeps every listing's scratch files under `dir` (a writable temp directory).
    pub fn new(dir: &Path) -> Result<Self, HeadError> {
        crate::tls::install_ring_provider();
        std::fs::create_dir_all(dir).map_err(|e| HeadError::Task(e.to_string()))?;
        Ok(Self {
            scratch: dir.to_owned(),
            running: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LISTINGS)),
        })
    }
}

impl HeadLister for GixHeadLister {
    fn list_heads(
        &self,
        request: HeadRequest,
    ) -> BoxFuture<'static, Result<RemoteHeads, HeadError>> {
        let scratch = self.scratch.clone();
        let running = self.running.clone();
        async move {
            let permit = running
                .acquire_owned()
                .await
                .map_err(|e| HeadError::Task(e.to_string()))?;
            // A thread of its own rather than the blocking pool: a listing stuck past
            // its timeout (whatever the transport) must never hold up runtime shutdown.
            let (tx, rx) = futures::channel::oneshot::channel();
            std::thread::Builder::new()
                .name("head-check".into())
                .spawn(move || {
                    let _ = tx.send(list_heads_blocking(&scratch, &request));
                    drop(permit);
                })
                .map_err(|e| HeadError::Task(e.to_string()))?;
            rx.await.map_err(|e| HeadError::Task(e.to_string()))?
        }
        .boxed()
    }
}

fn list_heads_blocking(scratch: &Path, request: &HeadRequest) -> Result<RemoteHeads, HeadError> {
    let credentials = request.auth.clone();
    if let Some(control) = &request.module_of {
        let refs = openvox_git::list_refs(
            &request.url,
            control,
            credentials,
            request.timeout,
            scratch,
            &["refs/heads/", "refs/tags/"],
        )
        .map_err(|e| head_error(&request.url, e))?;
        return Ok(refs
            .into_iter()
            .map(|r| (r.name.clone(), r.commit().to_string()))
            .collect());
    }
    let heads = openvox_git::list_heads(&request.url, credentials, request.timeout, scratch)
        .map_err(|e| head_error(&request.url, e))?;
    Ok(heads
        .into_iter()
        .map(|head| (head.branch, head.commit.to_string()))
        .collect())
}

/// The controller's view of a failed listing: the URL without user info, and the masked,
/// redacted message of openvox-git.
fn head_error(url: &str, error: openvox_git::GitError) -> HeadError {
    use openvox_git::GitError;
    let git = |message: String| HeadError::Git {
        url: redact_url(url),
        message,
    };
    match error {
        GitError::Timeout { after, .. } => HeadError::Timeout(after.as_secs()),
        GitError::Remote { message, .. } => git(say_unreachable(message)),
        GitError::Auth { message, .. } => {
            git(format!("authentication failed or required ({message})"))
        }
        GitError::Url(e) => git(e.reason),
        GitError::SshSetup(message) => HeadError::Credentials(format!("ssh setup: {message}")),
        other => git(other.to_string()),
    }
}

/// Errors that mean no connection to the server could be made at all (as opposed to a
/// server that answered with an error), in the words the OS resolver and socket give.
const UNREACHABLE: &[&str] = &[
    "Connection refused",
    "No route to host",
    "Network is unreachable",
    "Name or service not known",
    "failed to lookup address",
    "Temporary failure in name resolution",
];

/// A remote error in plain words: when the server could not be reached at all, say so
/// first (a fault test stops the git server), keeping the OS's reason after it.
fn say_unreachable(message: String) -> String {
    if UNREACHABLE.iter().any(|m| message.contains(m)) {
        format!("the repository is unreachable ({message})")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_server_that_cannot_be_reached_is_called_unreachable() {
        assert_eq!(
            say_unreachable("Connection refused (os error 111)".into()),
            "the repository is unreachable (Connection refused (os error 111))"
        );
        assert_eq!(
            say_unreachable("repository not exported".into()),
            "repository not exported"
        );
    }

    use super::*;

    #[test]
    fn checks_share_listings_as_far_back_as_their_reason_allows() {
        let created: Timestamp = "2026-03-01T09:59:30Z".parse().unwrap();
        let due: Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
        // Trigger, webhook, retry or spec change: fresh, whatever else holds.
        assert_eq!(
            shared_listing_since(true, true, Some(created), Some(due)),
            None
        );
        assert_eq!(shared_listing_since(true, false, None, Some(due)), None);
        // A new CodeSource: anything since it exists.
        assert_eq!(
            shared_listing_since(false, true, Some(created), Some(due)),
            Some(created)
        );
        assert_eq!(shared_listing_since(false, true, None, Some(due)), None);
        // A scheduled tick: anything since the tick.
        assert_eq!(
            shared_listing_since(false, false, Some(created), Some(due)),
            Some(due)
        );
        assert_eq!(
            shared_listing_since(false, false, Some(created), None),
            None
        );
    }

    #[test]
    fn wall_clock_times_map_to_instants_read_with_them() {
        let now: Timestamp = "2026-03-01T10:00:02.5Z".parse().unwrap();
        let instant = Instant::now();
        let tick: Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
        assert_eq!(
            instant_of(tick, now, instant),
            instant - Duration::from_millis(2500)
        );
        let later: Timestamp = "2026-03-01T10:00:05Z".parse().unwrap();
        assert_eq!(instant_of(later, now, instant), instant);
    }

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
            auth: password.map_or_else(Credentials::none, basic),
            timeout: Duration::from_secs(5),
            module_of: None,
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

    fn basic(password: &str) -> Credentials {
        let data: BTreeMap<String, Vec<u8>> = [
            ("username".to_string(), b"bot".to_vec()),
            ("password".to_string(), password.as_bytes().to_vec()),
        ]
        .into();
        Credentials::from_secret_data(&data).unwrap()
    }

    #[test]
    fn fingerprints_differ_by_any_value_and_hide_them() {
        let a = basic("secret");
        let b = basic("secret2");
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert!(!fingerprint(&a).contains("secret"));
        assert!(!format!("{a:?}").contains("secret"));
        let ca_only = Credentials {
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            ..Credentials::none()
        };
        assert_ne!(fingerprint(&ca_only), fingerprint(&Credentials::none()));
    }
}
