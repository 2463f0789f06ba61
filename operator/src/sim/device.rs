//! One simulated device: its state and what it answers to an offer, a
//! reboot and a commit. Pure state, no I/O: [`super::SimFleet`] carries the
//! messages.

use harmony_protocol::time::UnixMillis;
use harmony_protocol::{
    DeviceId, FailureReason, Health, HealthStatus, Heartbeat, RollbackReason, UpgradeOffer, UpgradePhase,
    UpgradeStatus, SCHEMA_VERSION,
};
use std::collections::BTreeMap;
use std::time::Instant;

/// What a simulated device does with an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Installs, reboots into the other slot, awaits commit, commits.
    Happy,
    /// Reports `Failed` (install error) instead of rebooting.
    FailInstall,
    /// Reboots, then U-Boot falls back: old version on the old slot, agent reports `RolledBack`.
    RollBack,
    /// Reboots and is never heard of again.
    Vanish,
    /// Does nothing by itself; the test drives heartbeats.
    Manual,
}

#[derive(Debug, Clone)]
pub struct SimState {
    pub id: DeviceId,
    pub os_version: String,
    pub slot: String,
    pub boot_id: String,
    pub boot_no: u64,
    pub seq: u64,
    pub health: HealthStatus,
    /// Reported as the heartbeat's failed checks (device-reported text).
    pub failed_checks: Vec<String>,
    pub upgrade: UpgradeStatus,
    pub labels: BTreeMap<String, String>,
    pub behavior: Behavior,
    pub offers: Vec<UpgradeOffer>,
    /// Sequence number of every verified offer the watch delivered, repeats
    /// included (a re-put of the same offer shows up twice here).
    pub offers_received: Vec<u64>,
    pub commits: Vec<harmony_protocol::command::CommitArgs>,
    /// (boot id, OS version) of every awaiting-commit heartbeat sent: the
    /// only evidence a commit may be based on.
    pub awaiting_sent: Vec<(String, String)>,
    /// Commits that no awaiting-commit heartbeat of this device justified.
    pub unjustified_commits: Vec<String>,
    pub awaiting_since: Option<Instant>,
    pub silent: bool,
}

impl SimState {
    pub fn new(id: DeviceId, version: &str, behavior: Behavior) -> Self {
        let boot_id = format!("{id}-boot-0");
        Self {
            id,
            os_version: version.into(),
            slot: "A".into(),
            boot_id,
            boot_no: 0,
            seq: 0,
            health: HealthStatus::Healthy,
            failed_checks: Vec::new(),
            upgrade: UpgradeStatus::idle(UnixMillis(0)),
            labels: BTreeMap::new(),
            behavior,
            offers: Vec::new(),
            offers_received: Vec::new(),
            commits: Vec::new(),
            awaiting_sent: Vec::new(),
            unjustified_commits: Vec::new(),
            awaiting_since: None,
            silent: false,
        }
    }

    pub fn heartbeat(&mut self, now: UnixMillis) -> Heartbeat {
        self.seq += 1;
        if self.upgrade.phase == UpgradePhase::AwaitingCommit {
            let evidence = (self.boot_id.clone(), self.os_version.clone());
            if !self.awaiting_sent.contains(&evidence) {
                self.awaiting_sent.push(evidence);
            }
        }
        Heartbeat {
            schema: SCHEMA_VERSION,
            device_id: self.id.clone(),
            agent_version: "sim".into(),
            os_version: Some(self.os_version.clone()),
            compatible: Some("harmony-sim".into()),
            booted_slot: Some(self.slot.clone()),
            boot_id: self.boot_id.clone(),
            uptime_secs: 1,
            health: Health { status: self.health, failed_checks: self.failed_checks.clone() },
            upgrade: self.upgrade.clone(),
            labels: self.labels.clone(),
            seq: self.seq,
            sent_at: now,
        }
    }

    pub fn reboot(&mut self) {
        self.boot_no += 1;
        self.boot_id = format!("{}-boot-{}", self.id, self.boot_no);
        self.seq = 0;
    }

    fn other_slot(&self) -> String {
        if self.slot == "A" {
            "B".into()
        } else {
            "A".into()
        }
    }

    fn status(&self, phase: UpgradePhase, offer: &UpgradeOffer, now: UnixMillis) -> UpgradeStatus {
        UpgradeStatus {
            phase,
            offer_seq: Some(offer.offer_seq),
            rollout_id: offer.rollout_id.clone(),
            target_version: Some(offer.target_version.clone()),
            pre_reboot_boot_id: self.upgrade.pre_reboot_boot_id.clone(),
            target_slot: self.upgrade.target_slot.clone(),
            since: now,
            offer_notes: Default::default(),
            boot_mismatch: None,
            transfer: None,
        }
    }

    /// Accept an offer and run the simulated install up to the reboot.
    /// Returns the pre-reboot heartbeats; the device is then silent (rebooting)
    /// until [`SimState::finish_reboot`].
    pub fn run_offer(&mut self, offer: &UpgradeOffer, now: UnixMillis) -> Vec<Heartbeat> {
        let mut out = Vec::new();
        self.upgrade =
            self.status(UpgradePhase::Downloading { bytes_done: 0, bytes_total: offer.bundle.size }, offer, now);
        out.push(self.heartbeat(now));
        if self.behavior == Behavior::FailInstall {
            self.upgrade = self.status(
                UpgradePhase::Failed { reason: FailureReason::InstallFailed { last_error: "simulated".into() } },
                offer,
                now,
            );
            out.push(self.heartbeat(now));
            return out;
        }
        self.upgrade.pre_reboot_boot_id = Some(self.boot_id.clone());
        self.upgrade.target_slot = Some(self.other_slot());
        self.upgrade = self.status(UpgradePhase::Installed, offer, now);
        out.push(self.heartbeat(now));
        self.silent = true;
        out
    }

    /// The first heartbeat of the boot after the upgrade reboot.
    pub fn finish_reboot(&mut self, offer: &UpgradeOffer, now: UnixMillis) -> Option<Heartbeat> {
        if self.behavior == Behavior::FailInstall || self.upgrade.phase != UpgradePhase::Installed {
            return None;
        }
        self.reboot();
        match self.behavior {
            Behavior::RollBack => {
                self.silent = false;
                self.upgrade = self.status(UpgradePhase::RolledBack { reason: RollbackReason::BootFailed }, offer, now);
            }
            Behavior::Vanish => return None,
            _ => {
                self.silent = false;
                self.slot = self.other_slot();
                self.os_version = offer.target_version.clone();
                self.upgrade = self.status(UpgradePhase::AwaitingCommit, offer, now);
                self.awaiting_since = Some(Instant::now());
            }
        }
        Some(self.heartbeat(now))
    }
}
