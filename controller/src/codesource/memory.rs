//! What the controller remembers between reconciles of a CodeSource without writing it
//! to the API server, so that a check that finds nothing new costs no request:
//!
//! - the last schedule tick it handled: `status.lastScheduleTime` is written only when
//!   the status changes for another reason or at the coarse refresh
//!   (`status::must_write`), so the stored one may be older. After a restart the memory
//!   is empty and the stored time rules: at worst one extra check;
//! - the Jobs it created that the watch cache has not shown yet (what Kubernetes'
//!   own Job controller calls expectations): Jobs are read from the cache, and a Job
//!   created a moment ago must count as running, or the next reconcile could launch
//!   the build again;
//! - which CodeSources a Server or Deployment event concerned since their last
//!   reconcile: only those (and rollouts not complete yet) read the Deployments again.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::decide::{JobState, JobSummary};

/// How long a created Job counts as running without the cache showing it. Watch
/// events arrive within a second; past this the Job is assumed gone (deleted), so a
/// lost expectation can never block a CodeSource for good.
const EXPECTATION_TTL: Duration = Duration::from_secs(300);

/// Per-CodeSource memory, keyed by `namespace/name`.
#[derive(Debug, Default)]
pub struct Memory {
    ticks: Mutex<HashMap<String, Timestamp>>,
    launched: Mutex<HashMap<String, (JobSummary, Instant)>>,
    rollout_events: Mutex<HashSet<String>>,
}

impl Memory {
    /// The later of the stored last tick and the one remembered.
    pub fn last_tick(&self, key: &str, stored: Option<Timestamp>) -> Option<Timestamp> {
        let remembered = lock(&self.ticks).get(key).copied();
        stored.max(remembered)
    }

    /// Remembers that the tick `due` was handled.
    pub fn handled_tick(&self, key: &str, due: Timestamp) {
        lock(&self.ticks).insert(key.to_owned(), due);
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

    /// Forgets a CodeSource (deleted).
    pub fn forget(&self, key: &str) {
        lock(&self.ticks).remove(key);
        lock(&self.launched).remove(key);
        lock(&self.rollout_events).remove(key);
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
    fn a_rollout_event_is_taken_once() {
        let memory = Memory::default();
        assert!(!memory.take_rollout_event("ns/prod"));
        memory.rollout_event("ns/prod".into());
        memory.rollout_event("ns/prod".into());
        assert!(memory.take_rollout_event("ns/prod"));
        assert!(!memory.take_rollout_event("ns/prod"));
    }

    #[test]
    fn the_later_tick_wins_and_a_restart_falls_back_to_the_stored_one() {
        let memory = Memory::default();
        let t = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(memory.last_tick("ns/prod", Some(t(60))), Some(t(60)));
        memory.handled_tick("ns/prod", t(120));
        assert_eq!(memory.last_tick("ns/prod", Some(t(60))), Some(t(120)));
        assert_eq!(memory.last_tick("ns/prod", None), Some(t(120)));
        memory.forget("ns/prod");
        assert_eq!(memory.last_tick("ns/prod", Some(t(60))), Some(t(60)));
    }
}
