//! From environments to a published image: decide per environment whether its layer
//! can be taken from the previous image, build the others (in parallel, each into a
//! temporary file), hand every layer to the output as soon as it is ready, then write
//! the config and, last of all, the manifest, so a failure never publishes a half image.
//!
//! An environment that failed this time keeps the layer it had in the previous image,
//! as PVC mode keeps its previous version; an environment whose branch is gone is not
//! carried over.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::future::BoxFuture;

use bytes::Bytes;

use super::chunks::{ChunkIndex, ChunkTable};
use super::codec::Codec;
use super::config::{ConfigLayer, ImageConfig, rfc3339};
use super::gzip::sha256_digest;
use super::layer::{LayerError, LayerFile, Packing, write_layer_file};
use super::layout::{Layout, LayoutError};
use super::manifest::{Descriptor, Manifest};
use super::push::{BlobOutcome, BlobSource, PushError, Registry, Repository};
use super::reuse::{PreviousImage, PreviousLayer, inputs_key};
use super::{MAX_LAYERS, annotations, media_types};
use crate::inputs::EnvironmentInputs;
use crate::limits::{Bytes as Size, Limits};
use crate::module_reuse::{BlobFile, LayerBlobs, PreviousLayers, ReusableLayer};
use crate::pins::Pins;
use crate::progress::{Step, count};
use crate::tree::{ContentReader, EnvironmentTree};
use crate::unchanged::RecordedEnvironment;

/// An environment ready to become a layer.
#[derive(Debug, Clone)]
pub struct ImageEnvironment {
    pub inputs: EnvironmentInputs,
    pub tree: EnvironmentTree,
    /// Commit time of the environment's branch, seconds since the epoch: the layer's
    /// `created` (entries have the fixed [`super::LAYER_MTIME`]).
    pub commit_time: i64,
    /// Module declarations and resolutions, recorded on the layer (`None`: not
    /// recordable, the next build fetches the branch).
    pub pins: Option<Pins>,
}

/// Where the image goes.
#[derive(Debug, Clone)]
pub enum Output {
    Registry(Arc<Registry>),
    Layout(Arc<Layout>),
}

impl LayerBlobs for Output {
    fn open<'a>(
        &'a self,
        digest: &'a str,
        size: u64,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<BlobFile, String>> {
        Box::pin(async move {
            match self {
                Output::Layout(layout) => layout
                    .blob_path(digest)
                    .map(BlobFile::InPlace)
                    .map_err(|e| e.to_string()),
                Output::Registry(registry) => {
                    let path = tempfile::Builder::new()
                        .prefix("openvox-code-layer-")
                        .tempfile_in(dir)
                        .map_err(|e| e.to_string())?
                        .into_temp_path();
                    registry
                        .download_blob(digest, size, &path)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(BlobFile::Downloaded(path))
                }
            }
        })
    }
}

/// The layers of `recorded` (environments of `previous` whose layers the output has):
/// the git modules they hold, to be taken from there instead of fetched, and their
/// chunks, to be copied instead of compressed; `None` when they give neither.
pub fn previous_layers(
    previous: &PreviousImage,
    recorded: &BTreeMap<String, RecordedEnvironment>,
    output: &Output,
    work_dir: &Path,
    limits: Limits,
) -> Option<Arc<PreviousLayers>> {
    let layers: Vec<ReusableLayer> = recorded
        .iter()
        .filter_map(|(name, env)| {
            let layer = previous.layers.get(name)?;
            let chunks = layer
                .descriptor
                .annotations
                .get(annotations::CHUNKS)
                .and_then(|text| match ChunkTable::parse(text) {
                    Ok(table) => Some(table),
                    Err(reason) => {
                        tracing::info!("{name}: previous layer's chunk table ignored: {reason}");
                        None
                    }
                });
            Some(ReusableLayer {
                environment: name.clone(),
                digest: layer.descriptor.digest.clone(),
                size: layer.descriptor.size,
                codec: Codec::of_media_type(&layer.descriptor.media_type)?,
                pins: env.pins.clone(),
                chunks,
            })
        })
        .collect();
    PreviousLayers::new(layers, Arc::new(output.clone()), work_dir, limits).map(Arc::new)
}

