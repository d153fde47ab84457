//! Next to openvox-operator, as every install is: each test here reproduces a row of
//! what was measured against the real operator (issue "Beside the real
//! openvox-operator") on the real control plane, with CRDs shaped like the operator's
//! (`tests/fixtures/crds/pool-operator.yaml`, the single-object Config) and the
//! stand-in for its Pool Service writer (`harness::operator`).
//!
//! - the README's `helm install` works where the operator's CRDs are, and where none
//!   are; `helm uninstall` never takes the operator's CRDs or anyone's Pools along;
//! - our Pool controller leaves the operator's Pools alone, by CRD and by Service,
//!   and the Service is not rewritten; forced onto the operator's CRD it writes only
//!   the status fields that CRD declares;
//! - `kubectl` resolves every resource name the README uses to the kind it means.
//!
//! `OPENVOX_CODE_BESIDE_SECONDS` sets how long the Service is watched for rewrites
//! (default 10; docs/benchmarks.md reports 60).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use harness::fixtures::{Scratch, eventually, free_port};
use harness::operator::{OperatorPoolWriter, pool_api_resource};
use harness::world::Process;
use harness::{ControlPlane, Options, PoolCrd, TestNamespace};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use openvox_code_controller::metrics::Metrics;
use openvox_code_controller::pool::{self, PoolControllerMode, Settings, Supervision};
use serde_json::{Value, json};

const POOLS: &str = "pools.openvox.voxpupuli.org";
const CODESOURCES: &str = "codesources.openvox.voxpupuli.org";

/// How long a Service is watched for rewrites.
fn window() -> Duration {
    let seconds = std::env::var("OPENVOX_CODE_BESIDE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(seconds)
}

/// A Pool in the operator's shape (route.enabled is required there).
fn pool(name: &str) -> Value {
    json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Pool",
           "metadata": {"name": name},
           "spec": {"service": {"port": 8140}, "route": {"enabled": false}}})
}

fn pools(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &pool_api_resource())
}

/// Runs `command`, failing with its output when it fails.
fn run(mut command: Command) -> Result<String> {
    let out = command.output().context("starting the command")?;
    ensure!(
        out.status.success(),
        "{:?} failed: {}{}",
        command,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn helm(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let mut command = harness::tools::helm()?;
    command.args(args).arg("--kubeconfig").arg(kubeconfig);
    run(command)
}

/// The README's install command, word for word but for the kubeconfig.
fn readme_install(kubeconfig: &Path, extra: &[&str]) -> Result<String> {
    let chart = harness::tools::chart_dir();
    let mut args = vec![
        "install",
        "openvox-code",
        chart.to_str().unwrap_or_default(),
    ];
    args.extend([
        "--namespace",
        "openvox-code",
        "--create-namespace",
        "--set",
        "worker.image.repository=registry.example.com/openvox-code-worker",
    ]);
    args.extend(extra);
    helm(kubeconfig, &args)
}

/// `helm uninstall` of the README's release.
async fn helm_uninstall(kubeconfig: &Path) -> Result<()> {
    let kubeconfig = kubeconfig.to_owned();
    tokio::task::spawn_blocking(move || {
        helm(
            &kubeconfig,
            &["uninstall", "openvox-code", "--namespace", "openvox-code"],
        )
    })
    .await??;
    Ok(())
}

async fn crd(client: &Client, name: &str) -> Result<Option<CustomResourceDefinition>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    Ok(crds.get_opt(name).await?)
}

/// The controller binary as a process, watching `ns`, with `args` added; its pod is
/// named `openvox-code-0` in `ns` (as the chart's downward API would say).
fn spawn_controller(
    control_plane: &ControlPlane,
    ns: &str,
    metrics_port: u16,
    args: &[&str],
    log: &Path,
) -> Result<Process> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_openvox-code-controller"))
        .env("KUBECONFIG", control_plane.kubeconfig())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("POD_NAME", "openvox-code-0")
        .env("POD_NAMESPACE", ns)
        .args([
            "--worker-image",
            "openvox-code-worker:test",
            "--namespace",
            ns,
        ])
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the controller")?;
    Ok(Process(child))
}

async fn metrics_text(port: u16) -> Result<String> {
    openvox_code_controller::tls::install_ring_provider();
    Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?)
}

/// Watches the Service `name` for `window()`: returns how many times its
/// resourceVersion changed.
async fn rewrites(client: &Client, ns: &str, name: &str) -> Result<usize> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let mut version = services.get(name).await?.resource_version();
    let mut changes = 0;
    let end = Instant::now() + window();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = services.get(name).await?.resource_version();
        if now != version {
            changes += 1;
            version = now;
        }
    }
    Ok(changes)
}

