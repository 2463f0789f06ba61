#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! The agent authenticates with an nkey seed file and works under
//! credentials limited to its own subjects: heartbeat key, command subject,
//! replies to requests, and its own inbox prefix.

mod common;

use common::*;
use harmony_agent::service_manager::Notification;
use harmony_protocol::names::{command_subject, device_inbox_prefix, kv_put_subject, HEARTBEAT_BUCKET};
use harmony_protocol::Command;
use harmony_testkit::wait::wait_until;
use harmony_testkit::NatsServer;
use std::time::Duration;

#[tokio::test]
async fn agent_with_an_nkey_limited_to_its_own_subjects_heartbeats_and_serves() {
    let device_key = nkeys::KeyPair::new_user();
    let admin_key = nkeys::KeyPair::new_user();
    let id = device_id();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            r#"
authorization {{
  users = [
    {{ nkey: "{admin}" }}
    {{
      nkey: "{device}"
      permissions: {{
        publish: {{ allow: ["{hb_put}", "$JS.API.STREAM.INFO.KV_{HEARTBEAT_BUCKET}"] }}
        subscribe: {{ allow: ["{cmd}", "{inbox}.>"] }}
        allow_responses: true
      }}
    }}
  ]
}}
"#,
            admin = admin_key.public_key(),
            device = device_key.public_key(),
            hb_put = kv_put_subject(HEARTBEAT_BUCKET, id.as_str()),
            cmd = command_subject(&id),
            inbox = device_inbox_prefix(&id),
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with_config(Some(&conf));

    let admin = async_nats::ConnectOptions::with_nkey(admin_key.seed().unwrap()).connect(nats.url()).await.unwrap();
    let kv = create_heartbeat_bucket(&admin).await;

    let device = FakeDevice::new();
    std::fs::write(device.path("device.nk"), device_key.seed().unwrap() + "\n").unwrap();
    let mut cfg = device.config(&nats.url(), 1);
    cfg.nats.nkey_seed_file = Some(device.path("device.nk"));
    let agent = RunningAgent::start(cfg);

    wait_heartbeat(&kv, Duration::from_secs(10), |_| true).await;
    assert!(request(&admin, Command::Ping).await.into_result().is_ok());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_nkey_is_refused_by_the_server_but_the_agent_keeps_running() {
    let allowed = nkeys::KeyPair::new_user();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("auth.conf");
    std::fs::write(&conf, format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n", allowed.public_key()))
        .unwrap();
    let nats = NatsServer::start_with_config(Some(&conf));

    let device = FakeDevice::new();
    let intruder = nkeys::KeyPair::new_user();
    std::fs::write(device.path("device.nk"), intruder.seed().unwrap()).unwrap();
    let mut cfg = device.config(&nats.url(), 1);
    cfg.nats.nkey_seed_file = Some(device.path("device.nk"));
    let agent = RunningAgent::start(cfg);
    // Definite points: the server refused the device twice (so it tried
    // again after the first refusal), and the agent's supervisor runs and
    // says it cannot reach NATS.
    let refused = format!("authentication error - Nkey \"{}\"", intruder.public_key());
    let refusals = || nats.log().matches(refused.as_str()).count();
    wait_until(Duration::from_secs(15), "two refused connection attempts", || refusals() >= 2).await;
    let unreachable = |n: &Notification| matches!(n, Notification::Status(s) if s.starts_with("NATS unreachable"));
    wait_notification(&agent, 0, Duration::from_secs(10), unreachable).await;
    assert!(!agent.task.is_finished(), "an auth failure must not kill the agent");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_credentials_file_is_a_clear_startup_error() {
    let nats = NatsServer::start();
    let device = FakeDevice::new();
    let mut cfg = device.config(&nats.url(), 1);
    cfg.nats.nkey_seed_file = Some(device.path("no-such.nk"));
    let agent = RunningAgent::start(cfg);
    let err = agent.stop().await.unwrap_err().to_string();
    assert!(err.contains("no-such.nk"), "{err}");
}
