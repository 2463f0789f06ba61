//! The pure upgrade state machine: every (state, event) pair against a
//! table, then whole journeys (install → reboot → commit, fallbacks,
//! restarts) and every offer refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use harmony_agent::upgrade::machine::{step, Action, Env, Event, Job, State, TrialWindow};
use harmony_protocol::clock::BootMillis;
use harmony_protocol::command::{CommitArgs, ReplyBody};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{
    BundleSource, CommandError, DeviceId, FailureReason, NotedRefusal, RefusalReason, RollbackReason, Transfer,
    UpgradeOffer, UpgradePhase,
};

const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const T0: UnixMillis = UnixMillis(1_000_000);
const NOW: UnixMillis = UnixMillis(1_000_500);

fn env() -> Env {
    Env {
        device_id: DeviceId::new("pi-1").unwrap(),
        compatible: "board".into(),
        current_version: Some("1.0.0".into()),
        booted_slot: "B".into(),
        boot_id: "boot-2".into(),
        max_bundle_bytes: 1000,
        commit_deadline_ms: 1000,
        started_boottime: BootMillis(5000),
        slots: None,
        streaming: Err("no NBD in the test".into()),
    }
}

fn offer(seq: u64, target: &str) -> UpgradeOffer {
    UpgradeOffer {
        schema: 1,
        offer_seq: seq,
        device_id: DeviceId::new("pi-1").unwrap(),
        rollout_id: Some("r1".into()),
        target_version: target.into(),
        compatible: "board".into(),
        bundle: BundleSource {
            object: Some("b.raucb".into()),
            url: None,
            sha256: SHA.into(),
            size: 100,
            authorization: None,
            signature_sha256: None,
        },
        not_before: UnixMillis(0),
        expires_at: UnixMillis(2_000_000),
        allow_downgrade: false,
    }
}

fn with_job(phase: UpgradePhase, edit: impl FnOnce(&mut Job)) -> State {
    let mut job = Job::new(offer(5, "2.0.0"));
    edit(&mut job);
    State {
        phase,
        job: Some(job),
        last_accepted_seq: 5,
        refused: None,
        since: T0,
        pending: None,
        noted_refusal: None,
        boot_mismatch: None,
        marking: false,
    }
}

/// One sample state per phase. Env: booted B in boot-2. Pre-reboot states
/// installed into A in this same boot; post-reboot states run on B.
fn states() -> Vec<(&'static str, State)> {
    let pre = |j: &mut Job| {
        j.target_slot = Some("A".into());
        j.pre_reboot_boot_id = Some("boot-2".into());
    };
    let post = |j: &mut Job| {
        j.target_slot = Some("B".into());
        j.pre_reboot_boot_id = Some("boot-1".into());
        j.awaiting_since = Some(T0);
        j.rebooting_from = Some("boot-2".into());
        // The trial window opened at boottime 2000 of this boot.
        j.trial_window = Some(TrialWindow { boot_id: "boot-2".into(), started: BootMillis(2000) });
    };
    let mut idle = State::initial(T0);
    idle.last_accepted_seq = 5;
    let mut refused = State::initial(T0);
    refused.last_accepted_seq = 5;
    refused.phase = UpgradePhase::Refused { reason: RefusalReason::Expired };
    refused.refused = Some(offer(4, "2.0.0"));
    vec![
        ("idle", idle),
        ("offered", with_job(UpgradePhase::Offered, |_| {})),
        ("downloading", with_job(UpgradePhase::Downloading { bytes_done: 10, bytes_total: 100 }, |_| {})),
        ("verifying", with_job(UpgradePhase::Verifying, |_| {})),
        ("installing", with_job(UpgradePhase::Installing { percent: 0 }, |_| {})),
        ("installed", with_job(UpgradePhase::Installed, pre)),
        (
            "rebooting",
            with_job(UpgradePhase::Rebooting, |j| {
                pre(j);
                j.rebooting_from = Some("boot-2".into());
            }),
        ),
        ("awaiting_commit", with_job(UpgradePhase::AwaitingCommit, post)),
        ("committed", with_job(UpgradePhase::Committed, post)),
        ("refused", refused),
        (
            "failed",
            with_job(UpgradePhase::Failed { reason: FailureReason::DownloadFailed { detail: "x".into() } }, |_| {}),
        ),
        ("rolled_back", with_job(UpgradePhase::RolledBack { reason: RollbackReason::BootFailed }, |_| {})),
    ]
}

fn good_commit() -> CommitArgs {
    CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-2".into() }
}

fn events() -> Vec<Event> {
    vec![
        Event::Started,
        Event::Offer(Ok(offer(6, "3.0.0"))),
        Event::Offer(Err(RefusalReason::BadSignature)),
        Event::DownloadProgress { done: 50, total: 100 },
        Event::Downloaded,
        Event::DownloadFailed { detail: "gone".into() },
        Event::NoSpace { needed: 100, available: 1 },
        Event::Verified { sha256: SHA.into() },
        Event::InstallProgress { percent: 40 },
        Event::InstallFinished { target_slot: "A".into() },
        Event::InstallFailed { last_error: "rauc says no".into() },
        Event::RebootDue,
        Event::RebootFailed { detail: "logind".into() },
        Event::HealthChecked { failed: vec![] },
        Event::CommitRequested(good_commit()),
        Event::MarkedGood(Ok("B".into())),
        Event::MarkedBad(Ok("B".into())),
        Event::DeadlineReached,
        Event::RebootRequested,
        Event::ClockStepped,
        Event::PendingDue,
    ]
}

