//! Wiring of the CodeSource controller: watches (CodeSources, their Jobs, and for the
//! rollout openvox-operator's Servers and their Deployments), the shared context, and
//! the run loop until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt};
use openvox_crds::CodeSource;
use openvox_crds::names::{CONTROLLER_MANAGER, GROUP, labels};
use openvox_crds::operator::Server;
use tracing::{debug, warn};

use super::forge::ForgeReleases;
use super::heads::{GixHeadLister, HeadCache, HeadError};
use super::job::COMPONENT;
use super::memory::Memory;
use super::reconcile::{Context, error_policy, key, reconcile};
use super::worker_defaults::WorkerDefaults;
use crate::client::{scoped_api, strip_managed_fields};
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;

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
    /// How long a head listing is kept for sharing. Freshness comes from each check's
    /// `not_before` (a scheduled check shares only listings started since its tick), so
    /// this only has to outlast one tick's reconciles: with 20 s, 1,000 CodeSources on
    /// a loaded 2-core machine took longer and every repository was listed twice a tick.
    pub head_cache_ttl: Duration,
    /// Writable directory for the head checker's scratch repository.
    pub scratch_dir: PathBuf,
    /// Holds every Job watch event back this long before the cache sees it. Zero but
    /// in the test that proves a Job the cache has not seen yet is never launched twice.
    pub job_events_delay: Duration,
}

impl Settings {
    /// Defaults for everything but the worker image.
    pub fn new(worker_image: impl Into<String>) -> Self {
        Self {
            namespace: None,
            worker_image: worker_image.into(),
            worker_defaults: WorkerDefaults::default(),
            concurrency: 4,
            head_cache_ttl: Duration::from_secs(55),
            scratch_dir: std::env::temp_dir(),
            job_events_delay: Duration::ZERO,
        }
    }
}

/// Builds the shared context with the real (gitoxide) head lister over the watch
/// caches of Servers and worker Jobs.
pub fn context(
    client: Client,
    settings: &Settings,
    metrics: Metrics,
    servers: Store<Server>,
    jobs: Store<Job>,
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
        forge: ForgeReleases::new(settings.head_cache_ttl),
        worker_image: settings.worker_image.clone(),
        worker_defaults: settings.worker_defaults.clone(),
        heads,
        metrics,
        config_shape: Mutex::new(None),
        failures: Default::default(),
        own_writes: OwnWrites::default(),
        servers,
        jobs,
        memory: Memory::default(),
    }))
}

/// The CodeSources in `store` of `namespace` that publish into Config `config`.
fn publishing_into(
    store: &Store<CodeSource>,
    namespace: Option<String>,
    config: &str,
) -> Vec<ObjectRef<CodeSource>> {
    store
        .state()
        .iter()
        .filter(|cs| cs.namespace() == namespace && cs.spec.config_ref.as_deref() == Some(config))
        .map(|cs| ObjectRef::from(&**cs))
        .collect()
}

/// Remembers that the rollout of these CodeSources has news to look at.
fn note_rollout_events(ctx: &Context, codesources: &[ObjectRef<CodeSource>]) {
    for cs in codesources {
        let ns = cs.namespace.clone().unwrap_or_default();
        ctx.memory.rollout_event(format!("{ns}/{}", cs.name));
    }
}

/// The Server that controls a Deployment (openvox-operator owns each Server's
/// Deployment), by name.
fn owning_server(deployment: &PartialObjectMeta<Deployment>) -> Option<String> {
    deployment
        .owner_references()
        .iter()
        .find(|o| {
            o.kind == "Server" && o.controller == Some(true) && o.api_version.starts_with(GROUP)
        })
        .map(|o| o.name.clone())
}

/// Runs the CodeSource controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), HeadError> {
    let ns = settings.namespace.as_deref();
    let (server_store, server_writer) = reflector::store();
    let (job_store, job_writer) = reflector::store();
    let ctx = context(
        client.clone(),
        &settings,
        metrics,
        server_store.clone(),
        job_store,
    )?;
    let own_writes = ctx.own_writes.clone();
    let (codesources, jobs): (Api<CodeSource>, Api<Job>) =
        (scoped_api(&client, ns), scoped_api(&client, ns));
    let worker_jobs =
        watcher::Config::default().labels(&format!("{}={}", labels::COMPONENT, COMPONENT));
    let (store, writer) = reflector::store();
    let forgetting = ctx.clone();
    let triggers = reflector(
        writer,
        // Listed in pages (not `any_semantic`, which the API server answers from its
        // cache in one piece: 10,000 CodeSources at once).
        watcher(codesources, watcher::Config::default()).modify(strip_managed_fields),
    )
    .default_backoff()
    // A deleted CodeSource's memory goes with it.
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(cs) = event {
            forgetting.memory.forget(&key(cs));
        }
    })
    .applied_objects()
    // Not the events of our own status writes (see `own_writes`).
    .try_filter(move |cs| future::ready(!own_writes.is_own(&cs.metadata)));

    // A Server that appears or changes, or a change of a Server's Deployment (the
    // Deployment controller reporting progress), wakes the CodeSources publishing into
    // that Server's Config. The Server kind may be missing (no openvox-operator yet):
    // its watch then retries with backoff and the rollout says no Servers are found.
    let servers = reflector(
        server_writer,
        watcher(
            scoped_api::<Server>(&client, ns),
            watcher::Config::default(),
        )
        .modify(strip_managed_fields),
    )
    .default_backoff()
    .touched_objects();
    let deployments = watcher(
        scoped_api::<PartialObjectMeta<Deployment>>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    // Worker Jobs into the cache the reconciles read them from (no list per check).
    let delay = settings.job_events_delay;
    let job_events = watcher(jobs, worker_jobs)
        .modify(strip_managed_fields)
        .then(move |event| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            event
        });
    let jobs = reflector(job_writer, job_events)
        .default_backoff()
        .touched_objects();
    let (by_server, by_deployment) = (store.clone(), store.clone());
    let (server_ctx, deployment_ctx) = (ctx.clone(), ctx.clone());
    Controller::for_stream(triggers, store)
        .owns_stream(jobs)
        .watches_stream(servers, move |server| {
            let woken = publishing_into(&by_server, server.namespace(), &server.spec.config_ref);
            note_rollout_events(&server_ctx, &woken);
            woken
        })
        .watches_stream(deployments, move |deployment| {
            let Some(owner) = owning_server(&deployment) else {
                return Vec::new();
            };
            let ns = deployment.namespace();
            let server =
                server_store.get(&ObjectRef::new(&owner).within(&ns.clone().unwrap_or_default()));
            let woken = server
                .map(|s| publishing_into(&by_deployment, ns, &s.spec.config_ref))
                .unwrap_or_default();
            note_rollout_events(&deployment_ctx, &woken);
            woken
        })
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
