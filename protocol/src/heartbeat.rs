//! The heartbeat each agent writes to [`crate::names::HEARTBEAT_BUCKET`].
//!
//! The operator commits an upgrade only on the evidence in a heartbeat, so it
//! carries everything that evidence needs: versions, booted slot, boot id,
//! health and the upgrade phase.

use crate::time::UnixMillis;
use crate::{DeviceId, UpgradeStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema: u32,
    pub device_id: DeviceId,
    /// Version of the running `harmony-agent` binary.
    pub agent_version: String,
    /// OS (bundle) version: `VERSION_ID` from `/etc/os-release`.
    pub os_version: Option<String>,
    /// RAUC compatible string of this device, if RAUC answered.
    pub compatible: Option<String>,
    /// RAUC boot name of the booted slot (`A`/`B`), if RAUC answered.
    pub booted_slot: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`: changes on every boot.
    pub boot_id: String,
    pub uptime_secs: u64,
    pub health: Health,
    pub upgrade: UpgradeStatus,
    /// Labels for rollout selectors (`site=office`, ...), from the agent config.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Per-boot counter of heartbeats sent; lets the operator order them.
    pub seq: u64,
    pub sent_at: UnixMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Every configured check passed.
    Healthy,
    /// At least one check failed.
    Unhealthy,
    /// Checks have not run yet on this boot.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Names of the failed checks, with a short reason each.
    #[serde(default)]
    pub failed_checks: Vec<String>,
}

impl Health {
    pub fn unknown() -> Self {
        Self { status: HealthStatus::Unknown, failed_checks: Vec::new() }
    }
    pub fn healthy() -> Self {
        Self { status: HealthStatus::Healthy, failed_checks: Vec::new() }
    }
}
