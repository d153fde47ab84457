//! Errors of the CodeSource reconciler, one variant per way a reconcile can fail.
//!
//! Each variant has a stable [`Error::reason`] (metrics label, Event reason) and is
//! either permanent (nothing changes until the spec changes: the object is marked
//! `Stalled` and not retried) or transient (retried with backoff). Messages never carry
//! credentials: git URLs are shown without user info, Secret data never appears.

use super::heads::HeadError;
use crate::retry::ReconcileError;

/// Why a CodeSource reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, for example `create Job`.
        action: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The spec cannot work as written (schedule, time zone, timeout, output).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A Secret named by the spec is missing or lacks the keys needed.
    #[error("secret {name:?}: {problem}")]
    Secret {
        /// Name of the Secret.
        name: String,
        /// What is wrong with it (never its content).
        problem: String,
    },
    /// The PersistentVolumeClaim named by `output.claimName` does not exist.
    #[error("PersistentVolumeClaim {0:?} does not exist (output.claimName)")]
    ClaimNotFound(String),
    /// Listing the remote heads failed.
    #[error("listing the remote heads failed: {0}")]
    HeadCheck(#[from] HeadError),
    /// The Config named by `configRef` does not exist.
    #[error("Config {0:?} does not exist")]
    ConfigNotFound(String),
    /// The installed Config CRD has neither shape of `spec.code` we know.
    #[error("cannot tell the shape of Config.spec.code: {0}")]
    ConfigShape(String),
    /// The openvox-code CodeConfig (`spec.modules.codeConfig`) is missing or invalid:
    /// which ConfigMap, and file, line and key.
    #[error("openvox-code CodeConfig: {0}")]
    CodeConfig(String),
    /// The object lacks a name or namespace (never for objects read from the API).
    #[error("object has no name or namespace")]
    Unnamed,
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => openvox_crds::names::reasons::KUBE_API_ERROR,
            Self::InvalidSpec(_) => openvox_crds::names::reasons::INVALID_SPEC,
            Self::Secret { .. } => openvox_crds::names::reasons::SECRET_NOT_FOUND,
            Self::ClaimNotFound(_) => openvox_crds::names::reasons::CLAIM_NOT_FOUND,
            Self::HeadCheck(_) => openvox_crds::names::reasons::GIT_OPERATION_FAILED,
            Self::ConfigNotFound(_) => openvox_crds::names::reasons::CONFIG_NOT_FOUND,
            Self::ConfigShape(_) => "ConfigShapeUnknown",
            Self::CodeConfig(_) => openvox_crds::names::reasons::CODE_CONFIG_INVALID,
            Self::Unnamed => "Unnamed",
        }
    }

    /// Permanent errors stall the object until its generation changes; everything else
    /// is retried with backoff.
    fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidSpec(_) | Self::Unnamed)
    }
}

/// Maps a `kube::Error` to [`Error::Kube`] with a description of the action.
pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_specs_are_permanent_and_head_checks_are_not() {
        assert!(Error::InvalidSpec("bad".into()).is_permanent());
        assert!(!Error::HeadCheck(HeadError::Timeout(5)).is_permanent());
        assert!(!Error::ConfigNotFound("x".into()).is_permanent());
    }

    #[test]
    fn reasons_are_pascal_case_words() {
        for e in [
            Error::InvalidSpec("x".into()),
            Error::Secret {
                name: "s".into(),
                problem: "p".into(),
            },
            Error::ClaimNotFound("code".into()),
            Error::HeadCheck(HeadError::Timeout(1)),
            Error::ConfigNotFound("c".into()),
            Error::CodeConfig("c".into()),
            Error::Unnamed,
        ] {
            let reason = e.reason();
            assert!(
                reason.chars().next().unwrap().is_ascii_uppercase(),
                "{reason}"
            );
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
        }
    }
}
