//! Shared fixtures: a real nats-server, buckets, a fleet key, an operator
//! running the real `run` loop, and scripted devices speaking the protocol.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub use harmony_operator::sim;

use harmony_operator::bus::{create_buckets, BucketLimits, Buckets};
use harmony_operator::commands::{self, StartArgs, Target};
use harmony_operator::model::{keys, BundleRecord, HaltThreshold, Job, JobState, Rollout};
use harmony_operator::{store, Config};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::DeviceId;
use harmony_testkit::NatsServer;
use sim::{Behavior, SimFleet, SimState};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Env {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    pub buckets: Buckets,
    pub fleet: SimFleet,
}

pub fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

pub fn now() -> UnixMillis {
    harmony_operator::clock::Clock::now(&harmony_operator::clock::SystemClock)
}

impl Env {
    pub async fn start() -> Self {
        harmony_operator::logger::init();
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("fleet.key");
        harmony_operator::keys::generate(&key).unwrap();
        let mut cfg = Config::for_url(&nats.url(), &key);
        cfg.coordinator.tick_millis = 100;
        cfg.coordinator.lease_ttl_secs = 2;
        cfg.coordinator.commit_retry_secs = 1;
        let client = harmony_operator::bus::connect(&cfg.nats).await.unwrap();
        create_buckets(&async_nats::jetstream::new(client.clone()), &BucketLimits::default()).await.unwrap();
        let buckets = Buckets::open(client).await.unwrap();
        let public = harmony_operator::keys::load(&key).unwrap().verifying_key();
        let fleet = SimFleet::connect(&nats.url(), public).await.unwrap();
        fleet.start().await.unwrap();
        // A bundle record as `bundle push` leaves it (the scripted devices do not download).
        let rec = BundleRecord {
            id: "2.0".into(),
            version: "2.0".into(),
            compatible: "harmony-sim".into(),
            sha256: "ab".repeat(32),
            size: 1000,
            pushed_at: now(),
            signature_sha256: None,
        };
        store::put_json(&buckets.state, &keys::bundle("2.0"), &rec).await.unwrap();
        Self { nats, dir, cfg, buckets, fleet }
    }

    /// Adds devices and sends one heartbeat each (so the operator knows their baseline).
    pub async fn devices(&self, names: &[&str], behavior: Behavior) {
        for n in names {
            self.fleet.add(SimState::new(dev(n), "1.0", behavior));
            self.fleet.beat(&dev(n)).await.unwrap();
        }
    }

    pub fn start_args(&self, devices: &[&str]) -> StartArgs {
        let mut a = StartArgs::from_defaults(
            &self.cfg,
            "2.0",
            Target::Devices(devices.iter().map(|s| s.to_string()).collect()),
        );
        a.id = Some("r1".into());
        a.canary = 1;
        a.waves = vec![100];
        a.policy.halt = HaltThreshold::Count(1);
        a.policy.device_timeout_ms = 60_000;
        a.policy.reboot_timeout_ms = 30_000;
        a
    }

    pub async fn rollout(&self, a: &StartArgs) {
        commands::rollout_start(&self.cfg, a).await.unwrap();
    }

    pub async fn job(&self, d: &str) -> Option<Job> {
        store::get_json(&self.buckets.state, &keys::job(&dev(d))).await.unwrap()
    }

    pub async fn rollout_state(&self, id: &str) -> Rollout {
        store::get_json(&self.buckets.state, &keys::rollout(id)).await.unwrap().unwrap()
    }

    pub async fn wait_job(&self, d: &str, what: impl Fn(&JobState) -> bool, secs: u64) -> Job {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(j) = self.job(d).await {
                if what(&j.state) {
                    return j;
                }
                if Instant::now() > deadline {
                    panic!("{d} stuck in {:?}: {:#?}", j.state, j.history);
                }
            } else if Instant::now() > deadline {
                panic!("{d} has no job");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Definite point: the leading operator has stepped over every
    /// heartbeat written so far and its job writes for them are durable
    /// (harmony_operator::leader_status). Check "nothing happened" after this.
    pub async fn operator_caught_up(&self) {
        let last = store::last_revision(&self.buckets.heartbeats).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = harmony_operator::leader_status::query(&self.buckets.client, Duration::from_secs(2)).await;
            if status.as_ref().is_ok_and(|s| s.heartbeat_revision >= last) {
                return;
            }
            assert!(Instant::now() < deadline, "the operator has not caught up with revision {last}: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn offers_to(&self, d: &str) -> usize {
        self.fleet.with(&dev(d), |s| s.offers.len()).unwrap()
    }

    pub fn commits_to(&self, d: &str) -> usize {
        self.fleet.with(&dev(d), |s| s.commits.len()).unwrap()
    }
}

/// The real operator loop in a task; stop it cleanly, or abort it like a kill.
pub struct Operator {
    pub handle: JoinHandle<harmony_operator::Result<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Operator {
    pub fn start(cfg: &Config) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = cfg.clone();
        let handle = tokio::spawn(harmony_operator::run(cfg, async move {
            let _ = rx.await;
        }));
        Self { handle, stop: Some(tx) }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.handle).await;
    }

    /// Like SIGKILL: the task is dropped mid-flight, the lease is not released.
    pub fn kill(self) {
        self.handle.abort();
    }
}

pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
