//! The OCI image of a build: environments at the image root, one gzip layer per
//! environment in name order, an OCI config and manifest with times from the commits,
//! published to a registry or written as an OCI image layout.
//!
//! Pipeline: [`layer`] streams each environment's tree through the deterministic
//! [`tar`] writer and the pinned [`gzip`] compressor into a temporary file; [`reuse`]
//! keys every layer by its inputs so an unchanged environment takes its layer from the
//! previous image without being rebuilt; [`config`] and [`manifest`] describe the
//! image; [`push`] uploads only the blobs a registry lacks (after [`auth`] read the
//! registry credentials) and the manifest last; [`layout`] writes an OCI layout
//! directory instead; [`builder`] ties these together, and [`build`] is the `build`
//! command.

pub mod auth;
pub mod build;
pub mod builder;
pub mod chunks;
pub mod codec;
pub mod config;
pub mod gzip;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod push;
pub mod reuse;
pub mod tar;

/// Version of the layer format: the tar layout, the compressor, its level and its
/// chunking. Part of every layer's reuse key, so a change here never reuses a layer
/// built the old way. 2: gzip of independently deflated 1 MiB chunks (one layer on
/// every core). 3: chunks end at entries the entries choose, every entry has the
/// mtime [`LAYER_MTIME`] (so an unchanged file has the same bytes in the next build
/// and its chunk can be copied from the previous layer).
pub const LAYER_FORMAT_VERSION: u32 = 3;

/// mtime of every entry of a layer: 2000-01-01T00:00:00Z. A commit time here would
/// change every entry's header, and so every chunk, at each commit; the commit time is
/// in the layer's and the image's `created` instead.
pub const LAYER_MTIME: i64 = 946_684_800;

/// Most layers an image may have: containerd refuses images with more than 127.
pub const MAX_LAYERS: usize = 127;

/// Media types written and read.
pub mod media_types {
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Accepted when reading a previous image.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
}

/// Annotation and label keys.
pub mod annotations {
    /// Standard: where the code comes from (the control repository, without credentials).
    pub const SOURCE: &str = "org.opencontainers.image.source";
    /// Standard: the revisions built, `<branch>@sha1:<commit>` joined by `,`.
    pub const REVISION: &str = "org.opencontainers.image.revision";
    /// Standard: the newest commit time of the environments (RFC 3339), never the clock.
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// Standard, on OCI layout index entries: the tag.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

    /// On each layer: the environment (directory at the image root) it holds.
    pub const ENVIRONMENT: &str = "org.voxpupuli.openvox-code.environment";
    /// On each layer: the branch it was built from.
    pub const BRANCH: &str = "org.voxpupuli.openvox-code.branch";
    /// On each layer: `<branch>@sha1:<commit>`.
    pub const LAYER_REVISION: &str = "org.voxpupuli.openvox-code.revision";
    /// On each layer: the reuse key (see [`super::reuse::inputs_key`]).
    pub const INPUTS: &str = "org.voxpupuli.openvox-code.inputs";
    /// On each layer: the commit time (RFC 3339).
    pub const LAYER_CREATED: &str = "org.voxpupuli.openvox-code.created";
    /// On each layer: how its modules were declared and what they resolved to
    /// (see `crate::pins`), so the next build can reuse it without fetching its branch.
    pub const PINS: &str = "org.voxpupuli.openvox-code.pins";
    /// On each layer: its chunks, `raw:compressed` sizes joined by `,` (see
    /// [`super::chunks::ChunkTable`]), so the next build can copy unchanged ones.
    pub const CHUNKS: &str = "org.voxpupuli.openvox-code.chunks";
    /// On the manifest and as a label: the environments, in layer order, joined by `,`.
    pub const ENVIRONMENTS: &str = "org.voxpupuli.openvox-code.environments";
}
