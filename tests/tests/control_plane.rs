//! The test control plane is a real, secured API server: healthy, and enforcing RBAC
//! on authenticated identities.

// Test helpers panic like the tests themselves: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use harness::{ControlPlane, TestNamespace};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

async fn readyz(client: &Client) -> Result<String, kube::Error> {
    client
        .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
        .await
}

#[tokio::test]
async fn the_api_server_reports_ready() {
    let control_plane = ControlPlane::shared().unwrap();
    let client = control_plane.admin_client().await.unwrap();
    assert_eq!(readyz(&client).await.unwrap(), "ok");
}

#[tokio::test]
async fn the_controller_manager_runs_real_controllers() {
    // The serviceaccount controller makes `default` in every new namespace and the
    // root-ca publisher the `kube-root-ca.crt` ConfigMap: both live in
    // kube-controller-manager, so their results show it is up and authorised.
    let ns = TestNamespace::new("controllers").await.unwrap();
    let config_maps: Api<ConfigMap> = ns.api();
    let mut found = false;
    for _ in 0..100 {
        if config_maps
            .get_opt("kube-root-ca.crt")
            .await
            .unwrap()
            .is_some()
        {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        found,
        "kube-root-ca.crt was not published into {}",
        ns.name()
    );
}

/// A token of a new ServiceAccount `name` in the test namespace.
async fn service_account_token(ns: &TestNamespace, name: &str) -> String {
    let accounts: Api<ServiceAccount> = ns.api();
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let response = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap();
    response
        .status
        .and_then(|s| s.token)
        .expect("the TokenRequest API returned no token")
}

#[tokio::test]
async fn an_unprivileged_service_account_is_authenticated_but_refused_and_admin_is_allowed() {
    let control_plane = ControlPlane::shared().unwrap();
    let ns = TestNamespace::new("rbac").await.unwrap();
    let token = service_account_token(&ns, "nobody").await;
    let unprivileged = control_plane.token_client(&token).await.unwrap();

    // Authenticated: the API server knows who this is (not 401).
    let reviews: Api<SelfSubjectReview> = Api::all(unprivileged.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        user.as_deref(),
        Some(format!("system:serviceaccount:{}:nobody", ns.name()).as_str())
    );

    // Not authorised: RBAC refuses with 403 Forbidden.
    let as_nobody: Api<ConfigMap> = Api::namespaced(unprivileged, ns.name());
    match as_nobody.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert_eq!(status.reason, "Forbidden");
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }

    // The admin (group system:masters) may.
    let as_admin: Api<ConfigMap> = ns.api();
    as_admin.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_role_binding_grants_exactly_what_its_role_allows() {
    let control_plane = ControlPlane::shared().unwrap();
    let ns = TestNamespace::new("rbac-grant").await.unwrap();
    let token = service_account_token(&ns, "reader").await;
    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: configmap-reader}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}}
subjects:
- {{kind: ServiceAccount, name: reader, namespace: {ns}}}
"#,
        ns = ns.name()
    );
    harness::apply::apply_yaml(ns.client(), Some(ns.name()), &rbac)
        .await
        .unwrap();
    let reader = control_plane.token_client(&token).await.unwrap();

    let config_maps: Api<ConfigMap> = Api::namespaced(reader.clone(), ns.name());
    // RBAC changes reach the authorizer's cache within moments.
    let mut listed = config_maps.list(&ListParams::default()).await;
    for _ in 0..50 {
        if listed.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        listed = config_maps.list(&ListParams::default()).await;
    }
    listed.unwrap();

    let accounts: Api<ServiceAccount> = Api::namespaced(reader, ns.name());
    match accounts.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("listing serviceaccounts should be forbidden, got {other:?}"),
    }
}
