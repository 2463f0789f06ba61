//! The agent's configuration file (`/etc/harmony/agent.toml` by default).

use crate::upgrade::UpgradeConfig;
use harmony_protocol::DeviceId;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/harmony/agent.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Directory of `*.toml` drop-ins merged over this file in name order.
    /// On devices it is on the data partition: the root filesystem is
    /// replaced by every OS upgrade, so per-device settings (id, server,
    /// credentials) must live where upgrades do not reach.
    pub drop_in_dir: Option<PathBuf>,
    /// Explicit device id; when absent it is derived from the machine id.
    pub device_id: Option<DeviceId>,
    #[serde(default = "default_heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u64,
    /// Persistent, writable directory (on the data partition on devices):
    /// upgrade record, downloads, last accepted offer.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Every `*.pub` file here is a trusted fleet key (one line of hex).
    #[serde(default = "default_fleet_keys_dir")]
    pub fleet_keys_dir: PathBuf,
    /// How long to wait for the first NATS connection before telling
    /// systemd we are ready anyway (the agent keeps retrying in the
    /// background; a device offline at boot must not be restarted in a loop).
    #[serde(default = "default_startup_grace_secs")]
    pub startup_grace_secs: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub nats: NatsConfig,
    #[serde(default)]
    pub rauc: RaucConfig,
    #[serde(default)]
    pub system: SystemPaths,
    #[serde(default)]
    pub upgrade: UpgradeConfig,
    /// Zero-touch enrollment (issue 14): where the boot partition's
    /// enrollment file is and how often to ask again.
    #[serde(default)]
    pub enroll: EnrollConfig,
    /// Workloads (issue 15): typed desired state from the operator.
    #[serde(default)]
    pub workloads: crate::workload::WorkloadConfig,
    /// The file this config was loaded from (not a config key): enrollment
    /// reloads it, drop-ins included, once it has written its drop-in.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[enroll]`: used only by a device that has no credentials configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// The enrollment file written onto the boot (FAT) partition by
    /// `harmony-operator enroll prepare`. Moved to the state dir on start.
    #[serde(default = "default_enroll_import_from")]
    pub import_from: PathBuf,
    /// How long to wait before asking again after `pending`, a busy
    /// operator or an unreachable server.
    #[serde(default = "default_enroll_retry_secs")]
    pub retry_secs: u64,
    /// How long to wait before asking again after a final refusal (the
    /// operator may still accept the device later): slow, never a loop.
    #[serde(default = "default_enroll_refused_retry_secs")]
    pub refused_retry_secs: u64,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        Self {
            import_from: default_enroll_import_from(),
            retry_secs: default_enroll_retry_secs(),
            refused_retry_secs: default_enroll_refused_retry_secs(),
        }
    }
}

fn default_enroll_import_from() -> PathBuf {
    PathBuf::from("/boot/firmware").join(harmony_protocol::enroll::ENROLL_FILE_NAME)
}
fn default_enroll_retry_secs() -> u64 {
    30
}
fn default_enroll_refused_retry_secs() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    /// NATS `.creds` file (user JWT + nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// Alternative to `credentials_file`: a file holding an nkey user seed.
    pub nkey_seed_file: Option<PathBuf>,
    /// PEM file of the CA that signed the servers' certificates (for
    /// `tls://` URLs whose CA is not in the system trust store).
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

/// Where RAUC's D-Bus service is reached.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaucConfig {
    /// D-Bus address of the bus RAUC is on; the system bus when absent.
    pub dbus_address: Option<String>,
}

/// Paths of the kernel/OS facts the agent reports. Overridable so tests can
/// simulate a reboot (a new boot id) without rebooting the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemPaths {
    #[serde(default = "default_os_release")]
    pub os_release: PathBuf,
    #[serde(default = "default_boot_id")]
    pub boot_id: PathBuf,
    /// Where the kernel's NBD support shows (a loaded `nbd` module, the
    /// first NBD device); any one present means RAUC can stream.
    #[serde(default = "default_nbd")]
    pub nbd: Vec<PathBuf>,
    #[serde(default = "default_machine_id")]
    pub machine_id: PathBuf,
}

impl Default for SystemPaths {
    fn default() -> Self {
        Self {
            os_release: default_os_release(),
            boot_id: default_boot_id(),
            nbd: default_nbd(),
            machine_id: default_machine_id(),
        }
    }
}

