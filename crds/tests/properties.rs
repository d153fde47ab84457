//! Property tests on hostile input (issue 9): the CodeSource duration format
//! (`git.timeout`, the worker's `--timeout`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use openvox_crds::duration::parse;
use proptest::prelude::*;

fn unit() -> impl Strategy<Value = (&'static str, u64)> {
    prop_oneof![
        Just(("ms", 1)),
        Just(("s", 1_000)),
        Just(("m", 60_000)),
        Just(("h", 3_600_000))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any text: no panic; an accepted duration is positive and below the bound; a
    /// refusal quotes the text.
    #[test]
    fn any_text_parses_or_is_refused_clearly(text in any::<String>()) {
        match parse(&text) {
            Ok(d) => prop_assert!(!d.is_zero() && d < Duration::from_secs(1_000_000_000)),
            Err(e) => prop_assert!(e.starts_with(&format!("{text:?}")), "{e}"),
        }
    }

    /// Text made of the format's own characters, in any order.
    #[test]
    fn format_characters_in_any_order(text in "[0-9.msh]{0,12}") {
        if let Ok(d) = parse(&text) {
            prop_assert!(!d.is_zero());
        }
    }

    /// Well-formed sums of parts are exact.
    #[test]
    fn sums_of_parts_are_exact(parts in prop::collection::vec((1u64..10_000, unit()), 1..4)) {
        let text: String = parts.iter().map(|(n, (u, _))| format!("{n}{u}")).collect();
        let millis: u64 = parts.iter().map(|(n, (_, m))| n * m).sum();
        prop_assert_eq!(parse(&text).unwrap(), Duration::from_millis(millis), "{}", text);
    }

    /// A duration too long to hold is not called "not more than zero".
    #[test]
    fn huge_durations_say_they_are_too_long(digits in "[1-9][0-9]{12,400}", unit in unit()) {
        let text = format!("{digits}{}", unit.0);
        let err = parse(&text).unwrap_err();
        prop_assert!(!err.contains("more than zero"), "{err}");
        prop_assert!(err.contains("too long"), "{err}");
    }
}