/// Settings of an image build.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// The control repository, without credentials (`org.opencontainers.image.source`).
    pub source: String,
    /// `architecture` of the config. The content is the same on every platform; the
    /// field is required, and fixed so the digest does not depend on the build machine.
    pub architecture: String,
    /// Extra tags (registry) or reference names (layout).
    pub tags: Vec<String>,
    /// How layers are compressed.
    pub codec: Codec,
    /// Where layer files are written before they are sent.
    pub work_dir: PathBuf,
    /// Layers built at a time.
    pub build_jobs: usize,
    /// Blobs sent at a time.
    pub upload_jobs: usize,
}

/// What an image build is asked to do.
#[derive(Debug, Default)]
pub struct ImageRequest {
    /// Environments built this time.
    pub environments: Vec<ImageEnvironment>,
    /// Environments found unchanged without fetching their branch: their layer must
    /// come from the previous image.
    pub unchanged: Vec<RecordedEnvironment>,
    /// Environments selected but failed this time: their previous layer is kept.
    pub failed: Vec<String>,
    /// The image this one replaces.
    pub previous: Option<PreviousImage>,
    /// Its layers, whose unchanged chunks new layers copy.
    pub previous_layers: Option<Arc<PreviousLayers>>,
}

/// Where a layer of the new image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOrigin {
    /// Built now.
    Built,
    /// Taken from the previous image: same inputs.
    Reused,
    /// Taken from the previous image because the environment failed this time.
    Kept,
}

/// How a layer got to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// The registry or layout had it.
    Present,
    /// Mounted from the previous image's repository.
    Mounted,
    /// Sent (or, for a layout, written) with this many bytes.
    Sent(u64),
}

/// One layer of the published image.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub environment: String,
    pub branch: String,
    pub revision: String,
    pub digest: String,
    pub size: u64,
    pub origin: LayerOrigin,
    pub transfer: Transfer,
    /// Inputs of an environment built or reused now; `None` for a kept layer.
    pub inputs: Option<EnvironmentInputs>,
    /// Its modules declared and resolved, when recorded (see `Pins::new`).
    pub pins: Option<Pins>,
}

/// The result of an image build.
#[derive(Debug, Clone)]
pub struct PublishedImage {
    /// `<repository>@sha256:…` or `oci:<dir>@sha256:…`.
    pub reference: String,
    pub manifest_digest: String,
    /// Layers in image order (environment names).
    pub layers: Vec<LayerReport>,
    /// Environments that failed while their layer was written, with the reason.
    pub failed: Vec<(String, String)>,
    /// Blobs sent (layers, config, manifest not counted) and their bytes.
    pub sent_blobs: usize,
    pub sent_bytes: u64,
}

/// An image build that could not complete; nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Nothing was built or reused (every selected environment failed, with these
    /// reasons by environment, beyond those the request named): publishing would only
    /// repeat the previous image, so nothing is published.
    #[error("no environment to put into the image: every selected environment failed")]
    NoEnvironments { failed: Vec<(String, String)> },
    #[error(
        "{count} environments would make {count} layers; container runtimes accept at most {MAX_LAYERS} (narrow git.branches)"
    )]
    TooManyLayers { count: usize },
    #[error(transparent)]
    Push(#[from] PushError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("image build: {0}")]
    Local(String),
}

/// A layer as the manifest and config will list it.
#[derive(Debug, Clone)]
struct PlannedLayer {
    descriptor: Descriptor,
    diff_id: String,
    created: String,
    report: LayerReport,
}

/// Layer annotations of a layer built from `inputs`; the same whether it is built now
/// or reused, so the manifest depends on the inputs and digests only.
fn layer_annotations(
    inputs: &EnvironmentInputs,
    key: &str,
    created: &str,
    pins: Option<&Pins>,
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::from([
        (annotations::ENVIRONMENT.to_owned(), inputs.name.clone()),
        (annotations::BRANCH.to_owned(), inputs.branch.clone()),
        (annotations::LAYER_REVISION.to_owned(), inputs.revision()),
        (annotations::INPUTS.to_owned(), key.to_owned()),
        (annotations::LAYER_CREATED.to_owned(), created.to_owned()),
    ]);
    if let Some(pins) = pins {
        map.insert(annotations::PINS.to_owned(), pins.to_annotation());
    }
    map
}

