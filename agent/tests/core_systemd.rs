#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! What the agent tells systemd: READY after connecting (or after the
//! startup grace when offline), watchdog pings while alive, STOPPING on exit.

mod common;

use common::*;
use harmony_agent::service_manager::Notification;
use harmony_testkit::wait::wait_until;
use harmony_testkit::NatsServer;
use std::time::Duration;

#[tokio::test]
async fn ready_after_connect_then_watchdog_pings_and_stopping() {
    let nats = NatsServer::start();
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 1));
    let ready = wait_notification(&agent, 0, Duration::from_secs(10), |n| *n == Notification::Ready).await;
    // 400 ms watchdog → a ping every 200 ms: four after READY in well under 10 s.
    let sm = agent.service_manager.clone();
    let pings_after_ready = || sm.notifications().iter().skip(ready).filter(|n| **n == Notification::Watchdog).count();
    wait_until(Duration::from_secs(10), "regular watchdog pings after READY", || pings_after_ready() >= 4).await;
    agent.stop().await.unwrap();
    let log = sm.notifications();
    assert!(log.iter().any(|n| matches!(n, Notification::Status(s) if s.starts_with("connected to NATS"))), "{log:?}");
    assert_eq!(log.last(), Some(&Notification::Stopping));
}

#[tokio::test]
async fn offline_device_reports_ready_after_the_grace_period_and_keeps_running() {
    // Nothing listens on this port: NATS is unreachable from the start.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let device = FakeDevice::new();
    let started = tokio::time::Instant::now();
    let agent = RunningAgent::start(device.config(&format!("nats://127.0.0.1:{port}"), 1));
    // The supervisor's first word is the status; READY comes only after the
    // 3 s grace (the tests' startup_grace_secs).
    let unreachable = |n: &Notification| matches!(n, Notification::Status(s) if s.starts_with("NATS unreachable"));
    let status = wait_notification(&agent, 0, Duration::from_secs(10), unreachable).await;
    let ready = wait_notification(&agent, 0, Duration::from_secs(10), |n| *n == Notification::Ready).await;
    assert!(ready > status, "{:?}", agent.service_manager.notifications());
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "READY only after the grace, not after {:?}",
        started.elapsed()
    );
    assert!(!agent.task.is_finished());
    agent.stop().await.unwrap();
}
