#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! Wire compatibility: golden JSON fixtures under tests/data/ must decode to
//! the expected values and the values must encode to the same JSON. A change
//! that breaks this breaks deployed devices or operators.
//!
//! Regenerate (only for an intended, schema-bumping change) with
//! `HARMONY_UPDATE_GOLDEN=1 cargo test -p harmony-protocol --test wire`.

use ed25519_dalek::SigningKey;
use harmony_protocol::command::{CommitArgs, ReplyBody};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The encoded form of `value` must equal the fixture (as JSON values), and
/// the fixture must decode back to `value`.
fn check_golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let path = fixture_path(name);
    let encoded = serde_json::to_value(value).unwrap();
    if std::env::var_os("HARMONY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&encoded).unwrap() + "\n").unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(encoded, golden, "{name}: encoding changed");
    let decoded: T = serde_json::from_str(&text).unwrap();
    assert_eq!(&decoded, value, "{name}: decoding changed");
}

fn device() -> DeviceId {
    DeviceId::new("pi-kitchen-01").unwrap()
}

fn fleet_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn offer() -> UpgradeOffer {
    UpgradeOffer {
        schema: SCHEMA_VERSION,
        offer_seq: 7,
        device_id: device(),
        rollout_id: Some("r-2026-11-23".into()),
        target_version: "2.0.0".into(),
        compatible: "harmony-raspberrypi4-64".into(),
        bundle: BundleSource {
            object: Some("harmony-2.0.0.raucb".into()),
            url: None,
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            size: 123_456_789,
            authorization: None,
            signature_sha256: None,
        },
        not_before: UnixMillis(1_795_000_000_000),
        expires_at: UnixMillis(1_795_086_400_000),
        allow_downgrade: false,
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        schema: SCHEMA_VERSION,
        device_id: device(),
        agent_version: "0.1.0".into(),
        os_version: Some("2.0.0".into()),
        compatible: Some("harmony-raspberrypi4-64".into()),
        booted_slot: Some("B".into()),
        boot_id: "0b5c9c1e-8a2f-4a53-9d0e-2f1b7a6c3d4e".into(),
        uptime_secs: 42,
        health: Health { status: HealthStatus::Healthy, failed_checks: vec![] },
        upgrade: UpgradeStatus {
            phase: UpgradePhase::AwaitingCommit,
            offer_seq: Some(7),
            rollout_id: Some("r-2026-11-23".into()),
            target_version: Some("2.0.0".into()),
            pre_reboot_boot_id: Some("5d1e2c3b-0000-4000-8000-000000000001".into()),
            target_slot: Some("B".into()),
            since: UnixMillis(1_795_000_100_000),
            offer_notes: Default::default(),
            boot_mismatch: None,
            transfer: None,
        },
        labels: BTreeMap::from([("site".to_string(), "kitchen".to_string())]),
        seq: 3,
        sent_at: UnixMillis(1_795_000_142_000),
    }
}

#[test]
fn heartbeat_fixture() {
    check_golden("heartbeat.json", &heartbeat());
}

#[test]
fn phases_with_reasons_fixture() {
    let phases = vec![
        UpgradePhase::Downloading { bytes_done: 10, bytes_total: 100 },
        UpgradePhase::Refused { reason: RefusalReason::Replay { offered: 3, last_accepted: 7 } },
        UpgradePhase::Failed {
            reason: FailureReason::InstallFailed { last_error: "Failed verifying signature".into() },
        },
        UpgradePhase::RolledBack { reason: RollbackReason::BootFailed },
        UpgradePhase::RolledBack { reason: RollbackReason::CommitTimeout },
    ];
    check_golden("phases.json", &phases);
}

#[test]
fn signed_offer_fixture_is_stable_and_verifies() {
    // ed25519 signatures are deterministic, so the whole envelope is golden.
    let env = SignedEnvelope::sign(&fleet_key(), &offer()).unwrap();
    check_golden("signed_offer.json", &env);
    let mut trusted = TrustedKeys::new();
    trusted.insert(fleet_key().verifying_key());
    let text = std::fs::read(fixture_path("signed_offer.json")).unwrap();
    let from_disk = SignedEnvelope::decode(&text).unwrap();
    assert_eq!(trusted.verify::<UpgradeOffer>(&from_disk).unwrap(), offer());
}