/// Whether the output has `layer`'s blob, mounting it from the previous repository
/// when it can.
async fn available(
    output: &Output,
    layer: &PreviousLayer,
    previous: &PreviousImage,
) -> Result<Option<Transfer>, PushError> {
    match output {
        Output::Layout(layout) => Ok(layout
            .has_blob(&layer.descriptor.digest, layer.descriptor.size)
            .then_some(Transfer::Present)),
        Output::Registry(registry) => {
            if registry.blob_exists(&layer.descriptor.digest).await? {
                return Ok(Some(Transfer::Present));
            }
            if let Some(source) = previous
                .repository
                .as_deref()
                .and_then(|r| Repository::parse(r).ok())
                && registry.mount(&source, &layer.descriptor.digest).await
                && registry.blob_exists(&layer.descriptor.digest).await?
            {
                return Ok(Some(Transfer::Mounted));
            }
            Ok(None)
        }
    }
}

/// The previous layer of `name`, kept because the environment failed this time; `None`
/// when there is none or the output lost it.
async fn keep_previous(
    name: &str,
    previous: Option<&PreviousImage>,
    output: &Output,
) -> Result<Option<PlannedLayer>, PushError> {
    let Some(previous) = previous else {
        return Ok(None);
    };
    let Some(layer) = previous.layer_of(name) else {
        tracing::warn!("{name}: failed and the previous image has no layer for it; left out");
        return Ok(None);
    };
    let Some(transfer) = available(output, layer, previous).await? else {
        tracing::warn!("{name}: failed and its previous layer is gone from the output; left out");
        return Ok(None);
    };
    Ok(Some(PlannedLayer {
        report: LayerReport {
            environment: name.to_owned(),
            branch: layer.branch.clone(),
            revision: layer.revision.clone(),
            digest: layer.descriptor.digest.clone(),
            size: layer.descriptor.size,
            origin: LayerOrigin::Kept,
            transfer,
            inputs: None,
            pins: None,
        },
        descriptor: layer.descriptor.clone(),
        diff_id: layer.diff_id.clone(),
        created: layer.created.clone(),
    }))
}

/// The previous layer of an environment found unchanged without a fetch; `Err` with
/// the reason when it is not there any more (it cannot be rebuilt without the branch;
/// the next build fetches it).
async fn take_unchanged(
    env: &RecordedEnvironment,
    previous: Option<&PreviousImage>,
    output: &Output,
    codec: Codec,
) -> Result<Result<PlannedLayer, String>, PushError> {
    let key = inputs_key(&env.inputs, env.commit_time, codec);
    let Some((previous, layer)) =
        previous.and_then(|p| p.reusable(&env.inputs.name, &key).map(|l| (p, l)))
    else {
        return Ok(Err(
            "unchanged, but the previous image has no layer for these inputs".into(),
        ));
    };
    let Some(transfer) = available(output, layer, previous).await? else {
        return Ok(Err(format!(
            "unchanged, but its layer {} is gone from the output; the next build fetches it",
            layer.descriptor.digest
        )));
    };
    let created = rfc3339(env.commit_time);
    Ok(Ok(reused_layer(
        &env.inputs,
        layer,
        &key,
        created,
        Some(&env.pins),
        transfer,
    )))
}

/// A previous layer taken for `inputs`: annotated as a fresh build of them would be.
fn reused_layer(
    inputs: &EnvironmentInputs,
    layer: &PreviousLayer,
    key: &str,
    created: String,
    pins: Option<&Pins>,
    transfer: Transfer,
) -> PlannedLayer {
    let mut descriptor = layer.descriptor.clone();
    let chunks = descriptor.annotations.remove(annotations::CHUNKS);
    descriptor.annotations = layer_annotations(inputs, key, &created, pins);
    if let Some(chunks) = chunks {
        descriptor
            .annotations
            .insert(annotations::CHUNKS.to_owned(), chunks);
    }
    PlannedLayer {
        report: LayerReport {
            environment: inputs.name.clone(),
            branch: inputs.branch.clone(),
            revision: inputs.revision(),
            digest: descriptor.digest.clone(),
            size: descriptor.size,
            origin: LayerOrigin::Reused,
            transfer,
            inputs: Some(inputs.clone()),
            pins: pins.cloned(),
        },
        descriptor,
        diff_id: layer.diff_id.clone(),
        created,
    }
}

