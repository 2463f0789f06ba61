//! The real agent against a real nats-server and a real `rauc service`:
//! install from the object store, reboot (simulated: restart RAUC booted from
//! the slot the boot backend picks, restart the agent with a new boot id),
//! operator commit, and the fallbacks.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_protocol::command::{Command, CommitArgs, ReplyBody};
use harmony_protocol::{FailureReason, RollbackReason, UpgradePhase};
use std::time::Duration;
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Offer 2.0.0, wait until the agent installed it and asked to reboot.
async fn install_v2(rig: &Rig) -> (RunningAgent, Bundle) {
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 1024 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent(30);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    rig.send_offer(&rig.offer(1, "v2.raucb", &b)).await;
    let hb = rig.wait_phase(WAIT, "rebooting").await;
    assert_eq!(hb.upgrade.target_slot.as_deref(), Some("B"));
    assert_eq!(hb.upgrade.pre_reboot_boot_id.as_deref(), Some("boot-1"));
    assert_eq!(hb.upgrade.target_version.as_deref(), Some("2.0.0"));
    assert_eq!(rig.reboot.count(), 1, "rebooted through the reboot effect once");
    assert_eq!(rig.rauc.backend(&["get-primary"]), "B", "RAUC switched the primary slot");
    // The payload really landed in slot B.
    let slot_b = std::fs::read(rig.rauc.slot_image("B")).unwrap();
    assert_eq!(&slot_b[..b.payload.len()], &b.payload[..]);
    assert!(rig.download_files().is_empty(), "bundle removed after install: {:?}", rig.download_files());
    (agent, b)
}

