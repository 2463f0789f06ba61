//! One device's job: how each event moves it, and the commit rule.

use super::{Action, Event, Tuning};
use crate::model::{Job, JobState};
use crate::registry::StoredHeartbeat;
use harmony_protocol::command::CommitArgs;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{HealthStatus, Heartbeat, RefusalReason, UpgradePhase};

/// Why a heartbeat is not (yet) evidence enough to commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitRefusal {
    #[error("heartbeat is stale ({age_ms} ms old)")]
    Stale { age_ms: u64 },
    #[error("heartbeat is about offer {got:?}, not {want:?}")]
    OtherOffer { got: Option<u64>, want: Option<u64> },
    #[error("phase is {0}, not awaiting_commit")]
    Phase(&'static str),
    #[error("os version {got:?} is not the target {want:?}")]
    Version { got: Option<String>, want: String },
    #[error("booted slot {got:?} is not the expected {want:?}")]
    Slot { got: Option<String>, want: Option<String> },
    #[error("boot id {0} is the pre-reboot boot")]
    SameBoot(String),
    #[error("health is {0:?}")]
    Unhealthy(HealthStatus),
}

/// The commit rule. A device is committed only on a fresh heartbeat of the
/// offer in question that shows: phase `AwaitingCommit`, the target version,
/// the slot the bundle was installed into (reported before the reboot), a boot
/// id other than the pre-reboot one (and other than the one seen at offer
/// time), and healthy checks.
pub fn check_commit(
    job: &Job,
    hb: &StoredHeartbeat,
    now: UnixMillis,
    tuning: &Tuning,
) -> Result<CommitArgs, CommitRefusal> {
    // Server time: a device clock years off (no RTC, no NTP yet) must not
    // make a fresh heartbeat look stale, nor an old one fresh.
    let age_ms = now.saturating_since(hb.stored_at);
    if age_ms > tuning.stale_after_ms {
        return Err(CommitRefusal::Stale { age_ms });
    }
    let want_seq = job.offer_seq();
    if hb.upgrade.offer_seq.is_none() || hb.upgrade.offer_seq != want_seq {
        return Err(CommitRefusal::OtherOffer { got: hb.upgrade.offer_seq, want: want_seq });
    }
    if hb.upgrade.phase != UpgradePhase::AwaitingCommit {
        return Err(CommitRefusal::Phase(hb.upgrade.phase.name()));
    }
    let target = job.offer.as_ref().map(|o| o.target_version.clone()).unwrap_or_default();
    if hb.os_version.as_deref() != Some(target.as_str()) {
        return Err(CommitRefusal::Version { got: hb.os_version.clone(), want: target });
    }
    // The slot recorded from the pre-reboot heartbeat; if the operator never
    // saw one (it was down), the slot the agent persisted before rebooting,
    // which must at least differ from the slot it was on at offer time.
    let expected_slot = job.target_slot.clone().or_else(|| hb.upgrade.target_slot.clone());
    let baseline_slot = job.baseline.as_ref().and_then(|b| b.booted_slot.clone());
    let slot_ok = expected_slot.is_some()
        && hb.booted_slot == expected_slot
        && (job.target_slot.is_some() || baseline_slot.is_none() || baseline_slot != expected_slot);
    if !slot_ok {
        return Err(CommitRefusal::Slot { got: hb.booted_slot.clone(), want: expected_slot });
    }
    let pre = job.pre_reboot_boot_id.as_deref().or(hb.upgrade.pre_reboot_boot_id.as_deref());
    let base = job.baseline.as_ref().map(|b| b.boot_id.as_str());
    if pre.is_none() && base.is_none() {
        return Err(CommitRefusal::SameBoot(hb.boot_id.clone()));
    }
    if pre == Some(hb.boot_id.as_str()) || base == Some(hb.boot_id.as_str()) {
        return Err(CommitRefusal::SameBoot(hb.boot_id.clone()));
    }
    if hb.health.status != HealthStatus::Healthy {
        return Err(CommitRefusal::Unhealthy(hb.health.status));
    }
    Ok(CommitArgs { target_version: target, boot_id: hb.boot_id.clone() })
}

