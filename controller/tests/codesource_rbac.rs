//! The chart's RBAC is enough for the CodeSource controller: it runs with a token of
//! the chart's ServiceAccount (rules from `helm template`, nothing else) through a full
//! cycle: git Secret, head check, worker ServiceAccount/Role/RoleBinding (which the API
//! server only lets it create when it holds every right it grants), Job, pod
//! termination message, Config CRD shape, Config patch, status, Events.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use harness::{ControlPlane, TestNamespace};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use openvox_code_controller::codesource::{self, Settings};
use openvox_code_controller::metrics::Metrics;
use openvox_crds::CodeSource;
use openvox_crds::names::{WORKER_MANAGER, labels};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// `helm template` of the chart in single-namespace mode.
fn chart_objects(release: &str, namespace: &str) -> Result<Vec<Value>> {
    harness::tools::chart_template(
        release,
        namespace,
        &[&format!("watchNamespace={namespace}")],
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn the_charts_rbac_runs_a_full_codesource_cycle() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let ns = TestNamespace::new("cs-rbac").await?;
    let release = format!("cs{}", &ns.name()[ns.name().len().saturating_sub(6)..]).replace('-', "");

    // The chart's identity and rules, applied by the admin.
    for object in chart_objects(&release, ns.name())? {
        let kind = object["kind"].as_str().unwrap_or_default();
        if [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
        .contains(&kind)
        {
            let namespaced = !kind.starts_with("Cluster");
            harness::apply::apply(ns.client(), namespaced.then_some(ns.name()), object).await?;
        }
    }
    let sa = format!("{release}-openvox-code");
    let token = ns
        .api::<ServiceAccount>()
        .create_token_request(
            &sa,
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
        .context("empty token")?;
    let client = control_plane.token_client(&token).await?;

    // A repository, a git Secret, a Config, and a node that runs the worker as `exit 0`.
    let dir = std::env::temp_dir().join(format!("cs-rbac-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("work"))?;
    let bare = dir.join("control.git");
    git(
        &dir,
        &["init", "-q", "--bare", bare.to_str().unwrap_or_default()],
    )?;
    let work = dir.join("work");
    git(&work, &["init", "-q", "-b", "production"])?;
    std::fs::write(work.join("site.pp"), "node default {}\n")?;
    git(&work, &["add", "site.pp"])?;
    git(&work, &["commit", "-q", "-m", "one"])?;
    git(
        &work,
        &[
            "push",
            "-q",
            bare.to_str().unwrap_or_default(),
            "HEAD:refs/heads/production",
        ],
    )?;
    let _node = harness::NodeSim::for_namespace_with(&ns, |c| {
        c.with_image(
            "openvox-code-worker:test",
            &["/bin/sh", "-c", "exit 0", "worker"],
        )
    })
    .await?;
    for object in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git-auth"},
               "stringData": {"username": "nobody", "password": "unused-for-file-urls"}}),
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "Config", "metadata": {"name": "prod"},
               "spec": {"image": {"tag": "8"}, "code": {"image": "registry.example/puppet-code@sha256:0000"}}}),
        json!({"apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource", "metadata": {"name": "prod"},
               "spec": {"configRef": "prod", "schedule": "@hourly",
                        "git": {"url": format!("file://{}", bare.display()), "branches": ["production"],
                                "secretRef": {"name": "git-auth"}},
                        "output": {"image": "registry.example/puppet-code"}}}),
    ] {
        harness::apply::apply(ns.client(), Some(ns.name()), object).await?;
    }

    let (tx, rx) = oneshot::channel::<()>();
    let mut settings = Settings::new("openvox-code-worker:test");
    settings.namespace = Some(ns.name().to_string());
    settings.scratch_dir = dir.clone();
    let controller = tokio::spawn(codesource::run(
        client,
        settings,
        Metrics::new(),
        async move {
            let _ = rx.await;
        },
    ));

    let codesources: Api<CodeSource> = ns.api();
    let jobs: Api<Job> = ns.api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut reported = false;
    loop {
        let cs = codesources.get("prod").await?;
        let status = cs.status.clone().unwrap_or_default();
        let done = jobs
            .list(&ListParams::default().labels(&format!("{}=prod", labels::CODESOURCE)))
            .await?
            .items
            .iter()
            .any(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0);
        if done
            && !reported
            && let Some(launch) = &status.last_launch
        {
            // The worker's part, under its own field manager.
            codesources
                .patch_status("prod", &PatchParams::apply(WORKER_MANAGER).force(), &Patch::Apply(json!({
                    "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
                    "status": {"lastBuild": {"image": "registry.example/puppet-code@sha256:4444",
                                             "inputsHash": launch.inputs_hash, "jobName": launch.job_name}}})))
                .await?;
            reported = true;
        }
        let updated = status
            .conditions
            .iter()
            .any(|c| c.type_ == "ConfigUpdated" && c.status == "True");
        if updated {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no full cycle with the chart's rights (job done {done}, reported {reported}); status: {:?}",
                status.conditions
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let configs: Api<DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &kube::discovery::ApiResource::erase::<openvox_crds::operator::Config>(&()),
    );
    assert_eq!(
        configs.get("prod").await?.data["spec"]["code"]["image"],
        "registry.example/puppet-code@sha256:4444"
    );
    let _ = tx.send(());
    let _ = controller.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
