//! The openvox-code API: our kinds (`CodeSource`, `Pool`), the parts of
//! openvox-operator's kinds we read or patch, and the names shared by the controller,
//! the worker, the chart and the tests.

pub mod codesource;
pub mod crd;
pub mod duration;
pub mod names;
pub mod operator;
pub mod pool;
pub mod reference;
pub mod validator;

pub use codesource::{CodeSource, CodeSourceSpec, CodeSourceStatus};
pub use pool::{Pool, PoolSpec, PoolStatus};
