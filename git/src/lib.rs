//! Git for openvox-code, shared by the controller (head checks) and the worker (builds):
//! listing remote heads, shallow fetches into bare temporary repositories, credentials
//! (from a mounted secret directory or a Secret's data), URL masking and branch globs.
//!
//! Transports: `https://`/`http://` (reqwest with rustls on ring; basic auth, bearer token,
//! extra CA), `ssh://` and scp-like URLs (the `ssh` binary with a private key and strict
//! host key checking against the secret's `known_hosts`), `git://`, and `file://` (which
//! runs `git-upload-pack`, so the git binary must be installed for local repositories).
//!
//! Every network operation runs under a deadline. When it passes the operation is told to
//! stop and the caller gets [`GitError::Timeout`] at once; a transport stuck in a read is
//! left to finish in the background (its temporary repository is removed when it does).
//!
//! Nothing in this module (nor its errors) prints a credential: URLs are masked and the
//! secret values are redacted from every message that comes from gix or a server.

pub mod credentials;
pub mod decoded;
pub mod fetch;
pub mod glob;
pub mod remote;
pub mod url;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use credentials::{Credentials, CredentialsError, HttpAuth, Secret, SshAuth};
pub use decoded::{ChainStats, DecodedBlobs};
pub use fetch::{FetchWant, FetchedRepo};
pub use glob::{branch_matches, branch_selected};
pub use remote::{GitAccess, Head, REMOTE_HEAD, Remote, RemoteRef, list_heads, list_refs};
pub use url::{RepoUrl, Transport, UrlError, mask_text, mask_url, strip_user_info};

/// A git operation that failed. Every text is masked and redacted (the secret values,
/// and for basic auth also their base64 form, never appear).
#[derive(Debug, Clone, thiserror::Error)]
pub enum GitError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("{operation} {url}: {message}")]
    Remote {
        operation: &'static str,
        url: String,
        message: String,
    },
    #[error(
        "{operation} {url}: authentication failed or required ({message}); check the secret's username/password, bearerToken, or identity and known_hosts"
    )]
    Auth {
        operation: &'static str,
        url: String,
        message: String,
    },
    #[error("{operation} {url}: no answer within {}s (timeout)", after.as_secs())]
    Timeout {
        operation: &'static str,
        url: String,
        after: Duration,
    },
    #[error(
        "fetch {url}: the server sent history beyond depth 1 for {what} (it does not speak git protocol v2 for this transport; \
         for ssh the server must accept the GIT_PROTOCOL environment variable, for http it needs git >= 2.18); \
         --allow-full-history accepts this at the cost of time and memory"
    )]
    NotShallow { url: String, what: String },
    #[error("{url}: {what} not found")]
    NotFound { url: String, what: String },
    #[error("local repository: {0}")]
    Local(String),
    #[error("ssh setup: {0}")]
    SshSetup(String),
}

/// Renders an error and its sources as one line: `outer: inner: innermost`, skipping
/// repeated parts.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// Installs ring as rustls' process-wide crypto provider (once). reqwest is built
/// without a provider of its own, so this must run before the first https connection.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is installed already, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Runs `work` on its own thread with an interrupt flag, and gives up waiting after
/// `timeout`: the flag is raised and [`GitError::Timeout`] returned.
pub(crate) fn run_with_deadline<T, F>(
    timeout: Duration,
    operation: &'static str,
    url: &str,
    work: F,
) -> Result<T, GitError>
where
    T: Send + 'static,
    F: FnOnce(&AtomicBool) -> Result<T, GitError> + Send + 'static,
{
    let interrupt = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let flag = interrupt.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("git-{operation}"))
        .spawn(move || {
            let result = work(&flag);
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(GitError::Local(format!("cannot start a thread: {e}")));
    }
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            interrupt.store(true, std::sync::atomic::Ordering::SeqCst);
            Err(GitError::Timeout {
                operation,
                url: url.to_owned(),
                after: timeout,
            })
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(GitError::Local(format!(
            "{operation} {url}: the worker thread stopped without a result"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_interrupt_slow_work() {
        let started = std::time::Instant::now();
        let result: Result<(), GitError> =
            run_with_deadline(Duration::from_millis(100), "fetch", "git://x", |stop| {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            });
        assert!(matches!(result, Err(GitError::Timeout { .. })));
        assert!(started.elapsed() < Duration::from_secs(2));
        let ok = run_with_deadline(Duration::from_secs(5), "fetch", "git://x", |_| Ok(42));
        assert_eq!(ok.unwrap(), 42);
    }

    #[test]
    fn error_chains_are_one_line() {
        let inner = std::io::Error::other("connection reset\nby peer");
        let outer = GitError::Local(error_chain(&inner));
        assert_eq!(
            error_chain(&outer),
            "local repository: connection reset by peer"
        );
    }
}
