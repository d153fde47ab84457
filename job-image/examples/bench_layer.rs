//! Benchmark (not a test): how fast environments become image layers, and with how
//! much memory, next to `tar | gzip -6` of the same files measured in the same run.
//!
//! ```text
//! cargo run --release -p openvox-code-worker --example bench_layer -- [MB] [ENVIRONMENTS]
//! ```
//!
//! Generates MB (default 200) of Puppet-like text files (manifests, templates, data,
//! specs; ~13 KB per file, like a control repository with modules) in a temporary
//! directory, then prints, each best of 3:
//!
//! * one environment through the layer writer (tar + pinned gzip + both digests into a
//!   file), single thread: MB/s of input, output ratio, peak RSS of this process;
//! * the same bytes split into ENVIRONMENTS (default 4) layers built in parallel on
//!   every core, as a build does;
//! * the gzip floor: the already written tar stream through the same compressor alone;
//! * the baseline `tar --sort=name … | gzip -6 -n`, wall time and peak RSS (GNU time).
//!
//! `floor FILE...` and `levels [1,3,6,9] FILE...` take tar streams instead: the gzip
//! floor of `scripts/bench-image.sh`, and the level trade-off of `scripts/bench-modules.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openvox_code_worker::image::codec::{Codec, ZSTD_LEVEL};
use openvox_code_worker::image::gzip::{GZIP_LEVEL, LayerEncoder};
use openvox_code_worker::image::layer::{Packing, write_layer_file};
use openvox_code_worker::limits::Limits;
use openvox_code_worker::tree::{ContentReader, EnvironmentTree, LocalDir, LocalEntry, LocalKind};

const MIB: f64 = 1024.0 * 1024.0;
/// Tar bytes deflated on their own by the level comparison: a layer's average chunk.
const CHUNK: usize = 1 << 20;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "ensure",
    "present",
    "absent",
    "file",
    "package",
    "service",
    "exec",
    "notify",
    "require",
    "before",
    "subscribe",
    "content",
    "template",
    "owner",
    "group",
    "mode",
    "path",
    "source",
    "class",
    "define",
    "include",
    "contain",
    "String",
    "Integer",
    "Boolean",
    "Optional",
    "Hash",
    "Array",
    "Enum",
    "Stdlib::Absolutepath",
    "$facts['os']['family']",
    "$trusted['certname']",
    "lookup",
    "undef",
    "true",
    "false",
    "running",
    "stopped",
    "config",
    "params",
    "install",
    "apache",
    "nginx",
    "postgresql",
    "mysql",
    "ntp",
    "ssh",
    "firewall",
    "concat",
];

/// One file's text: a class with parameters and resources, an ERB template, YAML data
/// or an RSpec file, depending on `kind`.
fn text(rng: &mut Rng, kind: u64, target: usize) -> String {
    let mut out = String::with_capacity(target + 256);
    let name = format!("{}::{}", rng.pick(WORDS), rng.pick(WORDS));
    match kind {
        0 => out.push_str(&format!("# @summary Manages {name}\nclass {name} (\n")),
        1 => out.push_str("<%- # Managed by Puppet -%>\n"),
        2 => out.push_str("---\n"),
        _ => out.push_str(&format!("require 'spec_helper'\n\ndescribe '{name}' do\n")),
    }
    while out.len() < target {
        let (a, b, c) = (rng.pick(WORDS), rng.pick(WORDS), rng.pick(WORDS));
        let n = rng.next() % 1000;
        match kind {
            0 => out.push_str(&format!(
                "  {a} {{ '{b}_{n}':\n    {c} => '{a}',\n    require => Class['{b}'],\n  }}\n"
            )),
            1 => out.push_str(&format!(
                "<% if @{a} -%>\n{b}_{n} = <%= @{c} %>\n<% end -%>\n"
            )),
            2 => out.push_str(&format!("{name}::{a}_{n}: '{b}'\n{name}::{c}: {n}\n")),
            _ => out.push_str(&format!(
                "  it {{ is_expected.to contain_{a}('{b}_{n}').with_{c}('{a}') }}\n"
            )),
        }
    }
    out
}