/// Short, comparable names for actions.
fn action_name(a: &Action) -> String {
    match a {
        Action::Download => "download".into(),
        Action::Verify => "verify".into(),
        Action::VerifyStream => "verify_stream".into(),
        Action::Install => "install".into(),
        Action::AdoptInstall => "adopt_install".into(),
        Action::DeleteBundle => "delete".into(),
        Action::ScheduleReboot => "schedule_reboot".into(),
        Action::Reboot => "reboot".into(),
        Action::RunHealthChecks => "health".into(),
        Action::ArmDeadline(at) => format!("deadline@{}", at.0),
        Action::MarkGood => "mark_good".into(),
        Action::MarkBad => "mark_bad".into(),
        Action::Reply(Ok(ReplyBody::Committed { slot })) => format!("reply_committed_{slot}"),
        Action::Reply(Ok(ReplyBody::RebootScheduled)) => "reply_reboot".into(),
        Action::Reply(Ok(other)) => format!("reply_ok_{other:?}"),
        Action::Reply(Err(CommandError::Refused { .. })) => "reply_refused".into(),
        Action::Reply(Err(e)) => format!("reply_err_{e}"),
        Action::LogRefusal(r) => format!("log_refusal_{}", serde_json::to_value(r).unwrap()["kind"].as_str().unwrap()),
        Action::SchedulePending => "schedule_pending".into(),
    }
}

const SETTLED: [&str; 5] = ["idle", "committed", "refused", "failed", "rolled_back"];

/// The table: (state, event) → (phase after, actions). `None` means the
/// explicit "everything else" arm: state unchanged and no actions, except
/// that a command (commit, reboot) gets a refusal reply.
fn expected(state: &str, event: &str) -> Option<(&'static str, Vec<&'static str>)> {
    let settled = SETTLED.contains(&state);
    let download_phase = matches!(state, "offered" | "downloading");
    Some(match (state, event) {
        (_, "offer_ok") if settled => ("offered", vec!["download"]),
        // Busy: kept for when the upgrade ends (state.pending), see the busy tests.
        (s, "offer_ok") => (leak(s), vec![]),
        // Garbage never overwrites an outcome the operator may not have read.
        (s @ ("committed" | "rolled_back"), "offer_bad") => (leak(s), vec!["log_refusal_bad_signature"]),
        (_, "offer_bad") if settled => ("refused", vec![]),
        (s, "offer_bad") => (leak(s), vec!["log_refusal_bad_signature"]),
        // The sample refusal is `expired`: judged again (now a replay of seq 4).
        ("refused", "clock_stepped") => ("refused", vec![]),
        (s, "started") => (
            leak(s),
            match s {
                "offered" | "downloading" => vec!["download"],
                "verifying" => vec!["verify"],
                "installing" => vec!["adopt_install"],
                "installed" => vec!["schedule_reboot"],
                "rebooting" => vec!["reboot"],
                // Same boot as the trial window: boottime 2000 + 1000 ms.
                "awaiting_commit" => vec!["deadline@3000", "health"],
                _ => vec![],
            },
        ),
        (_, "download_progress") if download_phase => ("downloading", vec![]),
        (_, "downloaded") if download_phase => ("verifying", vec!["verify"]),
        (_, "download_failed" | "no_space") if download_phase => ("failed", vec!["delete"]),
        ("verifying", "verified") => ("installing", vec!["install"]),
        ("installing", "install_progress") => ("installing", vec![]),
        ("installing", "install_finished") => ("installed", vec!["delete", "schedule_reboot"]),
        ("installing", "install_failed") => ("failed", vec!["delete"]),
        ("installed", "reboot_due") => ("rebooting", vec!["reboot"]),
        ("rebooting", "reboot_failed") => ("failed", vec![]),
        ("awaiting_commit", "health_checked") => ("awaiting_commit", vec![]),
        ("awaiting_commit", "commit_requested") => ("awaiting_commit", vec!["mark_good"]),
        ("committed", "commit_requested") => ("committed", vec!["reply_committed_B"]),
        ("awaiting_commit", "deadline_reached") => ("awaiting_commit", vec!["mark_bad"]),
        (s, "reboot_requested") if settled || s == "awaiting_commit" => (leak(s), vec!["reply_reboot", "reboot"]),
        _ => return None,
    })
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn event_key(e: &Event) -> &'static str {
    match e {
        Event::Offer(Ok(_)) => "offer_ok",
        Event::Offer(Err(_)) => "offer_bad",
        other => other.name(),
    }
}

