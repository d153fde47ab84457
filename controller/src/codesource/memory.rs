//! What the controller remembers between reconciles of a CodeSource without writing it
//! to the API server, so that a check that finds nothing new costs no request:
//!
//! - the last schedule tick it handled: `status.lastScheduleTime` is written only when
//!   the status changes for another reason or at the coarse refresh
//!   (`status::must_write`), so the stored one may be older. The stored time rules
//!   again as soon as it is not the one the memory was made with (someone edited the
//!   status, a backup was restored), and after a restart: at worst one extra check;
//! - the Jobs it created that the watch cache has not shown yet (what Kubernetes'
//!   own Job controller calls expectations): Jobs are read from the cache, and a Job
//!   created a moment ago must count as running, or the next reconcile could launch
//!   the build again;
//! - which CodeSources a Server or Deployment event concerned since their last
//!   reconcile: only those (and rollouts not complete yet) read the Deployments again;
//! - what the last check found moved among the floating modules, for the reconciles
//!   until the next check;
//! - the git credentials of a Secret, read at most every [`SECRET_TTL`] (a check that
//!   fails forgets them, so rotated credentials are read again at once).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::decide::{JobState, JobSummary};
use openvox_git::Credentials;

/// How long git credentials read from a Secret are used without reading it again.
/// Rotation needs no wait: credentials that stop working fail the check, which forgets
/// them. 30 minutes, like the check times: a check at rest reads no Secret.
pub const SECRET_TTL: Duration = Duration::from_secs(30 * 60);

/// How long a created Job counts as running without the cache showing it. Watch
/// events arrive within a second; past this the Job is assumed gone (deleted), so a
/// lost expectation can never block a CodeSource for good.
const EXPECTATION_TTL: Duration = Duration::from_secs(300);

/// Per-CodeSource memory, keyed by `namespace/name`.
#[derive(Debug, Default)]
pub struct Memory {
    /// The tick handled last, and the stored `lastScheduleTime` it was handled with.
    ticks: Mutex<HashMap<String, (Timestamp, Option<Timestamp>)>>,
    launched: Mutex<HashMap<String, (JobSummary, Instant)>>,
    rollout_events: Mutex<HashSet<String>>,
    /// What the last check found moved among the floating modules (its digest).
    moved: Mutex<HashMap<String, String>>,
    /// Git credentials by `namespace/secret`, and when they were read.
    secrets: Mutex<HashMap<String, (Credentials, Instant)>>,
}

impl Memory {
    /// The last tick handled: the remembered one while the stored time is the one it
    /// was remembered with, else the stored one.
    pub fn last_tick(&self, key: &str, stored: Option<Timestamp>) -> Option<Timestamp> {
        match lock(&self.ticks).get(key) {
            Some((handled, stored_then)) if *stored_then == stored => stored.max(Some(*handled)),
            _ => stored,
        }
    }

    /// Remembers that the tick `due` was handled, the stored time being `stored` now.
    pub fn handled_tick(&self, key: &str, due: Timestamp, stored: Option<Timestamp>) {
        lock(&self.ticks).insert(key.to_owned(), (due, stored));
    }

    /// Remembers that Job `name` for `inputs_hash` was created now.
    pub fn launched(&self, key: &str, name: &str, inputs_hash: &str) {
        let job = JobSummary {
            name: name.to_owned(),
            inputs_hash: Some(inputs_hash.to_owned()),
            state: JobState::Active,
        };
        lock(&self.launched).insert(key.to_owned(), (job, Instant::now()));
    }

    /// `cached` (the Jobs the watch cache shows) plus a Job created by this process
    /// that the cache does not show yet, as running. Forgets it once the cache has it
    /// or after [`EXPECTATION_TTL`].
    pub fn with_launched(&self, key: &str, mut cached: Vec<JobSummary>) -> Vec<JobSummary> {
        let mut launched = lock(&self.launched);
        if let Some((job, at)) = launched.get(key) {
            if cached.iter().any(|j| j.name == job.name) || at.elapsed() > EXPECTATION_TTL {
                launched.remove(key);
            } else {
                cached.push(job.clone());
            }
        }
        cached
    }

    /// Notes that a Server or Deployment of `key`'s Config changed.
    pub fn rollout_event(&self, key: String) {
        lock(&self.rollout_events).insert(key);
    }

    /// Whether a Server or Deployment of `key`'s Config changed since the last call.
    pub fn take_rollout_event(&self, key: &str) -> bool {
        lock(&self.rollout_events).remove(key)
    }

