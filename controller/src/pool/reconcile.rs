//! One Pool reconcile: ownership → Service → route → endpoints → DNS alt names →
//! status. Desired objects come from the pure builders; this file only talks to the API.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use openvox_crds::names::{CONTROLLER_MANAGER, annotations, labels, reasons};
use openvox_crds::operator::{Certificate, Server};
use openvox_crds::{Pool, PoolStatus};
use serde_json::json;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::alt_names::{self, Injections};
use super::endpoints::{SERVICE_NAME_LABEL, ready_endpoints};
use super::error::{Error, kube};
use super::hostname::{claimed_hostname, hostname_owner};
use super::ownership::{foreign_manager, only_declared};
use super::route::{desired_route, is_controlled_by, tlsroute_resource};
use super::service::desired_service;
use super::status::{Observed, RouteState, in_conflict, pool_conditions};
use crate::client::is_not_found;
use crate::conditions::merge_conditions;
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;
use crate::retry::Failures;

/// Metrics label of this controller.
pub const CONTROLLER: &str = "pool";

/// Name of openvox-operator's Certificate CRD, read to learn how `dnsAltNames` merges.
const CERTIFICATE_CRD: &str = "certificates.openvox.voxpupuli.org";
/// How often a healthy Pool is looked at again without any event, on average. Every
/// input of a Pool is watched (the Pool, its Service, EndpointSlices and TLSRoute, the
/// Servers); the resync only repairs what a lost watch event left behind, and costs a
/// Pool reconcile its four requests. Once an hour: 1,000 Pools then cost about 70
/// requests a minute at rest, where every 5 minutes they cost about 800.
const RESYNC: Duration = Duration::from_secs(3600);
/// Spread of the resync period around [`RESYNC`], either way, in milliseconds.
const RESYNC_SPREAD_MS: u64 = 600_000;

/// The resync period of Pool `ns/name`: [`RESYNC`] moved by up to ten minutes either
/// way, fixed per Pool. Pools created together (a chart install, a controller restart)
/// would otherwise all come back in the same second, every hour forever; with a period
/// of their own they drift apart after the first round.
pub fn resync_after(ns: &str, name: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (ns, name).hash(&mut hasher);
    let offset = hasher.finish() % (2 * RESYNC_SPREAD_MS + 1);
    RESYNC - Duration::from_millis(RESYNC_SPREAD_MS) + Duration::from_millis(offset)
}

/// What the Pool reconciler shares across reconciles.
pub struct Context {
    /// API client with the controller's identity.
    pub client: Client,
    /// Event recorder for Pools.
    pub recorder: Recorder,
    /// All Pools the controller sees (for hostname ownership and alt names).
    pub pools: Store<Pool>,
    /// Whether the TLSRoute kind is served; flipped by the discovery poller.
    pub gateway_api: Arc<AtomicBool>,
    /// Whether `Certificate.spec.dnsAltNames` is a set (per-name ownership) rather than
    /// an atomic list; read once from the CRD.
    pub alt_names_are_a_set: OnceCell<bool>,
    /// Versions our status writes returned, which must not trigger a reconcile.
    pub own_writes: OwnWrites,
    /// Metadata of the Services in scope: whose label a Pool's Service carries.
    pub services: Store<PartialObjectMeta<Service>>,
    /// Status fields the installed Pool CRD declares; `None`: all of ours.
    pub status_fields: Option<BTreeSet<String>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Pools (`ns/name`) left alone because another controller manages their Service;
    /// each is announced once, when it joins.
    pub managed_elsewhere: Mutex<BTreeSet<String>>,
    /// Consecutive failures per Pool, for backoff.
    pub failures: Failures,
}

