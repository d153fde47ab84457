//! The openvox-code controller process: flags, logging, CRD check, health and metrics
//! server, the enabled controllers, graceful shutdown on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use openvox_code_controller::args::{Args, LogFormat};
use openvox_code_controller::metrics::Metrics;
use openvox_code_controller::pool::PoolControllerMode;
use openvox_code_controller::{client, codesource, leader, pool, tls, webhook};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    metrics: Metrics,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    tls::install_ring_provider();

    let metrics = Metrics::new();
    let client = client::counted_client(metrics.clone())
        .await
        .context("cannot reach the Kubernetes API")?;
    check_crds(&client, &args).await?;

    let health = Health {
        ready: Arc::new(AtomicBool::new(false)),
        metrics: metrics.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, "serving /healthz, /readyz, /metrics");
    let server = tokio::spawn(
        axum::serve(listener, router(health.clone()))
            .with_graceful_shutdown(shutdown())
            .into_future(),
    );

    // Every replica serves webhooks, leader or not: a hook only writes an annotation
    // that the leader acts on.
    let webhook_server = match args.webhook_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            info!(%addr, "serving webhooks at POST /hook/<namespace>/<codesource>");
            let state = webhook::WebhookState::new(client.clone(), metrics.clone())
                .namespace(args.namespace.clone());
            Some(tokio::spawn(webhook::serve(listener, state, shutdown())))
        }
        None => None,
    };

    // A standby is ready (it serves webhooks, and a rolling update must see the new pod
    // ready while the old one still leads) but runs no controller until it leads.
    let leadership = if args.leader_election {
        health.ready.store(true, Ordering::Relaxed);
        let namespace = leader::namespace_from(args.leader_election_namespace.as_deref(), &client);
        let settings = leader::LeaseSettings::new(namespace, leader::identity_from_env());
        info!(lease = %format!("{}/{}", settings.namespace, settings.name), identity = %settings.identity, "waiting to become the leader");
        tokio::select! {
            leadership = leader::LeaderElector::new(client.clone(), settings).acquire() => Some(leadership),
            () = wait_for_signal() => {
                info!("stopped before becoming the leader");
                let _ = stop_tx.send(true);
                let _ = server.await;
                if let Some(webhooks) = webhook_server {
                    let _ = webhooks.await;
                }
                return Ok(());
            }
        }
    } else {
        None
    };

    // Each controller runs until shutdown; one that ends before (it could not start,
    // or stopped) ends the process, below.
    let mut tasks: Vec<JoinHandle<Result<(), String>>> = Vec::new();
    if args.enable_codesource {
        let mut settings = codesource::Settings::new(args.worker_image.clone());
        settings.namespace = args.namespace.clone();
        settings.concurrency = args.concurrency;
        settings.worker_defaults = args.worker_defaults();
        let (client, metrics, stop) = (client.clone(), metrics.clone(), shutdown());
        tasks.push(tokio::spawn(async move {
            codesource::run(client, settings, metrics, stop)
                .await
                .map_err(|e| format!("the CodeSource controller could not start: {e}"))
        }));
    }
    if args.enable_pool != PoolControllerMode::Off {
        let settings = pool::Settings::new(args.namespace.clone(), args.pool_concurrency);
        let supervision = pool::Supervision {
            mode: args.enable_pool,
            crd_poll: Duration::from_secs(60),
            regarding: own_pod(),
        };
        tasks.push(tokio::spawn(pool::supervise(
            client.clone(),
            settings,
            supervision,
            metrics.clone(),
            shutdown(),
        )));
    }
    if tasks.is_empty() {
        bail!(
            "both controllers are disabled (--enable-codesource=false --enable-pool=false): nothing to do"
        );
    }
    health.ready.store(true, Ordering::Relaxed);
    info!(codesource = args.enable_codesource, pool = ?args.enable_pool, namespace = ?args.namespace, "controllers started");

    let leadership_lost = async {
        match &leadership {
            Some(leadership) => leadership.lost().await,
            None => std::future::pending().await,
        }
    };
    let mut running = futures::future::select_all(tasks);
    let remaining = tokio::select! {
        () = wait_for_signal() => running.into_inner(),
        () = leadership_lost => {
            // Another replica may already be reconciling: stop at once, and let the
            // pod restart clean as a standby.
            error!("lost the leader lease; exiting");
            std::process::exit(1);
        }
        (ended, _, others) = &mut running => {
            // A process that reconciles nothing must not say it is ready: stop, and
            // let the pod restart (and its restarts show the problem).
            health.ready.store(false, Ordering::Relaxed);
            let why = match ended {
                Ok(Err(why)) => why,
                Ok(Ok(())) => "a controller stopped before shutdown".to_owned(),
                Err(e) => format!("a controller stopped: {e}"),
            };
            error!("{why}; exiting");
            let _ = stop_tx.send(true);
            for task in others {
                let _ = task.await;
            }
            if let Some(leadership) = leadership {
                leadership.release().await;
            }
            std::process::exit(1);
        }
    };
    info!("shutting down: finishing reconciles in flight");
    health.ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for task in remaining {
        let _ = task.await;
    }
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    let _ = server.await;
    if let Some(webhooks) = webhook_server {
        let _ = webhooks.await;
    }
    info!("stopped");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colours only for a person at a terminal, never in `kubectl logs` or log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Fails with a message saying what to install when a CRD the enabled controllers need
/// is missing, instead of a watcher error loop.
async fn check_crds(client: &Client, args: &Args) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut wanted = Vec::new();
    if args.enable_codesource {
        wanted.push("codesources.openvox.voxpupuli.org");
    }
    // In `auto` mode a missing Pool CRD only keeps the Pool controller waiting.
    if args.enable_pool == PoolControllerMode::On {
        wanted.push(pool::ownership::POOL_CRD);
    }
    for name in wanted {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => bail!(
                "the CRD {name} is not installed: apply crds/*.yaml from openvox-code (or install \
                 the Helm chart with its CRDs), or turn this controller off"
            ),
            // No permission to read CRDs is not fatal: the watch will tell.
            Err(kube::Error::Api(status)) if status.code == 403 => {
                info!("cannot read CRD {name} (forbidden); skipping the check");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read CRD {name}")),
        }
    }
    Ok(())
}

/// The controller's own pod (the chart passes `POD_NAME` and `POD_NAMESPACE`), which
/// Events about the process itself are about.
fn own_pod() -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty())?;
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())?;
    Some(k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        ..Default::default()
    })
}

fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
