//! openvox-operator `Server`: we read `poolRefs` and `certificateRef` (Pools), and
//! `configRef`, `server` and `code` (which Servers take the code we publish).

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
    /// Whether the Server runs a Puppet server (default true); CA-only Servers
    /// (`server: false`) never mount code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<bool>,
    /// The Server's own code, in either shape; when set, the operator ignores the
    /// Config's `spec.code` for this Server. Only its presence is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<serde_json::Value>,
}

impl ServerSpec {
    /// Whether the Server mounts the code of its Config: it runs a Puppet server and
    /// sets no `spec.code` of its own (an empty object or list counts as none).
    pub fn takes_config_code(&self) -> bool {
        self.server != Some(false) && !self.overrides_code()
    }

    /// Whether the Server sets its own `spec.code`.
    pub fn overrides_code(&self) -> bool {
        match &self.code {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(serde_json::Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        }
    }
}
