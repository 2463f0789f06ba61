//! Issue #17: corrupt and lost state, and devices' word, against a real
//! nats-server and the real operator loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sim::Behavior;
use common::{dev, eventually, now, Env, Operator};
use futures::StreamExt;
use harmony_operator::commands::{self, ProvisionArgs, Target};
use harmony_operator::lease::Lease;
use harmony_operator::model::{keys, JobState};
use harmony_operator::{store, Error};
use harmony_protocol::names::HEARTBEAT_BUCKET;
use harmony_protocol::{UpgradePhase, UpgradeStatus};
use std::time::{Duration, Instant};

const CORRUPT: &[u8] = b"{\"device\": \"pi-9\", \"state\": tru";

/// Issue #17 item 1: one undecodable job (and rollout) record once made
/// `lead()` fail and reload forever, offering nothing, and `rollout start`
/// fail. Now the records are skipped with a warning, quarantined, and shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_quarantined_and_the_operator_still_offers() {
    let env = Env::start().await;
    env.devices(&["pi-1", "pi-9"], Behavior::Manual).await;
    env.buckets.state.put(keys::job(&dev("pi-9")), CORRUPT.into()).await.unwrap();
    env.buckets.state.put(keys::rollout("broken"), b"not json".as_ref().into()).await.unwrap();
    let op = Operator::start(&env.cfg);
    // The CLI is not stopped by them either.
    env.rollout(&env.start_args(&["pi-1"])).await;
    eventually(10, "an offer despite the corrupt records", || async { env.offers_to("pi-1") == 1 }).await;

    eventually(5, "quarantined copy", || async {
        store::get_json::<store::Quarantined>(&env.buckets.state, "quarantine.job.pi-9").await.unwrap().is_some()
    })
    .await;
    let q: store::Quarantined = store::get_json(&env.buckets.state, "quarantine.job.pi-9").await.unwrap().unwrap();
    assert_eq!(q.raw.as_bytes(), CORRUPT, "the raw bytes are kept");

    let status = commands::rollout_status(&env.cfg, Some("r1")).await.unwrap();
    let corrupt: Vec<&str> =
        status.json["corrupt"].as_array().unwrap().iter().map(|c| c["key"].as_str().unwrap()).collect();
    assert_eq!(corrupt, ["rollout.broken", "job.pi-9"], "{}", status.text);
    assert!(status.text.contains("job.pi-9"), "{}", status.text);
    let list = commands::rollout_status(&env.cfg, None).await.unwrap();
    assert!(list.text.contains("rollout.broken"), "{}", list.text);
    let shown = commands::devices_show(&env.cfg, "pi-9").await.unwrap();
    assert!(shown.json["job_error"].as_str().unwrap().contains("job.pi-9"), "{}", shown.text);
    assert_eq!(shown.json["quarantined_job"]["record"]["key"], "job.pi-9");
    op.stop().await;
}

/// Issue #17 item 1: an operator that cannot lead (here its heartbeat
/// bucket was deleted under it) gives the lease up and backs off, instead
/// of holding the lease and reloading about 5 times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_that_cannot_lead_releases_the_lease_and_backs_off() {
    let env = Env::start().await;
    let mut cfg = env.cfg.clone();
    cfg.coordinator.operator_id = Some("op-a".into());
    let op = Operator::start(&cfg);
    let lease = || async {
        let e = env.buckets.state.entry(keys::LEASE).await.unwrap()?;
        Some((e.revision, serde_json::from_slice::<Lease>(&e.value).ok()))
    };
    eventually(10, "op-a leads", || async { lease().await.is_some_and(|(_, l)| l.is_some()) }).await;
    env.buckets.js.delete_stream(format!("KV_{HEARTBEAT_BUCKET}")).await.unwrap();

    let mut watch = env.buckets.state.watch(keys::LEASE).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let released_at = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, watch.next()).await.expect("the lease was never released").unwrap().unwrap();
        if serde_json::from_slice::<Lease>(&e.value).is_err() {
            break e.revision;
        }
    };
    // Each attempt to lead takes and releases the lease: with the backoff
    // (0.5 s doubling) about 4 attempts fit in 6 s; without it about 30.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (rev, _) = lease().await.unwrap();
    let attempts = (rev - released_at) / 2;
    assert!(attempts <= 6, "{attempts} attempts to lead in 6 s: no backoff");
    op.stop().await;
}

