//! The operator acts on the agent's `offer_notes`: an offer the device keeps
//! while busy is queued, not timed out; a refusal noted next to the phase
//! fails the job. Real nats-server, the real operator loop, a scripted device
//! that reports what the agent reports (the agent side of these notes is
//! tested through real RAUC in agent/tests/upgrade_faults_offers.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sim::Behavior;
use common::{dev, eventually, now, Env, Operator};
use harmony_operator::commands;
use harmony_operator::model::JobState;
use harmony_protocol::{NotedRefusal, RefusalReason, UpgradePhase};

/// The device's device timeout in these tests.
const TIMEOUT_MS: u64 = 3_000;

/// A running operator that offered `pi-1` its rollout with a 3 s device
/// timeout; returns the offer's sequence.
async fn offered() -> (Env, Operator, u64) {
    let env = Env::start().await;
    env.devices(&["pi-1"], Behavior::Manual).await;
    let op = Operator::start(&env.cfg);
    let mut args = env.start_args(&["pi-1"]);
    args.policy.device_timeout_ms = TIMEOUT_MS;
    env.rollout(&args).await;
    eventually(10, "offer", || async { env.offers_to("pi-1") == 1 }).await;
    let seq = env.fleet.with(&dev("pi-1"), |s| s.offers[0].offer_seq).unwrap();
    (env, op, seq)
}

/// The device works on another, older offer and keeps `kept` for later.
async fn beat_busy_keeping(env: &Env, kept: u64) {
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade.offer_seq = Some(kept - 1);
        s.upgrade.target_version = Some("1.5".into());
        s.upgrade.phase = UpgradePhase::Downloading { bytes_done: 1, bytes_total: 10 };
        s.upgrade.offer_notes.busy_offer_seq = Some(kept);
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_offer_outlives_the_device_timeout_and_a_noted_refusal_fails_it() {
    let (env, op, seq) = offered().await;
    let offered_at = now();
    // The device reports the offer kept while busy, twice a second, for
    // longer than the device timeout (definite point: its own clock).
    while now().saturating_since(offered_at) < 2 * TIMEOUT_MS {
        beat_busy_keeping(&env, seq).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let job = env.job("pi-1").await.unwrap();
    assert_eq!(job.state, JobState::Offered, "{:#?}", job.history);
    assert_eq!(job.queued_behind.as_ref().and_then(|q| q.offer_seq), Some(seq - 1));
    assert!(job.history.iter().any(|t| t.note.starts_with("queued on the device behind offer")), "{:#?}", job.history);
    let status = commands::rollout_status(&env.cfg, Some("r1")).await.unwrap();
    assert!(status.text.contains(&format!("offered (queued behind offer {})", seq - 1)), "{}", status.text);

    // The busy upgrade is committed; the kept offer is refused when judged
    // (same version): the phase stays committed, the refusal is noted.
    let reason = RefusalReason::Downgrade { current: "2.0".into(), target: "2.0".into() };
    env.fleet.with(&dev("pi-1"), |s| {
        s.upgrade.phase = UpgradePhase::Committed;
        s.upgrade.offer_notes.busy_offer_seq = None;
        s.upgrade.offer_notes.refusal = Some(NotedRefusal { offer_seq: Some(seq), reason: reason.clone() });
    });
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    let job = env.wait_job("pi-1", |s| matches!(s, JobState::Failed { .. }), 10).await;
    assert_eq!(job.state, JobState::Failed { reason: format!("refused: {reason}") });
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_offer_times_out_once_the_device_stops_reporting_it() {
    let (env, op, seq) = offered().await;
    beat_busy_keeping(&env, seq).await;
    eventually(10, "queued", || async { env.job("pi-1").await.is_some_and(|j| j.queued_behind.is_some()) }).await;
    let last_report = now();
    let job = env.wait_job("pi-1", |s| matches!(s, JobState::TimedOut { .. }), 10).await;
    let timed_out_at = job.history.last().unwrap().at;
    assert!(
        timed_out_at.saturating_since(last_report) + 200 >= TIMEOUT_MS,
        "timed out {} ms after the last report",
        timed_out_at.saturating_since(last_report)
    );
    op.stop().await;
}
