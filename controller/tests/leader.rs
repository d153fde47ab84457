//! Leader election against a real kube-apiserver: electors race for one Lease in a
//! test namespace, with short timings so takeovers happen in seconds. The last two
//! tests run the controller binary itself: one takes its Lease away, one starts it
//! where its CodeSource controller cannot run.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use harness::TestNamespace;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use openvox_code_controller::leader::{
    Attempt, LEASE_NAME, LeaderElector, Leadership, LeaseSettings,
};

fn settings(namespace: &str, identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        renew_every: Duration::from_millis(500),
        ..LeaseSettings::new(namespace, identity)
    }
}

fn elector(client: &Client, namespace: &str, identity: &str) -> LeaderElector {
    LeaderElector::new(client.clone(), settings(namespace, identity))
}

async fn holder(ns: &TestNamespace) -> Result<Option<String>> {
    let leases: Api<Lease> = ns.api();
    Ok(leases
        .get_opt(LEASE_NAME)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// Races `a` and `b` for the Lease; returns the winner's name and leadership, and the
/// loser's still-waiting task.
async fn race(
    a: LeaderElector,
    b: LeaderElector,
) -> Result<(
    String,
    Leadership,
    tokio::task::JoinHandle<Leadership>,
    String,
)> {
    let (name_a, name_b) = (a.settings().identity.clone(), b.settings().identity.clone());
    let mut task_a = tokio::spawn(a.acquire());
    let mut task_b = tokio::spawn(b.acquire());
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            l = &mut task_a => (name_a.clone(), l),
            l = &mut task_b => (name_b.clone(), l),
        }
    })
    .await
    .context("nobody became the leader")?;
    let (winner, leadership) = (first.0, first.1?);
    let (loser_task, loser) = if winner == name_a {
        (task_b, name_b)
    } else {
        (task_a, name_a)
    };
    Ok((winner, leadership, loser_task, loser))
}

#[tokio::test]
async fn of_two_electors_exactly_one_leads_and_keeps_leading_while_it_renews() -> Result<()> {
    let ns = TestNamespace::new("leader-one").await?;
    let a = elector(ns.client(), ns.name(), "replica-a");
    let b = elector(ns.client(), ns.name(), "replica-b");
    let (winner, leadership, mut loser, _) = race(a, b).await?;
    assert_eq!(holder(&ns).await?.as_deref(), Some(winner.as_str()));

    // Three lease durations later the winner still holds it and the loser still waits.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut loser)
            .await
            .is_err(),
        "the standby became leader while the leader was renewing"
    );
    assert!(!leadership.is_lost());
    assert_eq!(holder(&ns).await?.as_deref(), Some(winner.as_str()));
    loser.abort();
    leadership.release().await;
    Ok(())
}

#[tokio::test]
async fn a_released_lease_is_taken_over_at_once() -> Result<()> {
    let ns = TestNamespace::new("leader-release").await?;
    let a = elector(ns.client(), ns.name(), "replica-a");
    let b = elector(ns.client(), ns.name(), "replica-b");
    let (_, leadership, loser, loser_name) = race(a, b).await?;

    let released = Instant::now();
    leadership.release().await;
    let next = tokio::time::timeout(Duration::from_secs(3), loser)
        .await
        .context("the standby did not take over within the lease duration")??;
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "took {:?}",
        released.elapsed()
    );
    assert_eq!(holder(&ns).await?.as_deref(), Some(loser_name.as_str()));

    let leases: Api<Lease> = ns.api();
    let transitions = leases
        .get(LEASE_NAME)
        .await?
        .spec
        .and_then(|s| s.lease_transitions);
    assert_eq!(
        transitions,
        Some(0),
        "a release leaves no holder to transition from"
    );
    next.release().await;
    Ok(())
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_once_its_lease_expires() -> Result<()> {
    let ns = TestNamespace::new("leader-crash").await?;
    let a = elector(ns.client(), ns.name(), "replica-a");
    let b = elector(ns.client(), ns.name(), "replica-b");
    let (winner, leadership, loser, loser_name) = race(a, b).await?;

    // Stops renewing without releasing, as a killed process does.
    let crashed = Instant::now();
    leadership.abandon();
    let next = tokio::time::timeout(Duration::from_secs(10), loser)
        .await
        .context("the standby never took over")??;
    let took = crashed.elapsed();
    // Not before the lease could expire, and within one look after it did.
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert_ne!(winner, loser_name);
    let leases: Api<Lease> = ns.api();
    let spec = leases.get(LEASE_NAME).await?.spec.unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some(loser_name.as_str()));
    assert_eq!(spec.lease_transitions, Some(1));
    next.release().await;
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_learns_it_has_lost() -> Result<()> {
    let ns = TestNamespace::new("leader-lost").await?;
    let leadership = elector(ns.client(), ns.name(), "replica-a").acquire().await;
    steal(&ns, "intruder").await?;
    tokio::time::timeout(Duration::from_secs(3), leadership.lost())
        .await
        .context("the leader did not notice")?;
    assert!(leadership.is_lost());
    // A lost leader does not release what is no longer its own.
    leadership.release().await;
    assert_eq!(holder(&ns).await?.as_deref(), Some("intruder"));

    // And a second elector sees the intruder's fresh lease as taken.
    let b = elector(ns.client(), ns.name(), "replica-b");
    assert_eq!(b.try_acquire().await?, Attempt::HeldBy("intruder".into()));
    Ok(())
}

