//! Clock faults through the real agent against real nats-server and `rauc
//! service`: the wall clock stepped forward and backward across agent
//! restarts while a new slot awaits its commit, and a device whose clock is
//! fixed after it refused an offer as not valid yet. The agent's clock is a
//! `FakeClock`: the test steps its wall clock alone, as NTP or `date -s` do,
//! and moves boottime only by the time the test says has passed.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_agent::clock::{BootMillis, FakeClock};
use harmony_protocol::command::{Command, CommitArgs, ReplyBody};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{RefusalReason, RollbackReason, UpgradePhase};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);
const DAY_MS: u64 = 86_400_000;
/// 2020-01-01: where an RTC-less Pi's clock can come up.
const IN_2020: UnixMillis = UnixMillis(1_577_836_800_000);

/// Installs 2.0.0 into B with the device clock right, reboots into B with
/// the wall clock at `wall` and boottime at 5 s, and starts the agent there
/// with a `deadline_secs` commit deadline. Returns once it awaits the commit.
async fn awaiting_commit_on_b(rig: &mut Rig, clock: &FakeClock, wall: UnixMillis, deadline_secs: u64) -> RunningAgent {
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 256 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent_with_clock(deadline_secs, Arc::new(clock.clone()));
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    install_into_b_and_reboot(rig, agent, 1, &b, "boot-2").await;
    clock.set_wall(wall);
    clock.set_boottime(BootMillis(5_000));
    let agent = rig.start_agent_with_clock(deadline_secs, Arc::new(clock.clone()));
    let hb = rig.wait_phase(WAIT, "awaiting_commit").await;
    assert_eq!((hb.boot_id.as_str(), hb.booted_slot.as_deref()), ("boot-2", Some("B")));
    agent
}

/// The case: the new slot comes up with the clock in 2020, NTP steps
/// it to today, the agent restarts. With the deadline on the wall clock, B
/// was marked bad within seconds of a 300 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_stepped_forward_across_a_restart_does_not_fire_the_deadline_early() {
    let mut rig = Rig::start().await;
    let clock = FakeClock::new(now());
    let agent = awaiting_commit_on_b(&mut rig, &clock, IN_2020, 300).await;
    agent.stop().await;
    // NTP: six years forward; 3 s of real time passed on boottime.
    clock.set_wall(now());
    clock.advance_ms(3_000);
    rig.forget_heartbeat().await;
    let agent = rig.start_agent_with_clock(300, Arc::new(clock.clone()));
    let hb = rig.wait_heartbeat(WAIT, |_| true).await;
    // The definite point: the operator's commit for this boot is taken, so
    // the agent had not fallen back (no Mark(bad), no reboot).
    let reply =
        rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-2".into() })).await;
    assert_eq!(reply.into_result().unwrap(), ReplyBody::Committed { slot: "B".into() }, "first heartbeat {hb:?}");
    assert_eq!(rig.reboot.count(), 1, "only the upgrade reboot");
    assert_eq!(rig.rauc_boot_status("B"), "good");
    agent.stop().await;
}

/// A clock that comes back a day behind must not keep an unconfirmed slot
/// for a day: the deadline fires when boottime says, not earlier either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_stepped_back_across_a_restart_does_not_postpone_the_deadline() {
    let mut rig = Rig::start().await;
    let clock = FakeClock::new(now());
    let agent = awaiting_commit_on_b(&mut rig, &clock, now(), 6).await;
    agent.stop().await;
    // A day back on the wall clock; 1 s passed since the window opened.
    clock.set_wall(UnixMillis(now().0 - DAY_MS));
    clock.advance_ms(1_000);
    let restarted = Instant::now();
    let agent = rig.start_agent_with_clock(6, Arc::new(clock.clone()));
    rig.wait_heartbeat(Duration::from_secs(30), |_| rig.reboot.count() == 2).await;
    let took = restarted.elapsed();
    // 6 s window, 1 s of it used before the restart: 5 s left.
    assert!(took >= Duration::from_millis(4_500), "fell back after {took:?}: too early");
    assert!(took < Duration::from_secs(20), "fell back after {took:?}");
    assert_eq!(rig.rauc_boot_status("B"), "bad");
    rig.wait_phase(WAIT, "rebooting").await;
    agent.stop().await;
    assert_eq!(rig.rauc.reboot(), "A", "the bootloader falls back");
    rig.new_boot("boot-3");
    let agent = rig.start_agent_with_clock(6, Arc::new(clock.clone()));
    let hb = rig.wait_phase(WAIT, "rolled_back").await;
    assert_eq!(hb.upgrade.phase, UpgradePhase::RolledBack { reason: RollbackReason::CommitTimeout });
    agent.stop().await;
}

/// A device a day behind refuses a fresh offer as not valid yet; once its
/// clock is fixed it takes the same offer — seen through a wall-clock step
/// while running, and through a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_yet_valid_offer_is_taken_once_the_clock_is_fixed() {
    let mut rig = Rig::start().await;
    rig.extra_upgrade_config = "clock_check_interval_ms = 200".into();
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let clock = FakeClock::new(UnixMillis(now().0 - DAY_MS));
    clock.set_boottime(BootMillis(5_000));

    // Running agent, clock stepped.
    let agent = rig.start_agent_with_clock(300, Arc::new(clock.clone()));
    rig.send_offer(&rig.offer(1, "v2.raucb", &b)).await;
    let hb = rig.wait_phase(WAIT, "refused").await;
    assert_eq!(hb.upgrade.phase, UpgradePhase::Refused { reason: RefusalReason::NotYetValid });
    clock.set_wall(now());
    let hb = rig.wait_heartbeat(WAIT, |hb| !matches!(hb.upgrade.phase, UpgradePhase::Refused { .. })).await;
    assert_eq!(hb.upgrade.offer_seq, Some(1), "{:?}", hb.upgrade);
    rig.wait_phase(WAIT, "rebooting").await;
    agent.stop().await;

    // Restart: a fresh device, a day behind, refuses offer 2...
    let rig2 = Rig::start().await;
    rig2.push_bundle("v2.raucb", &b).await;
    let clock = FakeClock::new(UnixMillis(now().0 - DAY_MS));
    let agent = rig2.start_agent_with_clock(300, Arc::new(clock.clone()));
    rig2.send_offer(&rig2.offer(2, "v2.raucb", &b)).await;
    rig2.wait_phase(WAIT, "refused").await;
    agent.stop().await;
    // ...its clock is fixed while the agent is down; the restarted agent takes it.
    clock.set_wall(now());
    rig2.forget_heartbeat().await;
    let agent = rig2.start_agent_with_clock(300, Arc::new(clock.clone()));
    let hb = rig2.wait_phase(WAIT, "rebooting").await;
    assert_eq!(hb.upgrade.offer_seq, Some(2));
    agent.stop().await;
    drop(rig);
}
