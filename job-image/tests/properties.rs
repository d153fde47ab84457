//! Property tests on hostile input (issue 9): environment names and branch selection,
//! the Puppetfile parser (arbitrary bytes, arbitrary tokens of its grammar, mutated valid
//! files), Forge tarball extraction and the environment tree's symlink check, sizes.
//! No servers: the same inputs through the real worker are in tests/hostile.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use openvox_code_worker::branches::{
    BranchSelection, InvalidBranches, environment_name, is_valid_environment_name,
    plan_environments,
};
use openvox_code_worker::forge::unpack_release;
use openvox_code_worker::limits::{Limits, parse_bytes};
use openvox_code_worker::puppetfile::{
    ModuleSource, Puppetfile, parse_puppetfile, puppetfile_text,
};
use openvox_code_worker::tree::{
    ContentReader, EnvironmentTree, LocalDir, LocalKind, normalize_relative_path,
};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- environment names

fn policy() -> impl Strategy<Value = InvalidBranches> {
    prop_oneof![Just(InvalidBranches::Correct), Just(InvalidBranches::Error)]
}

/// Branch names as git allows them and a bit beyond: any characters, often ASCII.
fn branch() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_./@{}~^ -]{0,30}",
        any::<String>(),
        "[a-z0-9_]{1,20}",
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// A mapped environment name always matches `^[a-z0-9_]+$`, or the branch is
    /// refused with a message naming it; a valid name maps to itself.
    #[test]
    fn environment_names_are_valid_or_refused(branch in branch(), policy in policy()) {
        match environment_name(&branch, policy) {
            Ok(name) => {
                prop_assert!(is_valid_environment_name(&name), "{branch:?} -> {name:?}");
                prop_assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                if is_valid_environment_name(&branch) {
                    prop_assert_eq!(&name, &branch);
                }
            }
            Err(e) => {
                prop_assert!(e.to_string().contains(&format!("{branch:?}")) || branch.is_empty(), "{e}");
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// Planning any set of branches: every planned name is valid and used once, and
    /// every branch is either planned or refused, never both, never lost.
    #[test]
    fn plans_account_for_every_branch(branches in prop::collection::vec(branch(), 0..12), policy in policy()) {
        let (plans, refused) = plan_environments(&branches, policy);
        let mut names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        names.dedup();
        prop_assert_eq!(names.len(), plans.len(), "a name is planned twice");
        for plan in &plans {
            prop_assert!(is_valid_environment_name(&plan.name));
            prop_assert!(!refused.iter().any(|r| r.branch == plan.branch));
        }
        for branch in &branches {
            prop_assert!(
                plans.iter().any(|p| &p.branch == branch) || refused.iter().any(|r| &r.branch == branch),
                "{branch:?} was lost"
            );
        }
    }

    /// Selection through include/exclude globs: an excluded branch is never selected,
    /// `*` selects everything else, results are sorted and unique.
    #[test]
    fn branch_selection(branches in prop::collection::vec(branch(), 0..20), exclude in "[a-z*?]{1,4}") {
        let all = BranchSelection::new(vec!["*".into()], vec![exclude.clone()]).unwrap();
        let selected = all.select(branches.iter().map(String::as_str));
        let mut sorted = selected.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&selected, &sorted);
        for b in &branches {
            let excluded = openvox_code_worker::git::branch_matches(&exclude, b);
            prop_assert_eq!(selected.contains(b), !excluded, "{:?}", b);
        }
    }

    /// Sizes such as `512M`: no panic on any text, and a number with a unit multiplies.
    #[test]
    fn sizes_parse_or_are_refused(text in any::<String>(), n in 0u64..1_000_000, unit in prop_oneof![Just(("", 0)), Just(("K", 10)), Just(("MiB", 20)), Just(("g", 30))]) {
        if let Err(e) = parse_bytes(&text) {
            prop_assert!(e.contains(&format!("{:?}", text.trim())), "{e}");
        }
        prop_assert_eq!(parse_bytes(&format!("{n}{}", unit.0)), Ok(n << unit.1));
    }

    /// Relative paths of a Puppetfile: the result never has `..`, `.`, empty or leading
    /// `/` components.
    #[test]
    fn relative_paths_are_normalised_or_refused(parts in prop::collection::vec(prop_oneof![Just(""), Just("."), Just(".."), Just("a"), Just("b c"), Just("ü")], 0..6), lead in any::<bool>()) {
        let path = format!("{}{}", if lead { "/" } else { "" }, parts.join("/"));
        if let Ok(norm) = normalize_relative_path(&path) {
            prop_assert!(!norm.starts_with('/'));
            prop_assert!(norm.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{path:?} -> {norm:?}");
        }
    }
}

// ---------------------------------------------------------------- Puppetfile

/// How many lines an error may name: one more than the number of line breaks.
fn lines_of(text: &str) -> usize {
    text.matches('\n').count() + 1
}

/// What holds for every parse result: errors name a line of the file and say something;
/// an accepted file names lines of the file, and its module paths are relative, normal
/// and distinct.
fn check_parse(text: &str) -> Result<Option<Puppetfile>, TestCaseError> {
    match parse_puppetfile(text) {
        Err(e) => {
            prop_assert!(
                e.line >= 1 && e.line <= lines_of(text),
                "line {} of {}: {e}",
                e.line,
                lines_of(text)
            );
            prop_assert!(!e.message.is_empty());
            let prefix = format!("Puppetfile line {}: ", e.line);
            prop_assert!(e.to_string().starts_with(&prefix));
            Ok(None)
        }
        Ok(p) => {
            let mut paths = Vec::new();
            for m in &p.modules {
                prop_assert!(m.line >= 1 && m.line <= lines_of(text));
                let normal = normalize_relative_path(&m.path);
                prop_assert_eq!(normal.as_deref(), Ok(m.path.as_str()));
                prop_assert!(
                    is_valid_environment_name(&m.name),
                    "module name {:?}",
                    m.name
                );
                if let ModuleSource::Git { url, .. } = &m.source {
                    prop_assert!(!url.is_empty());
                }
                paths.push(m.path.clone());
            }
            paths.sort();
            paths.dedup();
            prop_assert_eq!(paths.len(), p.modules.len());
            Ok(Some(p))
        }
    }
}

/// Tokens of the Puppetfile grammar, valid and not.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("mod"),
            Just("forge"),
            Just("moduledir"),
            Just("'puppetlabs-stdlib'"),
            Just("'puppetlabs/apache'"),
            Just("'site'"),
            Just("'9.4.1'"),
            Just("'1.x'"),
            Just(":latest"),
            Just(":git"),
            Just("git:"),
            Just(":ref"),
            Just(":tag"),
            Just(":branch"),
            Just(":commit"),
            Just(":control_branch"),
            Just(":default_branch"),
            Just(":install_path"),
            Just(":exclude_spec"),
            Just(":version"),
            Just(":svn"),
            Just("=>"),
            Just(","),
            Just("("),
            Just(")"),
            Just("\n"),
            Just("\\\n"),
            Just("true"),
            Just("false"),
            Just("# comment"),
            Just("'https://git.example/r.git'"),
            Just("'abcdef0'"),
            Just("'../..'"),
            Just("'/etc'"),
            Just("'modules/x'"),
            Just("\"a\\n#{x}\""),
            Just("\"unterminated"),
            Just("'"),
            Just("::"),
            Just("File.read"),
            Just("$x"),
            Just("''"),
        ]
        .prop_map(str::to_owned),
        "'[ -~]{0,10}'",
        "[a-z_]{1,8}:?",
    ]
}

