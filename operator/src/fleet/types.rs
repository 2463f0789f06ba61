//! The domain types of [`super::FleetService`]: plain serde data, no HTML.

use super::Stage;
use crate::config::Config;
use crate::enroll::token::TokenRecord;
use crate::error::{Error, Result};
use crate::model::{BundleRecord, HaltThreshold, Job, Rollout, RolloutPolicy};
use crate::provision::{DeviceStatus, Enrollment};
use crate::registry::Labels;
use crate::store::{CorruptRecord, Quarantined};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, HealthStatus, Heartbeat, ReplyBody};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Who asked for an action: recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The OS user or `--as` for the CLI, the login name for the dashboard.
    pub name: String,
    pub via: Via,
}

impl Actor {
    pub fn new(name: impl Into<String>, via: Via) -> Self {
        Self { name: name.into(), via }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Cli,
    Dashboard,
}

/// Whether a device is heard from, judged on when the server stored its
/// last heartbeat (never the device's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Online,
    Stale,
    Offline,
    /// Provisioned, but no believable heartbeat yet (or it expired).
    Unseen,
}

impl Presence {
    pub fn name(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Stale => "stale",
            Self::Offline => "offline",
            Self::Unseen => "unseen",
        }
    }
}

impl From<crate::registry::Presence> for Presence {
    fn from(p: crate::registry::Presence) -> Self {
        match p {
            crate::registry::Presence::Online => Self::Online,
            crate::registry::Presence::Stale => Self::Stale,
            crate::registry::Presence::Offline => Self::Offline,
        }
    }
}

/// One value and how many devices have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The value; empty when devices did not report one (no OS version, say).
    pub value: String,
    pub count: usize,
}

/// The fleet at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// Devices provisioned or heard from.
    pub devices: usize,
    /// Largest count first, in every list.
    pub by_presence: Vec<Tally>,
    pub by_os_version: Vec<Tally>,
    /// The agent's upgrade phase (`idle`, `downloading`, ...).
    pub by_phase: Vec<Tally>,
    pub by_health: Vec<Tally>,
    /// Rollouts not completed or aborted, newest first.
    pub active_rollouts: Vec<RolloutSummary>,
    /// The operator's clock when this was computed (presence depends on it).
    pub at: UnixMillis,
}

/// How to order the device list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    #[default]
    Id,
    LastSeen,
    Version,
    Phase,
}

/// Filter, search, sort and page of the device list. Every filter is
/// optional; all given ones must match. `#[serde(default)]`: a query string
/// may name only what it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceQuery {
    /// Label selector on the operator's provisioning labels (never the
    /// device-reported ones): `key=value` or `key`, several joined by `,`
    /// must all match.
    pub selector: Option<String>,
    /// Any of these; empty: all.
    pub presence: Vec<Presence>,
    /// Exact OS version; `Some("")` matches devices that report none.
    pub os_version: Option<String>,
    /// Exact agent upgrade phase name (`idle`, `awaiting_commit`, ...).
    pub phase: Option<String>,
    pub health: Option<HealthStatus>,
    /// The operator record's status (`active`, `pending`, `rejected`,
    /// `revoked`); devices without a record match none.
    pub status: Option<DeviceStatus>,
    /// Case-insensitive substring of the device id.
    pub search: Option<String>,
    pub sort: DeviceSort,
    pub descending: bool,
    pub offset: usize,
    /// 0: [`DeviceQuery::DEFAULT_LIMIT`]; at most [`DeviceQuery::MAX_LIMIT`].
    pub limit: usize,
}

impl DeviceQuery {
    pub const DEFAULT_LIMIT: usize = 50;
    pub const MAX_LIMIT: usize = 1000;

    /// The page size actually used.
    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        }
    }
}

/// The rollout a device is (or last was) part of, as the device list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub rollout_id: String,
    pub wave: usize,
    pub stage: Stage,
}

