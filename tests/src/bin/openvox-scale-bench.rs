//! Scale benchmark (`make bench-scale`): the controller binary against a real control
//! plane with 10,000 CodeSources over 500 control repositories whose Puppetfiles have
//! floating modules from 200 module repositories, and 1,000 Pools.
//!
//! Every CodeSource starts with a `status.lastBuild` for its current heads and module
//! commits, written as the worker writes it, so the run shows the steady state of an
//! installation whose code is built: nothing moves, and no Job may be created. The
//! controller is started after all objects exist (like a restart or an upgrade), and
//! the bench prints: time until every object is reconciled once, listings per schedule
//! tick (from the controller's metrics and from the git daemon's log), API requests per
//! tick at rest, peak RSS and CPU of the controller, Jobs created, load average. Then
//! one module repository moves, and the CodeSources that got a Job are compared with
//! exactly those whose last build uses that module.
//!
//! Everything it starts (control plane, git daemon, controller) is stopped when it
//! returns, also on error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use harness::fixtures::{Bare, Scratch, Server, file, free_port, require};
use harness::{ControlPlane, Options, TestNamespace};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use openvox_code_controller::codesource::decide::{inputs_hash, spec_hash};
use openvox_code_controller::codesource::heads::wanted_heads;
use openvox_crds::names::{WORKER_MANAGER, labels};
use openvox_crds::{CodeSource, Pool};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Branches of every repository; the CodeSources select the first two.
const BRANCHES: [&str; 3] = ["production", "staging", "feature_x"];

#[derive(Parser, Debug)]
#[command(about = "Scale benchmark of the openvox-code controller")]
struct Args {
    /// Controller binary (a release build measures what ships).
    #[arg(long, default_value = "target/release/openvox-code-controller")]
    controller: PathBuf,
    /// CodeSources to create.
    #[arg(long, default_value_t = 10_000)]
    codesources: usize,
    /// Control repositories they spread over.
    #[arg(long, default_value_t = 500)]
    repos: usize,
    /// Module repositories the Puppetfiles' floating modules come from.
    #[arg(long, default_value_t = 200)]
    module_repos: usize,
    /// Floating modules per environment (two environments per CodeSource).
    #[arg(long, default_value_t = 3)]
    modules_per_environment: usize,
    /// Pools to create.
    #[arg(long, default_value_t = 1000)]
    pools: usize,
    /// Scheduled ticks measured at steady state (one per minute).
    #[arg(long, default_value_t = 2)]
    ticks: u32,
    /// Objects created at once.
    #[arg(long, default_value_t = 16)]
    create_concurrency: usize,
}

