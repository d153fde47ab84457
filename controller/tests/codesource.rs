//! The CodeSource controller against a real kube-apiserver (with
//! kube-controller-manager) and a real git repository served over `file://` (git's own
//! upload-pack). The worker is not run here: where a test needs a finished build it
//! writes `status.lastBuild` itself under the worker's field manager, as the worker does.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use harness::TestNamespace;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use openvox_code_controller::codesource::{self, Settings};
use openvox_code_controller::metrics::Metrics;
use openvox_crds::CodeSource;
use openvox_crds::names::{WORKER_MANAGER, labels};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Runs the CodeSource controller for one namespace until dropped.
struct Running(Option<oneshot::Sender<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn start_controller(client: &Client, namespace: &str, scratch: &Path) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let mut settings = Settings::new("openvox-code-worker:test");
    settings.namespace = Some(namespace.to_string());
    settings.scratch_dir = scratch.to_path_buf();
    tokio::spawn(codesource::run(
        client.clone(),
        settings,
        Metrics::new(),
        async move {
            let _ = rx.await;
        },
    ));
    Running(Some(tx))
}

/// A control repository: a bare repo with one commit on `production`.
struct Repo {
    _dir: TempDir,
    bare: PathBuf,
    work: PathBuf,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=production",
        ])
        .args(args)
        .output()
        .with_context(|| format!("git {args:?}"))?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Repo {
    fn new() -> Result<Self> {
        let dir = temp_dir("cs-repo")?;
        let bare = dir.0.join("control.git");
        let work = dir.0.join("work");
        std::fs::create_dir_all(&work)?;
        git(
            &dir.0,
            &["init", "--bare", "-q", bare.to_str().unwrap_or_default()],
        )?;
        git(&work, &["init", "-q"])?;
        git(
            &work,
            &["remote", "add", "origin", bare.to_str().unwrap_or_default()],
        )?;
        let repo = Self {
            _dir: dir,
            bare,
            work,
        };
        repo.commit("first")?;
        Ok(repo)
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn commit(&self, message: &str) -> Result<String> {
        std::fs::create_dir_all(self.work.join("manifests"))?;
        std::fs::write(
            self.work.join("manifests/site.pp"),
            format!("# {message}\n"),
        )?;
        git(&self.work, &["add", "-A"])?;
        git(&self.work, &["commit", "-q", "-m", message])?;
        git(
            &self.work,
            &["push", "-q", "origin", "HEAD:refs/heads/production"],
        )?;
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

fn codesource(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
           "metadata": {"name": name}, "spec": spec})
}

fn spec(url: &str, schedule: &str) -> Value {
    json!({"git": {"url": url, "branches": ["production"]}, "schedule": schedule,
           "output": {"image": "registry.example/puppet-code"}})
}

async fn worker_jobs(ns: &TestNamespace, name: &str) -> Result<Vec<Job>> {
    let jobs: Api<Job> = ns.api();
    Ok(jobs
        .list(&ListParams::default().labels(&format!("{}={name}", labels::CODESOURCE)))
        .await?
        .items)
}

async fn status(ns: &TestNamespace, name: &str) -> Result<Value> {
    let api: Api<CodeSource> = ns.api();
    Ok(serde_json::to_value(
        api.get(name).await?.status.unwrap_or_default(),
    )?)
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_new_codesource_launches_one_job_and_unchanged_heads_launch_none() -> Result<()> {
    let repo = Repo::new()?;
    let scratch = temp_dir("cs-scratch")?;
    let ns = TestNamespace::new("cs-launch").await?;
    let _controller = start_controller(ns.client(), ns.name(), &scratch.0);
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("prod", spec(&repo.url(), "@hourly")),
    )
    .await?;

    // A Job with a deterministic name, recorded in status, with the worker's identity.
    let job = eventually("the first Job", || async {
        Ok(worker_jobs(&ns, "prod").await?.into_iter().next())
    })
    .await?;
    let job_name = job.name_any();
    assert!(
        job_name.starts_with("prod-") && job_name.len() == "prod-".len() + 8,
        "{job_name}"
    );
    let st = eventually("lastLaunch in status", || async {
        let st = status(&ns, "prod").await?;
        Ok((st["lastLaunch"]["jobName"] == job_name.as_str()).then_some(st))
    })
    .await?;
    assert_eq!(st["activeJob"], job_name.as_str());
    let first_commit = git(&repo.work, &["rev-parse", "HEAD"])?;
    assert_eq!(
        st["heads"]["production"],
        format!("production@sha1:{first_commit}")
    );
    let identity = "openvox-code-worker-prod";
    ns.api::<ServiceAccount>().get(identity).await?;
    let role = ns.api::<Role>().get(identity).await?;
    for rule in role.rules.unwrap_or_default() {
        assert_eq!(rule.resource_names, Some(vec!["prod".to_string()]));
    }
    ns.api::<RoleBinding>().get(identity).await?;
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")?;
    assert_eq!(pod.service_account_name.as_deref(), Some(identity));

    // The worker reports the build; then the Job disappears (its TTL).
    let inputs = st["lastLaunch"]["inputsHash"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let codesources: Api<CodeSource> = ns.api();
    codesources
        .patch_status(
            "prod",
            &PatchParams::apply(WORKER_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                "status": {"lastBuild": {"image": "registry.example/puppet-code@sha256:aaaa",
                                         "inputsHash": inputs, "jobName": job_name}}
            })),
        )
        .await?;
    ns.api::<Job>()
        .delete(&job_name, &DeleteParams::background())
        .await?;

    // A spec change that does not shape the output makes the controller look again:
    // same heads, so it is Ready and launches nothing, even though the Job is gone.
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("prod", spec(&repo.url(), "*/30 * * * *")),
    )
    .await?;
    eventually("Ready after the recheck", || async {
        let st = status(&ns, "prod").await?;
        let ready = condition(&st, "Ready")
            .map(|c| c["status"] == "True")
            .unwrap_or(false);
        Ok((st["observedGeneration"] == 2 && ready).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs = worker_jobs(&ns, "prod").await?;
    assert!(
        jobs.iter().all(|j| j.metadata.deletion_timestamp.is_some()),
        "unexpected Jobs: {:?}",
        jobs.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    );

    // A new commit, seen at the next look, launches a new Job under a new name.
    let second = repo.commit("second")?;
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("prod", spec(&repo.url(), "@daily")),
    )
    .await?;
    let new_job = eventually("a Job for the new commit", || async {
        Ok(worker_jobs(&ns, "prod")
            .await?
            .into_iter()
            .find(|j| j.name_any() != job_name && j.metadata.deletion_timestamp.is_none()))
    })
    .await?;
    let st = status(&ns, "prod").await?;
    assert_eq!(
        st["heads"]["production"],
        format!("production@sha1:{second}")
    );
    assert_eq!(st["lastLaunch"]["jobName"], new_job.name_any().as_str());
    Ok(())
}

#[tokio::test]
async fn a_suspended_codesource_launches_nothing() -> Result<()> {
    let repo = Repo::new()?;
    let scratch = temp_dir("cs-scratch")?;
    let ns = TestNamespace::new("cs-suspend").await?;
    let _controller = start_controller(ns.client(), ns.name(), &scratch.0);
    let mut s = spec(&repo.url(), "* * * * *");
    s["suspend"] = json!(true);
    harness::apply::apply(ns.client(), Some(ns.name()), codesource("held", s)).await?;
    eventually("Ready=False Suspended", || async {
        let st = status(&ns, "held").await?;
        Ok(condition(&st, "Ready")
            .filter(|c| c["reason"] == "Suspended")
            .map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker_jobs(&ns, "held").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_invalid_schedule_stalls_with_a_clear_message() -> Result<()> {
    let scratch = temp_dir("cs-scratch")?;
    let ns = TestNamespace::new("cs-invalid").await?;
    let _controller = start_controller(ns.client(), ns.name(), &scratch.0);
    harness::apply::apply(
        ns.client(),
        Some(ns.name()),
        codesource("bad", spec("file:///nonexistent", "61 * * * *")),
    )
    .await?;
    let stalled = eventually("Stalled", || async {
        let st = status(&ns, "bad").await?;
        Ok(condition(&st, "Stalled").cloned())
    })
    .await?;
    assert_eq!(stalled["status"], "True");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid cron expression"),
        "{stalled}"
    );
    assert!(worker_jobs(&ns, "bad").await?.is_empty());
    Ok(())
}
