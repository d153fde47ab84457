//! Property tests on hostile input (issue 9): schedules and their next times, spec
//! validation, webhook payloads, signatures and repository matching. Pure functions, no
//! servers (the HTTP server's body bound is tested in tests/webhook.rs).

#![allow(clippy::unwrap_used)]

use axum::http::{HeaderMap, HeaderValue};
use jiff::Timestamp;
use openvox_code_controller::codesource::schedule::{Schedule, ScheduleError};
use openvox_code_controller::codesource::validate::validate;
use openvox_code_controller::webhook::matching::{normalize_repo_url, same_repository};
use openvox_code_controller::webhook::payload::{Event, PayloadError, parse};
use openvox_code_controller::webhook::signature::{
    AuthError, Provider, authenticate, sign_hex, tokens_equal, verify_hmac_sha256,
};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One cron field from the grammar: `*`, `*/n`, `a`, `a-b`, `a-b/n`, lists of them.
/// Values are mostly within `min..=max` with ordered ranges; one in ten lies a little
/// outside or is reversed, so refusals are exercised too.
fn field(min: u32, max: u32) -> impl Strategy<Value = String> {
    let value = prop_oneof![9 => min..=max, 1 => 0..=max + 2];
    let range =
        (value.clone(), value.clone(), prop::bool::weighted(0.1)).prop_map(|(a, b, keep)| {
            if keep { (a, b) } else { (a.min(b), a.max(b)) }
        });
    let atom = prop_oneof![
        Just("*".to_owned()),
        (1..=max).prop_map(|n| format!("*/{n}")),
        value.prop_map(|a| a.to_string()),
        range.clone().prop_map(|(a, b)| format!("{a}-{b}")),
        (range, 1..=max).prop_map(|((a, b), n)| format!("{a}-{b}/{n}")),
    ];
    prop::collection::vec(atom, 1..3).prop_map(|atoms| atoms.join(","))
}

fn day_of_week() -> impl Strategy<Value = String> {
    prop_oneof![
        field(0, 7),
        Just("MON-FRI".to_owned()),
        Just("SUN".to_owned()),
        Just("sat,sun".to_owned()),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (field(0, 59), field(0, 23), field(1, 31), field(1, 12), day_of_week())
            .prop_map(|(m, h, dom, mon, dow)| format!("{m} {h} {dom} {mon} {dow}")),
        1 => prop_oneof![
            Just("@yearly"), Just("@annually"), Just("@monthly"), Just("@weekly"),
            Just("@daily"), Just("@midnight"), Just("@hourly"), Just("@HOURLY"),
        ].prop_map(str::to_owned),
    ]
}

/// Zones with daylight saving time at odd hours and offsets (gaps and folds).
fn time_zone() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("UTC".to_owned())),
        Just(Some("Europe/Berlin".to_owned())),
        Just(Some("America/New_York".to_owned())),
        Just(Some("Australia/Lord_Howe".to_owned())),
        Just(Some("Asia/Kathmandu".to_owned())),
        Just(Some("Pacific/Chatham".to_owned())),
        Just(Some("America/Santiago".to_owned())),
    ]
}

/// A moment between 1970 and 2100, often right at a DST change or a minute boundary.
fn now() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (0i64..4_102_444_800).prop_map(|s| Timestamp::from_second(s).unwrap()),
        // Around the 2026 changes in Europe and the US, second by second.
        (0i64..7200).prop_map(|s| Timestamp::from_second(1_774_746_000 + s).unwrap()),
        (0i64..7200).prop_map(|s| Timestamp::from_second(1_792_890_000 + s).unwrap()),
        (0i64..7200).prop_map(|s| Timestamp::from_second(1_772_953_200 + s).unwrap()),
    ]
}