/// The environments of `previous` whose layer is compressed with `codec` and the
/// output has (or got by a mount), with annotations that allow reusing it without a
/// fetch (see [`crate::unchanged`]).
pub async fn recorded_environments(
    previous: &PreviousImage,
    output: &Output,
    codec: Codec,
) -> Result<BTreeMap<String, RecordedEnvironment>, PushError> {
    let mut recorded = BTreeMap::new();
    for (name, layer) in &previous.layers {
        if layer.descriptor.media_type != codec.media_type() {
            tracing::info!(
                "{name}: previous layer is {}, this build writes {}; built again",
                layer.descriptor.media_type,
                codec.media_type()
            );
            continue;
        }
        match RecordedEnvironment::from_layer(layer) {
            Ok(env) => {
                if available(output, layer, previous).await?.is_some() {
                    recorded.insert(name.clone(), env);
                } else {
                    tracing::warn!(
                        "{name}: previous layer gone from the output; its modules are fetched again"
                    );
                }
            }
            Err(reason) => {
                tracing::debug!("{name}: previous layer not reusable unfetched: {reason}")
            }
        }
    }
    Ok(recorded)
}

/// Builds and publishes the image.
pub async fn build_image(
    request: ImageRequest,
    options: &ImageOptions,
    output: &Output,
) -> Result<PublishedImage, ImageError> {
    let mut environments = request.environments;
    environments.sort_by(|a, b| a.inputs.name.cmp(&b.inputs.name));
    let count_layers = environments.len() + request.unchanged.len() + request.failed.len();
    if count_layers > MAX_LAYERS {
        return Err(ImageError::TooManyLayers {
            count: count_layers,
        });
    }

    // 1. Reuse what did not change.
    let mut planned: Vec<PlannedLayer> = Vec::new();
    let mut to_build: Vec<(usize, String)> = Vec::new();
    let step = Step::start(
        "reuse",
        request
            .previous
            .as_ref()
            .map_or("no previous image".to_owned(), |p| p.origin.clone()),
    );
    for (index, env) in environments.iter().enumerate() {
        let key = inputs_key(&env.inputs, env.commit_time, options.codec);
        let created = rfc3339(env.commit_time);
        let reusable = request
            .previous
            .as_ref()
            .and_then(|p| p.reusable(&env.inputs.name, &key).map(|l| (p, l)));
        let mut transfer = None;
        if let Some((previous, layer)) = reusable {
            transfer = available(output, layer, previous).await?;
            if let Some(transfer) = transfer {
                planned.push(reused_layer(
                    &env.inputs,
                    layer,
                    &key,
                    created,
                    env.pins.as_ref(),
                    transfer,
                ));
            } else {
                tracing::info!(
                    "{}: layer {} of the previous image is gone from the output; building it again",
                    env.inputs.name,
                    layer.descriptor.digest
                );
            }
        }
        if transfer.is_none() {
            to_build.push((index, key));
        }
    }
    // Unchanged environments were not fetched: their layer is the previous one or none.
    let mut failed_reports = Vec::new();
    let mut unchanged_count = 0;
    for env in &request.unchanged {
        match take_unchanged(env, request.previous.as_ref(), output, options.codec).await? {
            Ok(layer) => {
                unchanged_count += 1;
                planned.push(layer);
            }
            Err(reason) => {
                tracing::warn!("{}: {reason}", env.inputs.name);
                failed_reports.push((env.inputs.name.clone(), reason));
            }
        }
    }
    let mut kept_names = Vec::new();
    for name in &request.failed {
        if let Some(kept) = keep_previous(name, request.previous.as_ref(), output).await? {
            kept_names.push(name.clone());
            planned.push(kept);
        }
    }
    step.done(format!(
        "{} of {} layers reused ({unchanged_count} without fetching){}",
        planned.len() - kept_names.len(),
        environments.len() + request.unchanged.len(),
        if kept_names.is_empty() {
            String::new()
        } else {
            format!(", kept the previous layer of {}", kept_names.join(", "))
        }
    ));

    // 2. Build the rest; each layer goes to the output as soon as it is written.
    let environments = Arc::new(environments);
    let (built, failed) = build_and_send(
        &environments,
        &to_build,
        request.previous_layers,
        options,
        output,
    )
    .await?;
    for (index, key, file, transfer) in built {
        let env = &environments[index];
        let created = rfc3339(env.commit_time);
        let mut descriptor = Descriptor::new(options.codec.media_type(), &file.digest, file.size);
        descriptor.annotations = layer_annotations(&env.inputs, &key, &created, env.pins.as_ref());
        descriptor
            .annotations
            .insert(annotations::CHUNKS.to_owned(), file.chunks.to_annotation());
        planned.push(PlannedLayer {
            report: LayerReport {
                environment: env.inputs.name.clone(),
                branch: env.inputs.branch.clone(),
                revision: env.inputs.revision(),
                digest: file.digest.clone(),
                size: file.size,
                origin: LayerOrigin::Built,
                transfer,
                inputs: Some(env.inputs.clone()),
                pins: env.pins.clone(),
            },
            descriptor,
            diff_id: file.diff_id,
            created,
        });
    }
    // Environments whose layer could not be written keep their previous one too.
    for (name, reason) in failed {
        if let Some(kept) = keep_previous(&name, request.previous.as_ref(), output).await? {
            planned.push(kept);
        }
        failed_reports.push((name, reason));
    }
    if planned.iter().all(|l| l.report.origin == LayerOrigin::Kept) {
        return Err(ImageError::NoEnvironments {
            failed: failed_reports,
        });
    }
    planned.sort_by(|a, b| a.report.environment.cmp(&b.report.environment));

    // 3. Config, then the manifest, last.
    let created = planned
        .iter()
        .map(|l| l.created.clone())
        .max()
        .unwrap_or_else(|| rfc3339(0));
    let names: Vec<&str> = planned
        .iter()
        .map(|l| l.report.environment.as_str())
        .collect();
    let revisions: Vec<String> = planned.iter().map(|l| l.report.revision.clone()).collect();
    let image_annotations = BTreeMap::from([
        (annotations::SOURCE.to_owned(), options.source.clone()),
        (annotations::REVISION.to_owned(), revisions.join(",")),
        (annotations::CREATED.to_owned(), created.clone()),
        (annotations::ENVIRONMENTS.to_owned(), names.join(",")),
    ]);
    let config_layers: Vec<ConfigLayer> = planned
        .iter()
        .map(|l| ConfigLayer {
            diff_id: l.diff_id.clone(),
            created: l.created.clone(),
            created_by: format!(
                "openvox-code: environment {} from {}",
                l.report.environment, l.report.revision
            ),
        })
        .collect();
    let config = ImageConfig::new(
        &created,
        &options.architecture,
        image_annotations.clone(),
        &config_layers,
    )
    .to_bytes();
    let config_digest = sha256_digest(&config);
    let manifest = Manifest::new(
        Descriptor::new(media_types::CONFIG, &config_digest, config.len() as u64),
        planned.iter().map(|l| l.descriptor.clone()).collect(),
        image_annotations,
    )
    .to_bytes();
    let manifest_digest = sha256_digest(&manifest);

    let step = Step::start("publish", &manifest_digest);
    let reference = match output {
        Output::Registry(registry) => {
            let config_blob = BlobSource::Bytes {
                data: Bytes::from(config),
                digest: config_digest,
            };
            registry.ensure_blob(&config_blob, None).await?;
            registry
                .put_manifest(
                    &registry.repository().with_digest(&manifest_digest),
                    &manifest,
                    media_types::MANIFEST,
                )
                .await?;
            for tag in &options.tags {
                registry
                    .put_manifest(
                        &registry.repository().with_tag(tag),
                        &manifest,
                        media_types::MANIFEST,
                    )
                    .await?;
            }
            format!("{}@{manifest_digest}", registry.repository())
        }
        Output::Layout(layout) => {
            let old_blobs = layout.current_blobs();
            layout.put_bytes(&config, &config_digest)?;
            layout.put_bytes(&manifest, &manifest_digest)?;
            let descriptor = Descriptor::new(
                media_types::MANIFEST,
                &manifest_digest,
                manifest.len() as u64,
            );
            layout.write_index(&descriptor, &options.tags)?;
            let mut keep: BTreeSet<String> = planned
                .iter()
                .map(|l| l.descriptor.digest.clone())
                .collect();
            keep.insert(config_digest);
            keep.insert(manifest_digest.clone());
            let removed = layout.remove_unused(&old_blobs, &keep);
            if removed > 0 {
                tracing::debug!(
                    "removed {removed} blobs of the previous image from {}",
                    layout.root().display()
                );
            }
            format!("oci:{}@{manifest_digest}", layout.root().display())
        }
    };
    let (sent_blobs, sent_bytes) =
        planned
            .iter()
            .fold((0, 0), |(n, b), l| match l.report.transfer {
                Transfer::Sent(bytes) => (n + 1, b + bytes),
                _ => (n, b),
            });
    step.done(format!(
        "{} layers ({} built, {} sent, {}){}",
        planned.len(),
        planned
            .iter()
            .filter(|l| l.report.origin == LayerOrigin::Built)
            .count(),
        count(sent_blobs as u64),
        Size(sent_bytes),
        if options.tags.is_empty() {
            String::new()
        } else {
            format!(", tags {}", options.tags.join(", "))
        }
    ));
    Ok(PublishedImage {
        reference,
        manifest_digest,
        layers: planned.into_iter().map(|l| l.report).collect(),
        failed: failed_reports,
        sent_blobs,
        sent_bytes,
    })
}

