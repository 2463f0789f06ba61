//! Simulated devices speaking the real protocol over a real NATS server:
//! the integration tests script them, `fleet-sim` benchmarks the operator
//! with thousands of them, the demo and the browser tests roll upgrades out
//! to them.
//!
//! ```no_run
//! # async fn f(url: &str, key: ed25519_dalek::VerifyingKey) -> harmony_operator::Result<()> {
//! use harmony_operator::sim::{Behavior, SimFleet, SimState};
//! use harmony_protocol::DeviceId;
//! use std::time::Duration;
//!
//! let fleet = SimFleet::connect(url, key).await?; // the buckets must exist (`init`)
//! fleet.set_install_delay(Duration::from_secs(2)); // download + install + reboot
//! let id = DeviceId::new("pi-1").map_err(|e| harmony_operator::Error::Invalid(e.to_string()))?;
//! let mut pi = SimState::new(id, "1.0", Behavior::Happy);
//! pi.labels.insert("site".into(), "kitchen".into());
//! fleet.add(pi);
//! fleet.start().await?;                                   // offers and commands
//! let beats = fleet.spawn_heartbeats(Duration::from_secs(2)); // every device, spread over the interval
//! # beats.abort(); Ok(()) }
//! ```
//!
//! Behind the `sim` feature (on by default): `cargo build -p
//! harmony-operator --no-default-features` leaves it out of the operator.

mod device;
mod fleet;
pub mod http;

pub use device::{Behavior, SimState};
pub use fleet::{SimFleet, Stats};
