//! Rollout-level decisions: waves, max in flight, halting, pause/resume/abort.

use super::{Action, Control, State};
use crate::model::{Baseline, Job, JobState, Rollout, RolloutStatus};
use harmony_protocol::names::BUNDLE_OBJECT_BUCKET;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{BundleSource, DeviceId, UpgradeOffer, SCHEMA_VERSION};

/// How to cut a device list into waves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    /// Devices in the first (canary) wave.
    pub canary: usize,
    /// Cumulative percentages of the whole list after the canary, e.g. `[25, 100]`.
    /// The last wave always reaches 100%.
    pub percents: Vec<u8>,
}

/// Splits `devices` (in order) into waves: canary first, then cumulative percentages.
pub fn plan_waves(devices: &[DeviceId], plan: &WavePlan) -> Vec<Vec<DeviceId>> {
    let total = devices.len();
    let mut waves = Vec::new();
    let mut done = plan.canary.min(total);
    if done > 0 {
        waves.push(devices[..done].to_vec());
    }
    let mut percents: Vec<u8> = plan.percents.iter().map(|p| (*p).min(100)).collect();
    if percents.last() != Some(&100) {
        percents.push(100);
    }
    for p in percents {
        let upto = (total * usize::from(p)).div_ceil(100).max(done);
        if upto > done {
            waves.push(devices[done..upto].to_vec());
            done = upto;
        }
    }
    waves
}

pub(super) fn create(state: &mut State, rollout: &Rollout, now: UnixMillis, actions: &mut Vec<Action>) {
    // Idempotent: a rollout we already know (our own KV write echoed back, or
    // one loaded at startup before its jobs were written) only gets the jobs
    // it is missing; our copy of the rollout record stays authoritative.
    let known = state.rollouts.contains_key(&rollout.id);
    let r = state.rollouts.get(&rollout.id).cloned().unwrap_or_else(|| rollout.clone());
    if r.status.is_final() {
        return;
    }
    for (wave, devices) in r.waves.iter().enumerate() {
        for d in devices {
            let skip = state.jobs.get(d).is_some_and(|j| j.rollout_id == r.id || !j.state.is_terminal());
            if skip {
                continue; // already ours, or busy in another rollout (the CLI refuses that; a race must not steal it)
            }
            let job = match state.offers.get(d).filter(|o| o.rollout_id.as_deref() == Some(r.id.as_str())) {
                Some(offer) => {
                    // The job record is gone but its offer is not: the
                    // device may be mid-upgrade. Same offer, no new one.
                    let seq = state.seqs.get(d).copied().unwrap_or(0).max(offer.offer_seq);
                    state.seqs.insert(d.clone(), seq);
                    actions.push(Action::PersistSeq(d.clone()));
                    rebuilt_job(&r, wave, offer, now)
                }
                None => Job::pending(d.clone(), &r.id, wave, now),
            };
            state.jobs.insert(d.clone(), job);
            actions.push(Action::PersistJob(d.clone()));
        }
    }
    if known {
        return;
    }
    let mut r = r;
    if r.history.is_empty() {
        r.history.push(crate::model::Transition { at: now, to: r.status.name().into(), note: "created".into() });
    }
    actions.push(Action::PersistRollout(r.id.clone()));
    state.rollouts.insert(r.id.clone(), r);
}

/// History note of a job rebuilt from its signed offer.
pub const REBUILT_NOTE: &str = "rebuilt from the signed offer";

/// An offered job recreated from the offer still in the offer bucket. What
/// was not recorded (baseline, pre-reboot boot) stays unknown: the commit
/// rule then relies on what the agent persisted before its reboot.
fn rebuilt_job(r: &Rollout, wave: usize, offer: &UpgradeOffer, now: UnixMillis) -> Job {
    let mut job = Job::pending(offer.device_id.clone(), &r.id, wave, now);
    job.deadline = Some(now.saturating_add_ms(r.policy.device_timeout_ms));
    job.reboot_timeout_ms = r.policy.reboot_timeout_ms;
    job.device_timeout_ms = r.policy.device_timeout_ms;
    job.offer = Some(offer.clone());
    job.go(JobState::Offered, now, format!("{REBUILT_NOTE} {}", offer.offer_seq));
    job
}

pub(super) fn control(
    state: &mut State,
    id: &str,
    control: Control,
    revision: u64,
    now: UnixMillis,
    actions: &mut Vec<Action>,
) {
    let bad_now = state.rollouts.get(id).map_or(0, |r| {
        r.waves.get(r.current_wave).map_or(0, |w| {
            w.iter().filter(|d| state.jobs.get(*d).is_some_and(|j| j.rollout_id == r.id && j.state.is_bad())).count()
        })
    });
    let Some(r) = state.rollouts.get_mut(id) else { return };
    if revision != 0 && revision <= r.last_ctl_rev {
        return; // already applied before a restart
    }
    r.last_ctl_rev = revision.max(r.last_ctl_rev);
    let next = match (&r.status, control) {
        (RolloutStatus::Running, Control::Pause) => Some(RolloutStatus::Paused),
        (RolloutStatus::Paused | RolloutStatus::Halted { .. }, Control::Resume) => Some(RolloutStatus::Running),
        (RolloutStatus::Running | RolloutStatus::Paused | RolloutStatus::Halted { .. }, Control::Abort) => {
            Some(RolloutStatus::Aborted)
        }
        // Everything else (pause a halted rollout, resume a running one,
        // anything on a finished one) changes nothing.
        _ => None,
    };
    if let Some(next) = next {
        if matches!(r.status, RolloutStatus::Halted { .. }) && next == RolloutStatus::Running {
            r.accepted_failures = bad_now;
        }
        let note = format!("{control:?} requested");
        r.set_status(next, now, note);
    }
    actions.push(Action::PersistRollout(id.to_string()));
    if r.status == RolloutStatus::Aborted {
        let ids: Vec<DeviceId> = r.devices().cloned().collect();
        for d in ids {
            if let Some(job) = state.jobs.get_mut(&d) {
                if job.rollout_id == id && job.state == JobState::Pending {
                    job.go(JobState::Skipped, now, "rollout aborted");
                    actions.push(Action::PersistJob(d));
                }
            }
        }
    }
}

