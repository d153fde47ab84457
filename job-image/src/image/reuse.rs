//! Layer reuse: every layer carries, as annotations on its descriptor in the manifest,
//! the environment it holds and a key over everything that went into it (the
//! environment's inputs: branch, commit, modules, tree format; its commit time; the
//! layer format). A new build takes the layer of an environment whose key is unchanged
//! from the previous image as it is, digest and `diff_id` included, without fetching
//! or rebuilding it.
//!
//! Only the previous manifest and config are read (two small documents). The `diff_id`
//! comes from the config, paired with the layer by position, as the image spec does.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::codec::Codec;
use super::config::ImageConfig;
use super::gzip::sha256_digest;
use super::manifest::{Descriptor, Manifest};
use super::{LAYER_FORMAT_VERSION, annotations};
use crate::forge::hex;
use crate::inputs::EnvironmentInputs;

/// The reuse key of an environment's layer: SHA-256 (hex) over the layer format, the
/// compressor, the commit time and the environment's input digest (which covers its
/// name, branch, commit, modules and the tree format).
pub fn inputs_key(inputs: &EnvironmentInputs, commit_time: i64, codec: Codec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "openvox-code layer format {LAYER_FORMAT_VERSION}\n{}\nmtime {commit_time}\ninputs {}\n",
        codec.key(),
        inputs.digest()
    ));
    hex(&hasher.finalize())
}

/// A layer of the previous image with what its annotations say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousLayer {
    pub environment: String,
    pub branch: String,
    pub revision: String,
    /// The reuse key it was built with.
    pub inputs_key: String,
    /// Commit time (RFC 3339) as recorded.
    pub created: String,
    /// Its descriptor, annotations included.
    pub descriptor: Descriptor,
    pub diff_id: String,
}

/// The previous image, as far as reuse needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousImage {
    /// Where it was read from (a registry reference or a layout directory), for logs.
    pub origin: String,
    /// The repository its blobs live in (`host/path`), when it came from a registry:
    /// the source of cross-repository mounts.
    pub repository: Option<String>,
    pub manifest_digest: String,
    /// Layers built by openvox-code, by environment name.
    pub layers: BTreeMap<String, PreviousLayer>,
}

/// A previous image that cannot be used (the build then starts from scratch).
#[derive(Debug, thiserror::Error)]
#[error("previous image {origin}: {reason}")]
pub struct PreviousImageError {
    pub origin: String,
    pub reason: String,
}