/// One row of the device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub device_id: DeviceId,
    pub presence: Presence,
    /// When the server stored its last believable heartbeat.
    pub last_seen: Option<UnixMillis>,
    pub os_version: Option<String>,
    pub agent_version: Option<String>,
    pub booted_slot: Option<String>,
    pub boot_id: Option<String>,
    pub health: Option<HealthStatus>,
    /// The agent's upgrade phase name.
    pub phase: Option<String>,
    /// The device says its upgrade record and its bootloader disagree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mismatch: Option<String>,
    /// The operator's provisioning labels.
    pub labels: Labels,
    /// Provisioned with `init --device` or enrolled, and active (else only
    /// heard from, or its record is not active: see `status`).
    pub provisioned: bool,
    /// Its operator record's status; `None`: no record (only heard from).
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    pub job: Option<JobRef>,
}

/// One page of the device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePage {
    pub devices: Vec<DeviceSummary>,
    /// Devices matching the query (all pages).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Devices known at all.
    pub fleet_size: usize,
    pub at: UnixMillis,
}

/// One transition of one device's upgrade job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: UnixMillis,
    pub rollout_id: String,
    /// The target version of that rollout, when known.
    pub target_version: Option<String>,
    pub wave: usize,
    /// The job state entered (`offered`, `failed`, ...), or the state kept
    /// when the entry is only a note.
    pub state: String,
    pub stage: Option<Stage>,
    /// What the coordinator noted (`reported by agent`, `boot …`).
    pub note: String,
    /// Why a job failed, rolled back or timed out (on its final entry).
    pub reason: Option<String>,
}

/// One device in full.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDetail {
    pub summary: DeviceSummary,
    /// The last believable heartbeat as the device sent it (hostile text).
    pub heartbeat: Option<Heartbeat>,
    /// KV revision of that heartbeat.
    pub heartbeat_revision: Option<u64>,
    /// Why the latest value under the device's heartbeat key is not believed
    /// (undecodable, or it names another device).
    pub heartbeat_error: Option<String>,
    /// Its current (latest) rollout job.
    pub job: Option<Job>,
    /// The job record could not be read.
    pub job_error: Option<String>,
    /// The raw bytes of a corrupt job record the operator replaced.
    pub quarantined_job: Option<Quarantined>,
    /// Every job transition across rollouts, oldest first (bounded by the
    /// job archive's limits).
    pub timeline: Vec<TimelineEntry>,
    /// How it enrolled itself (token id, when), when it did.
    pub enrollment: Option<Enrollment>,
    /// The labels of its record when the record is not active (pending,
    /// rejected, revoked): shown, never matched by a rollout selector.
    pub held_labels: Option<Labels>,
    /// Its desired and reported workloads, if it has either.
    pub workloads: Option<crate::workloads::DeviceWorkloads>,
    /// Why its workloads could not be read.
    pub workloads_error: Option<String>,
}

/// Devices of a wave (or a rollout) per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    pub pending: usize,
    pub offered: usize,
    pub installing: usize,
    pub rebooted: usize,
    pub committed: usize,
    pub failed: usize,
    pub rolled_back: usize,
    pub timed_out: usize,
    pub skipped: usize,
    pub up_to_date: usize,
    /// Devices of the wave whose job for this rollout is no longer on
    /// record (replaced by a newer rollout and not found in the archive).
    #[serde(default)]
    pub superseded: usize,
}

impl StageCounts {
    pub fn add(&mut self, stage: Stage) {
        *self.slot(stage) += 1;
    }
    pub fn get(&self, stage: Stage) -> usize {
        let mut copy = *self;
        *copy.slot(stage)
    }
    fn slot(&mut self, stage: Stage) -> &mut usize {
        match stage {
            Stage::Pending => &mut self.pending,
            Stage::Offered => &mut self.offered,
            Stage::Installing => &mut self.installing,
            Stage::Rebooted => &mut self.rebooted,
            Stage::Committed => &mut self.committed,
            Stage::Failed => &mut self.failed,
            Stage::RolledBack => &mut self.rolled_back,
            Stage::TimedOut => &mut self.timed_out,
            Stage::Skipped => &mut self.skipped,
            Stage::UpToDate => &mut self.up_to_date,
        }
    }
    /// Devices counted, `superseded` included.
    pub fn total(&self) -> usize {
        Stage::ALL.iter().map(|s| self.get(*s)).sum::<usize>() + self.superseded
    }
    /// Devices whose job is over, one way or another.
    pub fn finished(&self) -> usize {
        Stage::ALL.iter().filter(|s| s.is_finished()).map(|s| self.get(*s)).sum()
    }
    pub fn merge(&mut self, other: &StageCounts) {
        for s in Stage::ALL {
            *self.slot(s) += other.get(s);
        }
        self.superseded += other.superseded;
    }
}