/// The old version came back on the old slot in a new boot: U-Boot fell back.
fn looks_rolled_back(job: &Job, hb: &Heartbeat) -> bool {
    let Some(base) = &job.baseline else { return false };
    let target = job.offer.as_ref().map(|o| o.target_version.as_str());
    hb.boot_id != base.boot_id
        && job.pre_reboot_boot_id.as_deref() != Some(hb.boot_id.as_str())
        && hb.os_version.is_some()
        && hb.os_version == base.os_version
        && hb.os_version.as_deref() != target
        && hb.booted_slot == base.booted_slot
        && !matches!(hb.upgrade.phase, UpgradePhase::AwaitingCommit | UpgradePhase::Committed)
}

/// The agent refused an offer whose content it could not trust (signature,
/// key or format), so its status names no offer. It is this job's offer when
/// the refusal is newer (device clock against device clock) than the status
/// the device reported when the offer was made: the device has one offer key
/// and only the operator can write it. Without that baseline, the job waits
/// for its deadline instead. Returns the refusal's reason when it applies.
fn refused_unreadable_offer<'a>(job: &Job, hb: &'a Heartbeat) -> Option<&'a RefusalReason> {
    let UpgradePhase::Refused {
        reason:
            reason @ (RefusalReason::UnknownKey { .. } | RefusalReason::BadSignature | RefusalReason::Malformed { .. }),
    } = &hb.upgrade.phase
    else {
        return None;
    };
    let baseline = job.baseline.as_ref().and_then(|b| b.upgrade_since);
    (hb.upgrade.offer_seq.is_none() && baseline.is_some_and(|b| hb.upgrade.since > b)).then_some(reason)
}

/// Whether a time refusal is contradicted by the operator's clock, and so
/// says the device's clock is off ("behind" or "ahead"): a Pi has no RTC and
/// may run for a while before NTP sets it. The agent re-judges a time
/// refusal when its clock steps (issue #12), so such a job waits, still
/// bounded by its device timeout, instead of failing for good.
fn device_clock_off(job: &Job, reason: &RefusalReason, now: UnixMillis) -> Option<&'static str> {
    let offer = job.offer.as_ref()?;
    match reason {
        RefusalReason::NotYetValid if now >= offer.not_before => Some("behind"),
        RefusalReason::Expired if now < offer.expires_at => Some("ahead"),
        _ => None,
    }
}

/// A refusal the agent noted next to its phase (`offer_notes.refusal`)
/// instead of reporting it as the phase: this job's offer by its sequence,
/// or an unverifiable offer (no sequence) noted since the offer was made.
fn noted_refusal<'a>(job: &Job, hb: &'a Heartbeat) -> Option<&'a RefusalReason> {
    let noted = hb.upgrade.offer_notes.refusal.as_ref()?;
    match noted.offer_seq {
        Some(seq) => (Some(seq) == job.offer_seq()).then_some(&noted.reason),
        None => {
            let unreadable = matches!(
                noted.reason,
                RefusalReason::UnknownKey { .. } | RefusalReason::BadSignature | RefusalReason::Malformed { .. }
            );
            // Only the operator writes the device's offer key, so a new
            // unverifiable-offer note is about this offer. Without the notes
            // seen at offer time (older records) it cannot be told apart
            // from an old one: left to the deadline.
            let before = job.baseline.as_ref().and_then(|b| b.offer_notes.as_ref())?;
            (unreadable && before.refusal.as_ref() != Some(noted)).then_some(&noted.reason)
        }
    }
}

/// The device keeps this job's offer while it finishes another upgrade.
fn queued_on_device(job: &Job, hb: &Heartbeat) -> bool {
    let seq = job.offer_seq();
    seq.is_some() && hb.upgrade.offer_notes.busy_offer_seq == seq && hb.upgrade.offer_seq != seq
}

