//! Harmony Fleet operator: bundle store, signed offers, the commit-after-
//! heartbeat coordinator, rollouts that halt themselves, and the CLI behind
//! `harmony-operator`.

pub mod backoff;
pub mod bundle;
// Issue 16: bundles over HTTP with Range.
pub mod bundle_http;
pub mod bus;
pub mod clock;
pub mod commands;
pub mod config;
pub mod coordinator;
pub mod effects;
pub mod error;
pub mod fleet;
pub mod keys;
pub mod leader_status;
pub mod lease;
pub mod logger;
pub mod model;
pub mod provision;
pub mod ratelimit;
pub mod registry;
pub mod serve;
pub mod signer;
pub mod store;
pub mod writer;
// Issue 13: the web dashboard.
pub mod dashboard;
// Issue 14: zero-touch enrollment.
pub mod enroll;
// Issue 15: workloads on the device.
pub mod workloads;

pub use config::Config;
pub use error::{Error, Result};
pub use serve::run;

// Simulated devices for tests, fleet-sim, the demo and the browser tests.
#[cfg(feature = "sim")]
pub mod sim;
