//! openvox-code controller: the CodeSource controller (schedules, head checks, worker
//! Jobs, digest into Config) and the Pool controller, plus the process plumbing they
//! share. `main.rs` only wires these together.

pub mod args;
pub mod client;
pub mod codesource;
pub mod conditions;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod own_writes;
pub mod pool;
pub mod retry;
pub mod tls;
pub mod webhook;