/// Issue #17 item 5: the heartbeat replay once depended on
/// `kv::Store::status()`, cached when the bucket was opened: an operator
/// started while no device had reported offered without a baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_replays_heartbeats_written_after_the_operator_started() {
    let env = Env::start().await;
    // Another operator holds the lease for 3 s more.
    let other = Lease { holder: "op-gone".into(), expires_at: now().saturating_add_ms(3000) };
    store::put_json(&env.buckets.state, keys::LEASE, &other).await.unwrap();
    let op = Operator::start(&env.cfg); // opens the buckets: no heartbeat yet
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.devices(&["pi-1"], Behavior::Manual).await;
    env.rollout(&env.start_args(&["pi-1"])).await;
    eventually(15, "offer after the takeover", || async { env.offers_to("pi-1") == 1 }).await;
    let job = env.job("pi-1").await.unwrap();
    let baseline = job.baseline.expect("the offer recorded no baseline: heartbeats were not replayed");
    assert_eq!(baseline.boot_id, "pi-1-boot-0");
    op.stop().await;
}

/// Issue #17 item 4: with `job.<device>` lost mid-upgrade, a restarted
/// operator once offered again with a new sequence number. Now it rebuilds
/// the job from the signed offer and commits the device on that offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_job_is_rebuilt_from_its_offer_and_the_device_is_committed_on_it() {
    let env = Env::start().await;
    env.devices(&["pi-1"], Behavior::Manual).await;
    let op = Operator::start(&env.cfg);
    env.rollout(&env.start_args(&["pi-1"])).await;
    eventually(10, "offer", || async { env.offers_to("pi-1") == 1 }).await;
    let offer = env.fleet.with(&dev("pi-1"), |s| s.offers[0].clone()).unwrap();
    let t = now();
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade = UpgradeStatus::idle(t);
        s.upgrade.offer_seq = Some(offer.offer_seq);
        s.upgrade.target_version = Some("2.0".into());
        s.upgrade.phase = UpgradePhase::Downloading { bytes_done: 10, bytes_total: 1000 };
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    env.wait_job("pi-1", |s| *s == JobState::Installing, 10).await;
    op.stop().await;
    env.buckets.state.purge(keys::job(&dev("pi-1"))).await.unwrap();
    env.buckets.state.purge(keys::seq(&dev("pi-1"))).await.unwrap();

    let op = Operator::start(&env.cfg);
    // The rebuilt job is back on the same offer and has seen the last heartbeat.
    let job = env.wait_job("pi-1", |s| *s != JobState::Pending && *s != JobState::Offered, 10).await;
    assert_eq!(job.state, JobState::Installing, "{:#?}", job.history);
    assert_eq!(job.offer_seq(), Some(offer.offer_seq), "a new offer was made");
    assert_eq!(env.offers_to("pi-1"), 1);

    // Installs, reboots into B, awaits commit: committed on the first offer.
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade.pre_reboot_boot_id = Some(s.boot_id.clone());
        s.upgrade.target_slot = Some("B".into());
        s.upgrade.phase = UpgradePhase::Installed;
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    env.wait_job("pi-1", |s| *s == JobState::Rebooting, 10).await;
    env.fleet.with(&dev("pi-1"), |s| {
        s.reboot();
        s.slot = "B".into();
        s.os_version = "2.0".into();
        s.upgrade.phase = UpgradePhase::AwaitingCommit;
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    env.wait_job("pi-1", |s| *s == JobState::Committed, 10).await;
    assert_eq!(env.offers_to("pi-1"), 1, "no second offer");
    let seq: Option<u64> = store::get_json(&env.buckets.state, &keys::seq(&dev("pi-1"))).await.unwrap();
    assert_eq!(seq, Some(offer.offer_seq), "the sequence number is rebuilt too");
    op.stop().await;
}

/// Issue #17 item 4: a device whose job is gone and whose heartbeat shows it
/// already runs the target is not offered again (it would refuse a
/// downgrade-looking offer and halt the rollout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_already_on_the_target_is_not_offered() {
    let env = Env::start().await;
    env.fleet.add(common::sim::SimState::new(dev("pi-1"), "2.0", Behavior::Manual));
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    let op = Operator::start(&env.cfg);
    env.rollout(&env.start_args(&["pi-1"])).await;
    let job = env.wait_job("pi-1", JobState::is_terminal, 10).await;
    assert_eq!(job.state, JobState::UpToDate, "{:#?}", job.history);
    assert_eq!(env.offers_to("pi-1"), 0);
    op.stop().await;
}

