//! The webhook secrets the receiver has read, so that checking a hook (good or forged)
//! costs no API request while the secret is fresh. Only Secrets that an existing
//! CodeSource names in `spec.webhook.secretRef` are ever read, so the cache holds at
//! most one entry per such reference. The controller may only `get` Secrets (no list or
//! watch of every Secret in the cluster), hence a read-through cache, not a watch.
//!
//! Freshness: an entry answers hooks that do not match it for [`FRESH`]; a mismatch
//! against an entry older than [`REREAD_AFTER_MISMATCH`] reads it once more, so a
//! rotated secret works within seconds while a flood of forged hooks reads it at most
//! once per that interval. A hook that matches is confirmed against a fresh read (the
//! receiver's rule), so a secret removed from its Secret stops working at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a secret read is used without reading it again.
pub const FRESH: Duration = Duration::from_secs(300);
/// The least age of a cached secret before a mismatching signature reads it again.
pub const REREAD_AFTER_MISMATCH: Duration = Duration::from_secs(10);

/// Namespace and name of a Secret.
pub type Key = (String, String);

/// A cached read: the bytes under the webhook key (`None`: Secret or key missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    /// What the read found.
    pub value: Option<Vec<u8>>,
    /// When it was read.
    pub read_at: Instant,
}

impl Cached {
    /// Whether the entry may answer a request at `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.read_at) < FRESH
    }

    /// Whether a signature that did not match this secret warrants reading it again.
    pub fn worth_rereading(&self, now: Instant) -> bool {
        now.duration_since(self.read_at) >= REREAD_AFTER_MISMATCH
    }
}

/// Secrets read, by namespace and name.
#[derive(Debug, Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<Key, Cached>>,
}

impl SecretCache {
    /// The fresh entry of `key`, if any.
    pub fn fresh(&self, key: &Key, now: Instant) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|c| c.fresh(now)).cloned()
    }

    /// Records a read; entries no longer fresh are dropped on the way.
    pub fn store(&self, key: Key, value: Option<Vec<u8>>, now: Instant) -> Cached {
        let cached = Cached {
            value,
            read_at: now,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, c| c.fresh(now));
        entries.insert(key, cached.clone());
        cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        ("puppet".into(), name.into())
    }

    #[test]
    fn a_read_answers_until_it_is_stale() {
        let cache = SecretCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.fresh(&key("hook"), t0), None);
        cache.store(key("hook"), Some(b"s3cret".to_vec()), t0);
        let hit = cache.fresh(&key("hook"), t0 + FRESH - Duration::from_secs(1));
        assert_eq!(hit.and_then(|c| c.value), Some(b"s3cret".to_vec()));
        assert_eq!(cache.fresh(&key("hook"), t0 + FRESH), None);
        assert_eq!(cache.fresh(&key("other"), t0), None);
    }

    #[test]
    fn a_missing_secret_is_cached_too() {
        let cache = SecretCache::default();
        let t0 = Instant::now();
        cache.store(key("gone"), None, t0);
        assert_eq!(cache.fresh(&key("gone"), t0).map(|c| c.value), Some(None));
    }

    #[test]
    fn a_mismatch_rereads_only_an_entry_old_enough() {
        let t0 = Instant::now();
        let cached = Cached {
            value: None,
            read_at: t0,
        };
        assert!(!cached.worth_rereading(t0 + Duration::from_secs(9)));
        assert!(cached.worth_rereading(t0 + REREAD_AFTER_MISMATCH));
    }

    #[test]
    fn stale_entries_are_dropped_when_another_is_stored() {
        let cache = SecretCache::default();
        let t0 = Instant::now();
        cache.store(key("old"), None, t0);
        cache.store(key("new"), None, t0 + FRESH);
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
    }
}