#[test]
fn every_state_event_pair_matches_the_table() {
    let env = env();
    let mut checked = 0;
    for (state_name, state) in states() {
        assert_eq!(state.phase.name(), state_name, "sample state is labelled by its phase");
        for event in events() {
            let key = event_key(&event);
            let (next, actions) = step(&env, state.clone(), event.clone(), NOW);
            let got: Vec<String> = actions.iter().map(action_name).collect();
            match expected(state_name, key) {
                Some((phase, want)) => {
                    assert_eq!(next.phase.name(), phase, "{state_name} + {key}: phase");
                    assert_eq!(got, want, "{state_name} + {key}: actions");
                }
                None => {
                    assert_eq!(next, state, "{state_name} + {key}: must leave the state alone");
                    let want: Vec<&str> = match key {
                        "commit_requested" | "reboot_requested" => vec!["reply_refused"],
                        _ => vec![],
                    };
                    assert_eq!(got, want, "{state_name} + {key}: actions");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12 * 21, "all phases × all events");
}

#[test]
fn the_phase_clock_moves_only_on_phase_changes() {
    let (s, _) = step(&env(), states()[2].1.clone(), Event::DownloadProgress { done: 60, total: 100 }, NOW);
    assert_eq!(s.phase, UpgradePhase::Downloading { bytes_done: 60, bytes_total: 100 });
    let (s, _) = step(&env(), s, Event::Downloaded, NOW);
    assert_eq!(s.since, NOW);
}

// ---- journeys -------------------------------------------------------------

fn pre_env() -> Env {
    Env { booted_slot: "A".into(), boot_id: "boot-1".into(), ..env() }
}

fn run(env: &Env, mut s: State, events: Vec<Event>, now: UnixMillis) -> (State, Vec<String>) {
    let mut all = Vec::new();
    for e in events {
        let (n, a) = step(env, s, e, now);
        all.extend(a.iter().map(action_name));
        s = n;
    }
    (s, all)
}

fn installed_into_b() -> State {
    let (s, actions) = run(
        &pre_env(),
        State::initial(T0),
        vec![
            Event::Started,
            Event::Offer(Ok(offer(7, "2.0.0"))),
            Event::DownloadProgress { done: 100, total: 100 },
            Event::Downloaded,
            Event::Verified { sha256: SHA.to_uppercase() },
            Event::InstallFinished { target_slot: "B".into() },
            Event::RebootDue,
        ],
        T0,
    );
    assert_eq!(actions, ["download", "verify", "install", "delete", "schedule_reboot", "reboot"]);
    assert_eq!(s.phase, UpgradePhase::Rebooting);
    let status = s.status();
    assert_eq!(status.pre_reboot_boot_id.as_deref(), Some("boot-1"));
    assert_eq!(status.target_slot.as_deref(), Some("B"));
    assert_eq!(status.offer_seq, Some(7));
    assert_eq!(s.last_accepted_seq, 7);
    s
}

#[test]
fn install_reboot_health_commit() {
    let s = installed_into_b();
    // New boot on B (env()): health checks, deadline, then AwaitingCommit.
    let (s, a) = run(&env(), s, vec![Event::Started], NOW);
    assert_eq!(a, ["deadline@6000", "health"]);
    assert_eq!(s.phase, UpgradePhase::Rebooting, "not awaiting commit before the checks pass");
    let (s, a) = step(&env(), s, Event::CommitRequested(good_commit()), NOW);
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["reply_refused"], "no commit before health");
    let (s, _) = step(&env(), s, Event::HealthChecked { failed: vec![] }, NOW);
    assert_eq!(s.phase, UpgradePhase::AwaitingCommit);
    // Stale commit arguments are refused.
    for args in [
        CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-1".into() },
        CommitArgs { target_version: "9.9.9".into(), boot_id: "boot-2".into() },
    ] {
        let (_, a) = step(&env(), s.clone(), Event::CommitRequested(args), NOW);
        assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["reply_refused"]);
    }
    let (s, a) = run(&env(), s, vec![Event::CommitRequested(good_commit())], NOW);
    assert_eq!(a, ["mark_good"]);
    let (_, a) = step(&env(), s.clone(), Event::CommitRequested(good_commit()), NOW);
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["reply_refused"], "one Mark at a time");
    let (s, a) = run(&env(), s, vec![Event::MarkedGood(Ok("B".into()))], NOW);
    assert_eq!(a, ["reply_committed_B"]);
    assert_eq!(s.phase, UpgradePhase::Committed);
    // A restart after committing stays committed.
    let (s, a) = run(&env(), s, vec![Event::Started], NOW);
    assert!(a.is_empty());
    assert_eq!(s.phase, UpgradePhase::Committed);
}

#[test]
fn a_failed_mark_good_keeps_awaiting_commit_and_reports_the_error() {
    let s = installed_into_b();
    let (s, _) = run(
        &env(),
        s,
        vec![Event::Started, Event::HealthChecked { failed: vec![] }, Event::CommitRequested(good_commit())],
        NOW,
    );
    // The deadline passes while the Mark is in flight: nothing to do yet.
    let (s, a) = run(&env(), s, vec![Event::DeadlineReached], NOW);
    assert!(a.is_empty(), "{a:?}");
    let (s, a) = run(&env(), s, vec![Event::MarkedGood(Err("dbus gone".into()))], NOW);
    assert_eq!(s.phase, UpgradePhase::AwaitingCommit);
    assert!(a[0].starts_with("reply_err_"), "{a:?}");
    // The deadline is armed again (the service fires it at once when it
    // already passed), so the device falls back by itself.
    assert_eq!(a[1..], ["deadline@6000"]);
    assert!(!s.marking);
    let (_, a) = run(&env(), s, vec![Event::DeadlineReached], NOW);
    assert_eq!(a, ["mark_bad"]);
}

#[test]
fn no_commit_before_the_deadline_marks_bad_reboots_and_the_old_system_reports_it() {
    let s = installed_into_b();
    let (s, _) = run(&env(), s, vec![Event::Started, Event::HealthChecked { failed: vec![] }], NOW);
    let (s, a) = run(&env(), s, vec![Event::DeadlineReached], NOW);
    assert_eq!(a, ["mark_bad"]);
    let (_, a) = step(&env(), s.clone(), Event::CommitRequested(good_commit()), NOW);
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["reply_refused"], "too late to commit");
    let (s, a) = run(&env(), s, vec![Event::MarkedBad(Ok("B".into()))], NOW);
    assert_eq!(a, ["reboot"]);
    assert_eq!(s.phase, UpgradePhase::Rebooting);
    // Back on A in a third boot.
    let old = Env { booted_slot: "A".into(), boot_id: "boot-3".into(), ..env() };
    let (s, a) = run(&old, s, vec![Event::Started], NOW);
    assert!(a.is_empty());
    assert_eq!(s.phase, UpgradePhase::RolledBack { reason: RollbackReason::CommitTimeout });
}

