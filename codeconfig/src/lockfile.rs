//! `openvox-code.lock`: the commit every module of every environment was built from,
//! so a build can be repeated exactly. Read to pin modules, written (sorted, so the
//! same content always gives the same bytes) after a build.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::checks::de_with;
use crate::envelope;
use crate::error::{Error, ErrorKind};

/// The only lockfile version there is.
pub const LOCKFILE_VERSION: u32 = 1;

/// The usual name of the lockfile in a control repository.
pub const LOCKFILE_NAME: &str = "openvox-code.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    #[serde(deserialize_with = "version")]
    pub version: u32,
    /// When openvox-code wrote the file (it always does); kept as written and only
    /// written back when set, so files from either tool read and round-trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<String>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub environments: BTreeMap<String, LockedEnvironment>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedEnvironment {
    /// The control repository ref the environment was built from.
    #[serde(rename = "ref", default)]
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_repo_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_with::opt_sha",
        skip_serializing_if = "Option::is_none"
    )]
    pub control_repo_sha: Option<String>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub modules: Vec<LockedModule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedModule {
    pub name: String,
    pub git: String,
    /// The ref the module asked for when it was locked (empty for HEAD).
    #[serde(rename = "ref", default)]
    pub reference: String,
    #[serde(deserialize_with = "de_with::sha")]
    pub sha: String,
}

impl Default for Lockfile {
    fn default() -> Self {
        Self::new()
    }
}

impl Lockfile {
    /// An empty lockfile of the current version.
    pub fn new() -> Self {
        Self {
            version: LOCKFILE_VERSION,
            generated_at: None,
            environments: BTreeMap::new(),
        }
    }

    /// Parses a lockfile; `file` names it in errors. Another `version`, a malformed
    /// commit id or one module locked twice in an environment is an error.
    pub fn parse(file: &str, text: &str) -> Result<Self, Error> {
        if envelope::parse_value(file, text)?.is_null() {
            return Err(Error::new(ErrorKind::Schema, file, "empty lockfile").with_key("version"));
        }
        let lockfile: Self = envelope::typed(file, text)?;
        for (name, environment) in &lockfile.environments {
            let mut seen = std::collections::BTreeSet::new();
            for module in &environment.modules {
                if !seen.insert(module.name.as_str()) {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        file,
                        format!("module `{}` is locked twice", module.name),
                    )
                    .with_key(format!("environments.{name}.modules")));
                }
            }
        }
        Ok(lockfile)
    }

    /// The YAML text of the lockfile: environments by name, each one's modules by
    /// name, so two equal lockfiles give the same bytes.
    pub fn to_yaml(&self) -> Result<String, Error> {
        let mut sorted = self.clone();
        for environment in sorted.environments.values_mut() {
            environment.modules.sort_by(|a, b| a.name.cmp(&b.name));
        }
        serde_yaml::to_string(&sorted)
            .map_err(|e| Error::new(ErrorKind::Schema, LOCKFILE_NAME, e.to_string()))
    }

    /// The entry for module `name` of `environment`, if one was locked.
    pub fn module(&self, environment: &str, name: &str) -> Option<&LockedModule> {
        self.environments
            .get(environment)?
            .modules
            .iter()
            .find(|m| m.name == name)
    }
}

/// Checks the version inside the number visitor so the error points at `version:`.
fn version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct VersionVisitor;

    impl Visitor<'_> for VersionVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "lockfile version {LOCKFILE_VERSION}")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            if v == u64::from(LOCKFILE_VERSION) {
                Ok(LOCKFILE_VERSION)
            } else {
                Err(E::custom(format!(
                    "unsupported lockfile version {v} (this reads version {LOCKFILE_VERSION})"
                )))
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!("unsupported lockfile version {v}"))),
            }
        }
    }

    deserializer.deserialize_u64(VersionVisitor)
}