/// `ns/name` of a Pool, for logs and per-Pool bookkeeping.
pub fn key(pool: &Pool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

impl Context {
    /// The controller other than us that manages `pool`'s Service, if any.
    fn foreign_manager_of(&self, pool: &Pool) -> Option<String> {
        let service = self
            .services
            .get(&ObjectRef::new(&pool.name_any()).within(&pool.namespace().unwrap_or_default()))?;
        let labels = service.metadata.labels.clone().unwrap_or_default();
        foreign_manager(&labels, &pool.spec.service.labels).map(str::to_owned)
    }

    /// Records whether `pool` is left to `manager`; returns true when that is news.
    fn note_managed_elsewhere(&self, pool: &Pool, manager: Option<&str>) -> bool {
        let mut set = self
            .managed_elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let changed = match manager {
            Some(_) => set.insert(key(pool)),
            None => set.remove(&key(pool)),
        };
        self.metrics.pools_managed_elsewhere(set.len());
        changed
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("pool::Context").finish_non_exhaustive()
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(CONTROLLER_MANAGER).force()
}

/// Reconciles one Pool.
pub async fn reconcile(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&pool, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.failures.succeeded(&key(&pool));
    }
    result
}

async fn reconcile_inner(pool: &Pool, ctx: &Context) -> Result<Action, Error> {
    let (Some(name), Some(ns)) = (pool.metadata.name.clone(), pool.namespace()) else {
        return Err(Error::Unnamed);
    };
    if pool.metadata.deletion_timestamp.is_some() {
        ctx.note_managed_elsewhere(pool, None);
        // Owner references remove the Service and route; only the injected alt names
        // live outside them.
        sync_alt_names(ctx, &ns).await?;
        return Ok(Action::await_change());
    }

    // A Service labelled by another controller (openvox-operator, which reconciles
    // Pools wherever it runs) makes the whole Pool theirs: writing anything would
    // start a tug of war. A change of that Service wakes us again.
    crate::client::store_ready(&ctx.services).await;
    let manager = ctx.foreign_manager_of(pool);
    if ctx.note_managed_elsewhere(pool, manager.as_deref()) {
        let note = match &manager {
            Some(manager) => format!(
                "Service {name} is managed by {manager}: openvox-code leaves this Pool's \
                 Service, TLSRoute, Certificates and status to it"
            ),
            None => format!("openvox-code manages this Pool's Service {name} again"),
        };
        info!(pool = %key(pool), "{note}");
        publish(
            ctx,
            pool,
            EventType::Normal,
            reasons::MANAGED_ELSEWHERE,
            "Reconcile",
            note,
        )
        .await;
    }
    if manager.is_some() {
        return Ok(Action::await_change());
    }

    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let applied = services
        .patch(&name, &apply_params(), &Patch::Apply(desired_service(pool)))
        .await
        .map_err(kube("apply Service"))?;
    // Creating or changing the Service must not wake this Pool again.
    ctx.own_writes.record(&applied.metadata);

    let route = sync_route(ctx, pool, &name, &ns).await?;

    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
        .await
        .map_err(kube("list EndpointSlices"))?;
    let endpoints = ready_endpoints(&listed.items);

    sync_alt_names(ctx, &ns).await?;

    let observed = Observed { endpoints, route };
    write_status(ctx, pool, &name, &ns, &observed).await?;
    Ok(Action::requeue(resync_after(&ns, &name)))
}

/// Applies or removes the TLSRoute and says where the route stands.
async fn sync_route(ctx: &Context, pool: &Pool, name: &str, ns: &str) -> Result<RouteState, Error> {
    let wanted = desired_route(pool);
    if !ctx.gateway_api.load(Ordering::Relaxed) {
        return Ok(if wanted.is_some() {
            RouteState::GatewayApiMissing
        } else {
            RouteState::Disabled
        });
    }
    let routes: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &tlsroute_resource());

    let siblings = ctx.pools.state();
    let siblings = siblings
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .map(|p| &**p);
    let conflict = claimed_hostname(pool).and_then(|hostname| {
        let owner = hostname_owner(siblings, hostname)?;
        (owner != name).then(|| RouteState::Conflict {
            hostname: hostname.to_string(),
            owner: owner.to_string(),
        })
    });

    match (wanted, conflict) {
        (Some(route), None) => {
            let existed = routes
                .get_opt(name)
                .await
                .map_err(kube("get TLSRoute"))?
                .is_some();
            routes
                .patch(name, &apply_params(), &Patch::Apply(&route))
                .await
                .map_err(kube("apply TLSRoute"))?;
            if !existed {
                publish(
                    ctx,
                    pool,
                    EventType::Normal,
                    reasons::TLSROUTE_CREATED,
                    "CreateRoute",
                    format!(
                        "TLSRoute {name} routes {} to Service {name}",
                        claimed_hostname(pool).unwrap_or_default()
                    ),
                )
                .await;
            }
            Ok(RouteState::Applied)
        }
        (wanted, conflict) => {
            delete_owned_route(ctx, &routes, pool, name).await?;
            if let Some(RouteState::Conflict { hostname, owner }) = &conflict
                && !in_conflict(pool.status.as_ref().map_or(&[][..], |s| &s.conditions))
            {
                publish(
                    ctx,
                    pool,
                    EventType::Warning,
                    reasons::HOSTNAME_CONFLICT,
                    "ClaimHostname",
                    format!("hostname {hostname} is already routed by the older Pool {owner}"),
                )
                .await;
            }
            // Only a conflict stops a wanted route here, so no conflict means "disabled".
            let _ = wanted;
            Ok(conflict.unwrap_or(RouteState::Disabled))
        }
    }
}

