//! Offer refusals through the real path: signed envelope in the offers KV
//! bucket → the agent's KV watch → typed `Refused` in the heartbeat, with
//! nothing downloaded and RAUC's slots untouched.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use ed25519_dalek::SigningKey;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, RefusalReason, SignedEnvelope, UpgradeOffer, UpgradePhase};
use std::time::Duration;
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Send `envelope`, wait for a `Refused` matching `want`; `seq` is the
/// offer the status must name (`None` when the signature did not verify, so
/// nothing in the offer can be trusted).
async fn expect_refusal(rig: &Rig, seq: Option<u64>, envelope: SignedEnvelope, want: impl Fn(&RefusalReason) -> bool) {
    rig.send_envelope(&envelope).await;
    let hb = rig
        .wait_heartbeat(WAIT, |hb| matches!(&hb.upgrade.phase, UpgradePhase::Refused { reason } if want(reason)))
        .await;
    assert_eq!(hb.upgrade.offer_seq, seq, "{:?}", hb.upgrade);
    assert!(rig.download_files().is_empty(), "offer {seq:?}: nothing downloaded");
    assert_eq!(rig.rauc.backend(&["get-primary"]), "A", "offer {seq:?}: slots untouched");
}

fn signed(offer: &UpgradeOffer) -> SignedEnvelope {
    SignedEnvelope::sign(&fleet_key(), offer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offer_refusal_reaches_the_operator_typed() {
    let rig = Rig::start().await;
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent(30);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    let base = |seq| rig.offer(seq, "v2.raucb", &b);

    // Signed by a key the device does not trust.
    let stranger = SigningKey::from_bytes(&[9u8; 32]);
    expect_refusal(&rig, None, SignedEnvelope::sign(&stranger, &base(1)).unwrap(), |r| {
        matches!(r, RefusalReason::UnknownKey { .. })
    })
    .await;

    // Payload changed after signing.
    let mut tampered = signed(&base(2));
    tampered.payload = tampered.payload.replace("2.0.0", "2.0.1");
    expect_refusal(&rig, None, tampered, |r| *r == RefusalReason::BadSignature).await;

    let mut o = base(3);
    o.expires_at = UnixMillis(now().0 - 1000);
    expect_refusal(&rig, Some(3), signed(&o), |r| *r == RefusalReason::Expired).await;

    let mut o = base(4);
    o.not_before = UnixMillis(now().0 + 3_600_000);
    expect_refusal(&rig, Some(4), signed(&o), |r| *r == RefusalReason::NotYetValid).await;

    let mut o = base(5);
    o.compatible = "some-other-board".into();
    expect_refusal(
        &rig,
        Some(5),
        signed(&o),
        |r| matches!(r, RefusalReason::Incompatible { device, .. } if device == "harmony-test-board"),
    )
    .await;

    let mut o = base(6);
    o.target_version = "0.9.0".into();
    expect_refusal(&rig, Some(6), signed(&o), |r| matches!(r, RefusalReason::Downgrade { .. })).await;

    let mut o = base(7);
    o.bundle.size = 1 << 40;
    expect_refusal(&rig, Some(7), signed(&o), |r| matches!(r, RefusalReason::TooLarge { .. })).await;

    let mut o = base(8);
    o.device_id = DeviceId::new("someone-else").unwrap();
    expect_refusal(&rig, Some(8), signed(&o), |r| matches!(r, RefusalReason::WrongDevice { .. })).await;

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_offer_is_refused_after_an_accepted_one() {
    let rig = Rig::start().await;
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    // Accepted and failed (sha mismatch) — a settled state that accepts new offers.
    let agent = rig.start_agent(30);
    let mut o = rig.offer(10, "v2.raucb", &b);
    o.bundle.sha256 = "1".repeat(64);
    rig.send_offer(&o).await;
    rig.wait_phase(WAIT, "failed").await;
    agent.stop().await;
    // After a restart, an older (but otherwise valid) offer is a replay.
    let agent = rig.start_agent(30);
    expect_refusal(&rig, Some(9), signed(&rig.offer(9, "v2.raucb", &b)), |r| {
        *r == RefusalReason::Replay { offered: 9, last_accepted: 10 }
    })
    .await;
    agent.stop().await;
}
