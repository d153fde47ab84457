//! `make demo`: the whole product on this machine in a minute. Starts a control plane,
//! a git server, a registry, the controller and a node for the worker; applies a Config
//! and a CodeSource; shows the digest that lands in the Config and the image's layers;
//! commits to one branch and shows the new digest and which layer changed. Everything
//! it started stops when it exits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use harness::world::{NAME, World};
use harness::{ControlPlane, Options, TestNamespace};
use kube::api::Api;
use openvox_crds::CodeSource;

/// Runs the openvox-code demo on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// The controller binary.
    #[arg(long, default_value = "target/debug/openvox-code-controller")]
    controller: PathBuf,
    /// The worker binary.
    #[arg(long, default_value = "target/debug/openvox-code-worker")]
    worker: PathBuf,
}

const TIMEOUT: Duration = Duration::from_secs(300);

fn step(started: Instant, text: &str) {
    println!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Worker pods run in their own directories: hand node simulation absolute paths.
    let controller = std::fs::canonicalize(&args.controller).with_context(|| {
        format!(
            "{} (build it first, or run `make demo`)",
            args.controller.display()
        )
    })?;
    let worker = std::fs::canonicalize(&args.worker).with_context(|| {
        format!(
            "{} (build it first, or run `make demo`)",
            args.worker.display()
        )
    })?;
    let started = Instant::now();
    step(
        started,
        "starting a Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, kube-controller-manager)",
    );
    let control_plane =
        tokio::task::spawn_blocking(|| ControlPlane::start(&Options::default())).await??;
    let ns = TestNamespace::new_in(&control_plane, "demo").await?;
    step(
        started,
        "starting a git daemon, an OCI registry, the controller, and a node for worker pods",
    );
    let world = World::start(ns, &controller, &worker).await?;
    step(
        started,
        &format!(
            "applied Config/{NAME} and CodeSource/{NAME} (branches production and staging) in namespace {}",
            world.ns.name()
        ),
    );

    let first = world.wait_for_image(None, TIMEOUT).await?;
    step(started, &format!("Config.spec.code now pins {first}"));
    let first_layers = World::layers(&first)?;
    let codesources: Api<CodeSource> = world.ns.api();
    if let Some(build) = codesources
        .get(NAME)
        .await?
        .status
        .and_then(|s| s.last_build)
    {
        println!("          image layout: one layer per environment at the image root");
        for env in &build.environments {
            let modules: Vec<String> = env
                .modules
                .iter()
                .map(|m| format!("{}@{}", m.name, &m.version[..m.version.len().min(12)]))
                .collect();
            println!(
                "            /{:<11} {}  {}  modules: {}",
                env.name,
                env.layer_digest.as_deref().unwrap_or("?"),
                env.revision,
                modules.join(", ")
            );
        }
    }

    let commit = world.commit("staging", "a change on staging");
    step(
        started,
        &format!(
            "committed {} to staging; asking for a check (as a webhook would)",
            &commit[..12]
        ),
    );
    world.request_check("demo").await?;
    let second = world.wait_for_image(Some(&first), TIMEOUT).await?;
    step(started, &format!("Config.spec.code now pins {second}"));
    let second_layers = World::layers(&second)?;
    for (name, (before, after)) in ["production", "staging"]
        .iter()
        .zip(first_layers.iter().zip(&second_layers))
    {
        let verdict = if before == after {
            "unchanged, reused"
        } else {
            "rebuilt"
        };
        println!("            /{name:<11} {before} -> {after}  ({verdict})");
    }
    step(started, "done; stopping everything");
    Ok(())
}
