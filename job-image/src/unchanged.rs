//! Whether an environment is unchanged since the previous image, decided before its
//! branch is fetched: the branch head (from the listing) must be the commit its layer
//! was built from, and every module must still resolve to what the layer recorded.
//!
//! A commit of the control repository fixes the Puppetfile (or the module files and
//! lockfile, with `--code-config`; the CodeConfig's part is compared by digest), so
//! only the modules can move. Exact Forge versions (Forge releases are immutable) and full commit ids are
//! fixed; everything else is checked again: branches, `:control_branch`, tags (tags
//! can be moved) and `:ref` against a listing of the module repository, `:latest` with
//! one Forge lookup. These are cheap (no object is fetched) and shared across
//! environments.
//!
//! The decision is pure ([`decide`], [`git_check_holds`], [`forge_check_holds`]);
//! `environments` runs the lookups. Whenever anything is unclear the answer is "fetch":
//! a wrong reuse would serve stale code, a needless fetch only costs time.

use std::str::FromStr;

use crate::forge::ForgeRelease;
use crate::git::RemoteRef;
use crate::image::annotations;
use crate::image::codec::Codec;
use crate::image::config::rfc3339;
use crate::image::reuse::{PreviousLayer, inputs_key};
use crate::inputs::EnvironmentInputs;
use crate::pins::{Declared, Pins};
use crate::puppetfile::GitWant;
use crate::puppetfile::resolve::{Picked, first_tip_with_prefix, forge_base, pick_ref};

/// What the previous image says about one environment, checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEnvironment {
    /// Name, branch, commit and modules the layer was built from.
    pub inputs: EnvironmentInputs,
    /// Commit time of that commit (seconds since the epoch).
    pub commit_time: i64,
    pub pins: Pins,
}

impl RecordedEnvironment {
    /// Reads a layer's annotations. Refused unless they reproduce the layer's reuse key
    /// exactly, so a layer is only ever reused for the inputs it was built from.
    pub fn from_layer(layer: &PreviousLayer) -> Result<Self, String> {
        let pins_text = layer.descriptor.annotations.get(annotations::PINS).ok_or(
            "no pins annotation (built by an older worker, or with credentials in a module URL)",
        )?;
        let pins = Pins::from_annotation(pins_text)?;
        let (branch, commit) = layer.revision.split_once("@sha1:").ok_or_else(|| {
            format!(
                "revision {:?} is not <branch>@sha1:<commit>",
                layer.revision
            )
        })?;
        if branch != layer.branch
            || commit.len() != 40
            || !commit
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(format!(
                "revision {:?} does not match the layer",
                layer.revision
            ));
        }
        let commit_time = jiff::Timestamp::from_str(&layer.created)
            .map_err(|e| format!("created {:?}: {e}", layer.created))?
            .as_second();
        if rfc3339(commit_time) != layer.created {
            return Err(format!(
                "created {:?} is not in the written form",
                layer.created
            ));
        }
        let inputs = EnvironmentInputs {
            name: layer.environment.clone(),
            branch: branch.to_owned(),
            follows: None,
            commit: commit.to_owned(),
            code_config: pins.code_config.clone(),
            modules: pins.records(),
        };
        let codec = Codec::of_media_type(&layer.descriptor.media_type)
            .ok_or_else(|| format!("media type {}", layer.descriptor.media_type))?;
        if inputs_key(&inputs, commit_time, codec) != layer.inputs_key {
            return Err("its annotations do not reproduce its reuse key".into());
        }
        Ok(Self {
            inputs,
            commit_time,
            pins,
        })
    }
}

/// A lookup whose answer must match the record for the environment to be unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A git module: list `url`, pick `want` as the resolver does, expect `commit`.
    Git {
        module: String,
        url: String,
        want: GitWant,
        default_branch: Option<String>,
        control_branch: String,
        commit: String,
    },
    /// A `:latest` Forge module: its current release must still be `version` with
    /// `checksum`.
    ForgeCurrent {
        module: String,
        base: String,
        slug: String,
        version: String,
        checksum: Option<String>,
    },
}

/// The verdict before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Unchanged if every check holds (none: unchanged outright).
    Unchanged(Vec<Check>),
    /// Must be fetched, for this reason (for the log).
    Fetch(String),
}

