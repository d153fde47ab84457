//! How an environment's modules were declared and what they resolved to, recorded on
//! its image layer (annotation `org.voxpupuli.openvox-code.pins`). With it, the next
//! build can tell from the branch head and cheap lookups alone that the environment is
//! unchanged, and take the layer without fetching the branch (see [`crate::unchanged`]).
//!
//! The record holds the Puppetfile's declarations as parsed (a commit id of the control
//! repository fixes them) and the resolved [`ModuleRecord`]s, which are part of the
//! layer's reuse key: a record that does not reproduce the key is not trusted. Modules
//! described by openvox-code's module files are recorded the same way; their
//! declarations also depend on the CodeConfig, whose digest is recorded too
//! ([`Pins::code_config`]).

use openvox_crds::codesource::{FloatingForge, FloatingGit, FloatingModule, ModuleRecord};
use serde::{Deserialize, Serialize};

use crate::git::mask_text;
use crate::puppetfile::resolve::candidate_refs;
use crate::puppetfile::{ForgeVersion, GitWant, ModuleDecl, ModuleSource};

/// Version of this record's format; a record of another version is not used.
pub const PINS_FORMAT: u32 = 1;

/// The modules of one environment, declared and resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    pub format: u32,
    /// The Puppetfile's `forge` line, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub puppetfile_forge: Option<String>,
    /// Forge base URL the Forge modules came from (only when there are some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<String>,
    /// Digest of what the CodeConfig contributed to the declarations (see
    /// [`crate::codeconfig::CodeConfigModules::digest`]); `None` for a Puppetfile. The
    /// control repository's commit does not fix those declarations alone, so an
    /// environment recorded with another digest is fetched again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_config: Option<String>,
    /// Modules in install-path order (the order of the environment's inputs).
    pub modules: Vec<Pin>,
}

/// One module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub declared: Declared,
    pub resolved: ModuleRecord,
    /// Where the module lies in the environment (`modules/stdlib`): with
    /// `exclude_spec`, what lets the next build take a git module's files from this
    /// layer instead of fetching them again (see [`crate::module_reuse`]). Absent in
    /// records of older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether `spec/` was left out of the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_spec: Option<bool>,
}

/// A module as the Puppetfile declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Declared {
    /// A Forge release: an exact version, or the current one (`:latest`, no version).
    Forge { latest: bool },
    /// A git repository at `want`.
    Git {
        url: String,
        want: Want,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_branch: Option<String>,
    },
}

/// [`GitWant`] in the record's spelling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Want {
    Ref(String),
    Tag(String),
    Commit(String),
    Branch(String),
    ControlBranch,
    Head,
    FollowBranch(Option<String>),
}

impl From<&GitWant> for Want {
    fn from(want: &GitWant) -> Self {
        match want {
            GitWant::Ref(r) => Want::Ref(r.clone()),
            GitWant::Tag(t) => Want::Tag(t.clone()),
            GitWant::Commit(c) => Want::Commit(c.clone()),
            GitWant::Branch(b) => Want::Branch(b.clone()),
            GitWant::ControlBranch => Want::ControlBranch,
            GitWant::Head => Want::Head,
            GitWant::FollowBranch(f) => Want::FollowBranch(f.clone()),
        }
    }
}

impl From<&Want> for GitWant {
    fn from(want: &Want) -> Self {
        match want {
            Want::Ref(r) => GitWant::Ref(r.clone()),
            Want::Tag(t) => GitWant::Tag(t.clone()),
            Want::Commit(c) => GitWant::Commit(c.clone()),
            Want::Branch(b) => GitWant::Branch(b.clone()),
            Want::ControlBranch => GitWant::ControlBranch,
            Want::Head => GitWant::Head,
            Want::FollowBranch(f) => GitWant::FollowBranch(f.clone()),
        }
    }
}