impl PreviousImage {
    /// Reads the manifest and the config of an image. Checks the config's digest and
    /// that it has one `diff_id` per layer; layers without our annotations are ignored.
    pub fn from_documents(
        origin: &str,
        repository: Option<String>,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
    ) -> Result<Self, PreviousImageError> {
        let error = |reason: String| PreviousImageError {
            origin: origin.to_owned(),
            reason,
        };
        let manifest = Manifest::parse(manifest_bytes).map_err(error)?;
        let config_digest = sha256_digest(config_bytes);
        if config_digest != manifest.config.digest {
            return Err(error(format!(
                "config has digest {config_digest}, the manifest says {}",
                manifest.config.digest
            )));
        }
        let config = ImageConfig::parse(config_bytes).map_err(error)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(error(format!(
                "{} layers but {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = BTreeMap::new();
        for (descriptor, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let get = |key: &str| descriptor.annotations.get(key).cloned();
            let (Some(environment), Some(inputs_key)) =
                (get(annotations::ENVIRONMENT), get(annotations::INPUTS))
            else {
                continue;
            };
            if Codec::of_media_type(&descriptor.media_type).is_none() {
                continue;
            }
            layers.insert(
                environment.clone(),
                PreviousLayer {
                    environment,
                    branch: get(annotations::BRANCH).unwrap_or_default(),
                    revision: get(annotations::LAYER_REVISION).unwrap_or_default(),
                    inputs_key,
                    created: get(annotations::LAYER_CREATED).unwrap_or_default(),
                    descriptor: descriptor.clone(),
                    diff_id: diff_id.clone(),
                },
            );
        }
        Ok(Self {
            origin: origin.to_owned(),
            repository,
            manifest_digest: sha256_digest(manifest_bytes),
            layers,
        })
    }

    /// The layer of `environment` if it was built from the same inputs.
    pub fn reusable(&self, environment: &str, inputs_key: &str) -> Option<&PreviousLayer> {
        self.layers
            .get(environment)
            .filter(|l| l.inputs_key == inputs_key)
    }

    /// The layer of `environment`, whatever it was built from.
    pub fn layer_of(&self, environment: &str) -> Option<&PreviousLayer> {
        self.layers.get(environment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::config::ConfigLayer;
    use crate::image::media_types;
    use openvox_crds::codesource::ModuleRecord;

    fn inputs(commit: &str) -> EnvironmentInputs {
        EnvironmentInputs {
            name: "production".into(),
            branch: "production".into(),
            follows: None,
            commit: commit.repeat(40),
            code_config: None,
            modules: vec![ModuleRecord {
                name: "stdlib".into(),
                source: "puppetlabs-stdlib".into(),
                version: "9.6.0".into(),
                checksum: None,
            }],
        }
    }

    #[test]
    fn keys_change_with_inputs_and_time_only() {
        let a = inputs_key(&inputs("a"), 100, Codec::Gzip);
        assert_eq!(a, inputs_key(&inputs("a"), 100, Codec::Gzip));
        assert_eq!(a.len(), 64);
        assert_ne!(a, inputs_key(&inputs("b"), 100, Codec::Gzip));
        assert_ne!(a, inputs_key(&inputs("a"), 101, Codec::Gzip));
        let mut other_module = inputs("a");
        other_module.modules[0].version = "9.7.0".into();
        assert_ne!(a, inputs_key(&other_module, 100, Codec::Gzip));
        assert_ne!(a, inputs_key(&inputs("a"), 100, Codec::Zstd));
    }

    fn documents(layers: &[(&str, &str)]) -> (Vec<u8>, Vec<u8>) {
        let mut descriptors = Vec::new();
        let mut config_layers = Vec::new();
        for (i, (env, key)) in layers.iter().enumerate() {
            let mut d = Descriptor::new(media_types::LAYER_GZIP, &format!("sha256:{i:064}"), 10);
            if !env.is_empty() {
                d.annotations
                    .insert(annotations::ENVIRONMENT.into(), (*env).into());
                d.annotations
                    .insert(annotations::INPUTS.into(), (*key).into());
                d.annotations
                    .insert(annotations::BRANCH.into(), (*env).into());
            }
            descriptors.push(d);
            config_layers.push(ConfigLayer {
                diff_id: format!("sha256:d{i:063}"),
                created: "1970-01-01T00:00:00Z".into(),
                created_by: String::new(),
            });
        }
        let config = ImageConfig::new(
            "1970-01-01T00:00:00Z",
            "amd64",
            BTreeMap::new(),
            &config_layers,
        )
        .to_bytes();
        let manifest = Manifest::new(
            Descriptor::new(
                media_types::CONFIG,
                &sha256_digest(&config),
                config.len() as u64,
            ),
            descriptors,
            BTreeMap::new(),
        )
        .to_bytes();
        (manifest, config)
    }

    #[test]
    fn layers_are_found_by_environment_and_key() {
        let (manifest, config) = documents(&[("production", "k1"), ("", ""), ("staging", "k2")]);
        let previous = PreviousImage::from_documents(
            "reg/repo:latest",
            Some("reg/repo".into()),
            &manifest,
            &config,
        )
        .unwrap();
        assert_eq!(
            previous.layers.len(),
            2,
            "the layer without annotations is ignored"
        );
        let staging = previous.reusable("staging", "k2").unwrap();
        assert_eq!(staging.descriptor.digest, format!("sha256:{:064}", 2));
        assert_eq!(
            staging.diff_id,
            format!("sha256:d{:063}", 2),
            "diff_id paired by position"
        );
        assert!(previous.reusable("staging", "k1").is_none());
        assert!(previous.reusable("feature", "k2").is_none());
        assert!(previous.layer_of("production").is_some());
        assert_eq!(previous.manifest_digest, sha256_digest(&manifest));
    }

    #[test]
    fn inconsistent_documents_are_refused() {
        let (manifest, config) = documents(&[("production", "k1")]);
        let mut tampered = config.clone();
        tampered.push(b' ');
        let err = PreviousImage::from_documents("x", None, &manifest, &tampered).unwrap_err();
        assert!(err.to_string().contains("config has digest"), "{err}");
        let (_, two_layer_config) = documents(&[("a", "1"), ("b", "2")]);
        let mut manifest_doc = Manifest::parse(&manifest).unwrap();
        manifest_doc.config.digest = sha256_digest(&two_layer_config);
        let err =
            PreviousImage::from_documents("x", None, &manifest_doc.to_bytes(), &two_layer_config)
                .unwrap_err();
        assert!(err.to_string().contains("1 layers but 2 diff_ids"), "{err}");
    }
}
