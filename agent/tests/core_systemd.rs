#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! What the agent tells systemd: READY after connecting (or after the
//! startup grace when offline), watchdog pings while alive, STOPPING on exit.

mod common;

use common::*;
use harmony_agent::service_manager::Notification;
use harmony_testkit::NatsServer;
use std::time::Duration;

#[tokio::test]
async fn ready_after_connect_then_watchdog_pings_and_stopping() {
    let nats = NatsServer::start();
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sm = agent.service_manager.clone();
    agent.stop().await.unwrap();
    let log = sm.notifications();
    let ready = log.iter().position(|n| *n == Notification::Ready).expect("READY=1 sent");
    assert!(log.iter().any(|n| matches!(n, Notification::Status(s) if s.starts_with("connected to NATS"))), "{log:?}");
    // 400 ms watchdog → a ping every 200 ms: several in 2 s, after READY.
    let pings = log.iter().skip(ready).filter(|n| **n == Notification::Watchdog).count();
    assert!(pings >= 4, "expected regular watchdog pings, got {log:?}");
    assert_eq!(log.last(), Some(&Notification::Stopping));
}

#[tokio::test]
async fn offline_device_reports_ready_after_the_grace_period_and_keeps_running() {
    // Nothing listens on this port: NATS is unreachable from the start.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&format!("nats://127.0.0.1:{port}"), 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!agent.service_manager.notifications().contains(&Notification::Ready), "not ready before the grace");
    tokio::time::sleep(Duration::from_secs(3)).await; // grace is 3 s in tests
    let log = agent.service_manager.notifications();
    assert!(log.contains(&Notification::Ready), "{log:?}");
    assert!(log.iter().any(|n| matches!(n, Notification::Status(s) if s.starts_with("NATS unreachable"))));
    assert!(!agent.task.is_finished());
    agent.stop().await.unwrap();
}