/// A rollout in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub id: String,
    pub bundle_id: String,
    pub target_version: String,
    /// `running`, `paused`, `halted`, `aborted`, `completed`.
    pub status: String,
    pub halt_reason: Option<String>,
    pub created_at: UnixMillis,
    /// 0-based index of the wave being worked on (= `waves` once done).
    pub current_wave: usize,
    pub waves: usize,
    pub devices: usize,
    /// Over all waves.
    pub counts: StageCounts,
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    Done,
    Current,
    Waiting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveProgress {
    pub index: usize,
    pub devices: usize,
    pub state: WaveState,
    pub counts: StageCounts,
}

/// One rollout in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutDetail {
    pub summary: RolloutSummary,
    /// The stored record: policy, waves, status history.
    pub rollout: Rollout,
    pub waves: Vec<WaveProgress>,
    /// This rollout's job of each device that has one (current or archived),
    /// by device id.
    pub jobs: Vec<Job>,
    /// Records that could not be read (skipped).
    pub corrupt: Vec<CorruptRecord>,
}

/// A bundle and who uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleView {
    #[serde(flatten)]
    pub record: BundleRecord,
    /// Unfinished rollouts of this bundle (they block its removal).
    pub in_use_by: Vec<String>,
}

/// What to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundlePush {
    /// A RAUC bundle on the operator's disk (the dashboard spools uploads).
    pub path: PathBuf,
    /// Name of the bundle (default: its version).
    pub id: Option<String>,
    /// Draw a terminal progress bar on stderr (CLI only).
    #[serde(default)]
    pub progress_bar: bool,
}

/// Which devices a rollout targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    Devices(Vec<String>),
    /// Label selector on the operator's provisioning labels.
    Selector(String),
    /// Every device heartbeating under its own key.
    All,
}

/// A rollout to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartArgs {
    /// Default: `<bundle>-<now millis>`.
    pub id: Option<String>,
    pub bundle: String,
    pub target: Target,
    pub canary: usize,
    /// Cumulative percentages for the waves after the canary.
    pub waves: Vec<u8>,
    pub policy: RolloutPolicy,
}

impl StartArgs {
    /// The config's `[rollout]` defaults for `bundle` and `target`.
    pub fn from_defaults(cfg: &Config, bundle: &str, target: Target) -> Self {
        let d = &cfg.rollout;
        let halt = match (d.halt_after_percent, d.halt_after_failures) {
            (Some(p), _) => HaltThreshold::Percent(p),
            (None, n) => HaltThreshold::Count(n.unwrap_or(1)),
        };
        Self {
            id: None,
            bundle: bundle.into(),
            target,
            canary: d.canary,
            waves: d.waves.clone(),
            policy: RolloutPolicy {
                max_in_flight: d.max_in_flight,
                device_timeout_ms: d.device_timeout_secs * 1000,
                reboot_timeout_ms: d.reboot_timeout_secs * 1000,
                halt,
                allow_downgrade: false,
                offer_ttl_ms: d.offer_ttl_secs * 1000,
                max_concurrent_downloads: None,
            },
        }
    }
}

/// Pause, resume or abort a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

impl Control {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

impl std::str::FromStr for Control {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pause" => Ok(Self::Pause),
            "resume" => Ok(Self::Resume),
            "abort" => Ok(Self::Abort),
            other => Err(Error::Invalid(format!("rollout control {other:?}: pause, resume or abort"))),
        }
    }
}

/// A device's answer to a ping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingReport {
    pub device: DeviceId,
    pub rtt_ms: f64,
    pub reply: ReplyBody,
}

/// One page of the audit log, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    /// Entries to skip from the newest.
    pub offset: usize,
    /// 0: [`AuditQuery::DEFAULT_LIMIT`]; at most [`AuditQuery::MAX_LIMIT`].
    pub limit: usize,
}

