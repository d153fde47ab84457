//! Least privilege, proven on the real control plane (docs/security.md):
//!
//! 1. The chart's RBAC (from `helm template`) and the per-CodeSource worker identity the
//!    controller creates are installed; then the controller runs with a token of the
//!    chart's ServiceAccount through a full cycle: three CodeSources (one build that
//!    succeeds, is pinned into a Config and pruned; one that fails; one with claim
//!    output, whose claim is read before the launch), a webhook, a Pool
//!    with a route that is then disabled, and the leader Lease. The worker's report is
//!    written with a token of the worker's own ServiceAccount.
//! 2. `kubectl auth can-i --as=system:serviceaccount:…` checks a matrix: the worker
//!    may patch the status of its own CodeSource and nothing else; the controller has
//!    what it uses and not more.
//! 3. The API server's audit log (tests/scripts/cluster.sh logs service-account
//!    requests) gives the (verb, group, resource) the controller's ServiceAccount really
//!    used. Every right the chart grants must appear there, or be listed in
//!    [`NEEDED_BUT_NOT_EXERCISED`] with the reason; and no request may have been denied.
//!
//! Run `cargo test -p openvox-code-controller --test rbac_matrix -- --nocapture` to
//! print the tables of docs/security.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use harness::fixtures::{ControlRepo, Scratch, eventually};
use harness::{ControlPlane, TestNamespace};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use openvox_code_controller::leader::{LeaderElector, LeaseSettings};
use openvox_code_controller::metrics::Metrics;
use openvox_code_controller::webhook::{self, WebhookState};
use openvox_code_controller::{codesource, pool};
use openvox_crds::CodeSource;
use openvox_crds::names::{WORKER_MANAGER, labels};
use serde_json::{Value, json};

const GROUP: &str = "openvox.voxpupuli.org";
const HOOK_SECRET: &str = "hook-secret-for-the-rbac-test";

/// Rights the chart grants that the cycle cannot show in the audit log, and why they
/// are needed anyway: (verb, group, resource, reason).
const NEEDED_BUT_NOT_EXERCISED: &[(&str, &str, &str, &str)] = &[
    (
        "get",
        "",
        "configmaps",
        "spec.modules.codeConfig: the openvox-code CodeConfig's ConfigMap, read by name; the cycle's CodeSource uses a Puppetfile",
    ),
    (
        "create",
        "",
        "serviceaccounts",
        "server-side apply of an object that does not exist yet is a create: the API server checks `create` as well, but the audit log records the request as `patch`",
    ),
    (
        "create",
        "rbac.authorization.k8s.io",
        "roles",
        "as for serviceaccounts: the worker Role is created by server-side apply (audited as `patch`)",
    ),
    (
        "create",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "as for serviceaccounts: the worker RoleBinding is created by server-side apply (audited as `patch`)",
    ),
    (
        "create",
        "",
        "services",
        "as for serviceaccounts: a Pool's Service is created by server-side apply (audited as `patch`)",
    ),
    (
        "create",
        "gateway.networking.k8s.io",
        "tlsroutes",
        "as for serviceaccounts: a Pool's TLSRoute is created by server-side apply (audited as `patch`)",
    ),
    (
        "get",
        GROUP,
        "codesources",
        "never called (the webhook reads CodeSources from its watch cache), but granted to every worker Role: RBAC lets the controller create a Role only with rights it holds itself (no `escalate`)",
    ),
    (
        "get",
        GROUP,
        "codesources/status",
        "never called, but granted to every worker Role: RBAC lets the controller create a Role only with rights it holds itself (no `escalate`)",
    ),
    (
        "patch",
        "events.k8s.io",
        "events",
        "a repeated Event (same reason within the recorder's cache time) is patched into a series; this cycle repeats none",
    ),
];

