//! Bundle store against a real nats-server with real RAUC bundles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{now, Env};
use harmony_operator::bundle;
use harmony_operator::commands;
use harmony_operator::Error;
use harmony_testkit::rauc_bundle::{build_bundle, TestCa};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_reads_the_manifest_and_stores_the_bundle() {
    let env = Env::start().await;
    let ca = TestCa::create(env.dir.path());
    let payload: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let path = build_bundle(&ca, env.dir.path(), "misleading-name-9.9", "harmony-rpi4", "3.1.0", "plain", &payload);
    let rec = bundle::push(&env.buckets, &path, None, false, now()).await.unwrap();
    assert_eq!((rec.id.as_str(), rec.version.as_str(), rec.compatible.as_str()), ("3.1.0", "3.1.0", "harmony-rpi4"));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(rec.size, bytes.len() as u64);
    assert_eq!(rec.sha256, hex::encode(Sha256::digest(&bytes)));
    // The object is what a device downloads: same bytes.
    let mut obj = env.buckets.bundles().await.unwrap().get("3.1.0").await.unwrap();
    let mut got = Vec::new();
    obj.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, bytes);
    // Pushing the same file again is a no-op; another file under the same id is refused.
    assert_eq!(bundle::push(&env.buckets, &path, None, false, now()).await.unwrap().sha256, rec.sha256);
    let other = build_bundle(&ca, env.dir.path(), "other", "harmony-rpi4", "3.1.0", "plain", b"different");
    assert!(matches!(bundle::push(&env.buckets, &other, None, false, now()).await, Err(Error::BundleExists(_))));
    // A verity bundle (the production format) is read the same way.
    let verity = build_bundle(&ca, env.dir.path(), "verity", "harmony-rpi4", "3.2.0", "verity", &payload);
    let rec = bundle::push(&env.buckets, &verity, None, false, now()).await.unwrap();
    assert_eq!(rec.version, "3.2.0");
    // What a streaming agent checks: the signature block, as RAUC itself
    // cuts it out of the bundle (`rauc extract-signature`).
    let sig = env.dir.path().join("verity.sig");
    let out = std::process::Command::new("rauc")
        .args(["extract-signature", &format!("--keyring={}", ca.cert.display())])
        .arg(&verity)
        .arg(&sig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = hex::encode(Sha256::digest(std::fs::read(&sig).unwrap()));
    assert_eq!(rec.signature_sha256.as_deref(), Some(expected.as_str()));
    let list = commands::bundle_list(&env.cfg).await.unwrap();
    assert!(list.text.contains("3.1.0") && list.text.contains("3.2.0"), "{}", list.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_bundles_are_refused_and_nothing_is_stored() {
    let env = Env::start().await;
    let dir = env.dir.path();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text-3.0.raucb", b"version=3.0\ncompatible=harmony-rpi4\n".to_vec()),
        ("empty.raucb", Vec::new()),
        ("fake-magic.raucb", b"hsqs and then garbage".to_vec()),
    ];
    for (name, content) in cases {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        let err = bundle::push(&env.buckets, &p, None, false, now()).await.unwrap_err();
        assert!(matches!(err, Error::NotABundle { .. } | Error::Io { .. }), "{name}: {err}");
    }
    // A squashfs without a RAUC manifest is not a bundle either.
    let content = dir.join("plain-squashfs");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello"), "x").unwrap();
    let sq = dir.join("image.raucb");
    // mksquashfs is a test prerequisite (squashfs-tools): missing, the test
    // fails loudly instead of skipping the case.
    let mksquashfs = harmony_testkit::tools::find_tool("mksquashfs");
    let made = std::process::Command::new(mksquashfs).arg(&content).arg(&sq).arg("-quiet").arg("-noappend").status();
    assert!(made.as_ref().is_ok_and(|s| s.success()), "mksquashfs: {made:?}");
    assert!(matches!(bundle::push(&env.buckets, &sq, None, false, now()).await, Err(Error::NotABundle { .. })));
    assert!(harmony_operator::store::bundles(&env.buckets.state).await.unwrap().good.iter().all(|b| b.id == "2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_is_refused_while_a_rollout_uses_the_bundle() {
    let env = Env::start().await;
    env.devices(&["pi-1"], common::sim::Behavior::Manual).await;
    env.rollout(&env.start_args(&["pi-1"])).await;
    let err = commands::bundle_rm(&env.cfg, "2.0").await.unwrap_err();
    assert!(matches!(err, Error::BundleInUse { .. }), "{err}");
    commands::rollout_control(&env.cfg, "r1", "abort").await.unwrap();
    // Aborting is applied by the serving operator.
    let op = common::Operator::start(&env.cfg);
    common::eventually(10, "abort applied", || async {
        env.rollout_state("r1").await.status == harmony_operator::model::RolloutStatus::Aborted
    })
    .await;
    op.stop().await;
    commands::bundle_rm(&env.cfg, "2.0").await.unwrap();
    assert!(matches!(bundle::get(&env.buckets, "2.0").await, Err(Error::NoSuchBundle(_))));
}
