//! The test CRDs of openvox-operator's kinds behave like the operator's: both shapes of
//! `Config.spec.code` with its CEL rules, `Certificate.spec.dnsAltNames` as an atomic
//! list, and the Gateway API CRD that can be installed after the start.

// Test helpers panic like the tests themselves: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use harness::apply::apply;
use harness::{ConfigShape, ControlPlane, Options, TestNamespace};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

fn config(name: &str, code: Value) -> Value {
    json!({
        "apiVersion": "openvox.voxpupuli.org/v1alpha1",
        "kind": "Config",
        "metadata": {"name": name},
        "spec": {"image": {}, "code": code},
    })
}

async fn refusal(ns: &TestNamespace, object: Value) -> String {
    match apply(ns.client(), Some(ns.name()), object).await {
        Ok(applied) => panic!("accepted: {applied:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn the_default_config_fixture_has_the_single_shape_with_the_operators_rules() {
    let ns = TestNamespace::new("config-single").await.unwrap();
    let applied = apply(
        ns.client(),
        Some(ns.name()),
        config("production", json!({"image": "registry/code@sha256:ab"})),
    )
    .await
    .unwrap();
    // Defaults of the operator's schema are filled in.
    assert_eq!(
        applied.data["spec"]["code"]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(
        applied.data["spec"]["image"]["repository"],
        "ghcr.io/slauger/openvox-server"
    );
    // The operator's bug: without a `puppet` block no environment path is defaulted
    // (its Deployment then gets an empty mount path); `puppet: {}` gets the default.
    assert!(
        applied.data["spec"].get("puppet").is_none(),
        "{}",
        applied.data
    );
    let mut with_puppet = config("with-puppet", json!({"image": "registry/code@sha256:ab"}));
    with_puppet["spec"]["puppet"] = json!({});
    let applied = apply(ns.client(), Some(ns.name()), with_puppet)
        .await
        .unwrap();
    assert_eq!(
        applied.data["spec"]["puppet"]["environmentPath"],
        "/etc/puppetlabs/code/environments"
    );

    let list = refusal(&ns, config("list", json!([{"image": "a"}]))).await;
    assert!(list.contains("spec.code"), "{list}");
    let both = refusal(&ns, config("both", json!({"image": "a", "claimName": "b"}))).await;
    assert!(
        both.contains("image and claimName are mutually exclusive"),
        "{both}"
    );
    let neither = refusal(&ns, config("neither", json!({"imagePullPolicy": "Always"}))).await;
    assert!(
        neither.contains("either image or claimName must be set"),
        "{neither}"
    );
}

/// The newer list shape of `spec.code` and its rules, on a control plane that has it.
async fn list_shape_rules(ns: &TestNamespace) {
    let applied = apply(
        ns.client(),
        Some(ns.name()),
        config("production", json!([{"image": "registry/code@sha256:ab"}])),
    )
    .await
    .unwrap();
    assert_eq!(
        applied.data["spec"]["code"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    let single = refusal(
        ns,
        config("single", json!({"image": "registry/code@sha256:ab"})),
    )
    .await;
    assert!(single.contains("spec.code"), "{single}");
    let both = refusal(
        ns,
        config("both", json!([{"image": "a", "claimName": "b"}])),
    )
    .await;
    assert!(
        both.contains("image and claimName are mutually exclusive"),
        "{both}"
    );
    let untargeted = refusal(ns, config("two", json!([{"image": "a"}, {"image": "b"}]))).await;
    assert!(
        untargeted.contains("each entry must set either environment or mountPath"),
        "{untargeted}"
    );
    let outside = refusal(
        ns,
        config("outside", json!([{"image": "a", "mountPath": "/srv/code"}])),
    )
    .await;
    assert!(
        outside.contains("mountPath must be under the Puppet codedir"),
        "{outside}"
    );
}

fn certificate_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("openvox.voxpupuli.org", "v1alpha1", "Certificate");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

#[tokio::test]
async fn certificate_dns_alt_names_are_one_atomic_list_like_the_operators() {
    let ns = TestNamespace::new("certificate").await.unwrap();
    let certificate = |names: Value| {
        json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1",
            "kind": "Certificate",
            "metadata": {"name": "puppet"},
            "spec": {"authorityRef": "ca", "dnsAltNames": names},
        })
    };
    apply(
        ns.client(),
        Some(ns.name()),
        certificate(json!(["puppet.example.com"])),
    )
    .await
    .unwrap();
    // A second field manager applying the list takes all of it over (no per-entry merge).
    let api = certificate_api(ns.client(), ns.name());
    let other = PatchParams::apply("another-manager").force();
    let patched = api
        .patch(
            "puppet",
            &other,
            &Patch::Apply(certificate(json!(["pool.example.com"]))),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.data["spec"]["dnsAltNames"],
        json!(["pool.example.com"])
    );
    assert_eq!(
        patched.data["spec"]["certname"], "puppet",
        "default of the operator's schema"
    );
}

#[tokio::test]
async fn a_control_plane_without_gateway_api_serves_tlsroutes_once_installed_later() {
    // Its own control plane: CRDs are cluster-wide, and this one starts without the
    // Gateway API and with the newer, list-shaped Config.
    let options = Options {
        gateway_api: false,
        config_shape: ConfigShape::List,
        ..Options::default()
    };
    let control_plane = tokio::task::spawn_blocking(move || ControlPlane::start(&options))
        .await
        .unwrap()
        .unwrap();
    let ns = TestNamespace::new_in(&control_plane, "late-gateway-api")
        .await
        .unwrap();
    let client = ns.client().clone();

    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "TLSRoute");
    assert!(
        kube::discovery::pinned_kind(&client, &gvk).await.is_err(),
        "TLSRoute served before install"
    );

    list_shape_rules(&ns).await;

    control_plane.install_gateway_api(&client).await.unwrap();
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "TLSRoute",
        "metadata": {"name": "puppet"},
        "spec": {
            "parentRefs": [{"name": "openvox-gateway"}],
            "hostnames": ["puppet.example.com"],
            "rules": [{"backendRefs": [{"name": "puppet", "port": 8140}]}],
        },
    });
    apply(&client, Some(ns.name()), route).await.unwrap();
    drop(ns);
    tokio::task::spawn_blocking(move || drop(control_plane))
        .await
        .unwrap();
}
