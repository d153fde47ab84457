//! A CodeSource's openvox-code `CodeConfig` (`spec.modules.codeConfig`): read from its
//! ConfigMap, and what it means for this controller. The controller needs four things
//! from it: which branches the control repository's source selects (`branchSelector`
//! narrows `git.branches`), the refs its static environments name (so a moved branch
//! or tag rebuilds them), where to list the repository (`overrides` mirrors), and a
//! hash of the whole ConfigMap, which joins the inputs so an edit rebuilds. Modules
//! themselves are the worker's business: it reads the same ConfigMap, mounted, and
//! builds every static environment itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use openvox_codeconfig::{
    BranchSelector, CodeConfig, NoSource, Overrides, find_static_ref, load_code_config, mirror,
};
use openvox_crds::CodeSource;
use openvox_crds::codesource::CodeConfigRef;
use sha2::{Digest as _, Sha256};

use super::context::Context;
use super::error::{Error, kube};
use super::heads::{RemoteHeads, revision};

/// What the controller takes from a CodeConfig.
#[derive(Clone, Debug)]
pub struct CodeConfigFacts {
    /// sha256 of every key and value of the ConfigMap.
    pub hash: String,
    /// The `branchSelector` of the source of this control repository.
    pub selector: BranchSelector,
    /// The git mirrors.
    pub overrides: Overrides,
    /// The static environments: name → `ref` (a branch, tag or commit id).
    pub statics: BTreeMap<String, String>,
}

/// The prefix of a static environment's key in `status.heads`, beside the branches':
/// `static:<name>` → `<ref>@sha1:<commit>`. A git ref name cannot hold `:`, so no
/// branch ever has such a key.
pub const STATIC_HEAD_PREFIX: &str = "static:";

impl CodeConfigFacts {
    /// Adds to `wanted` (the selected branches' heads) one entry per static environment
    /// whose `ref` is found in `listed` (every branch and tag of the control repository
    /// by full ref name), by the rule the worker fetches with. A `ref` not found adds
    /// nothing: the worker fails that environment alone, and the ref appearing later
    /// changes the heads.
    pub fn add_static_heads(&self, listed: &RemoteHeads, wanted: &mut BTreeMap<String, String>) {
        for (name, reference) in &self.statics {
            if let Some((_, commit)) = find_static_ref(reference, |full| listed.get(full).cloned())
            {
                wanted.insert(
                    format!("{STATIC_HEAD_PREFIX}{name}"),
                    revision(reference, &commit),
                );
            }
        }
    }
}

/// The branch names among the keys of `heads` (`status.heads`), leaving out static
/// environments: the worker is told these with `--branch`.
pub fn branches_of(heads: &BTreeMap<String, String>) -> Vec<String> {
    heads
        .keys()
        .filter(|k| !k.starts_with(STATIC_HEAD_PREFIX))
        .cloned()
        .collect()
}

impl CodeConfigFacts {
    /// Where `url` is listed and fetched: its mirror, when the config names one.
    pub fn url(&self, url: &str) -> String {
        mirror(url, &self.overrides)
    }
}

/// Where the control repository of `cs` is listed and fetched: `git.url`, or its
/// mirror when the CodeConfig names one.
pub fn control_url(cs: &CodeSource, code_config: Option<&CodeConfigFacts>) -> String {
    match code_config {
        Some(facts) => facts.url(&cs.spec.git.url),
        None => cs.spec.git.url.clone(),
    }
}

/// The spec hash with the CodeConfig's: an edit of the ConfigMap changes the inputs.
pub fn spec_hash_with(spec_hash: String, code_config: Option<&CodeConfigFacts>) -> String {
    match code_config {
        None => spec_hash,
        Some(facts) => {
            let joined = format!("{spec_hash}+codeconfig:{}", facts.hash);
            hex::encode(Sha256::digest(joined.as_bytes()))
        }
    }
}

/// Reads and interprets the CodeConfig of `cs`, if it names one.
pub async fn read(
    ctx: &Context,
    cs: &CodeSource,
    ns: &str,
) -> Result<Option<CodeConfigFacts>, Error> {
    let Some(reference) = &cs.spec.modules.code_config else {
        return Ok(None);
    };
    let name = &reference.config_map_ref.name;
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let map = maps
        .get_opt(name)
        .await
        .map_err(kube("get CodeConfig ConfigMap"))?
        .ok_or_else(|| Error::CodeConfig(format!("ConfigMap {name:?} does not exist")))?;
    let data = map.data.unwrap_or_default();
    interpret(&data, reference, &cs.spec.git.url)
        .map(Some)
        .map_err(|e| Error::CodeConfig(format!("ConfigMap {name:?}: {e}")))
}

/// The facts of the CodeConfig in `data` (a ConfigMap's, one key per file) for the
/// control repository `control_url`.
pub fn interpret(
    data: &BTreeMap<String, String>,
    reference: &CodeConfigRef,
    control_url: &str,
) -> Result<CodeConfigFacts, String> {
    let loaded = load_code_config(data, &reference.key).map_err(|e| e.to_string())?;
    let config = loaded.config;
    let source = source_of(&config, control_url)?;
    Ok(CodeConfigFacts {
        hash: data_hash(data),
        selector: source.branch_selector.clone(),
        statics: config
            .environments
            .iter()
            .map(|(name, env)| (name.clone(), env.reference.clone().unwrap_or_default()))
            .collect(),
        overrides: config.overrides,
    })
}