#[test]
fn command_and_reply_fixtures() {
    let commit = Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "b".into() });
    let text = std::fs::read(fixture_path("command_commit.json")).unwrap();
    assert_eq!(Command::decode(&text).unwrap(), commit);
    let encoded: serde_json::Value = serde_json::from_slice(&commit.encode()).unwrap();
    assert_eq!(encoded, serde_json::from_slice::<serde_json::Value>(&text).unwrap());

    check_golden(
        "reply_pong.json",
        &CommandReply::from_result(Ok(ReplyBody::Pong {
            agent_version: "0.1.0".into(),
            uptime_secs: 5,
            booted_slot: Some("A".into()),
            boot_id: "b".into(),
        })),
    );
    check_golden(
        "reply_unsupported.json",
        &CommandReply::from_result(Err(CommandError::Unsupported {
            reason: Unsupported::UnknownVerb { verb: "self-destruct".into() },
        })),
    );
}

/// Every leaf of the JSON value, as a path of object keys.
fn leaf_paths(value: &serde_json::Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let mut p = prefix.clone();
                p.push(k.clone());
                leaf_paths(v, p, out);
            }
        }
        _ => out.push(prefix),
    }
}

fn tweak(value: &mut serde_json::Value, path: &[String]) {
    let mut cur = value;
    for k in path {
        cur = cur.get_mut(k).unwrap();
    }
    *cur = match cur.take() {
        serde_json::Value::Null => serde_json::json!("x"),
        serde_json::Value::Bool(b) => serde_json::json!(!b),
        serde_json::Value::Number(n) => serde_json::json!(n.as_u64().unwrap() + 1),
        serde_json::Value::String(s) => serde_json::json!(format!("{s}x")),
        other => panic!("unexpected leaf {other}"),
    };
}

#[test]
fn flipping_any_offer_field_breaks_the_signature() {
    let mut trusted = TrustedKeys::new();
    trusted.insert(fleet_key().verifying_key());
    let env = SignedEnvelope::sign(&fleet_key(), &offer()).unwrap();
    let original: serde_json::Value = serde_json::from_str(&env.payload).unwrap();
    let mut paths = Vec::new();
    leaf_paths(&original, Vec::new(), &mut paths);
    assert_eq!(paths.len(), 13, "expected every offer field, got {paths:?}");
    for path in paths {
        let mut changed = original.clone();
        tweak(&mut changed, &path);
        let forged = SignedEnvelope { payload: serde_json::to_string(&changed).unwrap(), ..env.clone() };
        match trusted.verify::<UpgradeOffer>(&forged) {
            Err(SigningError::BadSignature) => {}
            other => panic!("tampering with {path:?} gave {other:?}"),
        }
    }
}

#[test]
fn flipping_any_signature_bit_or_the_key_id_fails() {
    let mut trusted = TrustedKeys::new();
    trusted.insert(fleet_key().verifying_key());
    let env = SignedEnvelope::sign(&fleet_key(), &offer()).unwrap();
    let sig = hex::decode(&env.signature).unwrap();
    for byte in 0..sig.len() {
        let mut bad = sig.clone();
        bad[byte] ^= 0x01;
        let forged = SignedEnvelope { signature: hex::encode(bad), ..env.clone() };
        assert!(trusted.verify::<UpgradeOffer>(&forged).is_err(), "byte {byte}");
    }
    let forged = SignedEnvelope { key_id: KeyId("0000000000000000".into()), ..env };
    assert!(matches!(trusted.verify::<UpgradeOffer>(&forged), Err(SigningError::UnknownKey(_))));
}

/// A newer agent may report a boot mismatch of a kind this build does not
/// know: the heartbeat must still decode (an undecodable heartbeat hides
/// the device from the operator), with the mismatch as `Unknown`.
#[test]
fn a_boot_mismatch_of_an_unknown_kind_still_decodes_the_heartbeat() {
    let mut value = serde_json::to_value(heartbeat()).unwrap();
    value["upgrade"]["boot_mismatch"] = serde_json::json!({"kind": "slot_from_the_future", "slot": "C"});
    let hb: Heartbeat = serde_json::from_value(value).unwrap();
    assert_eq!(hb.upgrade.boot_mismatch, Some(harmony_protocol::upgrade::BootMismatch::Unknown));
    assert_eq!(hb.upgrade.phase, UpgradePhase::AwaitingCommit);
}

