//! Harmony Fleet device agent.
//!
//! `runner::run` is the whole agent; `main.rs` only parses arguments, loads
//! the config, starts logging and calls it with real effects.

pub mod bus;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod durable;
pub mod enroll;
pub mod file_hash;
pub mod fleet_keys;
pub mod heartbeat;
pub mod identity;
pub mod kv_watch;
pub mod liveness;
pub mod logging;
pub mod rauc;
pub mod reboot;
pub mod runner;
pub mod self_test;
pub mod service_manager;
pub mod shared;
pub mod upgrade;
pub mod workload;

pub use config::AgentConfig;
pub use runner::{run, AgentError, Effects};
