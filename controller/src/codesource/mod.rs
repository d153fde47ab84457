//! The CodeSource controller: schedules, head checks, worker Jobs, digest into Config.

pub mod check;
pub mod code_config;
pub mod config;
pub mod context;
pub mod controller;
pub mod decide;
pub mod error;
pub mod floating;
pub mod forge;
pub mod heads;
pub mod job;
pub mod launch;
pub mod memory;
pub mod names;
pub mod notices;
pub mod observe;
pub mod publish;
pub mod rbac;
pub mod reconcile;
pub mod report;
pub mod rollout;
pub mod schedule;
pub mod servers;
pub mod shared;
pub mod status;
pub mod validate;
pub mod validator;
pub mod worker_defaults;

pub use controller::{Settings, run};
