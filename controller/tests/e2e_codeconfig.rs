//! openvox-code's own format end to end: a CodeSource whose modules come from a
//! `CodeConfig` in a ConfigMap instead of a Puppetfile. Nothing is faked but the
//! kubelet: the controller binary lists the heads through the config's git mirror, the
//! worker binary (`sync`, claim output) reads the branches' ModuleFiles and lockfile
//! and fetches every module through the mirror, and builds a static environment from a
//! tag with a moduleset. The trees in the claim are compared with what openvox-code's
//! rules say.
//!
//! The control repository and the modules nominally live on a loopback port nothing
//! listens on; `overrides.gitmirrors` sends that host to the git daemon that serves
//! them, so a build that works proves every URL went through the mirror.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use harness::fixtures::{Bare, Scratch, eventually, file, git_daemon};
use harness::world::{Process, spawn_controller};
use harness::{NodeSim, TestNamespace};
use kube::api::{Api, Patch, PatchParams};
use openvox_crds::CodeSource;
use openvox_crds::names::annotations::CHECK_REQUESTED_AT;
use serde_json::json;

const WORKER_IMAGE: &str = "openvox-code-worker:local";
const NAME: &str = "production";
const CLAIM: &str = "puppet-code";

/// Every file below `dir` (symlinks followed once), by path relative to it.
fn files_below(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).with_context(|| at.display().to_string())? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir)?.display().to_string();
                out.insert(relative, std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// The files of environment `env` in the claim, once the worker has written it.
async fn environment(claim: &Path, env: &str) -> Result<BTreeMap<String, String>> {
    let link = claim.join(env);
    eventually(&format!("environment {env} in the claim"), || async {
        Ok(link.exists().then_some(()))
    })
    .await?;
    files_below(&link)
}

/// A module repository with one commit per `(branch, content)`, returning the commits.
fn module(repos: &Path, name: &str, commits: &[(&str, &str)]) -> Vec<String> {
    let bare = Bare::init(&repos.join(format!("modules/{name}.git")));
    commits
        .iter()
        .map(|(branch, content)| {
            bare.commit(
                branch,
                content,
                &[("manifests/init.pp", file(&format!("# {content}\n")))],
            )
        })
        .collect()
}

fn tag(repo: &Path, name: &str, commit: &str) {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["tag", name, commit])
        .status()
        .expect("git tag");
    assert!(status.success());
}