#[test]
fn failed_health_checks_fall_back_with_the_names() {
    let s = installed_into_b();
    let failed = vec!["unit app.service".to_string()];
    let (s, a) = run(&env(), s, vec![Event::Started, Event::HealthChecked { failed: failed.clone() }], NOW);
    assert_eq!(a, ["deadline@6000", "health", "mark_bad"]);
    let (s, _) = run(&env(), s, vec![Event::MarkedBad(Err("no rauc".into()))], NOW);
    assert_eq!(s.phase, UpgradePhase::Rebooting, "reboots even when marking bad failed");
    let old = Env { booted_slot: "A".into(), boot_id: "boot-3".into(), ..env() };
    let (s, _) = run(&old, s, vec![Event::Started], NOW);
    assert_eq!(s.phase, UpgradePhase::RolledBack { reason: RollbackReason::HealthCheckFailed { failed } });
}

#[test]
fn bootloader_fallback_is_boot_failed() {
    let s = installed_into_b();
    let old = Env { booted_slot: "A".into(), boot_id: "boot-2".into(), ..env() };
    let (s, _) = run(&old, s, vec![Event::Started], NOW);
    assert_eq!(s.phase, UpgradePhase::RolledBack { reason: RollbackReason::BootFailed });
}

#[test]
fn restarts_in_the_same_boot_do_not_reboot_or_restart_the_clock() {
    let s = installed_into_b();
    let (s, _) = run(&env(), s, vec![Event::Started, Event::HealthChecked { failed: vec![] }], NOW);
    // Agent restarts 700 ms later in the same boot, with the wall clock
    // stepped a day forward, a day back, or to 1970: the deadline still
    // counts from the boottime the window opened at (5000).
    let later = Env { started_boottime: BootMillis(5700), ..env() };
    for wall in [UnixMillis(NOW.0 + 86_400_000), UnixMillis(NOW.0.saturating_sub(86_400_000)), UnixMillis(0)] {
        let (s2, a) = run(&later, s.clone(), vec![Event::Started], wall);
        assert_eq!(a, ["deadline@6000", "health"], "wall clock {wall:?}");
        assert_eq!(s2.phase, UpgradePhase::AwaitingCommit);
    }
    // A restart while post-reboot checks run must not reboot again.
    let s = installed_into_b();
    let (s, _) = run(&env(), s, vec![Event::Started], NOW);
    let (_, a) = run(&env(), s, vec![Event::Started], NOW);
    assert_eq!(a, ["deadline@6000", "health"]);
}

#[test]
fn a_new_boot_of_the_unconfirmed_slot_opens_a_fresh_window() {
    // A power cut while awaiting commit: the bootloader counted one more
    // attempt for B, and boottime restarted, so the window starts again at
    // this boot's agent start (docs/agent-faults.md: the worst case).
    let s = installed_into_b();
    let (s, _) = run(&env(), s, vec![Event::Started, Event::HealthChecked { failed: vec![] }], NOW);
    let again = Env { boot_id: "boot-3".into(), started_boottime: BootMillis(4000), ..env() };
    let (s, a) = run(&again, s, vec![Event::Started], UnixMillis(NOW.0 + 5000));
    assert_eq!(a, ["deadline@5000", "health"]);
    assert_eq!(s.phase, UpgradePhase::AwaitingCommit);
    let window = s.job.as_ref().unwrap().trial_window.clone().unwrap();
    assert_eq!(window, TrialWindow { boot_id: "boot-3".into(), started: BootMillis(4000) });
}

#[test]
fn sha_mismatch_fails_and_deletes() {
    let (s, a) = run(
        &pre_env(),
        State::initial(T0),
        vec![Event::Offer(Ok(offer(7, "2.0.0"))), Event::Downloaded, Event::Verified { sha256: "bb".repeat(32) }],
        T0,
    );
    assert_eq!(a, ["download", "verify", "delete"]);
    assert!(matches!(s.phase, UpgradePhase::Failed { reason: FailureReason::VerifyFailed { .. } }));
}

#[test]
fn rauc_install_into_the_booted_slot_is_a_failure() {
    let (s, _) = run(
        &pre_env(),
        State::initial(T0),
        vec![
            Event::Offer(Ok(offer(7, "2.0.0"))),
            Event::Downloaded,
            Event::Verified { sha256: SHA.into() },
            Event::InstallFinished { target_slot: "A".into() },
        ],
        T0,
    );
    assert!(matches!(s.phase, UpgradePhase::Failed { reason: FailureReason::InstallFailed { .. } }));
}

// ---- offer refusals ----------------------------------------------------------

