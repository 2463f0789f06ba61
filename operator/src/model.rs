//! Durable records of the operator: rollouts, per-device jobs, bundles.
//! Everything here is plain data (serde), persisted in the operator KV bucket.

use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, UpgradeOffer};
use serde::{Deserialize, Serialize};

/// A bundle uploaded with `bundle push`, as recorded in the operator bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// Name used on the command line and as the object name.
    pub id: String,
    pub version: String,
    pub compatible: String,
    pub sha256: String,
    pub size: u64,
    pub pushed_at: UnixMillis,
    /// SHA-256 of the bundle's signature block (see
    /// `BundleSource::signature_sha256`); `None` for records written before
    /// it was recorded (pushing the same file again fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_sha256: Option<String>,
}

/// When a wave has gone bad enough that the rollout stops itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum HaltThreshold {
    /// Halt once this many devices of a wave failed, rolled back or timed out.
    Count(u32),
    /// Halt once this percentage of a wave's devices did.
    Percent(u8),
}

impl HaltThreshold {
    pub fn reached(self, bad: usize, wave_size: usize) -> bool {
        match self {
            Self::Count(n) => bad >= n.max(1) as usize,
            Self::Percent(p) => bad > 0 && bad * 100 >= usize::from(p) * wave_size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    pub max_in_flight: usize,
    /// From offer to commit; past it the device counts as timed out.
    pub device_timeout_ms: u64,
    /// From the pre-reboot heartbeat to a heartbeat of the new boot.
    pub reboot_timeout_ms: u64,
    pub halt: HaltThreshold,
    pub allow_downgrade: bool,
    /// Validity of each signed offer.
    pub offer_ttl_ms: u64,
    /// At most this many devices of the rollout download from the
    /// operator's bundle server at once (`[bundle_http]`); the others are
    /// answered 503 with Retry-After. Downloads from the object store are
    /// not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_downloads: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RolloutStatus {
    Running,
    Paused,
    Halted { reason: String },
    Aborted,
    Completed,
}

impl RolloutStatus {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted { .. } => "halted",
            Self::Aborted => "aborted",
            Self::Completed => "completed",
        }
    }
    /// Finished for good: nothing will ever be offered again.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Aborted | Self::Completed)
    }
}

/// One timestamped state change, kept for `status` and post-mortems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at: UnixMillis,
    pub to: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub bundle: BundleRecord,
    pub policy: RolloutPolicy,
    /// Devices per wave, in order: the canary wave first.
    pub waves: Vec<Vec<DeviceId>>,
    pub current_wave: usize,
    /// Failures in the current wave an operator accepted by resuming a halted
    /// rollout; only failures beyond these count toward the threshold again.
    #[serde(default)]
    pub accepted_failures: usize,
    #[serde(flatten)]
    pub status: RolloutStatus,
    pub created_at: UnixMillis,
    /// KV revision of the last applied `ctl.<id>` request (pause/resume/abort).
    #[serde(default)]
    pub last_ctl_rev: u64,
    #[serde(default)]
    pub history: Vec<Transition>,
}

impl Rollout {
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.waves.iter().flatten()
    }
    pub fn uses_bundle(&self, bundle_id: &str) -> bool {
        self.bundle.id == bundle_id && !self.status.is_final()
    }
    pub(crate) fn set_status(&mut self, status: RolloutStatus, at: UnixMillis, note: impl Into<String>) {
        self.history.push(Transition { at, to: status.name().to_string(), note: note.into() });
        self.status = status;
    }
}

/// What the operator observed of a device when it made the offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub boot_id: String,
    pub booted_slot: Option<String>,
    pub os_version: Option<String>,
    /// The `since` (device clock) of the upgrade status the device reported
    /// then: a refusal the agent could not tie to an offer is about this
    /// offer only if it is newer than that.
    #[serde(default)]
    pub upgrade_since: Option<UnixMillis>,
    /// The `offer_notes` the device reported then (`None` in records from
    /// before they were kept): a new note of an unverifiable offer is about
    /// this offer.
    #[serde(default)]
    pub offer_notes: Option<harmony_protocol::OfferNotes>,
}

/// Where one device stands in its rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// In a rollout, not offered yet.
    Pending,
    /// Offer written to the device's offer key.
    Offered,
    /// The agent accepted and is downloading / verifying / installing.
    Installing,
    /// Installed; the device reboots into the target slot.
    Rebooting,
    /// Commit command sent after the right heartbeat.
    CommitSent,
    Committed,
    RolledBack {
        reason: String,
    },
    /// Refused by the agent or failed before the reboot.
    Failed {
        reason: String,
    },
    TimedOut {
        waiting_for: String,
    },
    /// The rollout was aborted before this device got an offer.
    Skipped,
    /// The device already ran the target version: no offer was made.
    UpToDate,
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Offered => "offered",
            Self::Installing => "installing",
            Self::Rebooting => "rebooting",
            Self::CommitSent => "commit_sent",
            Self::Committed => "committed",
            Self::RolledBack { .. } => "rolled_back",
            Self::Failed { .. } => "failed",
            Self::TimedOut { .. } => "timed_out",
            Self::Skipped => "skipped",
            Self::UpToDate => "up_to_date",
        }
    }
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Committed
                | Self::RolledBack { .. }
                | Self::Failed { .. }
                | Self::TimedOut { .. }
                | Self::Skipped
                | Self::UpToDate
        )
    }
    /// Counts against a wave's halt threshold.
    pub fn is_bad(&self) -> bool {
        matches!(self, Self::RolledBack { .. } | Self::Failed { .. } | Self::TimedOut { .. })
    }
    /// Offered and not finished: occupies a max-in-flight slot.
    pub fn in_flight(&self) -> bool {
        !self.is_terminal() && *self != Self::Pending
    }
}

