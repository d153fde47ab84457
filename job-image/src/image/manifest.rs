//! The OCI image manifest and its descriptors, serialised the same way every time
//! (fixed field order, sorted annotation keys, compact JSON), so the manifest digest is
//! a function of the layers, the config and the annotations only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::media_types;

/// A content descriptor: what a manifest or index says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image manifest (`application/vnd.oci.image.manifest.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An OCI manifest of `config` and `layers`.
    pub fn new(
        config: Descriptor,
        layers: Vec<Descriptor>,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        Self {
            schema_version: 2,
            media_type: media_types::MANIFEST.to_owned(),
            config,
            layers,
            annotations,
        }
    }

    /// The bytes that are pushed and hashed.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs and string maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a manifest read back from a registry or a layout: OCI or Docker schema 2.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not an image manifest: {e}"))?;
        if manifest.schema_version != 2 {
            return Err(format!(
                "schemaVersion {} is not 2",
                manifest.schema_version
            ));
        }
        if !manifest.media_type.is_empty()
            && manifest.media_type != media_types::MANIFEST
            && manifest.media_type != media_types::DOCKER_MANIFEST
        {
            return Err(format!(
                "media type {} is not an image manifest",
                manifest.media_type
            ));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_serialise_in_a_fixed_shape() {
        let mut layer = Descriptor::new(media_types::LAYER_GZIP, "sha256:aa", 10);
        layer.annotations.insert("z".into(), "1".into());
        layer.annotations.insert("a".into(), "2".into());
        let manifest = Manifest::new(
            Descriptor::new(media_types::CONFIG, "sha256:cc", 5),
            vec![layer],
            BTreeMap::from([(
                "org.opencontainers.image.created".to_owned(),
                "2023-11-14T22:13:20Z".to_owned(),
            )]),
        );
        let text = String::from_utf8(manifest.to_bytes()).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cc","size":5},"#,
                r#""layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:aa","size":10,"#,
                r#""annotations":{"a":"2","z":"1"}}],"#,
                r#""annotations":{"org.opencontainers.image.created":"2023-11-14T22:13:20Z"}}"#
            )
        );
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), manifest);
    }

    #[test]
    fn foreign_documents_are_not_taken_for_manifests() {
        assert!(Manifest::parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#).is_err());
        assert!(Manifest::parse(br#"{"schemaVersion":1}"#).is_err());
        assert!(Manifest::parse(b"not json").is_err());
    }
}
