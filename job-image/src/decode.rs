//! Decoding a fetched pack's blobs ahead of reading them (see
//! [`FetchedRepo::decode_blobs`]), within the scratch space the limits allow. Used for
//! the control repository and for every module repository.

use crate::git::FetchedRepo;
use crate::limits::{Bytes, Limits};
use crate::progress::{Step, count};

/// Decodes the blobs of a shallow fetch ahead ([`FetchedRepo::decode_blobs`]), on every
/// core; blocking. A failure is logged and costs only speed: blobs are then read from
/// the pack.
pub(crate) fn decode_ahead(repo: &FetchedRepo, limits: Limits) {
    /// Trees and commits must fit too, whatever the file size limit.
    const MIN_OBJECT_BYTES: u64 = 64 << 20;
    let step = Step::start("decode", repo.url());
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let budget = limits.decode_budget(repo.received_bytes());
    match repo.decode_blobs(threads, limits.max_file_bytes.max(MIN_OBJECT_BYTES), budget) {
        Ok(stats) => step.done(match repo.decoded() {
            Some(decoded) => format!(
                "{} blobs, {}",
                count(decoded.blobs() as u64),
                Bytes(decoded.bytes())
            ),
            None => format!(
                "not needed: {} objects, {} deltas to resolve in all (read directly)",
                count(stats.objects),
                count(stats.chained)
            ),
        }),
        Err(e) => step.failed(format!("{e}; reading blobs from the pack instead")),
    }
}
