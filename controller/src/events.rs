//! Publishing Kubernetes Events, shared by both controllers. An Event that cannot be
//! published is logged and otherwise ignored: Events inform, they never decide.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

/// Longest note the Events API accepts (1 kB).
const MAX_NOTE: usize = 1000;

/// Publishes an Event about `regarding`. Long notes keep their end, where the reason
/// of a failure is.
pub async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate_keeping_end(note, MAX_NOTE)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, regarding).await {
        let name = regarding.name.as_deref().unwrap_or_default();
        warn!(object = name, "cannot publish event {reason}: {e}");
    }
}

/// `s` cut to at most `max` bytes (plus an ellipsis), keeping its end.
pub fn truncate_keeping_end(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_keep_their_end_on_a_char_boundary() {
        assert_eq!(truncate_keeping_end("short", 10), "short");
        assert_eq!(truncate_keeping_end("abcdef", 3), "…def");
        assert_eq!(truncate_keeping_end("ääää", 3), "…ä");
    }
}