/// Decides for an environment whose branch `branch` has head `head` now, with the
/// Forge configured at `configured_forge` and modules described by the Puppetfile
/// (`code_config` `None`) or by module files under a CodeConfig of that digest.
/// `follows` is the branch name `:control_branch` and `follow_branch` modules follow
/// (`branch`, except for a CodeConfig's static environment: see
/// [`crate::branches::EnvironmentPlan::follows`]).
pub fn decide(
    recorded: &RecordedEnvironment,
    branch: &str,
    follows: &str,
    head: &str,
    configured_forge: &str,
    code_config: Option<&str>,
) -> Decision {
    let inputs = &recorded.inputs;
    if inputs.branch != branch {
        return Decision::Fetch(format!("built from branch {:?} before", inputs.branch));
    }
    if !inputs.commit.eq_ignore_ascii_case(head) {
        return Decision::Fetch(format!("new commit {}", &head[..head.len().min(12)]));
    }
    let pins = &recorded.pins;
    // The commit fixes the Puppetfile and the module files, not the CodeConfig that
    // says which module files to read and which mirrors to use.
    if pins.code_config.as_deref() != code_config {
        let reason = match (&pins.code_config, code_config) {
            (None, _) => "modules were described by the Puppetfile before",
            (_, None) => "modules were described by a CodeConfig before",
            _ => "the CodeConfig changed",
        };
        return Decision::Fetch(reason.into());
    }
    let base = forge_base(pins.puppetfile_forge.as_deref(), configured_forge);
    if let Some(recorded_base) = &pins.forge
        && *recorded_base != base
    {
        return Decision::Fetch("the Forge URL changed".into());
    }
    let mut checks = Vec::new();
    for pin in &pins.modules {
        let resolved = &pin.resolved;
        match &pin.declared {
            Declared::Forge { latest: false } => {}
            Declared::Forge { latest: true } => checks.push(Check::ForgeCurrent {
                module: resolved.name.clone(),
                base: base.clone(),
                slug: resolved.source.clone(),
                version: resolved.version.clone(),
                checksum: resolved.checksum.clone(),
            }),
            Declared::Git {
                url,
                want,
                default_branch,
            } => {
                let want = GitWant::from(want);
                if let GitWant::Commit(id) = &want
                    && id.len() == 40
                {
                    // A full commit id is fetched as it is: it cannot move.
                    if !id.eq_ignore_ascii_case(&resolved.version) {
                        return Decision::Fetch(format!(
                            "module {} recorded at another commit",
                            resolved.name
                        ));
                    }
                    continue;
                }
                checks.push(Check::Git {
                    module: resolved.name.clone(),
                    url: url.clone(),
                    want,
                    default_branch: default_branch.clone(),
                    control_branch: follows.to_owned(),
                    commit: resolved.version.clone(),
                });
            }
        }
    }
    Decision::Unchanged(checks)
}

/// Whether a git check holds, given the listed branches and tags of its repository.
pub fn git_check_holds(check: &Check, refs: &[RemoteRef]) -> bool {
    let Check::Git {
        url,
        want,
        default_branch,
        control_branch,
        commit,
        ..
    } = check
    else {
        return false;
    };
    match pick_ref(refs, url, want, default_branch.as_deref(), control_branch) {
        Err(_) => false,
        // An annotated tag listed without its peeled commit names the tag object, not
        // the commit: no match, so it is fetched. Safe, only slower.
        Ok(Picked::Ref(found)) => same_commit(found, commit),
        Ok(Picked::Commit(prefix)) => {
            if !commit.starts_with(&prefix) {
                return false;
            }
            // The resolver takes a matching tip first, and only otherwise searches
            // history, where the recorded commit (an immutable id) still is.
            match first_tip_with_prefix(refs, &prefix) {
                Some(tip) => same_commit(tip, commit),
                None => true,
            }
        }
    }
}

/// Whether a listed ref designates the commit with hex id `commit`.
fn same_commit(listed: &RemoteRef, commit: &str) -> bool {
    gix::ObjectId::from_hex(commit.as_bytes()).is_ok_and(|id| listed.commit() == id)
}

