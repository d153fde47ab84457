//! The openvox-code worker: from a control repository to Puppet environments.
//!
//! Pipeline: [`git`] lists the remote heads and fetches the wanted branches shallow;
//! [`branches`] picks and names them; [`puppetfile`] parses each branch's Puppetfile and
//! resolves its modules (git or [`forge`]), or [`codeconfig`] reads them from
//! openvox-code's module files instead; [`tree`] assembles each environment's
//! deterministic file tree within [`limits`]; [`environments`] runs all that per branch;
//! [`unchanged`] tells from the heads and the [`pins`] recorded on the previous image's
//! layers which environments need no fetch at all;
//! [`pvc`] writes the result into a directory with atomic switches; [`sync`] is the CLI
//! command tying it together, reporting through [`progress`].

pub mod branches;
pub mod cli;
pub mod codeconfig;
pub mod decode;
pub mod environments;
pub mod flights;
pub mod forge;
/// Git (transports, credentials, URL masking), shared with the controller.
pub use openvox_git as git;
pub mod image;
pub mod inputs;
pub mod limits;
pub mod logging;
pub mod module_reuse;
pub mod pins;
pub mod progress;
pub mod puppetfile;
pub mod pvc;
pub mod report;
pub mod status;
pub mod sync;
pub mod tree;
pub mod unchanged;
pub mod validate;