/// A device's part in a rollout. One per device (the latest rollout wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub device: DeviceId,
    pub rollout_id: String,
    pub wave: usize,
    #[serde(flatten)]
    pub state: JobState,
    /// The exact offer sent (re-signed deterministically if it must be re-put).
    pub offer: Option<UpgradeOffer>,
    pub baseline: Option<Baseline>,
    /// Boot id the agent reported just before its upgrade reboot.
    pub pre_reboot_boot_id: Option<String>,
    /// Slot the agent installed into, reported before the reboot.
    pub target_slot: Option<String>,
    pub deadline: Option<UnixMillis>,
    /// Deadline for a heartbeat of the new boot, counted from the pre-reboot one.
    #[serde(default)]
    pub reboot_timeout_ms: u64,
    /// The rollout's device timeout, kept to restart the deadline of a
    /// queued offer (0 in records from before it was kept: not restarted).
    #[serde(default)]
    pub device_timeout_ms: u64,
    /// The device keeps this job's offer until its current upgrade ends
    /// (`offer_notes.busy_offer_seq`); cleared when it starts on the offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_behind: Option<QueuedBehind>,
    pub commit_sent_at: Option<UnixMillis>,
    pub commit_boot_id: Option<String>,
    #[serde(default)]
    pub history: Vec<Transition>,
}

impl Job {
    pub fn pending(device: DeviceId, rollout_id: &str, wave: usize, at: UnixMillis) -> Self {
        Self {
            device,
            rollout_id: rollout_id.to_string(),
            wave,
            state: JobState::Pending,
            offer: None,
            baseline: None,
            pre_reboot_boot_id: None,
            target_slot: None,
            deadline: None,
            reboot_timeout_ms: 0,
            device_timeout_ms: 0,
            queued_behind: None,
            commit_sent_at: None,
            commit_boot_id: None,
            history: vec![Transition { at, to: "pending".into(), note: String::new() }],
        }
    }
    pub fn offer_seq(&self) -> Option<u64> {
        self.offer.as_ref().map(|o| o.offer_seq)
    }
    pub(crate) fn go(&mut self, state: JobState, at: UnixMillis, note: impl Into<String>) {
        self.history.push(Transition { at, to: state.name().to_string(), note: note.into() });
        self.state = state;
    }

    /// Records `note` in the history without changing state.
    pub(crate) fn note(&mut self, at: UnixMillis, note: impl Into<String>) {
        self.history.push(Transition { at, to: self.state.name().to_string(), note: note.into() });
    }

    /// As [`Job::note`], unless the last entry already says the same (a
    /// report repeated by every heartbeat); returns whether it was recorded.
    pub(crate) fn note_once(&mut self, at: UnixMillis, note: String) -> bool {
        let new = self.history.last().is_none_or(|t| t.note != note);
        if new {
            self.note(at, note);
        }
        new
    }
}

/// What a queued job waits for: the upgrade the device is busy with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedBehind {
    /// The offer the device works on (`None`: its status names none).
    pub offer_seq: Option<u64>,
    /// Its phase when the job was queued (or last moved on), for display.
    pub phase: String,
}

/// Keys in [`harmony_protocol::names::OPERATOR_STATE_BUCKET`].
pub mod keys {
    use harmony_protocol::DeviceId;

    pub const LEASE: &str = "lease.leader";
    pub fn rollout(id: &str) -> String {
        format!("rollout.{id}")
    }
    pub fn ctl(id: &str) -> String {
        format!("ctl.{id}")
    }
    pub fn job(device: &DeviceId) -> String {
        format!("job.{device}")
    }
    pub fn seq(device: &DeviceId) -> String {
        format!("seq.{device}")
    }
    pub fn bundle(id: &str) -> String {
        format!("bundle.{id}")
    }
    /// The provisioning record of a device (`init --device`).
    pub fn device(device: &DeviceId) -> String {
        format!("device.{device}")
    }
    pub const QUARANTINE_PREFIX: &str = "quarantine.";
    /// Where the raw bytes of the corrupt record `key` are kept.
    pub fn quarantine(key: &str) -> String {
        format!("{QUARANTINE_PREFIX}{key}")
    }
}

/// A name usable as a KV key token and object name: `[A-Za-z0-9_-]`, dots allowed inside.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