fn spec(schedule: &str, timeout: &str, tz: Option<&str>) -> openvox_crds::CodeSourceSpec {
    serde_json::from_value(serde_json::json!({
        "git": {"url": "https://g/r.git", "branches": ["production"], "timeout": timeout},
        "schedule": schedule,
        "timeZone": tz,
        "output": {"image": "registry/code"}
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text as schedule and time zone: no panic, and an error names what was given.
    #[test]
    fn any_schedule_text_parses_or_is_refused_clearly(expr in any::<String>(), tz in proptest::option::of(any::<String>())) {
        match Schedule::parse(&expr, tz.as_deref()) {
            Ok(_) => {}
            Err(ScheduleError::UnknownTimeZone(name)) => {
                prop_assert_eq!(Some(name.trim()), tz.as_deref().map(str::trim));
            }
            Err(e) => prop_assert!(e.to_string().contains(&format!("{expr:?}")), "{e}"),
        }
    }

    /// Expressions from the cron grammar with any values (also out of range): an
    /// accepted schedule's next time is strictly after now, its latest time is at or
    /// before now, and a tick never calls a future time due.
    #[test]
    fn a_valid_schedules_next_time_is_strictly_after_now(expr in expression(), tz in time_zone(), now in now()) {
        let Ok(schedule) = Schedule::parse(&expr, tz.as_deref()) else {
            return Ok(());
        };
        let next = schedule.next_after(now);
        prop_assert!(next.is_some(), "{expr:?} {tz:?}: no next time after {now}");
        prop_assert!(next.unwrap() > now, "{expr:?} {tz:?}: next {next:?} is not after {now}");
        if let Some(latest) = schedule.latest_at_or_before(now) {
            prop_assert!(latest <= now, "{expr:?} {tz:?}: latest {latest} after {now}");
            // Nothing scheduled lies strictly between the latest and the next time.
            prop_assert_eq!(schedule.next_after(latest), next, "{:?} {:?} at {}", expr, tz, now);
        }
        let tick = schedule.tick(None, now);
        prop_assert!(tick.due.is_none_or(|d| d <= now));
        prop_assert_eq!(tick.next, next);
        // Once the due time is recorded as handled, it is not due again.
        if let Some(due) = tick.due {
            prop_assert_eq!(schedule.tick(Some(due), now).due, None);
        }
    }

    /// Any schedule and timeout in a spec: validation answers without panicking, and an
    /// error names the field.
    #[test]
    fn spec_validation_is_total(schedule in "[ -~]{0,20}", timeout in "[ -~]{0,10}", tz in time_zone()) {
        if let Err(e) = validate(&spec(&schedule, &timeout, tz.as_deref())) {
            prop_assert!(e.contains("schedule") || e.contains("git.timeout"), "{e}");
        }
    }

    /// Any body for any provider and event: a push, a ping, a reason to ignore it, or
    /// an error; never a panic.
    #[test]
    fn any_body_is_answered(body in prop::collection::vec(any::<u8>(), 0..512), provider in provider(), event in proptest::option::of("[ -~]{0,12}")) {
        let _ = parse(provider, event.as_deref(), &body);
    }

    /// Push payloads built from their fields: the branch comes back unchanged, and so
    /// does every repository URL.
    #[test]
    fn a_push_names_its_branch(branch in "[^\u{0}]{1,40}", url in "[ -~]{1,60}", provider in provider(), extra in any::<String>()) {
        let body = serde_json::json!({
            "ref": format!("refs/heads/{branch}"),
            "repository": {"clone_url": url, "extra": extra},
            "object_kind": "push",
        });
        let event = match provider {
            Provider::GitLab => Some("Push Hook"),
            Provider::Generic => None,
            _ => Some("push"),
        };
        match parse(provider, event, body.to_string().as_bytes()) {
            Ok(Event::Push(push)) => {
                prop_assert_eq!(push.branch.as_deref(), Some(branch.as_str()));
                prop_assert_eq!(push.repository_urls, vec![url]);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// JSON that is not an object with a ref: an error or an ignore, never a push of an
    /// invented branch.
    #[test]
    fn refs_that_are_not_branches_are_not_pushes(reference in prop_oneof![any::<String>().prop_map(serde_json::Value::String), Just(serde_json::Value::Null), any::<i64>().prop_map(serde_json::Value::from)]) {
        let body = serde_json::json!({"ref": reference, "repository": {"clone_url": "https://h/r"}});
        let result = parse(Provider::GitHub, Some("push"), body.to_string().as_bytes());
        let is_branch = reference.as_str().is_some_and(|r| r.len() > "refs/heads/".len() && r.starts_with("refs/heads/"));
        match result {
            Ok(Event::Push(push)) => prop_assert!(is_branch && push.branch.is_some()),
            Ok(Event::Ignored(_)) => prop_assert!(!is_branch),
            Err(PayloadError::MissingRef) => prop_assert!(!reference.is_string()),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// A signature made with the secret verifies; one made with any other secret, or
    /// over any other body, or not hex at all, does not.
    #[test]
    fn signatures_verify_only_for_the_secret_and_body(secret in prop::collection::vec(any::<u8>(), 1..64), other in prop::collection::vec(any::<u8>(), 1..64), body in prop::collection::vec(any::<u8>(), 0..256), junk in "[ -~]{0,80}") {
        let good = sign_hex(&secret, &body);
        prop_assert!(verify_hmac_sha256(&secret, &body, &good));
        if other != secret {
            prop_assert!(!verify_hmac_sha256(&other, &body, &good));
        }
        let mut tampered = body.clone();
        tampered.push(0);
        prop_assert!(!verify_hmac_sha256(&secret, &tampered, &good));
        if junk != good {
            prop_assert!(!verify_hmac_sha256(&secret, &body, &junk));
        }
        prop_assert_eq!(tokens_equal(&secret, &other), secret == other);
    }

    /// Any header values for any provider: authenticated only with the right proof, and
    /// an error never repeats the value it was given.
    #[test]
    fn authentication_with_hostile_headers(provider in provider(), value in "[ -~]{0,100}", secret in "[!-~]{1,40}", body in prop::collection::vec(any::<u8>(), 0..128)) {
        for name in ["x-hub-signature-256", "x-gitea-signature", "x-forgejo-signature", "x-gitlab-token", "authorization"] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
            match authenticate(provider, &headers, &body, secret.as_bytes()) {
                Ok(()) => {
                    let signed = sign_hex(secret.as_bytes(), &body);
                    let proven = value.trim() == signed
                        || value.strip_prefix("sha256=").is_some_and(|v| v.trim() == signed)
                        || value == secret
                        || value.split_once(' ').is_some_and(|(s, t)| s.eq_ignore_ascii_case("bearer") && t.trim() == secret);
                    prop_assert!(proven, "{provider:?} accepted {name}: {value:?}");
                }
                Err(e @ (AuthError::Missing(_) | AuthError::Mismatch(_))) => {
                    if value.len() >= 4 {
                        prop_assert!(!e.to_string().contains(&value), "{e}");
                    }
                }
            }
        }
    }

    /// Repository matching on any text: no panic; a URL always names its own repository
    /// when it has one, and the forms git accepts for one repository agree.
    #[test]
    fn repository_matching(a in any::<String>(), b in any::<String>(), host in "[a-z0-9.-]{1,20}", path in "[a-z0-9_-]{1,10}(/[a-z0-9_-]{1,10}){0,2}") {
        let _ = same_repository(&a, &b);
        if !normalize_repo_url(&a).is_empty() {
            prop_assert!(same_repository(&a, &a));
        }
        let https = format!("https://{host}/{path}.git");
        let scp = format!("git@{host}:{path}");
        let ssh = format!("ssh://git@{host}:2222/{path}/");
        prop_assert!(same_repository(&https, &scp));
        prop_assert!(same_repository(&https, &ssh));
    }
}

fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just(Provider::GitHub),
        Just(Provider::Gitea),
        Just(Provider::Forgejo),
        Just(Provider::GitLab),
        Just(Provider::Generic),
    ]
}

/// JSON nested far deeper than any payload: refused as not JSON (serde_json's recursion
/// limit), not a stack overflow.
#[test]
fn deeply_nested_bodies_are_refused() {
    for provider in [Provider::GitHub, Provider::GitLab, Provider::Generic] {
        let body = format!("{{\"ref\":{}", "[".repeat(200_000));
        assert!(
            matches!(
                parse(provider, None, body.as_bytes()),
                Err(PayloadError::NotJson(_))
            ),
            "{provider:?}"
        );
    }
}
