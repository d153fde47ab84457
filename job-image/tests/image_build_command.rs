//! `openvox-code-worker build` end to end: a control repository made with git, served
//! by `git daemon` (and `file://`), built into an image pushed to a real registry on 127.0.0.1 (or an OCI
//! layout), checked with skopeo; the second run of unchanged branches sends nothing,
//! and a commit on one branch sends one layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use harness::fixtures::registry::{TestRegistry, skopeo};

fn git(repo: &Path, args: &[&str], date: &str) {
    let output = Command::new("git")
        .current_dir(repo)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .expect("git is installed (Debian package git)");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A control repository with branches `production` and `staging`.
fn control_repository(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("control");
    std::fs::create_dir_all(repo.join("manifests")).unwrap();
    git(
        &repo,
        &["init", "-q", "-b", "production"],
        "2024-01-01T00:00:00Z",
    );
    std::fs::write(repo.join("environment.conf"), "modulepath = site:modules\n").unwrap();
    std::fs::write(repo.join("manifests/site.pp"), "node default {}\n").unwrap();
    std::fs::create_dir_all(repo.join("site/role/manifests")).unwrap();
    std::fs::write(repo.join("site/role/manifests/init.pp"), "class role {}\n").unwrap();
    git(&repo, &["add", "-A"], "2024-01-01T00:00:00Z");
    git(
        &repo,
        &["commit", "-q", "-m", "production"],
        "2024-01-01T00:00:00Z",
    );
    git(
        &repo,
        &["checkout", "-q", "-b", "staging"],
        "2024-01-01T00:00:00Z",
    );
    // Not directly on production's tip: the fetch's shallow check takes a wanted tip
    // that is another wanted tip's parent for history beyond depth 1 (reported).
    std::fs::write(repo.join("README.md"), "staging\n").unwrap();
    git(&repo, &["add", "-A"], "2024-01-01T12:00:00Z");
    git(
        &repo,
        &["commit", "-q", "-m", "readme"],
        "2024-01-01T12:00:00Z",
    );
    std::fs::write(
        repo.join("manifests/site.pp"),
        "node default { include role }\n",
    )
    .unwrap();
    git(
        &repo,
        &["commit", "-q", "-am", "staging"],
        "2024-01-02T00:00:00Z",
    );
    repo
}

/// `git daemon` serving `base` on a free port of 127.0.0.1 (protocol v2, so fetches
/// are really shallow), stopped when dropped.
struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // `git daemon` runs git-daemon as a child that would outlive a kill of `git`;
        // start git-daemon itself so the test stops what it started.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git is installed (Debian package git)");
        let daemon =
            Path::new(String::from_utf8(exec_path.stdout).unwrap().trim()).join("git-daemon");
        let child = Command::new(daemon)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git-daemon starts");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "git daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn worker(args: &[&str], work: &Path) -> (bool, String, String) {
    worker_with_docker_config(args, work, None)
}

/// Runs the worker with `DOCKER_CONFIG` set to `docker_config` (or unset), as the
/// controller's Job mounts the push Secret.
fn worker_with_docker_config(
    args: &[&str],
    work: &Path,
    docker_config: Option<&Path>,
) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_openvox-code-worker"));
    command
        .args(args)
        .arg("--work-dir")
        .arg(work)
        .arg("--termination-log")
        .arg(work.join("termination-log"))
        .env_remove("DOCKER_CONFIG");
    if let Some(dir) = docker_config {
        command.env("DOCKER_CONFIG", dir);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn build_pushes_a_pinned_image_and_the_second_run_sends_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = control_repository(scratch.path());
    let daemon = GitDaemon::start(scratch.path());
    let url = daemon.url("control");
    let registry = TestRegistry::start(Default::default());
    let image = format!("{}/puppet/code", registry.host());
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let args = [
        "build",
        "--url",
        &url,
        "--branch",
        "*",
        "--image",
        &image,
        "--tag",
        "latest",
        "--insecure",
    ];

    let (ok, stdout, stderr) = worker(&args, &work);
    assert!(ok, "{stderr}");
    let reference = stdout.lines().last().unwrap().to_owned();
    assert!(
        reference.starts_with(&format!("{image}@sha256:")),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("termination-log")).unwrap(),
        reference
    );
    assert!(
        stderr.contains("layer    production"),
        "progress lines: {stderr}"
    );
    // The first build of the repository says so plainly; nothing failed.
    assert!(
        stderr.contains("none yet (first build to this repository)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("FAILED") && !stderr.contains("WARN"),
        "{stderr}"
    );
    let manifest: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]))
    .unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.created"],
        "2024-01-02T00:00:00Z"
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.source"],
        url.as_str()
    );
    let uploads = registry.blob_uploads("puppet/code").len();
    assert_eq!(uploads, 3);

    // Unchanged branches: the previous image (the tag) gives every layer; nothing sent.
    let (ok, stdout, stderr) = worker(&args, &work);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.lines().last().unwrap(),
        reference,
        "same inputs, same digest"
    );
    assert_eq!(
        registry.blob_uploads("puppet/code").len(),
        uploads,
        "{stderr}"
    );
    assert!(stderr.contains("2 of 2 layers reused"), "{stderr}");

    // A commit on staging: one layer and the config.
    git(
        &repo,
        &["checkout", "-q", "staging"],
        "2024-01-03T00:00:00Z",
    );
    std::fs::write(
        repo.join("manifests/site.pp"),
        "node default { include role::web }\n",
    )
    .unwrap();
    git(
        &repo,
        &["commit", "-q", "-am", "web"],
        "2024-01-03T00:00:00Z",
    );
    let (ok, stdout, stderr) = worker(&args, &work);
    assert!(ok, "{stderr}");
    assert_ne!(stdout.lines().last().unwrap(), reference);
    assert_eq!(
        registry.blob_uploads("puppet/code").len(),
        uploads + 2,
        "{stderr}"
    );

    // Copied out, the environments sit at the root with the commit time.
    let copy = scratch.path().join("copy");
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--src-tls-verify=false",
        &format!("docker://{image}:latest"),
        &format!("oci:{}:x", copy.display()),
    ]);
    let staging_layer = {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_owned();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(copy.join("blobs/sha256").join(manifest_digest)).unwrap(),
        )
        .unwrap();
        manifest["layers"][1]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_owned()
    };
    let output = Command::new("tar")
        .env("TZ", "UTC")
        .arg("-tvzf")
        .arg(copy.join("blobs/sha256").join(staging_layer))
        .output()
        .unwrap();
    let listing = String::from_utf8(output.stdout).unwrap();
    assert!(listing.contains("staging/manifests/site.pp"), "{listing}");
    assert!(
        listing.contains("2000-01-01 00:00") && !listing.contains("2024-01-03"),
        "every mtime is the fixed layer mtime, not the commit time: {listing}"
    );
    assert!(listing.contains("0/0"), "owner 0:0: {listing}");
}

