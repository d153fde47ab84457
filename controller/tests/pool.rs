//! The Pool controller against a real kube-apiserver (with kube-controller-manager):
//! each parity behaviour of openvox-operator's Pool, then what we do beyond it.
//! The controller runs in this process against the API server; objects that only a
//! kubelet would produce (ready endpoints) are written as EndpointSlices by the test.

use std::time::Duration;

use anyhow::Result;
use harness::{ControlPlane, Options, TestNamespace};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use openvox_code_controller::metrics::Metrics;
use openvox_code_controller::pool::{self, Settings, route::tlsroute_resource};
use openvox_crds::Pool;
use openvox_crds::operator::Certificate;
use serde_json::{Value, json};

use harness::fixtures::{StopOnDrop as Running, eventually_some as eventually};

fn start_controller(client: &Client, namespace: &str) -> Running {
    let (running, shutdown) = Running::shutdown();
    let settings = Settings {
        gateway_api_poll: Duration::from_millis(500),
        ..Settings::new(Some(namespace.to_string()), 4)
    };
    tokio::spawn(pool::run(
        client.clone(),
        settings,
        Metrics::new(),
        shutdown,
    ));
    running
}

async fn apply(client: &Client, ns: &str, object: Value) -> Result<()> {
    harness::apply::apply(client, Some(ns), object).await?;
    Ok(())
}

fn pool(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Pool", "metadata": {"name": name}, "spec": spec})
}

fn routed(hostname: &str, inject: bool) -> Value {
    json!({"route": {"enabled": true, "hostname": hostname, "gatewayRef": {"name": "gw"}, "injectDNSAltName": inject}})
}

async fn pool_status(ns: &TestNamespace, name: &str) -> Option<Value> {
    let pools: Api<Pool> = ns.api();
    let pool = pools.get_opt(name).await.ok()??;
    serde_json::to_value(pool.status?).ok()
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn route(ns: &TestNamespace, name: &str) -> Option<DynamicObject> {
    let routes: Api<DynamicObject> =
        Api::namespaced_with(ns.client().clone(), ns.name(), &tlsroute_resource());
    routes.get_opt(name).await.ok()?
}

#[tokio::test]
async fn service_matches_the_operator_and_keeps_an_assigned_node_port() -> Result<()> {
    let ns = TestNamespace::new("pool-service").await?;
    let _controller = start_controller(ns.client(), ns.name());
    apply(
        ns.client(),
        ns.name(),
        pool(
            "puppet",
            json!({"service": {
                "type": "NodePort", "port": 8141,
                "labels": {"team": "infra", "app.kubernetes.io/name": "custom"},
                "annotations": {"example.com/lb": "internal"},
                "externalIPs": ["192.0.2.10"],
            }}),
        ),
    )
    .await?;

    let services: Api<Service> = ns.api();
    let svc = eventually("the Pool's Service", || async {
        services.get_opt("puppet").await.ok()?
    })
    .await?;
    let spec = svc.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(
        spec.selector.unwrap()["openvox.voxpupuli.org/pool-puppet"],
        "true"
    );
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 8141));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8140))
    );
    let assigned = port.node_port.expect("Kubernetes assigns a node port");
    let labels = svc.metadata.labels.clone().unwrap();
    assert_eq!(labels["team"], "infra");
    assert_eq!(
        labels["app.kubernetes.io/name"], "custom",
        "user labels win"
    );
    assert_eq!(
        svc.metadata.annotations.clone().unwrap()["example.com/lb"],
        "internal"
    );
    assert_eq!(spec.external_ips.unwrap(), vec!["192.0.2.10".to_string()]);
    assert_eq!(svc.metadata.owner_references.unwrap()[0].kind, "Pool");

    let status = eventually("Pool status", || pool_status(&ns, "puppet")).await?;
    assert_eq!(status["serviceName"], "puppet");

    // A later spec change rewrites our fields and keeps the node port Kubernetes chose.
    apply(
        ns.client(),
        ns.name(),
        pool(
            "puppet",
            json!({"service": {"type": "NodePort", "port": 8142}}),
        ),
    )
    .await?;
    let svc = eventually("the port change", || async {
        let svc = services.get_opt("puppet").await.ok()??;
        (svc.spec.as_ref()?.ports.as_ref()?[0].port == 8142).then_some(svc)
    })
    .await?;
    let spec = svc.spec.unwrap();
    assert_eq!(spec.ports.unwrap()[0].node_port, Some(assigned));
    assert!(
        !svc.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("example.com/lb"),
        "dropped annotation is removed"
    );
    Ok(())
}