/// A typical control repository's Puppetfile to mutate.
const VALID: &str = "\
forge 'https://forge.example'
moduledir 'modules'

# Forge modules
mod 'puppetlabs-stdlib', '9.4.1'
mod 'puppetlabs/concat', :latest
mod 'puppetlabs-apache',
  :version => '12.0.0'

mod 'site',
  :git => 'https://git.example/site.git',
  :branch => :control_branch,
  :default_branch => 'main'
mod('ntp', git: 'git@host:o/ntp.git', tag: 'v1.0.0', install_path: 'vendor')
mod \"hiera\", :git => \"https://git.example/h.git\", :commit => 'abcdef0123'
";

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Byte { at: usize, byte: u8 },
    SwapLines { a: usize, b: usize },
    DuplicateLine { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), token()).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Byte { at, byte }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Mutation::DuplicateLine { at }),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Insert { at, text } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, text.bytes());
            }
            Mutation::Byte { at, byte } => {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] = *byte;
                }
            }
            Mutation::SwapLines { a, b } => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let len = lines.len();
                lines.swap(a % len, b % len);
                bytes = lines.join(&b'\n');
            }
            Mutation::DuplicateLine { at } => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let at = at % lines.len();
                let line = lines[at].clone();
                lines.insert(at, line);
                bytes = lines.join(&b'\n');
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_mutation_base_is_valid(_x in Just(())) {
        let p = check_parse(VALID)?.expect("the base Puppetfile parses");
        prop_assert_eq!(p.modules.len(), 6);
    }

    /// Arbitrary bytes, as the worker reads them: not UTF-8 is refused before parsing,
    /// naming a line the file has; UTF-8 is parsed without panicking.
    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        match puppetfile_text(&bytes) {
            Ok(text) => {
                check_parse(text)?;
            }
            Err(reason) => {
                let line: usize = reason
                    .strip_prefix("Puppetfile line ")
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.parse().ok())
                    .expect("a line number");
                let lines = bytes.split(|&b| b == b'\n').count();
                prop_assert!(line >= 1 && line <= lines, "{} of {} lines", line, lines);
            }
        }
    }

    #[test]
    fn arbitrary_text(text in any::<String>()) {
        check_parse(&text)?;
    }

    /// Arbitrary sequences of the grammar's tokens.
    #[test]
    fn arbitrary_tokens(tokens in prop::collection::vec(token(), 0..40), sep in prop_oneof![Just(" "), Just(""), Just("\n")]) {
        check_parse(&tokens.join(sep))?;
    }

    /// A valid Puppetfile with a few random edits.
    #[test]
    fn mutated_valid_puppetfiles(mutations in prop::collection::vec(mutation(), 1..5)) {
        let bytes = mutate(VALID, &mutations);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            check_parse(text)?;
        }
    }

    /// An `install_path` or `moduledir` never places a module outside the environment.
    #[test]
    fn install_paths_stay_inside(path in "(/|\\.\\./|\\./|[a-z]{1,3}/){0,4}[a-z.]{0,3}", moduledir in any::<bool>()) {
        let text = if moduledir {
            format!("moduledir '{path}'\nmod 'a-b', '1.0.0'\n")
        } else {
            format!("mod 'a-b', '1.0.0', :install_path => '{path}'\n")
        };
        if let Some(p) = check_parse(&text)? {
            let m = &p.modules[0];
            prop_assert!(!m.path.starts_with('/') && !m.path.split('/').any(|c| c == ".."), "{text:?} -> {:?}", m.path);
        }
    }
}

