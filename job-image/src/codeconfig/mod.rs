//! Modules described by openvox-code's YAML formats instead of a Puppetfile
//! (`--code-config`), so a control repository deployed with the openvox-code tool works
//! here unchanged.
//!
//! The CodeConfig (`openvox-code.yaml`, a ConfigMap mounted as a directory) is loaded
//! once at start ([`CodeConfigModules::load`]); a configuration that cannot be loaded,
//! or that has no source for the control repository being built, fails the command
//! before any git work. Per branch, [`branch::read_branch_modules`] reads the module
//! files the source's `modulefiles` select and the lockfile from the branch's tree, and
//! [`mapping`] turns the modules into the [`crate::puppetfile::ModuleDecl`]s the rest of
//! the pipeline (resolution, trees, pins, digests) already works with. A mistake in a
//! branch's files fails only that environment, as a bad Puppetfile does.
//!
//! Branches are still chosen by `--branch`/`--exclude` (the controller narrows them by
//! the source's `branchSelector`). Static `environments` are the configuration's own:
//! the worker builds every one of them ([`statics`]), from its `ref` with its modulesets
//! and modules, and each wins over a branch environment of the same name.

pub mod branch;
pub mod files;
pub mod mapping;
pub mod statics;

use std::path::Path;

use openvox_codeconfig::{
    CodeConfig, IgnoredKey, LoadedConfig, Module, NoSource, Source, load_code_config,
};
use sha2::{Digest, Sha256};

use crate::branches::EnvironmentPlan;
use crate::forge::hex;
use files::ConfigDir;

/// A loaded CodeConfig and the source whose branches this worker builds.
#[derive(Debug, Clone)]
pub struct CodeConfigModules {
    /// The main file's name (`openvox-code.yaml`), for logs and messages.
    pub main_file: String,
    /// Every file read, the main file first.
    pub files: Vec<String>,
    pub config: CodeConfig,
    /// Index of the source in `config.sources`.
    pub source: usize,
    /// CI-runner keys the files set; they have no effect here.
    pub ignored: Vec<IgnoredKey>,
    digest: String,
}

impl CodeConfigModules {
    /// Loads the CodeConfig at `path` with its includes (read from the same directory)
    /// and picks the source of `control_url`. The error is one line for the user.
    pub fn load(path: &Path, control_url: &str) -> Result<Self, String> {
        let shown = path.display();
        let main = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("--code-config {shown}: not a file name"))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let loaded = load_code_config(&ConfigDir::new(dir), main)
            .map_err(|e| format!("--code-config {shown}: {e}"))?;
        Self::from_loaded(main, loaded, control_url)
            .map_err(|e| format!("--code-config {shown}: {e}"))
    }

    /// [`CodeConfigModules::load`] after the files are read.
    pub fn from_loaded(
        main_file: &str,
        loaded: LoadedConfig,
        control_url: &str,
    ) -> Result<Self, String> {
        let source = choose_source(&loaded.config, control_url)?;
        let digest = config_digest(&loaded.config.sources[source], &loaded.config);
        Ok(Self {
            main_file: main_file.to_owned(),
            files: loaded.files,
            config: loaded.config,
            source,
            ignored: loaded.ignored,
            digest,
        })
    }

    /// The source whose branches are built.
    pub fn source(&self) -> &Source {
        &self.config.sources[self.source]
    }

    /// Digest of everything the CodeConfig contributes to the modules of the
    /// environment `plan` (see [`config_digest`]; for a static environment also its
    /// declaration), recorded with each environment so a changed configuration is never
    /// mistaken for an unchanged environment.
    pub fn digest_for(&self, plan: &EnvironmentPlan) -> String {
        let Some(kind) = plan.declared else {
            return self.digest.clone();
        };
        let declared = self.config.environments.get(&plan.name);
        let mut text = format!(
            "{}\nstatic {} {kind:?} {}\n",
            self.digest, plan.name, plan.branch
        );
        for set in declared.iter().flat_map(|d| &d.modulesets) {
            text.push_str(&format!("moduleset {set}\n"));
            let modules = self.config.modulesets.get(set).into_iter().flatten();
            modules.for_each(|m| push_module(&mut text, m));
        }
        for module in declared.iter().flat_map(|d| &d.modules) {
            push_module(&mut text, module);
        }
        hex(&Sha256::digest(text.as_bytes()))
    }
}

/// One module's declaration as one line of a digest's text.
fn push_module(text: &mut String, m: &Module) {
    text.push_str(&format!(
        "module {:?} {:?} {:?} {} {:?} {:?}\n",
        m.name, m.git, m.reference, m.follow_branch, m.target_dir, m.install_as
    ));
}

/// The source for the control repository at `control_url` (the crate's
/// `CodeConfig::source_for`, the rule the controller uses too), or why there is none.
pub fn choose_source(config: &CodeConfig, control_url: &str) -> Result<usize, String> {
    config.source_for(control_url).map_err(|e| match e {
        NoSource::Empty => "sources: the configuration has no source".to_owned(),
        NoSource::Ambiguous(n) => format!(
            "sources: none of the {n} sources has url {control_url:?} (before or after its mirror), so it is unclear which one's modulefiles apply"
        ),
    })
}

