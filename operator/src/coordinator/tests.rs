//! Table tests of the decision function: every (job state, event) pair, then
//! the rollout-level rules (waves, max in flight, halting, controls).

use super::*;
use crate::model::{Baseline, HaltThreshold, JobState, RolloutPolicy, RolloutStatus};
use harmony_protocol::{
    BundleSource, FailureReason, Health, HealthStatus, Heartbeat, NotedRefusal, OfferNotes, RefusalReason,
    RollbackReason, UpgradePhase, UpgradeStatus, SCHEMA_VERSION,
};

const NOW: u64 = 1_000_000_000;

fn dev(n: &str) -> DeviceId {
    DeviceId::new(n).unwrap()
}

fn offer(device: &DeviceId, seq: u64) -> UpgradeOffer {
    UpgradeOffer {
        schema: SCHEMA_VERSION,
        offer_seq: seq,
        device_id: device.clone(),
        rollout_id: Some("r1".into()),
        target_version: "2.0".into(),
        compatible: "c".into(),
        bundle: BundleSource {
            object: Some("2.0".into()),
            url: None,
            sha256: "00".into(),
            size: 1,
            authorization: None,
            signature_sha256: None,
        },
        not_before: UnixMillis(NOW),
        expires_at: UnixMillis(NOW + 1),
        allow_downgrade: false,
    }
}

fn job_in(state: JobState) -> Job {
    let d = dev("pi-1");
    let mut j = Job::pending(d.clone(), "r1", 0, UnixMillis(NOW - 10_000));
    if state != JobState::Pending {
        j.offer = Some(offer(&d, 5));
        j.baseline = Some(Baseline {
            boot_id: "b0".into(),
            booted_slot: Some("A".into()),
            os_version: Some("1.0".into()),
            upgrade_since: Some(UnixMillis(NOW - 5_000)),
            offer_notes: Some(Default::default()),
        });
        j.deadline = Some(UnixMillis(NOW + 60_000));
    }
    if matches!(state, JobState::Rebooting | JobState::CommitSent) {
        j.pre_reboot_boot_id = Some("b0".into());
        j.target_slot = Some("B".into());
    }
    if state == JobState::CommitSent {
        j.commit_sent_at = Some(UnixMillis(NOW - 1_000));
    }
    j.state = state;
    j
}

fn all_states() -> Vec<JobState> {
    vec![
        JobState::Pending,
        JobState::Offered,
        JobState::Installing,
        JobState::Rebooting,
        JobState::CommitSent,
        JobState::Committed,
        JobState::RolledBack { reason: "x".into() },
        JobState::Failed { reason: "x".into() },
        JobState::TimedOut { waiting_for: "x".into() },
        JobState::Skipped,
        JobState::UpToDate,
    ]
}

/// A fresh heartbeat of the good new boot: target version, slot B, new boot id, healthy, awaiting commit.
fn good() -> Heartbeat {
    Heartbeat {
        schema: SCHEMA_VERSION,
        device_id: dev("pi-1"),
        agent_version: "t".into(),
        os_version: Some("2.0".into()),
        compatible: Some("c".into()),
        booted_slot: Some("B".into()),
        boot_id: "b1".into(),
        uptime_secs: 5,
        health: Health::healthy(),
        upgrade: UpgradeStatus {
            phase: UpgradePhase::AwaitingCommit,
            offer_seq: Some(5),
            rollout_id: Some("r1".into()),
            target_version: Some("2.0".into()),
            pre_reboot_boot_id: Some("b0".into()),
            target_slot: Some("B".into()),
            since: UnixMillis(NOW),
            offer_notes: Default::default(),
            boot_mismatch: None,
            transfer: None,
        },
        labels: Default::default(),
        seq: 1,
        sent_at: UnixMillis(NOW - 100),
    }
}

/// Tests edit a stored heartbeat's payload in place.
impl std::ops::DerefMut for StoredHeartbeat {
    fn deref_mut(&mut self) -> &mut Heartbeat {
        &mut self.heartbeat
    }
}

/// As the server would store `h` now: the next revision, stored 100 ms ago.
fn stored(h: Heartbeat) -> StoredHeartbeat {
    static REVISION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let revision = REVISION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    StoredHeartbeat { stored_at: UnixMillis(NOW - 100), revision, heartbeat: h }
}

fn hb(f: impl FnOnce(&mut StoredHeartbeat)) -> Event {
    let mut h = stored(good());
    f(&mut h);
    Event::Heartbeat(Box::new(h))
}

fn pre_reboot(h: &mut Heartbeat) {
    h.os_version = Some("1.0".into());
    h.booted_slot = Some("A".into());
    h.boot_id = "b0".into();
}

/// A refusal the agent could not tie to any offer (it did not trust the content).
fn unreadable(h: &mut Heartbeat, since: u64) {
    pre_reboot(h);
    h.upgrade = UpgradeStatus {
        phase: UpgradePhase::Refused { reason: RefusalReason::UnknownKey { key_id: "k2".into() } },
        ..UpgradeStatus::idle(UnixMillis(since))
    };
}

