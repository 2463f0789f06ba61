//! Fencing the operator's writes (issue #17 follow-up): a write issued by an
//! operator that lost the leader lease must not land over the new leader's,
//! even when it reaches the server late (held back in a paused NATS node, or
//! by a paused operator). Real nats-server; the two "operators" are two KV
//! writers started from what each loaded when it took the lead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use harmony_operator::store;
use harmony_operator::writer::{WriteFailure, Writer};
use harmony_testkit::NatsServer;
use std::time::Duration;

async fn bucket(js: &jetstream::Context, name: &str) -> kv::Store {
    js.create_key_value(kv::Config { bucket: name.into(), history: 5, ..Default::default() }).await.unwrap()
}

/// What an operator does on taking the lead: read every key's revision.
async fn load(js: &jetstream::Context, state: &kv::Store, offers: &kv::Store) -> Writer {
    let mut revisions = store::load_state(state).await.unwrap().revisions;
    revisions.extend(store::revisions(&offers.name, &store::read_latest(offers).await.unwrap()));
    Writer::start(js.clone(), revisions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_writes_are_refused_and_it_offers_nothing() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let state = bucket(&js, "state").await;
    let offers = bucket(&js, "offers").await;
    state.put("job.pi-1", "offered by A".into()).await.unwrap();
    offers.put("pi-1", "offer 1".into()).await.unwrap();

    // A leads, then is paused: its next writes are decided but not yet sent.
    let a = load(&js, &state, &offers).await;
    // B takes over, loads the same state and moves on: pi-1 committed, pi-2 offered.
    let b = load(&js, &state, &offers).await;
    b.put("state", "job.pi-1", "committed by B".into(), false);
    b.put("state", "seq.pi-2", "1".into(), false);
    b.put("state", "job.pi-2", "offered by B".into(), false);
    b.put("offers", "pi-2", "offer 1 by B".into(), true);
    b.flush().await;

    // A resumes: its writes reach the server now, after B's.
    a.put("state", "job.pi-1", "commit_sent by A".into(), false);
    a.put("state", "seq.pi-2", "1".into(), false);
    a.put("state", "job.pi-2", "offered by A".into(), false);
    a.put("offers", "pi-2", "offer 1 by A".into(), true);
    a.flush().await;

    assert_eq!(state.get("job.pi-1").await.unwrap().unwrap(), "committed by B", "a job went backwards");
    assert_eq!(state.get("job.pi-2").await.unwrap().unwrap(), "offered by B");
    assert_eq!(offers.get("pi-2").await.unwrap().unwrap(), "offer 1 by B", "pi-2 got a second offer");
    let offer_revisions = offers.history("pi-2").await.unwrap().count().await;
    assert_eq!(offer_revisions, 1, "exactly one offer was ever written for pi-2");
    let why = tokio::time::timeout(Duration::from_secs(5), a.failed()).await.expect("fencing not reported");
    assert!(matches!(&why, WriteFailure::Fenced { subject, .. } if subject == "$KV.state.job.pi-1"), "{why}");
    // B is not disturbed: its own next write still lands.
    b.put("state", "job.pi-1", "committed by B, again".into(), false);
    b.flush().await;
    assert_eq!(state.get("job.pi-1").await.unwrap().unwrap(), "committed by B, again");
    assert!(tokio::time::timeout(Duration::from_millis(200), b.failed()).await.is_err(), "B was fenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_writes_the_same_key_many_times_in_a_row() {
    // Pipelined writes to one key: each must expect the revision the one
    // before it got, or the leader would fence itself.
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let state = bucket(&js, "state").await;
    let offers = bucket(&js, "offers").await;
    state.put("rollout.r1", "created by the CLI".into()).await.unwrap();
    let w = load(&js, &state, &offers).await;
    for i in 0..50 {
        w.put("state", "job.pi-1", format!("transition {i}").into(), false);
        w.put("state", "rollout.r1", format!("counts {i}").into(), false);
    }
    w.flush().await;
    assert!(tokio::time::timeout(Duration::from_millis(200), w.failed()).await.is_err(), "the leader fenced itself");
    assert_eq!(state.get("job.pi-1").await.unwrap().unwrap(), "transition 49");
    assert_eq!(state.get("rollout.r1").await.unwrap().unwrap(), "counts 49");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_after_loading_is_written_once_observed() {
    // The CLI creates rollouts while the operator leads; the serve loop
    // passes each one's revision on from its watch.
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let state = bucket(&js, "state").await;
    let offers = bucket(&js, "offers").await;
    let w = load(&js, &state, &offers).await;
    let rev = state.create("rollout.r2", "created by the CLI".into()).await.unwrap();
    w.observe("state", "rollout.r2", rev);
    w.put("state", "rollout.r2", "running".into(), false);
    w.flush().await;
    assert_eq!(state.get("rollout.r2").await.unwrap().unwrap(), "running");
    assert!(tokio::time::timeout(Duration::from_millis(200), w.failed()).await.is_err());
}

mod common;

use common::sim::Behavior;
use common::{eventually, Env, Operator};
use harmony_operator::model::JobState;
use std::process::{Command, Stdio};

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(sig).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

async fn lease_holder(env: &Env) -> Option<String> {
    store::get_json::<harmony_operator::lease::Lease>(&env.buckets.state, "lease.leader")
        .await
        .ok()
        .flatten()
        .map(|l| l.holder)
}

/// The real operator binary leads, is paused (SIGSTOP) past its lease, a
/// second operator takes over and completes a rollout the first never saw;
/// the first resumes with stale memory. Nothing it decides may land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_operator_resumes_after_a_takeover_and_changes_nothing() {
    let env = Env::start().await;
    let names = ["pi-1", "pi-2"];
    env.devices(&names, Behavior::Happy).await;
    let mut cfg_a = env.cfg.clone();
    cfg_a.coordinator.operator_id = Some("op-a".into());
    let cfg_path = env.dir.path().join("op-a.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg_a).unwrap()).unwrap();
    let log_path = env.dir.path().join("op-a.log");
    let mut a = Command::new(env!("CARGO_BIN_EXE_harmony-operator"))
        .arg("--config")
        .arg(&cfg_path)
        .arg("serve")
        .env("HARMONY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    eventually(10, "op-a leads", || async { lease_holder(&env).await.as_deref() == Some("op-a") }).await;
    signal(a.id(), "-STOP");

    let mut cfg_b = env.cfg.clone();
    cfg_b.coordinator.operator_id = Some("op-b".into());
    let b = Operator::start(&cfg_b);
    env.rollout(&env.start_args(&names)).await;
    for d in names {
        env.wait_job(d, |s| *s == JobState::Committed, 20).await;
    }
    assert_eq!(lease_holder(&env).await.as_deref(), Some("op-b"));
    b.stop().await; // B's last writes are done; only A can write from here.

    signal(a.id(), "-CONT");
    // Definite point: A has noticed it does not lead (fenced or lease lost).
    eventually(15, "op-a stands by", || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains("standing by: lease lost") || log.contains("was fenced")
    })
    .await;
    // Let anything A still had queued reach the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in names {
        assert_eq!(env.offers_to(d), 1, "{d} got a second offer");
        let job = env.wait_job(d, |_| true, 1).await;
        assert_eq!(job.state, JobState::Committed, "{d}'s job went backwards");
    }
    let _ = a.kill();
    let _ = a.wait();
}