/// Queue rule: a queued job does not time out while the device reports it
/// queued. Each such heartbeat restarts the device timeout, so the job
/// times out only `device_timeout` after the device stopped reporting it
/// (gone silent, or dropped it for a newer offer), or `device_timeout` after
/// the device started on it. The first report goes into the history.
fn queue(job: &mut Job, hb: &Heartbeat, now: UnixMillis) {
    let behind = hb.upgrade.offer_seq;
    if job.queued_behind.as_ref().map(|q| q.offer_seq) != Some(behind) {
        let what = behind.map_or_else(|| "its current upgrade".to_string(), |s| format!("offer {s}"));
        let note = format!("queued on the device behind {what} ({})", hb.upgrade.phase.name());
        log::info!("device {}: {note}", job.device);
        job.note(now, note);
        job.queued_behind =
            Some(crate::model::QueuedBehind { offer_seq: behind, phase: hb.upgrade.phase.name().into() });
    }
    if job.device_timeout_ms > 0 {
        let restarted = now.saturating_add_ms(job.device_timeout_ms);
        job.deadline = Some(job.deadline.map_or(restarted, |d| d.max(restarted)));
    }
}

/// A committed job whose device reports that it does not run (or will not
/// boot again) the committed slot: the job stays finished, but the device's
/// report goes into its history once (shown by `devices show`) and into the
/// log as a warning, so it is never committed silently.
fn note_boot_mismatch(job: &mut Job, hb: &Heartbeat, now: UnixMillis) {
    let Some(mismatch) = &hb.upgrade.boot_mismatch else { return };
    if hb.upgrade.offer_seq != job.offer_seq() {
        return;
    }
    if job.note_once(now, format!("device reports: {mismatch}")) {
        log::warn!("device {} (committed job): {mismatch}", job.device);
    }
}

/// Moves one job on one event. Terminal jobs and unrelated events are ignored.
pub fn device_step(mut job: Job, event: &Event, now: UnixMillis, tuning: &Tuning) -> (Job, Vec<Action>) {
    let mut actions = Vec::new();
    if job.state == JobState::Committed {
        if let Event::Heartbeat(hb) = event {
            note_boot_mismatch(&mut job, hb, now);
        }
    }
    if job.state.is_terminal() {
        return (job, actions); // everything is ignored once a job is finished
    }
    match event {
        Event::Tick => {
            if job.state != JobState::Pending && job.deadline.is_some_and(|d| d <= now) {
                let waiting_for = match job.state {
                    JobState::Rebooting | JobState::CommitSent => "heartbeat from the new boot",
                    _ => "install",
                };
                job.go(JobState::TimedOut { waiting_for: waiting_for.into() }, now, "deadline passed");
            }
        }
        Event::CommitReplied { offer_seq, result, .. } => {
            if job.state == JobState::CommitSent && job.offer_seq() == Some(*offer_seq) {
                match result {
                    Ok(()) => job.go(JobState::Committed, now, "commit acknowledged"),
                    Err(e) => {
                        // Retried on the next matching heartbeat.
                        job.commit_sent_at = None;
                        job.note(now, format!("commit failed, will retry: {e}"));
                    }
                }
            }
        }
        Event::Heartbeat(hb) => on_heartbeat(&mut job, hb, now, tuning, &mut actions),
        Event::RolloutCreated(_) | Event::Control { .. } => {}
    }
    (job, actions)
}