fn refusal(edit: impl FnOnce(&mut UpgradeOffer), state: State) -> Option<RefusalReason> {
    let mut o = offer(7, "2.0.0");
    edit(&mut o);
    let seq = o.offer_seq;
    let (s, a) = step(&pre_env(), state, Event::Offer(Ok(o)), T0);
    match s.phase.clone() {
        UpgradePhase::Refused { reason } => {
            assert!(a.is_empty(), "nothing downloaded for a refused offer");
            assert_eq!(s.status().offer_seq, Some(seq), "status names the refused offer");
            Some(reason)
        }
        UpgradePhase::Offered => None,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn every_refusal_reason() {
    let idle = || {
        let mut s = State::initial(T0);
        s.last_accepted_seq = 5;
        s
    };
    assert_eq!(refusal(|_| {}, idle()), None, "a good offer is accepted");
    assert_eq!(
        refusal(|o| o.device_id = DeviceId::new("pi-2").unwrap(), idle()),
        Some(RefusalReason::WrongDevice { offered_to: "pi-2".into() })
    );
    assert_eq!(refusal(|o| o.offer_seq = 5, idle()), Some(RefusalReason::Replay { offered: 5, last_accepted: 5 }));
    assert_eq!(refusal(|o| o.offer_seq = 2, idle()), Some(RefusalReason::Replay { offered: 2, last_accepted: 5 }));
    assert_eq!(refusal(|o| o.expires_at = T0, idle()), Some(RefusalReason::Expired));
    // A device clock somewhat behind the operator's still takes a fresh offer...
    let allowance = harmony_agent::upgrade::validate::NOT_BEFORE_ALLOWANCE_MS;
    assert_eq!(refusal(|o| o.not_before = UnixMillis(T0.0 + allowance), idle()), None);
    // ...but not one meant for later than that.
    assert_eq!(refusal(|o| o.not_before = UnixMillis(T0.0 + allowance + 1), idle()), Some(RefusalReason::NotYetValid));
    assert_eq!(
        refusal(|o| o.compatible = "other-board".into(), idle()),
        Some(RefusalReason::Incompatible { offered: "other-board".into(), device: "board".into() })
    );
    for target in ["1.0.0", "0.9.9"] {
        assert_eq!(
            refusal(|o| o.target_version = target.into(), idle()),
            Some(RefusalReason::Downgrade { current: "1.0.0".into(), target: target.into() })
        );
    }
    assert_eq!(
        refusal(
            |o| {
                o.target_version = "0.9.9".into();
                o.allow_downgrade = true;
            },
            idle()
        ),
        None,
        "allow_downgrade permits it"
    );
    assert_eq!(refusal(|o| o.bundle.size = 1001, idle()), Some(RefusalReason::TooLarge { size: 1001, limit: 1000 }));
    assert!(matches!(refusal(|o| o.bundle.object = None, idle()), Some(RefusalReason::Malformed { .. })));
    assert!(matches!(refusal(|o| o.bundle.sha256 = "xyz".into(), idle()), Some(RefusalReason::Malformed { .. })));
    // A bad signature arrives as an error from decoding.
    let (s, _) = step(&pre_env(), idle(), Event::Offer(Err(RefusalReason::UnknownKey { key_id: "k9".into() })), T0);
    assert_eq!(s.phase, UpgradePhase::Refused { reason: RefusalReason::UnknownKey { key_id: "k9".into() } });
    assert_eq!(s.last_accepted_seq, 5, "a refusal does not move the replay window");
}

#[test]
fn busy_and_redelivered_offers_leave_the_upgrade_alone() {
    let downloading = with_job(UpgradePhase::Downloading { bytes_done: 1, bytes_total: 100 }, |_| {});
    let (s, a) = step(&pre_env(), downloading.clone(), Event::Offer(Ok(offer(9, "3.0.0"))), T0);
    assert_eq!((&s.phase, &s.job), (&downloading.phase, &downloading.job), "the upgrade goes on");
    assert_eq!(s.status().offer_notes.busy_offer_seq, Some(9), "busy is reported");
    assert!(a.is_empty());
    // The KV watch replays the current offer after a restart: not a replay refusal.
    let (s, a) = step(&pre_env(), downloading.clone(), Event::Offer(Ok(offer(5, "2.0.0"))), T0);
    assert_eq!((s, a), (downloading, vec![]));
    let committed = with_job(UpgradePhase::Committed, |_| {});
    let (s, a) = step(&pre_env(), committed.clone(), Event::Offer(Ok(offer(5, "2.0.0"))), T0);
    assert_eq!((s, a), (committed, vec![]));
}

#[test]
fn a_power_cut_after_rauc_switched_slots_continues_as_after_the_reboot() {
    let (s, _) = run(
        &pre_env(),
        State::initial(T0),
        vec![Event::Offer(Ok(offer(7, "2.0.0"))), Event::Downloaded, Event::Verified { sha256: SHA.into() }],
        T0,
    );
    assert_eq!(s.phase, UpgradePhase::Installing { percent: 0 });
    // Agent restart in the same boot: adopt the install already started
    // (RAUC decides whether anything is left to install).
    let (_, a) = run(&pre_env(), s.clone(), vec![Event::Started], T0);
    assert_eq!(a, ["adopt_install"]);
    // Power cut, and the device came back in the old slot: the same.
    let same_slot = Env { boot_id: "boot-9".into(), ..pre_env() };
    let (_, a) = run(&same_slot, s.clone(), vec![Event::Started], T0);
    assert_eq!(a, ["adopt_install"]);
    // Power cut after RAUC switched primary: up on B in a new boot.
    let (s, a) = run(&env(), s, vec![Event::Started], NOW);
    assert_eq!(a, ["delete", "deadline@6000", "health"]);
    let (s, _) = step(&env(), s, Event::HealthChecked { failed: vec![] }, NOW);
    assert_eq!(s.phase, UpgradePhase::AwaitingCommit);
    assert_eq!(s.status().pre_reboot_boot_id.as_deref(), Some("boot-1"));
    assert_eq!(s.status().target_slot.as_deref(), Some("B"));
}

// ---- clock steps and time-based refusals --------------------------------------

fn refused_for_time(reason: RefusalReason, o: UpgradeOffer) -> State {
    let (s, _) = step(&pre_env(), State::initial(T0), Event::Offer(Ok(o)), T0);
    assert_eq!(s.phase, UpgradePhase::Refused { reason });
    s
}

#[test]
fn a_time_refusal_is_judged_again_when_the_clock_is_fixed() {
    // The device clock is a day behind: the fresh offer looks not valid yet.
    let fresh = || {
        let mut o = offer(7, "2.0.0");
        o.not_before = UnixMillis(T0.0 + 86_400_000);
        o.expires_at = UnixMillis(T0.0 + 90_000_000);
        o
    };
    let fixed = UnixMillis(T0.0 + 86_400_000);
    let s = refused_for_time(RefusalReason::NotYetValid, fresh());
    // The same offer delivered again with the clock still wrong: no change.
    let (same, a) = step(&pre_env(), s.clone(), Event::Offer(Ok(fresh())), T0);
    assert_eq!((same, a), (s.clone(), vec![]));
    // Redelivered after the clock was fixed (the KV watch replays it on restart).
    let (n, a) = step(&pre_env(), s.clone(), Event::Offer(Ok(fresh())), fixed);
    assert_eq!((n.phase, a), (UpgradePhase::Offered, vec![Action::Download]));
    // On restart, even without a redelivery.
    let (n, a) = step(&pre_env(), s.clone(), Event::Started, fixed);
    assert_eq!((n.phase, a), (UpgradePhase::Offered, vec![Action::Download]));
    // When the service sees the wall clock step.
    let (n, a) = step(&pre_env(), s.clone(), Event::ClockStepped, fixed);
    assert_eq!((n.phase, a), (UpgradePhase::Offered, vec![Action::Download]));
    // A clock stepped a day ahead makes it look expired; stepped back, it is taken.
    let s = refused_for_time(RefusalReason::Expired, {
        let mut o = offer(8, "2.0.0");
        o.expires_at = UnixMillis(T0.0 - 1);
        o
    });
    let mut o = s.refused.clone().unwrap();
    o.expires_at = UnixMillis(T0.0 + 1000);
    let mut s2 = s.clone();
    s2.refused = Some(o);
    let (n, _) = step(&pre_env(), s2, Event::ClockStepped, T0);
    assert_eq!(n.phase, UpgradePhase::Offered);
    // Other refusals are final: a clock step changes nothing.
    let mut o = offer(9, "2.0.0");
    o.compatible = "other".into();
    let (s, _) = step(&pre_env(), State::initial(T0), Event::Offer(Ok(o.clone())), T0);
    assert_eq!(step(&pre_env(), s.clone(), Event::ClockStepped, fixed), (s.clone(), vec![]));
    assert_eq!(step(&pre_env(), s.clone(), Event::Offer(Ok(o)), fixed), (s, vec![]));
}

// ---- offers while busy -----------------------------------------------------------

/// One state per busy phase, as `states()` has them.
fn busy_states() -> Vec<(&'static str, State)> {
    states().into_iter().filter(|(_, s)| !s.is_settled()).collect()
}

#[test]
fn an_offer_while_busy_is_kept_reported_and_superseded_by_a_newer_one() {
    let busy = busy_states();
    assert_eq!(busy.len(), 7, "offered, downloading, verifying, installing, installed, rebooting, awaiting_commit");
    for (name, s0) in busy {
        let (s, a) = step(&env(), s0.clone(), Event::Offer(Ok(offer(9, "3.0.0"))), NOW);
        assert!(a.is_empty(), "{name}: {a:?}");
        assert_eq!((&s.phase, &s.job), (&s0.phase, &s0.job), "{name}: the upgrade goes on");
        assert_eq!(s.status().offer_notes.busy_offer_seq, Some(9), "{name}");
        // Newer replaces, older or equal changes nothing.
        let (s, _) = step(&env(), s, Event::Offer(Ok(offer(11, "3.1.0"))), NOW);
        assert_eq!(s.status().offer_notes.busy_offer_seq, Some(11), "{name}");
        for seq in [10, 11] {
            let (n, a) = step(&env(), s.clone(), Event::Offer(Ok(offer(seq, "3.0.0"))), NOW);
            assert_eq!((n, a), (s.clone(), vec![]), "{name}: offer {seq} after 11");
        }
        // Nothing is judged before the upgrade ends.
        let (n, a) = step(&env(), s.clone(), Event::PendingDue, NOW);
        assert_eq!((n, a), (s.clone(), vec![]), "{name}");
        // Kept across a restart (it is part of the record).
        let json = serde_json::to_string(&s).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pending, s.pending, "{name}");
    }
}

#[test]
fn the_kept_offer_is_taken_when_the_upgrade_ends() {
    // Downloading seq 5; seq 9 arrives; the download fails.
    let downloading = with_job(UpgradePhase::Downloading { bytes_done: 1, bytes_total: 100 }, |_| {});
    let (s, _) = step(&pre_env(), downloading, Event::Offer(Ok(offer(9, "3.0.0"))), T0);
    let (s, a) = step(&pre_env(), s, Event::DownloadFailed { detail: "gone".into() }, T0);
    assert!(matches!(s.phase, UpgradePhase::Failed { .. }), "the failure is reported first");
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["delete", "schedule_pending"]);
    let (s, a) = step(&pre_env(), s, Event::PendingDue, T0);
    assert_eq!((s.phase.clone(), a), (UpgradePhase::Offered, vec![Action::Download]));
    assert_eq!(s.status().offer_seq, Some(9));
    assert_eq!(s.status().offer_notes.busy_offer_seq, None);
}