impl Pins {
    /// The record of `modules` (declaration and resolution, in install-path order) of a
    /// Puppetfile with `forge` line `puppetfile_forge`, whose Forge modules come from
    /// `forge_base`, or of module files under a CodeConfig of digest `code_config`.
    /// `None` when a URL in it carries credentials: annotations are readable by everyone
    /// who can pull the image, so such an environment is simply always fetched.
    pub fn new(
        puppetfile_forge: Option<&str>,
        forge_base: &str,
        code_config: Option<&str>,
        modules: &[(&ModuleDecl, &ModuleRecord)],
    ) -> Option<Self> {
        let mut any_forge = false;
        let modules = modules
            .iter()
            .map(|(decl, resolved)| Pin {
                declared: match &decl.source {
                    ModuleSource::Forge { version, .. } => {
                        any_forge = true;
                        Declared::Forge {
                            latest: *version == ForgeVersion::Latest,
                        }
                    }
                    ModuleSource::Git {
                        url,
                        want,
                        default_branch,
                    } => Declared::Git {
                        url: url.clone(),
                        want: want.into(),
                        default_branch: default_branch.clone(),
                    },
                },
                resolved: (*resolved).clone(),
                path: Some(decl.path.clone()),
                exclude_spec: Some(decl.exclude_spec),
            })
            .collect();
        let pins = Self {
            format: PINS_FORMAT,
            puppetfile_forge: puppetfile_forge.map(str::to_owned),
            forge: any_forge.then(|| forge_base.to_owned()),
            code_config: code_config.map(str::to_owned),
            modules,
        };
        let text = pins.to_annotation();
        (mask_text(&text) == text).then_some(pins)
    }

    /// The annotation value: compact JSON, the same bytes for the same record.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an annotation written by [`Pins::to_annotation`] of this format; anything
    /// else (another format, unknown fields, a non-canonical spelling) is refused.
    pub fn from_annotation(text: &str) -> Result<Self, String> {
        let pins: Pins = serde_json::from_str(text).map_err(|e| format!("pins annotation: {e}"))?;
        if pins.format != PINS_FORMAT {
            return Err(format!(
                "pins annotation of format {} (this worker writes {PINS_FORMAT})",
                pins.format
            ));
        }
        if pins.to_annotation() != text {
            return Err("pins annotation is not in canonical form".into());
        }
        Ok(pins)
    }

    /// The resolved modules, as in the environment's inputs.
    pub fn records(&self) -> Vec<ModuleRecord> {
        self.modules.iter().map(|p| p.resolved.clone()).collect()
    }

