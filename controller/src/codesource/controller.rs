//! Wiring of the CodeSource controller: watches (CodeSources, their Jobs), the shared
//! context, and the run loop until shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::api::Api;
use kube::runtime::PredicateConfig;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use openvox_crds::CodeSource;
use openvox_crds::names::{CONTROLLER_MANAGER, labels};
use tracing::{debug, warn};

use super::heads::{GixHeadLister, HeadCache, HeadError};
use super::job::COMPONENT;
use super::reconcile::{Context, error_policy, reconcile};
use super::worker_defaults::WorkerDefaults;
use crate::metrics::Metrics;

/// Settings of the CodeSource controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Default worker image.
    pub worker_image: String,
    /// Defaults of every worker pod that `spec.job` may override.
    pub worker_defaults: WorkerDefaults,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// How long a head listing is shared; shorter than the shortest schedule (1 min).
    pub head_cache_ttl: Duration,
    /// Writable directory for the head checker's scratch repository.
    pub scratch_dir: PathBuf,
}

impl Settings {
    /// Defaults for everything but the worker image.
    pub fn new(worker_image: impl Into<String>) -> Self {
        Self {
            namespace: None,
            worker_image: worker_image.into(),
            worker_defaults: WorkerDefaults::default(),
            concurrency: 4,
            head_cache_ttl: Duration::from_secs(20),
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// Builds the shared context with the real (gitoxide) head lister.
pub fn context(
    client: Client,
    settings: &Settings,
    metrics: Metrics,
) -> Result<Arc<Context>, HeadError> {
    let lister = GixHeadLister::new(&settings.scratch_dir)?;
    let observer_metrics = metrics.clone();
    let heads = HeadCache::new(Arc::new(lister), settings.head_cache_ttl).with_observer(Arc::new(
        move |took, ok| observer_metrics.head_check(took, ok),
    ));
    Ok(Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter::from(CONTROLLER_MANAGER.to_string()),
        ),
        client,
        worker_image: settings.worker_image.clone(),
        worker_defaults: settings.worker_defaults.clone(),
        heads,
        metrics,
        config_shape: Mutex::new(None),
        failures: Mutex::new(HashMap::new()),
    }))
}

/// What of a CodeSource a reconcile reacts to: its spec (generation), annotations
/// (manual and webhook triggers), the worker's `status.lastBuild` and deletion; not the
/// rest of the status, which only this controller writes. Without the filter every
/// status write (one per CodeSource and scheduled tick) came back as a watch event and
/// a second reconcile with its own Job list: the scale bench saw 2 lists per write.
/// Ticks come from the requeue, Job changes from the Job watch.
pub fn trigger_hash(cs: &CodeSource) -> Option<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    cs.metadata.generation.hash(&mut hasher);
    cs.metadata.annotations.hash(&mut hasher);
    cs.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut hasher);
    // BuildRecord is not Hash; its JSON is the same for equal records.
    let last_build = cs.status.as_ref().and_then(|s| s.last_build.as_ref());
    serde_json::to_string(&last_build)
        .unwrap_or_default()
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the CodeSource controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), HeadError> {
    let ctx = context(client.clone(), &settings, metrics)?;
    let (codesources, jobs): (Api<CodeSource>, Api<Job>) = match settings.namespace.as_deref() {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let worker_jobs =
        watcher::Config::default().labels(&format!("{}={}", labels::COMPONENT, COMPONENT));
    let (store, writer) = reflector::store();
    let triggers = reflector(
        writer,
        watcher(codesources, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(trigger_hash, PredicateConfig::default());
    Controller::for_stream(triggers, store)
        .owns(jobs, worker_jobs)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(codesource = %object, "reconciled"),
                Err(e) => warn!("codesource controller: {e}"),
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use openvox_crds::CodeSourceStatus;
    use openvox_crds::codesource::BuildRecord;

    fn codesource() -> CodeSource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
            "metadata": {"name": "a", "namespace": "n", "generation": 1},
            "spec": {"git": {"url": "git://h/r.git", "branches": ["main"]}, "schedule": "@hourly", "output": {"image": "r/i"}},
        }))
        .unwrap()
    }

    #[test]
    fn the_controllers_own_status_writes_do_not_trigger_a_reconcile() {
        let before = codesource();
        let mut after = before.clone();
        after.status = Some(CodeSourceStatus {
            observed_generation: Some(1),
            last_check_time: Some(Time("2026-03-01T10:00:00Z".parse().unwrap())),
            ..CodeSourceStatus::default()
        });
        assert_eq!(trigger_hash(&before), trigger_hash(&after));
    }

    #[test]
    fn spec_annotations_last_build_and_deletion_trigger_a_reconcile() {
        let base = codesource();
        let mut spec = base.clone();
        spec.metadata.generation = Some(2);
        let mut annotated = base.clone();
        annotated.metadata.annotations = Some(
            [(
                "openvox.voxpupuli.org/requestedAt".to_owned(),
                "1".to_owned(),
            )]
            .into(),
        );
        let mut built = base.clone();
        built.status = Some(CodeSourceStatus {
            last_build: Some(BuildRecord {
                image: "r/i@sha256:ab".into(),
                ..BuildRecord::default()
            }),
            ..CodeSourceStatus::default()
        });
        let mut deleted = base.clone();
        deleted.metadata.deletion_timestamp = Some(Time("2026-03-01T10:00:00Z".parse().unwrap()));
        for changed in [spec, annotated, built, deleted] {
            assert_ne!(trigger_hash(&base), trigger_hash(&changed));
        }
    }
}