#[test]
fn build_pushes_over_tls_with_the_mounted_docker_config() {
    use base64::Engine as _;
    let scratch = tempfile::tempdir().unwrap();
    let repo = control_repository(scratch.path());
    let url = format!("file://{}", repo.display());
    let registry = TestRegistry::start(harness::fixtures::registry::Settings {
        tls: true,
        basic_auth: Some(("pusher", "planted-Pa55word")),
    });
    let secret = scratch.path().join("registry-secret");
    std::fs::create_dir_all(&secret).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("pusher:planted-Pa55word");
    std::fs::write(
        secret.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let image = format!("{}/puppet/code", registry.host());
    let ca = registry.ca_path().unwrap().display().to_string();
    let args = [
        "build",
        "--url",
        &url,
        "--branch",
        "production",
        "--image",
        &image,
        "--registry-ca",
        &ca,
    ];
    let (ok, stdout, stderr) = worker_with_docker_config(&args, &work, Some(&secret));
    assert!(ok, "{stderr}");
    let reference = stdout.lines().last().unwrap();
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains("planted-Pa55word") && !text.contains(&auth),
            "credentials leaked: {text}"
        );
    }
    skopeo(&[
        "inspect",
        "--raw",
        "--creds",
        "pusher:planted-Pa55word",
        "--cert-dir",
        registry.cert_dir().unwrap().to_str().unwrap(),
        &format!("docker://{reference}"),
    ]);

    // Without the CA the registry's certificate is refused; the message says where.
    let (ok, _, stderr) = worker_with_docker_config(&args[..7], &work, Some(&secret));
    assert!(!ok);
    assert!(
        stderr.contains(&registry.host()) && stderr.contains("certificate"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("try 2 of"),
        "a refused certificate is not retried: {stderr}"
    );
}

