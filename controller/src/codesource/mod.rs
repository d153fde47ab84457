//! The CodeSource controller: schedules, head checks, worker Jobs, digest into Config.

pub mod decide;
pub mod heads;
pub mod job;
pub mod names;
pub mod schedule;
pub mod config;
pub mod rbac;