/// What a reboot into the new slot looks like to the agent.
async fn reboot_device(rig: &mut Rig, agent: RunningAgent, boot_id: &str) -> String {
    agent.stop().await;
    let slot = rig.rauc.reboot();
    rig.new_boot(boot_id);
    slot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_installs_reboots_and_commits_only_on_operator_command() {
    let mut rig = Rig::start().await;
    let (agent, _) = install_v2(&rig).await;

    assert_eq!(reboot_device(&mut rig, agent, "boot-2").await, "B");
    rig.set_os_version("2.0.0");
    let agent = rig.start_agent(30);
    let hb = rig.wait_phase(WAIT, "awaiting_commit").await;
    assert_eq!(hb.boot_id, "boot-2");
    assert_eq!(hb.booted_slot.as_deref(), Some("B"));
    assert_eq!(hb.os_version.as_deref(), Some("2.0.0"));
    // The operator commits only on a healthy heartbeat of the new boot.
    assert_eq!(hb.health.status, harmony_protocol::heartbeat::HealthStatus::Healthy, "{:?}", hb.health);
    // A commit for the wrong boot is refused.
    let stale =
        rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-1".into() })).await;
    assert!(stale.into_result().is_err());
    // Never marks itself good: once the service has handled the health
    // result (the heartbeat above) and a later event (the refused commit),
    // B is still on trial (install gave it 2 attempts, this boot spent one).
    assert!(rig.rauc.boot_state().contains("BOOT_B_LEFT=1"), "{}", rig.rauc.boot_state());

    let reply =
        rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-2".into() })).await;
    assert_eq!(reply.into_result().unwrap(), ReplyBody::Committed { slot: "B".into() });
    rig.wait_phase(WAIT, "committed").await;
    let state = rig.rauc.boot_state();
    assert!(state.contains("BOOT_B_LEFT=3"), "{state}");
    assert!(state.starts_with("BOOT_ORDER=\"B"), "{state}");
    assert_eq!(rig.rauc_boot_status("B"), "good", "rauc status agrees");

    // Another reboot stays on B and stays committed.
    assert_eq!(reboot_device(&mut rig, agent, "boot-3").await, "B");
    // The very first heartbeat of the new boot already says committed.
    let first = rig.first_heartbeat_of_boot(WAIT, "boot-3").await;
    let agent = rig.start_agent(30);
    let hb = first.await;
    assert_eq!(hb.upgrade.phase, UpgradePhase::Committed);
    assert_eq!(rig.reboot.count(), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_commit_before_the_deadline_marks_the_slot_bad_and_falls_back() {
    let mut rig = Rig::start().await;
    let (agent, _) = install_v2(&rig).await;
    assert_eq!(reboot_device(&mut rig, agent, "boot-2").await, "B");
    let agent = rig.start_agent(3);
    rig.wait_phase(WAIT, "awaiting_commit").await;
    // Nobody commits: after 3 s the agent marks B bad and reboots.
    rig.wait_heartbeat(WAIT, |_| rig.reboot.count() == 2).await;
    let state = rig.rauc.boot_state();
    assert!(state.contains("BOOT_B_LEFT=0"), "{state}");
    assert!(!state.contains("BOOT_ORDER=\"B"), "{state}");
    assert_eq!(rig.rauc_boot_status("B"), "bad", "rauc status agrees");
    let late =
        rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-2".into() })).await;
    assert!(late.into_result().is_err(), "too late to commit");

    assert_eq!(reboot_device(&mut rig, agent, "boot-3").await, "A", "the bootloader falls back at once");
    let agent = rig.start_agent(3);
    let hb = rig.wait_phase(WAIT, "rolled_back").await;
    assert_eq!(hb.upgrade.phase, UpgradePhase::RolledBack { reason: RollbackReason::CommitTimeout });
    assert_eq!(hb.booted_slot.as_deref(), Some("A"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_falls_back_with_its_name() {
    let mut rig = Rig::start().await;
    let (agent, _) = install_v2(&rig).await;
    assert_eq!(reboot_device(&mut rig, agent, "boot-2").await, "B");
    let check = rig.path("health.d/50-app");
    std::fs::write(&check, "#!/bin/sh\necho app down >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let agent = rig.start_agent(30);
    let unhealthy = rig.wait_heartbeat(WAIT, |hb| !hb.health.failed_checks.is_empty()).await;
    assert_eq!(unhealthy.health.status, harmony_protocol::heartbeat::HealthStatus::Unhealthy);
    assert_eq!(unhealthy.health.failed_checks, vec!["check 50-app".to_string()]);
    rig.wait_heartbeat(WAIT, |_| rig.reboot.count() == 2).await;
    assert!(rig.rauc.boot_state().contains("BOOT_B_LEFT=0"));
    assert_eq!(reboot_device(&mut rig, agent, "boot-3").await, "A");
    let agent = rig.start_agent(30);
    let hb = rig.wait_phase(WAIT, "rolled_back").await;
    assert_eq!(
        hb.upgrade.phase,
        UpgradePhase::RolledBack { reason: RollbackReason::HealthCheckFailed { failed: vec!["check 50-app".into()] } }
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootloader_fallback_is_reported_as_boot_failed() {
    let mut rig = Rig::start().await;
    let (agent, _) = install_v2(&rig).await;
    agent.stop().await;
    // The new slot never gets far enough to run the agent: U-Boot spends
    // B's two trial attempts and then boots A.
    for boot in ["B", "B"] {
        rig.rauc.stop();
        assert_eq!(rig.rauc.backend(&["simulate-boot"]), boot);
    }
    assert_eq!(rig.rauc.reboot(), "A");
    rig.new_boot("boot-5");
    let agent = rig.start_agent(30);
    let hb = rig.wait_phase(WAIT, "rolled_back").await;
    assert_eq!(hb.upgrade.phase, UpgradePhase::RolledBack { reason: RollbackReason::BootFailed });
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_from_an_untrusted_ca_is_rejected_by_rauc_with_its_error() {
    let rig = Rig::start().await;
    let b = bundle(untrusted_ca(), &rig.path("bundles"), "evil", "2.0.0", 256 * 1024);
    rig.push_bundle("evil.raucb", &b).await;
    let agent = rig.start_agent(30);
    rig.send_offer(&rig.offer(1, "evil.raucb", &b)).await;
    let hb = rig.wait_phase(WAIT, "failed").await;
    let UpgradePhase::Failed { reason: FailureReason::InstallFailed { last_error } } = hb.upgrade.phase else {
        panic!("expected InstallFailed, got {:?}", hb.upgrade.phase)
    };
    eprintln!("RAUC LastError: {last_error}");
    assert!(!last_error.is_empty());
    let rauc_log = rig.rauc.log();
    assert!(
        rauc_log.contains(last_error.lines().next().unwrap()) || last_error.to_lowercase().contains("signature"),
        "LastError is RAUC's own text: {last_error:?}\n{rauc_log}"
    );
    assert_eq!(rig.rauc.backend(&["get-primary"]), "A", "nothing switched");
    assert_eq!(rig.reboot.count(), 0);
    assert!(rig.download_files().is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha_mismatch_fails_verification_and_deletes_the_download() {
    let rig = Rig::start().await;
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 256 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent(30);
    let mut offer = rig.offer(1, "v2.raucb", &b);
    offer.bundle.sha256 = "0".repeat(64);
    rig.send_offer(&offer).await;
    let hb = rig.wait_phase(WAIT, "failed").await;
    match hb.upgrade.phase {
        UpgradePhase::Failed { reason: FailureReason::VerifyFailed { expected, actual } } => {
            assert_eq!(expected, "0".repeat(64));
            assert_eq!(actual, b.sha256);
        }
        other => panic!("expected VerifyFailed, got {other:?}"),
    }
    assert!(rig.download_files().is_empty(), "{:?}", rig.download_files());
    assert_eq!(rig.rauc.backend(&["get-primary"]), "A");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_resumes_after_the_agent_is_killed_midway() {
    use futures::StreamExt;
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};
    let mut rig = Rig::start().await;
    rig.extra_upgrade_config = "download_max_bytes_per_sec = 1048576".into();
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 3 * 1024 * 1024);
    rig.push_bundle("v2.raucb", &b).await;

    // Count the bundle bytes NATS delivers into this device's inbox, per
    // JetStream consumer (named in each message's ack subject), so bytes the
    // first run's consumer still delivers after the kill never count for the
    // second run, however late they arrive.
    let delivered: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let counter = delivered.clone();
    let mut inbox = rig.client.subscribe(format!("_INBOX.{DEVICE}.>")).await.unwrap();
    harmony_testkit::wait::synced_with_server(&rig.client).await;
    tokio::spawn(async move {
        while let Some(msg) = inbox.next().await {
            let Some(reply) = msg.reply.as_ref().filter(|r| r.starts_with("$JS.ACK.")) else { continue };
            let tokens: Vec<&str> = reply.split('.').collect();
            let Some(stream) = tokens.iter().position(|t| t.starts_with("OBJ_")) else { continue };
            let consumer = tokens.get(stream + 1).copied().unwrap_or_default().to_string();
            *counter.lock().unwrap().entry(consumer).or_default() += msg.payload.len() as u64;
        }
    });

    let agent = rig.start_agent(30);
    rig.send_offer(&rig.offer(1, "v2.raucb", &b)).await;
    rig.wait_heartbeat(
        WAIT,
        |hb| matches!(hb.upgrade.phase, UpgradePhase::Downloading { bytes_done, .. } if bytes_done > 1_300_000),
    )
    .await;
    agent.kill(); // no orderly shutdown: like pulling the plug on the agent
    let resume: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.path("state/download/bundle.resume.json")).unwrap()).unwrap();
    let kept = resume["bytes"].as_u64().unwrap();
    assert!(kept >= 1024 * 1024, "a resume point was persisted: {resume}");
    let first_run: HashSet<String> = delivered.lock().unwrap().keys().cloned().collect();
    assert!(!first_run.is_empty(), "the first run's consumer delivered into the inbox");

    rig.extra_upgrade_config = String::new();
    let agent = rig.start_agent(30);
    rig.wait_phase(WAIT, "rebooting").await;
    let counts = delivered.lock().unwrap().clone();
    let first_bytes: u64 = counts.iter().filter(|(c, _)| first_run.contains(*c)).map(|(_, n)| n).sum();
    let second_run: u64 = counts.iter().filter(|(c, _)| !first_run.contains(*c)).map(|(_, n)| n).sum();
    eprintln!(
        "bundle {} bytes; first run got {first_bytes}, resume point {kept}, second run fetched {second_run}",
        b.size
    );
    assert_eq!(second_run, b.size - kept, "the restarted agent fetched only what was missing");
    let slot_b = std::fs::read(rig.rauc.slot_image("B")).unwrap();
    assert_eq!(&slot_b[..b.payload.len()], &b.payload[..], "the resumed bundle installed intact");
    agent.stop().await;
    let _ = &mut rig;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reboot_is_refused_mid_upgrade_and_carried_out_when_idle() {
    let mut rig = Rig::start().await;
    rig.extra_upgrade_config = "download_max_bytes_per_sec = 524288".into();
    let agent = rig.start_agent(30);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    let reply = rig.command(Command::Reboot).await;
    assert_eq!(reply.into_result().unwrap(), ReplyBody::RebootScheduled);
    rig.wait_heartbeat(WAIT, |_| rig.reboot.count() == 1).await;

    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 2 * 1024 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    rig.send_offer(&rig.offer(1, "v2.raucb", &b)).await;
    rig.wait_phase(WAIT, "downloading").await;
    let reply = rig.command(Command::Reboot).await;
    assert!(reply.into_result().is_err(), "no reboot in the middle of an upgrade");
    // A commit with nothing awaiting commit is refused too.
    let reply =
        rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-1".into() })).await;
    assert!(reply.into_result().is_err());
    assert_eq!(rig.reboot.count(), 1);
    agent.stop().await;
    let _ = &mut rig;
}
