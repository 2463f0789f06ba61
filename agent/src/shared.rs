//! State shared between the agent's tasks: fixed facts about this boot, and
//! live status that the heartbeat publishes whenever it changes.

use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, Health, Heartbeat, UpgradeStatus, SCHEMA_VERSION};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::watch;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Facts fixed for the lifetime of this agent process.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    pub device_id: DeviceId,
    pub os_version: Option<String>,
    pub compatible: Option<String>,
    pub booted_slot: Option<String>,
    pub boot_id: String,
    pub labels: BTreeMap<String, String>,
    pub started: Instant,
    /// Seconds the kernel had been up when the agent started.
    pub uptime_at_start_secs: u64,
    /// The kernel has NBD, which RAUC streams bundles through.
    pub nbd: bool,
}

impl DeviceFacts {
    pub fn uptime_secs(&self) -> u64 {
        self.uptime_at_start_secs + self.started.elapsed().as_secs()
    }
}

/// Live status: written by the upgrade service, read by heartbeat and
/// command server. `watch` gives both "latest value" and "changed" signals.
#[derive(Debug)]
pub struct StatusBoard {
    pub upgrade: watch::Sender<UpgradeStatus>,
    pub health: watch::Sender<Health>,
    /// False until the upgrade service has restored its record and checked
    /// it against RAUC. Until then `upgrade` holds a placeholder `idle`
    /// that must not go out: after a fallback it would hide the rollback.
    upgrade_restored: watch::Sender<bool>,
    heartbeat_seq: AtomicU64,
}

impl StatusBoard {
    /// `upgrade_restored`: whether `upgrade` is already the real status
    /// (no upgrade service will run) or a placeholder the upgrade service
    /// replaces once it has read the record.
    pub fn new(upgrade: UpgradeStatus, health: Health, upgrade_restored: bool) -> Self {
        Self {
            upgrade: watch::Sender::new(upgrade),
            health: watch::Sender::new(health),
            upgrade_restored: watch::Sender::new(upgrade_restored),
            heartbeat_seq: AtomicU64::new(0),
        }
    }

    /// Called by the upgrade service once `upgrade` holds the restored status.
    pub fn mark_upgrade_restored(&self) {
        self.upgrade_restored.send_replace(true);
    }

    /// Resolves once the upgrade status is real (immediately if it already is).
    pub async fn upgrade_restored(&self) {
        let mut rx = self.upgrade_restored.subscribe();
        // Err only if the sender is gone, which the board itself owns.
        let _ = rx.wait_for(|restored| *restored).await;
    }

    /// The next heartbeat to send; advances the sequence number.
    pub fn next_heartbeat(&self, facts: &DeviceFacts, now: UnixMillis) -> Heartbeat {
        let seq = self.heartbeat_seq.fetch_add(1, Ordering::Relaxed);
        self.heartbeat(facts, now, seq)
    }

    /// What the agent would report now (for `status`), without counting as a
    /// sent heartbeat.
    pub fn current_heartbeat(&self, facts: &DeviceFacts, now: UnixMillis) -> Heartbeat {
        self.heartbeat(facts, now, self.heartbeat_seq.load(Ordering::Relaxed))
    }

    fn heartbeat(&self, facts: &DeviceFacts, now: UnixMillis, seq: u64) -> Heartbeat {
        Heartbeat {
            schema: SCHEMA_VERSION,
            device_id: facts.device_id.clone(),
            agent_version: AGENT_VERSION.to_string(),
            os_version: facts.os_version.clone(),
            compatible: facts.compatible.clone(),
            booted_slot: facts.booted_slot.clone(),
            boot_id: facts.boot_id.clone(),
            uptime_secs: facts.uptime_secs(),
            health: self.health.borrow().clone(),
            upgrade: self.upgrade.borrow().clone(),
            labels: facts.labels.clone(),
            seq,
            sent_at: now,
        }
    }
}
