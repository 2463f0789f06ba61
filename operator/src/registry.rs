//! The fleet registry: what each device last reported, and whether it is
//! online, stale or offline by the configured thresholds.
//!
//! Trust: a device's identity is the key of its heartbeat (its credentials
//! allow it to write that one key only), never the payload; its labels are
//! the operator's own, from the provisioning record `device.<id>` written by
//! `init --device`, never what the device reports.

use crate::config::FleetConfig;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::Heartbeat;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Online,
    Stale,
    Offline,
}

pub fn presence(last_seen: UnixMillis, now: UnixMillis, cfg: &FleetConfig) -> Presence {
    let age = now.saturating_since(last_seen);
    if age <= cfg.stale_after_secs * 1000 {
        Presence::Online
    } else if age <= cfg.offline_after_secs * 1000 {
        Presence::Stale
    } else {
        Presence::Offline
    }
}

/// One row of `devices list`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    pub device_id: String,
    pub presence: Presence,
    pub os_version: Option<String>,
    pub agent_version: String,
    pub booted_slot: Option<String>,
    pub boot_id: String,
    pub health: harmony_protocol::HealthStatus,
    pub phase: &'static str,
    /// The device's report that its upgrade record and the bootloader's
    /// state disagree (it may not run what was committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_mismatch: Option<String>,
    pub last_seen: UnixMillis,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl DeviceRow {
    /// `labels`: the operator's provisioning record of the device.
    /// Presence and `last_seen` come from when the server stored the
    /// heartbeat, not from the device's clock.
    pub fn from_heartbeat(hb: &StoredHeartbeat, labels: &Labels, now: UnixMillis, cfg: &FleetConfig) -> Self {
        Self {
            device_id: hb.device_id.to_string(),
            presence: presence(hb.stored_at, now, cfg),
            os_version: hb.os_version.clone(),
            agent_version: hb.agent_version.clone(),
            booted_slot: hb.booted_slot.clone(),
            boot_id: hb.boot_id.clone(),
            health: hb.health.status,
            phase: hb.upgrade.phase.name(),
            boot_mismatch: hb.upgrade.boot_mismatch.as_ref().map(ToString::to_string),
            last_seen: hb.stored_at,
            labels: labels.clone(),
        }
    }
}

pub type Labels = std::collections::BTreeMap<String, String>;

/// `label=value` (or just `label`) selector match against the operator's labels.
pub fn matches_selector(labels: &Labels, selector: &str) -> bool {
    match selector.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(selector),
    }
}

/// A heartbeat as the server stored it. The device's own times (`sent_at`,
/// the upgrade status's `since`) are on the device's clock, which on a Pi
/// without RTC can be years off or step at any moment; whether evidence is
/// fresh and which of two heartbeats is newer is judged on the server's
/// side instead: its KV revision (the order of writes) and the time it
/// stored the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHeartbeat {
    pub heartbeat: Heartbeat,
    /// KV revision of the entry: later writes have higher revisions.
    pub revision: u64,
    /// When the server stored the entry (server clock).
    pub stored_at: UnixMillis,
}

impl std::ops::Deref for StoredHeartbeat {
    type Target = Heartbeat;
    fn deref(&self) -> &Heartbeat {
        &self.heartbeat
    }
}

/// The server's time of a KV entry, in the wire's unit (before 1970: 0).
fn stored_at(entry: &async_nats::jetstream::kv::Entry) -> UnixMillis {
    UnixMillis(u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// The heartbeat of a KV entry, if it decodes and speaks for its key's device.
pub fn stored_heartbeat(entry: &async_nats::jetstream::kv::Entry) -> Result<StoredHeartbeat, BadHeartbeat> {
    Ok(StoredHeartbeat {
        heartbeat: heartbeat_of_key(&entry.key, &entry.value)?,
        revision: entry.revision,
        stored_at: stored_at(entry),
    })
}

/// Why a heartbeat entry is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHeartbeat {
    #[error("undecodable: {0}")]
    Undecodable(String),
    #[error("its payload names another device, {0}")]
    OtherDevice(String),
}

/// The heartbeat stored under `key`, if it decodes and speaks for that key's device.
pub fn heartbeat_of_key(key: &str, value: &[u8]) -> Result<Heartbeat, BadHeartbeat> {
    let hb: Heartbeat = serde_json::from_slice(value).map_err(|e| BadHeartbeat::Undecodable(e.to_string()))?;
    if hb.device_id.as_str() != key {
        return Err(BadHeartbeat::OtherDevice(hb.device_id.to_string()));
    }
    Ok(hb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_thresholds() {
        let cfg = FleetConfig { stale_after_secs: 30, offline_after_secs: 120 };
        let now = UnixMillis(1_000_000);
        assert_eq!(presence(UnixMillis(1_000_000 - 30_000), now, &cfg), Presence::Online);
        assert_eq!(presence(UnixMillis(1_000_000 - 30_001), now, &cfg), Presence::Stale);
        assert_eq!(presence(UnixMillis(1_000_000 - 120_001), now, &cfg), Presence::Offline);
        assert_eq!(presence(UnixMillis(2_000_000), now, &cfg), Presence::Online, "clock skew is online");
    }

    fn stored(f: impl FnOnce(&mut Heartbeat)) -> StoredHeartbeat {
        let mut heartbeat: Heartbeat = serde_json::from_str(include_str!("../../protocol/tests/data/heartbeat.json"))
            .expect("the protocol's heartbeat fixture");
        f(&mut heartbeat);
        StoredHeartbeat { heartbeat, revision: 7, stored_at: UnixMillis(1_000_000) }
    }

    /// Presence and "last seen" are the server's store time: a device whose
    /// clock is in 1970 is online when it just wrote.
    #[test]
    fn a_row_is_judged_on_the_store_time_and_shows_a_boot_mismatch() {
        let cfg = FleetConfig { stale_after_secs: 30, offline_after_secs: 120 };
        let hb = stored(|h| {
            h.sent_at = UnixMillis(0);
            h.upgrade.boot_mismatch = Some(harmony_protocol::upgrade::BootMismatch::NotOnCommittedSlot {
                committed: "B".into(),
                booted: "A".into(),
            });
        });
        let row = DeviceRow::from_heartbeat(&hb, &Labels::new(), UnixMillis(1_000_500), &cfg);
        assert_eq!(row.presence, Presence::Online);
        assert_eq!(row.last_seen, UnixMillis(1_000_000));
        assert_eq!(row.boot_mismatch.as_deref(), Some("upgrade committed to slot B but the device booted slot A"));
        let plain = DeviceRow::from_heartbeat(&stored(|_| {}), &Labels::new(), UnixMillis(1_000_500), &cfg);
        assert_eq!(plain.boot_mismatch, None);
    }
}
