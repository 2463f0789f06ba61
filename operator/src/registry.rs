//! The fleet registry: what each device last reported, and whether it is
//! online, stale or offline by the configured thresholds.

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
    pub last_seen: UnixMillis,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl DeviceRow {
    pub fn from_heartbeat(hb: &Heartbeat, now: UnixMillis, cfg: &FleetConfig) -> Self {
        Self {
            device_id: hb.device_id.to_string(),
            presence: presence(hb.sent_at, now, cfg),
            os_version: hb.os_version.clone(),
            agent_version: hb.agent_version.clone(),
            booted_slot: hb.booted_slot.clone(),
            boot_id: hb.boot_id.clone(),
            health: hb.health.status,
            phase: hb.upgrade.phase.name(),
            last_seen: hb.sent_at,
            labels: hb.labels.clone(),
        }
    }
}

/// `label=value` selector match.
pub fn matches_selector(hb: &Heartbeat, selector: &str) -> bool {
    match selector.split_once('=') {
        Some((k, v)) => hb.labels.get(k).is_some_and(|x| x == v),
        None => hb.labels.contains_key(selector),
    }
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
}
