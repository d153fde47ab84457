//! `Pool`: a Service in front of the OpenVox servers that join it, and optionally a
//! Gateway API TLSRoute. Field-compatible with openvox-operator's Pool.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a Pool. Servers join it through `Server.spec.poolRefs`; the
/// operator then labels their pods `openvox.voxpupuli.org/pool-<pool>=true`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "openvox.voxpupuli.org",
    version = "v1alpha1",
    kind = "Pool",
    doc = "A Service (and optionally a Gateway API TLSRoute) in front of the OpenVox servers that join the Pool through Server.spec.poolRefs.",
    namespaced,
    status = "PoolStatus",
    category = "openvox",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.service.type"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","description":"Ready server endpoints behind the Service","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Hostname","type":"string","priority":1,"jsonPath":".spec.route.hostname"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// The Service named after the Pool.
    #[serde(default)]
    pub service: PoolServiceSpec,

    /// Optional Gateway API TLSRoute to the Service (TLS passthrough by hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<PoolRouteSpec>,
}

/// The Pool's Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service listens on; it always forwards to the servers' port 8140.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Node port for `NodePort` and `LoadBalancer` Services. Unset: Kubernetes assigns
    /// one and it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,

    /// Annotations of the Service (for example for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Labels added to the Service; they win over the built-in labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// External IPs of the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "externalIPs")]
    pub external_ips: Vec<String>,
}

impl Default for PoolServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_port(),
            node_port: None,
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            external_ips: Vec::new(),
        }
    }
}

fn default_port() -> i32 {
    8140
}

/// Kubernetes Service types a Pool supports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    /// Whether Services of this type get node ports.
    pub fn has_node_ports(self) -> bool {
        matches!(self, Self::NodePort | Self::LoadBalancer)
    }
}

/// Gateway API route of a Pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || (has(self.hostname) && size(self.hostname) > 0)")
    .message("hostname is required when route is enabled"))]
#[x_kube(validation = Rule::new("!self.enabled || (has(self.gatewayRef) && size(self.gatewayRef.name) > 0)")
    .message("gatewayRef.name is required when route is enabled"))]
pub struct PoolRouteSpec {
    /// Create a TLSRoute for this Pool.
    #[serde(default)]
    pub enabled: bool,

    /// Hostname (SNI) the route matches. One Pool per hostname: when two claim it, the
    /// older Pool wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,

    /// Gateway the route attaches to (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ref: Option<GatewayRef>,

    /// Add the hostname to `spec.dnsAltNames` of the Certificates of the Servers that
    /// join this Pool, so their TLS certificates are valid for it.
    #[serde(default, rename = "injectDNSAltName")]
    pub inject_dns_alt_name: bool,
}

/// Reference to a Gateway.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Name of the Gateway.
    #[schemars(length(max = 253))]
    pub name: String,

    /// Listener of the Gateway to attach to. Unset: every listener that accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub section_name: Option<String>,
}

/// Observed state of a Pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Name of the Pool's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,

    /// Ready endpoints across the Service's EndpointSlices.
    #[serde(default)]
    pub endpoints: i32,

    /// Current state: `Ready`, `RouteReady`, `HostnameConflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