#[test]
fn build_writes_an_oci_layout_without_a_registry() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = control_repository(scratch.path());
    let url = format!("file://{}", repo.display());
    let layout = scratch.path().join("layout");
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let layout_arg = layout.display().to_string();
    let args = [
        "build",
        "--url",
        &url,
        "--branch",
        "production",
        "--oci-layout",
        &layout_arg,
        "--tag",
        "v1",
    ];
    let (ok, stdout, stderr) = worker(&args, &work);
    assert!(ok, "{stderr}");
    let reference = stdout.lines().last().unwrap();
    assert!(
        reference.starts_with(&format!("oci:{}@sha256:", layout.display())),
        "{stdout}"
    );
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci:{}:v1", layout.display()),
    ]))
    .unwrap();
    assert!(reference.ends_with(inspected["Digest"].as_str().unwrap()));
}

#[test]
fn unusable_arguments_fail_with_the_permanent_exit_code() {
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_openvox-code-worker"))
        .args([
            "build",
            "--url",
            "file:///nonexistent",
            "--branch",
            "x",
            "--image",
            "r.example/code:tag",
        ])
        .arg("--termination-log")
        .arg(scratch.path().join("termination-log"))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(openvox_crds::names::WORKER_PERMANENT_FAILURE_EXIT_CODE)
    );
    let message = std::fs::read_to_string(scratch.path().join("termination-log")).unwrap();
    assert!(message.contains("without tag"), "{message}");
}

/// A control repository and module repositories served by `git daemon`, and a registry.
struct Served {
    scratch: harness::fixtures::Scratch,
    _daemon: harness::fixtures::Server,
    port: u16,
    registry: TestRegistry,
    control: harness::fixtures::Bare,
    work: std::path::PathBuf,
}