#[test]
fn a_kept_offer_refused_at_the_end_does_not_overwrite_the_outcome() {
    // Awaiting commit of 2.0.0 (running it); the operator re-sends 2.0.0 as seq 9.
    let running_v2 = Env { current_version: Some("2.0.0".into()), ..env() };
    let awaiting = states().into_iter().find(|(n, _)| *n == "awaiting_commit").unwrap().1;
    let (s, _) = step(&running_v2, awaiting, Event::Offer(Ok(offer(9, "2.0.0"))), NOW);
    let (s, _) = step(&running_v2, s, Event::CommitRequested(good_commit()), NOW);
    let (s, a) = step(&running_v2, s, Event::MarkedGood(Ok("B".into())), NOW);
    assert_eq!(s.phase, UpgradePhase::Committed);
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["reply_committed_B", "schedule_pending"]);
    let (s, a) = step(&running_v2, s, Event::PendingDue, NOW);
    assert_eq!(s.phase, UpgradePhase::Committed, "the outcome stays");
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["log_refusal_downgrade"]);
    let notes = s.status().offer_notes;
    assert_eq!(notes.busy_offer_seq, None);
    assert_eq!(
        notes.refusal,
        Some(NotedRefusal {
            offer_seq: Some(9),
            reason: RefusalReason::Downgrade { current: "2.0.0".into(), target: "2.0.0".into() }
        })
    );
    // After a rollback (new boot on A) the kept offer is judged too.
    let rolling_back = with_job(UpgradePhase::Rebooting, |j| {
        j.target_slot = Some("B".into());
        j.rebooting_from = Some("boot-2".into());
        j.fallback = Some(RollbackReason::CommitTimeout);
    });
    let (s, _) = step(&pre_env(), rolling_back, Event::Offer(Ok(offer(9, "3.0.0"))), T0);
    let old = Env { boot_id: "boot-3".into(), ..pre_env() };
    let (s, a) = step(&old, s, Event::Started, T0);
    assert_eq!(s.phase, UpgradePhase::RolledBack { reason: RollbackReason::CommitTimeout });
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), ["schedule_pending"]);
    let (s, a) = step(&old, s, Event::PendingDue, T0);
    assert_eq!((s.phase, a), (UpgradePhase::Offered, vec![Action::Download]));
}

