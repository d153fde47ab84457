//! The image part of the worker against a real registry (Debian's `docker-registry`,
//! distribution 2.8) on 127.0.0.1, checked with an independent OCI client (`skopeo`):
//! layout at the image root, reproducible digests, layer reuse, uploads counted in the
//! registry's access log, basic auth over TLS, a registry stopped mid-push, and the
//! OCI layout output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::fixtures::registry::{TestRegistry, skopeo};
use openvox_code_worker::environments::EnvironmentInputs;
use openvox_code_worker::image::builder::{
    ImageEnvironment, ImageError, ImageOptions, ImageRequest, LayerOrigin, Output, PublishedImage,
    Transfer, build_image, recorded_environments,
};
use openvox_code_worker::image::layout::Layout;
use openvox_code_worker::image::push::{Registry, RegistryOptions, Repository, RetryPolicy};
use openvox_code_worker::image::reuse::PreviousImage;
use openvox_code_worker::image::{annotations, auth::DockerConfig};
use openvox_code_worker::limits::Limits;
use openvox_code_worker::pins::Pins;
use openvox_code_worker::tree::{EnvironmentTree, LocalDir, LocalEntry, LocalKind};

/// An environment made of real files: `(path, content)`; `None` is a directory, a
/// leading `!` makes an executable.
fn environment(
    name: &str,
    commit: char,
    commit_time: i64,
    files: &[(&str, Option<&str>)],
) -> ImageEnvironment {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for (path, content) in files {
        let full = dir.path().join(path);
        let kind = match content {
            None => {
                std::fs::create_dir_all(&full).unwrap();
                LocalKind::Directory
            }
            Some(text) => {
                let (executable, body) = match text.strip_prefix('!') {
                    Some(body) => (true, body),
                    None => (false, *text),
                };
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, body).unwrap();
                LocalKind::File {
                    executable,
                    size: body.len() as u64,
                }
            }
        };
        entries.push(LocalEntry {
            path: path.to_string(),
            kind,
        });
    }
    let mut tree = EnvironmentTree::new(Limits::default());
    tree.add_local_tree("", &Arc::new(LocalDir::temporary(dir)), &entries, &[])
        .unwrap();
    tree.check().unwrap();
    ImageEnvironment {
        inputs: EnvironmentInputs {
            name: name.to_owned(),
            branch: name.to_owned(),
            follows: None,
            commit: commit.to_string().repeat(40),
            code_config: None,
            modules: Vec::new(),
        },
        tree,
        commit_time,
        pins: None,
    }
}

fn control_repo(name: &str, commit: char, site: &str) -> ImageEnvironment {
    environment(
        name,
        commit,
        1_700_000_000,
        &[
            ("environment.conf", Some("modulepath = site:modules\n")),
            ("manifests", None),
            ("manifests/site.pp", Some(site)),
            ("modules", None),
            ("modules/app", None),
            ("modules/app/files", None),
            ("modules/app/files/run.sh", Some("!#!/bin/sh\necho run\n")),
        ],
    )
}

fn options(work: &Path, tags: &[&str]) -> ImageOptions {
    ImageOptions {
        source: "https://git.example.com/puppet/control.git".into(),
        architecture: "amd64".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        codec: Default::default(),
        work_dir: work.to_owned(),
        build_jobs: 2,
        upload_jobs: 2,
    }
}

fn plain_options() -> RegistryOptions {
    RegistryOptions {
        insecure: true,
        retry: RetryPolicy {
            attempts: 2,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(200),
        },
        timeout: Some(Duration::from_secs(20)),
        ..RegistryOptions::default()
    }
}

async fn connect(registry: &TestRegistry, repo: &str, options: &RegistryOptions) -> Arc<Registry> {
    let repository = Repository::parse(&format!("{}/{repo}", registry.host())).unwrap();
    Arc::new(Registry::connect(&repository, options).await.unwrap())
}