/// What the `ManagedElsewhere` Event in `ns` is about (the object's name).
async fn managed_elsewhere_event_about(ns: &TestNamespace) -> Result<Option<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let said = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("ManagedElsewhere"))
        .context("no ManagedElsewhere Event")?;
    Ok(said.regarding.and_then(|r| r.name))
}

async fn service_manager(client: &Client, ns: &str, name: &str) -> Result<Option<String>> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    Ok(services
        .get_opt(name)
        .await?
        .and_then(|s| s.labels().get("app.kubernetes.io/managed-by").cloned()))
}

#[tokio::test]
async fn next_to_the_operators_crds_the_chart_installs_stands_aside_and_uninstalls_cleanly()
-> Result<()> {
    let control_plane =
        tokio::task::spawn_blocking(|| ControlPlane::start(&Options::operator_only())).await??;
    let kubeconfig = control_plane.kubeconfig().to_owned();
    let admin = control_plane.admin_client().await?;
    let operator_pools = crd(&admin, POOLS)
        .await?
        .context("the operator's Pool CRD")?;

    // The README's install, unchanged.
    let config = kubeconfig.clone();
    tokio::task::spawn_blocking(move || readme_install(&config, &[])).await??;
    let codesources = crd(&admin, CODESOURCES)
        .await?
        .context("the chart installed no CodeSource CRD")?;
    assert_eq!(
        codesources
            .annotations()
            .get("meta.helm.sh/release-name")
            .map(String::as_str),
        Some("openvox-code")
    );
    assert!(openvox_crds::crd::is_ours(&codesources));
    let after = crd(&admin, POOLS).await?.context("the Pool CRD is gone")?;
    assert_eq!(
        after.resource_version(),
        operator_pools.resource_version(),
        "the operator's Pool CRD was changed"
    );
    assert!(
        !after
            .annotations()
            .contains_key("meta.helm.sh/release-name")
    );

    // The controller as the chart runs it (Pools: auto), beside the operator's Pool
    // Service writer: it stands aside; the Service is written once, by the operator.
    let ns = TestNamespace::new_in(&control_plane, "beside").await?;
    let writer = OperatorPoolWriter::start(ns.client().clone(), ns.name());
    harness::apply::apply(ns.client(), Some(ns.name()), pool("puppet")).await?;
    let port = free_port();
    let scratch = Scratch::new();
    let log = scratch.path("controller.log");
    let _controller = spawn_controller(&control_plane, ns.name(), port, &[], &log)?;
    eventually("the operator's Service", || async {
        Ok(service_manager(ns.client(), ns.name(), "puppet")
            .await?
            .filter(|m| m == "openvox-operator"))
    })
    .await?;
    eventually("the controller to stand aside", || async {
        let text = std::fs::read_to_string(&log)?;
        Ok(text.contains("Pool controller stands aside").then_some(()))
    })
    .await?;
    let changes = rewrites(ns.client(), ns.name(), "puppet").await?;
    eprintln!(
        "beside the operator's Pool CRD: {changes} Service rewrites in {:?} ({} writes by the operator in all)",
        window(),
        writer.writes()
    );
    assert_eq!(changes, 0);
    assert_eq!(writer.writes(), 1, "only the operator's create");
    let status = &pools(ns.client(), ns.name()).get("puppet").await?.data["status"];
    assert!(status.is_null(), "we wrote Pool status: {status}");
    let text = metrics_text(port).await?;
    assert!(
        text.contains("openvox_code_pool_controller_running 0"),
        "{text}"
    );
    assert_eq!(
        managed_elsewhere_event_about(&ns).await?.as_deref(),
        Some("openvox-code-0")
    );
    let log_text = std::fs::read_to_string(&log)?;
    assert_eq!(
        log_text.matches("Pool controller stands aside").count(),
        1,
        "said once: {log_text}"
    );

    // Forced onto the operator's CRD (no operator Pool controller in this namespace):
    // status carries only serviceName and endpoints, and no write is refused.
    let forced = TestNamespace::new_in(&control_plane, "forced").await?;
    harness::apply::apply(forced.client(), Some(forced.name()), pool("puppet")).await?;
    let forced_port = free_port();
    let forced_log = scratch.path("forced.log");
    let _forced = spawn_controller(
        &control_plane,
        forced.name(),
        forced_port,
        &["--enable-pool=true", "--enable-codesource=false"],
        &forced_log,
    )?;
    let status = eventually("the Pool status", || async {
        let pool = pools(forced.client(), forced.name()).get("puppet").await?;
        Ok((pool.data["status"]["serviceName"] == "puppet").then(|| pool.data["status"].clone()))
    })
    .await?;
    assert!(status.get("conditions").is_none(), "{status}");
    assert_eq!(
        service_manager(forced.client(), forced.name(), "puppet")
            .await?
            .as_deref(),
        Some("openvox-code")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = metrics_text(forced_port).await?;
    assert!(
        !text.contains("code=\"500\""),
        "refused writes: {}",
        std::fs::read_to_string(&forced_log)?
    );
    assert!(!std::fs::read_to_string(&forced_log)?.contains("pool reconcile will be retried"));

    // Uninstall: the operator's CRD and every Pool stay; our CRD stays (keep).
    helm_uninstall(&kubeconfig).await?;
    let kept = crd(&admin, POOLS)
        .await?
        .context("uninstall removed the Pool CRD")?;
    assert_eq!(kept.resource_version(), operator_pools.resource_version());
    assert!(
        pools(ns.client(), ns.name())
            .get_opt("puppet")
            .await?
            .is_some()
    );
    assert!(crd(&admin, CODESOURCES).await?.is_some(), "crds.keep");
    drop((ns, forced));
    tokio::task::spawn_blocking(move || drop(control_plane)).await?;
    Ok(())
}

#[tokio::test]
async fn without_the_operator_the_chart_installs_both_crds_and_uninstall_keeps_the_pools()
-> Result<()> {
    let options = Options {
        pool_crd: PoolCrd::None,
        codesource_crd: false,
        gateway_api: false,
        ..Options::default()
    };
    let control_plane =
        tokio::task::spawn_blocking(move || ControlPlane::start(&options)).await??;
    let kubeconfig = control_plane.kubeconfig().to_owned();
    let admin = control_plane.admin_client().await?;
    let config = kubeconfig.clone();
    tokio::task::spawn_blocking(move || readme_install(&config, &["--set", "crds.keep=false"]))
        .await??;
    for name in [POOLS, CODESOURCES] {
        let installed = crd(&admin, name)
            .await?
            .with_context(|| format!("no {name}"))?;
        assert!(openvox_crds::crd::is_ours(&installed), "{name}");
    }
    let ns = TestNamespace::new_in(&control_plane, "alone").await?;
    eventually("the Pool kind to be served", || async {
        Ok(
            harness::apply::apply(ns.client(), Some(ns.name()), pool("puppet"))
                .await
                .ok(),
        )
    })
    .await?;

    // Even with crds.keep=false: the CodeSource CRD goes, the Pool CRD and Pools stay.
    helm_uninstall(&kubeconfig).await?;
    eventually("the CodeSource CRD to go", || async {
        Ok(crd(&admin, CODESOURCES).await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        crd(&admin, POOLS).await?.is_some(),
        "the Pool CRD was deleted"
    );
    assert!(
        pools(ns.client(), ns.name())
            .get_opt("puppet")
            .await?
            .is_some()
    );

    // A second install adopts the Pool CRD it created before (same release).
    let config = kubeconfig.clone();
    tokio::task::spawn_blocking(move || readme_install(&config, &[])).await??;
    assert!(crd(&admin, CODESOURCES).await?.is_some());
    drop(ns);
    tokio::task::spawn_blocking(move || drop(control_plane)).await?;
    Ok(())
}

#[tokio::test]
async fn on_our_crd_a_pool_whose_service_the_operator_manages_is_left_alone() -> Result<()> {
    let ns = TestNamespace::new("pool-beside").await?;
    let writer = OperatorPoolWriter::start(ns.client().clone(), ns.name());
    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Both controllers run when the Pool appears (the operator installed after us:
    // its chart keeps our CRD).
    let controller = tokio::spawn(pool::supervise(
        ns.client().clone(),
        Settings {
            gateway_api_poll: Duration::from_millis(500),
            ..Settings::new(Some(ns.name().to_string()), 4)
        },
        Supervision {
            mode: PoolControllerMode::Auto,
            crd_poll: Duration::from_secs(60),
            regarding: None,
        },
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    harness::apply::apply(ns.client(), Some(ns.name()), pool("puppet")).await?;
    eventually("the operator's label on the Service", || async {
        Ok(service_manager(ns.client(), ns.name(), "puppet")
            .await?
            .filter(|m| m == "openvox-operator"))
    })
    .await?;
    // Converged: from now on nobody rewrites it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = writer.writes();
    let changes = rewrites(ns.client(), ns.name(), "puppet").await?;
    eprintln!(
        "on our Pool CRD beside the operator's writer: {changes} Service rewrites in {:?} after {before} operator writes to converge",
        window()
    );
    assert_eq!(changes, 0);
    assert_eq!(writer.writes(), before);
    assert!(before <= 3, "{before} operator writes to converge");
    assert!(
        metrics
            .encode()
            .contains("openvox_code_pools_managed_elsewhere 1"),
        "{}",
        metrics.encode()
    );
    assert_eq!(
        managed_elsewhere_event_about(&ns).await?.as_deref(),
        Some("puppet")
    );
    let _ = stop.send(());
    let _ = controller.await;
    Ok(())
}

/// `kubectl explain` of a resource name: the kind it resolves to.
fn resolved_kind(kubeconfig: &Path, resource: &str) -> Result<String> {
    let mut command = Command::new(harness::tools::kubectl_path()?);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["explain", resource]);
    let out = run(command)?;
    out.lines()
        .find_map(|l| l.strip_prefix("KIND:"))
        .map(|k| k.trim().to_owned())
        .with_context(|| format!("no KIND in `kubectl explain {resource}`: {out}"))
}

/// Resource names in the README's `kubectl` commands (`get codesources,pools`,
/// `describe codesource x`, `annotate codesrc x`, `wait … codesource/x`, `explain
/// codesource.spec`), without names, fields and flags.
fn readme_resources(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in readme.lines() {
        // Every `kubectl` of the line, also one inside `$(…)`.
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, _) in words
            .iter()
            .enumerate()
            .filter(|(_, w)| w.ends_with("kubectl"))
        {
            let mut rest = words[i + 1..].iter();
            // Flags before the verb take a value (`-n puppet`) unless they carry it.
            let verb = loop {
                match rest.next() {
                    Some(w) if w.starts_with('-') => {
                        if !w.contains('=') {
                            rest.next();
                        }
                    }
                    other => break other,
                }
            };
            let Some(verb) = verb else { continue };
            if ![
                "get", "describe", "annotate", "patch", "wait", "explain", "delete", "edit",
            ]
            .contains(verb)
            {
                continue;
            }
            let Some(target) = rest.find(|w| !w.starts_with('-') && !w.contains('=')) else {
                continue;
            };
            for part in target.split(',') {
                let resource = part.split(['/', '.']).next().unwrap_or_default();
                if !resource.is_empty() && resource.chars().all(|c| c.is_ascii_lowercase()) {
                    out.push(resource.to_owned());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn readme_resources_are_read_from_its_kubectl_commands() {
    let readme = "x\n```\nkubectl get codesources,pools -A\nkubectl -n p annotate codesrc prod a=b\n\
                  kubectl wait --for=condition=RolledOut codesource/production\n\
                  kubectl explain codesource.spec\nkubectl logs job/$(kubectl get cs x)\n```\n";
    assert_eq!(
        readme_resources(readme),
        ["codesource", "codesources", "codesrc", "cs", "pools"]
    );
}

#[tokio::test]
async fn every_resource_name_in_the_readme_resolves_to_the_kind_it_means() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let kubeconfig: PathBuf = control_plane.kubeconfig().to_owned();
    let readme = std::fs::read_to_string(harness::tools::chart_dir().join("../../README.md"))?;
    let resources = readme_resources(&readme);
    ensure!(
        resources.iter().any(|r| r == "codesrc"),
        "the README should show the short name: {resources:?}"
    );
    // ComponentStatus (`cs`) is the classic trap: kubectl picks the built-in kind.
    let allowed = [
        "CodeSource",
        "Pool",
        "Job",
        "Deployment",
        "Secret",
        "Config",
        "Server",
        "Event",
        "CustomResourceDefinition",
    ];
    let resolved = tokio::task::spawn_blocking(move || {
        resources
            .into_iter()
            .map(|r| resolved_kind(&kubeconfig, &r).map(|kind| (r, kind)))
            .collect::<Result<Vec<_>>>()
    })
    .await??;
    for (resource, kind) in &resolved {
        if !allowed.contains(&kind.as_str()) {
            bail!("`kubectl … {resource}` in the README resolves to {kind}");
        }
    }
    let ours: Vec<_> = resolved
        .iter()
        .filter(|(r, _)| r.starts_with("code"))
        .collect();
    assert!(
        ours.iter().all(|(_, kind)| kind == "CodeSource"),
        "{ours:?}"
    );
    Ok(())
}