// ---- garbage while an outcome waits to be read -----------------------------------------

#[test]
fn garbage_on_the_offer_key_does_not_overwrite_committed_or_rolled_back() {
    for (name, s0) in states().into_iter().filter(|(n, _)| matches!(*n, "committed" | "rolled_back")) {
        let (s, a) = step(&env(), s0.clone(), Event::Offer(Err(RefusalReason::BadSignature)), NOW);
        assert_eq!(s.phase, s0.phase, "{name}");
        assert_eq!(s.since, s0.since, "{name}");
        assert_eq!(a, vec![Action::LogRefusal(RefusalReason::BadSignature)]);
        let status = s.status();
        assert_eq!(status.offer_seq, s0.status().offer_seq, "{name}: still about the finished upgrade");
        assert_eq!(
            status.offer_notes.refusal,
            Some(NotedRefusal { offer_seq: None, reason: RefusalReason::BadSignature })
        );
        // A real offer afterwards is judged as usual and clears the note.
        let (s, _) = step(&env(), s, Event::Offer(Ok(offer(9, "3.0.0"))), NOW);
        assert_eq!(s.phase, UpgradePhase::Offered, "{name}");
        assert_eq!(s.status().offer_notes.refusal, None);
    }
}

/// Issue 12 item 8: on start a settled record is checked against RAUC's
/// slot states. Env: booted B. Rows: record, RAUC's facts, reported phase
/// and mismatch.
#[test]
fn a_settled_record_is_checked_against_rauc_on_start() {
    use harmony_agent::upgrade::machine::SlotFacts;
    use harmony_protocol::upgrade::BootMismatch;
    let facts = |primary: &str, b: &str| SlotFacts {
        primary: Some(primary.into()),
        boot_status: [("A".to_string(), "good".to_string()), ("B".to_string(), b.to_string())].into(),
    };
    let committed_on = |slot: &str| {
        let slot = slot.to_string();
        with_job(UpgradePhase::Committed, move |j| j.target_slot = Some(slot))
    };
    let rolled_back = UpgradePhase::RolledBack { reason: RollbackReason::BootFailed };
    let not_on = |c: &str| BootMismatch::NotOnCommittedSlot { committed: c.into(), booted: "B".into() };
    let not_good = BootMismatch::BootedSlotNotGood { slot: "B".into(), boot_status: "bad".into() };
    let not_primary = BootMismatch::BootedSlotNotPrimary { booted: "B".into(), primary: "A".into() };
    type Row = (&'static str, State, Option<SlotFacts>, UpgradePhase, Option<BootMismatch>);
    let rows: Vec<Row> = vec![
        ("committed, agrees", committed_on("B"), Some(facts("B", "good")), UpgradePhase::Committed, None),
        (
            "committed to A, booted B",
            committed_on("A"),
            Some(facts("B", "good")),
            rolled_back.clone(),
            Some(not_on("A")),
        ),
        (
            "committed, booted slot bad",
            committed_on("B"),
            Some(facts("A", "bad")),
            UpgradePhase::Committed,
            Some(not_good.clone()),
        ),
        (
            "committed, not primary",
            committed_on("B"),
            Some(facts("A", "good")),
            UpgradePhase::Committed,
            Some(not_primary.clone()),
        ),
        ("RAUC unreadable: unchecked", committed_on("A"), None, UpgradePhase::Committed, None),
        ("idle, booted slot bad", State::initial(T0), Some(facts("A", "bad")), UpgradePhase::Idle, Some(not_good)),
        ("idle, not primary", State::initial(T0), Some(facts("A", "good")), UpgradePhase::Idle, Some(not_primary)),
        ("idle, agrees", State::initial(T0), Some(facts("B", "good")), UpgradePhase::Idle, None),
        (
            "earlier such rollback keeps its cause",
            State { phase: rolled_back.clone(), boot_mismatch: Some(not_on("A")), ..committed_on("A") },
            Some(facts("B", "good")),
            rolled_back.clone(),
            Some(not_on("A")),
        ),
        (
            "in flight: the machine's own rules, unchecked",
            with_job(UpgradePhase::Downloading { bytes_done: 1, bytes_total: 2 }, |_| {}),
            Some(facts("A", "bad")),
            UpgradePhase::Downloading { bytes_done: 1, bytes_total: 2 },
            None,
        ),
    ];
    for (what, state, slots, phase, mismatch) in rows {
        let e = Env { slots, ..env() };
        let (s, _) = step(&e, state, Event::Started, NOW);
        assert_eq!(s.phase, phase, "{what}");
        assert_eq!(s.boot_mismatch, mismatch, "{what}");
        assert_eq!(s.status().boot_mismatch, mismatch, "{what}: reported");
    }
    // A new offer clears it: the next upgrade starts from what RAUC shows.
    let e = Env { slots: Some(facts("A", "good")), ..env() };
    let (s, _) = step(&e, State::initial(T0), Event::Started, NOW);
    let (s, _) = step(&e, s, Event::Offer(Ok(offer(6, "3.0.0"))), NOW);
    assert_eq!(s.boot_mismatch, None);
}

const SIG: &str = "5151515151515151515151515151515151515151515151515151515151515151";

/// An offer as an operator serving bundles over HTTP signs it.
fn http_offer(seq: u64) -> UpgradeOffer {
    let mut o = offer(seq, "2.0.0");
    o.bundle.url = Some("http://op:8443/v1/bundles/b".into());
    o.bundle.authorization = Some("Bearer t".into());
    o.bundle.signature_sha256 = Some(SIG.into());
    o
}

fn streaming_env() -> Env {
    Env { streaming: Ok(()), ..env() }
}

#[test]
fn an_offer_is_streamed_only_when_the_device_can_and_the_offer_allows_it_and_the_status_says_why_not() {
    let idle = State::initial(T0);
    let (s, actions) = step(&streaming_env(), idle.clone(), Event::Offer(Ok(http_offer(6))), NOW);
    assert_eq!(
        (s.phase.name(), actions.iter().map(action_name).collect::<Vec<_>>()),
        ("verifying", vec!["verify_stream".to_string()])
    );
    assert_eq!(s.status().transfer, Some(Transfer::Streamed));

    let cases: Vec<(&str, Env, UpgradeOffer)> = vec![
        ("no NBD in the test", env(), http_offer(6)),
        ("no HTTP source", streaming_env(), offer(6, "2.0.0")),
        ("no HTTP source", streaming_env(), {
            let mut o = http_offer(6);
            o.bundle.authorization = None;
            o
        }),
        ("no signature hash", streaming_env(), {
            let mut o = http_offer(6);
            o.bundle.signature_sha256 = None;
            o
        }),
    ];
    for (why, env, offer) in cases {
        let (s, actions) = step(&env, idle.clone(), Event::Offer(Ok(offer)), NOW);
        assert_eq!(s.phase.name(), "offered", "{why}");
        assert_eq!(actions.iter().map(action_name).collect::<Vec<_>>(), vec!["download"], "{why}");
        match s.status().transfer {
            Some(Transfer::Downloaded { not_streamed }) => assert!(not_streamed.contains(why), "{why}: {not_streamed}"),
            other => panic!("{why}: {other:?}"),
        }
    }
}

/// A streamed job's transitions where they differ from a download's.
#[test]
fn a_streamed_job_checks_the_signature_hash_and_installs_from_the_url() {
    let env = streaming_env();
    let streamed = |phase| {
        with_job(phase, |j| {
            j.offer = http_offer(5);
            j.transfer = Some(Transfer::Streamed);
        })
    };
    let verifying = streamed(UpgradePhase::Verifying);
    // The signature block's hash is what is compared, not the file's.
    let (s, a) = step(&env, verifying.clone(), Event::Verified { sha256: SIG.to_uppercase() }, NOW);
    assert_eq!(
        (s.phase.name(), a.iter().map(action_name).collect::<Vec<_>>()),
        ("installing", vec!["install".to_string()])
    );
    assert!(s.job.as_ref().unwrap().install_boot.is_some(), "a power cut during the install is recognised");
    let (s, a) = step(&env, verifying.clone(), Event::Verified { sha256: SHA.into() }, NOW);
    assert_eq!(
        s.phase,
        UpgradePhase::Failed { reason: FailureReason::VerifyFailed { expected: SIG.into(), actual: SHA.into() } }
    );
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), vec!["delete"]);
    // The server refused the token, lied about the size, or is gone.
    let (s, a) = step(&env, verifying.clone(), Event::DownloadFailed { detail: "HTTP 403".into() }, NOW);
    assert_eq!(s.phase, UpgradePhase::Failed { reason: FailureReason::DownloadFailed { detail: "HTTP 403".into() } });
    assert!(a.is_empty());
    // A download's failure in `verifying` means nothing (no download runs).
    let plain = with_job(UpgradePhase::Verifying, |_| {});
    let (s, a) = step(&env, plain.clone(), Event::DownloadFailed { detail: "x".into() }, NOW);
    assert_eq!((s, a), (plain, vec![]));
    // Restarted while checking: check again (nothing is on disk to hash).
    let (s, a) = step(&env, verifying.clone(), Event::Started, NOW);
    assert_eq!(
        (s.phase.name(), a.iter().map(action_name).collect::<Vec<_>>()),
        ("verifying", vec!["verify_stream".to_string()])
    );
    // Restarted mid-install: adopt, as for a downloaded bundle.
    let installing = streamed(UpgradePhase::Installing { percent: 30 });
    let (_, a) = step(&env, installing, Event::Started, NOW);
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), vec!["adopt_install"]);
}

/// A record written before streaming (no `transfer`) still reads, as a download.
#[test]
fn a_record_without_transfer_is_a_download() {
    let s = with_job(UpgradePhase::Verifying, |_| {});
    let mut json: serde_json::Value = serde_json::to_value(&s).unwrap();
    json["job"].as_object_mut().unwrap().remove("transfer");
    let back: State = serde_json::from_value(json).unwrap();
    assert!(!back.job.as_ref().unwrap().streamed());
    let (_, a) = step(&streaming_env(), back, Event::Started, NOW);
    assert_eq!(a.iter().map(action_name).collect::<Vec<_>>(), vec!["verify"]);
}