// ---------------------------------------------------------------- Forge archives and trees

/// One raw tar entry: path bytes, type, data, link target bytes.
type Raw = (Vec<u8>, tar::EntryType, Vec<u8>, Vec<u8>);

/// Writes `entries` as a .tar.gz with raw headers (no path checks), using GNU long-name
/// records for names and link targets beyond 100 bytes, as real archivers do.
fn tarball(entries: &[Raw]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let long = |builder: &mut tar::Builder<_>, kind: tar::EntryType, value: &[u8]| {
        let mut data = value.to_vec();
        data.push(0);
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    };
    for (path, kind, data, link) in entries {
        if path.len() > 100 {
            long(&mut builder, tar::EntryType::GNULongName, path);
        }
        if link.len() > 100 {
            long(&mut builder, tar::EntryType::GNULongLink, link);
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        let name = &path[..path.len().min(100)];
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        let l = &link[..link.len().min(100)];
        header.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A path component: ordinary, hostile (`..`, `.git`, empty), very long, non-UTF-8.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        40 => prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(b"..".to_vec()),
        1 => Just(b".".to_vec()),
        1 => Just(b"".to_vec()),
        1 => Just(b".git".to_vec()),
        1 => Just(b".GIT".to_vec()),
        1 => Just(b"a\\b".to_vec()),
        1 => Just(vec![b'x'; 300]),
        1 => Just(vec![0xff, 0xfe, b'n']),
        1 => Just("ü".as_bytes().to_vec()),
    ]
}

fn entry_path() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.9),
        prop::collection::vec(component(), 0..4),
    )
        .prop_map(|(absolute, top, parts)| {
            let mut path = Vec::new();
            if absolute {
                path.push(b'/');
            }
            if top {
                path.extend_from_slice(b"x-mod-1.0.0/");
            }
            path.extend(parts.join(&b'/'));
            path
        })
}

fn link_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => prop::collection::vec(prop_oneof![Just(".."), Just("."), Just("a"), Just("b"), Just("c"), Just("")], 1..6).prop_map(|p| p.join("/").into_bytes()),
        1 => Just(b"/etc/passwd".to_vec()),
        1 => Just(b"x-mod-1.0.0/a".to_vec()),
        1 => Just(b"x-mod-1.0.0/../../a".to_vec()),
        1 => Just(vec![b'y'; 200]),
        1 => Just(vec![0xc3, 0x28]),
    ]
}

