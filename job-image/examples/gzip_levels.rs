//! Benchmark (not a test): the gzip level trade-off of the layer compressor on any tar.
//!
//! ```text
//! cargo run --release -p openvox-code-worker --example gzip_levels -- layer.tar [LEVELS…]
//! ```
//!
//! For each level (default 1 to 9) it compresses the file with flate2's zlib-rs backend
//! in independent 1 MiB chunks, as the layer writer does, on one thread, and prints the
//! compressed size, the size relative to level 6 (the layer format's level) and the
//! throughput, best of 3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use flate2::{Compress, Compression, FlushCompress};

fn compressed_size(data: &[u8], level: u32) -> usize {
    let mut total = 0;
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let last = (i + 1) * (1 << 20) >= data.len();
        let mut compress = Compress::new(Compression::new(level), false);
        let mut out = Vec::with_capacity(chunk.len() / 2 + 1024);
        let flush = if last {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        loop {
            let consumed = usize::try_from(compress.total_in()).unwrap();
            if out.capacity() - out.len() < 1024 {
                out.reserve(chunk.len() / 4 + 1024);
            }
            let status = compress
                .compress_vec(&chunk[consumed..], &mut out, flush)
                .unwrap();
            let done = usize::try_from(compress.total_in()).unwrap() == chunk.len();
            if done
                && (status == flate2::Status::StreamEnd || (!last && out.capacity() > out.len()))
            {
                break;
            }
        }
        total += out.len();
    }
    total
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: gzip_levels FILE [LEVELS…]");
    let data = std::fs::read(&path).unwrap();
    let mut levels: Vec<u32> = args.map(|a| a.parse().unwrap()).collect();
    if levels.is_empty() {
        levels = (1..=9).collect();
    }
    let reference = compressed_size(&data, 6);
    println!(
        "{path}: {:.1} MiB; level 6 gives {:.1} MiB",
        data.len() as f64 / 1048576.0,
        reference as f64 / 1048576.0
    );
    println!("level  size MiB  vs level 6  MB/s (one thread)");
    for level in levels {
        let mut best = Duration::MAX;
        let mut size = 0;
        for _ in 0..3 {
            let start = Instant::now();
            size = compressed_size(&data, level);
            best = best.min(start.elapsed());
        }
        println!(
            "{level:>5}  {:>8.2}  {:>+9.1} %  {:>6.0}",
            size as f64 / 1048576.0,
            (size as f64 / reference as f64 - 1.0) * 100.0,
            data.len() as f64 / best.as_secs_f64() / 1e6
        );
    }
}