    /// Remembers what the last check found moved among the floating modules (`None`:
    /// nothing), until the next check: reconciles in between (a Job event) decide on it.
    pub fn modules_moved(&self, key: &str, digest: Option<String>) {
        let mut moved = lock(&self.moved);
        match digest {
            Some(d) => moved.insert(key.to_owned(), d),
            None => moved.remove(key),
        };
    }

    /// What the last check found moved, if anything.
    pub fn moved(&self, key: &str) -> Option<String> {
        lock(&self.moved).get(key).cloned()
    }

    /// The credentials of git Secret `ns/name`, read less than [`SECRET_TTL`] ago.
    pub fn git_secret(&self, ns: &str, name: &str) -> Option<Credentials> {
        lock(&self.secrets)
            .get(&format!("{ns}/{name}"))
            .filter(|(_, read)| read.elapsed() < SECRET_TTL)
            .map(|(auth, _)| auth.clone())
    }

    /// Remembers the credentials just read from git Secret `ns/name`.
    pub fn remember_git_secret(&self, ns: &str, name: &str, auth: Credentials) {
        lock(&self.secrets).insert(format!("{ns}/{name}"), (auth, Instant::now()));
    }

    /// Forgets the credentials of git Secret `ns/name` (a check with them failed).
    pub fn forget_git_secret(&self, ns: &str, name: &str) {
        lock(&self.secrets).remove(&format!("{ns}/{name}"));
    }

    /// Forgets a CodeSource (deleted).
    pub fn forget(&self, key: &str) {
        lock(&self.ticks).remove(key);
        lock(&self.launched).remove(key);
        lock(&self.rollout_events).remove(key);
        lock(&self.moved).remove(key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, state: JobState) -> JobSummary {
        JobSummary {
            name: name.into(),
            inputs_hash: Some("h".into()),
            state,
        }
    }

    #[test]
    fn a_created_job_counts_as_running_until_the_cache_shows_it() {
        let memory = Memory::default();
        memory.launched("ns/prod", "prod-1", "h");
        // The cache lags: the Job is added, running.
        let seen = memory.with_launched("ns/prod", vec![]);
        assert_eq!(seen, [job("prod-1", JobState::Active)]);
        // Other CodeSources are not affected.
        assert!(memory.with_launched("ns/other", vec![]).is_empty());
        // The cache has it (in whatever state): the cache is the truth from now on.
        let done = vec![job("prod-1", JobState::Succeeded)];
        assert_eq!(memory.with_launched("ns/prod", done.clone()), done);
        assert!(
            memory.with_launched("ns/prod", vec![]).is_empty(),
            "forgotten"
        );
    }

    #[test]
    fn secrets_are_remembered_until_forgotten() {
        let memory = Memory::default();
        assert!(memory.git_secret("ns", "git").is_none());
        let auth = Credentials {
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            ..Credentials::none()
        };
        memory.remember_git_secret("ns", "git", auth.clone());
        assert_eq!(memory.git_secret("ns", "git"), Some(auth));
        assert!(memory.git_secret("other", "git").is_none());
        memory.forget_git_secret("ns", "git");
        assert!(memory.git_secret("ns", "git").is_none());
    }

    #[test]
    fn a_rollout_event_is_taken_once() {
        let memory = Memory::default();
        assert!(!memory.take_rollout_event("ns/prod"));
        memory.rollout_event("ns/prod".into());
        memory.rollout_event("ns/prod".into());
        assert!(memory.take_rollout_event("ns/prod"));
        assert!(!memory.take_rollout_event("ns/prod"));
    }

    #[test]
    fn the_remembered_tick_holds_until_the_stored_one_changes() {
        let memory = Memory::default();
        let t = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(memory.last_tick("ns/prod", Some(t(60))), Some(t(60)));
        // The tick of 120 handled without a write: the stored time is still 60.
        memory.handled_tick("ns/prod", t(120), Some(t(60)));
        assert_eq!(memory.last_tick("ns/prod", Some(t(60))), Some(t(120)));
        // Someone set the stored time (a restore, an edit): it rules.
        assert_eq!(memory.last_tick("ns/prod", Some(t(30))), Some(t(30)));
        assert_eq!(memory.last_tick("ns/prod", None), None);
        // A restart forgets.
        memory.forget("ns/prod");
        assert_eq!(memory.last_tick("ns/prod", Some(t(60))), Some(t(60)));
    }
}