/// Deletes the route named like the Pool, but only if this Pool controls it.
async fn delete_owned_route(
    ctx: &Context,
    routes: &Api<DynamicObject>,
    pool: &Pool,
    name: &str,
) -> Result<(), Error> {
    let Some(existing) = routes.get_opt(name).await.map_err(kube("get TLSRoute"))? else {
        return Ok(());
    };
    if !is_controlled_by(&existing, pool) {
        return Ok(());
    }
    routes
        .delete(name, &DeleteParams::default())
        .await
        .map_err(kube("delete TLSRoute"))?;
    publish(
        ctx,
        pool,
        EventType::Normal,
        reasons::TLSROUTE_DELETED,
        "DeleteRoute",
        format!("TLSRoute {name} removed"),
    )
    .await;
    Ok(())
}

/// Brings every Certificate of the namespace to the alt names the Pools want: adds
/// wanted names, removes names we injected before and no longer want.
async fn sync_alt_names(ctx: &Context, ns: &str) -> Result<(), Error> {
    // Copies of the namespace's Pools only when one wants names injected: this runs in
    // every Pool reconcile, and with 1,000 Pools the start-up alone (about 3 reconciles
    // each in the scale bench) made millions of copies for nothing.
    let state = ctx.pools.state();
    let in_namespace = || {
        state
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns))
    };
    // Pools another controller manages inject nothing through us.
    let ours = |p: &&Arc<Pool>| ctx.foreign_manager_of(p).is_none();
    let any_wants = in_namespace()
        .filter(ours)
        .any(|p| p.spec.route.as_ref().is_some_and(|r| r.inject_dns_alt_name));

    let certificates: Api<Certificate> = Api::namespaced(ctx.client.clone(), ns);
    let touched = match certificates
        .list(&ListParams::default().labels(&format!("{}=true", labels::DNS_ALT_NAMES_INJECTED)))
        .await
    {
        Ok(list) => list.items,
        // No Certificate kind installed: nothing to inject into.
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(kube("list Certificates")(e)),
    };
    if !any_wants && touched.is_empty() {
        return Ok(());
    }
    let wanted: Injections = if any_wants {
        let servers: Api<Server> = Api::namespaced(ctx.client.clone(), ns);
        let servers = servers
            .list(&ListParams::default())
            .await
            .map_err(kube("list Servers"))?;
        let pools: Vec<Pool> = in_namespace().filter(ours).map(|p| (**p).clone()).collect();
        alt_names::wanted_injections(&pools, &servers.items)
    } else {
        Injections::new()
    };

    let names: BTreeSet<&String> = wanted
        .keys()
        .chain(touched.iter().filter_map(|c| c.metadata.name.as_ref()))
        .collect();
    for cert_name in names {
        let Some(cert) = certificates
            .get_opt(cert_name)
            .await
            .map_err(kube("get Certificate"))?
        else {
            continue;
        };
        let before = alt_names::parse_record(
            cert.annotations()
                .get(annotations::INJECTED_DNS_ALT_NAMES)
                .map(String::as_str),
        );
        let want = wanted.get(cert_name).cloned().unwrap_or_default();
        if before == want
            && (want.is_empty() || cert.labels().contains_key(labels::DNS_ALT_NAMES_INJECTED))
        {
            continue;
        }
        apply_alt_names(ctx, &certificates, &cert, &before, &want).await?;
    }
    Ok(())
}

