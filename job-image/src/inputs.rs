//! What goes into one environment (branch, commit, modules) and the digest over it that
//! decides whether existing output can be reused. A leaf: the modules that build
//! environments, compare them with a previous build and write them all read it.

use openvox_crds::codesource::{EnvironmentRecord, ModuleRecord};
use sha2::{Digest, Sha256};

use crate::forge::hex;

/// Version of the way trees are assembled. Part of every environment's input digest, so
/// a change here never reuses output built the old way.
pub const FORMAT_VERSION: u32 = 1;

/// Everything that went into one environment. Its digest decides whether an existing
/// output can be reused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnvironmentInputs {
    /// Environment name.
    pub name: String,
    /// The branch; for a CodeConfig's static environment, its `ref` as written.
    pub branch: String,
    /// For a static environment, the name its `follow_branch` modules follow (its own
    /// name; see [`crate::branches::EnvironmentPlan::follows`]). Not hashed: a static
    /// environment's CodeConfig digest already says it is static, and its name is hashed.
    #[serde(skip)]
    pub follows: Option<String>,
    /// Commit of the branch.
    pub commit: String,
    /// Modules in install-path order.
    pub modules: Vec<ModuleRecord>,
    /// Digest of what the CodeConfig contributed to the modules' declarations (which
    /// module files, which mirrors), when modules come from openvox-code's module files:
    /// with the commit it fixes every declaration, including install paths the module
    /// records do not show. Left out for a Puppetfile, so those digests stay as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_config: Option<String>,
}

impl EnvironmentInputs {
    /// The branch name `:control_branch` and `follow_branch` modules follow.
    pub fn follows(&self) -> &str {
        self.follows.as_deref().unwrap_or(&self.branch)
    }

    /// `<branch>@sha1:<commit>`.
    pub fn revision(&self) -> String {
        format!("{}@sha1:{}", self.branch, self.commit)
    }

    /// SHA-256 (hex) over the format version and these inputs.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(format!(
            "openvox-code environment format {FORMAT_VERSION}\n"
        ));
        hasher.update(serde_json::to_vec(self).unwrap_or_default());
        hex(&hasher.finalize())
    }

    /// The record for `status.lastBuild.environments` (modules in install-path order).
    pub fn to_record(&self, layer_digest: Option<String>) -> EnvironmentRecord {
        EnvironmentRecord {
            name: self.name.clone(),
            branch: self.branch.clone(),
            revision: self.revision(),
            layer_digest,
            modules: self.modules.clone(),
            floating: Vec::new(),
        }
    }
}