#[tokio::test]
async fn route_follows_the_pool_and_a_foreign_route_is_left_alone() -> Result<()> {
    let ns = TestNamespace::new("pool-route").await?;
    let _controller = start_controller(ns.client(), ns.name());
    apply(
        ns.client(),
        ns.name(),
        pool("puppet", routed("puppet.example.com", false)),
    )
    .await?;

    let created = eventually("the TLSRoute", || route(&ns, "puppet")).await?;
    assert_eq!(
        created.data["spec"]["hostnames"],
        json!(["puppet.example.com"])
    );
    // The API server fills in defaults (group, kind, weight); check what we set.
    let parent = &created.data["spec"]["parentRefs"][0];
    assert_eq!(
        (&parent["name"], &parent["kind"]),
        (&json!("gw"), &json!("Gateway"))
    );
    let backend = &created.data["spec"]["rules"][0]["backendRefs"][0];
    assert_eq!(
        (&backend["name"], &backend["port"]),
        (&json!("puppet"), &json!(8140))
    );
    assert_eq!(
        created.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Pool"
    );

    let mut spec = routed("new.example.com", false);
    spec["route"]["gatewayRef"]["sectionName"] = json!("tls");
    apply(ns.client(), ns.name(), pool("puppet", spec)).await?;
    let updated = eventually("the route update", || async {
        let r = route(&ns, "puppet").await?;
        (r.data["spec"]["hostnames"] == json!(["new.example.com"])).then_some(r)
    })
    .await?;
    assert_eq!(updated.data["spec"]["parentRefs"][0]["sectionName"], "tls");

    apply(
        ns.client(),
        ns.name(),
        pool("puppet", json!({"route": {"enabled": false}})),
    )
    .await?;
    eventually("the route removal", || async {
        route(&ns, "puppet").await.is_none().then_some(())
    })
    .await?;

    // A TLSRoute with another Pool's name that this controller does not control stays.
    let routes: Api<DynamicObject> =
        Api::namespaced_with(ns.client().clone(), ns.name(), &tlsroute_resource());
    let foreign: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
        "metadata": {"name": "other"},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["other.example.com"],
                 "rules": [{"backendRefs": [{"name": "other", "port": 8140}]}]}
    }))?;
    routes.create(&PostParams::default(), &foreign).await?;
    apply(ns.client(), ns.name(), pool("other", json!({}))).await?;
    eventually("Pool other reconciled", || pool_status(&ns, "other")).await?;
    assert!(
        route(&ns, "other").await.is_some(),
        "a route the Pool does not control is not deleted"
    );
    Ok(())
}

#[tokio::test]
async fn the_oldest_pool_owns_a_hostname_and_the_next_one_takes_it_over() -> Result<()> {
    let ns = TestNamespace::new("pool-conflict").await?;
    let _controller = start_controller(ns.client(), ns.name());
    apply(
        ns.client(),
        ns.name(),
        pool("first", routed("shared.example.com", false)),
    )
    .await?;
    eventually("first's route", || route(&ns, "first")).await?;
    // Creation timestamps have one-second resolution: make the order unambiguous.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply(
        ns.client(),
        ns.name(),
        pool("second", routed("shared.example.com", false)),
    )
    .await?;

    let status = eventually("second's conflict", || async {
        let s = pool_status(&ns, "second").await?;
        (condition(&s, "HostnameConflict")?["status"] == "True").then_some(s)
    })
    .await?;
    assert!(
        condition(&status, "HostnameConflict").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("first")
    );
    assert_eq!(
        condition(&status, "Ready").unwrap()["reason"],
        "HostnameConflict"
    );
    assert!(
        route(&ns, "second").await.is_none(),
        "the loser owns no route"
    );

    let pools: Api<Pool> = ns.api();
    pools.delete("first", &DeleteParams::default()).await?;
    eventually("second takes the hostname", || route(&ns, "second")).await?;
    let status = eventually("second's conflict cleared", || async {
        let s = pool_status(&ns, "second").await?;
        condition(&s, "HostnameConflict").is_none().then_some(s)
    })
    .await?;
    assert_eq!(condition(&status, "RouteReady").unwrap()["status"], "True");
    Ok(())
}

