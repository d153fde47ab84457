//! Test harness of openvox-code: everything the integration tests need to run against
//! real Kubernetes parts instead of mocks.
//!
//! - [`ControlPlane`]: etcd, kube-apiserver and kube-controller-manager on loopback,
//!   started once per test binary by `tests/scripts/cluster.sh run` (a supervisor that
//!   stops every process it started when the test binary exits, however it exits).
//! - [`TestNamespace`]: one fresh namespace per test, deleted on drop.
//! - [`apply`]: server-side apply of YAML or JSON objects of any kind, and the README
//!   examples the CRD tests must accept.
//! - [`fixtures`]: git daemon, bare repositories, an OCI registry and other real
//!   servers on loopback, shared by the integration tests of every crate.
//! - [`world`]: a complete installation on loopback (git, registry, worker, controller)
//!   for the end-to-end test and `make demo`.
//! - [`node_sim`]: plays kubelet (and scheduler) for the pods of Jobs, so the real Job
//!   controller completes or fails them. See `tests/README.md` for what is simulated.
//! - [`operator`]: small stand-ins for openvox-operator's Pool Service writer and
//!   Server controller, following the measured facts only.

pub mod apply;
pub mod control_plane;
pub mod fixtures;
pub mod namespace;
pub mod node_sim;
pub mod operator;
mod time;
pub mod tools;
pub mod world;

pub use control_plane::{ConfigShape, ControlPlane, Options, PoolCrd};
pub use namespace::TestNamespace;
pub use node_sim::{NodeSim, NodeSimConfig};
