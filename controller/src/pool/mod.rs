//! The Pool controller: a Service per Pool, a Gateway API TLSRoute when the route is
//! enabled (and the CRD is installed), hostname conflicts between Pools, ready endpoint
//! counts, and route hostnames injected into the Servers' Certificates.
//!
//! Pure builders and decisions live in the submodules; the reconciler applies them.
//! The supervisor runs the controller only where openvox-operator does not reconcile
//! Pools itself (`ownership`).

pub mod alt_names;
pub mod controller;
pub mod endpoints;
pub mod error;
pub mod hostname;
pub mod ownership;
pub mod reconcile;
pub mod route;
pub mod service;
pub mod status;
pub mod supervisor;

pub use controller::{Settings, run};
pub use ownership::PoolControllerMode;
pub use supervisor::{Supervision, supervise};