    /// The modules that can move without the control repository moving, for an
    /// environment of branch `control_branch`: git modules that follow a ref (with the
    /// refs resolution picks from) and Forge modules without a pinned version.
    pub fn floating(&self, control_branch: &str) -> Vec<FloatingModule> {
        self.modules
            .iter()
            .filter_map(|pin| {
                let name = pin.resolved.name.clone();
                match &pin.declared {
                    Declared::Git {
                        url,
                        want,
                        default_branch,
                    } => {
                        let refs = candidate_refs(
                            &GitWant::from(want),
                            default_branch.as_deref(),
                            control_branch,
                        )?;
                        Some(FloatingModule {
                            name,
                            git: Some(FloatingGit {
                                url: url.clone(),
                                refs,
                                commit: pin.resolved.version.clone(),
                            }),
                            forge: None,
                        })
                    }
                    Declared::Forge { latest: true } => Some(FloatingModule {
                        name,
                        git: None,
                        forge: Some(FloatingForge {
                            base: self.forge.clone()?,
                            slug: pin.resolved.source.clone(),
                            version: pin.resolved.version.clone(),
                        }),
                    }),
                    Declared::Forge { latest: false } => None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::puppetfile::parse_puppetfile;

    fn modules(puppetfile: &str) -> Vec<(ModuleDecl, ModuleRecord)> {
        parse_puppetfile(puppetfile)
            .unwrap()
            .modules
            .into_iter()
            .map(|d| {
                let r = ModuleRecord {
                    name: d.name.clone(),
                    source: "s".into(),
                    version: "1".into(),
                    checksum: None,
                };
                (d, r)
            })
            .collect()
    }

    fn pins(forge_line: Option<&str>, puppetfile: &str) -> Option<Pins> {
        let modules = modules(puppetfile);
        let refs: Vec<(&ModuleDecl, &ModuleRecord)> = modules.iter().map(|(d, r)| (d, r)).collect();
        Pins::new(forge_line, "https://forge.example", None, &refs)
    }

    #[test]
    fn records_round_trip_and_refuse_other_spellings() {
        let pins = pins(
            None,
            "mod 'puppetlabs-stdlib', '9.6.0'\nmod 'a-b', :latest\nmod 'x', :git => 'https://git.example/x.git', :branch => :control_branch, :default_branch => 'main'\nmod 'y', :git => 'https://git.example/y.git', :tag => 'v1'",
        )
        .unwrap();
        assert_eq!(pins.forge.as_deref(), Some("https://forge.example"));
        assert_eq!(pins.modules[1].declared, Declared::Forge { latest: true });
        assert_eq!(
            pins.modules[2].declared,
            Declared::Git {
                url: "https://git.example/x.git".into(),
                want: Want::ControlBranch,
                default_branch: Some("main".into())
            }
        );
        let text = pins.to_annotation();
        assert_eq!(Pins::from_annotation(&text).unwrap(), pins);
        let spaced = text.replacen(':', ": ", 1);
        assert!(Pins::from_annotation(&spaced).is_err(), "not canonical");
        let other_format = text.replacen("\"format\":1", "\"format\":2", 1);
        assert!(Pins::from_annotation(&other_format).is_err());
        let extra = text.replacen('{', "{\"extra\":1,", 1);
        assert!(Pins::from_annotation(&extra).is_err());
    }

    #[test]
    fn floating_modules_are_the_ones_that_can_move() {
        let pins = pins(
            None,
            "mod 'puppetlabs-stdlib', '9.6.0'\nmod 'a-b', :latest\n\
             mod 'x', :git => 'https://git.example/x.git', :branch => :control_branch, :default_branch => 'main'\n\
             mod 'y', :git => 'https://git.example/y.git', :tag => 'v1'\n\
             mod 'z', :git => 'https://git.example/z.git', :commit => '0123456789012345678901234567890123456789'",
        )
        .unwrap();
        let floating = pins.floating("production");
        let names: Vec<&str> = floating.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["b", "x", "y"],
            "the exact version and the commit do not float"
        );
        let forge = floating[0].forge.as_ref().unwrap();
        assert_eq!(
            (
                forge.base.as_str(),
                forge.slug.as_str(),
                forge.version.as_str()
            ),
            ("https://forge.example", "s", "1")
        );
        let x = floating[1].git.as_ref().unwrap();
        assert_eq!(x.url, "https://git.example/x.git");
        assert_eq!(x.refs, ["refs/heads/production", "refs/heads/main"]);
        assert_eq!(floating[2].git.as_ref().unwrap().refs, ["refs/tags/v1"]);
    }

    #[test]
    fn openvox_code_wants_round_trip_and_float() {
        let module = |name: &str, want: Want| Pin {
            declared: Declared::Git {
                url: format!("git://git.example/{name}.git"),
                want,
                default_branch: None,
            },
            resolved: ModuleRecord {
                name: name.into(),
                source: format!("git://git.example/{name}.git"),
                version: "c".repeat(40),
                checksum: None,
            },
            path: None,
            exclude_spec: None,
        };
        let pins = Pins {
            format: PINS_FORMAT,
            puppetfile_forge: None,
            forge: None,
            code_config: Some("d".repeat(64)),
            modules: vec![
                module("head", Want::Head),
                module("follow", Want::FollowBranch(Some("main".into()))),
                module("follow_head", Want::FollowBranch(None)),
                module("follow_commit", Want::FollowBranch(Some("abc1234".into()))),
            ],
        };
        let text = pins.to_annotation();
        assert!(
            text.contains(r#""want":"head""#) && text.contains(r#""follow_branch":null"#),
            "{text}"
        );
        assert_eq!(Pins::from_annotation(&text).unwrap(), pins);
        let refs: Vec<(String, Vec<String>)> = pins
            .floating("production")
            .into_iter()
            .map(|f| (f.name, f.git.unwrap().refs))
            .collect();
        let strings = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            refs,
            [
                ("head".to_owned(), strings(&["HEAD"])),
                (
                    "follow".to_owned(),
                    strings(&["refs/heads/production", "refs/heads/main", "refs/tags/main"])
                ),
                (
                    "follow_head".to_owned(),
                    strings(&["refs/heads/production", "HEAD"])
                ),
            ],
            "a commit fallback does not float"
        );
    }

    #[test]
    fn no_forge_base_without_forge_modules() {
        let pins = pins(
            Some("https://forge.example"),
            "mod 'x', :git => 'https://git.example/x.git', :commit => 'abc1234'",
        )
        .unwrap();
        assert_eq!(pins.forge, None);
        assert_eq!(
            pins.puppetfile_forge.as_deref(),
            Some("https://forge.example")
        );
    }

    #[test]
    fn urls_with_credentials_are_never_recorded() {
        for url in [
            "https://user:token@git.example/x.git",
            "https://token@git.example/x.git",
        ] {
            let puppetfile = format!("mod 'x', :git => '{url}', :branch => 'main'");
            assert!(pins(None, &puppetfile).is_none(), "{url}");
        }
        assert!(
            pins(
                None,
                "mod 'x', :git => 'git@git.example:x.git', :branch => 'main'"
            )
            .is_some(),
            "an ssh user is not a secret"
        );
    }
}
