//! Property tests on hostile input (issue 9): URL masking never lets a password through,
//! URL parsing never panics and never echoes a password, branch globs keep the rules the
//! controller and the worker rely on.

#![allow(clippy::unwrap_used)]

use openvox_git::url::redact;
use openvox_git::{RepoUrl, branch_matches, branch_selected, mask_text, strip_user_info};
use proptest::prelude::*;

/// A password as RFC 3986 allows it in user info (unreserved, sub-delims, `:` and
/// percent escapes), plus `@`, which people write unescaped. A fixed prefix keeps it from
/// being an ordinary word of the surrounding text.
fn password() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~!$&'()*+,;=:@%-]{1,24}".prop_map(|s| format!("Pw{s}"))
}

fn user() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{1,12}"
}

fn host() -> impl Strategy<Value = String> {
    "[a-z0-9.-]{1,20}(:[0-9]{1,5})?"
}

fn path() -> impl Strategy<Value = String> {
    "(/[A-Za-z0-9._~-]{0,10}){0,4}"
}

fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("https"),
        Just("http"),
        Just("HTTPS"),
        Just("ssh"),
        Just("git"),
        Just("git+ssh"),
        Just("ftp"),
    ]
    .prop_map(str::to_owned)
}

/// Words around the URL in an error message: anything printable, separated from the
/// URL by a space (an error message names a URL as a word of its own).
fn words() -> impl Strategy<Value = String> {
    "[ -~]{0,30}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// `scheme://user:password@host/path` inside any text: the password is gone after
    /// masking, whatever characters it has.
    #[test]
    fn masking_never_leaves_the_password(
        before in words(), after in words(), scheme in scheme(), user in user(),
        password in password(), host in host(), path in path(), quote in prop_oneof![Just(""), Just("\""), Just("'"), Just("`")],
    ) {
        let url = format!("{scheme}://{user}:{password}@{host}{path}");
        let text = format!("{before} {quote}{url}{quote} {after}");
        // What a perfect masking would print; if the password occurs there anyway (it
        // is part of the surrounding words), there is nothing to prove.
        let ideal = format!("{before} {quote}{scheme}://***@{host}{path}{quote} {after}");
        prop_assume!(!ideal.contains(&password));
        let masked = mask_text(&text);
        prop_assert!(!masked.contains(&password), "{text:?} -> {masked:?}");
        prop_assert!(!strip_user_info(&url).contains(&password));
        prop_assert!(!redact(&text, &[]).contains(&password));
    }

    /// An http(s) token used as the user name is masked too.
    #[test]
    fn masking_never_leaves_an_http_token(
        scheme in prop_oneof![Just("https"), Just("http")], token in password(),
        host in host(), path in path(),
    ) {
        let url = format!("{scheme}://{token}@{host}{path}");
        prop_assume!(!format!("{host}{path}").contains(&token));
        prop_assert!(!mask_text(&url).contains(&token));
    }

    /// Masking text without any `://` changes nothing, and never panics on any text.
    #[test]
    fn masking_arbitrary_text_is_total(text in any::<String>()) {
        let masked = mask_text(&text);
        if !text.contains("://") {
            prop_assert_eq!(&masked, &text);
        }
        let _ = strip_user_info(&text);
    }

    /// Parsing any text as a repository URL never panics, and an error never repeats a
    /// password given in the URL.
    #[test]
    fn url_errors_never_carry_the_password(
        scheme in scheme(), user in user(), password in password(), host in host(), path in path(),
        junk in "[ -~]{0,8}",
    ) {
        let raw = format!("{scheme}://{user}:{password}@{host}{junk}{path}");
        prop_assume!(!format!("{scheme}://***@{host}{junk}{path}").contains(&password));
        let err = RepoUrl::parse(&raw).unwrap_err().to_string();
        prop_assert!(!err.contains(&password), "{raw:?}: {err}");
    }

    #[test]
    fn url_parsing_is_total(raw in any::<String>()) {
        if let Ok(url) = RepoUrl::parse(&raw) {
            // Whatever parsed prints without user info of http(s).
            let _ = url.to_string();
        }
    }

    /// A name without glob metacharacters matches itself and nothing else.
    #[test]
    fn a_literal_pattern_matches_only_itself(name in "[A-Za-z0-9_./-]{1,30}", other in "[A-Za-z0-9_./-]{0,30}") {
        prop_assert!(branch_matches(&name, &name));
        if other != name {
            prop_assert!(!branch_matches(&name, &other), "{name:?} matched {other:?}");
        }
    }

    /// `prefix*` matches every branch that starts with the prefix (also across `/`), and
    /// `*` matches everything.
    #[test]
    fn a_star_matches_any_rest(prefix in "[A-Za-z0-9_.-]{0,12}", rest in "[A-Za-z0-9_./-]{0,20}") {
        let branch = format!("{prefix}{rest}");
        let pattern = format!("{prefix}*");
        prop_assert!(branch_matches(&pattern, &branch));
        prop_assert!(branch_matches("*", &branch));
    }

    /// Any pattern against any branch: no panic, and an exclude always wins.
    #[test]
    fn selection_is_total_and_excludes_win(pattern in any::<String>(), branch in any::<String>()) {
        let _ = branch_matches(&pattern, &branch);
        let include = vec!["*".to_owned(), pattern.clone()];
        prop_assert!(!branch_selected(&branch, &include, std::slice::from_ref(&branch)));
        prop_assert!(!branch_selected(&branch, &include, &["*".to_owned()]));
    }
}
