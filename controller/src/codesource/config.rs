//! Publishing the digest: the Config named by `configRef` gets the image in
//! `spec.code`, by server-side apply under the controller's field manager.
//!
//! `spec.code` has two shapes in the wild (see `openvox_crds::operator::CodeShape`).
//! Which one the installed Config CRD has is read from its schema ([`shape_from_crd`])
//! and cached by the reconciler; the patch ([`code_patch`]) is built for that shape.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use openvox_crds::codesource::OutputSpec;
use openvox_crds::operator::{CodeEntry, CodeShape, Config};
use serde_json::{Value, json};

/// Name of openvox-operator's Config CRD.
pub const CONFIG_CRD: &str = "configs.openvox.voxpupuli.org";

/// The shape of `Config.spec.code` in the installed CRD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeKind {
    /// One object (older operator releases).
    Single,
    /// A list of entries (newer releases).
    List,
}

/// What goes into Config: an image reference or a claim name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeTarget {
    /// `image: <repository>@sha256:<digest>`.
    Image(String),
    /// `claimName: <pvc>`.
    Claim(String),
}

/// Prefix of `lastBuild.image` for PVC output (`pvc:<claim>@sha256:<digest>`).
pub const CLAIM_RECORD_PREFIX: &str = "pvc:";

/// What the Config should carry for a build whose `lastBuild.image` is `built`, under
/// the current `output`: the claim when the build wrote into that claim, the image when
/// the build pushed one. `None` when the build belongs to another output (the output
/// was switched and the first build for it has not finished): the Config keeps what it
/// has, so servers never get an empty claim or a claim record as an image.
pub fn code_target(output: &OutputSpec, built: &str) -> Option<CodeTarget> {
    match output.claim_name.as_deref().filter(|c| !c.is_empty()) {
        Some(claim) => built
            .strip_prefix(CLAIM_RECORD_PREFIX)
            .and_then(|rest| rest.strip_prefix(claim))
            .is_some_and(|rest| rest.starts_with('@'))
            .then(|| CodeTarget::Claim(claim.to_owned())),
        None => (!built.starts_with(CLAIM_RECORD_PREFIX) && !built.starts_with("oci:"))
            .then(|| CodeTarget::Image(built.to_owned())),
    }
}

/// Reads the shape of `spec.code` from the CRD's schema (the `v1alpha1` version, or
/// the storage version when that is absent).
pub fn shape_from_crd(crd: &CustomResourceDefinition) -> Result<ShapeKind, String> {
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == openvox_crds::names::VERSION)
        .or_else(|| crd.spec.versions.iter().find(|v| v.storage))
        .ok_or_else(|| {
            format!(
                "CRD {CONFIG_CRD} has no version {}",
                openvox_crds::names::VERSION
            )
        })?;
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| format!("CRD {CONFIG_CRD} has no schema"))?;
    let code = schema
        .properties
        .as_ref()
        .and_then(|p| p.get("spec"))
        .and_then(|spec| spec.properties.as_ref())
        .and_then(|p| p.get("code"))
        .ok_or_else(|| format!("CRD {CONFIG_CRD} has no spec.code"))?;
    match code.type_.as_deref() {
        Some("array") => Ok(ShapeKind::List),
        Some("object") => Ok(ShapeKind::Single),
        other => Err(format!(
            "spec.code of {CONFIG_CRD} has type {other:?}, neither array nor object"
        )),
    }
}

/// The server-side apply body that puts `target` into `spec.code`.
///
/// Single shape: only our field (`image` or `claimName`) is sent, so pull policy and
/// pull secret set by others stay theirs. List shape: the list is atomic, and the
/// operator allows a whole-tree entry (no `environment`, no `mountPath`) only as the
/// sole entry, so the list becomes that one entry: our field set, the pull policy and
/// pull secret of the previous whole-tree entry kept. The image holds every
/// environment at its root, so per-environment entries cannot point into it.
pub fn code_patch(shape: ShapeKind, current: Option<&CodeShape>, target: &CodeTarget) -> Value {
    let mut entry = match shape {
        ShapeKind::Single => CodeEntry::default(),
        ShapeKind::List => current
            .and_then(CodeShape::whole_tree_entry)
            .cloned()
            .unwrap_or_default(),
    };
    match target {
        CodeTarget::Image(image) => {
            entry.image = Some(image.clone());
            entry.claim_name = None;
        }
        CodeTarget::Claim(claim) => {
            entry.claim_name = Some(claim.clone());
            entry.image = None;
            entry.image_pull_policy = None;
            entry.image_pull_secret = None;
        }
    }
    let code = match shape {
        ShapeKind::Single => json!(entry),
        ShapeKind::List => json!([entry]),
    };
    json!({
        "apiVersion": format!("{}/{}", openvox_crds::names::GROUP, openvox_crds::names::VERSION),
        "kind": "Config",
        "spec": { "code": code },
    })
}