/// The device works on offer 4 (downloading) and keeps offer `kept` for later.
fn busy_with_4_keeping_payload(h: &mut Heartbeat, kept: u64) {
    pre_reboot(h);
    h.upgrade.offer_seq = Some(4);
    h.upgrade.phase = UpgradePhase::Downloading { bytes_done: 1, bytes_total: 2 };
    h.upgrade.offer_notes.busy_offer_seq = Some(kept);
}

/// (`stored_at`: when the server stored the heartbeat.)
fn busy_with_4_keeping(h: &mut StoredHeartbeat, kept: u64, stored_at: u64) {
    busy_with_4_keeping_payload(h, kept);
    h.stored_at = UnixMillis(stored_at);
}

/// The device committed offer 4 (version 1.9 on slot B) and noted a refusal.
fn committed_4_noting(h: &mut Heartbeat, seq: Option<u64>, reason: RefusalReason) {
    h.os_version = Some("1.9".into());
    h.upgrade.offer_seq = Some(4);
    h.upgrade.target_version = Some("1.9".into());
    h.upgrade.phase = UpgradePhase::Committed;
    h.upgrade.offer_notes.refusal = Some(NotedRefusal { offer_seq: seq, reason });
}

/// Expected outcome per state, in the order of [`all_states`]:
/// "=" unchanged, "C" commit sent (state commit_sent), else the new state's name.
type Row = (&'static str, Event, u64, [&'static str; 10]);