/// An offer of a bundle served over HTTP: `url` and `authorization` next to
/// `object`. Golden, and decodable by an agent that predates
/// `authorization` (modelled by the fields it had, unknown ones ignored):
/// it still finds the object and downloads from the object store.
#[test]
fn http_offer_fixture_and_older_agents() {
    let mut http = offer();
    http.bundle.url = Some("http://operator.example:8443/v1/bundles/harmony-2.0.0.raucb".into());
    http.bundle.authorization = Some("Bearer v1.eyJkIjoicGkifQ.c2ln".into());
    let env = SignedEnvelope::sign(&fleet_key(), &http).unwrap();
    check_golden("signed_offer_http.json", &env);

    #[derive(serde::Deserialize)]
    struct OldBundleSource {
        object: Option<String>,
        url: Option<String>,
        sha256: String,
        size: u64,
    }
    #[derive(serde::Deserialize)]
    struct OldOffer {
        bundle: OldBundleSource,
    }
    let old: OldOffer = serde_json::from_str(&env.payload).unwrap();
    assert_eq!(old.bundle.object.as_deref(), Some("harmony-2.0.0.raucb"));
    assert_eq!(old.bundle.url, http.bundle.url);
    assert_eq!((old.bundle.sha256.len(), old.bundle.size), (64, 123_456_789));

    // Without HTTP serving the field is not on the wire at all: the
    // existing fixture (written before the field existed) is unchanged.
    assert!(!serde_json::to_string(&offer()).unwrap().contains("authorization"));
    let text = std::fs::read_to_string(fixture_path("signed_offer.json")).unwrap();
    let env = SignedEnvelope::decode(text.as_bytes()).unwrap();
    let decoded: UpgradeOffer = serde_json::from_str(&env.payload).unwrap();
    assert_eq!(decoded.bundle.authorization, None);
}

/// A streamable offer (`signature_sha256` next to the URL and token) and a
/// status that says how the bundle travels. Golden, and both decode with the
/// fields an older agent or operator knows (unknown ones ignored).
#[test]
fn streamed_offer_and_transfer_status_fixtures_and_older_readers() {
    let mut o = offer();
    o.bundle.url = Some("http://operator.example:8443/v1/bundles/harmony-2.0.0.raucb".into());
    o.bundle.authorization = Some("Bearer v1.eyJkIjoicGkifQ.c2ln".into());
    o.bundle.signature_sha256 = Some("5e".repeat(32));
    let env = SignedEnvelope::sign(&fleet_key(), &o).unwrap();
    check_golden("signed_offer_streamed.json", &env);
    #[derive(serde::Deserialize)]
    struct OldBundleSource {
        url: Option<String>,
        sha256: String,
    }
    #[derive(serde::Deserialize)]
    struct OldOffer {
        bundle: OldBundleSource,
    }
    let old: OldOffer = serde_json::from_str(&env.payload).unwrap();
    assert_eq!((old.bundle.url, old.bundle.sha256.len()), (o.bundle.url.clone(), 64));

    let mut status = harmony_protocol::UpgradeStatus::idle(harmony_protocol::time::UnixMillis(1_795_000_000_000));
    status.phase = UpgradePhase::Installing { percent: 40 };
    status.transfer = Some(harmony_protocol::Transfer::Downloaded { not_streamed: "no NBD".into() });
    check_golden("upgrade_status_transfer.json", &status);
    let text = serde_json::to_string(&status).unwrap();
    assert!(text.contains(r#""transfer":{"mode":"downloaded","not_streamed":"no NBD"}"#), "{text}");
    #[derive(serde::Deserialize)]
    struct OldStatus {
        phase: String,
    }
    let old: OldStatus = serde_json::from_str(&text).unwrap();
    assert_eq!(old.phase, "installing");
    // Absent when no upgrade was accepted: older fixtures are unchanged.
    assert!(!serde_json::to_string(&harmony_protocol::UpgradeStatus::idle(harmony_protocol::time::UnixMillis(1)))
        .unwrap()
        .contains("transfer"));
}
