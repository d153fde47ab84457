//! Wall-clock timestamps in the API's types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_timestamp() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let nanos = i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0);
    Timestamp::new(seconds, nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Now, as a `metav1.Time`.
pub(crate) fn now() -> Time {
    Time(now_timestamp())
}

/// Now, as a `metav1.MicroTime` (Lease renew times).
pub(crate) fn now_micro() -> MicroTime {
    MicroTime(now_timestamp())
}
