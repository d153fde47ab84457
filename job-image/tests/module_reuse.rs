//! What the previous image gives an incremental build: git modules taken from its layer
//! instead of fetched, and the compressed chunks of its layer that did not change. A
//! build that reuses them publishes the digest a cold build of the same inputs does; a
//! module whose commit moved is fetched, a chunk that changed is compressed; a previous
//! layer that is corrupt or gone is not used, and says so. Modules are served by `git
//! daemon`, images go to OCI layouts and to a real registry on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::world::World;
use common::{Run, worker};
use harness::fixtures::registry::TestRegistry;
use harness::fixtures::*;

/// Three git modules, by tag, by branch and by commit, and a control branch naming them.
fn setup(world: &World) -> Bare {
    let stdlib = world.repo("stdlib.git");
    stdlib.commit(
        "main",
        "stdlib",
        &[
            ("manifests/init.pp", file("class stdlib {}\n")),
            (
                "lib/facter/x.rb",
                file("Facter.add(:x) { setcode { 1 } }\n"),
            ),
            ("spec/init_spec.rb", file("spec\n")),
            ("bin/tool", Node::Exec(b"#!/bin/sh\necho tool\n".to_vec())),
        ],
    );
    stdlib.tag("v1", "main");
    let apache = world.repo("apache.git");
    apache.commit(
        "main",
        "apache",
        &[
            ("manifests/init.pp", file("class apache {}\n")),
            ("templates/vhost.erb", file("<VirtualHost>\n")),
            ("files/link", Node::Link("../templates/vhost.erb".into())),
        ],
    );
    let ntp = world.repo("ntp.git");
    let pinned = ntp.commit(
        "main",
        "ntp",
        &[("manifests/init.pp", file("class ntp {}\n"))],
    );
    let puppetfile = format!(
        "mod 'stdlib', :git => '{}', :tag => 'v1'\n\
         mod 'apache', :git => '{}', :branch => 'main'\n\
         mod 'ntp', :git => '{}', :commit => '{pinned}'\n",
        world.git_url("stdlib.git"),
        world.git_url("apache.git"),
        world.git_url("ntp.git"),
    );
    control_commit(world, "first", &puppetfile);
    apache
}

/// A commit on the control branch `production` with this Puppetfile.
fn control_commit(world: &World, site: &str, puppetfile: &str) {
    world.control.commit(
        "production",
        site,
        &[
            (
                "manifests/site.pp",
                file(&format!("node default {{}} # {site}\n")),
            ),
            ("Puppetfile", file(puppetfile)),
        ],
    );
}