async fn previous(registry: &Registry, reference: &str) -> PreviousImage {
    let parsed = oci_client::Reference::try_from(reference).unwrap();
    let (manifest, _, config) = registry.fetch_image_documents(&parsed).await.unwrap();
    let repository = format!("{}/{}", parsed.registry(), parsed.repository());
    PreviousImage::from_documents(reference, Some(repository), &manifest, &config).unwrap()
}

async fn push(
    output: &Arc<Registry>,
    environments: Vec<ImageEnvironment>,
    previous: Option<PreviousImage>,
    tags: &[&str],
) -> PublishedImage {
    let work = tempfile::tempdir().unwrap();
    let request = ImageRequest {
        environments,
        previous,
        ..Default::default()
    };
    build_image(
        request,
        &options(work.path(), tags),
        &Output::Registry(output.clone()),
    )
    .await
    .unwrap()
}

/// Entries of an OCI layout's layers, in layer order: `(path, mode, mtime, content)`.
fn layout_entries(dir: &Path) -> Vec<(String, u32, u64, String)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest)).unwrap()).unwrap();
    let mut out = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let file = std::fs::File::open(blob(layer["digest"].as_str().unwrap())).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().unwrap();
            let mtime = entry.header().mtime().unwrap();
            let mut body = String::new();
            if entry.header().entry_type().is_file() {
                entry.read_to_string(&mut body).unwrap();
            }
            out.push((path, mode, mtime, body));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_images_have_environments_at_the_root_and_skopeo_agrees() {
    let registry = TestRegistry::start(Default::default());
    let client = connect(&registry, "puppet/code", &plain_options()).await;
    let image = push(
        &client,
        vec![
            control_repo("staging", 'b', "node default { }\n"),
            control_repo("production", 'a', "node default {}\n"),
        ],
        None,
        &["latest"],
    )
    .await;
    assert_eq!(
        image.reference,
        format!("{}/puppet/code@{}", registry.host(), image.manifest_digest)
    );
    let names: Vec<&str> = image
        .layers
        .iter()
        .map(|l| l.environment.as_str())
        .collect();
    assert_eq!(
        names,
        ["production", "staging"],
        "layers in environment-name order"
    );
    assert!(
        image
            .layers
            .iter()
            .all(|l| l.origin == LayerOrigin::Built && matches!(l.transfer, Transfer::Sent(_)))
    );

    // The manifest skopeo reads is byte for byte ours, and so is the config.
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}", image.reference),
    ]);
    assert_eq!(
        openvox_code_worker::image::gzip::sha256_digest(raw.as_bytes()),
        image.manifest_digest
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["annotations"][annotations::CREATED],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(
        manifest["annotations"][annotations::SOURCE],
        "https://git.example.com/puppet/control.git"
    );
    assert_eq!(
        manifest["annotations"][annotations::REVISION],
        format!(
            "production@sha1:{},staging@sha1:{}",
            "a".repeat(40),
            "b".repeat(40)
        )
    );
    assert_eq!(
        manifest["layers"][1]["annotations"][annotations::ENVIRONMENT],
        "staging"
    );
    assert_eq!(
        manifest["layers"][0]["digest"],
        image.layers[0].digest.as_str()
    );
    let config: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        &format!("docker://{}", image.reference),
    ]))
    .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        config["config"]["Labels"][annotations::ENVIRONMENTS],
        "production,staging"
    );
    // The tag points at the same manifest.
    let tagged = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}/puppet/code:latest", registry.host()),
    ]);
    assert_eq!(tagged, raw);

    // Copied out by skopeo (which checks every digest), the files sit at the root.
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("copy");
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--src-tls-verify=false",
        &format!("docker://{}", image.reference),
        &format!("oci:{}:copy", layout.display()),
    ]);
    let entries = layout_entries(&layout);
    let find = |p: &str| {
        entries
            .iter()
            .find(|e| e.0 == p)
            .unwrap_or_else(|| panic!("{p} missing in {entries:?}"))
    };
    assert_eq!(find("production/manifests/site.pp").3, "node default {}\n");
    assert_eq!(find("staging/manifests/site.pp").3, "node default { }\n");
    assert_eq!(find("production/manifests/site.pp").1, 0o644);
    assert_eq!(find("production/modules/app/files/run.sh").1, 0o755);
    assert_eq!(find("production/").1, 0o755);
    assert!(
        entries.iter().all(|e| e.2 == 946_684_800),
        "every mtime is the fixed layer mtime (2000-01-01), not the commit time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_inputs_reuse_every_layer_and_upload_nothing() {
    let registry = TestRegistry::start(Default::default());
    let client = connect(&registry, "puppet/code", &plain_options()).await;
    let envs = || {
        vec![
            control_repo("production", 'a', "a\n"),
            control_repo("staging", 'b', "b\n"),
        ]
    };
    let first = push(&client, envs(), None, &["latest"]).await;
    let uploads_before = registry.blob_uploads("puppet/code").len();
    assert_eq!(uploads_before, 3, "two layers and the config");

    let chunks_before = registry.requests_matching("PATCH ").len();
    let previous = previous(&client, &format!("{}/puppet/code:latest", registry.host())).await;
    let second = push(&client, envs(), Some(previous), &["latest"]).await;
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert!(
        second
            .layers
            .iter()
            .all(|l| l.origin == LayerOrigin::Reused && l.transfer == Transfer::Present)
    );
    assert_eq!(second.sent_blobs, 0);
    assert_eq!(
        registry.blob_uploads("puppet/code").len(),
        uploads_before,
        "no blob sent the second time"
    );
    assert_eq!(
        registry.requests_matching("PATCH ").len(),
        chunks_before,
        "no chunk sent the second time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_environment_uploads_one_layer_plus_config_and_manifest() {
    let registry = TestRegistry::start(Default::default());
    let client = connect(&registry, "puppet/code", &plain_options()).await;
    let first = push(
        &client,
        vec![
            control_repo("production", 'a', "a\n"),
            control_repo("staging", 'b', "b\n"),
            control_repo("test", 'c', "c\n"),
        ],
        None,
        &["latest"],
    )
    .await;
    let blobs_before = registry.blob_uploads("puppet/code");
    let manifests_before = registry.manifest_puts("puppet/code").len();

    let previous = previous(&client, &first.reference).await;
    let mut changed = control_repo("staging", 'd', "changed\n");
    changed.commit_time = 1_700_000_100;
    let second = push(
        &client,
        vec![
            control_repo("production", 'a', "a\n"),
            changed,
            control_repo("test", 'c', "c\n"),
        ],
        Some(previous),
        &["latest"],
    )
    .await;
    let origins: Vec<(&str, LayerOrigin)> = second
        .layers
        .iter()
        .map(|l| (l.environment.as_str(), l.origin))
        .collect();
    assert_eq!(
        origins,
        [
            ("production", LayerOrigin::Reused),
            ("staging", LayerOrigin::Built),
            ("test", LayerOrigin::Reused)
        ]
    );
    let new_blobs: Vec<String> = registry
        .blob_uploads("puppet/code")
        .into_iter()
        .filter(|d| !blobs_before.contains(d))
        .collect();
    assert_eq!(
        new_blobs.len(),
        2,
        "one layer and the config: {new_blobs:?}"
    );
    assert!(new_blobs.contains(&second.layers[1].digest));
    // By digest, then the tag.
    assert_eq!(
        registry.manifest_puts("puppet/code").len() - manifests_before,
        2
    );
    assert_ne!(second.manifest_digest, first.manifest_digest);
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}", second.reference),
    ]);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["annotations"][annotations::CREATED],
        "2023-11-14T22:15:00Z",
        "newest commit time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_inputs_give_the_same_digest_anywhere_and_anytime() {
    // Two registries, two work directories, builds a second apart.
    let a = TestRegistry::start(Default::default());
    let b = TestRegistry::start(Default::default());
    let envs = || {
        vec![
            control_repo("production", 'a', "a\n"),
            control_repo("staging", 'b', "b\n"),
        ]
    };
    let first = push(
        &connect(&a, "one/code", &plain_options()).await,
        envs(),
        None,
        &[],
    )
    .await;
    std::thread::sleep(Duration::from_millis(1100));
    let second = push(
        &connect(&b, "two/code", &plain_options()).await,
        envs(),
        None,
        &[],
    )
    .await;
    assert_eq!(first.manifest_digest, second.manifest_digest);
    let digests = |i: &PublishedImage| {
        i.layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&first), digests(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_of_another_repository_are_mounted_not_sent() {
    let registry = TestRegistry::start(Default::default());
    let envs = || vec![control_repo("production", 'a', "a\n")];
    let old = push(
        &connect(&registry, "old/code", &plain_options()).await,
        envs(),
        None,
        &[],
    )
    .await;
    let client = connect(&registry, "new/code", &plain_options()).await;
    let previous = previous(&client, &old.reference).await;
    let image = push(&client, envs(), Some(previous), &[]).await;
    assert_eq!(image.layers[0].transfer, Transfer::Mounted);
    assert_eq!(image.manifest_digest, old.manifest_digest);
    assert!(
        registry.blob_uploads("new/code").len() <= 1,
        "only the config may be sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_tls_with_a_docker_config() {
    let registry = TestRegistry::start(harness::fixtures::registry::Settings {
        tls: true,
        basic_auth: Some(("pusher", "s3cret pass")),
    });
    let config = format!(
        r#"{{"auths": {{"https://{}": {{"auth": "{}"}}}}}}"#,
        registry.host(),
        base64_encode("pusher:s3cret pass")
    );
    let registry_options = RegistryOptions {
        insecure: false,
        ca_pem: Some(std::fs::read(registry.ca_path().unwrap()).unwrap()),
        docker_config: DockerConfig::parse(config.as_bytes()).unwrap(),
        ..plain_options()
    };
    let client = connect(&registry, "puppet/code", &registry_options).await;
    let image = push(
        &client,
        vec![control_repo("production", 'a', "a\n")],
        None,
        &["latest"],
    )
    .await;
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--creds",
        "pusher:s3cret pass",
        "--cert-dir",
        registry.cert_dir().unwrap().to_str().unwrap(),
        &format!("docker://{}", image.reference),
    ]);
    assert_eq!(
        openvox_code_worker::image::gzip::sha256_digest(raw.as_bytes()),
        image.manifest_digest
    );

    // Wrong password: a clear error naming the credentials, nothing published, and the
    // password never in the message.
    let bad = RegistryOptions {
        docker_config: DockerConfig::parse(
            format!(
                r#"{{"auths": {{"{}": {{"username": "pusher", "password": "wrong-pw"}}}}}}"#,
                registry.host()
            )
            .as_bytes(),
        )
        .unwrap(),
        ..registry_options.clone()
    };
    let client = connect(&registry, "other/code", &bad).await;
    let work = tempfile::tempdir().unwrap();
    let request = ImageRequest {
        environments: vec![control_repo("production", 'e', "e\n")],
        ..Default::default()
    };
    let err = build_image(
        request,
        &options(work.path(), &["latest"]),
        &Output::Registry(client),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("wrong-pw"), "{text}");
    assert!(registry.manifest_puts("other/code").is_empty());

    // No CA: TLS verification fails (the CA is really used).
    let no_ca = RegistryOptions {
        ca_pem: None,
        ..registry_options.clone()
    };
    let client = connect(&registry, "puppet/code", &no_ca).await;
    assert!(client.blob_exists(&image.layers[0].digest).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_stopped_mid_push_publishes_nothing() {
    let mut registry = TestRegistry::start(Default::default());
    let client = connect(&registry, "puppet/code", &plain_options()).await;
    // 48 MiB that do not compress: a dozen 4 MiB chunks to interrupt.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: String = (0..48 * 1024 * 1024 / 16)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{:016x}", state)
        })
        .collect();
    let env = environment(
        "production",
        'a',
        1_700_000_000,
        &[("files", None), ("files/noise.txt", Some(&noise))],
    );
    let work = tempfile::tempdir().unwrap();
    let request = ImageRequest {
        environments: vec![env],
        ..Default::default()
    };
    let opts = options(work.path(), &["latest"]);
    let task =
        tokio::spawn(async move { build_image(request, &opts, &Output::Registry(client)).await });
    // Stop the registry once the first chunk of the layer arrived.
    let started = std::time::Instant::now();
    while registry
        .requests_matching("PATCH /v2/puppet/code/blobs/uploads/")
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no upload started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.stop();
    let err = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("upload blob sha256:") && text.contains("gave up after 2 attempts"),
        "{text}"
    );

    registry.restart();
    assert!(registry.manifest_puts("puppet/code").is_empty());
    assert!(!registry.has_manifests("puppet/code"), "no manifest stored");
    let tags = registry.get("/v2/puppet/code/tags/list");
    assert!(!tags.contains("latest"), "{tags}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layouts_are_read_by_skopeo_and_reused_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("image");
    let layout = Arc::new(Layout::open(&root).unwrap());
    let work = tempfile::tempdir().unwrap();
    let envs = |staging: &str| {
        vec![
            control_repo("production", 'a', "a\n"),
            control_repo("staging", 'b', staging),
        ]
    };
    let request = ImageRequest {
        environments: envs("b\n"),
        ..Default::default()
    };
    let first = build_image(
        request,
        &options(work.path(), &["latest"]),
        &Output::Layout(layout.clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        first.reference,
        format!("oci:{}@{}", root.display(), first.manifest_digest)
    );
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci:{}:latest", root.display()),
    ]))
    .unwrap();
    assert_eq!(inspected["Digest"], first.manifest_digest.as_str());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
    let entries = layout_entries(&root);
    assert!(
        entries
            .iter()
            .any(|e| e.0 == "staging/manifests/site.pp" && e.3 == "b\n")
    );

    // Same inputs into the same layout: everything reused, same digest.
    let previous = layout.previous().unwrap();
    let request = ImageRequest {
        environments: envs("b\n"),
        previous,
        ..Default::default()
    };
    let second = build_image(
        request,
        &options(work.path(), &["latest"]),
        &Output::Layout(layout.clone()),
    )
    .await
    .unwrap();
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert!(
        second
            .layers
            .iter()
            .all(|l| l.origin == LayerOrigin::Reused)
    );

    // One change: one new layer; the replaced layer's blob is removed.
    let previous = layout.previous().unwrap();
    let mut changed = envs("changed\n");
    changed[1].inputs.commit = "c".repeat(40);
    let request = ImageRequest {
        environments: changed,
        previous,
        ..Default::default()
    };
    let third = build_image(
        request,
        &options(work.path(), &["latest"]),
        &Output::Layout(layout.clone()),
    )
    .await
    .unwrap();
    assert_eq!(third.layers[1].origin, LayerOrigin::Built);
    let blobs: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(blobs.len(), 4, "two layers, config, manifest: {blobs:?}");
    assert!(!blobs.contains(&first.layers[1].digest));
    skopeo(&["inspect", &format!("oci:{}:latest", root.display())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_environment_keeps_its_previous_layer() {
    let registry = TestRegistry::start(Default::default());
    let client = connect(&registry, "puppet/code", &plain_options()).await;
    let first = push(
        &client,
        vec![
            control_repo("production", 'a', "a\n"),
            control_repo("staging", 'b', "b\n"),
        ],
        None,
        &[],
    )
    .await;
    let previous = previous(&client, &first.reference).await;
    let work = tempfile::tempdir().unwrap();
    let request = ImageRequest {
        environments: vec![control_repo("production", 'c', "new\n")],
        unchanged: Vec::new(),
        failed: vec!["staging".into(), "gone_without_layer".into()],
        previous: Some(previous),
        previous_layers: None,
    };
    let image = build_image(
        request,
        &options(work.path(), &[]),
        &Output::Registry(client),
    )
    .await
    .unwrap();
    let layers: Vec<(&str, LayerOrigin)> = image
        .layers
        .iter()
        .map(|l| (l.environment.as_str(), l.origin))
        .collect();
    assert_eq!(
        layers,
        [
            ("production", LayerOrigin::Built),
            ("staging", LayerOrigin::Kept)
        ]
    );
    assert_eq!(image.layers[1].digest, first.layers[1].digest);
    assert_eq!(
        image.layers[1].revision,
        format!("staging@sha1:{}", "b".repeat(40))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_environments_take_their_layer_unbuilt_with_the_same_digest() {
    let registry = TestRegistry::start(Default::default());
    let client = connect(&registry, "puppet/code", &plain_options()).await;
    let with_pins = |mut env: ImageEnvironment| {
        env.pins = Pins::new(None, "https://forge.example", None, &[]);
        env
    };
    let first = push(
        &client,
        vec![
            with_pins(control_repo("production", 'a', "a\n")),
            with_pins(control_repo("staging", 'b', "b\n")),
            // Without pins (a module URL with credentials): always fetched.
            control_repo("test", 'c', "c\n"),
        ],
        None,
        &["latest"],
    )
    .await;
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}", first.reference),
    ]);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["layers"][0]["annotations"][annotations::PINS],
        r#"{"format":1,"modules":[]}"#
    );
    assert!(manifest["layers"][2]["annotations"][annotations::PINS].is_null());

    let output = Output::Registry(client.clone());
    let previous = previous(&client, &first.reference).await;
    let recorded = recorded_environments(&previous, &output, Default::default())
        .await
        .unwrap();
    assert_eq!(
        recorded.keys().collect::<Vec<_>>(),
        ["production", "staging"],
        "only layers with pins"
    );
    let uploads = registry.blob_uploads("puppet/code").len();
    let work = tempfile::tempdir().unwrap();
    let request = ImageRequest {
        environments: vec![control_repo("test", 'c', "c\n")],
        unchanged: recorded.values().cloned().collect(),
        previous: Some(previous),
        ..Default::default()
    };
    let second = build_image(request, &options(work.path(), &["latest"]), &output)
        .await
        .unwrap();
    assert_eq!(
        second.manifest_digest, first.manifest_digest,
        "a layer taken unfetched gives the digest a full build gives"
    );
    assert!(
        second
            .layers
            .iter()
            .all(|l| l.origin == LayerOrigin::Reused)
    );
    assert_eq!(
        second.layers[0].inputs, first.layers[0].inputs,
        "inputs (and so lastBuild) rebuilt from the annotations"
    );
    assert_eq!(registry.blob_uploads("puppet/code").len(), uploads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_environment_failing_publishes_nothing() {
    let registry = TestRegistry::start(Default::default());
    let client = connect(&registry, "puppet/code", &plain_options()).await;
    let first = push(
        &client,
        vec![
            control_repo("production", 'a', "a\n"),
            control_repo("staging", 'b', "b\n"),
        ],
        None,
        &["latest"],
    )
    .await;
    let manifests = registry.manifest_puts("puppet/code").len();
    let previous = previous(&client, &first.reference).await;
    let work = tempfile::tempdir().unwrap();
    let request = ImageRequest {
        failed: vec!["production".into(), "staging".into()],
        previous: Some(previous),
        ..Default::default()
    };
    let result = build_image(
        request,
        &options(work.path(), &["latest"]),
        &Output::Registry(client),
    )
    .await;
    assert!(
        matches!(result, Err(ImageError::NoEnvironments { .. })),
        "{result:?}"
    );
    assert_eq!(
        registry.manifest_puts("puppet/code").len(),
        manifests,
        "the kept layers alone are not published again"
    );
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn registry_credentials_are_not_in_debug_output() {
    let config =
        DockerConfig::parse(br#"{"auths": {"r": {"username": "u", "password": "topsecret"}}}"#)
            .unwrap();
    let options = RegistryOptions {
        docker_config: config,
        ..RegistryOptions::default()
    };
    assert!(!format!("{options:?}").contains("topsecret"));
}
