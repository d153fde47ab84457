//! openvox-code modules as the worker's module declarations: pure, so what a module
//! means is decided in one place and tested without git.
//!
//! | openvox-code                         | [`ModuleDecl`]                                        |
//! |--------------------------------------|-------------------------------------------------------|
//! | `install_as` (default `name`)        | `name`, the directory name                            |
//! | `target_dir` (default `modules`)     | `path` = `<target_dir>/<install_as>`                  |
//! | `git`                                | `url` = [`mirror`]`(git, overrides)`                  |
//! | lockfile entry (same `git`)          | [`GitWant::Commit`]`(sha)`                            |
//! | `follow_branch`                      | [`GitWant::FollowBranch`]`(ref)`                      |
//! | `ref`                                | [`GitWant::Ref`]`(ref)`: a branch, tag or commit id   |
//! | no `ref`                             | [`GitWant::Head`]                                     |
//! | (always)                             | `exclude_spec` = true, as r10k's default              |
//!
//! The order of the wants is [`resolve_want`]'s. Whether the repository has a branch
//! named like the environment is left to the resolver, which lists the repository
//! anyway ([`GitWant::FollowBranch`] falls back to `ref`, then `HEAD`, exactly as
//! `resolve_want` does when the branch is missing); the recorded declaration then
//! keeps saying "follow the branch", so a branch created later is noticed.
//!
//! openvox-code names environments after branches unchanged, so the environment a
//! lockfile entry and `follow_branch` refer to is the control repository's branch (for
//! a static environment, its name).

use openvox_codeconfig::{
    Lockfile, Module, ModuleFile, Overrides, Resolution, Want, mirror, resolve_want,
};

use crate::puppetfile::{GitWant, ModuleDecl, ModuleSource};

/// The declaration of `module`, declared in `file`, for the environment of control
/// branch `branch`, with the lockfile of that branch (if any) and the CodeConfig's
/// `overrides`; and the resolution rule that applied (for the log).
pub fn module_decl(
    module: &Module,
    file: &str,
    branch: &str,
    lockfile: Option<&Lockfile>,
    overrides: &Overrides,
) -> (ModuleDecl, Resolution) {
    let locked = lockfile.and_then(|l| l.module(branch, &module.name));
    // "The branch exists" is answered later, against the repository's listing.
    let resolution = resolve_want(module, branch, locked, |_| true);
    let want = match &resolution.want {
        Want::Commit(sha) => GitWant::Commit(sha.clone()),
        Want::Branch(_) => GitWant::FollowBranch(module.reference.clone()),
        Want::Ref(reference) => GitWant::Ref(reference.clone()),
        Want::Head => GitWant::Head,
    };
    let decl = ModuleDecl {
        line: 0,
        file: Some(file.to_owned()),
        name: module.install_as.clone(),
        source: ModuleSource::Git {
            url: mirror(&module.git, overrides),
            want,
            default_branch: None,
        },
        path: module.install_path(),
        exclude_spec: true,
    };
    (decl, resolution)
}

/// The declarations of an environment's `modules` (from
/// [`openvox_codeconfig::environment_modules`]), each named after the last of `files`
/// (path and parsed file, in the order applied) that put it there, since later files
/// override earlier ones, or else after `config_file` (a static environment's modules
/// and modulesets). Two modules installed at one path are an error: one would silently
/// replace the other. `branch` is the name the lockfile and `follow_branch` know the
/// environment by.
pub fn module_decls(
    modules: &[Module],
    files: &[(String, ModuleFile)],
    config_file: &str,
    branch: &str,
    lockfile: Option<&Lockfile>,
    overrides: &Overrides,
) -> Result<Vec<(ModuleDecl, Resolution)>, String> {
    let mut decls: Vec<(ModuleDecl, Resolution)> = Vec::with_capacity(modules.len());
    for module in modules {
        let file = files
            .iter()
            .rev()
            .find(|(_, f)| f.modules.iter().any(|m| m.name == module.name))
            .map_or(config_file, |(path, _)| path.as_str());
        let (decl, resolution) = module_decl(module, file, branch, lockfile, overrides);
        if let Some((other, _)) = decls.iter().find(|(d, _)| d.path == decl.path) {
            return Err(format!(
                "modules {:?} ({}) and {:?} ({file}) are both installed at {:?}",
                other_name(modules, other),
                other.short_location(),
                module.name,
                decl.path
            ));
        }
        decls.push((decl, resolution));
    }
    Ok(decls)
}