/// Writes ~`mb` MiB of files below `root`; returns the entries (sorted by path).
fn generate(root: &Path, mb: u64) -> Vec<LocalEntry> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut entries = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    let mut total = 0u64;
    let mut i = 0u64;
    while total < mb * 1024 * 1024 {
        let module = i / 60;
        let kind = i % 4;
        let (dir, ext) = match kind {
            0 => (format!("modules/mod{module}/manifests"), "pp"),
            1 => (format!("modules/mod{module}/templates"), "erb"),
            2 => (format!("data/nodes/group{}", module % 40), "yaml"),
            _ => (format!("modules/mod{module}/spec/classes"), "rb"),
        };
        let size = 2_000 + (rng.next() % 22_000) as usize;
        let body = text(&mut rng, kind, size);
        let path = format!("{dir}/file{i}.{ext}");
        let mut parent = String::new();
        for part in dir.split('/') {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if dirs.insert(parent.clone()) {
                std::fs::create_dir_all(root.join(&parent)).unwrap();
                entries.push(LocalEntry {
                    path: parent.clone(),
                    kind: LocalKind::Directory,
                });
            }
        }
        std::fs::write(root.join(&path), &body).unwrap();
        total += body.len() as u64;
        entries.push(LocalEntry {
            path,
            kind: LocalKind::File {
                executable: i.is_multiple_of(97),
                size: body.len() as u64,
            },
        });
        i += 1;
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries
}

fn tree_of(dir: &Arc<LocalDir>, entries: &[LocalEntry]) -> EnvironmentTree {
    let mut tree = EnvironmentTree::new(Limits::default());
    tree.add_local_tree("", dir, entries, &[]).unwrap();
    tree.check().unwrap();
    tree
}

/// Peak RSS of this process since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn reset_peak_rss() {
    // Linux: "5" resets the peak resident set size to the current one.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs {
        let started = Instant::now();
        let value = f();
        let elapsed = started.elapsed();
        if best.as_ref().is_none_or(|(d, _)| elapsed < *d) {
            best = Some((elapsed, value));
        }
    }
    best.unwrap()
}

