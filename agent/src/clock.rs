//! The agent's clock: the shared definition in harmony-protocol.

pub use harmony_protocol::clock::{BootMillis, Clock, FakeClock, SystemClock};
