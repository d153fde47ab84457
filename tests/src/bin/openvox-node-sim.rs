//! `openvox-node-sim`: the node simulation of the test harness as a command, for a
//! control plane started with `make cluster-up`. It binds the pods of Jobs to a fake
//! Node, runs their containers as local processes and reports their status, until
//! SIGINT or SIGTERM. See tests/README.md for what is simulated.

use anyhow::{Context, Result, bail};
use clap::Parser;
use harness::{NodeSim, NodeSimConfig};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Plays kubelet and scheduler for the pods of Jobs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Kubeconfig of the control plane (an identity that may bind pods, read Secrets
    /// and write pod status; `make cluster-up` prints the admin one).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Namespace whose Job pods to run; repeat for more. None: all namespaces.
    #[arg(long = "namespace", short = 'n')]
    namespaces: Vec<String>,
    /// Name of the simulated Node.
    #[arg(long, default_value = harness::node_sim::DEFAULT_NODE_NAME)]
    node_name: String,
    /// Directory for pod directories (volumes, logs, termination messages).
    #[arg(long, default_value = "node-sim")]
    work_dir: PathBuf,
    /// IMAGE=EXECUTABLE: run EXECUTABLE for containers of IMAGE that have no command.
    #[arg(long = "image", value_name = "IMAGE=EXECUTABLE")]
    images: Vec<String>,
    /// IMAGE=DIR: put DIR first on the PATH of containers of IMAGE (the executables the
    /// image provides, for containers that name a command).
    #[arg(long = "image-path", value_name = "IMAGE=DIR")]
    image_paths: Vec<String>,
    /// Label selector of pods that are only made ready, not run (for example
    /// `openvox.voxpupuli.org/server` for the pods of openvox-operator's Servers).
    #[arg(long, value_name = "SELECTOR")]
    ready_only: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args = Args::parse();
    let mut images = BTreeMap::new();
    for mapping in &args.images {
        let Some((image, executable)) = mapping.split_once('=') else {
            bail!("--image {mapping:?}: expected IMAGE=EXECUTABLE");
        };
        images.insert(image.to_owned(), vec![executable.to_owned()]);
    }
    let mut image_paths = BTreeMap::new();
    for mapping in &args.image_paths {
        let Some((image, dir)) = mapping.split_once('=') else {
            bail!("--image-path {mapping:?}: expected IMAGE=DIR");
        };
        image_paths.insert(image.to_owned(), PathBuf::from(dir));
    }
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let kube_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let work_dir = std::path::absolute(&args.work_dir)?;
    let config = NodeSimConfig {
        node_name: args.node_name,
        namespaces: args.namespaces,
        work_dir,
        images,
        image_paths,
        ready_only: args.ready_only,
    };
    let sim = NodeSim::start(kube_config, config).await?;
    eprintln!(
        "node simulation running; pod directories in {}",
        sim.work_dir().display()
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    drop(sim);
    Ok(())
}