/// The controller process, killed when dropped.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What is read at one instant.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    head_checks: f64,
    upload_packs: usize,
    requests: BTreeMap<String, f64>,
    builds_started: f64,
    cpu_seconds: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let controller = std::fs::canonicalize(&args.controller)
        .with_context(|| format!("controller binary {}", args.controller.display()))?;
    // Named by the cargo profile directory it was built in (target/release, target/debug).
    let in_dir = |name: &str| controller.components().any(|c| c.as_os_str() == name);
    let profile = if in_dir("release") {
        "release build"
    } else if in_dir("debug") {
        "debug build"
    } else {
        "build profile unknown"
    };
    println!("# openvox-code scale benchmark");
    println!(
        "date:        {}",
        command_line(&mut Command::new("date"), &["-u"])
    );
    println!(
        "cpus:        {}",
        command_line(&mut Command::new("nproc"), &[])
    );
    println!("load before: {}", loadavg());
    println!("controller:  {} ({profile})", controller.display());
    println!(
        "objects:     {} CodeSources over {} repositories ({} branches each, schedule \"* * * * *\"), \
         {} floating modules per environment from {} module repositories, {} Pools",
        args.codesources,
        args.repos,
        BRANCHES.len(),
        args.modules_per_environment,
        args.module_repos,
        args.pools
    );

    let started = Instant::now();
    let plane = match std::env::var_os(harness::control_plane::KUBECONFIG_ENV) {
        Some(path) if !path.is_empty() => ControlPlane::existing(PathBuf::from(path)),
        _ => ControlPlane::start(&Options::default())?,
    };
    println!(
        "control plane up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let ns = TestNamespace::new_in(&plane, "scale").await?;
    let scratch = Scratch::new();

    // Git: one daemon, every repository with a few branches.
    let repos = scratch.mkdir("repos");
    let mut heads = Vec::new();
    for r in 0..args.repos {
        let bare = Bare::init(&repos.join(format!("repo-{r}.git")));
        let mut listed = BTreeMap::new();
        for branch in BRANCHES {
            let commit = bare.commit(
                branch,
                "initial",
                &[(
                    "manifests/site.pp",
                    file(&format!("node default {{}} # {r} {branch}\n")),
                )],
            );
            listed.insert(branch.to_owned(), commit);
        }
        heads.push(listed);
    }
    let mut module_heads = Vec::new();
    for m in 0..args.module_repos {
        let bare = Bare::init(&repos.join(format!("module-{m}.git")));
        module_heads.push(bare.commit(
            "main",
            "initial",
            &[("manifests/init.pp", file(&format!("class m{m} {{}}\n")))],
        ));
    }
    let daemon = verbose_git_daemon(&repos, scratch.path("git-daemon.log"));
    let modules_of = |i: usize| modules_of(i, args.module_repos, args.modules_per_environment);

    // Objects, created by a bounded number of concurrent requests.
    let created = Instant::now();
    let codesources: Api<CodeSource> = ns.api();
    let pools: Api<Pool> = ns.api();
    futures::stream::iter(0..args.codesources)
        .map(|i| {
            let api = codesources.clone();
            let repo = i % args.repos;
            let url = format!("git://127.0.0.1:{}/repo-{repo}.git", daemon.port);
            let all = &heads[repo];
            let modules: Vec<(String, String)> = modules_of(i)
                .into_iter()
                .map(|m| {
                    (
                        format!("git://127.0.0.1:{}/module-{m}.git", daemon.port),
                        module_heads[m].clone(),
                    )
                })
                .collect();
            async move { create_built_codesource(&api, i, &url, all, &modules).await }
        })
        .buffer_unordered(args.create_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    futures::stream::iter(0..args.pools)
        .map(|i| {
            let api = pools.clone();
            async move {
                let pool: Pool = serde_json::from_value(json!({
                    "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Pool",
                    "metadata": {"name": format!("pool-{i:04}")}, "spec": {},
                }))?;
                api.create(&PostParams::default(), &pool)
                    .await
                    .context("create Pool")?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.create_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "created {} objects and {} build reports in {:.1}s ({} requests at a time)",
        args.codesources + args.pools,
        args.codesources,
        created.elapsed().as_secs_f64(),
        args.create_concurrency
    );

    // The controller, started once everything exists.
    let metrics_port = free_port();
    let log_path = scratch.path("controller.log");
    let log = std::fs::File::create(&log_path)?;
    let t0 = Instant::now();
    let child = Command::new(&controller)
        .env("KUBECONFIG", plane.kubeconfig())
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1")
        // As the image and the chart run it.
        .env("MALLOC_ARENA_MAX", "2")
        .args(["--worker-image", "openvox-code-worker:bench"])
        .args(["--namespace", ns.name()])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", controller.display()))?;
    let pid = child.id();
    let _controller = Controller(child);

    let (cs_done, pool_done) = wait_reconciled(&ns, &args, t0, &log_path).await?;
    let initial = sample(metrics_port, &daemon.log, pid).await?;
    println!(
        "reconciled once: all CodeSources after {:.1}s, all Pools (status + Service) after {:.1}s",
        cs_done.as_secs_f64(),
        pool_done.as_secs_f64()
    );
    println!(
        "start-up:    {} head checks (metrics), {} upload-pack requests (git daemon), {:.2} CPU s",
        initial.head_checks, initial.upload_packs, initial.cpu_seconds
    );

    // Steady state: samples 30 s after each minute boundary (each tick is done by then);
    // the deltas between them cover exactly one tick each.
    let mut samples = Vec::new();
    for _ in 0..=args.ticks {
        sleep_until_second(30).await;
        samples.push(sample(metrics_port, &daemon.log, pid).await?);
    }
    let first = samples.first().cloned().context("no sample")?;
    let last = samples.last().cloned().context("no sample")?;
    let per_tick: Vec<String> = samples
        .windows(2)
        .map(|w| {
            format!(
                "{} (daemon {})",
                w[1].head_checks - w[0].head_checks,
                w[1].upload_packs - w[0].upload_packs
            )
        })
        .collect();
    let minutes = last.at.duration_since(first.at).as_secs_f64() / 60.0;
    let total = |s: &Sample| s.requests.values().sum::<f64>();
    let per_minute = (total(&last) - total(&first)) / minutes;

    let jobs: Api<Job> = ns.api();
    let job_count = jobs.list(&ListParams::default()).await?.items.len();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap_or_default()
    };

    println!();
    println!("## Results");
    println!("load after:  {}", loadavg());
    println!(
        "reconciled once:            CodeSources {:.1}s, Pools {:.1}s (target ≤ 60 s)",
        cs_done.as_secs_f64(),
        pool_done.as_secs_f64()
    );
    println!(
        "listings per tick:          {} (target {} = one per control and module repository)",
        per_tick.join(", "),
        args.repos + args.module_repos
    );
    println!(
        "API requests per minute:    {per_minute:.0} over {minutes:.1} min of steady state = {:.4} per CodeSource and tick (target ≤ 0.05)",
        per_minute / args.codesources as f64
    );
    let mut deltas: Vec<(String, f64)> = last
        .requests
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - first.requests.get(k).unwrap_or(&0.0)) / minutes,
            )
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    deltas.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (labels, rate) in deltas {
        println!("    {rate:>8.0}/min  {labels}");
    }
    println!(
        "start-up API requests:      {:.0} (until everything was reconciled once)",
        total(&initial)
    );
    println!(
        "controller memory:          peak {} (VmHWM), now {} (VmRSS) (target ≤ 128 MiB)",
        field("VmHWM:"),
        field("VmRSS:")
    );
    println!(
        "controller CPU:             {:.2} s total, {:.2} s at start-up, {:.2} s per steady minute",
        last.cpu_seconds,
        initial.cpu_seconds,
        (last.cpu_seconds - first.cpu_seconds) / minutes
    );
    println!(
        "Jobs with no head changed:  {job_count} in the namespace, {} builds started (target 0)",
        last.builds_started
    );

    // One module repository moves: at the next tick exactly the CodeSources whose last
    // build uses it get a Job.
    let moved = 0;
    let module = Bare {
        path: repos.join(format!("module-{moved}.git")),
    };
    module.commit(
        "main",
        "moved",
        &[("manifests/init.pp", file("class m0 { }\n"))],
    );
    let moved_at = Instant::now();
    sleep_until_second(30).await;
    let expected: BTreeSet<String> = (0..args.codesources)
        .filter(|i| modules_of(*i).contains(&moved))
        .map(codesource_name)
        .collect();
    let launched: BTreeSet<String> = jobs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|j| j.labels().get(labels::CODESOURCE).cloned())
        .collect();
    println!(
        "module-{moved} moved:             Jobs for {} CodeSources after {:.0}s; {} use the module; same set: {}",
        launched.len(),
        moved_at.elapsed().as_secs_f64(),
        expected.len(),
        launched == expected
    );
    println!("controller log: {} (removed at exit)", log_path.display());
    Ok(())
}

