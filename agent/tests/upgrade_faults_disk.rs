//! A full disk through the real agent against real nats-server and `rauc
//! service`: the state directory is a small tmpfs (mounted by the test, which
//! runs as root) that fills up while a real, rate-limited download writes to
//! it. The agent must report `no_space`, persist it, leave no temp files,
//! install nothing after a restart, and take the next offer.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_protocol::{FailureReason, UpgradePhase};
use std::path::PathBuf;
use std::time::Duration;
use upgrade_common::tmpfs::{fill, Tmpfs};
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_download_is_no_space_persisted_and_never_installed() {
    let mut rig = Rig::start().await;
    rig.extra_upgrade_config = "download_max_bytes_per_sec = 262144".into();
    let _tmpfs = Tmpfs::mount(&rig.path("state"), "4m");
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 1024 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent(30);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;

    rig.send_offer(&rig.offer(1, "v2.raucb", &b)).await;
    rig.wait_heartbeat(
        WAIT,
        |hb| matches!(hb.upgrade.phase, UpgradePhase::Downloading { bytes_done, .. } if bytes_done >= 128 * 1024),
    )
    .await;
    // Something else on the device takes all the space that is left.
    let filler = rig.path("state/filler");
    assert!(fill(&filler) > 0);
    let hb = rig.wait_phase(WAIT, "failed").await;
    assert!(
        matches!(&hb.upgrade.phase, UpgradePhase::Failed { reason: FailureReason::NoSpace { needed, .. } } if *needed == b.size),
        "{:?}",
        hb.upgrade.phase
    );
    assert_eq!(hb.upgrade.offer_seq, Some(1));
    assert_eq!(rig.temp_files(), Vec::<PathBuf>::new(), "no temp files left");
    assert!(rig.download_files().is_empty(), "{:?}", rig.download_files());
    agent.stop().await;

    // Space freed, agent restarted: the failure was persisted, nothing resumes.
    std::fs::remove_file(&filler).unwrap();
    rig.forget_heartbeat().await;
    let agent = rig.start_agent(30);
    // The heartbeat loop may send the board's initial `idle` before the
    // upgrade service has checked the record against RAUC and published it:
    // wait for the service's word (a lost record would stay idle and time out).
    let hb = rig.wait_heartbeat(WAIT, |hb| !matches!(hb.upgrade.phase, UpgradePhase::Idle)).await;
    assert!(
        matches!(&hb.upgrade.phase, UpgradePhase::Failed { reason: FailureReason::NoSpace { .. } }),
        "after the restart: {:?}",
        hb.upgrade
    );
    assert_eq!(hb.upgrade.offer_seq, Some(1));
    assert_eq!(rig.rauc.backend(&["get-primary"]), "A", "nothing installed");
    assert!(rig.download_files().is_empty(), "{:?}", rig.download_files());

    // A new offer is taken.
    rig.send_offer(&rig.offer(2, "v2.raucb", &b)).await;
    let hb = rig.wait_phase(WAIT, "rebooting").await;
    assert_eq!(hb.upgrade.offer_seq, Some(2));
    assert_eq!(rig.rauc.backend(&["get-primary"]), "B");
    assert_eq!(rig.temp_files(), Vec::<PathBuf>::new());
    agent.stop().await;
}

/// The state directory is full when the new slot comes up: the record cannot
/// be saved, but the trial slot must still get its deadline and fall back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_trial_slot_still_falls_back() {
    let mut rig = Rig::start().await;
    let _tmpfs = Tmpfs::mount(&rig.path("state"), "4m");
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent(3);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    install_into_b_and_reboot(&mut rig, agent, 1, &b, "boot-2").await;
    let record_before = std::fs::read(rig.path("state/upgrade-record.json")).unwrap();
    assert!(fill(&rig.path("state/filler")) > 0);
    let agent = rig.start_agent(3);
    // Nobody commits; after 3 s the agent marks B bad and reboots.
    rig.wait_heartbeat(WAIT, |_| rig.reboot.count() == 2).await;
    assert_eq!(rig.rauc_boot_status("B"), "bad");
    assert_eq!(rig.temp_files(), Vec::<PathBuf>::new(), "no temp files left");
    assert_eq!(std::fs::read(rig.path("state/upgrade-record.json")).unwrap(), record_before, "the record is intact");
    agent.stop().await;
    // Back on A (the disk still full): the old system reports the rollback.
    assert_eq!(rig.rauc.reboot(), "A");
    rig.new_boot("boot-3");
    let agent = rig.start_agent(3);
    let hb = rig.wait_phase(WAIT, "rolled_back").await;
    assert_eq!(hb.booted_slot.as_deref(), Some("A"));
    agent.stop().await;
}
