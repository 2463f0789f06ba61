#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! Without RAUC the agent still heartbeats and serves commands — unless an
//! upgrade spans this boot: then only it can fall back, so it exits and lets
//! systemd retry until RAUC answers.

mod common;

use common::*;
use harmony_agent::upgrade::machine::State;
use harmony_agent::upgrade::record::{FileRecordStore, RecordStore};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::UpgradePhase;
use harmony_testkit::NatsServer;
use std::time::Duration;

#[tokio::test]
async fn no_rauc_during_a_trial_boot_is_fatal_so_systemd_retries() {
    let nats = NatsServer::start();
    let device = FakeDevice::new();
    let mut state = State::initial(UnixMillis(1));
    state.phase = UpgradePhase::AwaitingCommit;
    FileRecordStore::in_dir(&device.path("state")).save(&state).unwrap();

    let agent = RunningAgent::start(device.config(&nats.url(), 1));
    let result = tokio::time::timeout(Duration::from_secs(20), agent.task).await.unwrap().unwrap();
    let err = result.unwrap_err().to_string();
    assert!(err.contains("RAUC is unreachable while an upgrade is awaiting_commit"), "{err}");
}

#[tokio::test]
async fn no_rauc_without_an_upgrade_in_flight_keeps_the_agent_serving() {
    let nats = NatsServer::start();
    let client = client(&nats).await;
    let device = FakeDevice::new();
    let mut state = State::initial(UnixMillis(1));
    state.phase = UpgradePhase::Committed;
    FileRecordStore::in_dir(&device.path("state")).save(&state).unwrap();

    let agent = RunningAgent::start(device.config(&nats.url(), 1));
    assert!(request(&client, harmony_protocol::Command::Ping).await.into_result().is_ok());
    assert!(!agent.task.is_finished());
    agent.stop().await.unwrap();
}
