//! The `[workloads]` section of the agent config.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// `false`: manifests are not watched and nothing is reconciled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `File` resources may only be written below these directories. On a
    /// device they are on the data partition, so managed files survive OS
    /// upgrades (and are re-checked on the new slot).
    #[serde(default = "default_roots")]
    pub file_roots: Vec<PathBuf>,
    /// Host directories a `Container` may mount (their subdirectories too).
    #[serde(default = "default_roots")]
    pub mount_sources: Vec<PathBuf>,
    /// Where `SystemdUnit` files are written. `/run/systemd/system` by
    /// default: the OS's own units in /etc and /usr are never touched, and
    /// the agent writes them again from the manifest on /data on every
    /// boot, which is what makes them survive an OS upgrade.
    #[serde(default = "default_unit_dir")]
    pub unit_dir: PathBuf,
    /// How often every resource is observed again to correct drift.
    #[serde(default = "default_drift_interval_secs")]
    pub drift_interval_secs: u64,
    /// Retry of a failed resource: starts at this and doubles up to the max.
    #[serde(default = "default_retry_initial_secs")]
    pub retry_initial_secs: u64,
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
    /// One observe/reconcile/delete of one resource (a container image
    /// pull included) is abandoned, and counts as failed, after this.
    #[serde(default = "default_action_timeout_secs")]
    pub action_timeout_secs: u64,
    /// After starting a unit, how long it must stay active before it
    /// counts as running (a service that exits at once is failed, not ready).
    #[serde(default = "default_unit_settle_ms")]
    pub unit_settle_ms: u64,
    /// The upgrade health gate waits this long after the agent's start for
    /// the first reconcile pass of the current manifest, then counts the
    /// workloads as not converged.
    #[serde(default = "default_gate_timeout_secs")]
    pub gate_timeout_secs: u64,
    /// The podman binary (containers).
    #[serde(default = "default_podman")]
    pub podman: PathBuf,
    /// Account databases for `owner`/`group` names.
    #[serde(default = "default_passwd")]
    pub passwd_file: PathBuf,
    #[serde(default = "default_group")]
    pub group_file: PathBuf,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            file_roots: default_roots(),
            mount_sources: default_roots(),
            unit_dir: default_unit_dir(),
            drift_interval_secs: default_drift_interval_secs(),
            retry_initial_secs: default_retry_initial_secs(),
            retry_max_secs: default_retry_max_secs(),
            action_timeout_secs: default_action_timeout_secs(),
            unit_settle_ms: default_unit_settle_ms(),
            gate_timeout_secs: default_gate_timeout_secs(),
            podman: default_podman(),
            passwd_file: default_passwd(),
            group_file: default_group(),
        }
    }
}

impl WorkloadConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("drift_interval_secs", self.drift_interval_secs),
            ("retry_initial_secs", self.retry_initial_secs),
            ("retry_max_secs", self.retry_max_secs),
            ("action_timeout_secs", self.action_timeout_secs),
            ("gate_timeout_secs", self.gate_timeout_secs),
        ] {
            if v == 0 {
                return Err(format!("workloads.{name} must be at least 1"));
            }
        }
        for root in self.file_roots.iter().chain(&self.mount_sources) {
            let text = root.to_string_lossy();
            if !harmony_protocol::workload::normalised_absolute(&text) {
                return Err(format!("workloads: {text:?} is not an absolute, normalised directory"));
            }
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}
fn default_roots() -> Vec<PathBuf> {
    vec![PathBuf::from("/data/workloads")]
}
fn default_unit_dir() -> PathBuf {
    PathBuf::from("/run/systemd/system")
}
fn default_drift_interval_secs() -> u64 {
    60
}
fn default_retry_initial_secs() -> u64 {
    5
}
fn default_retry_max_secs() -> u64 {
    300
}
fn default_action_timeout_secs() -> u64 {
    600
}
fn default_unit_settle_ms() -> u64 {
    1500
}
fn default_gate_timeout_secs() -> u64 {
    180
}
fn default_podman() -> PathBuf {
    PathBuf::from("/usr/bin/podman")
}
fn default_passwd() -> PathBuf {
    PathBuf::from("/etc/passwd")
}
fn default_group() -> PathBuf {
    PathBuf::from("/etc/group")
}