/// Writes the Lease as held by `identity` right now, for 15 s.
async fn steal(ns: &TestNamespace, identity: &str) -> Result<()> {
    let leases: Api<Lease> = ns.api();
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(identity.into()),
        lease_duration_seconds: Some(15),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        ..LeaseSpec::default()
    };
    match leases.get_opt(LEASE_NAME).await? {
        Some(mut lease) => {
            lease.spec = Some(spec);
            leases
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// The controller binary, killed when dropped.
struct Controller(Child);
impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn get_status(url: &str) -> Option<u16> {
    openvox_code_controller::tls::install_ring_provider();
    let response = reqwest::Client::new().get(url).send().await.ok()?;
    Some(response.status().as_u16())
}

/// Starts the controller binary for `ns` (CodeSources only), with `env` and `flags`
/// besides the common ones, its log in `log`.
fn spawn_controller(
    ns: &TestNamespace,
    log: &Path,
    env: &[(&str, &OsStr)],
    flags: &[String],
) -> Result<Controller> {
    let child = Command::new(env!("CARGO_BIN_EXE_openvox-code-controller"))
        .env("KUBECONFIG", ns.control_plane().kubeconfig())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .args([
            "--worker-image=openvox-code-worker:test".to_string(),
            "--enable-pool=false".to_string(),
            format!("--namespace={}", ns.name()),
        ])
        .args(flags)
        .stdout(Stdio::from(std::fs::File::create(log)?))
        .stderr(Stdio::null())
        .spawn()
        .context("starting the controller binary")?;
    Ok(Controller(child))
}

/// Waits up to `within` for the process to exit; fails saying it `kept running …`.
async fn exit_status(
    controller: &mut Controller,
    within: Duration,
    kept_running: &str,
    logs: impl Fn() -> String,
) -> Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = controller.0.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!(
                "the controller kept running {kept_running}; log:\n{}",
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_controller_waits_for_the_lease_then_leads_and_exits_non_zero_when_it_is_taken()
-> Result<()> {
    let ns = TestNamespace::new("leader-process").await?;
    steal(&ns, "the-old-leader").await?;

    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("leader-process-{}.log", std::process::id()));
    let mut controller = spawn_controller(
        &ns,
        &log,
        &[("POD_NAME", OsStr::new("controller-under-test"))],
        &[
            "--leader-election=true".into(),
            format!("--leader-election-namespace={}", ns.name()),
            format!("--metrics-addr=127.0.0.1:{port}"),
        ],
    )?;
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // A standby: ready (it could serve webhooks), not holding the Lease.
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_status(&readyz).await != Some(200) {
        if Instant::now() > deadline {
            bail!("the standby never became ready; log:\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(holder(&ns).await?.as_deref(), Some("the-old-leader"));
    assert!(!logs().contains("controllers started"), "{}", logs());

    // The old leader releases: the controller takes over and starts its controllers.
    let leases: Api<Lease> = ns.api();
    let mut lease = leases.get(LEASE_NAME).await?;
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    leases
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while holder(&ns).await?.as_deref() != Some("controller-under-test")
        || !logs().contains("controllers started")
    {
        if Instant::now() > deadline {
            bail!(
                "the controller did not take the released lease; log:\n{}",
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Someone takes the Lease away: the process exits with a failure, so the pod restarts.
    steal(&ns, "usurper").await?;
    let status = exit_status(
        &mut controller,
        Duration::from_secs(15),
        "without the lease",
        logs,
    )
    .await?;
    assert_eq!(status.code(), Some(1), "log:\n{}", logs());
    assert!(logs().contains("lost the leader lease"), "{}", logs());
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// A controller that cannot start must not leave a process that says it is ready and
/// reconciles nothing: here the head checks' scratch directory cannot be created (the
/// temporary directory is a regular file; as root, a read-only directory would not
/// stop it).
#[tokio::test]
async fn a_controller_that_cannot_start_ends_the_process_non_zero() -> Result<()> {
    let ns = TestNamespace::new("process-exit").await?;
    let scratch = std::env::temp_dir().join(format!("process-exit-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let not_a_dir = scratch.join("tmp");
    std::fs::write(&not_a_dir, "a file where a directory should be")?;
    let log = scratch.join("controller.log");
    let mut controller = spawn_controller(
        &ns,
        &log,
        &[("TMPDIR", not_a_dir.as_os_str())],
        &["--metrics-addr=127.0.0.1:0".into()],
    )?;
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let status = exit_status(
        &mut controller,
        Duration::from_secs(30),
        "without its CodeSource controller",
        logs,
    )
    .await?;
    assert_eq!(status.code(), Some(1), "log:\n{}", logs());
    assert!(
        logs().contains("the CodeSource controller could not start"),
        "{}",
        logs()
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