/// The current Puppetfile of `production`, read back from the bare repository.
fn puppetfile(world: &World) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&world.control.path)
        .args(["show", "production:Puppetfile"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn build_into(world: &World, layout: &Path) -> Run {
    build_branches(world, layout, "production")
}

fn build_branches(world: &World, layout: &Path, branches: &str) -> Run {
    build_with(world, layout, branches, &[])
}

fn build_with(world: &World, layout: &Path, branches: &str, extra: &[&str]) -> Run {
    let url = world.git_url("control.git");
    let mut args = vec![
        "build",
        "--url",
        &url,
        "--branch",
        branches,
        "--oci-layout",
        layout.to_str().unwrap(),
        "--timeout",
        "30s",
    ];
    args.extend_from_slice(extra);
    let run = worker(&args, &world.tmp);
    run.assert_ok();
    run
}

/// The image digest a build printed (its last line ends with `@sha256:…`).
fn digest(run: &Run) -> String {
    let line = run.stdout.lines().last().unwrap();
    line.rsplit_once('@').map_or(line, |(_, d)| d).to_owned()
}

/// The module fetch lines of a build's log (`module   <url> <ref>: … received`).
fn fetched(run: &Run) -> Vec<String> {
    run.stderr
        .lines()
        .filter(|l| l.contains("module   ") && l.contains("received"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn reused_modules_give_the_digest_of_a_cold_build_and_moved_ones_are_fetched() {
    let world = World::new();
    let apache = setup(&world);
    let layout = world.scratch.path("incremental");
    let first = build_into(&world, &layout);
    assert_eq!(fetched(&first).len(), 3, "{}", first.stderr);

    // The control branch moves, no module does: nothing is fetched but the branch.
    control_commit(&world, "second", &puppetfile(&world));
    let second = build_into(&world, &layout);
    assert!(fetched(&second).is_empty(), "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("reuse    layer of production: 3 modules, 6 files"),
        "{}",
        second.stderr
    );
    let cold = build_into(&world, &world.scratch.path("cold-2"));
    assert_eq!(fetched(&cold).len(), 3, "{}", cold.stderr);
    assert_eq!(digest(&second), digest(&cold), "reuse changes nothing");
    assert_ne!(digest(&second), digest(&first));

    // apache's branch moves: apache alone is fetched, the others are reused.
    apache.commit(
        "main",
        "apache 2",
        &[("manifests/init.pp", file("class apache { # 2\n}\n"))],
    );
    let third = build_into(&world, &layout);
    let lines = fetched(&third);
    assert_eq!(lines.len(), 1, "{}", third.stderr);
    assert!(lines[0].contains("apache.git refs/heads/main"), "{lines:?}");
    let cold = build_into(&world, &world.scratch.path("cold-3"));
    assert_eq!(digest(&third), digest(&cold));
}

#[test]
fn an_environment_takes_its_modules_from_its_own_previous_layer() {
    let world = World::new();
    setup(&world);
    let same = puppetfile(&world);
    world.control.commit(
        "staging",
        "staging",
        &[
            ("manifests/site.pp", file("node default {} # staging\n")),
            ("Puppetfile", file(&same)),
        ],
    );
    let layout = world.scratch.path("layout");
    build_branches(&world, &layout, "*");
    world.control.commit(
        "staging",
        "staging 2",
        &[
            ("manifests/site.pp", file("node default {} # staging 2\n")),
            ("Puppetfile", file(&same)),
        ],
    );
    // production's layer holds the same modules and comes first; staging's own is used,
    // so one layer is read.
    let run = build_branches(&world, &layout, "*");
    assert!(fetched(&run).is_empty(), "{}", run.stderr);
    assert!(
        run.stderr.contains("reuse    layer of staging: 3 modules")
            && !run.stderr.contains("reuse    layer of production"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_corrupt_or_missing_previous_layer_is_not_used() {
    let world = World::new();
    setup(&world);
    let layout = world.scratch.path("layout");
    build_into(&world, &layout);

    // Same size, other bytes: the layer does not match its digest.
    let layer = layer_blob(&layout);
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer, &bytes).unwrap();
    control_commit(&world, "second", &puppetfile(&world));
    let run = build_into(&world, &layout);
    assert!(
        run.stderr
            .contains("reuse    layer of production: FAILED: sha256:")
            && run.stderr.contains(" unusable: ")
            && run
                .stderr
                .contains("fetching its modules and compressing its environment whole instead"),
        "{}",
        run.stderr
    );
    assert_eq!(fetched(&run).len(), 3, "{}", run.stderr);
    assert!(
        !run.stderr.contains("copied from the previous layer"),
        "{}",
        run.stderr
    );
    let cold = build_into(&world, &world.scratch.path("cold"));
    assert_eq!(digest(&run), digest(&cold));

    // Gone: the environment is fetched with its modules, and the log says why.
    std::fs::remove_file(layer_blob(&layout)).unwrap();
    control_commit(&world, "third", &puppetfile(&world));
    let run = build_into(&world, &layout);
    assert!(
        run.stderr
            .contains("production: previous layer gone from the output; its modules are fetched"),
        "{}",
        run.stderr
    );
    assert_eq!(fetched(&run).len(), 3, "{}", run.stderr);
}

#[test]
fn modules_are_downloaded_from_the_registry_layer() {
    let world = World::new();
    setup(&world);
    let registry = TestRegistry::start(Default::default());
    let image = format!("{}/puppet/code", registry.host());
    let build = || {
        let run = worker(
            &[
                "build",
                "--url",
                &world.git_url("control.git"),
                "--branch",
                "production",
                "--image",
                &image,
                "--tag",
                "latest",
                "--insecure",
                "--timeout",
                "30s",
            ],
            &world.tmp,
        );
        run.assert_ok();
        run
    };
    build();
    control_commit(&world, "second", &puppetfile(&world));
    let second = build();
    assert!(fetched(&second).is_empty(), "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("reuse    layer of production: 3 modules, 6 files"),
        "{}",
        second.stderr
    );
    // The downloaded layer gives its chunk too (one chunk: it changed).
    assert_eq!(
        copied_chunks(&second, "production"),
        Some((0, 1)),
        "{}",
        second.stderr
    );
    let cold = build_into(&world, &world.scratch.path("cold"));
    assert_eq!(digest(&second), digest(&cold));
}

/// A control branch `production` with `count` Hiera node files of ~2 KiB (a layer of
/// several chunks), the one at `edited` changed when given, and the modules' Puppetfile.
fn big_control_commit(world: &World, puppetfile: &str, count: usize, edited: Option<usize>) {
    let nodes: Vec<(String, Node)> = (0..count)
        .map(|i| {
            let mut body = format!("---\nprofile::base::node: node{i}\n");
            for line in 0..60 {
                body.push_str(&format!(
                    "profile::app::setting_{line}: 'value {}'\n",
                    (i * 7919 + line * 104_729) % 1_000_003
                ));
            }
            if edited == Some(i) {
                body.push_str("profile::app::edited: true\n");
            }
            (format!("data/nodes/node{i:04}.yaml"), file(&body))
        })
        .collect();
    let mut files: Vec<(&str, Node)> = nodes.iter().map(|(p, n)| (p.as_str(), n.clone())).collect();
    files.push(("manifests/site.pp", file("node default {}\n")));
    files.push(("Puppetfile", file(puppetfile)));
    files.push(("hiera.yaml", file("version: 5\n")));
    world.control.commit("production", "nodes", &files);
}

/// `(copied, all)` from the layer log line of `environment`
/// (`…, 3 of 4 chunks (3.1 MB) copied from the previous layer`).
fn copied_chunks(run: &Run, environment: &str) -> Option<(usize, usize)> {
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(&format!("layer    {environment}:")))?;
    let (before, _) = line.split_once(" chunks (")?;
    let (copied, all) = before.rsplit_once(", ")?.1.split_once(" of ")?;
    Some((copied.parse().ok()?, all.parse().ok()?))
}

/// Changes one Hiera file in the middle of `production` and builds into `layout` again
/// (with `extra` arguments): its chunk is compressed again, the others are copied from
/// the previous layer, and the digest is a cold build's. Returns both builds.
fn edit_one_file_and_rebuild(
    world: &World,
    modules: &str,
    layout: &Path,
    extra: &[&str],
) -> (Run, Run) {
    big_control_commit(world, modules, 1500, Some(750));
    let second = build_with(world, layout, "production", extra);
    let (copied, all) = copied_chunks(&second, "production").expect(&second.stderr);
    assert!(all >= 3 && copied >= 1 && copied < all, "{copied} of {all}");
    let cold = build_with(world, &world.scratch.path("cold"), "production", extra);
    assert_eq!(copied_chunks(&cold, "production"), None);
    assert_eq!(digest(&second), digest(&cold), "copying changes nothing");
    (second, cold)
}

#[test]
fn unchanged_chunks_are_copied_and_the_digest_is_a_cold_builds() {
    let world = World::new();
    setup(&world);
    let modules = puppetfile(&world);
    big_control_commit(&world, &modules, 1500, None);
    let layout = world.scratch.path("incremental");
    let first = build_into(&world, &layout);
    assert_eq!(
        copied_chunks(&first, "production"),
        None,
        "{}",
        first.stderr
    );

    let (second, cold) = edit_one_file_and_rebuild(&world, &modules, &layout, &[]);
    assert_ne!(digest(&second), digest(&first));
    // The Hiera files the previous layer held passed the checks then: only the edited
    // one is parsed again.
    assert!(
        second.stderr.contains(
            "verify   production: 1,501 files Puppet reads parse (1,500 known from before)"
        ),
        "{}",
        second.stderr
    );
    assert!(
        cold.stderr
            .contains("verify   production: 1,501 files Puppet reads parse (0 known from before)"),
        "{}",
        cold.stderr
    );
}

#[test]
fn zstd_layers_copy_their_chunks_too_and_a_codec_change_rebuilds() {
    let world = World::new();
    setup(&world);
    let modules = puppetfile(&world);
    big_control_commit(&world, &modules, 1500, None);
    let layout = world.scratch.path("zstd");
    let zstd = ["--compression", "zstd"];
    build_with(&world, &layout, "production", &zstd);
    let (media_type, files) = layer_listing(&layout);
    assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
    assert!(
        files
            .iter()
            .any(|f| f == "production/data/nodes/node0750.yaml"),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f == "production/modules/stdlib/manifests/init.pp")
    );

    let (second, _) = edit_one_file_and_rebuild(&world, &modules, &layout, &zstd);
    assert!(
        fetched(&second).is_empty(),
        "modules from the zstd layer: {}",
        second.stderr
    );

    // Back to gzip: the zstd layer is not reused, nor its chunks.
    let gzip = build_into(&world, &layout);
    assert!(
        gzip.stderr
            .contains("previous layer is application/vnd.oci.image.layer.v1.tar+zstd, this build writes application/vnd.oci.image.layer.v1.tar+gzip; built again"),
        "{}",
        gzip.stderr
    );
    assert_eq!(copied_chunks(&gzip, "production"), None, "{}", gzip.stderr);
    assert_eq!(
        layer_listing(&layout).0,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
}

/// The media type of the only layer of the image a layout holds, and its entries.
fn layer_listing(layout: &Path) -> (String, Vec<String>) {
    let media_type = manifest(layout)["layers"][0]["mediaType"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = std::fs::read(layer_blob(layout)).unwrap();
    let raw: Box<dyn std::io::Read> = if media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::new(&bytes[..]).unwrap())
    } else {
        Box::new(flate2::read::GzDecoder::new(&bytes[..]))
    };
    let mut archive = tar::Archive::new(raw);
    let files = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    (media_type, files)
}

/// The manifest of the image a layout holds.
fn manifest(layout: &Path) -> serde_json::Value {
    let json = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index = json(layout.join("index.json"));
    json(blob(
        layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
}

/// The path of blob `digest` in a layout.
fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The blob of the only layer of the image a layout holds.
fn layer_blob(layout: &Path) -> std::path::PathBuf {
    blob(
        layout,
        manifest(layout)["layers"][0]["digest"].as_str().unwrap(),
    )
}