impl Served {
    fn new() -> Self {
        let scratch = harness::fixtures::Scratch::new();
        let repos = scratch.mkdir("repos");
        let control = harness::fixtures::Bare::init(&repos.join("control.git"));
        let daemon = harness::fixtures::git_daemon(&repos, scratch.path("git-daemon.log"));
        let port = daemon.port;
        let work = scratch.mkdir("work");
        Self {
            scratch,
            _daemon: daemon,
            port,
            registry: TestRegistry::start(Default::default()),
            control,
            work,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    fn repo(&self, name: &str) -> harness::fixtures::Bare {
        harness::fixtures::Bare::init(&self.scratch.dir.path().join("repos").join(name))
    }

    fn image(&self) -> String {
        format!("{}/puppet/code", self.registry.host())
    }

    /// `build` of every branch with `extra` arguments: (success, stdout, stderr).
    fn build(&self, extra: &[&str]) -> (bool, String, String) {
        let url = self.url("control.git");
        let image = self.image();
        let mut args = vec![
            "build",
            "--url",
            &url,
            "--branch",
            "*",
            "--image",
            &image,
            "--tag",
            "latest",
            "--insecure",
            "--timeout",
            "30s",
        ];
        args.extend_from_slice(extra);
        worker(&args, &self.work)
    }

    fn termination_message(&self) -> String {
        std::fs::read_to_string(self.work.join("termination-log")).unwrap()
    }
}

fn control_branch(served: &Served, branch: &str, puppetfile: &str) {
    use harness::fixtures::file;
    served.control.commit(
        branch,
        branch,
        &[
            ("Puppetfile", file(puppetfile)),
            ("manifests/site.pp", file(&format!("# {branch}\n"))),
        ],
    );
}

#[test]
fn unchanged_branches_are_not_fetched_and_moved_modules_are_rebuilt() {
    use harness::fixtures::{file, git, run};
    let served = Served::new();
    let branchy = served.repo("branchy.git");
    branchy.commit(
        "main",
        "one",
        &[("manifests/init.pp", file("class branchy {}\n"))],
    );
    let tagged = served.repo("tagged.git");
    tagged.commit(
        "main",
        "one",
        &[("manifests/init.pp", file("class tagged {}\n"))],
    );
    tagged.tag("v1", "main");
    let pinned = served.repo("pinned.git");
    let pinned_commit = pinned.commit(
        "main",
        "one",
        &[("manifests/init.pp", file("class pinned {}\n"))],
    );
    control_branch(
        &served,
        "production",
        &format!(
            "mod 'branchy', :git => '{}', :branch => 'main'\nmod 'pinned', :git => '{}', :commit => '{pinned_commit}'\n",
            served.url("branchy.git"),
            served.url("pinned.git")
        ),
    );
    control_branch(
        &served,
        "staging",
        &format!(
            "mod 'tagged', :git => '{}', :tag => 'v1'\n",
            served.url("tagged.git")
        ),
    );
    control_branch(&served, "plain", "");

    let (ok, stdout, stderr) = served.build(&[]);
    assert!(ok, "{stderr}");
    let first = stdout.lines().last().unwrap().to_owned();
    let uploads = served.registry.blob_uploads("puppet/code").len();
    assert_eq!(uploads, 4, "three layers and the config: {stderr}");

    // Nothing changed: no branch is fetched, no module either, and the digest is the
    // one a full build gave.
    let (ok, stdout, stderr) = served.build(&[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().last().unwrap(), first, "{stderr}");
    for env in ["production", "staging", "plain"] {
        assert!(
            stderr.contains(&format!("check    {env}: unchanged at")),
            "{env}: {stderr}"
        );
    }
    assert!(
        !stderr.contains("fetch    "),
        "a branch was fetched: {stderr}"
    );
    assert!(
        !stderr.contains("module   "),
        "a module was fetched: {stderr}"
    );
    assert!(
        stderr.contains("3 of 3 layers reused (3 without fetching)"),
        "{stderr}"
    );
    assert_eq!(served.registry.blob_uploads("puppet/code").len(), uploads);

    // The branch a module follows moves: that environment is fetched and rebuilt.
    branchy.commit(
        "main",
        "two",
        &[(
            "manifests/init.pp",
            file("class branchy { notify { 'two': } }\n"),
        )],
    );
    let (ok, stdout, stderr) = served.build(&[]);
    assert!(ok, "{stderr}");
    let second = stdout.lines().last().unwrap().to_owned();
    assert_ne!(second, first);
    assert!(
        stderr.contains("check    production: module branchy moved; fetching"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check    staging: unchanged at"),
        "{stderr}"
    );
    assert!(stderr.contains("layer    production"), "{stderr}");
    assert!(!stderr.contains("layer    staging"), "{stderr}");
    assert_eq!(
        served.registry.blob_uploads("puppet/code").len(),
        uploads + 2,
        "one layer and the config: {stderr}"
    );

    // A tag moved to another commit counts as a change too.
    tagged.commit(
        "main",
        "two",
        &[(
            "manifests/init.pp",
            file("class tagged { notify { 'two': } }\n"),
        )],
    );
    run(git(&tagged.path).args(["tag", "-f", "-a", "v1", "-m", "v1", "refs/heads/main"]));
    let (ok, stdout, stderr) = served.build(&[]);
    assert!(ok, "{stderr}");
    assert_ne!(stdout.lines().last().unwrap(), second);
    assert!(
        stderr.contains("check    staging: module tagged moved; fetching"),
        "{stderr}"
    );
    assert!(stderr.contains("layer    staging"), "{stderr}");

    // A new commit on the control branch is fetched, the others are not.
    control_branch(&served, "plain", "# changed\n");
    let (ok, _, stderr) = served.build(&[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("check    plain: new commit"), "{stderr}");
    assert!(
        stderr.contains("fetch    ") && stderr.contains(": 1 ref, "),
        "{stderr}"
    );
}

#[test]
fn partial_builds_publish_the_good_environments_and_exit_zero() {
    let served = Served::new();
    control_branch(&served, "production", "");
    control_branch(&served, "staging", "");
    let (ok, stdout, stderr) = served.build(&[]);
    assert!(ok, "{stderr}");
    let first = stdout.lines().last().unwrap().to_owned();

    // staging breaks: production advances, staging keeps its layer, the build succeeds
    // with the reference last on stdout and a partial termination message.
    control_branch(&served, "production", "# new\n");
    control_branch(
        &served,
        "staging",
        "mod 'x', :svn => 'https://svn.example/x'\n",
    );
    let manifests = served.registry.manifest_puts("puppet/code").len();
    let (ok, stdout, stderr) = served.build(&["--log-format", "json"]);
    assert!(ok, "a partial build exits 0: {stderr}");
    let reference = stdout.lines().last().unwrap().to_owned();
    assert!(
        reference.starts_with(&format!("{}@sha256:", served.image())),
        "{stdout}"
    );
    assert_ne!(reference, first);
    let message = served.termination_message();
    assert!(
        message.starts_with(&format!(
            "partial: {reference}; 1 of 2 environments failed: staging: "
        )),
        "{message}"
    );
    assert_eq!(
        served.registry.manifest_puts("puppet/code").len(),
        manifests + 2,
        "published by digest and tag"
    );
    let manifest: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]))
    .unwrap();
    let revisions = manifest["annotations"]["org.opencontainers.image.revision"]
        .as_str()
        .unwrap()
        .to_owned();
    let staging_before = served.control.head("staging").unwrap();
    assert!(!revisions.contains(&staging_before), "{revisions}");
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        2,
        "staging kept"
    );
    // --log-format json: every line on standard error is one JSON object.
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            value["level"].is_string() && value["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        stderr.contains("\"message\":\"layer    production"),
        "{stderr}"
    );

