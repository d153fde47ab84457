//! Wiring of the Pool controller: what it watches and how events map to Pools.
//!
//! - Pools themselves, plus the siblings a change may hand a hostname to;
//! - owned Services (metadata only, kept in a store: whose label a Service carries
//!   decides whether another controller manages its Pool);
//! - owned TLSRoutes, once the Gateway API is served (found by polling discovery, so
//!   CRDs installed after start-up are noticed without a restart);
//! - Servers, to the Pools of their namespace that inject DNS alt names;
//! - EndpointSlices (metadata only), to the Pool named by their service-name label.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt as _, future};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use openvox_crds::Pool;
use openvox_crds::names::CONTROLLER_MANAGER;
use openvox_crds::operator::Server;
use tokio::sync::{OnceCell, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::endpoints::SERVICE_NAME_LABEL;
use super::error::Error;
use super::hostname::claimed_hostname;
use super::reconcile::{Context, reconcile};
use super::route::{GATEWAY_GROUP, tlsroute_resource};
use super::status::in_conflict;
use crate::client::{scoped_api, strip_managed_fields};
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;

/// Settings of the Pool controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// How often discovery is asked whether the Gateway API appeared or went away.
    pub gateway_api_poll: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// The status fields the installed Pool CRD declares; `None`: all of ours. Set when
    /// the controller runs on a Pool CRD that is not ours (see `ownership`).
    pub status_fields: Option<BTreeSet<String>>,
}

impl Settings {
    /// Settings for one namespace (or all), with the defaults of the process.
    pub fn new(namespace: Option<String>, concurrency: u16) -> Self {
        Self {
            namespace,
            gateway_api_poll: Duration::from_secs(60),
            concurrency,
            status_fields: None,
        }
    }
}

/// Pools of `namespace` in `store` for which `keep` holds.
fn pools_where(
    store: &Store<Pool>,
    namespace: Option<String>,
    keep: impl Fn(&Pool) -> bool,
) -> Vec<ObjectRef<Pool>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && keep(p))
        .map(|p| ObjectRef::from(&**p))
        .collect()
}

/// Runs the Pool controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.as_deref();
    let pools: Api<Pool> = scoped_api(&client, ns);
    let own_writes = OwnWrites::default();
    let own_filter = own_writes.clone();
    let own_services = own_writes.clone();
    let (store, writer) = reflector::store();
    let triggers = reflector(
        writer,
        watcher(pools, watcher::Config::default().any_semantic()).modify(strip_managed_fields),
    )
    .default_backoff()
    .applied_objects()
    // Not the events of our own status writes (see `own_writes`).
    .try_filter(move |pool| future::ready(!own_filter.is_own(&pool.metadata)));
    let controller = Controller::for_stream(triggers, store.clone());

    let gateway_api = Arc::new(AtomicBool::new(false));
    let (route_tx, route_rx) = mpsc::channel::<ObjectRef<Pool>>(256);
    let (all_tx, all_rx) = mpsc::channel::<()>(4);
    tokio::spawn(watch_gateway_api(
        client.clone(),
        settings.clone(),
        gateway_api.clone(),
        route_tx,
        all_tx,
    ));

    let sibling_store = store.clone();
    let server_store = store.clone();
    let slice_store = store.clone();
    let (service_store, service_writer) = reflector::store();
    let services = reflector(
        service_writer,
        watcher(
            scoped_api::<PartialObjectMeta<Service>>(&client, ns),
            watcher::Config::default(),
        )
        .modify(strip_managed_fields),
    )
    .default_backoff()
    .touched_objects()
    .try_filter(move |service| future::ready(!own_services.is_own(&service.metadata)));
    let slices = watcher(
        scoped_api::<PartialObjectMeta<EndpointSlice>>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter::from(CONTROLLER_MANAGER.to_string()),
        ),
        pools: store,
        gateway_api,
        alt_names_are_a_set: OnceCell::new(),
        own_writes,
        services: service_store,
        status_fields: settings.status_fields.clone(),
        metrics,
        managed_elsewhere: Mutex::new(BTreeSet::new()),
        failures: Default::default(),
    });

    controller
        // Service changes wake their Pool, except the ones this controller just made:
        // each Pool's first reconcile created its Service and then ran again for it.
        .owns_stream(services)
        // A Pool change can hand its hostname to a sibling (or take it away): wake the
        // Pools claiming the same hostname and every Pool currently losing a conflict.
        .watches(
            scoped_api::<Pool>(&client, ns),
            watcher::Config::default(),
            move |pool| {
                let hostname = claimed_hostname(&pool).map(str::to_ascii_lowercase);
                let me = pool.name_any();
                pools_where(&sibling_store, pool.namespace(), |p| {
                    p.name_any() != me
                        && (claimed_hostname(p).map(str::to_ascii_lowercase) == hostname
                            && hostname.is_some()
                            || p.status
                                .as_ref()
                                .is_some_and(|s| in_conflict(&s.conditions)))
                })
            },
        )
        .watches(
            scoped_api::<Server>(&client, ns),
            watcher::Config::default(),
            move |server| {
                pools_where(&server_store, server.namespace(), |p| {
                    server.spec.pool_refs.iter().any(|r| *r == p.name_any())
                        || p.spec.route.as_ref().is_some_and(|r| r.inject_dns_alt_name)
                })
            },
        )
        .watches_stream(slices, move |slice| {
            let service = slice.labels().get(SERVICE_NAME_LABEL).cloned();
            pools_where(&slice_store, slice.namespace(), |p| {
                Some(p.name_any()) == service
            })
        })
        .reconcile_on(ReceiverStream::new(route_rx))
        .reconcile_all_on(ReceiverStream::new(all_rx))
        .graceful_shutdown_on(shutdown)
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                warn!(error = %e, "pool reconcile failed");
            }
            future::ready(())
        })
        .await;
}