#[tokio::test]
async fn a_code_config_with_module_files_a_lockfile_and_a_mirror_deploys_what_its_rules_say()
-> Result<()> {
    let ns = TestNamespace::new("e2e-codeconfig").await?;
    let (controller, worker) =
        harness::world::binaries(env!("CARGO_BIN_EXE_openvox-code-controller"))?;
    let scratch = Scratch::new();
    let repos = scratch.mkdir("repos");
    let daemon = git_daemon(&repos, scratch.path("git-daemon.log"));
    // The host everything is named on: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let origin = format!("git://127.0.0.1:{closed}");

    // motd: main, and a branch named like the staging environment (follow_branch).
    module(
        &repos,
        "motd",
        &[("main", "motd main"), ("staging", "motd for staging")],
    );
    // base: v1, then main moves on; the lockfile pins production to v1's commit.
    let base = module(&repos, "base", &[("main", "base v1"), ("main", "base v2")]);
    tag(&repos.join("modules/base.git"), "v1", &base[0]);
    module(&repos, "extra", &[("main", "extra")]);

    let modules_yaml = format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: ModuleFile\nspec:\n  modules:\n    \
         - {{name: motd, git: '{origin}/modules/motd.git', ref: main, follow_branch: true}}\n    \
         - {{name: base, git: '{origin}/modules/base.git', ref: main}}\n    \
         - {{name: extra, git: '{origin}/modules/extra.git'}}\n"
    );
    let lock = format!(
        "version: 1\nenvironments:\n  production:\n    ref: production\n    \
         control_repo_url: '{origin}/control.git'\n    control_repo_sha: '{}'\n    modules:\n      \
         - {{name: base, git: '{origin}/modules/base.git', ref: main, sha: '{}'}}\n",
        "0".repeat(40),
        base[0]
    );
    // staging: a second module file overrides base (tag v1) and leaves extra out.
    let override_yaml = format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: ModuleFile\nspec:\n  modules:\n    - {{name: base, git: '{origin}/modules/base.git', ref: v1}}\n  exclude: [extra]\n"
    );
    let site = |branch: &str| file(&format!("node default {{ }} # {branch}\n"));
    let control = Bare::init(&repos.join("control.git"));
    let production_commit = control.commit(
        "production",
        "production",
        &[
            ("manifests/site.pp", site("production")),
            ("modules.yaml", file(&modules_yaml)),
            ("openvox-code.lock", file(&lock)),
        ],
    );
    control.commit(
        "staging",
        "staging",
        &[
            ("manifests/site.pp", site("staging")),
            ("modules.yaml", file(&modules_yaml)),
            ("modules.d/override.yaml", file(&override_yaml)),
        ],
    );
    // A static environment is built from this tag, with the moduleset `core`.
    tag(&repos.join("control.git"), "rel-1", &production_commit);
    // Not selected by the config's branchSelector.
    control.commit(
        "scratch",
        "scratch",
        &[("manifests/site.pp", site("scratch"))],
    );

    let code_config = format!(
        "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: CodeConfig\nspec:\n  sources:\n    \
         - url: '{origin}/control.git'\n      branchSelector:\n        matchPatterns: [production, 'stag*']\n      \
         modulefiles:\n        - {{name: modules.yaml, required: true}}\n        - {{name: 'modules.d/*.yaml', required: false}}\n  \
         overrides:\n    gitmirrors:\n      '127.0.0.1:{closed}': 'git://127.0.0.1:{}'\n  cachedir: /var/cache/openvox-code\n  \
         modulesets:\n    core:\n      - {{name: motd, git: '{origin}/modules/motd.git', ref: main, follow_branch: true}}\n      \
         - {{name: base, git: '{origin}/modules/base.git', ref: main}}\n  \
         environments:\n    release:\n      ref: rel-1\n      modulesets: [core]\n",
        daemon.port
    );

    let worker_path = worker.display().to_string();
    let node =
        NodeSim::for_namespace_with(&ns, |c| c.with_image(WORKER_IMAGE, &[&worker_path])).await?;
    let claim = node.work_dir().join("claims").join(ns.name()).join(CLAIM);
    let log = scratch.path("controller.log");
    let _controller = Process(spawn_controller(&controller, &ns, &log, None, false)?);
    let apply = |object| harness::apply::apply(ns.client(), Some(ns.name()), object);
    apply(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
                 "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}))
    .await?;
    apply(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "openvox-code"},
                 "data": {"openvox-code.yaml": code_config}}),
    )
    .await?;
    apply(json!({
        "apiVersion": "openvox.voxpupuli.org/v1alpha1", "kind": "CodeSource",
        "metadata": {"name": NAME},
        "spec": {
            "git": {"url": format!("{origin}/control.git"), "branches": ["*"]},
            "modules": {"codeConfig": {"configMapRef": {"name": "openvox-code"}}},
            "schedule": "@hourly",
            "output": {"claimName": CLAIM},
        },
    }))
    .await?;

    let codesources: Api<CodeSource> = ns.api();
    let build =
        eventually("the first build", || async {
            let status = codesources.get(NAME).await?.status.unwrap_or_default();
            if let Some(failed) = status.conditions.iter().find(|c| {
                c.status == "True" && (c.type_ == "BuildFailed" || c.type_ == "FetchFailed")
            }) {
                bail!(
                    "{}: {}\ncontroller log:\n{}",
                    failed.type_,
                    failed.message,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            Ok(status.last_build)
        })
        .await?;
    let built: Vec<&str> = build.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        built,
        ["production", "release", "staging"],
        "the branchSelector's branches and the static environment; failed: {:?}",
        build.failed
    );
    assert!(build.failed.is_empty(), "{:?}", build.failed);
    let heads = codesources
        .get(NAME)
        .await?
        .status
        .unwrap_or_default()
        .heads;
    assert_eq!(
        heads.get("static:release"),
        Some(&format!("rel-1@sha1:{production_commit}")),
        "{heads:?}"
    );

    let production = environment(&claim, "production").await?;
    let staging = environment(&claim, "staging").await?;
    let module_file = |files: &BTreeMap<String, String>, name: &str| {
        files
            .get(&format!("modules/{name}/manifests/init.pp"))
            .cloned()
    };
    // production: motd has no production branch (ref main), base from the lockfile (v1
    // although main moved on), extra at HEAD.
    assert_eq!(
        module_file(&production, "motd").as_deref(),
        Some("# motd main\n")
    );
    assert_eq!(
        module_file(&production, "base").as_deref(),
        Some("# base v1\n")
    );
    assert_eq!(
        module_file(&production, "extra").as_deref(),
        Some("# extra\n")
    );
    // staging: motd follows the branch, base overridden to the tag, extra excluded.
    assert_eq!(
        module_file(&staging, "motd").as_deref(),
        Some("# motd for staging\n")
    );
    assert_eq!(
        module_file(&staging, "base").as_deref(),
        Some("# base v1\n")
    );
    assert_eq!(module_file(&staging, "extra"), None, "{staging:?}");
    assert!(!claim.join("scratch").exists());
    // And nothing else: the control tree and those modules, file for file.
    let paths = |files: &BTreeMap<String, String>| files.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        paths(&production),
        [
            "manifests/site.pp",
            "modules.yaml",
            "modules/base/manifests/init.pp",
            "modules/extra/manifests/init.pp",
            "modules/motd/manifests/init.pp",
            "openvox-code.lock",
        ]
    );
    assert_eq!(
        production["manifests/site.pp"],
        "node default { } # production\n"
    );
    assert_eq!(
        paths(&staging),
        [
            "manifests/site.pp",
            "modules.d/override.yaml",
            "modules.yaml",
            "modules/base/manifests/init.pp",
            "modules/motd/manifests/init.pp",
        ]
    );
    // release: production's tree at the tag and the moduleset alone (a tag's module
    // files are not read); motd has no `release` branch to follow, and production's
    // lockfile has no entry for `release`, so base is at main's tip.
    let release = environment(&claim, "release").await?;
    let expected: BTreeMap<String, String> = [
        ("manifests/site.pp", "node default { } # production\n"),
        ("modules.yaml", modules_yaml.as_str()),
        ("openvox-code.lock", lock.as_str()),
        ("modules/motd/manifests/init.pp", "# motd main\n"),
        ("modules/base/manifests/init.pp", "# base v2\n"),
    ]
    .into_iter()
    .map(|(path, content)| (path.to_owned(), content.to_owned()))
    .collect();
    assert_eq!(release, expected);

    // A broken module file fails only its environment, naming file and line.
    control.commit(
        "staging",
        "broken",
        &[
            ("manifests/site.pp", site("staging")),
            ("modules.yaml", file(&modules_yaml)),
            (
                "modules.d/override.yaml",
                file(
                    "apiVersion: openvox.voxpupuli.org/v1alpha1\nkind: ModuleFile\nspec:\n  modules:\n    - {name: base, gti: x}\n",
                ),
            ),
        ],
    );
    codesources
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {CHECK_REQUESTED_AT: "1"}}})),
        )
        .await?;
    let partial = eventually("the partial build", || async {
        let status = codesources.get(NAME).await?.status.unwrap_or_default();
        Ok(status
            .last_build
            // The claim's digest stays: nothing in it changed.
            .filter(|b| !b.failed.is_empty()))
    })
    .await?;
    let failed: Vec<(&str, &str)> = partial
        .failed
        .iter()
        .map(|f| (f.branch.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "staging");
    assert!(
        failed[0].1.contains("modules.d/override.yaml:5") && failed[0].1.contains("gti"),
        "{failed:?}"
    );
    // staging keeps what it had; production and release are untouched.
    assert_eq!(environment(&claim, "staging").await?, staging);
    assert_eq!(environment(&claim, "production").await?, production);
    assert_eq!(environment(&claim, "release").await?, release);
    Ok(())
}