    // Every environment fails: nothing is published, the exit code says so.
    control_branch(
        &served,
        "production",
        "mod 'y', :svn => 'https://svn.example/y'\n",
    );
    let manifests = served.registry.manifest_puts("puppet/code").len();
    let (ok, stdout, stderr) = served.build(&[]);
    assert!(!ok, "{stdout}");
    assert_eq!(
        served.registry.manifest_puts("puppet/code").len(),
        manifests
    );
    assert!(
        served
            .termination_message()
            .starts_with("every environment failed: "),
        "{}",
        served.termination_message()
    );
    assert!(
        stderr.lines().last().unwrap().starts_with("error: "),
        "{stderr}"
    );
}

#[test]
fn the_log_format_comes_from_the_environment_too() {
    let served = Served::new();
    control_branch(&served, "production", "");
    let url = served.url("control.git");
    let layout = served.scratch.path("layout");
    let output = Command::new(env!("CARGO_BIN_EXE_openvox-code-worker"))
        .args([
            "build",
            "--url",
            &url,
            "--branch",
            "production",
            "--oci-layout",
        ])
        .arg(&layout)
        .arg("--work-dir")
        .arg(&served.work)
        .env("OPENVOX_CODE_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stdout.lines().last().unwrap().starts_with("oci:"),
        "{stdout}"
    );
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
    // Text (the default) is not JSON.
    let (ok, _, stderr) = worker(
        &[
            "build",
            "--url",
            &url,
            "--branch",
            "production",
            "--oci-layout",
            layout.to_str().unwrap(),
        ],
        &served.work,
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("publish  sha256:")),
        "{stderr}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(stderr.lines().next().unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_build_records_its_failures_in_the_codesource_status() {
    use harness::TestNamespace;
    use harness::apply::apply_readme_example;
    let ns = TestNamespace::new("worker-partial").await.unwrap();
    let name = apply_readme_example(ns.client(), ns.name(), "CodeSource")
        .await
        .unwrap();

    let served = Served::new();
    control_branch(&served, "production", "");
    control_branch(
        &served,
        "staging",
        "mod 'x', :svn => 'https://svn.example/x'\n",
    );
    let url = served.url("control.git");
    let target = format!("{}/{name}", ns.name());
    let output = Command::new(env!("CARGO_BIN_EXE_openvox-code-worker"))
        .args(["build", "--url", &url, "--branch", "*", "--image"])
        .arg(served.image())
        .args(["--insecure", "--codesource", &target, "--job-name", "job-1"])
        .arg("--work-dir")
        .arg(&served.work)
        .arg("--termination-log")
        .arg(served.work.join("termination-log"))
        .env("KUBECONFIG", ns.control_plane().kubeconfig())
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let reference = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    let object = ns
        .api::<openvox_crds::CodeSource>()
        .get(&name)
        .await
        .unwrap();
    let record = object.status.and_then(|s| s.last_build).unwrap();
    assert_eq!(record.image, reference);
    assert_eq!(record.job_name.as_deref(), Some("job-1"));
    assert_eq!(
        record
            .environments
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["production"]
    );
    assert_eq!(record.failed.len(), 1, "{:?}", record.failed);
    assert_eq!(record.failed[0].branch, "staging");
    assert_eq!(record.failed[0].name.as_deref(), Some("staging"));
    assert!(
        record.failed[0].reason.contains("Puppetfile"),
        "{}",
        record.failed[0].reason
    );
    assert!(
        served.termination_message().starts_with(&format!(
            "partial: {reference}; 1 of 2 environments failed: staging"
        )),
        "{}",
        served.termination_message()
    );
}
