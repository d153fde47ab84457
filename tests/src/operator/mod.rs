//! Stand-ins for the two parts of openvox-operator that openvox-code meets, small and
//! following only the measured facts (each file says which): its Pool controller's
//! Service writer, and its Server controller's Deployment. The rollout and
//! never-fight tests run them beside our controller on the real control plane.

mod pool_writer;
mod server_controller;

pub use pool_writer::OperatorPoolWriter;
pub use server_controller::{CONFIG_LABEL, OperatorServerController, SERVER_LABEL};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

/// Field manager of the operator's writes (the binary's name).
pub const FIELD_MANAGER: &str = "openvox-operator";

/// A Pool read untyped: the operator's Pool CRD is not ours.
pub type PoolObject = DynamicObject;

/// One of the operator's kinds in `openvox.voxpupuli.org/v1alpha1`.
pub fn kind_api_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        openvox_crds::names::GROUP,
        openvox_crds::names::VERSION,
        kind,
    ))
}

/// The Pool kind.
pub fn pool_api_resource() -> ApiResource {
    kind_api_resource("Pool")
}
