//! The webhook receiver: Git hosts post push events to
//! `POST /hook/<namespace>/<codesource>`, and a verified push to a watched branch of
//! that CodeSource's repository asks for a head check at once.
//!
//! - [`signature`]: who sent it and whether they know the secret (pure).
//! - [`payload`]: what the body says: ping, push of a branch, or nothing for us (pure).
//! - [`matching`]: whether the push concerns the CodeSource (pure).
//! - [`server`]: the HTTP server and the one side effect, the
//!   `openvox.voxpupuli.org/checkRequestedAt` annotation.
//!
//! Why an annotation and not `requestedAt`: `requestedAt` is the manual trigger and
//! always builds; a push only warrants a look at the heads (a build follows when they
//! moved). Why an annotation and not an in-process channel: with leader election the
//! Service sends hooks to any replica, and only the annotation reaches the leader.

pub mod matching;
pub mod payload;
pub mod server;
pub mod signature;

pub use server::{MAX_BODY_BYTES, WebhookState, router, serve};