/// Whether a `:latest` check holds, given the Forge's current release.
pub fn forge_check_holds(check: &Check, current: &ForgeRelease) -> bool {
    let Check::ForgeCurrent {
        version, checksum, ..
    } = check
    else {
        return false;
    };
    current.version == *version
        && checksum.as_deref() == Some(format!("sha256:{}", current.sha256).as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openvox_crds::codesource::ModuleRecord;

    use super::*;
    use crate::image::manifest::Descriptor;
    use crate::image::media_types;
    use crate::pins::{Pin, Want};

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";
    const FORGE: &str = "https://forge.example";

    fn git_pin(name: &str, want: Want, commit: &str) -> Pin {
        Pin {
            declared: Declared::Git {
                url: format!("https://git.example/{name}.git"),
                want,
                default_branch: None,
            },
            resolved: ModuleRecord {
                name: name.into(),
                source: format!("https://git.example/{name}.git"),
                version: commit.into(),
                checksum: None,
            },
            path: None,
            exclude_spec: None,
        }
    }

    fn forge_pin(name: &str, latest: bool) -> Pin {
        Pin {
            declared: Declared::Forge { latest },
            resolved: ModuleRecord {
                name: name.into(),
                source: format!("puppetlabs-{name}"),
                version: "9.6.0".into(),
                checksum: Some("sha256:ab".into()),
            },
            path: None,
            exclude_spec: None,
        }
    }

    fn recorded(modules: Vec<Pin>) -> RecordedEnvironment {
        let any_forge = modules
            .iter()
            .any(|p| matches!(p.declared, Declared::Forge { .. }));
        let pins = Pins {
            format: crate::pins::PINS_FORMAT,
            puppetfile_forge: None,
            forge: any_forge.then(|| FORGE.to_owned()),
            code_config: None,
            modules,
        };
        RecordedEnvironment {
            inputs: EnvironmentInputs {
                name: "production".into(),
                branch: "production".into(),
                follows: None,
                code_config: pins.code_config.clone(),
                commit: C1.into(),
                modules: pins.records(),
            },
            commit_time: 1_700_000_000,
            pins,
        }
    }

    fn listed(name: &str, commit: &str) -> RemoteRef {
        RemoteRef {
            name: name.into(),
            target: gix::ObjectId::from_hex(commit.as_bytes()).unwrap(),
            peeled: None,
        }
    }

    #[test]
    fn a_new_commit_or_another_branch_is_fetched() {
        let r = recorded(vec![forge_pin("stdlib", false)]);
        assert!(
            matches!(decide(&r, "production", "production", C2, FORGE, None), Decision::Fetch(m) if m.contains("new commit"))
        );
        assert!(matches!(
            decide(&r, "other", "other", C1, FORGE, None),
            Decision::Fetch(_)
        ));
        assert_eq!(
            decide(
                &r,
                "production",
                "production",
                &C1.to_uppercase(),
                FORGE,
                None
            ),
            Decision::Unchanged(Vec::new())
        );
    }

    #[test]
    fn exact_forge_versions_and_full_commits_need_no_lookup() {
        let r = recorded(vec![
            forge_pin("stdlib", false),
            git_pin("site", Want::Commit(C2.into()), C2),
        ]);
        assert_eq!(
            decide(&r, "production", "production", C1, FORGE, None),
            Decision::Unchanged(Vec::new())
        );
        // A record that contradicts its own pin is not trusted.
        let r = recorded(vec![git_pin("site", Want::Commit(C2.into()), C1)]);
        assert!(matches!(
            decide(&r, "production", "production", C1, FORGE, None),
            Decision::Fetch(_)
        ));
    }

    #[test]
    fn a_changed_forge_url_fetches_environments_with_forge_modules_only() {
        let with_forge = recorded(vec![forge_pin("stdlib", false)]);
        assert!(matches!(
            decide(&with_forge, "production", "production", C1, "https://mirror.example", None),
            Decision::Fetch(m) if m.contains("Forge URL")
        ));
        let git_only = recorded(vec![git_pin("site", Want::Commit(C2.into()), C2)]);
        assert_eq!(
            decide(
                &git_only,
                "production",
                "production",
                C1,
                "https://mirror.example",
                None
            ),
            Decision::Unchanged(Vec::new())
        );
    }

    #[test]
    fn floating_refs_and_tags_are_checked() {
        let r = recorded(vec![
            git_pin("a", Want::Branch("main".into()), C2),
            git_pin("b", Want::ControlBranch, C2),
            git_pin("c", Want::Tag("v1".into()), C2),
            git_pin("d", Want::Ref("v1".into()), C2),
            git_pin("e", Want::Commit("2222222".into()), C2),
            forge_pin("f", true),
        ]);
        let Decision::Unchanged(checks) = decide(&r, "production", "production", C1, FORGE, None)
        else {
            panic!("unchanged with checks expected");
        };
        assert_eq!(checks.len(), 6);
        assert!(
            matches!(&checks[1], Check::Git { want: GitWant::ControlBranch, control_branch, .. } if control_branch == "production")
        );
        assert!(
            matches!(&checks[5], Check::ForgeCurrent { base, slug, .. } if base == FORGE && slug == "puppetlabs-f")
        );
    }

    #[test]
    fn a_changed_module_description_is_fetched() {
        let mut r = recorded(vec![git_pin("a", Want::Head, C2)]);
        let cases: [(Option<&str>, Option<&str>, Option<&str>); 5] = [
            (None, None, None),
            (Some("d1"), Some("d1"), None),
            (Some("d1"), Some("d2"), Some("the CodeConfig changed")),
            (None, Some("d1"), Some("described by the Puppetfile before")),
            (Some("d1"), None, Some("described by a CodeConfig before")),
        ];
        for (recorded_digest, now, fetch) in cases {
            r.pins.code_config = recorded_digest.map(str::to_owned);
            let decision = decide(&r, "production", "production", C1, FORGE, now);
            match fetch {
                None => assert!(
                    matches!(&decision, Decision::Unchanged(checks) if checks.len() == 1),
                    "{recorded_digest:?} {now:?}: {decision:?}"
                ),
                Some(words) => assert!(
                    matches!(&decision, Decision::Fetch(m) if m.contains(words)),
                    "{recorded_digest:?} {now:?}: {decision:?}"
                ),
            }
        }
    }

    fn git_check(want: GitWant, default_branch: Option<&str>, commit: &str) -> Check {
        Check::Git {
            module: "m".into(),
            url: "https://git.example/m.git".into(),
            want,
            default_branch: default_branch.map(str::to_owned),
            control_branch: "production".into(),
            commit: commit.into(),
        }
    }

    #[test]
    fn git_checks_follow_the_resolver() {
        let refs = vec![
            listed("refs/heads/main", C2),
            listed("refs/heads/production", C1),
            listed("refs/tags/v1", C2),
        ];
        let holds = |want: GitWant, default: Option<&str>, commit: &str| {
            git_check_holds(&git_check(want, default, commit), &refs)
        };
        assert!(holds(GitWant::Branch("main".into()), None, C2));
        assert!(
            !holds(GitWant::Branch("main".into()), None, C1),
            "branch moved"
        );
        assert!(
            !holds(GitWant::Branch("gone".into()), None, C2),
            "branch deleted"
        );
        assert!(
            holds(GitWant::Branch("gone".into()), Some("main"), C2),
            "default branch"
        );
        assert!(holds(GitWant::ControlBranch, None, C1));
        assert!(!holds(GitWant::ControlBranch, None, C2));
        assert!(holds(GitWant::Tag("v1".into()), None, C2));
        assert!(!holds(GitWant::Tag("v1".into()), None, C1), "tag moved");
        assert!(holds(GitWant::Ref("main".into()), None, C2));
        // Abbreviated ids: a matching tip decides; else the recorded id must match.
        assert!(holds(GitWant::Commit("1111111".into()), None, C1));
        assert!(holds(GitWant::Ref("3333333".into()), None, &"3".repeat(40)));
        assert!(!holds(GitWant::Ref("3333333".into()), None, C1));
        // openvox-code's wants: HEAD as listed; the control branch, else the fallback.
        let with_head = [refs.clone(), vec![listed("HEAD", C2)]].concat();
        let holds_head = |want: GitWant, commit: &str| {
            git_check_holds(&git_check(want, None, commit), &with_head)
        };
        assert!(holds_head(GitWant::Head, C2));
        assert!(!holds_head(GitWant::Head, C1), "HEAD moved");
        assert!(!holds(GitWant::Head, None, C2), "no HEAD listed");
        assert!(holds_head(GitWant::FollowBranch(None), C1), "production");
        assert!(!holds_head(GitWant::FollowBranch(None), C2));
        let elsewhere = |want: GitWant, commit: &str| {
            let mut check = git_check(want, None, commit);
            if let Check::Git { control_branch, .. } = &mut check {
                *control_branch = "staging".into();
            }
            git_check_holds(&check, &with_head)
        };
        assert!(elsewhere(GitWant::FollowBranch(None), C2), "HEAD");
        assert!(
            elsewhere(GitWant::FollowBranch(Some("v1".into())), C2),
            "tag"
        );
        assert!(!elsewhere(GitWant::FollowBranch(Some("v1".into())), C1));
        assert!(!elsewhere(GitWant::FollowBranch(Some("gone".into())), C2));
        // A branch named like a commit id wins over the id, as in the resolver.
        let shadowed = vec![listed("refs/heads/2222222", C1)];
        assert!(!git_check_holds(
            &git_check(GitWant::Ref("2222222".into()), None, C2),
            &shadowed
        ));
    }

    #[test]
    fn annotated_tags_without_a_peeled_commit_do_not_match() {
        let tag_object = "4444444444444444444444444444444444444444";
        let mut tag = listed("refs/tags/v1", tag_object);
        let check = git_check(GitWant::Tag("v1".into()), None, C2);
        assert!(!git_check_holds(&check, std::slice::from_ref(&tag)));
        tag.peeled = Some(gix::ObjectId::from_hex(C2.as_bytes()).unwrap());
        assert!(git_check_holds(&check, &[tag]));
    }

    #[test]
    fn latest_forge_modules_hold_while_the_current_release_is_the_same() {
        let check = Check::ForgeCurrent {
            module: "f".into(),
            base: FORGE.into(),
            slug: "puppetlabs-f".into(),
            version: "9.6.0".into(),
            checksum: Some("sha256:ab".into()),
        };
        let release = |version: &str, sha256: &str| ForgeRelease {
            slug: "puppetlabs-f".into(),
            version: version.into(),
            file_url: String::new(),
            sha256: sha256.into(),
        };
        assert!(forge_check_holds(&check, &release("9.6.0", "ab")));
        assert!(!forge_check_holds(&check, &release("9.7.0", "ab")));
        assert!(
            !forge_check_holds(&check, &release("9.6.0", "cd")),
            "re-published"
        );
    }

    fn layer(annotations_: BTreeMap<String, String>, key: &str, created: &str) -> PreviousLayer {
        let mut descriptor = Descriptor::new(media_types::LAYER_GZIP, "sha256:00", 1);
        descriptor.annotations = annotations_;
        PreviousLayer {
            environment: "production".into(),
            branch: "production".into(),
            revision: format!("production@sha1:{C1}"),
            inputs_key: key.into(),
            created: created.into(),
            descriptor,
            diff_id: "sha256:11".into(),
        }
    }

    #[test]
    fn layers_are_trusted_only_when_their_annotations_reproduce_the_key() {
        let r = recorded(vec![git_pin("a", Want::Branch("main".into()), C2)]);
        let created = rfc3339(r.commit_time);
        let key = inputs_key(&r.inputs, r.commit_time, Codec::Gzip);
        let pins = BTreeMap::from([(annotations::PINS.to_owned(), r.pins.to_annotation())]);
        assert_eq!(
            RecordedEnvironment::from_layer(&layer(pins.clone(), &key, &created)).unwrap(),
            r
        );
        // Another key (other modules, format or time), another time, no pins: refused.
        assert!(RecordedEnvironment::from_layer(&layer(pins.clone(), "k", &created)).is_err());
        assert!(RecordedEnvironment::from_layer(&layer(pins.clone(), &key, &rfc3339(1))).is_err());
        assert!(RecordedEnvironment::from_layer(&layer(BTreeMap::new(), &key, &created)).is_err());
        let mut other = r.pins.clone();
        other.modules[0].resolved.version = C1.into();
        let tampered = BTreeMap::from([(annotations::PINS.to_owned(), other.to_annotation())]);
        assert!(RecordedEnvironment::from_layer(&layer(tampered, &key, &created)).is_err());
    }
}
