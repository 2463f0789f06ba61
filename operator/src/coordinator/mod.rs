//! The coordinator's single decision function.
//!
//! [`step`] takes the whole coordinator state, one event and the current time
//! and returns the new state plus the effects to carry out. It never reads a
//! clock, never does I/O and never signs anything: the serve loop executes the
//! returned [`Action`]s. Every event it does not expect in a given state falls
//! into an explicit "ignored" arm, so a late or duplicate message can never
//! cause an offer or a commit.

mod device;
mod rollout;
#[cfg(test)]
mod tests;

pub use device::{check_commit, device_step, CommitRefusal};
pub use rollout::{plan_waves, WavePlan, REBUILT_NOTE};

use crate::model::{Job, Rollout};
use crate::registry::StoredHeartbeat;
use harmony_protocol::command::CommitArgs;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, OfferNotes, UpgradeOffer, UpgradePhase};
use std::collections::{BTreeMap, HashMap};

/// What the coordinator last saw of a device (from its heartbeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub boot_id: String,
    pub booted_slot: Option<String>,
    pub os_version: Option<String>,
    /// The device's upgrade status `since` (device clock).
    pub upgrade_since: UnixMillis,
    /// The device reports an offer it is still working on (any offer: a
    /// device is never offered again while one is in flight).
    pub upgrade_in_flight: bool,
    /// What it noted about offers next to its phase.
    pub offer_notes: OfferNotes,
    /// KV revision of the heartbeat: what decides which one is newer (the
    /// device's `sent_at` cannot: its clock may step back).
    pub revision: u64,
}

/// Tunables of the decision function (from the operator config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// A heartbeat stored longer ago than this (server time, never the
    /// device's `sent_at`) is evidence of nothing.
    pub stale_after_ms: u64,
    /// Resend a commit if no reply and the device still awaits commit after this.
    pub commit_retry_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self { stale_after_ms: 30_000, commit_retry_ms: 5_000 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct State {
    pub rollouts: BTreeMap<String, Rollout>,
    pub jobs: HashMap<DeviceId, Job>,
    /// Last offer sequence number per device (persisted; strictly increasing).
    pub seqs: HashMap<DeviceId, u64>,
    pub seen: HashMap<DeviceId, Seen>,
    /// The signed offers found in the offer bucket when this operator began
    /// to lead: a rollout device without a job record whose offer is there
    /// gets its job rebuilt from it instead of a second offer.
    pub offers: HashMap<DeviceId, UpgradeOffer>,
    pub tuning: Tuning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

#[derive(Debug, Clone)]
pub enum Event {
    Heartbeat(Box<StoredHeartbeat>),
    /// Periodic: deadlines and wave progress.
    Tick,
    CommitReplied {
        device: DeviceId,
        offer_seq: u64,
        result: Result<(), String>,
    },
    RolloutCreated(Box<Rollout>),
    Control {
        rollout_id: String,
        control: Control,
        revision: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Sign and put this offer under the device's key in the offer bucket.
    WriteOffer(Box<UpgradeOffer>),
    SendCommit {
        device: DeviceId,
        offer_seq: u64,
        args: CommitArgs,
    },
    PersistJob(DeviceId),
    PersistSeq(DeviceId),
    PersistRollout(String),
}

/// The decision function. Pure: same inputs, same outputs.
pub fn step(mut state: State, event: &Event, now: UnixMillis) -> (State, Vec<Action>) {
    let mut actions = Vec::new();
    let replan = match event {
        Event::Heartbeat(hb) => {
            let id = hb.device_id.clone();
            let newer = state.seen.get(&id).is_none_or(|s| s.revision <= hb.revision);
            if newer {
                state.seen.insert(
                    id.clone(),
                    Seen {
                        boot_id: hb.boot_id.clone(),
                        booted_slot: hb.booted_slot.clone(),
                        os_version: hb.os_version.clone(),
                        upgrade_since: hb.upgrade.since,
                        upgrade_in_flight: offer_in_flight(&hb.upgrade.phase),
                        offer_notes: hb.upgrade.offer_notes.clone(),
                        revision: hb.revision,
                    },
                );
            }
            job_event(&mut state, &id, event, now, &mut actions)
        }
        Event::CommitReplied { device, .. } => job_event(&mut state, device, event, now, &mut actions),
        Event::Tick => {
            let expired: Vec<DeviceId> = state
                .jobs
                .values()
                .filter(|j| !j.state.is_terminal() && j.deadline.is_some_and(|d| d <= now))
                .map(|j| j.device.clone())
                .collect();
            for id in expired {
                job_event(&mut state, &id, event, now, &mut actions);
            }
            true
        }
        Event::RolloutCreated(r) => {
            rollout::create(&mut state, r, now, &mut actions);
            true
        }
        Event::Control { rollout_id, control, revision } => {
            rollout::control(&mut state, rollout_id, *control, *revision, now, &mut actions);
            true
        }
    };
    if replan {
        rollout::advance_all(&mut state, now, &mut actions);
    }
    (state, actions)
}

/// The agent is working on an offer: from accepting it to awaiting commit.
/// Idle, committed and the refusal/failure/rollback outcomes are not.
pub fn offer_in_flight(phase: &UpgradePhase) -> bool {
    matches!(
        phase,
        UpgradePhase::Offered
            | UpgradePhase::Downloading { .. }
            | UpgradePhase::Verifying
            | UpgradePhase::Installing { .. }
            | UpgradePhase::Installed
            | UpgradePhase::Rebooting
            | UpgradePhase::AwaitingCommit
    )
}

/// Runs the device step for one device's job; true if the job became terminal.
fn job_event(state: &mut State, id: &DeviceId, event: &Event, now: UnixMillis, actions: &mut Vec<Action>) -> bool {
    let Some(job) = state.jobs.remove(id) else {
        // Not in any rollout: nothing to decide.
        return false;
    };
    let was_terminal = job.state.is_terminal();
    let before = job.clone();
    let (job, mut acts) = device_step(job, event, now, &state.tuning);
    let became_terminal = !was_terminal && job.state.is_terminal();
    if job != before {
        acts.push(Action::PersistJob(id.clone()));
    }
    state.jobs.insert(id.clone(), job);
    actions.append(&mut acts);
    became_terminal
}
