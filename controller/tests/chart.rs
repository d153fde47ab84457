//! The Helm chart: `helm lint`, what `helm template` renders (security context, RBAC,
//! values wiring, schema), `helm install` into the real control plane, and proof that
//! the chart's RBAC is enough: the Pool controller runs with a token of the chart's
//! ServiceAccount through a full Pool cycle.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harness::tools::chart_dir;
use harness::{ControlPlane, TestNamespace};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Api, PostParams};
use openvox_code_controller::metrics::Metrics;
use openvox_code_controller::pool::{self, Settings};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The `helm` that tests/scripts/install-kubectl-helm.sh installs (cached).
fn helm() -> Command {
    harness::tools::helm().expect("installing helm")
}

fn run(mut command: Command) -> Output {
    command.output().expect("running helm")
}

/// `helm template` with `--set` values, as parsed documents.
fn template(sets: &[&str]) -> Result<Vec<Value>> {
    harness::tools::chart_template("oc", "openvox-code", sets)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn helm_lint_passes_strictly() {
    let mut command = helm();
    command.arg("lint").arg("--strict").arg(chart_dir());
    let out = run(command);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_controller_pod_is_hardened_by_default() -> Result<()> {
    let docs = template(&[])?;
    let deployment = of_kind(&docs, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    Ok(())
}

#[test]
fn rbac_grants_no_wildcards_and_reads_secrets_only_by_get() -> Result<()> {
    let docs = template(&[])?;
    for role in of_kind(&docs, "ClusterRole")
        .into_iter()
        .chain(of_kind(&docs, "Role"))
    {
        for rule in role["rules"].as_array().unwrap() {
            for key in ["verbs", "resources", "apiGroups"] {
                assert!(
                    !rule[key].as_array().unwrap().contains(&json!("*")),
                    "wildcard in {rule}"
                );
            }
            if rule["resources"]
                .as_array()
                .unwrap()
                .contains(&json!("secrets"))
            {
                assert_eq!(
                    rule["verbs"],
                    json!(["get"]),
                    "secrets are only read by name"
                );
            }
        }
    }
    // The CRD reader is limited to the four CRDs it inspects, by name.
    let reader = of_kind(&docs, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "oc-openvox-code-crd-reader")
        .unwrap();
    assert_eq!(
        reader["rules"][0]["resourceNames"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    Ok(())
}

#[test]
fn every_rbac_rule_says_why_it_is_needed() -> Result<()> {
    let source = std::fs::read_to_string(chart_dir().join("templates/rbac.yaml"))?;
    let lines: Vec<&str> = source.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            let before = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .copied()
                .unwrap_or_default();
            let commented =
                before.trim_start().starts_with('#') || before.trim_start().starts_with("rules:");
            assert!(
                commented,
                "rule at rbac.yaml:{} has no comment saying why",
                i + 1
            );
        }
    }
    Ok(())
}

#[test]
fn watch_namespace_turns_cluster_rights_into_namespace_rights() -> Result<()> {
    let docs = template(&["watchNamespace=puppet"])?;
    let roles = of_kind(&docs, "Role");
    assert!(roles.iter().any(|r| r["metadata"]["namespace"] == "puppet"));
    let cluster_roles = of_kind(&docs, "ClusterRole");
    assert_eq!(
        cluster_roles.len(),
        1,
        "only the CRD reader stays cluster-scoped"
    );
    let args =
        &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--namespace=puppet"))
    );
    Ok(())
}

#[test]
fn values_reach_the_deployment() -> Result<()> {
    let docs = template(&[
        "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "worker.image.repository=registry.example.com/worker",
        "worker.image.tag=1.2.3",
        "controllers.pool=false",
        "webhook.enabled=false",
    ])?;
    let container = &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .ends_with("@sha256:0000000000000000000000000000000000000000000000000000000000000000")
    );
    let args = container["args"].as_array().unwrap();
    assert!(args.contains(&json!("--worker-image=registry.example.com/worker:1.2.3")));
    assert!(args.contains(&json!("--enable-pool=false")));
    assert!(
        !args
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("--webhook-addr"))
    );
    Ok(())
}

