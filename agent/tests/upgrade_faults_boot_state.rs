//! The boot state changes behind the agent's back after a commit (lost,
//! torn, or the primary moved) and the device comes up on the old slot: the
//! restarted agent must report the typed mismatch, never `committed` on a
//! slot it does not run. Real nats-server, real `rauc service`, the boot
//! backend standing in for U-Boot's boot script.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_protocol::command::{Command, CommitArgs, ReplyBody};
use harmony_protocol::upgrade::BootMismatch;
use harmony_protocol::{RollbackReason, UpgradePhase};
use std::time::Duration;
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Install 2.0.0 into B, reboot into it, commit; returns the agent stopped.
async fn committed_on_b(rig: &mut Rig) {
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 1024 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent(30);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    install_into_b_and_reboot(rig, agent, 1, &b, "boot-2").await;
    let agent = rig.start_agent(30);
    rig.wait_phase(WAIT, "awaiting_commit").await;
    let reply =
        rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-2".into() })).await;
    assert_eq!(reply.into_result().unwrap(), ReplyBody::Committed { slot: "B".into() });
    let hb = rig.wait_phase(WAIT, "committed").await;
    assert_eq!(hb.upgrade.boot_mismatch, None, "B is booted, good and primary");
    agent.stop().await;
}

/// Reboot (the backend decides the slot), start the agent on the old
/// version and return its very first heartbeat of that boot: the operator
/// judges the boot by it, so it must already carry the checked record (a
/// placeholder `idle` here once hid a fallback in the QEMU OTA test).
async fn reboot_into_a_and_restart(rig: &mut Rig) -> harmony_protocol::Heartbeat {
    assert_eq!(rig.rauc.reboot(), "A", "the boot backend picks the old slot: {}", rig.rauc.boot_state());
    rig.new_boot("boot-3");
    rig.set_os_version("1.0.0");
    let first = rig.first_heartbeat_of_boot(WAIT, "boot-3").await;
    let agent = rig.start_agent(30);
    let hb = first.await;
    agent.stop().await;
    hb
}

fn assert_reports_old_slot(hb: &harmony_protocol::Heartbeat) {
    assert_eq!(hb.booted_slot.as_deref(), Some("A"));
    assert_eq!(hb.upgrade.offer_seq, Some(1));
    assert_eq!(hb.upgrade.phase, UpgradePhase::RolledBack { reason: RollbackReason::BootFailed }, "{hb:?}");
    assert_eq!(
        hb.upgrade.boot_mismatch,
        Some(BootMismatch::NotOnCommittedSlot { committed: "B".into(), booted: "A".into() }),
        "{hb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_state_lost_after_commit_reports_the_old_slot_not_committed() {
    let mut rig = Rig::start().await;
    committed_on_b(&mut rig).await;
    // Both copies of the boot state bad: the boot script starts from its
    // defaults (A first), as the backend does without a state file.
    std::fs::remove_file(rig.rauc.state_file()).unwrap();
    let hb = reboot_into_a_and_restart(&mut rig).await;
    assert_reports_old_slot(&hb);
    // The agent only read RAUC: nothing was marked.
    assert_eq!(rig.rauc_boot_status("B"), "good", "{}", rig.rauc.boot_state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_moved_back_after_commit_reports_the_old_slot_not_committed() {
    let mut rig = Rig::start().await;
    committed_on_b(&mut rig).await;
    rig.rauc.backend(&["set-primary", "A"]);
    let hb = reboot_into_a_and_restart(&mut rig).await;
    assert_reports_old_slot(&hb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_slot_marked_bad_behind_the_agent_is_a_typed_mismatch() {
    let mut rig = Rig::start().await;
    committed_on_b(&mut rig).await;
    // Still booted B, but the bootloader will not boot it again.
    rig.rauc.backend(&["set-state", "B", "bad"]);
    rig.new_boot("boot-2");
    rig.forget_heartbeat().await;
    let agent = rig.start_agent(30);
    let hb = rig
        .wait_heartbeat(WAIT, |hb| hb.upgrade.phase != UpgradePhase::Idle && hb.upgrade.boot_mismatch.is_some())
        .await;
    agent.stop().await;
    assert_eq!(hb.upgrade.phase, UpgradePhase::Committed, "B still runs the committed version");
    assert_eq!(
        hb.upgrade.boot_mismatch,
        Some(BootMismatch::BootedSlotNotGood { slot: "B".into(), boot_status: "bad".into() }),
        "{hb:?}"
    );
}
