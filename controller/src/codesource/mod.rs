//! The CodeSource controller: schedules, head checks, worker Jobs, digest into Config.

pub mod config;
pub mod controller;
pub mod decide;
pub mod floating;
pub mod forge;
pub mod heads;
pub mod job;
pub mod memory;
pub mod names;
pub mod rbac;
pub mod reconcile;
pub mod rollout;
pub mod schedule;
pub mod servers;
pub mod shared;
pub mod status;
pub mod validate;
pub mod validator;
pub mod worker_defaults;

pub use controller::{Settings, run};
