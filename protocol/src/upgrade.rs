//! Upgrade offers (operator → agent) and upgrade status (agent → operator).

use crate::time::UnixMillis;
use crate::DeviceId;
use serde::{Deserialize, Serialize};

/// What the operator asks one device to install. Always travels inside a
/// [`crate::SignedEnvelope`] signed with the fleet key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeOffer {
    pub schema: u32,
    /// Strictly increasing per device; the agent refuses replays.
    pub offer_seq: u64,
    pub device_id: DeviceId,
    pub rollout_id: Option<String>,
    /// Version the device must report (os_version) after the upgrade.
    pub target_version: String,
    /// Must equal RAUC's `Compatible` on the device.
    pub compatible: String,
    pub bundle: BundleSource,
    pub not_before: UnixMillis,
    pub expires_at: UnixMillis,
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// Where to get a bundle and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSource {
    /// Object name in [`crate::names::BUNDLE_OBJECT_BUCKET`].
    pub object: Option<String>,
    /// HTTP(S) URL, used when `object` is absent. An operator serving
    /// bundles over HTTP sets it next to `object`: agents that predate HTTP
    /// serving keep downloading the object, one that streams uses the URL.
    pub url: Option<String>,
    /// Lower-case hex SHA-256 of the whole bundle file.
    pub sha256: String,
    pub size: u64,
    /// Value of the `Authorization` header for `url` (`Bearer <token>`): a
    /// token that reads this one bundle, issued to this device only. Absent
    /// (and so never sent to agents that do not know it) without `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// Lower-case hex SHA-256 of the bundle's signature block (the CMS
    /// structure RAUC appends to a verity bundle, which holds the manifest
    /// and so the root hash of everything before it). A streaming agent
    /// never has the whole file to hash; it checks this before RAUC reads
    /// the bundle, and RAUC's signature and verity checks bind the rest.
    /// Absent for bundles pushed before the operator recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_sha256: Option<String>,
}

/// How the bundle of an upgrade reaches RAUC, reported in the status so a
/// device that could not stream says so (and why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Transfer {
    /// RAUC reads the bundle over HTTP with Range requests (NBD); no copy
    /// of it is stored on the device.
    Streamed,
    /// The agent downloads the whole bundle, checks its SHA-256, then RAUC
    /// installs the file. `not_streamed` says why streaming was not used.
    Downloaded { not_streamed: String },
}

/// The agent's upgrade state as reported in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    #[serde(flatten)]
    pub phase: UpgradePhase,
    /// The offer this status is about, if any.
    pub offer_seq: Option<u64>,
    pub rollout_id: Option<String>,
    pub target_version: Option<String>,
    /// Boot id recorded just before the upgrade reboot. The operator commits
    /// only a heartbeat whose boot id differs from it.
    pub pre_reboot_boot_id: Option<String>,
    /// Slot (boot name) the bundle was installed into.
    pub target_slot: Option<String>,
    pub since: UnixMillis,
    /// What the agent noticed about offers without letting it change
    /// `phase`. Absent (and ignored by older operators) when empty.
    #[serde(default, skip_serializing_if = "OfferNotes::is_empty")]
    pub offer_notes: OfferNotes,
    /// What RAUC showed at agent start that disagrees with the upgrade
    /// record (boot state lost or torn, a committed slot the bootloader
    /// left). Absent (and ignored by older operators) when they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mismatch: Option<BootMismatch>,
    /// How the current upgrade's bundle travels (absent before one is
    /// accepted, and ignored by older operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// The upgrade record and RAUC's view of the slots disagree. Reported next
/// to the phase, so an operator that predates it still decodes the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootMismatch {
    /// The upgrade was committed to `committed`, yet this boot runs
    /// `booted`: the boot state was lost or torn, or the bootloader left a
    /// committed slot that stopped booting. The phase is then `rolled_back`.
    #[error("upgrade committed to slot {committed} but the device booted slot {booted}")]
    NotOnCommittedSlot { committed: String, booted: String },
    /// The booted slot is one the bootloader counts as bad (or has no
    /// attempts left for): it will not be booted again after a reboot.
    #[error("booted slot {slot} is {boot_status}, not good")]
    BootedSlotNotGood { slot: String, boot_status: String },
    /// The next boot goes to another slot than the one running now.
    #[error("booted slot {booted} is not primary (the next boot goes to {primary})")]
    BootedSlotNotPrimary { booted: String, primary: String },
    /// A kind this build does not know (a newer agent). Decoded rather than
    /// rejected: an unknown kind must not make the whole heartbeat
    /// undecodable, which would hide the device from an older operator.
    /// Never sent.
    #[serde(other)]
    #[error("a boot state mismatch of a kind this operator does not know")]
    Unknown,
}