/// What a branch's modules depend on besides the branch's own files: the source's
/// `modulefiles` (which files, in which order, which are required) and `overrides`
/// (where each module is fetched from). Hashed with a version of the mapping, so a
/// change to how modules are mapped also counts as a change.
fn config_digest(source: &Source, config: &CodeConfig) -> String {
    let mut text = String::from("openvox-code worker module files, mapping 1\n");
    for spec in &source.modulefiles {
        let required = if spec.required {
            "required"
        } else {
            "optional"
        };
        text.push_str(&format!("modulefile {required} {}\n", spec.pattern));
    }
    if let Some(base) = &config.overrides.gitmirror {
        text.push_str(&format!("gitmirror {base}\n"));
    }
    for (host, base) in &config.overrides.gitmirrors {
        text.push_str(&format!("gitmirrors {host} {base}\n"));
    }
    hex(&Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn loaded(text: &str) -> LoadedConfig {
        let files = BTreeMap::from([("openvox-code.yaml".to_owned(), text.to_owned())]);
        load_code_config(&files, "openvox-code.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    const TWO: &str = "sources:\n  - url: https://github.com/acme/control.git\n    modulefiles: [{name: modules.yaml}]\n  - url: https://git.example.com/other.git\noverrides:\n  gitmirrors:\n    github.com: https://mirror.example.com/gh\n";

    #[test]
    fn the_source_is_found_by_url_before_or_after_its_mirror() {
        let config = loaded(TWO).config;
        let cases: [(&str, Result<usize, &str>); 4] = [
            ("https://github.com/acme/control.git", Ok(0)),
            ("https://mirror.example.com/gh/acme/control.git", Ok(0)),
            ("https://git.example.com/other.git", Ok(1)),
            (
                "https://git.example.com/third.git",
                Err("none of the 2 sources"),
            ),
        ];
        for (url, want) in cases {
            match (choose_source(&config, url), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{url}"),
                (Err(e), Err(words)) => assert!(e.contains(words), "{url}: {e}"),
                (got, want) => panic!("{url}: {got:?}, expected {want:?}"),
            }
        }
        let one = loaded("sources:\n  - url: https://elsewhere.example.com/c.git\n").config;
        assert_eq!(choose_source(&one, "git://127.0.0.1/control.git"), Ok(0));
        let none = loaded("modulesets: {}\n").config;
        assert!(choose_source(&none, "x").unwrap_err().contains("no source"));
    }

    #[test]
    fn the_digest_follows_modulefiles_and_mirrors_only() {
        let digest = |text: &str| {
            CodeConfigModules::from_loaded(
                "openvox-code.yaml",
                loaded(text),
                "https://github.com/acme/control.git",
            )
            .unwrap()
            .digest_for(&EnvironmentPlan::branch(
                "production".into(),
                "production".into(),
            ))
        };
        let base = digest(TWO);
        assert_eq!(base.len(), 64);
        assert_eq!(digest(TWO), base, "the same configuration, the same digest");
        let renamed_other = TWO.replace("other.git", "renamed.git");
        assert_eq!(
            digest(&renamed_other),
            base,
            "another source does not count"
        );
        for changed in [
            TWO.replace(
                "[{name: modules.yaml}]",
                "[{name: modules.yaml}, {name: extra.yaml}]",
            ),
            TWO.replace(
                "[{name: modules.yaml}]",
                "[{name: modules.yaml, required: false}]",
            ),
            TWO.replace("mirror.example.com/gh", "mirror.example.com/github"),
            format!("{TWO}  gitmirror: https://all.example.com\n"),
        ] {
            assert_ne!(digest(&changed), base, "{changed}");
        }
    }

    #[test]
    fn a_static_environment_digest_follows_its_declaration_and_modulesets() {
        const STATICS: &str = "modulesets:\n  core: [{name: stdlib, git: https://g/stdlib.git}]\n  other: [{name: x, git: https://g/x.git}]\nenvironments:\n  pinned: {ref: v1, modulesets: [core]}\n  frozen: {ref: v2, modulesets: [other]}\n";
        let plan = EnvironmentPlan {
            name: "pinned".into(),
            branch: "v1".into(),
            declared: Some(openvox_codeconfig::RefKind::Tag),
        };
        let digest = |text: &str, plan: &EnvironmentPlan| {
            let config = format!("{TWO}{text}");
            CodeConfigModules::from_loaded(
                "openvox-code.yaml",
                loaded(&config),
                "https://github.com/acme/control.git",
            )
            .unwrap()
            .digest_for(plan)
        };
        let base = digest(STATICS, &plan);
        let branch = EnvironmentPlan::branch("pinned".into(), "pinned".into());
        assert_ne!(base, digest(STATICS, &branch), "static or not");
        let tagged_as_branch = EnvironmentPlan {
            declared: Some(openvox_codeconfig::RefKind::Branch),
            ..plan.clone()
        };
        assert_ne!(base, digest(STATICS, &tagged_as_branch), "what the ref is");
        let unrelated = STATICS.replace("https://g/x.git", "https://g/y.git");
        assert_eq!(base, digest(&unrelated, &plan), "another environment's set");
        for changed in [
            STATICS.replace("stdlib.git}", "stdlib.git, ref: v9}"),
            STATICS.replace(
                "ref: v1, modulesets: [core]",
                "ref: v1, modulesets: [core, other]",
            ),
            STATICS.replace(
                "modulesets: [core]}",
                "modulesets: [core], modules: [{name: y, git: https://g/y.git}]}",
            ),
        ] {
            assert_ne!(base, digest(&changed, &plan), "{changed}");
        }
    }
}
