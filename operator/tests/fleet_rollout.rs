//! Rollout progress through the FleetService (issue #13): the real
//! coordinator, simulated devices, per-wave stage counts, the halt reason,
//! resume, and device timelines across two rollouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sim::Behavior;
use common::{dev, Env, Operator};
use harmony_operator::fleet::{
    Actor, AuditAction, AuditQuery, AuditResult, Change, Control, FleetService, KvFleet, RolloutDetail, Stage, Via,
};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::RecvError};

/// Waits on the fleet's change events until the rollout's detail satisfies `done`.
async fn rollout_until(
    fleet: &KvFleet,
    rx: &mut broadcast::Receiver<Change>,
    id: &str,
    what: &str,
    done: impl Fn(&RolloutDetail) -> bool,
) -> RolloutDetail {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(d) = fleet.rollout(id).await {
            if done(&d) {
                return d;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => panic!("closed"),
            Err(_) => panic!("timed out waiting for {what}: {:#?}", fleet.rollout(id).await.map(|d| d.waves)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wave_stages_halt_reason_resume_and_timelines_across_rollouts() {
    let env = Env::start().await;
    env.devices(&["c-1", "d-1", "d-2"], Behavior::Happy).await;
    env.devices(&["f-1"], Behavior::FailInstall).await;
    let op = Operator::start(&env.cfg);
    let fleet = KvFleet::live(env.buckets.clone(), env.cfg.fleet.clone()).await.unwrap();
    let mut rx = fleet.subscribe();
    let admin = Actor::new("alice", Via::Dashboard);

    // Canary c-1, then f-1 (fails: halts the wave at the first failure), d-1, d-2.
    let mut a = env.start_args(&["c-1", "f-1", "d-1", "d-2"]);
    a.policy.max_in_flight = 1;
    let started = fleet.start_rollout(&admin, &a).await.unwrap();
    assert_eq!(started.waves.len(), 2);

    let halted = rollout_until(&fleet, &mut rx, "r1", "the halt", |d| d.summary.status == "halted").await;
    let [canary, rest] = &halted.waves[..] else { panic!("{:?}", halted.waves) };
    assert_eq!((canary.devices, canary.counts.committed, canary.counts.total()), (1, 1, 1), "{canary:?}");
    assert_eq!((rest.counts.failed, rest.counts.pending, rest.counts.total()), (1, 2, 3), "{rest:?}");
    let reason = halted.summary.halt_reason.clone().unwrap();
    assert!(reason.contains("1 of 3 devices in wave 2 of 2"), "{reason}");
    let overview = fleet.overview().await.unwrap();
    assert_eq!(overview.active_rollouts.len(), 1);
    assert_eq!(overview.active_rollouts[0].halt_reason.as_deref(), Some(reason.as_str()));

    fleet.control_rollout(&admin, "r1", Control::Resume).await.unwrap();
    let done = rollout_until(&fleet, &mut rx, "r1", "completion", |d| d.summary.status == "completed").await;
    assert_eq!((done.waves[1].counts.committed, done.waves[1].counts.failed), (2, 1), "{:?}", done.waves);
    assert_eq!(done.summary.counts.finished(), 4);
    assert!(fleet.overview().await.unwrap().active_rollouts.is_empty());

    // f-1's timeline: the failure, with the agent's reason on it.
    let f1 = fleet.device(&dev("f-1")).await.unwrap();
    let failed = f1.timeline.iter().find(|e| e.stage == Some(Stage::Failed)).expect("a failed entry");
    assert!(failed.reason.as_deref().is_some_and(|r| !r.is_empty()), "{failed:?}");
    assert_eq!(failed.target_version.as_deref(), Some("2.0"));

    // A second rollout replaces c-1's job record: its r1 job is archived,
    // so the timeline spans both and r1 still counts c-1 as committed.
    let mut b = env.start_args(&["c-1", "d-1"]);
    b.id = Some("r2".into());
    fleet.start_rollout(&admin, &b).await.unwrap();
    rollout_until(&fleet, &mut rx, "r2", "r2 completion", |d| d.summary.status == "completed").await;
    let c1 = fleet.device(&dev("c-1")).await.unwrap();
    let rollouts: Vec<&str> = c1.timeline.iter().map(|e| e.rollout_id.as_str()).collect();
    assert!(rollouts.first() == Some(&"r1") && rollouts.last() == Some(&"r2"), "{rollouts:?}");
    assert!(c1.timeline.iter().any(|e| e.rollout_id == "r1" && e.stage == Some(Stage::Committed)));
    assert!(c1.timeline.iter().any(|e| e.rollout_id == "r2" && e.stage == Some(Stage::UpToDate)));
    assert!(c1.timeline.windows(2).all(|w| w[0].at <= w[1].at), "time order");
    let r1 = fleet.rollout("r1").await.unwrap();
    assert_eq!((r1.waves[0].counts.committed, r1.waves[0].counts.superseded), (1, 0), "{:?}", r1.waves);
    assert_eq!(r1.jobs.len(), 4);

    // Every action above is in the audit log, newest first.
    let log = fleet.audit(&AuditQuery::default()).await.unwrap();
    let actions: Vec<AuditAction> = log.entries.iter().map(|e| e.action).collect();
    assert_eq!(actions, [AuditAction::RolloutStart, AuditAction::RolloutResume, AuditAction::RolloutStart]);
    assert!(log.entries.iter().all(|e| e.actor == admin && matches!(e.result, AuditResult::Ok { .. })));
    assert!(log.entries.windows(2).all(|w| w[0].seq > w[1].seq));
    op.stop().await;
}

/// What a person just did is on the next page they load: the live index is
/// waited on after each write, never a page that still lacks it. Ten
/// rollouts, each read back at once with no wait in the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_in_the_live_index_when_the_call_returns() {
    let env = Env::start().await;
    let ids: Vec<String> = (0..10).map(|i| format!("own-{i}")).collect();
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    env.devices(&names, Behavior::Manual).await;
    let fleet = KvFleet::live(env.buckets.clone(), env.cfg.fleet.clone()).await.unwrap();
    let admin = Actor::new("alice", Via::Dashboard);
    for (i, device) in names.iter().enumerate() {
        let mut a = env.start_args(&[device]);
        a.id = Some(format!("mine-{i}"));
        fleet.start_rollout(&admin, &a).await.unwrap();
        let listed = fleet.rollout_records().await.unwrap();
        assert!(listed.iter().any(|r| r.id == format!("mine-{i}")), "mine-{i} not in the index after its write");
    }
}