#[test]
fn worker_defaults_reach_the_controller_as_values_it_accepts() -> Result<()> {
    use openvox_code_controller::codesource::worker_defaults::{
        parse_node_selector, parse_resources, parse_tolerations,
    };
    let env_of = |docs: &[Value], name: &str| -> String {
        of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == name))
            .and_then(|e| e["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    // The chart's own defaults: resources set, no selector, no tolerations.
    let docs = template(&[])?;
    let resources = parse_resources(&env_of(&docs, "OPENVOX_CODE_WORKER_RESOURCES"))
        .map_err(anyhow::Error::msg)?
        .0
        .context("the chart sets default worker resources")?;
    assert_eq!(resources.requests.unwrap()["cpu"].0, "500m");
    assert!(
        parse_node_selector(&env_of(&docs, "OPENVOX_CODE_WORKER_NODE_SELECTOR"))
            .map_err(anyhow::Error::msg)?
            .0
            .is_empty()
    );
    assert!(
        parse_tolerations(&env_of(&docs, "OPENVOX_CODE_WORKER_TOLERATIONS"))
            .map_err(anyhow::Error::msg)?
            .0
            .is_empty()
    );
    // Values set by a user.
    let docs = template(&[
        "worker.nodeSelector.pool=builds",
        "worker.tolerations[0].key=builds",
        "worker.tolerations[0].operator=Exists",
        "worker.tolerations[0].effect=NoSchedule",
        "worker.resources.requests.cpu=2",
    ])?;
    let selector = parse_node_selector(&env_of(&docs, "OPENVOX_CODE_WORKER_NODE_SELECTOR"))
        .map_err(anyhow::Error::msg)?;
    assert_eq!(selector.0["pool"], "builds");
    let tolerations = parse_tolerations(&env_of(&docs, "OPENVOX_CODE_WORKER_TOLERATIONS"))
        .map_err(anyhow::Error::msg)?;
    assert_eq!(tolerations.0[0].effect.as_deref(), Some("NoSchedule"));
    let resources = parse_resources(&env_of(&docs, "OPENVOX_CODE_WORKER_RESOURCES"))
        .map_err(anyhow::Error::msg)?
        .0
        .context("resources")?;
    assert_eq!(resources.requests.unwrap()["cpu"].0, "2");
    Ok(())
}

#[test]
fn crds_are_kept_on_uninstall_and_can_be_left_out() -> Result<()> {
    let docs = template(&[])?;
    let crds = of_kind(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 2);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        // Our mark (the Pool controller runs only on our Pool CRD) and the chart's.
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "openvox-code"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
    }
    assert!(
        of_kind(
            &template(&["crds.enabled=false"])?,
            "CustomResourceDefinition"
        )
        .is_empty()
    );
    // crds.keep=false lets the CodeSource CRD go; the Pool CRD is always kept.
    let docs = template(&["crds.keep=false"])?;
    let policy = |name: &str| {
        of_kind(&docs, "CustomResourceDefinition")
            .into_iter()
            .find(|c| c["metadata"]["name"] == name)
            .map(|c| c["metadata"]["annotations"]["helm.sh/resource-policy"].clone())
    };
    assert_eq!(
        policy("codesources.openvox.voxpupuli.org"),
        Some(Value::Null)
    );
    assert_eq!(policy("pools.openvox.voxpupuli.org"), Some(json!("keep")));
    // The CodeSource CRD on its own.
    let alone = template(&["crds.pool=false"])?;
    let names: Vec<&Value> = of_kind(&alone, "CustomResourceDefinition")
        .into_iter()
        .map(|c| &c["metadata"]["name"])
        .collect();
    assert_eq!(names, [&json!("codesources.openvox.voxpupuli.org")]);
    Ok(())
}

#[test]
fn the_pool_controller_mode_reaches_the_controller() -> Result<()> {
    let arg = |sets: &[&str]| -> Result<Value> {
        let docs = template(sets)?;
        let args =
            of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
                .clone();
        Ok(args
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a.as_str().is_some_and(|a| a.starts_with("--enable-pool=")))
            .cloned()
            .unwrap_or_default())
    };
    assert_eq!(arg(&[])?, "--enable-pool=auto");
    assert_eq!(arg(&["controllers.pool=true"])?, "--enable-pool=true");
    assert_eq!(arg(&["controllers.pool=false"])?, "--enable-pool=false");
    assert!(template(&["controllers.pool=maybe"]).is_err());
    Ok(())
}

