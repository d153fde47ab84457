//! openvox-operator's kinds that openvox-code reads or patches. Only the fields we use
//! are typed; everything else in those objects is ignored on read and never sent back
//! (patches are server-side applies of just our fields). The CRDs for these kinds
//! belong to openvox-operator and are never generated from these types.

mod certificate;
mod config;
mod server;

pub use certificate::{Certificate, CertificateSpec};
pub use config::{CodeEntry, CodeShape, Config, ConfigSpec};
pub use server::{Server, ServerSpec};
