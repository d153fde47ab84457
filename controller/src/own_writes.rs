//! The controller's own writes (status, and a Pool's Service), so the watch event each
//! of them causes does not trigger one more reconcile of the same object.
//!
//! Every reconcile of a scheduled CodeSource writes its status (check and schedule
//! times); without this, the write came back as a watch event and a second reconcile
//! with its own Job list: in the scale bench 2,000 extra lists a minute for 1,000
//! CodeSources. Only the exact version a write returned is skipped: any other change of
//! the object (spec, labels, annotations, the worker's `lastBuild`, someone editing the
//! status) still triggers a reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Object uid → resourceVersion returned by the controller's last status write.
#[derive(Clone, Debug, Default)]
pub struct OwnWrites(Arc<Mutex<HashMap<String, String>>>);

impl OwnWrites {
    /// Remembers the version a status write returned.
    pub fn record(&self, written: &ObjectMeta) {
        if let (Some(uid), Some(version)) = (&written.uid, &written.resource_version) {
            self.lock().insert(uid.clone(), version.clone());
        }
    }

    /// Whether a watched object is exactly the version one of our writes returned
    /// (then nothing changed that the reconcile did not already know). Forgets it: a
    /// version is seen once.
    pub fn is_own(&self, seen: &ObjectMeta) -> bool {
        let (Some(uid), Some(version)) = (&seen.uid, &seen.resource_version) else {
            return false;
        };
        let mut writes = self.lock();
        if writes.get(uid) == Some(version) {
            writes.remove(uid);
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_the_version_our_write_returned_is_ours() {
        let writes = OwnWrites::default();
        writes.record(&meta("a", "10"));
        // Someone else's later change, another object, an older version: not ours.
        assert!(!writes.is_own(&meta("a", "11")));
        assert!(!writes.is_own(&meta("b", "10")));
        assert!(!writes.is_own(&meta("a", "9")));
        assert!(writes.is_own(&meta("a", "10")));
        // Seen once: a relist showing the same version again triggers as before.
        assert!(!writes.is_own(&meta("a", "10")));
        assert!(!writes.is_own(&ObjectMeta::default()));
    }
}
