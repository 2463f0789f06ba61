//! The `[upgrade]` section of the agent config.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    /// After booting a freshly installed slot, how long to wait for the
    /// operator's commit before marking the slot bad and rebooting back.
    #[serde(default = "default_commit_deadline_secs")]
    pub commit_deadline_secs: u64,
    /// Offers for larger bundles are refused before anything is downloaded.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: u64,
    /// systemd units that must be active for the new system to count as healthy.
    #[serde(default)]
    pub health_units: Vec<String>,
    /// Executable checks (one file each); any non-zero exit is unhealthy.
    #[serde(default = "default_health_checks_dir")]
    pub health_checks_dir: PathBuf,
    #[serde(default = "default_health_check_timeout_secs")]
    pub health_check_timeout_secs: u64,
    /// How often the checks run outside an upgrade, for the heartbeat's health.
    #[serde(default = "default_health_check_interval_secs")]
    pub health_check_interval_secs: u64,
    /// Pause between reporting `Installed` and rebooting, so the operator
    /// sees the status (and the pre-reboot boot id) before the device goes.
    #[serde(default = "default_reboot_delay_ms")]
    pub reboot_delay_ms: u64,
    /// Let RAUC stream bundles the operator serves over HTTP (no copy on
    /// /data) when the kernel has NBD; off, or without NBD, bundles are
    /// downloaded first, and the status says why.
    #[serde(default = "default_streaming")]
    pub streaming: bool,
    /// Bundle download bandwidth cap; 0 = unlimited. For metered links.
    /// When RAUC streams, the operator's bundle server paces this device's
    /// reads to it (sent as a request header with the token).
    #[serde(default)]
    pub download_max_bytes_per_sec: u64,
    /// Minimum time between progress updates in the status (each one is a heartbeat).
    #[serde(default = "default_progress_interval_ms")]
    pub progress_interval_ms: u64,
    /// Extra CA certificate (PEM) trusted for `https://` bundle URLs, for a
    /// fleet's private CA; the system's CA store is always trusted. RAUC is
    /// handed the same trust when it streams (`http_get::trust_pem`).
    #[serde(default)]
    pub https_ca_file: Option<PathBuf>,
    /// How often the wall clock is compared with boottime to notice a step
    /// (then offers refused for their validity window are judged again).
    #[serde(default = "default_clock_check_interval_ms")]
    pub clock_check_interval_ms: u64,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            commit_deadline_secs: default_commit_deadline_secs(),
            max_bundle_bytes: default_max_bundle_bytes(),
            health_units: Vec::new(),
            health_checks_dir: default_health_checks_dir(),
            health_check_timeout_secs: default_health_check_timeout_secs(),
            health_check_interval_secs: default_health_check_interval_secs(),
            reboot_delay_ms: default_reboot_delay_ms(),
            streaming: default_streaming(),
            download_max_bytes_per_sec: 0,
            progress_interval_ms: default_progress_interval_ms(),
            https_ca_file: None,
            clock_check_interval_ms: default_clock_check_interval_ms(),
        }
    }
}

impl UpgradeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.commit_deadline_secs == 0 {
            return Err("upgrade.commit_deadline_secs must be at least 1".into());
        }
        if self.health_check_interval_secs == 0 {
            return Err("upgrade.health_check_interval_secs must be at least 1".into());
        }
        if self.health_check_timeout_secs == 0 {
            return Err("upgrade.health_check_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

fn default_streaming() -> bool {
    true
}
fn default_commit_deadline_secs() -> u64 {
    300
}
/// Equal to the layer's RAUC `max-bundle-download-size` and agent.toml: an
/// offer RAUC would refuse after the download is refused before it.
fn default_max_bundle_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_health_checks_dir() -> PathBuf {
    PathBuf::from("/etc/harmony/health.d")
}
fn default_health_check_interval_secs() -> u64 {
    60
}
fn default_health_check_timeout_secs() -> u64 {
    30
}
fn default_reboot_delay_ms() -> u64 {
    3000
}
fn default_clock_check_interval_ms() -> u64 {
    5000
}
fn default_progress_interval_ms() -> u64 {
    1000
}