pub(super) fn advance_all(state: &mut State, now: UnixMillis, actions: &mut Vec<Action>) {
    let ids: Vec<String> =
        state.rollouts.iter().filter(|(_, r)| r.status == RolloutStatus::Running).map(|(id, _)| id.clone()).collect();
    for id in ids {
        advance(state, &id, now, actions);
    }
}

fn advance(state: &mut State, id: &str, now: UnixMillis, actions: &mut Vec<Action>) {
    let Some(mut r) = state.rollouts.remove(id) else { return };
    let mut changed = false;
    loop {
        let Some(wave) = r.waves.get(r.current_wave) else {
            r.set_status(RolloutStatus::Completed, now, "all waves done");
            changed = true;
            break;
        };
        let job_states: Vec<Option<&JobState>> =
            wave.iter().map(|d| state.jobs.get(d).filter(|j| j.rollout_id == r.id).map(|j| &j.state)).collect();
        let bad = job_states.iter().filter(|s| s.is_some_and(|s| s.is_bad())).count();
        if r.policy.halt.reached(bad.saturating_sub(r.accepted_failures), wave.len()) {
            // Waves counted from 1, as `rollout status` and the dashboard show them.
            let reason = format!(
                "{bad} of {} devices in wave {} of {} failed, rolled back or timed out",
                wave.len(),
                r.current_wave + 1,
                r.waves.len()
            );
            r.set_status(RolloutStatus::Halted { reason }, now, "threshold reached");
            changed = true;
            break;
        }
        // A device whose job belongs to another rollout counts as done here.
        let all_done = job_states.iter().all(|s| s.is_none_or(|s| s.is_terminal()));
        if all_done {
            r.current_wave += 1;
            r.accepted_failures = 0;
            r.history.push(crate::model::Transition {
                at: now,
                to: format!("wave {}", r.current_wave),
                note: String::new(),
            });
            changed = true;
            continue;
        }
        let in_flight = r
            .devices()
            .filter(|d| state.jobs.get(*d).is_some_and(|j| j.rollout_id == r.id && j.state.in_flight()))
            .count();
        let mut room = r.policy.max_in_flight.max(1).saturating_sub(in_flight);
        let wave = wave.clone();
        for d in wave {
            if room == 0 {
                break;
            }
            let Some(job) = state.jobs.get_mut(&d) else { continue };
            if job.rollout_id != r.id || job.state != JobState::Pending {
                continue;
            }
            let seen = state.seen.get(&d);
            if seen.is_some_and(|s| s.upgrade_in_flight) {
                continue; // another offer is in flight on the device: wait for its outcome
            }
            if seen.is_some_and(|s| s.os_version.as_deref() == Some(r.bundle.version.as_str())) {
                job.go(JobState::UpToDate, now, format!("already runs {}; not offered", r.bundle.version));
                actions.push(Action::PersistJob(d.clone()));
                continue;
            }
            let last = state.seqs.get(&d).copied().unwrap_or(0);
            let seq = (last + 1).max(now.0);
            state.seqs.insert(d.clone(), seq);
            let offer = UpgradeOffer {
                schema: SCHEMA_VERSION,
                offer_seq: seq,
                device_id: d.clone(),
                rollout_id: Some(r.id.clone()),
                target_version: r.bundle.version.clone(),
                compatible: r.bundle.compatible.clone(),
                bundle: BundleSource {
                    object: Some(r.bundle.id.clone()),
                    url: None,
                    sha256: r.bundle.sha256.clone(),
                    size: r.bundle.size,
                    // Filled in when signing, with `[bundle_http]` (crate::signer).
                    authorization: None,
                    signature_sha256: r.bundle.signature_sha256.clone(),
                },
                not_before: now,
                expires_at: now.saturating_add_ms(r.policy.offer_ttl_ms),
                allow_downgrade: r.policy.allow_downgrade,
            };
            job.baseline = state.seen.get(&d).map(|s| Baseline {
                boot_id: s.boot_id.clone(),
                booted_slot: s.booted_slot.clone(),
                os_version: s.os_version.clone(),
                upgrade_since: Some(s.upgrade_since),
                offer_notes: Some(s.offer_notes.clone()),
            });
            job.deadline = Some(now.saturating_add_ms(r.policy.device_timeout_ms));
            job.reboot_timeout_ms = r.policy.reboot_timeout_ms;
            job.device_timeout_ms = r.policy.device_timeout_ms;
            job.offer = Some(offer.clone());
            job.go(JobState::Offered, now, format!("offer {seq} ({BUNDLE_OBJECT_BUCKET}/{})", r.bundle.id));
            actions.push(Action::PersistSeq(d.clone()));
            actions.push(Action::PersistJob(d.clone()));
            actions.push(Action::WriteOffer(Box::new(offer)));
            room -= 1;
        }
        break;
    }
    if changed {
        actions.push(Action::PersistRollout(r.id.clone()));
    }
    state.rollouts.insert(r.id.clone(), r);
}