fn codesource_name(i: usize) -> String {
    format!("cs-{i:05}")
}

/// The module repositories CodeSource `i`'s environments use: spread so that every
/// module repository is used, by many CodeSources each.
fn modules_of(i: usize, module_repos: usize, per_environment: usize) -> BTreeSet<usize> {
    (0..2 * per_environment)
        .map(|k| (i * 7 + k * 13) % module_repos.max(1))
        .collect()
}

/// Creates CodeSource `i` and reports a finished build of its current heads whose
/// environments follow `modules` (URL, commit) on their `main`, as the worker would,
/// so the controller finds it up to date.
async fn create_built_codesource(
    api: &Api<CodeSource>,
    i: usize,
    url: &str,
    all: &BTreeMap<String, String>,
    modules: &[(String, String)],
) -> Result<()> {
    let name = codesource_name(i);
    let object: CodeSource = serde_json::from_value(json!({
        "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
        "metadata": {"name": name},
        "spec": {
            "git": {"url": url, "branches": BRANCHES[..2]},
            "schedule": "* * * * *",
            "output": {"image": format!("registry.example/puppet/code-{i}")},
        },
    }))?;
    // The spec as the API server stored it (with its defaults) is what the controller hashes.
    let stored = api
        .create(&PostParams::default(), &object)
        .await
        .context("create CodeSource")?;
    let wanted = wanted_heads(
        all,
        &stored.spec.git.branches,
        &stored.spec.git.exclude_branches,
    );
    let inputs = inputs_hash(&spec_hash(&stored.spec), &wanted);
    // Half the modules in each of the two environments.
    let half = modules.len().div_ceil(2);
    let environments: Vec<serde_json::Value> = wanted
        .iter()
        .zip([&modules[..half], &modules[half..]])
        .map(|((branch, revision), modules)| {
            let floating: Vec<serde_json::Value> = modules
                .iter()
                .enumerate()
                .map(|(k, (url, commit))| {
                    json!({"name": format!("m{k}"), "git": {"url": url,
                        "refs": [format!("refs/heads/{branch}"), "refs/heads/main"], "commit": commit}})
                })
                .collect();
            json!({"name": branch, "branch": branch, "revision": revision, "floating": floating})
        })
        .collect();
    api.patch_status(
        &name,
        &PatchParams::apply(WORKER_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
            "status": {"lastBuild": {
                "image": format!("registry.example/puppet/code-{i}@sha256:{}", "ab".repeat(32)),
                "inputsHash": inputs,
                "environments": environments,
            }},
        })),
    )
    .await
    .context("report the build")?;
    Ok(())
}

