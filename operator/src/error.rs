//! The operator's error type: one enum, every variant says what failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("cannot reach NATS at {url}: {detail} (is nats-server running there? see [nats] url in the config)")]
    Unreachable { url: String, detail: String },
    #[error("key file {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("{path} is not a RAUC bundle: {detail}")]
    NotABundle { path: PathBuf, detail: String },
    #[error("bundle {0} not found")]
    NoSuchBundle(String),
    #[error("bundle {bundle} is used by rollout {rollout}")]
    BundleInUse { bundle: String, rollout: String },
    #[error("bundle {0} already exists with different content")]
    BundleExists(String),
    #[error("rollout {0} not found")]
    NoSuchRollout(String),
    #[error("device {0} not found")]
    NoSuchDevice(String),
    #[error("device {device} is {status}, not active")]
    NotActive { device: String, status: &'static str },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("data in KV key {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("command failed on the device: {0}")]
    Device(String),
    #[error("workload manifest {path}: {detail}")]
    Manifest { path: PathBuf, detail: String },
    /// Some devices of a multi-device command failed (each was reported);
    /// the others went ahead.
    #[error("{failed} of {total} device(s) failed")]
    PartlyFailed { failed: usize, total: usize },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