fn on_heartbeat(job: &mut Job, hb: &StoredHeartbeat, now: UnixMillis, tuning: &Tuning, actions: &mut Vec<Action>) {
    if job.state == JobState::Pending {
        return; // not offered yet: nothing a heartbeat can change
    }
    if now.saturating_since(hb.stored_at) > tuning.stale_after_ms {
        return; // stale evidence is no evidence
    }
    let after_reboot = matches!(job.state, JobState::Rebooting | JobState::CommitSent);
    if after_reboot && looks_rolled_back(job, hb) {
        job.go(
            JobState::RolledBack { reason: "old version back on the old slot after reboot".into() },
            now,
            format!("boot {}", hb.boot_id),
        );
        return;
    }
    if job.state == JobState::Offered {
        if let Some(reason) = refused_unreadable_offer(job, hb) {
            job.go(
                JobState::Failed { reason: format!("refused: {reason}") },
                now,
                "reported by agent, offer unreadable",
            );
            return;
        }
        if let Some(reason) = noted_refusal(job, hb) {
            // The device refused the offer without giving up the outcome it
            // reports (committed, rolled back) or the upgrade it is busy with.
            job.queued_behind = None;
            job.go(
                JobState::Failed { reason: format!("refused: {reason}") },
                now,
                format!("noted by agent, device phase stays {}", hb.upgrade.phase.name()),
            );
            return;
        }
        if queued_on_device(job, hb) {
            queue(job, hb, now);
            return;
        }
        if job.queued_behind.is_some() && hb.upgrade.offer_seq != job.offer_seq() {
            // Dropped (a newer offer won on the device): the deadline stands.
            job.queued_behind = None;
            job.note(
                now,
                format!("no longer kept on the device (it keeps {:?})", hb.upgrade.offer_notes.busy_offer_seq),
            );
        }
    }
    if hb.upgrade.offer_seq.is_none() || hb.upgrade.offer_seq != job.offer_seq() {
        return; // status about another (older) offer
    }
    // The device works on this offer now: a queue it waited in is over.
    let was_queued = job.queued_behind.take().is_some();
    match &hb.upgrade.phase {
        UpgradePhase::RolledBack { reason } => {
            job.go(JobState::RolledBack { reason: reason.to_string() }, now, "reported by agent");
        }
        UpgradePhase::Refused { reason } => match device_clock_off(job, reason, now) {
            Some(off) => {
                let note = format!(
                    "device refused the offer ({reason}), which is valid by the operator's clock: the \
                     device's clock is {off}; it judges the offer again once its clock is set"
                );
                if job.note_once(now, note.clone()) {
                    log::warn!("device {}: {note}", job.device);
                }
            }
            None => job.go(JobState::Failed { reason: format!("refused: {reason}") }, now, "reported by agent"),
        },
        UpgradePhase::Failed { reason } => {
            job.go(JobState::Failed { reason: reason.to_string() }, now, "reported by agent");
        }
        UpgradePhase::Offered
        | UpgradePhase::Downloading { .. }
        | UpgradePhase::Verifying
        | UpgradePhase::Installing { .. } => {
            if job.state == JobState::Offered {
                if was_queued && job.device_timeout_ms > 0 {
                    // The device timeout counts from when the device starts.
                    job.deadline = Some(now.saturating_add_ms(job.device_timeout_ms));
                }
                let note = if was_queued {
                    format!("{} (started after the queue)", hb.upgrade.phase.name())
                } else {
                    hb.upgrade.phase.name().to_string()
                };
                job.go(JobState::Installing, now, note);
            }
        }
        UpgradePhase::Installed | UpgradePhase::Rebooting => {
            if matches!(job.state, JobState::Offered | JobState::Installing) {
                job.pre_reboot_boot_id =
                    Some(hb.upgrade.pre_reboot_boot_id.clone().unwrap_or_else(|| hb.boot_id.clone()));
                job.target_slot = hb.upgrade.target_slot.clone();
                if job.reboot_timeout_ms > 0 {
                    job.deadline = Some(now.saturating_add_ms(job.reboot_timeout_ms));
                }
                job.go(JobState::Rebooting, now, format!("into slot {:?}", job.target_slot));
            }
        }
        UpgradePhase::AwaitingCommit => {
            let due = match job.state {
                JobState::CommitSent => {
                    job.commit_sent_at.is_none_or(|t| now.saturating_since(t) >= tuning.commit_retry_ms)
                }
                _ => true,
            };
            if !due {
                return;
            }
            if let Ok(args) = check_commit(job, hb, now, tuning) {
                let seq = job.offer_seq().unwrap_or_default();
                job.commit_sent_at = Some(now);
                job.commit_boot_id = Some(args.boot_id.clone());
                if job.state != JobState::CommitSent {
                    job.go(JobState::CommitSent, now, format!("boot {}", args.boot_id));
                }
                actions.push(Action::SendCommit { device: job.device.clone(), offer_seq: seq, args });
            }
        }
        UpgradePhase::Committed => {
            // The agent says the slot is marked good: only a commit (possibly
            // from before an operator restart) does that.
            let target = job.offer.as_ref().map(|o| o.target_version.as_str());
            if hb.os_version.as_deref() == target {
                job.go(JobState::Committed, now, "reported by agent");
            }
        }
        UpgradePhase::Idle => {}
    }
}