/// Offers the agent did not act on yet, or refused without overwriting a
/// status the operator still has to read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OfferNotes {
    /// "Busy": an offer that arrived while an upgrade was in flight. The
    /// agent keeps the newest one and judges it when the upgrade ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_offer_seq: Option<u64>,
    /// A refusal that left the phase alone: an unverifiable offer while an
    /// upgrade is in flight or its outcome (committed, rolled back) is
    /// reported, or a kept offer refused when the upgrade ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<NotedRefusal>,
}

impl OfferNotes {
    pub fn is_empty(&self) -> bool {
        self.busy_offer_seq.is_none() && self.refusal.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotedRefusal {
    /// `None` when the offer could not be verified (nothing in it is trusted).
    pub offer_seq: Option<u64>,
    pub reason: RefusalReason,
}

impl UpgradeStatus {
    pub fn idle(since: UnixMillis) -> Self {
        Self {
            phase: UpgradePhase::Idle,
            offer_seq: None,
            rollout_id: None,
            target_version: None,
            pre_reboot_boot_id: None,
            target_slot: None,
            since,
            offer_notes: OfferNotes::default(),
            boot_mismatch: None,
            transfer: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum UpgradePhase {
    Idle,
    Offered,
    Downloading { bytes_done: u64, bytes_total: u64 },
    Verifying,
    Installing { percent: u8 },
    Installed,
    Rebooting,
    AwaitingCommit,
    Committed,
    Refused { reason: RefusalReason },
    Failed { reason: FailureReason },
    RolledBack { reason: RollbackReason },
}

impl UpgradePhase {
    /// Whether an operator's reboot command may be obeyed in this phase:
    /// not while an offer is being fetched, verified, installed or the
    /// device is already on its way down.
    pub fn allows_operator_reboot(&self) -> bool {
        matches!(
            self,
            Self::Idle
                | Self::Committed
                | Self::Refused { .. }
                | Self::Failed { .. }
                | Self::RolledBack { .. }
                | Self::AwaitingCommit
        )
    }

    /// Short stable name for logs, tables and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Offered => "offered",
            Self::Downloading { .. } => "downloading",
            Self::Verifying => "verifying",
            Self::Installing { .. } => "installing",
            Self::Installed => "installed",
            Self::Rebooting => "rebooting",
            Self::AwaitingCommit => "awaiting_commit",
            Self::Committed => "committed",
            Self::Refused { .. } => "refused",
            Self::Failed { .. } => "failed",
            Self::RolledBack { .. } => "rolled_back",
        }
    }
}

/// Why an agent refused an offer. Nothing was downloaded or installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefusalReason {
    #[error("signature does not verify")]
    BadSignature,
    #[error("offer signed by unknown key {key_id}")]
    UnknownKey { key_id: String },
    #[error("offer expired")]
    Expired,
    #[error("offer not valid yet")]
    NotYetValid,
    #[error("offer sequence {offered} is not above the last accepted {last_accepted}")]
    Replay { offered: u64, last_accepted: u64 },
    #[error("bundle compatible {offered:?} differs from this device's {device:?}")]
    Incompatible { offered: String, device: String },
    #[error("target version {target} is not newer than {current} and downgrade is not allowed")]
    Downgrade { current: String, target: String },
    #[error("bundle size {size} exceeds the limit {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("offer is for device {offered_to}")]
    WrongDevice { offered_to: String },
    #[error("offer is malformed: {detail}")]
    Malformed { detail: String },
    #[error("an upgrade is already in progress")]
    Busy,
}

/// Why an accepted upgrade failed before the reboot. The running system is untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureReason {
    #[error("download failed: {detail}")]
    DownloadFailed { detail: String },
    #[error("bundle hash mismatch: expected {expected}, got {actual}")]
    VerifyFailed { expected: String, actual: String },
    #[error("not enough free space: need {needed} bytes, have {available}")]
    NoSpace { needed: u64, available: u64 },
    /// RAUC's `LastError`, verbatim.
    #[error("RAUC install failed: {last_error}")]
    InstallFailed { last_error: String },
    #[error("reboot failed: {detail}")]
    RebootFailed { detail: String },
    #[error("commit failed: {detail}")]
    CommitFailed { detail: String },
}

/// Why the device is back on its previous slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RollbackReason {
    /// U-Boot fell back: the new slot never came up far enough.
    #[error("new slot failed to boot")]
    BootFailed,
    /// The new slot came up but no commit arrived before the deadline.
    #[error("no commit before the deadline")]
    CommitTimeout,
    #[error("health checks failed: {failed:?}")]
    HealthCheckFailed { failed: Vec<String> },
}