/// Requests of the test itself made with the controller's token, not by the
/// controller: (verb, group, resource).
const TEST_ONLY: &[(&str, &str, &str)] =
    &[("create", "authorization.k8s.io", "selfsubjectaccessreviews")];

/// `helm template` of the chart in single-namespace mode.
fn chart_objects(release: &str, namespace: &str) -> Result<Vec<Value>> {
    harness::tools::chart_template(
        release,
        namespace,
        &[&format!("watchNamespace={namespace}")],
    )
}

const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// (verb, group, resource) the chart's Roles and ClusterRoles grant.
fn granted(objects: &[Value]) -> BTreeSet<Right> {
    let mut out = BTreeSet::new();
    for object in objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        for rule in object["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        out.insert((verb, group.clone(), resource.clone()));
                    }
                }
            }
        }
    }
    out
}

async fn token(ns: &TestNamespace, sa: &str) -> Result<String> {
    ns.api::<ServiceAccount>()
        .create_token_request(
            sa,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("token for {sa}"))?
        .status
        .context("no token")?
        .token
        .context("empty token")
}

/// One `kubectl auth can-i` answer for `user`.
fn can_i(control_plane: &ControlPlane, user: &str, namespace: &str, args: &[&str]) -> Result<bool> {
    let out = control_plane
        .kubectl()?
        .args(["auth", "can-i"])
        .args(args)
        .args(["--namespace", namespace, &format!("--as={user}")])
        .output()?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl auth can-i {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// (verb, group, resource[/subresource]).
type Right = (String, String, String);

/// Each right `user` exercised with its count of requests, from the API server's audit
/// log; and the requests it was refused.
fn used_by(user: &str) -> Result<(BTreeMap<Right, usize>, Vec<String>)> {
    let control_plane = ControlPlane::shared()?;
    let path = control_plane
        .kubeconfig()
        .parent()
        .context("kubeconfig dir")?
        .join("logs/audit.log");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (a control plane started before the audit log was added? restart it)",
            path.display()
        )
    })?;
    let mut used = BTreeMap::new();
    let mut denied = Vec::new();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["user"]["username"] != user || !event["impersonatedUser"].is_null() {
            continue;
        }
        // A watch is logged when it starts and when it ends: count requests once.
        if !seen.insert(event["auditID"].as_str().unwrap_or_default().to_string()) {
            continue;
        }
        let object = &event["objectRef"];
        let Some(resource) = object["resource"].as_str() else {
            continue; // discovery and other non-resource URLs: open to every user
        };
        let resource = match object["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let verb = event["verb"].as_str().unwrap_or_default().to_string();
        let group = object["apiGroup"].as_str().unwrap_or_default().to_string();
        if event["responseStatus"]["code"] == 403 {
            denied.push(format!(
                "{verb} {group}/{resource} {}",
                object["name"].as_str().unwrap_or_default()
            ));
        }
        *used.entry((verb, group, resource)).or_insert(0) += 1;
    }
    Ok((used, denied))
}