fn table() -> Vec<Row> {
    use UpgradePhase as P;
    let t = ["=", "=", "=", "=", "=", "=", "=", "=", "=", "="];
    vec![
        (
            "progress",
            hb(|h| {
                pre_reboot(h);
                h.upgrade.phase = P::Downloading { bytes_done: 1, bytes_total: 2 }
            }),
            NOW,
            ["=", "installing", "=", "=", "=", "=", "=", "=", "=", "="],
        ),
        (
            "installed",
            hb(|h| {
                pre_reboot(h);
                h.upgrade.phase = P::Installed
            }),
            NOW,
            ["=", "rebooting", "rebooting", "=", "=", "=", "=", "=", "=", "="],
        ),
        ("good new boot", hb(|_| {}), NOW, ["=", "C", "C", "C", "=", "=", "=", "=", "=", "="]),
        ("good new boot, retry due", hb(|_| {}), NOW + 5_000, ["=", "C", "C", "C", "C", "=", "=", "=", "=", "="]),
        ("same boot id as before reboot", hb(|h| h.boot_id = "b0".into()), NOW, t),
        ("wrong slot", hb(|h| h.booted_slot = Some("A".into())), NOW, t),
        ("no slot", hb(|h| h.booted_slot = None), NOW, t),
        ("unhealthy", hb(|h| h.health.status = HealthStatus::Unhealthy), NOW, t),
        ("health unknown", hb(|h| h.health.status = HealthStatus::Unknown), NOW, t),
        ("stale", hb(|h| h.stored_at = UnixMillis(NOW - 31_000)), NOW, t),
        // Freshness is the server's word: a device clock years behind (no
        // RTC, no NTP yet) or ahead changes nothing.
        (
            "device clock in 1970",
            hb(|h| h.sent_at = UnixMillis(0)),
            NOW,
            ["=", "C", "C", "C", "=", "=", "=", "=", "=", "="],
        ),
        (
            "device clock ahead",
            hb(|h| h.sent_at = UnixMillis(NOW * 2)),
            NOW,
            ["=", "C", "C", "C", "=", "=", "=", "=", "=", "="],
        ),
        (
            "stale, device clock says now",
            hb(|h| {
                h.stored_at = UnixMillis(NOW - 31_000);
                h.sent_at = UnixMillis(NOW)
            }),
            NOW,
            t,
        ),
        ("wrong version", hb(|h| h.os_version = Some("1.9".into())), NOW, t),
        ("other offer", hb(|h| h.upgrade.offer_seq = Some(4)), NOW, t),
        ("no offer", hb(|h| h.upgrade.offer_seq = None), NOW, t),
        (
            "not awaiting commit yet",
            hb(|h| h.upgrade.phase = P::Rebooting),
            NOW,
            ["=", "rebooting", "rebooting", "=", "=", "=", "=", "=", "=", "="],
        ),
        (
            "agent reports rollback",
            hb(|h| {
                pre_reboot(h);
                h.boot_id = "b2".into();
                h.upgrade.phase = P::RolledBack { reason: RollbackReason::BootFailed };
            }),
            NOW,
            ["=", "rolled_back", "rolled_back", "rolled_back", "rolled_back", "=", "=", "=", "=", "="],
        ),
        (
            "old version back on old slot, new boot",
            hb(|h| {
                pre_reboot(h);
                h.boot_id = "b2".into();
                h.upgrade = UpgradeStatus::idle(UnixMillis(NOW));
            }),
            NOW,
            ["=", "=", "=", "rolled_back", "rolled_back", "=", "=", "=", "=", "="],
        ),
        (
            "refused as expired, also by the operator's clock",
            hb(|h| {
                pre_reboot(h);
                h.upgrade.phase = P::Refused { reason: RefusalReason::Expired }
            }),
            NOW + 1,
            ["=", "failed", "failed", "failed", "failed", "=", "=", "=", "=", "="],
        ),
        (
            "refused as not yet valid, also by the operator's clock",
            hb(|h| {
                pre_reboot(h);
                h.upgrade.phase = P::Refused { reason: RefusalReason::NotYetValid }
            }),
            NOW - 1,
            ["=", "failed", "failed", "failed", "failed", "=", "=", "=", "=", "="],
        ),
        // The offer is valid by the operator's clock: the device's is off and
        // the agent judges the offer again once it is set; the job waits.
        (
            "refused as expired, device clock ahead",
            hb(|h| {
                pre_reboot(h);
                h.upgrade.phase = P::Refused { reason: RefusalReason::Expired }
            }),
            NOW,
            t,
        ),
        (
            "refused as not yet valid, device clock behind",
            hb(|h| {
                pre_reboot(h);
                h.upgrade.phase = P::Refused { reason: RefusalReason::NotYetValid }
            }),
            NOW,
            t,
        ),
        (
            "refused, offer unreadable (unknown key), after the offer",
            hb(|h| unreadable(h, NOW - 4_999)),
            NOW,
            ["=", "failed", "=", "=", "=", "=", "=", "=", "=", "="],
        ),
        ("refused, offer unreadable, before the offer", hb(|h| unreadable(h, NOW - 5_000)), NOW, t),
        (
            "install failed",
            hb(|h| {
                pre_reboot(h);
                h.upgrade.phase = P::Failed { reason: FailureReason::InstallFailed { last_error: "e".into() } };
            }),
            NOW,
            ["=", "failed", "failed", "failed", "failed", "=", "=", "=", "=", "="],
        ),
        (
            "agent reports committed",
            hb(|h| h.upgrade.phase = P::Committed),
            NOW,
            ["=", "committed", "committed", "committed", "committed", "=", "=", "=", "=", "="],
        ),
        (
            "committed but wrong version",
            hb(|h| {
                h.upgrade.phase = P::Committed;
                h.os_version = Some("1.0".into())
            }),
            NOW,
            t,
        ),
        (
            "idle",
            hb(|h| {
                pre_reboot(h);
                h.upgrade = UpgradeStatus::idle(UnixMillis(NOW))
            }),
            NOW,
            t,
        ),
        ("tick before deadline", Event::Tick, NOW + 59_999, t),
        (
            "tick at deadline",
            Event::Tick,
            NOW + 60_000,
            ["=", "timed_out", "timed_out", "timed_out", "timed_out", "=", "=", "=", "=", "="],
        ),
        (
            "commit acknowledged",
            Event::CommitReplied { device: dev("pi-1"), offer_seq: 5, result: Ok(()) },
            NOW,
            ["=", "=", "=", "=", "committed", "=", "=", "=", "=", "="],
        ),
        (
            "commit ack for another offer",
            Event::CommitReplied { device: dev("pi-1"), offer_seq: 4, result: Ok(()) },
            NOW,
            t,
        ),
        (
            "commit failed",
            Event::CommitReplied { device: dev("pi-1"), offer_seq: 5, result: Err("timeout".into()) },
            NOW,
            t,
        ),
        ("device busy with another offer keeps this one", hb(|h| busy_with_4_keeping(h, 5, NOW - 100)), NOW, t),
        ("device keeps another offer while busy", hb(|h| busy_with_4_keeping(h, 6, NOW - 100)), NOW, t),
        (
            "refusal of this offer noted, device stays committed",
            hb(|h| {
                committed_4_noting(h, Some(5), RefusalReason::Downgrade { current: "2.0".into(), target: "2.0".into() })
            }),
            NOW,
            ["=", "failed", "=", "=", "=", "=", "=", "=", "=", "="],
        ),
        ("refusal of another offer noted", hb(|h| committed_4_noting(h, Some(3), RefusalReason::Expired)), NOW, t),
        (
            "unverifiable offer noted after the offer, device stays committed",
            hb(|h| committed_4_noting(h, None, RefusalReason::BadSignature)),
            NOW,
            ["=", "failed", "=", "=", "=", "=", "=", "=", "=", "="],
        ),
        ("a verifiable refusal without seq noted", hb(|h| committed_4_noting(h, None, RefusalReason::Busy)), NOW, t),
        ("control", Event::Control { rollout_id: "r1".into(), control: Control::Pause, revision: 1 }, NOW, t),
    ]
}

