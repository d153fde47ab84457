//! Errors of the Pool reconciler, in the same shape as the CodeSource one: a stable
//! [`Error::reason`] for metrics and whether a retry can help.

use openvox_crds::names::reasons;

use crate::retry::ReconcileError;

/// Why a Pool reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, for example `apply Service`.
        action: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Pool lacks a name or namespace (never for objects from the API).
    #[error("Pool has no name or namespace")]
    Unnamed,
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => reasons::KUBE_API_ERROR,
            Self::Unnamed => "Unnamed",
        }
    }

    /// Every API failure may pass; a Pool without a name never gets one.
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Unnamed)
    }
}

/// Maps a `kube::Error` to [`Error::Kube`] with a description of the action.
pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}