type Built = (usize, String, super::gzip::Encoded, Transfer);

/// Builds the layers of `to_build` (`(index, key)`) with `options.build_jobs` threads
/// and sends each to `output` as it is ready, `options.upload_jobs` at a time. Returns
/// the sent layers and the environments whose layer could not be written.
async fn build_and_send(
    environments: &Arc<Vec<ImageEnvironment>>,
    to_build: &[(usize, String)],
    previous: Option<Arc<PreviousLayers>>,
    options: &ImageOptions,
    output: &Output,
) -> Result<(Vec<Built>, Vec<(String, String)>), ImageError> {
    if to_build.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let work = tempfile::Builder::new()
        .prefix("openvox-code-layers-")
        .tempdir_in(&options.work_dir)
        .map_err(|e| {
            ImageError::Local(format!(
                "layer directory in {}: {e}",
                options.work_dir.display()
            ))
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<LayerFile, LayerError>)>(
        options.build_jobs.max(1),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let builder = {
        let environments = environments.clone();
        let indices: Vec<usize> = to_build.iter().map(|(i, _)| *i).collect();
        let dir = work.path().to_owned();
        let jobs = options.build_jobs.max(1).min(indices.len());
        let codec = options.codec;
        let stop = stop.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for _ in 0..jobs {
                    scope.spawn(|| {
                        let mut reader = ContentReader::new();
                        loop {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            let Some(&index) = indices.get(next.fetch_add(1, Ordering::SeqCst))
                            else {
                                break;
                            };
                            let env = &environments[index];
                            // Read (or downloaded) while the other threads compress.
                            let chunks = previous
                                .as_ref()
                                .and_then(|p| runtime.block_on(p.chunks(&env.inputs.name, codec)));
                            let step = Step::start("layer", &env.inputs.name);
                            let result = write_layer_file(
                                &env.inputs.name,
                                &env.tree,
                                &mut reader,
                                Packing {
                                    codec,
                                    previous: chunks.clone(),
                                },
                                &dir,
                            );
                            match &result {
                                Ok(file) => step.done(format!(
                                    "{} files, {} -> {} {}{}",
                                    count(env.tree.stats().files),
                                    Size(file.encoded.uncompressed_size),
                                    Size(file.encoded.size),
                                    short(&file.encoded.digest),
                                    copied_chunks(chunks.as_deref(), &file.encoded)
                                )),
                                Err(e) => step.failed(e),
                            }
                            if tx.blocking_send((index, result)).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        })
    };

    let keys: BTreeMap<usize, String> = to_build.iter().cloned().collect();
    let mut sending = tokio::task::JoinSet::new();
    let mut built = Vec::new();
    let mut failed = Vec::new();
    let mut first_error: Option<ImageError> = None;
    while let Some((index, result)) = rx.recv().await {
        let name = environments[index].inputs.name.clone();
        let file = match result {
            Ok(file) => file,
            Err(e) => {
                failed.push((name, e.to_string()));
                continue;
            }
        };
        while sending.len() >= options.upload_jobs.max(1) {
            if let Some(joined) = sending.join_next().await {
                match joined {
                    Ok(Ok(done)) => built.push(done),
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        first_error
                            .get_or_insert(ImageError::Local(format!("a send task stopped: {e}")));
                    }
                }
            }
        }
        if first_error.is_some() {
            break;
        }
        let key = keys.get(&index).cloned().unwrap_or_default();
        let output = output.clone();
        sending.spawn(async move {
            let LayerFile { path, encoded } = file;
            let step = Step::start("send", &name);
            let transfer = match &output {
                Output::Registry(registry) => {
                    let blob = BlobSource::File {
                        path: path.to_path_buf(),
                        digest: encoded.digest.clone(),
                        size: encoded.size,
                    };
                    match registry.ensure_blob(&blob, None).await {
                        Ok(BlobOutcome::Present) => Transfer::Present,
                        Ok(BlobOutcome::Mounted) => Transfer::Mounted,
                        Ok(BlobOutcome::Uploaded(bytes)) => Transfer::Sent(bytes),
                        Err(e) => {
                            step.failed(&e);
                            return Err(ImageError::from(e));
                        }
                    }
                }
                Output::Layout(layout) => {
                    if layout.has_blob(&encoded.digest, encoded.size) {
                        Transfer::Present
                    } else {
                        let layout = layout.clone();
                        let digest = encoded.digest.clone();
                        tokio::task::spawn_blocking(move || layout.put_file(path, &digest))
                            .await
                            .map_err(|e| {
                                ImageError::Local(format!("writing a layer stopped: {e}"))
                            })??;
                        Transfer::Sent(encoded.size)
                    }
                }
            };
            step.done(match transfer {
                Transfer::Present => format!("{} already there", short(&encoded.digest)),
                Transfer::Mounted => format!("{} mounted", short(&encoded.digest)),
                Transfer::Sent(bytes) => {
                    format!("{} sent, {}", short(&encoded.digest), Size(bytes))
                }
            });
            Ok((index, key, encoded, transfer))
        });
    }
    if first_error.is_some() {
        stop.store(true, Ordering::SeqCst);
        rx.close();
    }
    while let Some(joined) = sending.join_next().await {
        match joined {
            Ok(Ok(done)) => built.push(done),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(ImageError::Local(format!("a send task stopped: {e}")));
            }
        }
    }
    // Let the builder threads see the closed channel and end before the directory goes.
    drop(rx);
    builder
        .await
        .map_err(|e| ImageError::Local(format!("the layer builders stopped: {e}")))?;
    drop(work);
    match first_error {
        Some(e) => Err(e),
        None => Ok((built, failed)),
    }
}

/// `, 58 of 61 chunks (57 MB) copied from the previous layer` for the layer's log line.
fn copied_chunks(previous: Option<&ChunkIndex>, encoded: &super::gzip::Encoded) -> String {
    let Some(previous) = previous else {
        return String::new();
    };
    let (chunks, bytes) = previous.reused();
    format!(
        ", {chunks} of {} chunks ({}) copied from the previous layer",
        encoded.chunks.0.len(),
        Size(bytes)
    )
}

/// `sha256:0123456789ab` (first 12 hex digits) for log lines.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}