/// Whether `config` already carries `target` in its whole-tree code entry.
pub fn carries(config: &Config, target: &CodeTarget) -> bool {
    let entry = config
        .spec
        .code
        .as_ref()
        .and_then(CodeShape::whole_tree_entry);
    match target {
        CodeTarget::Image(image) => entry.and_then(|e| e.image.as_ref()) == Some(image),
        CodeTarget::Claim(claim) => entry.and_then(|e| e.claim_name.as_ref()) == Some(claim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(code_type: &str) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": CONFIG_CRD},
            "spec": {
                "group": "openvox.voxpupuli.org",
                "names": {"kind": "Config", "plural": "configs"},
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1alpha1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"code": {"type": code_type}}}
                    }}}
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_shape_is_read_from_the_crd_schema() {
        assert_eq!(shape_from_crd(&crd("object")), Ok(ShapeKind::Single));
        assert_eq!(shape_from_crd(&crd("array")), Ok(ShapeKind::List));
        assert!(
            shape_from_crd(&crd("string"))
                .unwrap_err()
                .contains("neither array nor object")
        );
    }

    #[test]
    fn single_shape_sends_only_the_image() {
        let patch = code_patch(
            ShapeKind::Single,
            None,
            &CodeTarget::Image("r@sha256:1".into()),
        );
        assert_eq!(patch["spec"]["code"], json!({"image": "r@sha256:1"}));
        assert_eq!(patch["kind"], "Config");
        assert_eq!(patch["apiVersion"], "openvox.voxpupuli.org/v1alpha1");
    }

    #[test]
    fn list_shape_becomes_one_whole_tree_entry_keeping_pull_settings() {
        let current = CodeShape::List(vec![CodeEntry {
            image: Some("old@sha256:0".into()),
            image_pull_secret: Some("pull".into()),
            image_pull_policy: Some("Always".into()),
            ..Default::default()
        }]);
        let patch = code_patch(
            ShapeKind::List,
            Some(&current),
            &CodeTarget::Image("r@sha256:1".into()),
        );
        assert_eq!(
            patch["spec"]["code"],
            json!([{"image": "r@sha256:1", "imagePullPolicy": "Always", "imagePullSecret": "pull"}])
        );
    }

    #[test]
    fn list_shape_replaces_per_environment_entries_with_the_whole_tree() {
        // The operator allows a whole-tree entry only alone; the image holds every
        // environment, so it takes over the list.
        let current = CodeShape::List(vec![
            CodeEntry {
                image: Some("a@sha256:1".into()),
                environment: Some("production".into()),
                ..Default::default()
            },
            CodeEntry {
                image: Some("b@sha256:2".into()),
                environment: Some("staging".into()),
                ..Default::default()
            },
        ]);
        let patch = code_patch(
            ShapeKind::List,
            Some(&current),
            &CodeTarget::Image("r@sha256:3".into()),
        );
        assert_eq!(patch["spec"]["code"], json!([{"image": "r@sha256:3"}]));
    }

    #[test]
    fn list_shape_without_code_gets_one_entry() {
        let patch = code_patch(
            ShapeKind::List,
            None,
            &CodeTarget::Image("r@sha256:1".into()),
        );
        assert_eq!(patch["spec"]["code"], json!([{"image": "r@sha256:1"}]));
    }

    #[test]
    fn claims_replace_images() {
        let current = CodeShape::List(vec![CodeEntry {
            image: Some("old".into()),
            image_pull_policy: Some("Always".into()),
            ..Default::default()
        }]);
        let patch = code_patch(
            ShapeKind::List,
            Some(&current),
            &CodeTarget::Claim("code".into()),
        );
        assert_eq!(patch["spec"]["code"], json!([{"claimName": "code"}]));
    }

    #[test]
    fn single_shape_sends_only_the_claim() {
        let patch = code_patch(ShapeKind::Single, None, &CodeTarget::Claim("code".into()));
        assert_eq!(patch["spec"]["code"], json!({"claimName": "code"}));
    }

    #[test]
    fn a_build_is_published_only_into_the_output_it_was_made_for() {
        let claim = OutputSpec {
            claim_name: Some("code".into()),
            ..Default::default()
        };
        let image = OutputSpec {
            image: Some("r.example/code".into()),
            ..Default::default()
        };
        let pvc = format!("pvc:code@sha256:{}", "a".repeat(64));
        let pushed = format!("r.example/code@sha256:{}", "b".repeat(64));
        assert_eq!(
            code_target(&claim, &pvc),
            Some(CodeTarget::Claim("code".into()))
        );
        // Switched outputs: the old build is not published into the new one.
        assert_eq!(code_target(&claim, &pushed), None);
        assert_eq!(code_target(&image, &pvc), None);
        let other_claim = OutputSpec {
            claim_name: Some("code2".into()),
            ..Default::default()
        };
        assert_eq!(code_target(&other_claim, &pvc), None);
        let prefix_claim = OutputSpec {
            claim_name: Some("co".into()),
            ..Default::default()
        };
        assert_eq!(code_target(&prefix_claim, &pvc), None);
        assert_eq!(
            code_target(&image, &pushed),
            Some(CodeTarget::Image(pushed.clone()))
        );
        assert_eq!(code_target(&image, "oci:/tmp/layout@sha256:1"), None);
    }

    #[test]
    fn carries_compares_the_whole_tree_entry() {
        let mut config = Config::new("c", Default::default());
        assert!(!carries(&config, &CodeTarget::Image("r@sha256:1".into())));
        config.spec.code = Some(CodeShape::Single(CodeEntry {
            image: Some("r@sha256:1".into()),
            ..Default::default()
        }));
        assert!(carries(&config, &CodeTarget::Image("r@sha256:1".into())));
        assert!(!carries(&config, &CodeTarget::Image("r@sha256:2".into())));
        assert!(!carries(&config, &CodeTarget::Claim("code".into())));
        config.spec.code = Some(CodeShape::List(vec![CodeEntry {
            claim_name: Some("code".into()),
            ..Default::default()
        }]));
        assert!(carries(&config, &CodeTarget::Claim("code".into())));
    }
}