fn slice(name: &str, service: &str, ready: &[bool]) -> Value {
    let endpoints: Vec<Value> = ready
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"addresses": [format!("10.1.0.{}", i + 1)], "conditions": {"ready": r}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "openvox-code-tests",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": 8140, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

async fn endpoints_become(ns: &TestNamespace, n: i64) -> Result<Value> {
    eventually(&format!("{n} endpoints"), || async {
        let s = pool_status(ns, "puppet").await?;
        (s["endpoints"] == n).then_some(s)
    })
    .await
}

#[tokio::test]
async fn endpoint_count_follows_ready_changes_in_endpoint_slices() -> Result<()> {
    let ns = TestNamespace::new("pool-endpoints").await?;
    let _controller = start_controller(ns.client(), ns.name());
    apply(ns.client(), ns.name(), pool("puppet", json!({}))).await?;
    let status = endpoints_become(&ns, 0).await?;
    assert_eq!(
        condition(&status, "Ready").unwrap()["reason"],
        "NoEndpoints"
    );

    apply(
        ns.client(),
        ns.name(),
        slice("puppet-a", "puppet", &[true, true]),
    )
    .await?;
    apply(
        ns.client(),
        ns.name(),
        slice("puppet-b", "puppet", &[true, false]),
    )
    .await?;
    let status = endpoints_become(&ns, 3).await?;
    assert_eq!(condition(&status, "Ready").unwrap()["status"], "True");

    apply(
        ns.client(),
        ns.name(),
        slice("puppet-a", "puppet", &[false, true]),
    )
    .await?;
    endpoints_become(&ns, 2).await?;
    let slices: Api<EndpointSlice> = ns.api();
    slices.delete("puppet-b", &DeleteParams::default()).await?;
    endpoints_become(&ns, 1).await?;
    Ok(())
}

async fn alt_names(ns: &TestNamespace, cert: &str) -> Option<Vec<String>> {
    let certs: Api<Certificate> = ns.api();
    Some(certs.get_opt(cert).await.ok()??.spec.dns_alt_names)
}

#[tokio::test]
async fn route_hostnames_are_injected_into_member_certificates_and_removed_again() -> Result<()> {
    let ns = TestNamespace::new("pool-altnames").await?;
    let _controller = start_controller(ns.client(), ns.name());
    let client = ns.client();
    apply(
        client,
        ns.name(),
        json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Certificate",
            "metadata": {"name": "server-cert"},
            "spec": {"authorityRef": "ca", "dnsAltNames": ["own.example.com"]},
        }),
    )
    .await?;
    apply(client, ns.name(), json!({
        "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Server",
        "metadata": {"name": "server"},
        "spec": {"configRef": "production", "certificateRef": "server-cert", "poolRefs": ["puppet"]},
    })).await?;
    apply(
        client,
        ns.name(),
        pool("puppet", routed("puppet.example.com", true)),
    )
    .await?;

    let want = |names: &'static [&'static str]| {
        let ns = &ns;
        move || async move {
            let got = alt_names(ns, "server-cert").await?;
            (got == names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).then_some(())
        }
    };
    eventually(
        "hostname injected",
        want(&["own.example.com", "puppet.example.com"]),
    )
    .await?;

    apply(
        client,
        ns.name(),
        pool("puppet", routed("renamed.example.com", true)),
    )
    .await?;
    eventually(
        "old hostname replaced",
        want(&["own.example.com", "renamed.example.com"]),
    )
    .await?;

    apply(
        client,
        ns.name(),
        pool("puppet", json!({"route": {"enabled": false}})),
    )
    .await?;
    eventually("injected hostname removed", want(&["own.example.com"])).await?;
    Ok(())
}

#[tokio::test]
async fn gateway_api_installed_after_start_is_noticed_without_a_restart() -> Result<()> {
    let control_plane = tokio::task::spawn_blocking(|| {
        ControlPlane::start(&Options {
            gateway_api: false,
            ..Options::default()
        })
    })
    .await??;
    let ns = TestNamespace::new_in(&control_plane, "pool-nogateway").await?;
    let _controller = start_controller(ns.client(), ns.name());
    apply(
        ns.client(),
        ns.name(),
        pool("puppet", routed("puppet.example.com", false)),
    )
    .await?;

    let status = eventually("the missing Gateway API reported", || async {
        let s = pool_status(&ns, "puppet").await?;
        (condition(&s, "RouteReady")?["reason"] == "GatewayAPIMissing").then_some(s)
    })
    .await?;
    let services: Api<Service> = ns.api();
    assert!(
        services.get_opt("puppet").await?.is_some(),
        "the Service does not wait for the Gateway API"
    );
    assert_eq!(status["serviceName"], "puppet");

    control_plane.install_gateway_api(ns.client()).await?;
    eventually("the route after the CRD appeared", || route(&ns, "puppet")).await?;
    eventually("RouteReady", || async {
        let s = pool_status(&ns, "puppet").await?;
        (condition(&s, "RouteReady")?["status"] == "True").then_some(())
    })
    .await?;
    Ok(())
}