fn default_heartbeat_interval_secs() -> u64 {
    10
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/data/harmony")
}
fn default_fleet_keys_dir() -> PathBuf {
    PathBuf::from("/etc/harmony/fleet-keys")
}
fn default_startup_grace_secs() -> u64 {
    30
}
fn default_request_timeout_secs() -> u64 {
    10
}
fn default_nbd() -> Vec<PathBuf> {
    vec![PathBuf::from("/sys/module/nbd"), PathBuf::from("/dev/nbd0")]
}
fn default_os_release() -> PathBuf {
    PathBuf::from("/etc/os-release")
}
fn default_boot_id() -> PathBuf {
    PathBuf::from("/proc/sys/kernel/random/boot_id")
}
fn default_machine_id() -> PathBuf {
    PathBuf::from("/etc/machine-id")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config file {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

impl AgentConfig {
    /// Load `path`, then merge every drop-in over it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut table = read_table(path)?;
        let drop_in_dir = table.get("drop_in_dir").and_then(|v| v.as_str()).map(PathBuf::from);
        if let Some(dir) = drop_in_dir {
            for drop_in in drop_ins(&dir)? {
                merge(&mut table, read_table(&drop_in)?);
            }
        }
        let mut cfg = Self::from_table(table, path)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Whether the device has NATS credentials configured (a provisioned
    /// or already enrolled device).
    pub fn has_credentials(&self) -> bool {
        self.nats.credentials_file.is_some() || self.nats.nkey_seed_file.is_some()
    }

    /// Parse one file's text (no drop-ins).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        Self::from_table(table, path)
    }

    fn from_table(table: toml::Table, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = table.try_into().map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        let invalid = |detail: &str| ConfigError::Invalid { path: path.to_path_buf(), detail: detail.to_string() };
        if cfg.nats.urls.is_empty() {
            return Err(invalid("nats.urls must name at least one server"));
        }
        if cfg.heartbeat_interval_secs == 0 {
            return Err(invalid("heartbeat_interval_secs must be at least 1"));
        }
        if cfg.nats.credentials_file.is_some() && cfg.nats.nkey_seed_file.is_some() {
            return Err(invalid("set nats.credentials_file or nats.nkey_seed_file, not both"));
        }
        if cfg.enroll.retry_secs == 0 || cfg.enroll.refused_retry_secs == 0 {
            return Err(invalid("enroll.retry_secs and enroll.refused_retry_secs must be at least 1"));
        }
        cfg.upgrade.validate().map_err(|d| invalid(&d))?;
        cfg.workloads.validate().map_err(|d| invalid(&d))?;
        Ok(cfg)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
}

/// `*.toml` files in `dir`, sorted; a missing directory has none.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir.to_path_buf(), source }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Tables merge key by key (recursively); any other value replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [nats]
        urls = ["nats://127.0.0.1:4222"]
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = AgentConfig::parse(MINIMAL, Path::new("t.toml")).unwrap();
        assert_eq!(cfg.heartbeat_interval_secs, 10);
        assert_eq!(cfg.state_dir, PathBuf::from("/data/harmony"));
        assert!(cfg.device_id.is_none());
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let cases = [
            ("[nats]\nurls = []", "at least one server"),
            ("device_id = \"a.b\"\n[nats]\nurls = [\"x\"]", "device id"),
            ("heartbeat_interval_secs = 0\n[nats]\nurls = [\"x\"]", "at least 1"),
            ("colour = \"red\"\n[nats]\nurls = [\"x\"]", "unknown field"),
            ("", "missing field `nats`"),
            ("[nats]\nurls = [\"x\"]\ncredentials_file = \"a\"\nnkey_seed_file = \"b\"", "not both"),
        ];
        for (text, needle) in cases {
            let err = AgentConfig::parse(text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
    }

    #[test]
    fn drop_ins_merge_over_the_image_config_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("agent.d");
        std::fs::create_dir(&d).unwrap();
        let main = dir.path().join("agent.toml");
        std::fs::write(
            &main,
            format!(
                "drop_in_dir = \"{}\"\nheartbeat_interval_secs = 30\n[nats]\nurls = [\"nats://image-default:4222\"]\n[upgrade]\ncommit_deadline_secs = 300\nmax_bundle_bytes = 7\n",
                d.display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("10-device.toml"), "device_id = \"pi-9\"\n[nats]\nurls = [\"nats://fleet:4222\"]\n")
            .unwrap();
        std::fs::write(d.join("20-test.toml"), "[upgrade]\ncommit_deadline_secs = 20\n").unwrap();
        std::fs::write(d.join("README"), "ignored").unwrap();
        let cfg = AgentConfig::load(&main).unwrap();
        assert_eq!(cfg.device_id.unwrap().as_str(), "pi-9");
        assert_eq!(cfg.nats.urls, vec!["nats://fleet:4222".to_string()]);
        assert_eq!(cfg.heartbeat_interval_secs, 30);
        assert_eq!(cfg.upgrade.commit_deadline_secs, 20);
        assert_eq!(cfg.upgrade.max_bundle_bytes, 7, "sibling keys survive a partial table");

        std::fs::write(d.join("30-bad.toml"), "device_id = [").unwrap();
        let err = AgentConfig::load(&main).unwrap_err().to_string();
        assert!(err.contains("30-bad.toml"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/agent.toml"), "{err}");
    }
}