#[test]
fn the_values_schema_rejects_unknown_keys_and_wrong_types() {
    for bad in [
        "bogus=1",
        "replicaCount=many",
        "logFormat=xml",
        "metrics.port=70000",
    ] {
        assert!(template(&[bad]).is_err(), "{bad} was accepted");
    }
}

#[tokio::test]
async fn helm_install_works_and_its_rbac_runs_the_pool_controller() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let ns = TestNamespace::new("chart").await?;
    let release =
        format!("oc-{}", &ns.name()[ns.name().len().saturating_sub(6)..]).replace('-', "");
    let mut install = helm();
    install
        .args(["install", &release])
        .arg(chart_dir())
        .args(["--namespace", ns.name(), "--kubeconfig"])
        .arg(control_plane.kubeconfig())
        // The harness installed the CRDs already (kubectl, no Helm release): the chart
        // leaves them as they are and installs without taking them over.
        .args(["--set", &format!("watchNamespace={}", ns.name())]);
    let out = tokio::task::spawn_blocking(move || install.output()).await??;
    if !out.status.success() {
        bail!(
            "helm install failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A token of the chart's ServiceAccount, as a pod of the Deployment would get.
    let accounts: Api<ServiceAccount> = ns.api();
    let sa = format!("{release}-openvox-code");
    let token = accounts
        .create_token_request(
            &sa,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
                    audiences: None,
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("requesting a token for {sa}"))?
        .status
        .context("no token in the TokenRequest status")?
        .token
        .context("empty token")?;
    let client = control_plane.token_client(&token).await?;
    // RBAC is enforced from the API server's informer cache: wait until the new
    // bindings are visible, so the controller's watches do not start in a 403 backoff.
    wait_until_allowed(&client, ns.name(), "pools", "watch").await?;

    let (tx, rx) = oneshot::channel::<()>();
    let settings = Settings {
        gateway_api_poll: Duration::from_millis(500),
        ..Settings::new(Some(ns.name().to_string()), 2)
    };
    let controller = tokio::spawn(pool::run(client, settings, Metrics::new(), async move {
        let _ = rx.await;
    }));
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Certificate",
            "metadata": {"name": "cert"}, "spec": {"authorityRef": "ca"},
        }),
    )
    .await?;
    harness::apply::apply(ns.client(), Some(ns.name()), json!({
        "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Server",
        "metadata": {"name": "server"}, "spec": {"configRef": "c", "certificateRef": "cert", "poolRefs": ["puppet"]},
    })).await?;
    harness::apply::apply(ns.client(), Some(ns.name()), json!({
        "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Pool", "metadata": {"name": "puppet"},
        "spec": {"route": {"enabled": true, "hostname": "puppet.example.com", "gatewayRef": {"name": "gw"}, "injectDNSAltName": true}},
    })).await?;

    let services: Api<Service> = ns.api();
    let certs: Api<openvox_crds::operator::Certificate> = ns.api();
    let pools: Api<openvox_crds::Pool> = ns.api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let service = services.get_opt("puppet").await?.is_some();
        let injected = certs
            .get("cert")
            .await?
            .spec
            .dns_alt_names
            .contains(&"puppet.example.com".to_string());
        let status = pools.get("puppet").await?.status;
        let route_ready = status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "RouteReady" && c.status == "True")
        });
        if service && injected && route_ready {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the chart's identity did not complete a Pool cycle (service {service}, alt name {injected}, route {route_ready}); check the controller log for 403s"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = tx.send(());
    let _ = controller.await;
    Ok(())
}

/// Waits until `client` may `verb` `resource` (our API group) in `namespace`.
async fn wait_until_allowed(
    client: &kube::Client,
    namespace: &str,
    resource: &str,
    verb: &str,
) -> Result<()> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some("openvox.voxpupuli.org".into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reviews.create(&PostParams::default(), &review).await?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the chart's ServiceAccount may not {verb} {resource} in {namespace}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
