//! Property tests on hostile input: no parser, glob or mirror panics, whatever the text,
//! and the guarantees other code relies on hold for every accepted value.

use std::collections::BTreeMap;

use openvox_codeconfig::{Glob, Lockfile, ModuleFile, Overrides, load_code_config, mirror};
use proptest::prelude::*;

/// YAML-ish text: the characters that steer the parser, plus words it knows.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just("- ".to_owned()),
        Just(": ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("---\n".to_owned()),
        Just("!!str ".to_owned()),
        Just("apiVersion: openvox.voxpupuli.org/v1alpha1\n".to_owned()),
        Just("kind: CodeConfig\n".to_owned()),
        Just("kind: ModuleFile\n".to_owned()),
        Just("spec:\n".to_owned()),
        Just("sources:\n".to_owned()),
        Just("modulefiles:".to_owned()),
        Just("modules:\n".to_owned()),
        Just("includes: ['*']\n".to_owned()),
        Just("name: ".to_owned()),
        Just("git: ".to_owned()),
        Just("version: 1\n".to_owned()),
        "[a-z0-9/.*?\\[\\]-]{0,8}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn parsers_never_panic(text in yamlish()) {
        let files = BTreeMap::from([
            ("c/openvox-code.yaml".to_owned(), text.clone()),
            ("c/other.yaml".to_owned(), text.clone()),
        ]);
        let _ = load_code_config(&files, "c/openvox-code.yaml");
        let _ = ModuleFile::parse("m.yaml", &text);
        let _ = Lockfile::parse("l.lock", &text);
    }

    #[test]
    fn accepted_modules_never_leave_their_environment(text in yamlish()) {
        if let Ok(file) = ModuleFile::parse("m.yaml", &text) {
            for module in &file.modules {
                let path = module.install_path();
                prop_assert!(!path.starts_with('/'), "{path}");
                prop_assert!(path.split('/').all(|part| !part.is_empty() && part != ".."), "{path}");
                prop_assert!(!module.git.starts_with('-'));
            }
        }
    }

    #[test]
    fn globs_never_panic_and_literals_match_themselves(
        pattern in "[a-z/*?\\[\\]!^\\\\-]{0,12}",
        text in "[a-z/\\[\\]-]{0,16}",
    ) {
        if let Ok(glob) = Glob::new(&pattern) {
            let _ = glob.matches(&text);
            if let Some(name) = glob.literal() {
                prop_assert!(glob.matches(&name), "{pattern} vs {name}");
            }
        }
    }

    #[test]
    fn mirrors_never_panic_and_keep_unmirrored_urls(url in "[a-z@:/\\[\\].]{0,24}") {
        let overrides = Overrides {
            gitmirror: None,
            gitmirrors: BTreeMap::from([("example.com".to_owned(), "https://m".to_owned())]),
        };
        let rewritten = mirror(&url, &overrides);
        prop_assert!(rewritten == url || rewritten.starts_with("https://m"));
        prop_assert_eq!(mirror(&url, &Overrides::default()), url);
    }
}
