//! Streamed installs on the host, through the real agent loop with real
//! nats-server and `rauc service`: what the agent checks before RAUC reads
//! a bundle over HTTP, and that a bad answer installs nothing. The host
//! kernel has no NBD, so the streamed install itself is proved only in the
//! QEMU guest (qemu-tests/ota.py); here NBD is declared present (the
//! agent's `system.nbd` path) so the agent takes the streaming path.
//!
//! The server is `upgrade_common::range_server`, which can lie.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_protocol::{FailureReason, Transfer, UpgradeOffer, UpgradePhase};
use sha2::{Digest, Sha256};
use std::time::Duration;
use upgrade_common::range_server::{RangeServer, TOKEN};
use upgrade_common::tmpfs::{fill_leaving, Tmpfs};
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);
/// SHA-256 of the bundle's signature block, cut out as RAUC does.
fn signature_sha256(b: &Bundle, dir: &std::path::Path) -> String {
    let sig = dir.join(format!("{}.sig", b.version));
    let out = std::process::Command::new("rauc")
        .args(["extract-signature", &format!("--keyring={}", trusted_ca().cert.display())])
        .arg(&b.path)
        .arg(&sig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    hex::encode(Sha256::digest(std::fs::read(sig).unwrap()))
}

fn streamed_offer(rig: &Rig, seq: u64, b: &Bundle, url: &str, sig: &str) -> UpgradeOffer {
    let mut o = rig.offer(seq, "v2.raucb", b);
    o.bundle.url = Some(url.into());
    o.bundle.authorization = Some(TOKEN.into());
    o.bundle.signature_sha256 = Some(sig.into());
    o
}

async fn failed_with(rig: &Rig, seq: u64) -> FailureReason {
    let hb =
        rig.wait_heartbeat(WAIT, |hb| hb.upgrade.offer_seq == Some(seq) && hb.upgrade.phase.name() == "failed").await;
    assert_eq!(hb.upgrade.transfer, Some(Transfer::Streamed), "{:?}", hb.upgrade);
    match hb.upgrade.phase {
        UpgradePhase::Failed { reason } => reason,
        other => panic!("{other:?}"),
    }
}

/// Nothing was installed: RAUC still boots A next and B was never written.
fn nothing_installed(rig: &Rig) {
    assert_eq!(rig.rauc.backend(&["get-primary"]), "A");
    assert!(rig.download_files().is_empty(), "nothing stored on /data: {:?}", rig.download_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_offer_is_checked_against_the_signed_signature_hash_and_bad_answers_install_nothing() {
    let rig = Rig::start().await;
    std::fs::write(rig.path("nbd0"), "").unwrap();
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 256 * 1024);
    let other = bundle(trusted_ca(), &rig.path("bundles"), "v2-other", "2.0.1", 256 * 1024);
    let sig = signature_sha256(&v2, &rig.path("bundles"));
    let server = RangeServer::start(std::fs::read(&v2.path).unwrap()).await;
    let agent = rig.start_agent(60);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;

    // 1. The server lies about the size.
    server.set(std::fs::read(&v2.path).unwrap(), Some(v2.size + 4096));
    rig.send_offer(&streamed_offer(&rig, 1, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 1).await {
        FailureReason::DownloadFailed { detail } => {
            assert!(detail.contains(&format!("the server says the bundle has {} bytes", v2.size + 4096)), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    let seen = server.take_seen();
    assert_eq!(seen.len(), 1, "stops at the trailer: {seen:?}");
    assert_eq!(seen[0].authorization.as_deref(), Some(TOKEN), "the offer's token is sent");

    // 2. The token is refused (another device's, another bundle's, expired).
    let mut o = streamed_offer(&rig, 2, &v2, &server.url, &sig);
    o.bundle.authorization = Some("Bearer for-another-device".into());
    server.set(std::fs::read(&v2.path).unwrap(), None);
    rig.send_offer(&o).await;
    match failed_with(&rig, 2).await {
        FailureReason::DownloadFailed { detail } => assert!(detail.contains("HTTP 403"), "{detail}"),
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    server.take_seen();

    // 3. The bundle changed after the offer: a validly signed bundle of the
    // same size is served in its place. Its signature block differs.
    assert_eq!(other.size, v2.size, "the same size, so only the hash can tell");
    server.set(std::fs::read(&other.path).unwrap(), None);
    rig.send_offer(&streamed_offer(&rig, 3, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 3).await {
        FailureReason::VerifyFailed { expected, actual } => {
            assert_eq!(expected, sig);
            assert_eq!(actual, signature_sha256(&other, &rig.path("bundles")));
        }
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    let seen = server.take_seen();
    assert_eq!(seen.len(), 2, "trailer and signature block only: {seen:?}");

    // 4. The right bundle: the check passes and RAUC is given the URL. The
    // host's RAUC cannot stream (Debian's build, no NBD), so it fetches
    // the URL itself and fails; the agent reports RAUC's error.
    server.set(std::fs::read(&v2.path).unwrap(), None);
    rig.send_offer(&streamed_offer(&rig, 4, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 4).await {
        FailureReason::InstallFailed { last_error } => assert!(!last_error.is_empty()),
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    let seen = server.take_seen();
    assert!(seen.len() >= 3, "the agent's two reads, then RAUC's: {seen:?}");
    assert!(seen[..2].iter().all(|s| s.status == 206 && s.user_agent.as_deref() == Some("harmony-agent")), "{seen:?}");
    assert!(seen[2..].iter().any(|s| s.user_agent.as_deref() != Some("harmony-agent")), "RAUC read the URL: {seen:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nbd_a_streamable_offer_is_downloaded_and_the_status_says_why() {
    let rig = Rig::start().await;
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &v2).await;
    let sig = signature_sha256(&v2, &rig.path("bundles"));
    let agent = rig.start_agent(60);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    rig.send_offer(&streamed_offer(&rig, 1, &v2, "http://127.0.0.1:9/never-read", &sig)).await;
    let hb = rig.wait_phase(WAIT, "rebooting").await;
    match hb.upgrade.transfer {
        Some(Transfer::Downloaded { not_streamed }) => assert!(not_streamed.contains("no NBD"), "{not_streamed}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.rauc.backend(&["get-primary"]), "B", "installed from the object store");
    agent.stop().await;
}

/// A nearly full /data when the agent writes the trust it hands RAUC for an
/// `https://` stream (system CAs plus the fleet's, a few hundred KiB): the
/// install fails naming the file and the full disk, RAUC is never asked,
/// nothing is left behind; with space again the next offer reaches RAUC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_file_that_does_not_fit_on_data_fails_the_install_before_rauc_is_asked() {
    let mut rig = Rig::start().await;
    std::fs::write(rig.path("nbd0"), "").unwrap();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = harmony_testkit::pki::TestPki::create(pki_dir.path(), "IP:127.0.0.1");
    rig.extra_upgrade_config = format!("https_ca_file = \"{}\"", pki.ca.display());
    let trust_len = harmony_agent::upgrade::http_get::trust_pem(&pki.ca).unwrap().len() as u64;
    // The record (a few KiB, written beside its old copy) must still fit.
    let left = 32 * 1024;
    assert!(trust_len > 2 * left, "the host's CA bundle (ca-certificates, from scripts/setup) is {trust_len} bytes");
    let _tmpfs = Tmpfs::mount(&rig.path("state"), "4m");
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    let sig = signature_sha256(&v2, &rig.path("bundles"));
    let server = RangeServer::start_tls(std::fs::read(&v2.path).unwrap(), &pki.cert, &pki.key).await;
    let agent = rig.start_agent(60);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;

    let filler = rig.path("state/filler");
    fill_leaving(&filler, left);
    rig.send_offer(&streamed_offer(&rig, 1, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 1).await {
        FailureReason::InstallFailed { last_error } => {
            assert!(last_error.contains("stream-trust.pem"), "names the file: {last_error}");
            assert!(last_error.contains("No space left on device"), "and why: {last_error}");
        }
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    assert_eq!(rig.temp_files(), Vec::<std::path::PathBuf>::new(), "no temp files left");
    let seen = server.take_seen();
    assert_eq!(seen.len(), 2, "the agent's checks over HTTPS passed: {seen:?}");
    assert!(seen.iter().all(|s| s.status == 206 && s.user_agent.as_deref() == Some("harmony-agent")), "{seen:?}");
    assert_eq!(server.connections(), 2, "RAUC never connected");

    // Space again: the file is written and RAUC is handed the URL. The
    // host's RAUC cannot stream; it tries to fetch the URL itself and fails.
    std::fs::remove_file(&filler).unwrap();
    rig.send_offer(&streamed_offer(&rig, 2, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 2).await {
        FailureReason::InstallFailed { last_error } => {
            assert!(!last_error.contains("stream-trust.pem"), "RAUC's error, not the agent's: {last_error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(server.connections() > 4, "RAUC connected after the agent's two checks: {}", server.connections());
    nothing_installed(&rig);
    agent.stop().await;
}