fn line(what: &str, input: u64, elapsed: Duration, output: Option<u64>, rss: f64) {
    let ratio = output.map_or(String::from("     -"), |o| {
        format!("{:6.3}", o as f64 / input as f64)
    });
    // The floor holds all its input in memory on purpose: no RSS worth printing.
    let rss = if rss.is_nan() {
        String::from("     -")
    } else {
        format!("{rss:>6.1}")
    };
    println!(
        "{what:<44} {:>7.1} MB/s  {:>6.2} s  ratio {ratio}  peak RSS {rss} MiB",
        input as f64 / MIB / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
}

/// `floor FILE...`: the files (tar streams) through the layer compressor on every
/// core; prints the wall time. The gzip floor of `scripts/bench-image.sh`.
fn floor(files: &[String]) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let data: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let input: u64 = data.iter().map(|d| d.len() as u64).sum();
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let output = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..cores.min(data.len()) {
            scope.spawn(|| {
                while let Some(bytes) =
                    data.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                {
                    let mut encoder = LayerEncoder::new(std::io::sink());
                    for piece in bytes.chunks(128 * 1024) {
                        encoder.write_all(piece).unwrap();
                    }
                    let size = encoder.finish().unwrap().1.size;
                    output.fetch_add(size, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    line(
        &format!(
            "gzip floor: {} tars, {} threads",
            data.len(),
            cores.min(data.len())
        ),
        input,
        elapsed,
        Some(output.into_inner()),
        f64::NAN,
    );
}

/// The size of one chunk deflated on its own at `level`, by the layer compressor.
fn deflate_chunk_at(data: &[u8], last: bool, level: u32) -> u64 {
    openvox_code_worker::image::gzip::deflate_chunk_at(data, last, level)
        .unwrap()
        .len() as u64
}

/// `levels [1,3,6,9] FILE...`: the files (tar streams) cut into 1 MiB chunks (a
/// layer's average) and compressed independently on every core at each gzip level by
/// the layer compressor, then as zstd frames at the worker's zstd level: wall time,
/// compressed size and size against gzip level 6 (the default).
fn levels(args: &[String]) {
    let (levels, files): (Vec<u32>, &[String]) = match args.first() {
        Some(first) if first.split(',').all(|l| l.parse::<u32>().is_ok()) => (
            first.split(',').map(|l| l.parse().unwrap()).collect(),
            &args[1..],
        ),
        _ => (vec![1, 3, 6, 9], args),
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let data: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let input: u64 = data.iter().map(|d| d.len() as u64).sum();
    let chunks: Vec<&[u8]> = data.iter().flat_map(|d| d.chunks(CHUNK)).collect();
    // Wall time and total size of compressing every chunk with `compress` on every core.
    let measure = |compress: &(dyn Fn(&[u8]) -> u64 + Sync)| {
        let started = Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let output = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..cores {
                scope.spawn(|| {
                    while let Some(chunk) =
                        chunks.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                    {
                        let size = compress(chunk);
                        output.fetch_add(size, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        (started.elapsed(), output.into_inner())
    };
    // gzip header (10 bytes) and trailer (10) per layer.
    let framing = 20 * data.len() as u64;
    let mut rows = Vec::new();
    for &level in &levels {
        let (elapsed, size) = measure(&|chunk| deflate_chunk_at(chunk, false, level));
        let name = if level == GZIP_LEVEL {
            format!("gzip level {level} (the default)")
        } else {
            format!("gzip level {level}")
        };
        rows.push((name, elapsed, size + framing));
    }
    let (elapsed, size) = measure(&|chunk| Codec::Zstd.compress(chunk).unwrap().len() as u64);
    rows.push((
        format!("zstd level {ZSTD_LEVEL} (--compression zstd)"),
        elapsed,
        size,
    ));
    let reference = levels
        .iter()
        .position(|l| *l == GZIP_LEVEL)
        .map(|i| rows[i].2);
    println!(
        "{} tars, {:.1} MiB, {} threads, {} KiB chunks compressed independently (zlib-rs, libzstd {})",
        data.len(),
        input as f64 / MIB,
        cores,
        CHUNK / 1024,
        zstd::zstd_safe::version_string()
    );
    for (name, elapsed, size) in rows {
        let against = reference.map_or(String::new(), |r| {
            format!(
                "  {:+6.1} % vs gzip level {GZIP_LEVEL}",
                (size as f64 / r as f64 - 1.0) * 100.0
            )
        });
        println!(
            "{name:<40} {:>7.1} MB/s  {:>6.2} s  {:>8.2} MiB  ratio {:6.3}{against}",
            input as f64 / MIB / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            size as f64 / MIB,
            size as f64 / input as f64,
        );
    }
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.first().map(String::as_str) == Some("floor") {
        floor(&all[1..]);
        return;
    }
    if all.first().map(String::as_str) == Some("levels") {
        levels(&all[1..]);
        return;
    }
    let mut args = all.into_iter();
    let mb: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let environments: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4).max(1);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let scratch = tempfile::Builder::new()
        .prefix("ovc-bench-layer-")
        .tempdir()
        .unwrap();
    let source_dir = tempfile::Builder::new()
        .prefix("env-")
        .tempdir_in(scratch.path())
        .unwrap();
    let source = source_dir.path().to_owned();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    let started = Instant::now();
    let entries = generate(&source, mb);
    let files = entries
        .iter()
        .filter(|e| matches!(e.kind, LocalKind::File { .. }))
        .count();
    let bytes: u64 = entries
        .iter()
        .map(|e| {
            if let LocalKind::File { size, .. } = e.kind {
                size
            } else {
                0
            }
        })
        .sum();
    println!(
        "generated {files} files, {:.1} MiB in {:.1}s; {cores} cores; each figure best of 3",
        bytes as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    let dir = Arc::new(LocalDir::temporary(source_dir));
    let tree = tree_of(&dir, &entries);
    // Warm the page cache, as a build reads blobs it has just fetched.
    for e in &entries {
        if matches!(e.kind, LocalKind::File { .. }) {
            let mut f = std::fs::File::open(source.join(&e.path)).unwrap();
            let mut sink = Vec::new();
            f.read_to_end(&mut sink).unwrap();
        }
    }

    // 1. One environment, one thread.
    reset_peak_rss();
    let (elapsed, layer) = best_of(3, || {
        write_layer_file(
            "production",
            &tree,
            &mut ContentReader::new(),
            Packing::default(),
            &out,
        )
        .unwrap()
    });
    line(
        "layer writer, 1 environment, 1 thread",
        bytes,
        elapsed,
        Some(layer.encoded.size),
        peak_rss_mib(),
    );
    let tar_size = layer.encoded.uncompressed_size;
    drop(layer);

    // 2. The same bytes as ENVIRONMENTS layers built on every core.
    let chunk = entries.len().div_ceil(environments);
    let trees: Vec<EnvironmentTree> = entries
        .chunks(chunk)
        .map(|part| {
            // Each part needs its parent directories: take them from the full list.
            let mut needed: Vec<LocalEntry> = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for e in part {
                let mut parent = String::new();
                for p in e
                    .path
                    .split('/')
                    .collect::<Vec<_>>()
                    .iter()
                    .rev()
                    .skip(1)
                    .rev()
                {
                    if !parent.is_empty() {
                        parent.push('/');
                    }
                    parent.push_str(p);
                    if seen.insert(parent.clone()) {
                        needed.push(LocalEntry {
                            path: parent.clone(),
                            kind: LocalKind::Directory,
                        });
                    }
                }
                if seen.insert(e.path.clone()) {
                    needed.push(e.clone());
                }
            }
            tree_of(&dir, &needed)
        })
        .collect();
    reset_peak_rss();
    let (elapsed, sizes) = best_of(3, || {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let sizes = std::sync::Mutex::new(0u64);
        std::thread::scope(|scope| {
            for _ in 0..cores.min(trees.len()) {
                scope.spawn(|| {
                    let mut reader = ContentReader::new();
                    while let Some(tree) =
                        trees.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                    {
                        let layer =
                            write_layer_file("env", tree, &mut reader, Packing::default(), &out)
                                .unwrap();
                        *sizes.lock().unwrap() += layer.encoded.size;
                    }
                });
            }
        });
        sizes.into_inner().unwrap()
    });
    line(
        &format!(
            "layer writer, {} environments, {} threads",
            trees.len(),
            cores.min(trees.len())
        ),
        bytes,
        elapsed,
        Some(sizes),
        peak_rss_mib(),
    );

    // 3. The gzip floor: the tar stream alone through the same compressor.
    let tar_path = scratch.path().join("env.tar");
    tar_baseline(&source, &tar_path, None);
    let tar_bytes = std::fs::read(&tar_path).unwrap();
    reset_peak_rss();
    let (elapsed, size) = best_of(3, || {
        let mut encoder = LayerEncoder::new(std::io::sink());
        for piece in tar_bytes.chunks(128 * 1024) {
            encoder.write_all(piece).unwrap();
        }
        encoder.finish().unwrap().1.size
    });
    // The tar is held in memory here; that is not the layer writer's footprint.
    line(
        "gzip floor: zlib-rs level 6 on the tar, 1 thread",
        bytes,
        elapsed,
        Some(size),
        f64::NAN,
    );
    println!(
        "  (tar stream {:.1} MiB for {:.1} MiB of files)",
        tar_size as f64 / MIB,
        bytes as f64 / MIB
    );
    drop(tar_bytes);

    // 4. Baseline: tar | gzip -6.
    let gz_path = scratch.path().join("env.tar.gz");
    let (elapsed, rss) = (0..3)
        .map(|_| tar_baseline(&source, &gz_path, Some("gzip -6 -n")))
        .min_by(|a, b| a.0.cmp(&b.0))
        .unwrap();
    let size = std::fs::metadata(&gz_path).unwrap().len();
    line(
        "baseline: tar --sort=name | gzip -6 -n",
        bytes,
        elapsed,
        Some(size),
        rss,
    );
}

/// Runs `tar … | <compress> > out` (or plain tar) under GNU time; returns wall time and
/// the peak RSS of the largest process.
fn tar_baseline(source: &Path, out: &Path, compress: Option<&str>) -> (Duration, f64) {
    let tar = format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -cf - -C {} .",
        source.display()
    );
    let pipeline = match compress {
        Some(c) => format!("{tar} | {c} > {}", out.display()),
        None => format!("{tar} > {}", out.display()),
    };
    let report = out.with_extension("time");
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(&report)
        .args(["bash", "-c", &pipeline])
        .status()
        .expect("GNU time (Debian package time)");
    let elapsed = started.elapsed();
    assert!(status.success(), "{pipeline}");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let rss = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0);
    (elapsed, rss)
}
