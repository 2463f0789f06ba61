#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! Heartbeats reach the KV bucket on a real nats-server, carry the facts
//! the operator needs, and survive a server crash without an agent restart.

mod common;
mod log_capture;

use common::*;
use harmony_agent::service_manager::Notification;
use harmony_protocol::{HealthStatus, UpgradePhase};
use harmony_testkit::NatsServer;
use std::time::Duration;

#[tokio::test]
async fn heartbeat_appears_within_an_interval_with_device_facts() {
    let nats = NatsServer::start();
    let client = client(&nats).await;
    let kv = create_heartbeat_bucket(&client).await;
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 2));

    // One interval plus connection set-up.
    let hb = wait_heartbeat(&kv, Duration::from_secs(4), |_| true).await;
    assert_eq!(hb.device_id.as_str(), DEVICE);
    assert_eq!(hb.os_version.as_deref(), Some("1.0.0"));
    assert_eq!(hb.boot_id, "boot-1");
    assert_eq!(hb.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hb.labels.get("site").map(String::as_str), Some("lab"));
    assert_eq!(hb.health.status, HealthStatus::Unknown);
    assert_eq!(hb.upgrade.phase, UpgradePhase::Idle);

    // And it keeps coming: the sequence number advances.
    let next = wait_heartbeat(&kv, Duration::from_secs(5), |h| h.seq > hb.seq).await;
    assert!(next.sent_at >= hb.sent_at);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeats_resume_after_nats_is_killed_and_restarted() {
    let mut nats = NatsServer::start();
    let device = FakeDevice::new();
    {
        let client = client(&nats).await;
        create_heartbeat_bucket(&client).await;
    }
    let agent = RunningAgent::start(device.config(&nats.url(), 1));
    {
        let client = client(&nats).await;
        let kv =
            async_nats::jetstream::new(client).get_key_value(harmony_protocol::names::HEARTBEAT_BUCKET).await.unwrap();
        wait_heartbeat(&kv, Duration::from_secs(5), |_| true).await;
    }

    let from = agent.service_manager.notifications().len();
    nats.kill();
    // Definite point: the agent saw the connection go (its status says so).
    // (Waiting for a failed heartbeat write too would add its 5 s timeout.)
    let unreachable = |n: &Notification| matches!(n, Notification::Status(s) if s.starts_with("NATS unreachable"));
    wait_notification(&agent, from, Duration::from_secs(10), unreachable).await;
    assert!(!agent.task.is_finished(), "agent must not exit while NATS is down");
    nats.restart();

    let client = client(&nats).await;
    let kv = async_nats::jetstream::new(client.clone())
        .get_key_value(harmony_protocol::names::HEARTBEAT_BUCKET)
        .await
        .unwrap();
    let before = read_heartbeat(&kv).await.map(|h| h.seq).unwrap_or(0);
    let after = wait_heartbeat(&kv, Duration::from_secs(30), |h| h.seq > before).await;
    assert_eq!(after.boot_id, "boot-1", "same agent process, same boot");
    // The command server re-subscribed too.
    let reply = request(&client, harmony_protocol::Command::Ping).await;
    assert!(reply.into_result().is_ok());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn missing_bucket_is_reported_not_fatal_and_heartbeats_start_once_it_exists() {
    log_capture::init();
    let nats = NatsServer::start();
    let client = client(&nats).await;
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 1));
    // The agent creates nothing it has no right to: once a heartbeat write
    // failed for the missing bucket (a definite point), no bucket appeared.
    // The line sends the newcomer to the fix, whatever the server version
    // calls the missing stream.
    log_capture::wait_line(0, Duration::from_secs(10), &["heartbeat not written", "harmony-operator init"]).await;
    let js = async_nats::jetstream::new(client.clone());
    assert!(js.get_key_value(harmony_protocol::names::HEARTBEAT_BUCKET).await.is_err());
    assert!(!agent.task.is_finished());
    // It still answers commands meanwhile.
    assert!(request(&client, harmony_protocol::Command::Ping).await.into_result().is_ok());

    let kv = create_heartbeat_bucket(&client).await;
    wait_heartbeat(&kv, Duration::from_secs(5), |_| true).await;
    agent.stop().await.unwrap();
}