fn provision_args(env: &Env, device: &str, labels: &[&str]) -> ProvisionArgs {
    let d = env.dir.path();
    ProvisionArgs {
        device: device.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        nats_urls: Vec::new(),
        out: d.join(device),
        auth_conf: d.join("auth.conf"),
        operator_nkey: d.join("operator.nk"),
        heartbeat_interval_secs: 10,
        commit_deadline_secs: 300,
    }
}

/// Issue #17 item 2: pi-1 writing `{device_id: pi-2, labels: {site:
/// kitchen}}` under its own key once made `devices list` show pi-2 twice
/// and `--selector site=kitchen` select pi-2. Identity is the key; labels
/// are the operator's provisioning records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_speak_for_another_device() {
    let env = Env::start().await;
    commands::provision(&env.cfg, &provision_args(&env, "pi-1", &["site=office"])).await.unwrap();
    commands::provision(&env.cfg, &provision_args(&env, "pi-2", &["site=office"])).await.unwrap();
    env.devices(&["pi-2"], Behavior::Manual).await;
    env.fleet.with(&dev("pi-2"), |s| s.labels = [("site".to_string(), "garden".to_string())].into());
    env.fleet.beat(&dev("pi-2")).await.unwrap();
    let mut forged = env.fleet.with(&dev("pi-2"), |s| s.heartbeat(now())).unwrap();
    forged.labels = [("site".to_string(), "kitchen".to_string())].into();
    let bytes = serde_json::to_vec(&forged).unwrap();
    env.fleet.heartbeat_store().put("pi-1", bytes.into()).await.unwrap();

    let list = commands::devices_list(&env.cfg).await.unwrap();
    let rows = list.json.as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["device_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pi-2"], "{}", list.text);
    assert_eq!(rows[0]["labels"]["site"], "office", "labels are the operator's, not the device's");
    let shown = commands::devices_show(&env.cfg, "pi-1").await.unwrap_err();
    assert!(shown.to_string().contains("names another device"), "{shown}");

    let start = |sel: &str| {
        let mut a = env.start_args(&[]);
        a.target = Target::Selector(sel.into());
        a.id = Some(format!("r-{}", sel.replace('=', "-")));
        a
    };
    let kitchen = commands::rollout_start(&env.cfg, &start("site=kitchen")).await.unwrap_err();
    assert!(matches!(kitchen, Error::Invalid(ref m) if m.contains("no devices selected")), "{kitchen}");
    let garden = commands::rollout_start(&env.cfg, &start("site=garden")).await.unwrap_err();
    assert!(matches!(garden, Error::Invalid(_)), "a device's own label selects nothing: {garden}");
    let office = commands::rollout_start(&env.cfg, &start("site=office")).await.unwrap();
    let mut selected: Vec<&str> = office.json["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w.as_array().unwrap())
        .map(|d| d.as_str().unwrap())
        .collect();
    selected.sort();
    assert_eq!(selected, ["pi-1", "pi-2"]);
}