impl AuditQuery {
    pub const DEFAULT_LIMIT: usize = 50;
    pub const MAX_LIMIT: usize = 500;

    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        }
    }
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    RolloutStart,
    RolloutPause,
    RolloutResume,
    RolloutAbort,
    BundlePush,
    BundleRemove,
    DevicePing,
    DeviceReboot,
    DeviceAccept,
    DeviceReject,
    DeviceRevoke,
    TokenCreate,
    TokenRevoke,
    WorkloadApply,
    WorkloadRemove,
    /// Written by a newer operator: shown, not understood.
    #[serde(other)]
    Other,
}

impl From<Control> for AuditAction {
    fn from(c: Control) -> Self {
        match c {
            Control::Pause => Self::RolloutPause,
            Control::Resume => Self::RolloutResume,
            Control::Abort => Self::RolloutAbort,
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AuditResult {
    Ok { detail: String },
    Failed { error: String },
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (the KV stream sequence): larger is newer.
    #[serde(default)]
    pub seq: u64,
    /// The operator's clock when the action ended.
    pub at: UnixMillis,
    pub actor: Actor,
    pub action: AuditAction,
    /// What it was done to: a rollout id, bundle id or device id.
    pub target: String,
    pub result: AuditResult,
}

/// One page of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Entries kept in the log.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

/// Something changed; re-read what shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Change {
    /// A device's heartbeat (beyond its timestamp), labels or job changed.
    Device(DeviceId),
    /// A rollout record, or a job of that rollout, changed.
    Rollout(String),
    Bundles,
    Audit,
    /// An enrollment token was created, spent or revoked.
    Tokens,
    /// The index was reloaded (a watch restarted): anything may have changed.
    Resync,
}

/// Parses a device id from user input.
pub fn device_id(raw: &str) -> Result<DeviceId> {
    DeviceId::new(raw).map_err(|e| Error::Invalid(format!("{raw:?}: {e}")))
}

/// What an operator decides about an enrolled device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let a pending device in.
    Accept,
    /// Refuse a pending device; its key is never admitted.
    Reject,
    /// Take an active (or pending) device out now; its key is never admitted again.
    Revoke,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Revoke => "revoke",
        }
    }

    /// The status it moves a record to from `now`, or why it cannot.
    pub fn next_status(self, now: DeviceStatus) -> std::result::Result<DeviceStatus, String> {
        use DeviceStatus::*;
        match (self, now) {
            (Self::Accept, Pending) => Ok(Active),
            (Self::Reject, Pending) => Ok(Rejected),
            (Self::Revoke, Active | Pending | Revoked) => Ok(Revoked),
            (v, s) => Err(format!("cannot {} a device that is {}", v.name(), s.as_str())),
        }
    }

    /// Whether carrying it out must also disconnect the device.
    pub fn disconnects(self) -> bool {
        !matches!(self, Self::Accept)
    }
}

impl From<Verdict> for AuditAction {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Accept => Self::DeviceAccept,
            Verdict::Reject => Self::DeviceReject,
            Verdict::Revoke => Self::DeviceRevoke,
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "accept" => Ok(Self::Accept),
            "reject" => Ok(Self::Reject),
            "revoke" => Ok(Self::Revoke),
            other => Err(Error::Invalid(format!("verdict {other:?}: accept, reject or revoke"))),
        }
    }
}

/// A device after a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    pub device: DeviceId,
    pub status: DeviceStatus,
    /// Live connections closed (its own and its enrolling one).
    pub disconnected: usize,
}

/// An enrollment token to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    /// `key=value` labels every device enrolled with it gets.
    pub labels: Vec<String>,
    pub max_uses: u32,
    /// How long it is valid: `30m`, `12h`, `7d`, `2w`.
    pub expires: String,
    pub require_approval: bool,
}

/// A token just created: its text (shown once to its creator, never stored
/// or logged) and its record.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CreatedToken {
    pub token: String,
    pub record: TokenRecord,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken").field("token", &"<redacted>").field("record", &self.record).finish()
    }
}

pub use crate::enroll::token::TokenState;