async fn apply_alt_names(
    ctx: &Context,
    certificates: &Api<Certificate>,
    cert: &Certificate,
    before: &BTreeSet<String>,
    want: &BTreeSet<String>,
) -> Result<(), Error> {
    let name = cert.name_any();
    let is_set = *ctx
        .alt_names_are_a_set
        .get_or_try_init(|| alt_names_list_is_set(&ctx.client))
        .await?;
    // With a set, our apply owns exactly our names and others' stay theirs; with an
    // atomic list the whole list must be sent, keeping every name we did not add.
    let list: Vec<String> = if is_set {
        want.iter().cloned().collect()
    } else {
        alt_names::merged_alt_names(&cert.spec.dns_alt_names, before, want)
    };
    let patch = json!({
        "apiVersion": Certificate::api_version(&()),
        "kind": Certificate::kind(&()),
        "metadata": {
            "name": name,
            "labels": {labels::DNS_ALT_NAMES_INJECTED: "true"},
            "annotations": {annotations::INJECTED_DNS_ALT_NAMES: alt_names::record(want)},
        },
        "spec": {"dnsAltNames": list},
    });
    certificates
        .patch(&name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(kube("apply Certificate dnsAltNames"))?;
    info!(certificate = %name, names = ?want, "updated injected DNS alt names");

    // openvox-operator signs a Certificate once; a Signed one must go back to Pending
    // to be re-issued with the new names (as the operator's own Pool controller does).
    // Read untyped: our Certificate type carries only the spec, so a typed read drops
    // the status and never saw `Signed`.
    let untyped: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &cert.namespace().unwrap_or_default(),
        &kube::discovery::ApiResource::erase::<Certificate>(&()),
    );
    let signed = untyped
        .get_status(&name)
        .await
        .ok()
        .is_some_and(|c| c.data["status"]["phase"] == "Signed");
    if signed && want != before {
        let reset = json!({"status": {"phase": "Pending"}});
        if let Err(e) = certificates
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&reset))
            .await
        {
            warn!(certificate = %name, error = %e, "could not ask for re-signing");
        }
    }
    Ok(())
}

/// Reads the Certificate CRD to learn whether `spec.dnsAltNames` is a set. Without
/// the CRD (or the right to read it) the safe answer is "atomic": the merge path never
/// drops names it did not add.
async fn alt_names_list_is_set(client: &Client) -> Result<bool, Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let Ok(Some(crd)) = crds.get_opt(CERTIFICATE_CRD).await else {
        return Ok(false);
    };
    let crd = serde_json::to_value(crd).unwrap_or_default();
    Ok(crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| {
            v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["dnsAltNames"]
                ["x-kubernetes-list-type"]
                == "set"
        }))
}

async fn write_status(
    ctx: &Context,
    pool: &Pool,
    name: &str,
    ns: &str,
    observed: &Observed,
) -> Result<(), Error> {
    let old = pool.status.clone().unwrap_or_default();
    let conditions = merge_conditions(
        &old.conditions,
        &pool_conditions(observed),
        pool.metadata.generation,
    );
    let status = PoolStatus {
        observed_generation: pool.metadata.generation,
        service_name: Some(name.to_string()),
        endpoints: observed.endpoints,
        conditions,
    };
    // Only what the installed CRD declares (all of it on ours): the operator's Pool
    // CRD has no conditions, and the API server refuses an apply that sends them.
    let declared = ctx.status_fields.as_ref();
    let wanted = only_declared(json!(status), declared);
    let current = only_declared(json!(pool.status.clone().unwrap_or_default()), declared);
    if pool.status.is_some() && wanted == current {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": Pool::api_version(&()),
        "kind": Pool::kind(&()),
        "status": wanted,
    });
    let pools: Api<Pool> = Api::namespaced(ctx.client.clone(), ns);
    let written = pools
        .patch_status(name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(kube("apply Pool status"))?;
    ctx.own_writes.record(&written.metadata);
    Ok(())
}

async fn publish(
    ctx: &Context,
    pool: &Pool,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::events::publish(
        &ctx.recorder,
        &pool.object_ref(&()),
        type_,
        reason,
        action,
        &note,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_resync_on_periods_of_their_own_within_ten_minutes_of_an_hour() {
        let periods: Vec<Duration> = (0..1000)
            .map(|i| resync_after("puppet", &format!("pool-{i}")))
            .collect();
        let min = periods.iter().min().unwrap();
        let max = periods.iter().max().unwrap();
        assert!(*min >= Duration::from_secs(3000), "{min:?}");
        assert!(*max <= Duration::from_secs(4200), "{max:?}");
        // Spread over the whole window, not bunched: 1,000 Pools land in most of the
        // 120 ten-second slots.
        let slots: BTreeSet<u64> = periods.iter().map(|p| p.as_secs() / 10).collect();
        assert!(slots.len() > 100, "{} distinct slots", slots.len());
        // Fixed per Pool, different between namespaces.
        assert_eq!(resync_after("puppet", "pool-1"), periods[1]);
        let elsewhere = (0..20)
            .filter(|i| resync_after("other", &format!("pool-{i}")) != periods[*i])
            .count();
        assert!(elsewhere >= 19, "{elsewhere}");
    }
}
