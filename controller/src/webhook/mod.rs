//! The webhook receiver: Git hosts post push events to
//! `POST /hook/<namespace>/<codesource>`, and a verified push to a watched branch of
//! that CodeSource's repository asks for a head check at once.
//!
//! - [`signature`]: who sent it and whether they know the secret (pure).
//! - [`payload`]: what the body says: ping, push of a branch, or nothing for us (pure).
//! - [`matching`]: whether the push concerns the CodeSource (pure).
//! - [`limiter`]: failed attempts per client address (pure bookkeeping).
//! - [`secrets`]: the webhook secrets read, so that checking a hook costs no API request.
//! - [`server`]: the HTTP server and the one side effect, the
//!   `openvox.voxpupuli.org/checkRequestedAt` annotation.
//!
//! Why an annotation and not `requestedAt`: `requestedAt` is the manual trigger and
//! always builds; a push only warrants a look at the heads (a build follows when they
//! moved). Why an annotation and not an in-process channel: with leader election the
//! Service sends hooks to any replica, and only the annotation reaches the leader.

pub mod limiter;
pub mod matching;
pub mod payload;
pub mod secrets;
pub mod server;
pub mod signature;

pub use server::{MAX_BODY_BYTES, WebhookState, router, serve};

use std::collections::BTreeMap;

use openvox_crds::names::annotations;

/// The value of the `checkRequestedAt` annotation when it asks for a head check not
/// yet made (`last_handled` is `status.lastHandledCheckRequestedAt`). The CodeSource
/// reconciler lists the heads afresh when this is `Some` and records the value once
/// the listing succeeded.
pub fn pending_check_request(
    annotations: &BTreeMap<String, String>,
    last_handled: Option<&str>,
) -> Option<String> {
    annotations
        .get(annotations::CHECK_REQUESTED_AT)
        .filter(|value| Some(value.as_str()) != last_handled)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_check_request_is_pending_until_handled() {
        let with = |v: &str| {
            BTreeMap::from([(annotations::CHECK_REQUESTED_AT.to_string(), v.to_string())])
        };
        assert_eq!(pending_check_request(&BTreeMap::new(), None), None);
        assert_eq!(pending_check_request(&with("t1"), None), Some("t1".into()));
        assert_eq!(
            pending_check_request(&with("t2"), Some("t1")),
            Some("t2".into())
        );
        assert_eq!(pending_check_request(&with("t1"), Some("t1")), None);
        // The manual trigger is not a check request.
        let manual = BTreeMap::from([(annotations::REQUESTED_AT.to_string(), "t".to_string())]);
        assert_eq!(pending_check_request(&manual, None), None);
    }
}
