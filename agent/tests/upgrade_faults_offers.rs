//! Offers at awkward times, through the real KV watch of the real agent
//! against real nats-server and `rauc service`: a second (third, fourth)
//! offer while an upgrade is downloading, rebooting and awaiting its commit;
//! garbage on the offer key once the upgrade is committed.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_protocol::command::{Command, CommitArgs, ReplyBody};
use harmony_protocol::{NotedRefusal, RefusalReason, SignedEnvelope, UpgradePhase};
use std::time::Duration;
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);

async fn commit_v2(rig: &Rig) {
    let reply =
        rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-2".into() })).await;
    assert_eq!(reply.into_result().unwrap(), ReplyBody::Committed { slot: "B".into() });
}

async fn wait_busy(rig: &Rig, phase: &str, seq: u64) {
    let hb = rig
        .wait_heartbeat(WAIT, |hb| {
            hb.upgrade.offer_notes.busy_offer_seq == Some(seq) || hb.upgrade.phase.name() != phase
        })
        .await;
    assert_eq!(hb.upgrade.phase.name(), phase, "offer {seq} kept while {phase}: {:?}", hb.upgrade);
    assert_eq!(hb.upgrade.offer_seq, Some(1), "still about the running upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_while_busy_are_kept_reported_and_the_newest_is_taken_when_the_upgrade_ends() {
    let mut rig = Rig::start().await;
    // Slow enough that the download phase is seen.
    rig.extra_upgrade_config = "download_max_bytes_per_sec = 262144".into();
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 1024 * 1024);
    let v3 = bundle(trusted_ca(), &rig.path("bundles"), "v3", "3.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &v2).await;
    rig.push_bundle("v3.raucb", &v3).await;
    let agent = rig.start_agent(60);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;

    rig.send_offer(&rig.offer(1, "v2.raucb", &v2)).await;
    rig.wait_phase(WAIT, "downloading").await;
    rig.send_offer(&rig.offer(2, "v3.raucb", &v3)).await;
    wait_busy(&rig, "downloading", 2).await;

    rig.wait_phase(WAIT, "rebooting").await;
    rig.send_offer(&rig.offer(3, "v3.raucb", &v3)).await;
    wait_busy(&rig, "rebooting", 3).await;

    agent.stop().await;
    assert_eq!(rig.rauc.reboot(), "B");
    rig.new_boot("boot-2");
    rig.set_os_version("2.0.0");
    let agent = rig.start_agent(60);
    let hb = rig.wait_phase(WAIT, "awaiting_commit").await;
    assert_eq!(hb.upgrade.offer_notes.busy_offer_seq, Some(3), "kept across the reboot");
    rig.send_offer(&rig.offer(4, "v3.raucb", &v3)).await;
    wait_busy(&rig, "awaiting_commit", 4).await;

    // The upgrade ends; the newest kept offer is taken (installs 3.0.0 into A).
    commit_v2(&rig).await;
    let hb = rig.wait_heartbeat(WAIT, |hb| hb.upgrade.offer_seq == Some(4)).await;
    assert_eq!(hb.upgrade.offer_notes.busy_offer_seq, None);
    let hb = rig.wait_phase(WAIT, "rebooting").await;
    assert_eq!((hb.upgrade.offer_seq, hb.upgrade.target_slot.as_deref()), (Some(4), Some("A")));
    assert_eq!(rig.rauc.backend(&["get-primary"]), "A");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_offer_key_does_not_overwrite_committed() {
    let mut rig = Rig::start().await;
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &v2).await;
    let agent = rig.start_agent(60);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    install_into_b_and_reboot(&mut rig, agent, 1, &v2, "boot-2").await;
    let agent = rig.start_agent(60);
    rig.wait_phase(WAIT, "awaiting_commit").await;
    commit_v2(&rig).await;
    rig.wait_phase(WAIT, "committed").await;

    // A payload changed after signing: nothing in it can be trusted.
    let mut tampered = SignedEnvelope::sign(&fleet_key(), &rig.offer(2, "v2.raucb", &v2)).unwrap();
    tampered.payload = tampered.payload.replace("2.0.0", "2.0.1");
    rig.send_envelope(&tampered).await;
    let hb = rig
        .wait_heartbeat(WAIT, |hb| hb.upgrade.offer_notes.refusal.is_some() || hb.upgrade.phase.name() != "committed")
        .await;
    assert_eq!(hb.upgrade.phase, UpgradePhase::Committed, "{:?}", hb.upgrade);
    assert_eq!(hb.upgrade.offer_seq, Some(1));
    assert_eq!(
        hb.upgrade.offer_notes.refusal,
        Some(NotedRefusal { offer_seq: None, reason: RefusalReason::BadSignature })
    );
    agent.stop().await;
}
