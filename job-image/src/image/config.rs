//! The OCI image configuration: `diff_ids` of the layers, labels, one history entry per
//! environment, and times taken from commits, never from the clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `config` section: only labels; the image is mounted as a volume, never run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// `application/vnd.oci.image.config.v1+json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// One layer as the config sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLayer {
    pub diff_id: String,
    /// RFC 3339 time of the environment's commit.
    pub created: String,
    /// What made the layer, for `skopeo inspect --config` readers.
    pub created_by: String,
}

impl ImageConfig {
    /// The config of an image with `layers` in order.
    pub fn new(
        created: &str,
        architecture: &str,
        labels: BTreeMap<String, String>,
        layers: &[ConfigLayer],
    ) -> Self {
        Self {
            created: Some(created.to_owned()),
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            config: RunConfig { labels },
            rootfs: RootFs {
                kind: "layers".to_owned(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history: layers
                .iter()
                .map(|l| History {
                    created: Some(l.created.clone()),
                    created_by: Some(l.created_by.clone()),
                })
                .collect(),
        }
    }

    /// The bytes that are pushed and hashed.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs and string maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a config read back from a registry or a layout.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not an image config: {e}"))
    }
}

/// RFC 3339 in UTC with seconds (`2023-11-14T22:13:20Z`) of `seconds` since the epoch.
pub fn rfc3339(seconds: i64) -> String {
    match jiff::Timestamp::from_second(seconds) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_serialise_in_a_fixed_shape() {
        let layers = [ConfigLayer {
            diff_id: "sha256:dd".into(),
            created: rfc3339(1_700_000_000),
            created_by: "openvox-code environment production".into(),
        }];
        let config = ImageConfig::new(
            "2023-11-14T22:13:20Z",
            "amd64",
            BTreeMap::from([(
                "org.opencontainers.image.source".to_owned(),
                "https://git.example/c.git".to_owned(),
            )]),
            &layers,
        );
        let text = String::from_utf8(config.to_bytes()).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"created":"2023-11-14T22:13:20Z","architecture":"amd64","os":"linux","#,
                r#""config":{"Labels":{"org.opencontainers.image.source":"https://git.example/c.git"}},"#,
                r#""rootfs":{"type":"layers","diff_ids":["sha256:dd"]},"#,
                r#""history":[{"created":"2023-11-14T22:13:20Z","created_by":"openvox-code environment production"}]}"#
            )
        );
        assert_eq!(ImageConfig::parse(text.as_bytes()).unwrap(), config);
    }

    #[test]
    fn times_are_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00Z");
    }
}
