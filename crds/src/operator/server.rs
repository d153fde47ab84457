//! openvox-operator `Server`: we read `poolRefs` and `certificateRef`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The part of openvox-operator's Server spec that openvox-code uses.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "openvox.voxpupuli.org",
    version = "v1alpha1",
    kind = "Server",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Config the Server runs with.
    #[serde(default)]
    pub config_ref: String,
    /// Certificate the Server presents.
    #[serde(default)]
    pub certificate_ref: String,
    /// Pools the Server joins; the operator labels its pods for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool_refs: Vec<String>,
}
