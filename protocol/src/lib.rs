//! The wire contract between the Harmony agent and operator.
//!
//! This crate is the only place that names NATS subjects, KV buckets,
//! object-store buckets and wire types. It does no I/O and knows nothing of
//! tokio, so both sides (and tests) can depend on it freely.

pub mod bundle_layout;
pub mod clock;
pub mod command;
pub mod device_id;
pub mod enroll;
pub mod heartbeat;
pub mod names;
pub mod permissions;
pub mod signing;
pub mod time;
pub mod upgrade;
pub mod workload;

pub use command::{Command, CommandError, CommandReply, ReplyBody, Unsupported};
pub use device_id::{DeviceId, DeviceIdError};
pub use heartbeat::{Health, HealthStatus, Heartbeat};
pub use signing::{KeyId, SignedEnvelope, SigningError, TrustedKeys};
pub use upgrade::{
    BundleSource, FailureReason, NotedRefusal, OfferNotes, RefusalReason, RollbackReason, Transfer, UpgradeOffer,
    UpgradePhase, UpgradeStatus,
};

/// Version of every wire type defined here. A receiver refuses messages with a
/// newer schema (typed `Unsupported`), and accepts older ones it still knows.
pub const SCHEMA_VERSION: u32 = 1;