fn entry() -> impl Strategy<Value = Raw> {
    let kind = prop_oneof![
        4 => Just(tar::EntryType::Regular),
        3 => Just(tar::EntryType::Directory),
        3 => Just(tar::EntryType::Symlink),
        2 => Just(tar::EntryType::Link),
        1 => prop_oneof![Just(tar::EntryType::Char), Just(tar::EntryType::Block), Just(tar::EntryType::Fifo)],
    ];
    (
        entry_path(),
        kind,
        prop::collection::vec(any::<u8>(), 0..16),
        link_target(),
    )
        .prop_map(|(path, kind, data, link)| {
            let data = if kind == tar::EntryType::Regular {
                data
            } else {
                Vec::new()
            };
            (path, kind, data, link)
        })
}

/// Every path below `root`, symlinks not followed.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                pending.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

proptest! {
    // These touch the file system: fewer cases.
    #![proptest_config(config(96))]

    /// Hostile Forge archives: nothing is written outside the destination, accepted
    /// entries are normal relative paths, and when the archive then becomes part of an
    /// environment that passes the tree check, no symlink of the written environment
    /// resolves outside it.
    #[test]
    fn forge_archives_and_trees_stay_inside(mut entries in prop::collection::vec(entry(), 1..8)) {
        // Releases start with their top directory; hostile ones may have more of them.
        entries.insert(0, (b"x-mod-1.0.0/".to_vec(), tar::EntryType::Directory, Vec::new(), Vec::new()));
        let scratch = tempfile::tempdir().unwrap();
        let unpacked = tempfile::tempdir_in(scratch.path()).unwrap();
        let bytes = tarball(&entries);
        let limits = Limits::default();
        let result = unpack_release(bytes.as_slice(), unpacked.path(), &limits);
        // Nothing besides the destination appeared next to it.
        let beside: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().path()).collect();
        prop_assert_eq!(beside, vec![unpacked.path().to_owned()]);
        let listed = match result {
            Err(e) => {
                prop_assert!(!e.is_empty() && !e.contains('\n'), "{e:?}");
                return Ok(());
            }
            Ok(listed) => listed,
        };
        for entry in &listed {
            prop_assert!(entry.path.split('/').all(|p| !p.is_empty() && p != "." && p != ".." && !p.eq_ignore_ascii_case(".git") && p.len() <= 255), "{:?}", entry.path);
            let meta = std::fs::symlink_metadata(unpacked.path().join(&entry.path)).unwrap();
            match &entry.kind {
                LocalKind::Directory => prop_assert!(meta.is_dir()),
                LocalKind::File { size, .. } => prop_assert!(meta.is_file() && meta.len() == *size),
                LocalKind::Symlink { target } => {
                    prop_assert!(meta.file_type().is_symlink());
                    prop_assert!(!target.starts_with('/'));
                }
            }
        }
        // The same entries as a module of an environment.
        let dir = Arc::new(LocalDir::temporary(unpacked));
        let mut tree = EnvironmentTree::new(limits);
        tree.replace_with_directory("modules/m", "module m").unwrap();
        tree.add_local_tree("modules/m", &dir, &listed, &[]).unwrap();
        if tree.check().is_err() {
            return Ok(());
        }
        let out = scratch.path().join("environment");
        tree.write_into(&out, &mut ContentReader::new()).unwrap();
        let root = std::fs::canonicalize(&out).unwrap();
        for path in walk(&out) {
            if let Ok(resolved) = std::fs::canonicalize(&path) {
                prop_assert!(resolved.starts_with(&root), "{} resolves to {}", path.display(), resolved.display());
            }
        }
    }
}

/// Pathological sizes: 100,000 open parentheses, 50,000 modules on one line each, a
/// string that never closes over 100,000 lines. Refused or parsed in linear time, with
/// the line.
#[test]
fn pathological_puppetfiles() {
    let err = parse_puppetfile(&format!("mod {}", "(".repeat(100_000))).unwrap_err();
    assert_eq!((err.line, err.message.as_str()), (1, "'(' is not closed"));
    let many: String = (0..50_000)
        .map(|i| format!("mod 'a-m{i}', '1.0.0'\n"))
        .collect();
    assert_eq!(parse_puppetfile(&many).unwrap().modules.len(), 50_000);
    let open = format!("forge 'x'\nmod 'a-b', '{}", "\n".repeat(100_000));
    let err = parse_puppetfile(&open).unwrap_err();
    assert_eq!(
        (err.line, err.message.as_str()),
        (2, "string is not closed")
    );
}
