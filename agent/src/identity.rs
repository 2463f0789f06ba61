//! Who and what this device is: device id, boot id, uptime, OS version.

use crate::config::AgentConfig;
use harmony_protocol::DeviceId;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("derived device id is invalid: {0}")]
    Derived(#[from] harmony_protocol::DeviceIdError),
}

fn read_trimmed(path: &Path) -> Result<String, IdentityError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| IdentityError::Read { path: path.to_path_buf(), source })?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(IdentityError::Empty { path: path.to_path_buf() });
    }
    Ok(text)
}

/// The configured device id, or one derived from `/etc/machine-id`.
///
/// The machine id itself is never sent: systemd asks applications to use an
/// application-specific hash of it, so we send `dev-` + 16 hex of
/// SHA-256(tag, machine id).
pub fn device_id(cfg: &AgentConfig) -> Result<DeviceId, IdentityError> {
    if let Some(id) = &cfg.device_id {
        return Ok(id.clone());
    }
    let machine_id = read_trimmed(&cfg.system.machine_id)?;
    Ok(device_id_from_machine_id(&machine_id)?)
}

pub fn device_id_from_machine_id(machine_id: &str) -> Result<DeviceId, harmony_protocol::DeviceIdError> {
    let mut hasher = Sha256::new();
    hasher.update(b"harmony-fleet/device-id/v1\0");
    hasher.update(machine_id.as_bytes());
    let digest = hasher.finalize();
    DeviceId::new(format!("dev-{}", hex::encode(&digest[..8])))
}

pub fn boot_id(path: &Path) -> Result<String, IdentityError> {
    read_trimmed(path)
}

/// `VERSION_ID` (or `VERSION` as a fallback) from an os-release file.
pub fn os_version(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_os_release_version(&text)
}

pub fn parse_os_release_version(text: &str) -> Option<String> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix('=')?;
            let value = value.trim().trim_matches('"').trim_matches('\'');
            (!value.is_empty()).then(|| value.to_string())
        })
    };
    field("VERSION_ID").or_else(|| field("VERSION"))
}

/// Seconds since the kernel booted (`/proc/uptime`), 0 if unreadable.
pub fn kernel_uptime_secs() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()))
        .map(|s| s as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_id_is_stable_valid_and_hides_the_machine_id() {
        let a = device_id_from_machine_id("0123456789abcdef0123456789abcdef").unwrap();
        let b = device_id_from_machine_id("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(a, b);
        assert!(a.as_str().starts_with("dev-") && a.as_str().len() == 20, "{a}");
        assert!(!a.as_str().contains("0123456789abcdef"));
        assert_ne!(a, device_id_from_machine_id("fedcba9876543210fedcba9876543210").unwrap());
    }

    #[test]
    fn os_release_version() {
        assert_eq!(parse_os_release_version("NAME=\"Harmony\"\nVERSION_ID=\"2.0.1\"\n").as_deref(), Some("2.0.1"));
        assert_eq!(parse_os_release_version("VERSION='1.0 (x)'\n").as_deref(), Some("1.0 (x)"));
        assert_eq!(parse_os_release_version("VERSION_ID_LIKE=3\nNAME=x\n"), None);
        assert_eq!(parse_os_release_version("VERSION_ID=\n"), None);
    }
}
