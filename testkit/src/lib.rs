// Test-only crate: failing loudly (panic/expect) is the right behaviour here.
#![allow(clippy::expect_used, clippy::panic)]

//! Helpers for integration tests that run real external components.
//!
//! Each guard starts a real process on this machine (installed by
//! `scripts/setup`) and kills it on drop, so a failing test never leaks a
//! server into the next one.

pub mod dbus;
pub mod nats;
pub mod nats_cluster;
pub mod pki;
pub mod rauc;
pub mod rauc_bundle;
pub mod tools;
pub mod wait;

pub use nats::NatsServer;
pub use nats_cluster::{stream_leader, NatsCluster};