/// Errors back off per Pool (see `retry::after_error`): an error that repeats (a
/// schema refusing our writes) must not turn into a retry loop against the API server.
fn error_policy(pool: Arc<Pool>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::retry::after_error(
        super::reconcile::CONTROLLER,
        super::reconcile::key(&pool),
        error,
        &ctx.metrics,
        &ctx.failures,
    )
}

/// Whether the TLSRoute kind is served, asked through discovery (which every
/// authenticated identity may read).
async fn tlsroute_served(client: &Client) -> bool {
    match client
        .list_api_group_resources(&format!("{GATEWAY_GROUP}/v1"))
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "tlsroutes"),
        Err(_) => false,
    }
}

/// Polls discovery for the Gateway API. When TLSRoute appears, every Pool is
/// reconciled and route changes start waking their Pools; when it goes away, the flag
/// drops and the Pools report it.
async fn watch_gateway_api(
    client: Client,
    settings: Settings,
    available: Arc<AtomicBool>,
    route_tx: mpsc::Sender<ObjectRef<Pool>>,
    all_tx: mpsc::Sender<()>,
) {
    let mut route_watch: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let served = tlsroute_served(&client).await;
        if served != available.swap(served, Ordering::Relaxed) {
            info!(served, "Gateway API TLSRoute availability changed");
            if let Some(task) = route_watch.take() {
                task.abort();
            }
            if served {
                route_watch = Some(tokio::spawn(forward_route_owners(
                    client.clone(),
                    settings.namespace.clone(),
                    route_tx.clone(),
                )));
            }
            let _ = all_tx.send(()).await;
        }
        tokio::time::sleep(settings.gateway_api_poll).await;
    }
}

/// Maps TLSRoute changes to the Pools that own them.
async fn forward_route_owners(
    client: Client,
    namespace: Option<String>,
    tx: mpsc::Sender<ObjectRef<Pool>>,
) {
    let resource = tlsroute_resource();
    let routes: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    let mut events = watcher(routes, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(route) = event else { continue };
        let owners = route
            .owner_references()
            .iter()
            .filter(|o| o.kind == "Pool" && o.controller == Some(true));
        for owner in owners {
            let pool = ObjectRef::new(&owner.name).within(&route.namespace().unwrap_or_default());
            if tx.send(pool).await.is_err() {
                return;
            }
        }
    }
}
