//! What every phase of a CodeSource reconcile shares: the [`Context`], the key of a
//! CodeSource and how the controller applies objects. A leaf: it imports no phase, so
//! the phases and `reconcile`, which runs them, never import each other.

use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use kube::api::PatchParams;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use openvox_crds::CodeSource;
use openvox_crds::names::CONTROLLER_MANAGER;
use openvox_crds::operator::Server;

use super::config::ShapeKind;
use super::forge::ForgeReleases;
use super::heads::HeadCache;
use super::memory::Memory;
use super::worker_defaults::WorkerDefaults;
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;
use crate::retry::Failures;

/// What the CodeSource reconciler shares across reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Default worker image.
    pub worker_image: String,
    /// Defaults of every worker pod that `spec.job` may override.
    pub worker_defaults: WorkerDefaults,
    /// Deduplicating head checks (control and module repositories).
    pub heads: HeadCache,
    /// Deduplicating Forge lookups (current releases of floating Forge modules).
    pub forge: ForgeReleases,
    /// Metrics.
    pub metrics: Metrics,
    /// Shape of `Config.spec.code` and when it was read.
    pub config_shape: Mutex<Option<(Instant, ShapeKind)>>,
    /// Consecutive transient failures per CodeSource, for backoff.
    pub failures: Failures,
    /// Versions our status writes returned, which must not trigger a reconcile.
    pub own_writes: OwnWrites,
    /// openvox-operator's Servers (watch cache), for the rollout.
    pub servers: Store<Server>,
    /// The worker Jobs (watch cache).
    pub jobs: Store<Job>,
    /// What is remembered between reconciles without being written (see `memory`).
    pub memory: Memory,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("codesource::Context")
            .finish_non_exhaustive()
    }
}

/// Server-side apply as the controller, taking over fields others set.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(CONTROLLER_MANAGER).force()
}

/// `namespace/name` of a CodeSource: the key of everything kept per CodeSource.
pub fn key(cs: &CodeSource) -> String {
    format!("{}/{}", cs.namespace().unwrap_or_default(), cs.name_any())
}
