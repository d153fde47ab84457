//! openvox-operator `Config`: we read and patch `spec.code`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The part of openvox-operator's Config spec that openvox-code uses.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "openvox.voxpupuli.org",
    version = "v1alpha1",
    kind = "Config",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSpec {
    /// Where the servers get their Puppet code; absent when none is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeShape>,
    /// Puppet settings. Only its presence is read: without it the operator applies no
    /// default environment path, mounts the code at an empty path, and its Server
    /// Deployments are refused by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub puppet: Option<serde_json::Value>,
    /// The OpenVox server image; read as the default validator image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ServerImage>,
}

/// openvox-operator's `ImageSpec` (the parts that name the image).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerImage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl ConfigSpec {
    /// `repository:tag` of the servers, with the operator's defaults
    /// (`ghcr.io/slauger/openvox-server`, `latest`) for what is unset.
    pub fn server_image(&self) -> String {
        let image = self.image.clone().unwrap_or_default();
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        format!(
            "{}:{}",
            non_empty(image.repository).unwrap_or_else(|| "ghcr.io/slauger/openvox-server".into()),
            non_empty(image.tag).unwrap_or_else(|| "latest".into())
        )
    }
}

/// `spec.code` exists in two shapes: one object (operator releases up to mid-2026) and
/// a list of entries, each optionally naming an environment or mount path (later
/// releases). Reading accepts both; writing must use the shape the installed CRD has.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum CodeShape {
    /// Newer operator: a list of code volumes.
    List(Vec<CodeEntry>),
    /// Older operator: a single code volume.
    Single(CodeEntry),
}

impl CodeShape {
    /// The entry that mounts the whole environments directory: the single object, or
    /// the list entry with neither `environment` nor `mountPath`.
    pub fn whole_tree_entry(&self) -> Option<&CodeEntry> {
        match self {
            Self::Single(entry) => Some(entry),
            Self::List(entries) => entries
                .iter()
                .find(|e| e.environment.is_none() && e.mount_path.is_none()),
        }
    }
}

/// One code volume of a Config.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodeEntry {
    /// OCI image reference mounted as an image volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Existing PersistentVolumeClaim mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Pull policy of the image volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Secret used to pull the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// List shape only: mount at `<environmentPath>/<environment>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// List shape only: mount at this path under the Puppet codedir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_single_object_shape() {
        let spec: ConfigSpec = serde_json::from_value(serde_json::json!({
            "image": {"repository": "ghcr.io/slauger/openvox-server", "tag": "8"},
            "code": {"image": "registry/code@sha256:abc", "imagePullPolicy": "IfNotPresent"}
        }))
        .unwrap();
        let code = spec.code.unwrap();
        assert!(matches!(code, CodeShape::Single(_)));
        assert_eq!(
            code.whole_tree_entry().unwrap().image.as_deref(),
            Some("registry/code@sha256:abc")
        );
    }

    #[test]
    fn reads_the_list_shape_and_finds_the_whole_tree_entry() {
        let spec: ConfigSpec = serde_json::from_value(serde_json::json!({
            "code": [
                {"image": "a@sha256:1", "environment": "staging"},
                {"image": "b@sha256:2"}
            ]
        }))
        .unwrap();
        let code = spec.code.unwrap();
        assert!(matches!(code, CodeShape::List(ref l) if l.len() == 2));
        assert_eq!(
            code.whole_tree_entry().unwrap().image.as_deref(),
            Some("b@sha256:2")
        );
    }

    #[test]
    fn a_config_without_code_reads_as_none() {
        let spec: ConfigSpec =
            serde_json::from_value(serde_json::json!({"authorityRef": "ca"})).unwrap();
        assert_eq!(spec.code, None);
    }
}