/// Watches until every CodeSource has been checked for the current generation and every
/// Pool has a status for its generation and its Service; returns both durations. A
/// watch, not polling: listing 10,000 CodeSources every half second loaded the API
/// server the controller waits on.
async fn wait_reconciled(
    ns: &TestNamespace,
    args: &Args,
    t0: Instant,
    log: &Path,
) -> Result<(Duration, Duration)> {
    use kube::runtime::{WatchStreamExt as _, watcher};
    let checked = |c: &CodeSource| {
        c.status.as_ref().is_some_and(|s| {
            s.observed_generation == c.metadata.generation && s.last_check_time.is_some()
        })
    };
    let pool_done = |p: &Pool| {
        p.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == p.metadata.generation)
    };
    let mut codesources = watcher(ns.api::<CodeSource>(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut pools = watcher(ns.api::<Pool>(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut services = watcher(ns.api::<Service>(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let (mut cs_set, mut pool_set, mut service_set) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let (mut cs_at, mut pool_at) = (None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        tokio::select! {
            Some(cs) = codesources.next() => {
                let cs = cs?;
                if checked(&cs) {
                    cs_set.insert(cs.name_any());
                }
            }
            Some(pool) = pools.next() => {
                let pool = pool?;
                if pool_done(&pool) {
                    pool_set.insert(pool.name_any());
                }
            }
            Some(service) = services.next() => {
                service_set.insert(service?.name_any());
            }
            () = tokio::time::sleep_until(deadline) => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                bail!(
                    "not everything reconciled after 600 s ({} CodeSources, {} Pools); controller log tail:\n{}",
                    cs_set.len(),
                    pool_set.len(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        if cs_at.is_none() && cs_set.len() == args.codesources {
            cs_at = Some(t0.elapsed());
        }
        if pool_at.is_none()
            && pool_set.len() == args.pools
            && pool_set.iter().all(|p| service_set.contains(p))
        {
            pool_at = Some(t0.elapsed());
        }
        if let (Some(c), Some(p)) = (cs_at, pool_at) {
            return Ok((c, p));
        }
    }
}

/// `git daemon` serving `base`, logging every request (`--verbose`), so upload-pack
/// requests (one per head listing) can be counted.
fn verbose_git_daemon(base: &Path, log: PathBuf) -> Server {
    let port = free_port();
    let mut cmd = Command::new(require("git-daemon", "git"));
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "--reuseaddr",
            "--export-all",
            "--verbose",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base);
    Server::start("git daemon", cmd, port, log)
}

async fn sample(port: u16, daemon_log: &Path, pid: u32) -> Result<Sample> {
    let text = scrape(port).await?;
    let mut head_checks = 0.0;
    let mut builds_started = 0.0;
    let mut requests = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if series.starts_with("openvox_code_head_check_duration_seconds_count") {
            head_checks += value;
        } else if series == "openvox_code_builds_total{result=\"started\"}" {
            builds_started = value;
        } else if let Some(labels) = series.strip_prefix("openvox_code_api_requests_total") {
            requests.insert(labels.to_owned(), value);
        }
    }
    let upload_packs = std::fs::read_to_string(daemon_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Request upload-pack"))
        .count();
    Ok(Sample {
        at: Instant::now(),
        head_checks,
        upload_packs,
        requests,
        builds_started,
        cpu_seconds: cpu_seconds(pid)?,
    })
}

/// `GET /metrics` of the controller.
async fn scrape(port: u16) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connecting to the controller's metrics port")?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let hz: f64 = command_line(&mut Command::new("getconf"), &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0);
    Ok(ticks / hz)
}

/// Sleeps until `second` seconds past the next minute boundary.
async fn sleep_until_second(second: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let into_minute = now.as_secs_f64() % 60.0;
    let second = second as f64;
    let wait = if into_minute < second {
        second - into_minute
    } else {
        60.0 - into_minute + second
    };
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_line(cmd: &mut Command, args: &[&str]) -> String {
    cmd.args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