/// What the test expects `kubectl auth can-i` to answer: (args, expected, why).
type Row = (Vec<String>, bool, &'static str);

fn worker_rows(cs: &str, other: &str) -> Vec<Row> {
    let r = |args: &str| args.split(' ').map(str::to_string).collect::<Vec<_>>();
    let cs_res = format!("codesources.{GROUP}/{cs}");
    let other_res = format!("codesources.{GROUP}/{other}");
    vec![
        (
            r(&format!("patch {cs_res} --subresource=status")),
            true,
            "writes status.lastBuild",
        ),
        (
            r(&format!("get {cs_res} --subresource=status")),
            true,
            "reads status.lastBuild",
        ),
        (
            r(&format!("get {cs_res}")),
            true,
            "reads its CodeSource (previous build)",
        ),
        (
            r(&format!("patch {other_res} --subresource=status")),
            false,
            "another CodeSource's status",
        ),
        (
            r(&format!("patch codesources.{GROUP} --subresource=status")),
            false,
            "status of any CodeSource",
        ),
        (
            r(&format!("update {cs_res} --subresource=status")),
            false,
            "replace its status",
        ),
        (
            r(&format!("patch {cs_res}")),
            false,
            "its CodeSource's spec or metadata",
        ),
        (
            r(&format!("delete {cs_res}")),
            false,
            "delete its CodeSource",
        ),
        (
            r(&format!("list codesources.{GROUP}")),
            false,
            "list CodeSources",
        ),
        (
            r(&format!("get {other_res}")),
            false,
            "read another CodeSource",
        ),
        (r("get secrets"), false, "read Secrets"),
        (r("list secrets"), false, "list Secrets"),
        (r("create jobs.batch"), false, "start Jobs"),
        (r("create pods"), false, "start pods"),
        (
            r(&format!("patch configs.{GROUP}")),
            false,
            "change a Config",
        ),
        (r(&format!("get configs.{GROUP}")), false, "read a Config"),
        (
            r("create serviceaccounts --subresource=token"),
            false,
            "mint tokens",
        ),
        (
            r("create rolebindings.rbac.authorization.k8s.io"),
            false,
            "grant rights",
        ),
        (r("create events.events.k8s.io"), false, "write Events"),
        (
            r("get leases.coordination.k8s.io"),
            false,
            "touch the leader Lease",
        ),
    ]
}

fn controller_rows() -> Vec<Row> {
    let r = |args: &str| args.split(' ').map(str::to_string).collect::<Vec<_>>();
    vec![
        (
            r(&format!("watch codesources.{GROUP}")),
            true,
            "reconciles CodeSources",
        ),
        (
            r(&format!("patch codesources.{GROUP}/x --subresource=status")),
            true,
            "writes their status",
        ),
        (
            r(&format!("patch codesources.{GROUP}")),
            true,
            "webhook: checkRequestedAt annotation",
        ),
        (
            r(&format!("patch configs.{GROUP}")),
            true,
            "pins the digest into Config.spec.code",
        ),
        (r("create jobs.batch"), true, "worker Jobs"),
        (r("delete jobs.batch"), true, "prunes finished Jobs"),
        (
            r("get secrets"),
            true,
            "git and webhook credentials, by name",
        ),
        (
            r("patch roles.rbac.authorization.k8s.io"),
            true,
            "the worker's Role",
        ),
        (
            r("get customresourcedefinitions.apiextensions.k8s.io/configs.openvox.voxpupuli.org"),
            true,
            "shape of Config.spec.code",
        ),
        (
            r("update leases.coordination.k8s.io"),
            true,
            "leader election",
        ),
        (
            r(&format!("patch servers.{GROUP}")),
            true,
            "rollout: its annotation on the Servers of the Config",
        ),
        (
            r("get deployments.apps"),
            true,
            "rollout: the Servers' Deployments",
        ),
        (
            r(&format!("update servers.{GROUP}")),
            false,
            "replace Servers",
        ),
        (
            r(&format!("delete servers.{GROUP}")),
            false,
            "delete Servers",
        ),
        (r("patch deployments.apps"), false, "change a Deployment"),
        (
            r("get configmaps"),
            true,
            "the openvox-code CodeConfig, by name",
        ),
        (r("list configmaps"), false, "enumerate ConfigMaps"),
        (r("list secrets"), false, "enumerate Secrets"),
        (r("watch secrets"), false, "watch Secrets"),
        (r("create secrets"), false, "write Secrets"),
        (
            r(&format!("delete codesources.{GROUP}")),
            false,
            "delete CodeSources",
        ),
        (
            r(&format!("update codesources.{GROUP}")),
            false,
            "replace CodeSources",
        ),
        (
            r(&format!("create configs.{GROUP}")),
            false,
            "create Configs",
        ),
        (
            r(&format!("delete configs.{GROUP}")),
            false,
            "delete Configs",
        ),
        (r("create pods"), false, "start pods directly"),
        (r("create pods --subresource=exec"), false, "exec into pods"),
        (r("delete serviceaccounts"), false, "delete ServiceAccounts"),
        (
            r("create serviceaccounts --subresource=token"),
            false,
            "mint tokens",
        ),
        (
            r("escalate roles.rbac.authorization.k8s.io"),
            false,
            "grant rights it lacks",
        ),
        (
            r("bind clusterroles.rbac.authorization.k8s.io"),
            false,
            "bind cluster roles",
        ),
        (
            r("impersonate serviceaccounts"),
            false,
            "act as another identity",
        ),
        (
            r("patch customresourcedefinitions.apiextensions.k8s.io/configs.openvox.voxpupuli.org"),
            false,
            "change a CRD",
        ),
        (
            r(
                "get customresourcedefinitions.apiextensions.k8s.io/tlsroutes.gateway.networking.k8s.io",
            ),
            false,
            "read CRDs it does not need",
        ),
        (r("list nodes"), false, "read nodes"),
    ]
}

fn row_text(args: &[String]) -> String {
    args.join(" ")
}

#[tokio::test]
async fn the_worker_and_the_controller_have_exactly_the_rights_they_use() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let ns = TestNamespace::new("rbac-matrix").await?;
    let release = format!("rm{}", &ns.name()[ns.name().len().saturating_sub(6)..]).replace('-', "");
    let objects = chart_objects(&release, ns.name())?;
    for object in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        if RBAC_KINDS.contains(&kind) {
            let namespaced = !kind.starts_with("Cluster");
            harness::apply::apply(ns.client(), namespaced.then_some(ns.name()), object.clone())
                .await?;
        }
    }
    let sa = format!("{release}-openvox-code");
    let controller_user = format!("system:serviceaccount:{}:{sa}", ns.name());
    let client = control_plane.token_client(&token(&ns, &sa).await?).await?;
    wait_until_allowed(&client, ns.name()).await?;

    // Inputs: a repository, Secrets, a Config, Certificate and Server for the Pool, and a
    // node whose worker "builds" (exit 0) or fails (exit 78 with a reason).
    let repo = ControlRepo::new();
    let scratch = Scratch::new();
    let _node = harness::NodeSim::for_namespace_with(&ns, |c| {
        c.with_image(
            "openvox-code-worker:test",
            &["/bin/sh", "-c", "exit 0", "worker"],
        )
        .with_image(
            "openvox-code-worker:fail",
            &[
                "/bin/sh",
                "-c",
                "echo 'Puppetfile: module foo/bar not found' >&2; exit 78",
                "worker",
            ],
        )
    })
    .await?;
    let codesource = |name: &str, extra: Value| {
        let mut spec = json!({"configRef": "prod", "schedule": "@hourly",
            "successfulJobsHistoryLimit": 0,
            "git": {"url": repo.url(), "branches": ["production"], "secretRef": {"name": "git-auth"}},
            "webhook": {"secretRef": {"name": "hook"}},
            "output": {"image": "registry.example/puppet-code"}});
        if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
            s.extend(e);
        }
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
               "metadata": {"name": name}, "spec": spec})
    };
    for object in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git-auth"},
               "stringData": {"username": "nobody", "password": "unused-for-file-urls"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
               "stringData": {"token": HOOK_SECRET}}),
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Config", "metadata": {"name": "prod"},
               "spec": {"image": {"tag": "8"}, "code": {"image": "registry.example/puppet-code@sha256:0000"}}}),
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Certificate",
               "metadata": {"name": "cert"}, "spec": {"authorityRef": "ca"}}),
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Server", "metadata": {"name": "server"},
               "spec": {"configRef": "prod", "certificateRef": "cert", "poolRefs": ["puppet"]}}),
        codesource("prod", json!({})),
        codesource(
            "broken",
            json!({"configRef": null, "job": {"image": "openvox-code-worker:fail"}}),
        ),
        // Claim output: the controller reads the claim by name before it launches.
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "code"},
               "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}),
        codesource(
            "claimed",
            json!({"configRef": null, "output": {"claimName": "code"}}),
        ),
    ] {
        harness::apply::apply(ns.client(), Some(ns.name()), object).await?;
    }

    // The controller, with the chart's token only: both controllers, the webhook
    // receiver and the leader Lease.
    openvox_code_controller::tls::install_ring_provider();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let elector = LeaderElector::new(
        client.clone(),
        LeaseSettings {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            renew_every: Duration::from_millis(300),
            ..LeaseSettings::new(ns.name(), "rbac-matrix")
        },
    );
    let leadership = tokio::time::timeout(Duration::from_secs(20), elector.acquire())
        .await
        .context("the chart's identity could not take the Lease")?;
    let mut cs_settings = codesource::Settings::new("openvox-code-worker:test");
    cs_settings.namespace = Some(ns.name().to_string());
    cs_settings.scratch_dir = scratch.dir.path().to_path_buf();
    let codesource_task = tokio::spawn({
        let (client, stop) = (client.clone(), shutdown());
        async move {
            if let Err(e) = codesource::run(client, cs_settings, Metrics::new(), stop).await {
                eprintln!("CodeSource controller stopped: {e}");
            }
        }
    });
    // As the process runs it: supervised, so the Pool CRD is read (it is ours here).
    let pool_task = tokio::spawn(pool::supervise(
        client.clone(),
        pool::Settings {
            gateway_api_poll: Duration::from_millis(500),
            ..pool::Settings::new(Some(ns.name().to_string()), 2)
        },
        pool::Supervision {
            mode: pool::PoolControllerMode::Auto,
            crd_poll: Duration::from_millis(500),
            regarding: None,
        },
        Metrics::new(),
        shutdown(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_addr = listener.local_addr()?;
    let state =
        WebhookState::new(client.clone(), Metrics::new()).namespace(Some(ns.name().to_string()));
    let receiver = tokio::spawn(webhook::serve(listener, state, shutdown()));

    // The build of `prod`: the worker reports with its own identity, the controller pins
    // the digest, prunes the Job (history limit 0).
    let codesources: Api<CodeSource> = ns.api();
    let launch = eventually("prod's launch", || async {
        Ok(codesources
            .get("prod")
            .await?
            .status
            .and_then(|s| s.last_launch))
    })
    .await?;
    let worker_user = format!(
        "system:serviceaccount:{}:openvox-code-worker-prod",
        ns.name()
    );
    let worker = control_plane
        .token_client(&token(&ns, "openvox-code-worker-prod").await?)
        .await?;
    let as_worker: Api<CodeSource> = Api::namespaced(worker, ns.name());
    as_worker.get_status("prod").await?;
    as_worker
        .patch_status(
            "prod",
            &PatchParams::apply(WORKER_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                "status": {"lastBuild": {"image": "registry.example/puppet-code@sha256:4444",
                                         "inputsHash": launch.inputs_hash, "jobName": launch.job_name}}})),
        )
        .await?;
    // …and may not touch the other CodeSource's status (the API server says so too).
    let refused = as_worker
        .patch_status(
            "broken",
            &PatchParams::apply(WORKER_MANAGER).force(),
            &Patch::Apply(
                json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                                 "status": {"lastBuild": {"image": "evil@sha256:6666"}}}),
            ),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
        "{refused:?}"
    );
    let configs: Api<DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &kube::discovery::ApiResource::erase::<openvox_crds::operator::Config>(&()),
    );
    eventually("the digest in the Config", || async {
        let config = configs.get("prod").await?;
        Ok(
            (config.data["spec"]["code"]["image"] == "registry.example/puppet-code@sha256:4444")
                .then_some(()),
        )
    })
    .await?;
    let jobs: Api<Job> = ns.api();
    eventually("prod's Job pruned", || async {
        let left = jobs
            .list(&ListParams::default().labels(&format!("{}=prod", labels::CODESOURCE)))
            .await?
            .items;
        Ok(left
            .iter()
            .all(|j| j.metadata.deletion_timestamp.is_some())
            .then_some(()))
    })
    .await?;
    // `broken` fails; the reason comes from its pod's termination message.
    eventually("broken's BuildFailed", || async {
        let st = codesources.get("broken").await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .iter()
            .find(|c| c.type_ == "BuildFailed" && c.message.contains("foo/bar"))
            .map(|_| ()))
    })
    .await?;

    // A webhook push (generic bearer form): the receiver reads the Secret and annotates.
    let answer = reqwest::Client::new()
        .post(format!("http://{hook_addr}/hook/{}/prod", ns.name()))
        .header("authorization", format!("Bearer {HOOK_SECRET}"))
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 202);
    eventually("the claim-mode CodeSource launched", || async {
        let st = codesources.get("claimed").await?.status.unwrap_or_default();
        Ok(st.last_launch.map(|_| ()))
    })
    .await?;
    eventually("the check request handled", || async {
        let st = codesources.get("prod").await?.status.unwrap_or_default();
        Ok(st.last_handled_check_requested_at.map(|_| ()))
    })
    .await?;

    // A Pool with a route, then the route disabled (its TLSRoute deleted). The
    // Certificate is Signed, so the new alt name sends it back to Pending for re-signing.
    let certs: Api<openvox_crds::operator::Certificate> = ns.api();
    let untyped_certs: Api<DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &kube::discovery::ApiResource::erase::<openvox_crds::operator::Certificate>(&()),
    );
    certs
        .patch_status(
            "cert",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Signed"}})),
        )
        .await?;
    let pool_object = |enabled: bool| {
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Pool", "metadata": {"name": "puppet"},
               "spec": {"route": {"enabled": enabled, "hostname": "puppet.example.com",
                                  "gatewayRef": {"name": "gw"}, "injectDNSAltName": true}}})
    };
    harness::apply::apply(ns.client(), Some(ns.name()), pool_object(true)).await?;
    let pools: Api<openvox_crds::Pool> = ns.api();
    let condition = |pool: &openvox_crds::Pool, type_: &str, status: &str| {
        pool.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == status)
        })
    };
    eventually("the Pool's route", || async {
        let pool = pools.get("puppet").await?;
        let service = ns.api::<Service>().get_opt("puppet").await?.is_some();
        Ok((service && condition(&pool, "RouteReady", "True")).then_some(()))
    })
    .await?;
    eventually("the Certificate back to Pending", || async {
        // Untyped: the typed Certificate carries only its spec.
        let cert = untyped_certs.get("cert").await?;
        Ok((cert.data["status"]["phase"] == "Pending").then_some(()))
    })
    .await?;
    harness::apply::apply(ns.client(), Some(ns.name()), pool_object(false)).await?;
    let routes: Api<DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &kube::discovery::ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "TLSRoute".into(),
            plural: "tlsroutes".into(),
        },
    );
    eventually("the TLSRoute removed", || async {
        Ok(routes
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;

    leadership.release().await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), codesource_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), pool_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), receiver).await;

    // 2. The matrix.
    let mut failures = Vec::new();
    let mut table = String::from(
        "| who | request | allowed | expected | what it is |\n|---|---|---|---|---|\n",
    );
    for (who, user, rows) in [
        (
            "worker of `prod`",
            worker_user.clone(),
            worker_rows("prod", "broken"),
        ),
        ("controller", controller_user.clone(), controller_rows()),
    ] {
        for (args, expected, what) in rows {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let got = can_i(control_plane, &user, ns.name(), &refs)?;
            let yn = |b: bool| if b { "yes" } else { "no" };
            table.push_str(&format!(
                "| {who} | `{}` | {} | {} | {what} |\n",
                row_text(&args),
                yn(got),
                yn(expected)
            ));
            if got != expected {
                failures.push(format!(
                    "{who}: can-i {} = {}, want {}",
                    row_text(&args),
                    yn(got),
                    yn(expected)
                ));
            }
        }
    }
    // Outside its namespace the controller (single-namespace mode) has nothing.
    for resource in [
        format!("codesources.{GROUP}"),
        "secrets".into(),
        "jobs.batch".into(),
    ] {
        let out = control_plane
            .kubectl()?
            .args([
                "auth",
                "can-i",
                "get",
                &resource,
                "--namespace",
                "default",
                &format!("--as={controller_user}"),
            ])
            .output()?;
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        table.push_str(&format!(
            "| controller | `get {resource} -n default` | {got} | no | another namespace |\n"
        ));
        if got != "no" {
            failures.push(format!("controller may get {resource} in default"));
        }
    }
    println!("\nRBAC matrix (kubectl auth can-i --as=…):\n\n{table}");

    // 3. Used versus granted.
    let (used, denied) = used_by(&controller_user)?;
    let granted = granted(&objects);
    let explained: BTreeMap<Right, &str> = NEEDED_BUT_NOT_EXERCISED
        .iter()
        .map(|(v, g, r, why)| ((v.to_string(), g.to_string(), r.to_string()), *why))
        .collect();
    let mut usage = String::from(
        "| verb | group | resource | requests in the cycle | note |\n|---|---|---|---|---|\n",
    );
    for key in &granted {
        let count = used.get(key).copied().unwrap_or(0);
        let note = match (count, explained.get(key)) {
            (0, Some(why)) => (*why).to_string(),
            (0, None) => {
                failures.push(format!(
                    "granted but never used: {} {}/{}",
                    key.0, key.1, key.2
                ));
                "**unused**".to_string()
            }
            (_, Some(_)) => {
                failures.push(format!(
                    "listed as not exercised but used: {} {}/{}",
                    key.0, key.1, key.2
                ));
                "used although listed as not exercised".to_string()
            }
            _ => String::new(),
        };
        let group = if key.1.is_empty() {
            "core"
        } else {
            key.1.as_str()
        };
        usage.push_str(&format!(
            "| {} | {group} | {} | {count} | {note} |\n",
            key.0, key.2
        ));
    }
    for (key, count) in &used {
        let test_only = TEST_ONLY
            .iter()
            .any(|(v, g, r)| (v, g, r) == (&key.0.as_str(), &key.1.as_str(), &key.2.as_str()));
        if !granted.contains(key) && !test_only {
            failures.push(format!(
                "used but not granted by the chart: {} {}/{} ({count}×)",
                key.0, key.1, key.2
            ));
        }
    }
    println!("Controller ServiceAccount, granted by the chart vs used (audit log):\n\n{usage}");
    if !denied.is_empty() {
        failures.push(format!("requests of the controller refused: {denied:?}"));
    }
    // The worker used what its Role allows; its refused attempt above is the only 403.
    let (worker_used, worker_denied) = used_by(&worker_user)?;
    println!("Worker ServiceAccount used: {worker_used:?}; refused: {worker_denied:?}");
    if worker_denied.len() != 1 {
        failures.push(format!(
            "worker refusals: {worker_denied:?} (want exactly the one attempt on `broken`)"
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// Waits until the RBAC bindings are visible to the authorizer.
async fn wait_until_allowed(client: &Client, namespace: &str) -> Result<()> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                resource: Some("codesources".into()),
                verb: Some("watch".into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    eventually("the chart's RBAC in effect", || async {
        let answer = reviews.create(&PostParams::default(), &review).await?;
        Ok(answer.status.is_some_and(|s| s.allowed).then_some(()))
    })
    .await
}
