//! Lookups shared by every CodeSource of a tick: the first reconcile that needs an
//! answer starts the lookup, every other one asking meanwhile (while it runs, or for a
//! short time after) gets the same answer. Head listings of control and module
//! repositories and Forge release lookups go through it, so a repository or module
//! used by a thousand CodeSources is asked once a tick.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

type Pending<T, E> = Shared<BoxFuture<'static, Result<Arc<T>, E>>>;
/// Lookups by key, with the instant each started.
type Entries<T, E> = HashMap<String, (Instant, Pending<T, E>)>;

/// Answers by key, each kept for `ttl` after its lookup started.
pub struct SharedLookups<T, E> {
    ttl: Duration,
    entries: Mutex<Entries<T, E>>,
}

impl<T, E> std::fmt::Debug for SharedLookups<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLookups")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<T, E> SharedLookups<T, E>
where
    T: Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// Keeps every answer for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key` from a lookup started at or after `not_before` (and less
    /// than `ttl` ago), or from `lookup` started now.
    pub async fn get(
        &self,
        key: String,
        not_before: Instant,
        lookup: impl FnOnce() -> BoxFuture<'static, Result<T, E>>,
    ) -> Result<Arc<T>, E> {
        let pending = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            entries.retain(|_, (started, _)| now.duration_since(*started) < self.ttl);
            match entries
                .get(&key)
                .filter(|(started, _)| *started >= not_before)
            {
                Some((_, pending)) => pending.clone(),
                None => {
                    let pending = lookup().map(|r| r.map(Arc::new)).boxed().shared();
                    entries.insert(key, (now, pending.clone()));
                    pending
                }
            }
        };
        pending.await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_lookup_per_key_is_shared_and_a_newer_one_is_asked_for_when_needed() {
        let lookups: SharedLookups<usize, String> = SharedLookups::new(Duration::from_secs(60));
        let calls = Arc::new(AtomicUsize::new(0));
        let lookup = || {
            let calls = calls.clone();
            move || async move { Ok::<_, String>(calls.fetch_add(1, Ordering::SeqCst)) }.boxed()
        };
        let start = Instant::now();
        let (a, b) = tokio::join!(
            lookups.get("k".into(), start, lookup()),
            lookups.get("k".into(), start, lookup())
        );
        assert_eq!((*a.unwrap(), *b.unwrap()), (0, 0), "shared while running");
        assert_eq!(*lookups.get("k".into(), start, lookup()).await.unwrap(), 0);
        assert_eq!(
            *lookups.get("other".into(), start, lookup()).await.unwrap(),
            1
        );
        // Only a lookup started now will do.
        let fresh = lookups
            .get("k".into(), Instant::now(), lookup())
            .await
            .unwrap();
        assert_eq!(*fresh, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