#[test]
fn every_state_event_pair() {
    let tuning = Tuning::default();
    let mut failures = Vec::new();
    for (name, event, now, expected) in table() {
        for (state, want) in all_states().into_iter().zip(expected) {
            let job = job_in(state.clone());
            let (after, actions) = device_step(job.clone(), &event, UnixMillis(now), &tuning);
            let commits = actions.iter().filter(|a| matches!(a, Action::SendCommit { .. })).count();
            let ok = match want {
                "=" => after.state == state && commits == 0,
                "C" => after.state == JobState::CommitSent && commits == 1,
                other => after.state.name() == other && commits == 0,
            };
            if !ok {
                failures.push(format!(
                    "{name} in {}: want {want}, got {} with {commits} commits",
                    state.name(),
                    after.state.name()
                ));
            }
            // Terminal jobs never change at all, not even their history.
            if state.is_terminal() && after != job {
                failures.push(format!("{name} changed terminal job {}", state.name()));
            }
            // Every change of state is recorded with the time.
            if after.state != state {
                let last = after.history.last().unwrap();
                if last.at != UnixMillis(now) || last.to != after.state.name() {
                    failures.push(format!("{name} in {}: transition not recorded", state.name()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_commit_names_the_new_boot() {
    let (job, actions) = device_step(job_in(JobState::Rebooting), &hb(|_| {}), UnixMillis(NOW), &Tuning::default());
    assert_eq!(job.commit_boot_id.as_deref(), Some("b1"));
    match &actions[..] {
        [Action::SendCommit { args, offer_seq: 5, .. }] => {
            assert_eq!((args.target_version.as_str(), args.boot_id.as_str()), ("2.0", "b1"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn commit_refusals_say_why() {
    let j = job_in(JobState::Rebooting);
    let t = Tuning::default();
    let check = |f: fn(&mut StoredHeartbeat)| {
        let mut h = stored(good());
        f(&mut h);
        check_commit(&j, &h, UnixMillis(NOW), &t)
    };
    assert!(check(|_| {}).is_ok());
    assert!(matches!(check(|h| h.boot_id = "b0".into()), Err(CommitRefusal::SameBoot(_))));
    assert!(matches!(check(|h| h.booted_slot = Some("A".into())), Err(CommitRefusal::Slot { .. })));
    assert!(matches!(check(|h| h.health.status = HealthStatus::Unhealthy), Err(CommitRefusal::Unhealthy(_))));
    assert!(matches!(check(|h| h.stored_at = UnixMillis(0)), Err(CommitRefusal::Stale { .. })));
    assert!(check(|h| h.sent_at = UnixMillis(0)).is_ok(), "the device's clock is not evidence of age");
    assert!(matches!(check(|h| h.os_version = None), Err(CommitRefusal::Version { .. })));
    // The slot recorded before the reboot wins over what the new boot claims.
    assert!(matches!(
        check(|h| {
            h.booted_slot = Some("C".into());
            h.upgrade.target_slot = Some("C".into())
        }),
        Err(CommitRefusal::Slot { .. })
    ));
}

#[test]
fn without_a_pre_reboot_record_the_slot_must_differ_from_the_offer_time_slot() {
    let mut j = job_in(JobState::Installing);
    j.target_slot = None;
    let mut h = good();
    h.booted_slot = Some("A".into());
    h.upgrade.target_slot = Some("A".into()); // claims it installed into the slot it was already on
    assert!(matches!(
        check_commit(&j, &stored(h), UnixMillis(NOW), &Tuning::default()),
        Err(CommitRefusal::Slot { .. })
    ));
}

#[test]
fn an_unreadable_refusal_without_a_baseline_is_left_to_the_deadline() {
    let mut j = job_in(JobState::Offered);
    j.baseline = None;
    let (after, _) = device_step(j, &hb(|h| unreadable(h, NOW)), UnixMillis(NOW), &Tuning::default());
    assert_eq!(after.state, JobState::Offered);
}

#[test]
fn every_unreadable_reason_fails_the_offered_job_and_no_other_refusal_without_seq_does() {
    let with = |reason: RefusalReason| {
        let e = hb(|h| {
            unreadable(h, NOW);
            h.upgrade.phase = UpgradePhase::Refused { reason };
        });
        device_step(job_in(JobState::Offered), &e, UnixMillis(NOW), &Tuning::default()).0.state.name()
    };
    assert_eq!(with(RefusalReason::BadSignature), "failed");
    assert_eq!(with(RefusalReason::Malformed { detail: "x".into() }), "failed");
    assert_eq!(with(RefusalReason::UnknownKey { key_id: "k".into() }), "failed");
    assert_eq!(with(RefusalReason::Expired), "offered");
    assert_eq!(with(RefusalReason::Busy), "offered");
}

fn policy(halt: HaltThreshold, max_in_flight: usize) -> RolloutPolicy {
    RolloutPolicy {
        max_in_flight,
        device_timeout_ms: 60_000,
        reboot_timeout_ms: 30_000,
        halt,
        allow_downgrade: false,
        offer_ttl_ms: 3_600_000,
        max_concurrent_downloads: None,
    }
}

fn rollout(n: usize, canary: usize, halt: HaltThreshold, max_in_flight: usize) -> Rollout {
    let devices: Vec<DeviceId> = (0..n).map(|i| dev(&format!("d{i:03}"))).collect();
    Rollout {
        id: "r1".into(),
        bundle: crate::model::BundleRecord {
            id: "2.0".into(),
            version: "2.0".into(),
            compatible: "c".into(),
            sha256: "00".into(),
            size: 1,
            pushed_at: UnixMillis(0),
            signature_sha256: None,
        },
        policy: policy(halt, max_in_flight),
        waves: plan_waves(&devices, &WavePlan { canary, percents: vec![50, 100] }),
        current_wave: 0,
        status: RolloutStatus::Running,
        created_at: UnixMillis(NOW),
        last_ctl_rev: 0,
        accepted_failures: 0,
        history: Vec::new(),
    }
}

fn offers(actions: &[Action]) -> Vec<DeviceId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteOffer(o) => Some(o.device_id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn waves_are_canary_then_cumulative_percentages() {
    let d: Vec<DeviceId> = (0..10).map(|i| dev(&format!("d{i}"))).collect();
    let sizes =
        |canary, p: Vec<u8>| plan_waves(&d, &WavePlan { canary, percents: p }).iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(sizes(1, vec![50, 100]), vec![1, 4, 5]);
    assert_eq!(sizes(2, vec![10]), vec![2, 8]);
    assert_eq!(sizes(0, vec![]), vec![10]);
    assert_eq!(sizes(20, vec![50]), vec![10]);
    assert_eq!(
        plan_waves(&d, &WavePlan { canary: 3, percents: vec![30, 60] }).concat(),
        d,
        "every device exactly once, in order"
    );
}

#[test]
fn creation_offers_only_the_canary_up_to_max_in_flight() {
    let (state, actions) = step(
        State::default(),
        &Event::RolloutCreated(Box::new(rollout(10, 3, HaltThreshold::Count(2), 2))),
        UnixMillis(NOW),
    );
    assert_eq!(offers(&actions), vec![dev("d000"), dev("d001")]);
    // Persist before the offer is written: a crash in between re-puts the same offer.
    let pos = |pred: &dyn Fn(&Action) -> bool| actions.iter().position(pred).unwrap();
    assert!(pos(&|a| *a == Action::PersistJob(dev("d000"))) < pos(&|a| matches!(a, Action::WriteOffer(_))));
    // The same rollout again (our own KV write echoed back) changes nothing.
    let (state2, again) = step(
        state.clone(),
        &Event::RolloutCreated(Box::new(rollout(10, 3, HaltThreshold::Count(2), 2))),
        UnixMillis(NOW + 1),
    );
    assert!(again.iter().all(|a| !matches!(a, Action::WriteOffer(_))), "{again:?}");
    assert_eq!(state2.jobs, state.jobs);
}

fn report(state: State, device: &str, f: impl FnOnce(&mut Heartbeat), now: u64) -> (State, Vec<Action>) {
    let mut h = good();
    h.device_id = dev(device);
    h.sent_at = UnixMillis(now);
    h.upgrade.offer_seq = state.jobs[&dev(device)].offer_seq();
    f(&mut h);
    let mut h = stored(h);
    h.stored_at = UnixMillis(now);
    step(state, &Event::Heartbeat(Box::new(h)), UnixMillis(now))
}

fn fail(h: &mut Heartbeat) {
    h.upgrade.phase = UpgradePhase::Failed { reason: FailureReason::InstallFailed { last_error: "e".into() } };
}

#[test]
fn canary_failures_halt_and_nobody_else_gets_an_offer() {
    let (s, _) = step(
        State::default(),
        &Event::RolloutCreated(Box::new(rollout(10, 3, HaltThreshold::Count(2), 3))),
        UnixMillis(NOW),
    );
    let (s, a) = report(s, "d000", fail, NOW + 1);
    assert!(offers(&a).is_empty(), "one failure is below the threshold; the wave is fully in flight");
    assert_eq!(s.rollouts["r1"].status, RolloutStatus::Running);
    let (s, a) = report(s, "d001", fail, NOW + 2);
    assert!(matches!(s.rollouts["r1"].status, RolloutStatus::Halted { .. }));
    assert!(offers(&a).is_empty());
    // The third canary device still commits: a halt stops offers, not commits.
    let (s, a) = report(s, "d002", |_| {}, NOW + 3);
    assert!(a.iter().any(|a| matches!(a, Action::SendCommit { .. })));
    let (s, a) =
        step(s, &Event::CommitReplied { device: dev("d002"), offer_seq: NOW, result: Ok(()) }, UnixMillis(NOW + 4));
    assert_eq!(s.jobs[&dev("d002")].state, JobState::Committed);
    assert!(offers(&a).is_empty());
    let (s, a) = step(s, &Event::Tick, UnixMillis(NOW + 10_000_000));
    assert!(offers(&a).is_empty());
    let offered = s.jobs.values().filter(|j| j.offer.is_some()).count();
    assert_eq!(offered, 3, "only the canary wave was ever offered");
}

#[test]
fn percent_threshold_and_timeouts_count() {
    let (s, _) = step(
        State::default(),
        &Event::RolloutCreated(Box::new(rollout(4, 4, HaltThreshold::Percent(50), 4))),
        UnixMillis(NOW),
    );
    let (s, _) = report(s, "d000", fail, NOW + 1);
    assert_eq!(s.rollouts["r1"].status, RolloutStatus::Running, "1 of 4 is 25%");
    let (s, _) = step(s, &Event::Tick, UnixMillis(NOW + 60_000));
    assert!(matches!(s.rollouts["r1"].status, RolloutStatus::Halted { .. }), "timeouts count");
    assert!(s.jobs.values().filter(|j| matches!(j.state, JobState::TimedOut { .. })).count() == 3);
}

#[test]
fn waves_advance_when_every_device_is_done_and_seqs_increase() {
    let (mut s, _) = step(
        State::default(),
        &Event::RolloutCreated(Box::new(rollout(4, 1, HaltThreshold::Count(1), 10))),
        UnixMillis(NOW),
    );
    s.seqs.insert(dev("d001"), NOW + 500); // a higher sequence from an earlier rollout
    let (s, _) = report(s, "d000", |h| h.upgrade.phase = UpgradePhase::Committed, NOW + 1);
    assert_eq!(s.rollouts["r1"].current_wave, 1);
    assert_eq!(s.jobs[&dev("d001")].offer_seq(), Some(NOW + 501), "strictly above the last one");
    assert_eq!(s.jobs[&dev("d002")].state, JobState::Pending, "wave 2 waits for wave 1");
    let (s, _) = report(s, "d001", |h| h.upgrade.phase = UpgradePhase::Committed, NOW + 2);
    assert_eq!(s.jobs[&dev("d002")].state, JobState::Offered);
    let (s, _) = report(s, "d002", |h| h.upgrade.phase = UpgradePhase::Committed, NOW + 3);
    let (s, _) = report(s, "d003", |h| h.upgrade.phase = UpgradePhase::Committed, NOW + 4);
    assert_eq!(s.rollouts["r1"].status, RolloutStatus::Completed);
}

#[test]
fn pause_resume_abort() {
    let (s, _) = step(
        State::default(),
        &Event::RolloutCreated(Box::new(rollout(4, 1, HaltThreshold::Count(1), 10))),
        UnixMillis(NOW),
    );
    let ctl = |c, rev| Event::Control { rollout_id: "r1".into(), control: c, revision: rev };
    let (s, _) = step(s, &ctl(Control::Pause, 10), UnixMillis(NOW + 1));
    assert_eq!(s.rollouts["r1"].status, RolloutStatus::Paused);
    let (s, a) = report(s, "d000", |h| h.upgrade.phase = UpgradePhase::Committed, NOW + 2);
    assert!(offers(&a).is_empty(), "paused: no new offers");
    let (s, _) = step(s, &ctl(Control::Resume, 9), UnixMillis(NOW + 3));
    assert_eq!(s.rollouts["r1"].status, RolloutStatus::Paused, "an already-applied (older) request is ignored");
    let (s, a) = step(s, &ctl(Control::Resume, 11), UnixMillis(NOW + 3));
    assert_eq!(offers(&a), vec![dev("d001")]);
    let (s, a) = step(s, &ctl(Control::Abort, 12), UnixMillis(NOW + 4));
    assert_eq!(s.rollouts["r1"].status, RolloutStatus::Aborted);
    assert!(offers(&a).is_empty());
    assert_eq!(s.jobs[&dev("d002")].state, JobState::Skipped);
    assert_eq!(s.jobs[&dev("d001")].state, JobState::Offered, "in flight stays in flight");
    let (s, _) = step(s, &ctl(Control::Resume, 13), UnixMillis(NOW + 5));
    assert_eq!(s.rollouts["r1"].status, RolloutStatus::Aborted, "nothing revives an aborted rollout");
    let (s, a) = step(s, &Event::Tick, UnixMillis(NOW + 6));
    assert!(offers(&a).is_empty());
    let _ = s;
}

#[test]
fn heartbeats_of_devices_outside_rollouts_only_update_the_registry() {
    let (s, a) = step(State::default(), &hb(|_| {}), UnixMillis(NOW));
    assert!(a.is_empty());
    assert_eq!(s.seen[&dev("pi-1")].boot_id, "b1");
    // An older heartbeat (lower KV revision, delivered late after a
    // reconnect) does not overwrite a newer one...
    let (s, _) = step(
        s,
        &hb(|h| {
            h.boot_id = "old".into();
            h.revision = 0
        }),
        UnixMillis(NOW),
    );
    assert_eq!(s.seen[&dev("pi-1")].boot_id, "b1");
    // ...but a newer one does, even when the device's clock stepped back
    // years between the two (a Pi without RTC before NTP).
    let (s, _) = step(
        s,
        &hb(|h| {
            h.boot_id = "b2".into();
            h.sent_at = UnixMillis(1)
        }),
        UnixMillis(NOW),
    );
    assert_eq!(s.seen[&dev("pi-1")].boot_id, "b2");
}

/// What a device last reported decides whether its pending job is offered:
/// never while any offer is in flight on it, never when it already runs
/// the target (issue #17, item 4).
#[test]
fn a_device_is_offered_only_with_no_offer_in_flight_and_not_already_on_the_target() {
    let downloading = UpgradePhase::Downloading { bytes_done: 1, bytes_total: 2 };
    let rows: Vec<(UpgradePhase, &str, &str)> = vec![
        (UpgradePhase::Idle, "1.0", "offered"),
        (UpgradePhase::Committed, "1.0", "offered"),
        (UpgradePhase::Failed { reason: FailureReason::InstallFailed { last_error: "e".into() } }, "1.0", "offered"),
        (UpgradePhase::Offered, "1.0", "pending"),
        (downloading, "1.0", "pending"),
        (UpgradePhase::Verifying, "1.0", "pending"),
        (UpgradePhase::Installing { percent: 5 }, "1.0", "pending"),
        (UpgradePhase::Installed, "1.0", "pending"),
        (UpgradePhase::Rebooting, "1.0", "pending"),
        (UpgradePhase::AwaitingCommit, "2.0", "pending"),
        (UpgradePhase::Idle, "2.0", "up_to_date"),
        (UpgradePhase::Committed, "2.0", "up_to_date"),
    ];
    for (phase, os, want) in rows {
        let mut h = good();
        h.device_id = dev("d000");
        h.os_version = Some(os.into());
        h.upgrade.phase = phase.clone();
        let (state, _) = step(State::default(), &Event::Heartbeat(Box::new(stored(h))), UnixMillis(NOW));
        let r = rollout(1, 1, HaltThreshold::Count(1), 1);
        let (state, actions) = step(state, &Event::RolloutCreated(Box::new(r)), UnixMillis(NOW));
        assert_eq!(state.jobs[&dev("d000")].state.name(), want, "{phase:?} on {os}");
        assert_eq!(offers(&actions).len(), usize::from(want == "offered"), "{phase:?} on {os}");
    }
}

/// A rollout device without a job whose signed offer of this rollout is
/// still in the offer bucket gets the job back on that offer, not a new one.
#[test]
fn a_lost_job_is_rebuilt_from_the_offer_of_its_rollout_only() {
    let d = dev("d000");
    for (rollout_id, rebuilt) in [(Some("r1"), true), (Some("r0"), false), (None, false)] {
        let mut state = State::default();
        let mut o = offer(&d, 42);
        o.rollout_id = rollout_id.map(str::to_string);
        state.offers.insert(d.clone(), o);
        let r = rollout(1, 1, HaltThreshold::Count(1), 1);
        let (state, actions) = step(state, &Event::RolloutCreated(Box::new(r)), UnixMillis(NOW));
        let job = &state.jobs[&d];
        if rebuilt {
            assert_eq!((job.state.name(), job.offer_seq()), ("offered", Some(42)));
            assert!(offers(&actions).is_empty(), "{actions:?}");
            assert_eq!(state.seqs[&d], 42);
        } else {
            assert_eq!(offers(&actions), vec![d.clone()], "{rollout_id:?}");
            assert!(job.offer_seq() > Some(42));
        }
    }
}

/// Issue 12 item 8: a committed device that reports it runs the other slot
/// is noted on the job once (shown by `devices show`), never silently.
#[test]
fn a_committed_job_notes_a_boot_mismatch_once() {
    use harmony_protocol::upgrade::BootMismatch;
    let mismatch = BootMismatch::NotOnCommittedSlot { committed: "B".into(), booted: "A".into() };
    let report = hb(|h| {
        h.upgrade.phase = UpgradePhase::RolledBack { reason: RollbackReason::BootFailed };
        h.upgrade.boot_mismatch = Some(mismatch.clone());
    });
    let t = Tuning::default();
    let (job, actions) = device_step(job_in(JobState::Committed), &report, UnixMillis(NOW), &t);
    assert!(actions.is_empty());
    assert_eq!(job.state, JobState::Committed, "the job's own outcome does not change");
    let last = job.history.last().unwrap();
    assert_eq!(last.note, format!("device reports: {mismatch}"));
    let (again, _) = device_step(job.clone(), &report, UnixMillis(NOW + 1), &t);
    assert_eq!(again, job, "noted once, not on every heartbeat");
    let other_offer = hb(|h| {
        h.upgrade.offer_seq = Some(4);
        h.upgrade.boot_mismatch = Some(mismatch.clone());
    });
    let committed = job_in(JobState::Committed);
    assert_eq!(device_step(committed.clone(), &other_offer, UnixMillis(NOW), &t).0, committed);
}

fn queued_job() -> Job {
    let mut j = job_in(JobState::Offered);
    j.device_timeout_ms = 60_000;
    j
}

#[test]
fn a_queued_offer_does_not_time_out_while_the_device_reports_it_and_its_timeout_counts_from_the_start() {
    let t = Tuning::default();
    let at = |ms: u64| UnixMillis(NOW + ms);
    let (j, _) = device_step(queued_job(), &hb(|h| busy_with_4_keeping(h, 5, NOW + 50_000)), at(50_000), &t);
    assert_eq!(j.queued_behind.as_ref().map(|q| q.offer_seq), Some(Some(4)));
    assert_eq!(j.deadline, Some(at(110_000)), "restarted by the report");
    let (j, _) = device_step(j, &hb(|h| busy_with_4_keeping(h, 5, NOW + 100_000)), at(100_000), &t);
    let (j, _) = device_step(j, &Event::Tick, at(120_000), &t);
    assert_eq!(j.state, JobState::Offered, "not timed out past the original deadline: {:?}", j.history);
    let queued_notes = j.history.iter().filter(|h| h.note.starts_with("queued on the device behind offer 4")).count();
    assert_eq!(queued_notes, 1, "queued once in the history: {:?}", j.history);

    // The device starts on it: the device timeout counts from here.
    let started = hb(|h| {
        pre_reboot(h);
        h.upgrade.phase = UpgradePhase::Downloading { bytes_done: 0, bytes_total: 2 };
        h.stored_at = UnixMillis(NOW + 130_000);
    });
    let (j, _) = device_step(j, &started, at(130_000), &t);
    assert_eq!((j.state.name(), j.queued_behind.clone()), ("installing", None));
    assert_eq!(j.deadline, Some(at(190_000)));
    assert_eq!(device_step(j.clone(), &Event::Tick, at(189_999), &t).0.state, JobState::Installing);
    assert_eq!(device_step(j, &Event::Tick, at(190_000), &t).0.state.name(), "timed_out");
}

#[test]
fn a_queued_offer_times_out_once_the_device_stops_reporting_it() {
    let t = Tuning::default();
    let at = |ms: u64| UnixMillis(NOW + ms);
    let (j, _) = device_step(queued_job(), &hb(|h| busy_with_4_keeping(h, 5, NOW + 50_000)), at(50_000), &t);
    // Dropped for a newer offer: no longer queued, the deadline stands.
    let (j, _) = device_step(j, &hb(|h| busy_with_4_keeping(h, 6, NOW + 60_000)), at(60_000), &t);
    assert_eq!(j.queued_behind, None);
    assert_eq!(device_step(j.clone(), &Event::Tick, at(109_999), &t).0.state, JobState::Offered);
    assert_eq!(device_step(j, &Event::Tick, at(110_000), &t).0.state.name(), "timed_out");
}

#[test]
fn a_queued_job_of_an_older_record_keeps_its_deadline() {
    let mut j = job_in(JobState::Offered);
    j.device_timeout_ms = 0; // not recorded
    let (j, _) = device_step(j, &hb(|h| busy_with_4_keeping(h, 5, NOW)), UnixMillis(NOW), &Tuning::default());
    assert_eq!(j.deadline, Some(UnixMillis(NOW + 60_000)));
    assert!(j.queued_behind.is_some());
}

#[test]
fn a_noted_refusal_fails_the_job_with_its_reason() {
    let reason = RefusalReason::Downgrade { current: "2.0".into(), target: "2.0".into() };
    let e = hb(|h| committed_4_noting(h, Some(5), reason.clone()));
    let (j, _) = device_step(job_in(JobState::Offered), &e, UnixMillis(NOW), &Tuning::default());
    assert_eq!(j.state, JobState::Failed { reason: format!("refused: {reason}") });
    assert_eq!(j.history.last().unwrap().note, "noted by agent, device phase stays committed");
}

#[test]
fn an_unverifiable_offer_noted_before_the_offer_is_left_to_the_deadline() {
    let noted = NotedRefusal { offer_seq: None, reason: RefusalReason::BadSignature };
    let mut j = job_in(JobState::Offered);
    j.baseline.as_mut().unwrap().offer_notes = Some(OfferNotes { busy_offer_seq: None, refusal: Some(noted) });
    let e = hb(|h| committed_4_noting(h, None, RefusalReason::BadSignature));
    assert_eq!(device_step(j.clone(), &e, UnixMillis(NOW), &Tuning::default()).0.state, JobState::Offered);
    j.baseline.as_mut().unwrap().offer_notes = None; // a record from before notes were kept
    assert_eq!(device_step(j, &e, UnixMillis(NOW), &Tuning::default()).0.state, JobState::Offered);
}

#[test]
fn the_coordinator_persists_a_queued_job_and_offers_nothing_more() {
    let mut state = State::default();
    let r = rollout(1, 1, HaltThreshold::Count(1), 1);
    let (s, _) = step(state, &Event::RolloutCreated(Box::new(r)), UnixMillis(NOW));
    state = s;
    let d = state.jobs.keys().next().unwrap().clone();
    let seq = state.jobs[&d].offer_seq().unwrap();
    assert_eq!(state.jobs[&d].device_timeout_ms, 60_000, "kept from the policy");
    let (s, actions) = report(state, d.as_str(), |h| busy_with_4_keeping_payload(h, seq), NOW);
    assert!(actions.contains(&Action::PersistJob(d.clone())), "{actions:?}");
    assert!(offers(&actions).is_empty());
    assert!(s.jobs[&d].queued_behind.is_some());
}