/// The openvox-code name of the module declared as `decl` (names are unique).
fn other_name<'a>(modules: &'a [Module], decl: &ModuleDecl) -> &'a str {
    modules
        .iter()
        .find(|m| m.install_path() == decl.path)
        .map_or("", |m| m.name.as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openvox_codeconfig::{Reason, Skipped};

    use super::*;

    const SHA_OLD: &str = "1111111111111111111111111111111111111111";

    fn module(yaml: &str) -> Module {
        let text = format!("modules:\n  - {}\n", yaml.replace('\n', "\n    "));
        ModuleFile::parse("m.yaml", &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .modules
            .remove(0)
    }

    fn lockfile() -> Lockfile {
        Lockfile::parse(
            "openvox-code.lock",
            &format!(
                "version: 1\nenvironments:\n  production:\n    ref: production\n    modules:\n      - name: stdlib\n        git: https://github.com/puppetlabs/puppetlabs-stdlib.git\n        ref: main\n        sha: {SHA_OLD}\n      - name: moved\n        git: https://github.com/old/moved.git\n        sha: {SHA_OLD}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn mirrors() -> Overrides {
        Overrides {
            gitmirror: None,
            gitmirrors: BTreeMap::from([(
                "github.com".to_owned(),
                "git://127.0.0.1:9418/gh".to_owned(),
            )]),
        }
    }

    /// (name, path, url, want, reason) of the declaration.
    type Expected = (&'static str, &'static str, &'static str, GitWant, Reason);
    /// (module YAML, branch, lockfile, overrides) and what it maps to.
    type Case<'a> = (&'a str, &'a str, Option<&'a Lockfile>, Overrides, Expected);

    #[test]
    fn modules_map_to_declarations() {
        let lock = lockfile();
        let stdlib =
            "name: stdlib\ngit: https://github.com/puppetlabs/puppetlabs-stdlib.git\nref: main";
        // (module, branch, lockfile, overrides) → (name, path, url, want, reason)
        let cases: Vec<Case<'_>> = vec![
            (
                stdlib,
                "production",
                Some(&lock),
                Overrides::default(),
                (
                    "stdlib",
                    "modules/stdlib",
                    "https://github.com/puppetlabs/puppetlabs-stdlib.git",
                    GitWant::Commit(SHA_OLD.into()),
                    Reason::Lockfile,
                ),
            ),
            (
                // The lockfile pins per environment: another branch is not pinned.
                stdlib,
                "staging",
                Some(&lock),
                mirrors(),
                (
                    "stdlib",
                    "modules/stdlib",
                    "git://127.0.0.1:9418/gh/puppetlabs/puppetlabs-stdlib.git",
                    GitWant::Ref("main".into()),
                    Reason::Ref,
                ),
            ),
            (
                "name: app\ngit: git@github.com:acme/app.git\nref: v1.2.0\ntarget_dir: site\ninstall_as: application",
                "production",
                None,
                mirrors(),
                (
                    "application",
                    "site/application",
                    "git://127.0.0.1:9418/gh/acme/app.git",
                    GitWant::Ref("v1.2.0".into()),
                    Reason::Ref,
                ),
            ),
            (
                "name: profile\ngit: https://git.example.com/profile.git\nref: main\nfollow_branch: true\ntarget_dir: site/deep",
                "feature_x",
                Some(&lock),
                mirrors(),
                (
                    "profile",
                    "site/deep/profile",
                    "https://git.example.com/profile.git",
                    GitWant::FollowBranch(Some("main".into())),
                    Reason::FollowBranch,
                ),
            ),
            (
                "name: hiera\ngit: https://git.example.com/hiera.git\nfollow_branch: true",
                "production",
                None,
                Overrides::default(),
                (
                    "hiera",
                    "modules/hiera",
                    "https://git.example.com/hiera.git",
                    GitWant::FollowBranch(None),
                    Reason::FollowBranch,
                ),
            ),
            (
                "name: head\ngit: https://git.example.com/head.git\nref: ''",
                "production",
                Some(&lock),
                Overrides {
                    gitmirror: Some("https://all.example.com/".into()),
                    gitmirrors: BTreeMap::new(),
                },
                (
                    "head",
                    "modules/head",
                    "https://all.example.com/head.git",
                    GitWant::Head,
                    Reason::Head,
                ),
            ),
        ];
        for (yaml, branch, lock, overrides, (name, path, url, want, reason)) in cases {
            let (decl, resolution) = module_decl(&module(yaml), "m.yaml", branch, lock, &overrides);
            let expected = ModuleDecl {
                line: 0,
                file: Some("m.yaml".into()),
                name: name.into(),
                source: ModuleSource::Git {
                    url: url.into(),
                    want,
                    default_branch: None,
                },
                path: path.into(),
                exclude_spec: true,
            };
            assert_eq!(decl, expected, "{yaml} in {branch}");
            assert_eq!(resolution.reason, reason, "{yaml} in {branch}");
            assert_eq!(decl.location(), "m.yaml");
        }
    }

    #[test]
    fn a_lock_for_another_repository_no_longer_pins() {
        let lock = lockfile();
        let moved = module("name: moved\ngit: https://github.com/new/moved.git\nref: v2");
        let (decl, resolution) = module_decl(
            &moved,
            "m.yaml",
            "production",
            Some(&lock),
            &Overrides::default(),
        );
        let ModuleSource::Git { want, .. } = &decl.source else {
            panic!("git expected");
        };
        assert_eq!(*want, GitWant::Ref("v2".into()));
        assert_eq!(
            resolution.skipped,
            [Skipped::StaleLock {
                locked_git: "https://github.com/old/moved.git".into()
            }]
        );
    }

    fn file(path: &str, yaml: &str) -> (String, ModuleFile) {
        (
            path.to_owned(),
            ModuleFile::parse(path, yaml).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn declarations_name_the_last_file_that_put_the_module() {
        let files = [
            file(
                "modules/base.yaml",
                "modules:\n  - name: a\n    git: https://g/a.git\n  - name: b\n    git: https://g/b.git\n",
            ),
            file(
                "modules/team.yaml",
                "modules:\n  - name: b\n    git: https://g/b2.git\n",
            ),
        ];
        let modules = openvox_codeconfig::environment_modules(
            &BTreeMap::new(),
            None,
            &[files[0].1.clone(), files[1].1.clone()],
        )
        .unwrap();
        let decls = module_decls(
            &modules,
            &files,
            "openvox-code.yaml",
            "production",
            None,
            &Overrides::default(),
        )
        .unwrap();
        let located: Vec<(String, String)> = decls
            .iter()
            .map(|(d, _)| (d.name.clone(), d.location()))
            .collect();
        assert_eq!(
            located,
            [
                ("a".to_owned(), "modules/base.yaml".to_owned()),
                ("b".to_owned(), "modules/team.yaml".to_owned())
            ]
        );
    }

    #[test]
    fn two_modules_at_one_path_are_refused() {
        let files = [file(
            "modules.yaml",
            "modules:\n  - name: a\n    git: https://g/a.git\n    install_as: x\n  - name: b\n    git: https://g/b.git\n    install_as: x\n",
        )];
        let modules = files[0].1.modules.clone();
        let e = module_decls(
            &modules,
            &files,
            "openvox-code.yaml",
            "production",
            None,
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "modules \"a\" (modules.yaml) and \"b\" (modules.yaml) are both installed at \"modules/x\""
        );
    }
}
