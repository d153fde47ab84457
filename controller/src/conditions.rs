//! Status conditions shared by both controllers: the reconciler states the full set of
//! conditions it wants; this module keeps `lastTransitionTime` stable unless a
//! condition's status actually changes (kstatus and API conventions).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A wanted condition: type, status (`True`/`False`/`Unknown`), reason, message.
pub type ConditionFacts = (&'static str, &'static str, &'static str, String);

/// The conditions to store: exactly the `wanted` ones, in that order. Types not in
/// `wanted` are dropped, so abnormal-true conditions disappear when they stop being
/// true. A condition whose status did not change keeps its transition time.
pub fn merge_conditions(
    old: &[Condition],
    wanted: &[ConditionFacts],
    generation: Option<i64>,
) -> Vec<Condition> {
    merge_conditions_at(old, wanted, generation, Timestamp::now())
}

/// [`merge_conditions`] with the clock passed in, for tests.
pub fn merge_conditions_at(
    old: &[Condition],
    wanted: &[ConditionFacts],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|(type_, status, reason, message)| {
            let previous = old.iter().find(|c| c.type_ == *type_);
            let last_transition_time = match previous {
                Some(c) if c.status == *status => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: (*type_).to_string(),
                status: (*status).to_string(),
                reason: (*reason).to_string(),
                message: message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of `type_` in `conditions`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays() {
        let first = merge_conditions_at(
            &[],
            &[("Ready", "True", "A", "one".into())],
            Some(1),
            at(10),
        );
        let second = merge_conditions_at(
            &first,
            &[("Ready", "True", "B", "two".into())],
            Some(2),
            at(20),
        );
        assert_eq!(second[0].last_transition_time, Time(at(10)));
        assert_eq!(
            (second[0].reason.as_str(), second[0].message.as_str()),
            ("B", "two")
        );
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_when_the_status_changes() {
        let first =
            merge_conditions_at(&[], &[("Ready", "True", "A", String::new())], None, at(10));
        let second = merge_conditions_at(
            &first,
            &[("Ready", "False", "A", String::new())],
            None,
            at(20),
        );
        assert_eq!(second[0].last_transition_time, Time(at(20)));
    }

    #[test]
    fn conditions_no_longer_wanted_are_dropped() {
        let first = merge_conditions_at(
            &[],
            &[
                ("Ready", "False", "A", String::new()),
                ("Stalled", "True", "B", String::new()),
            ],
            None,
            at(10),
        );
        let second = merge_conditions_at(
            &first,
            &[("Ready", "True", "A", String::new())],
            None,
            at(20),
        );
        assert_eq!(second.len(), 1);
        assert!(is_true(&second, "Ready"));
        assert!(find(&second, "Stalled").is_none());
    }
}
