//! Backoff of failed reconciles, shared by both controllers: every object retries on
//! its own schedule, 5 s doubling to 5 minutes, and starts again from 5 s after a
//! reconcile that worked. A failure that repeats (a Secret still missing, a schema
//! refusing a write) costs a request every 5 minutes, not one every few seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;
use tracing::warn;

use crate::metrics::Metrics;

/// What both controllers' errors tell the error policy.
pub trait ReconcileError: std::error::Error {
    /// Stable, low-cardinality PascalCase word: the metrics label and Event reason.
    fn reason(&self) -> &'static str;
    /// Whether retrying without a spec change is pointless: such an object waits for
    /// its next change instead of backing off.
    fn is_permanent(&self) -> bool;
}

/// The error policy of both controllers: counts the failure by reason
/// (`openvox_code_reconcile_errors_total`), logs it, and retries a transient error
/// after [`backoff`] of the object's failures in a row.
pub fn after_error(
    controller: &str,
    key: String,
    error: &impl ReconcileError,
    metrics: &Metrics,
    failures: &Failures,
) -> Action {
    metrics.failed(controller, error.reason());
    if error.is_permanent() {
        warn!(controller, object = %key, reason = error.reason(), "reconcile failed, waiting for a change: {error}");
        return Action::await_change();
    }
    let retry = failures.failed(key.clone());
    warn!(controller, object = %key, reason = error.reason(), retry, "reconcile failed, will be retried: {error}");
    Action::requeue(backoff(retry))
}

/// Delay before retry number `n` (from 1).
pub fn backoff(n: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << n.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

/// Consecutive failures per object (`namespace/name`).
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of `key`; returns how many in a row.
    pub fn failed(&self, key: String) -> u32 {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets the failures of `key` after a reconcile that worked.
    pub fn succeeded(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_5s_to_5min() {
        let got: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn failures_count_per_object_until_one_works() {
        let failures = Failures::default();
        assert_eq!(failures.failed("a/p".into()), 1);
        assert_eq!(failures.failed("a/p".into()), 2);
        assert_eq!(failures.failed("a/q".into()), 1);
        failures.succeeded("a/p");
        assert_eq!(failures.failed("a/p".into()), 1);
    }
}
