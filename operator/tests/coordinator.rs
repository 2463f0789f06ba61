//! The coordinator against a real nats-server with scripted devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sim::Behavior;
use common::{dev, eventually, now, Env, Operator};
use harmony_operator::model::{JobState, RolloutStatus};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{HealthStatus, RefusalReason, UpgradePhase, UpgradeStatus};

/// Sends a heartbeat of the scripted device after `f` shaped it.
async fn beat_with(env: &Env, d: &str, f: impl FnOnce(&mut harmony_protocol::Heartbeat)) {
    let t = now();
    let mut hb = env.fleet.with(&dev(d), |s| s.heartbeat(t)).unwrap();
    f(&mut hb);
    env.fleet.put(&hb).await.unwrap();
}

/// A running operator that has offered a one-device rollout to `pi-1`, a
/// device that does only what the test makes it do.
async fn offered_to_one_scripted_device() -> (Env, Operator) {
    let env = Env::start().await;
    env.devices(&["pi-1"], Behavior::Manual).await;
    let op = Operator::start(&env.cfg);
    env.rollout(&env.start_args(&["pi-1"])).await;
    eventually(10, "offer", || async { env.offers_to("pi-1") == 1 }).await;
    (env, op)
}

/// Once the operator has processed the heartbeats written so far (a
/// definite point, not a pause): no commit sent, none recorded.
async fn not_committed(env: &Env, d: &str) {
    env.operator_caught_up().await;
    let job = env.job(d).await.unwrap();
    assert!(!matches!(job.state, JobState::CommitSent | JobState::Committed), "{d} committed: {:?}", job.state);
    assert_eq!(env.commits_to(d), 0, "{d} must not be committed yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_only_after_the_right_heartbeat() {
    let (env, op) = offered_to_one_scripted_device().await;
    let offer = env.fleet.with(&dev("pi-1"), |s| s.offers[0].clone()).unwrap();

    // Before the reboot: installed into B, recorded boot b0.
    let t = now();
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade.offer_seq = Some(offer.offer_seq);
        s.upgrade.target_version = Some("2.0".into());
        s.upgrade.pre_reboot_boot_id = Some(s.boot_id.clone());
        s.upgrade.target_slot = Some("B".into());
        s.upgrade.phase = UpgradePhase::Installed;
        s.upgrade.since = t;
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    env.wait_job("pi-1", |s| *s == JobState::Rebooting, 10).await;
    let pre_boot = env.fleet.with(&dev("pi-1"), |s| s.boot_id.clone()).unwrap();

    // Awaiting commit, but from the same boot: no commit.
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade.phase = UpgradePhase::AwaitingCommit;
        s.os_version = "2.0".into();
        s.slot = "B".into();
    });
    beat_with(&env, "pi-1", |_| {}).await;
    not_committed(&env, "pi-1").await;

    env.fleet.with(&dev("pi-1"), |s| s.reboot());
    // New boot, wrong slot.
    beat_with(&env, "pi-1", |h| h.booted_slot = Some("A".into())).await;
    not_committed(&env, "pi-1").await;
    // New boot, unhealthy.
    beat_with(&env, "pi-1", |h| h.health.status = HealthStatus::Unhealthy).await;
    not_committed(&env, "pi-1").await;
    // New boot, wrong version.
    beat_with(&env, "pi-1", |h| h.os_version = Some("1.0".into())).await;
    not_committed(&env, "pi-1").await;
    // The right heartbeat: commit, naming the new boot. Its device's clock
    // is years behind (a Pi without RTC before NTP): freshness is judged on
    // the server's time of the write, never on `sent_at` (staleness itself
    // is in the coordinator's table tests: a real server stores "now").
    let sent = std::time::Instant::now();
    beat_with(&env, "pi-1", |h| h.sent_at = UnixMillis(1_577_836_800_000)).await;
    eventually(5, "commit", || async { env.commits_to("pi-1") == 1 }).await;
    let latency = sent.elapsed();
    let commit = env.fleet.with(&dev("pi-1"), |s| s.commits[0].clone()).unwrap();
    assert_ne!(commit.boot_id, pre_boot);
    assert_eq!(commit.target_version, "2.0");
    let job = env.wait_job("pi-1", |s| *s == JobState::Committed, 5).await;
    assert!(job.history.iter().all(|t| t.at.0 > 0));
    eprintln!("commit latency over real NATS: {latency:?}; history: {:#?}", job.history);
    assert_eq!(env.rollout_state("r1").await.status, RolloutStatus::Completed);
    assert_eq!(env.offers_to("pi-1"), 1);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_reported_by_the_agent_halts_the_rollout() {
    let env = Env::start().await;
    env.devices(&["pi-1", "pi-2"], Behavior::RollBack).await;
    let op = Operator::start(&env.cfg);
    env.rollout(&env.start_args(&["pi-1", "pi-2"])).await;
    let job = env.wait_job("pi-1", |s| matches!(s, JobState::RolledBack { .. }), 10).await;
    assert!(format!("{:?}", job.state).contains("boot"), "{:?}", job.state);
    eventually(5, "halt", || async { matches!(env.rollout_state("r1").await.status, RolloutStatus::Halted { .. }) })
        .await;
    env.operator_caught_up().await;
    assert!(env.buckets.offers.get("pi-2").await.unwrap().is_none(), "halted: no offer to the next wave");
    assert_eq!(env.offers_to("pi-2"), 0, "halted: no offer to the next wave");
    assert_eq!(env.commits_to("pi-1"), 0);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_the_device_cannot_verify_fails_its_job() {
    let (env, op) = offered_to_one_scripted_device().await;
    env.wait_job("pi-1", |s| *s == JobState::Offered, 10).await;
    // Signed by a key the device does not trust: the agent reads nothing of
    // the offer, so its refusal names no offer_seq and no rollout.
    beat_with(&env, "pi-1", |h| {
        h.upgrade = UpgradeStatus {
            phase: UpgradePhase::Refused { reason: RefusalReason::UnknownKey { key_id: "rotated".into() } },
            ..UpgradeStatus::idle(now())
        }
    })
    .await;
    let job = env.wait_job("pi-1", |s| matches!(s, JobState::Failed { .. }), 10).await;
    assert!(format!("{:?}", job.state).contains("unknown key rotated"), "{:?}", job.state);
    assert_eq!(env.offers_to("pi-1"), 1);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_inferred_from_old_version_on_old_slot_after_reboot() {
    let (env, op) = offered_to_one_scripted_device().await;
    let offer = env.fleet.with(&dev("pi-1"), |s| s.offers[0].clone()).unwrap();
    let t = now();
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade.offer_seq = Some(offer.offer_seq);
        s.upgrade.pre_reboot_boot_id = Some(s.boot_id.clone());
        s.upgrade.target_slot = Some("B".into());
        s.upgrade.phase = UpgradePhase::Rebooting;
        s.upgrade.since = t;
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    env.wait_job("pi-1", |s| *s == JobState::Rebooting, 10).await;
    // U-Boot fell back; an old agent that knows nothing of the upgrade comes up.
    env.fleet.with(&dev("pi-1"), |s| {
        s.reboot();
        s.upgrade = harmony_protocol::UpgradeStatus::idle(t);
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    env.wait_job("pi-1", |s| matches!(s, JobState::RolledBack { .. }), 10).await;
    assert_eq!(env.commits_to("pi-1"), 0);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_from_the_new_boot_times_out() {
    let env = Env::start().await;
    env.devices(&["pi-1"], Behavior::Vanish).await;
    let op = Operator::start(&env.cfg);
    let mut a = env.start_args(&["pi-1"]);
    a.policy.reboot_timeout_ms = 1_000;
    env.rollout(&a).await;
    let job = env.wait_job("pi-1", |s| matches!(s, JobState::TimedOut { .. }), 10).await;
    assert_eq!(job.state, JobState::TimedOut { waiting_for: "heartbeat from the new boot".into() });
    eventually(5, "halt", || async { matches!(env.rollout_state("r1").await.status, RolloutStatus::Halted { .. }) })
        .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_failures_halt_and_the_rest_get_no_offer() {
    let env = Env::start().await;
    env.devices(&["c-1", "c-2", "c-3"], Behavior::FailInstall).await;
    env.devices(&["d-1", "d-2", "d-3", "d-4"], Behavior::Happy).await;
    let op = Operator::start(&env.cfg);
    let mut a = env.start_args(&["c-1", "c-2", "c-3", "d-1", "d-2", "d-3", "d-4"]);
    a.canary = 3;
    a.policy.max_in_flight = 3;
    a.policy.halt = harmony_operator::model::HaltThreshold::Count(2);
    env.rollout(&a).await;
    eventually(10, "halt", || async { matches!(env.rollout_state("r1").await.status, RolloutStatus::Halted { .. }) })
        .await;
    env.operator_caught_up().await;
    for d in ["d-1", "d-2", "d-3", "d-4"] {
        assert_eq!(env.offers_to(d), 0, "{d} got an offer from a halted rollout");
        assert!(env.buckets.offers.get(d).await.unwrap().is_none(), "{d} has an offer in KV");
        assert_eq!(env.job(d).await.unwrap().state, JobState::Pending);
    }
    let r = env.rollout_state("r1").await;
    assert!(r.history.iter().any(|t| t.to == "halted"), "{:?}", r.history);
    // Resume is the operator's decision; it moves on to the next wave.
    harmony_operator::commands::rollout_control(&env.cfg, "r1", "resume").await.unwrap();
    eventually(10, "next wave committed", || async {
        env.job("d-1").await.is_some_and(|j| j.state == JobState::Committed)
    })
    .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_rollout_resumes_without_a_second_offer_or_a_missed_commit() {
    let env = Env::start().await;
    env.devices(&["pi-1"], Behavior::Manual).await;
    env.devices(&["pi-2"], Behavior::Happy).await;
    let mut first = env.cfg.clone();
    first.coordinator.operator_id = Some("op-1".into());
    let op = Operator::start(&first);
    let mut a = env.start_args(&["pi-1", "pi-2"]);
    a.policy.max_in_flight = 1;
    env.rollout(&a).await;
    eventually(10, "offer", || async { env.offers_to("pi-1") == 1 }).await;
    let offer = env.fleet.with(&dev("pi-1"), |s| s.offers[0].clone()).unwrap();
    op.kill();

    // While no operator runs, the device installs, reboots and awaits commit.
    let t = now();
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade.offer_seq = Some(offer.offer_seq);
        s.upgrade.target_version = Some("2.0".into());
        s.upgrade.pre_reboot_boot_id = Some(s.boot_id.clone());
        s.upgrade.target_slot = Some("B".into());
        s.upgrade.phase = UpgradePhase::Installed;
        s.upgrade.since = t;
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    env.fleet.with(&dev("pi-1"), |s| {
        s.reboot();
        s.slot = "B".into();
        s.os_version = "2.0".into();
        s.upgrade.phase = UpgradePhase::AwaitingCommit;
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();

    // A new operator process: waits out the dead one's lease, then commits.
    let mut second = env.cfg.clone();
    second.coordinator.operator_id = Some("op-2".into());
    let op = Operator::start(&second);
    eventually(15, "commit after restart", || async { env.commits_to("pi-1") == 1 }).await;
    env.wait_job("pi-1", |s| *s == JobState::Committed, 5).await;
    // ... and continues the rollout with the next device.
    env.wait_job("pi-2", |s| *s == JobState::Committed, 10).await;
    assert_eq!(env.offers_to("pi-1"), 1, "no second offer");
    assert_eq!(env.offers_to("pi-2"), 1);
    let seq = harmony_operator::store::get_json::<u64>(&env.buckets.state, "seq.pi-1").await.unwrap();
    assert_eq!(seq, Some(offer.offer_seq), "sequence persisted");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_decided_but_not_written_is_put_again_identically() {
    // Simulates a crash after the job was persisted and before the offer put:
    // the job says Offered but the offer bucket is empty.
    let (env, op) = offered_to_one_scripted_device().await;
    op.stop().await;
    let before = env.buckets.offers.get("pi-1").await.unwrap().unwrap();
    env.buckets.offers.purge("pi-1").await.unwrap();
    let op = Operator::start(&env.cfg);
    eventually(10, "re-put", || async { env.buckets.offers.get("pi-1").await.unwrap().is_some() }).await;
    let after = env.buckets.offers.get("pi-1").await.unwrap().unwrap();
    assert_eq!(before, after, "same offer, same sequence number, same signature");
    // The device's watch delivers the re-put (same sequence number) ...
    eventually(10, "re-put delivered", || async {
        env.fleet.with(&dev("pi-1"), |s| s.offers_received.len()).unwrap() == 2
    })
    .await;
    // ... and takes it for the offer it already has.
    assert_eq!(env.offers_to("pi-1"), 1, "the device does not see a new offer");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_only_the_leader_acts_and_the_standby_takes_over() {
    let env = Env::start().await;
    let names = ["pi-1", "pi-2", "pi-3"];
    env.devices(&names, Behavior::Happy).await;
    let mut cfg_a = env.cfg.clone();
    cfg_a.coordinator.operator_id = Some("op-a".into());
    let mut cfg_b = env.cfg.clone();
    cfg_b.coordinator.operator_id = Some("op-b".into());
    let a = Operator::start(&cfg_a);
    eventually(10, "op-a leads", || async {
        harmony_operator::store::get_json::<harmony_operator::lease::Lease>(&env.buckets.state, "lease.leader")
            .await
            .ok()
            .flatten()
            .is_some_and(|l| l.holder == "op-a")
    })
    .await;
    let b = Operator::start(&cfg_b);
    let mut args = env.start_args(&["pi-1"]);
    args.id = Some("r1".into());
    env.rollout(&args).await;
    env.wait_job("pi-1", |s| *s == JobState::Committed, 10).await;
    let lease: harmony_operator::lease::Lease =
        harmony_operator::store::get_json(&env.buckets.state, "lease.leader").await.unwrap().unwrap();
    assert_eq!(lease.holder, "op-a");
    assert_eq!((env.offers_to("pi-1"), env.commits_to("pi-1")), (1, 1), "exactly one operator acted");

    a.kill();
    let mut args = env.start_args(&["pi-2", "pi-3"]);
    args.id = Some("r2".into());
    env.rollout(&args).await;
    env.wait_job("pi-3", |s| *s == JobState::Committed, 15).await;
    let lease: harmony_operator::lease::Lease =
        harmony_operator::store::get_json(&env.buckets.state, "lease.leader").await.unwrap().unwrap();
    assert_eq!(lease.holder, "op-b");
    for d in ["pi-2", "pi-3"] {
        assert_eq!((env.offers_to(d), env.commits_to(d)), (1, 1), "{d}");
    }
    b.stop().await;
}