/// The source of `control_url` (`CodeConfig::source_for`, the rule the worker uses too).
fn source_of<'a>(
    config: &'a CodeConfig,
    control_url: &str,
) -> Result<&'a openvox_codeconfig::Source, String> {
    match config.source_for(control_url) {
        Ok(index) => Ok(&config.sources[index]),
        Err(NoSource::Empty) => Err("spec.sources is empty".into()),
        Err(NoSource::Ambiguous(_)) => Err(format!(
            "no entry of spec.sources has the url of git.url ({})",
            openvox_git::mask_url(control_url)
        )),
    }
}

/// sha256 over every key and value, in key order, each length-prefixed.
fn data_hash(data: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::LocalObjectReference;

    fn reference() -> CodeConfigRef {
        CodeConfigRef {
            config_map_ref: LocalObjectReference {
                name: "code".into(),
            },
            key: "openvox-code.yaml".into(),
        }
    }

    fn data(main: &str) -> BTreeMap<String, String> {
        [("openvox-code.yaml".to_string(), main.to_string())].into()
    }

    const TWO_SOURCES: &str = "\
apiVersion: openvox.voxpupuli.org/v1alpha1
kind: CodeConfig
spec:
  sources:
    - url: https://git.example/other.git
      branchSelector: {matchPatterns: ['x*']}
    - url: https://git.example/control.git
      branchSelector: {matchPatterns: ['prod*', 'feature/*'], excludePatterns: ['feature/wip*']}
  overrides:
    gitmirrors: {git.example: 'git://127.0.0.1:9418/mirror'}
";

    #[test]
    fn the_source_of_the_control_repository_selects_branches() {
        let facts = interpret(
            &data(TWO_SOURCES),
            &reference(),
            "https://git.example/control.git",
        )
        .unwrap();
        let selected: Vec<&str> = ["production", "feature/a", "feature/wip-1", "x1", "main"]
            .into_iter()
            .filter(|b| facts.selector.selects(b))
            .collect();
        assert_eq!(selected, ["production", "feature/a"]);
        assert_eq!(
            facts.url("https://git.example/control.git"),
            "git://127.0.0.1:9418/mirror/control.git"
        );
        assert_eq!(
            facts.url("https://elsewhere/x.git"),
            "https://elsewhere/x.git"
        );
    }

    #[test]
    fn a_control_repository_no_source_names_is_refused_unless_there_is_one_source() {
        let err = interpret(
            &data(TWO_SOURCES),
            &reference(),
            "https://git.example/third.git",
        )
        .unwrap_err();
        assert!(err.contains("no entry of spec.sources"), "{err}");
        let one = "sources:\n  - url: https://git.example/a.git\n";
        assert!(interpret(&data(one), &reference(), "https://git.example/b.git").is_ok());
    }

    #[test]
    fn errors_name_the_file_and_line_and_edits_change_the_hash() {
        let bad = "sources:\n  - url: https://git.example/a.git\n    branchselector: {}\n";
        let err = interpret(&data(bad), &reference(), "https://git.example/a.git").unwrap_err();
        assert!(err.starts_with("openvox-code.yaml:3"), "{err}");
        assert!(err.contains("branchselector"), "{err}");
        let missing = interpret(&BTreeMap::new(), &reference(), "x").unwrap_err();
        assert!(missing.contains("openvox-code.yaml"), "{missing}");
        let one = "sources:\n  - url: https://git.example/a.git\n";
        let a = interpret(&data(one), &reference(), "a").unwrap();
        let mut edited = data(one);
        edited.insert("more.yaml".into(), "x".into());
        let b = interpret(&edited, &reference(), "a").unwrap();
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn static_environments_join_the_heads_under_keys_no_branch_can_have() {
        let text = "sources:\n  - url: https://git.example/a.git\nenvironments:\n  pinned: {ref: v1}\n  frozen: {ref: 0123456789abcdef0123456789abcdef01234567}\n  tracking: {ref: main}\n  missing: {ref: v9}\n";
        let facts = interpret(&data(text), &reference(), "https://git.example/a.git").unwrap();
        let listed: RemoteHeads = [
            ("refs/heads/main", "m"),
            ("refs/tags/v1", "t"),
            ("refs/heads/production", "p"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let mut wanted: BTreeMap<String, String> =
            [("production".to_string(), "production@sha1:p".to_string())].into();
        facts.add_static_heads(&listed, &mut wanted);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let want: BTreeMap<String, String> = [
            ("production", "production@sha1:p".to_string()),
            ("static:frozen", format!("{commit}@sha1:{commit}")),
            ("static:pinned", "v1@sha1:t".to_string()),
            ("static:tracking", "main@sha1:m".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(wanted, want);
        assert_eq!(branches_of(&wanted), ["production"]);
    }
}
