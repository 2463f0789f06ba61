#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! The command server answers every request with a typed reply and keeps
//! serving after garbage.

mod common;

use common::*;
use harmony_protocol::command::{CommitArgs, ReplyBody};
use harmony_protocol::{Command, CommandError, Unsupported};
use harmony_testkit::NatsServer;
use std::time::Duration;

#[tokio::test]
async fn ping_round_trips_with_version_uptime_and_boot() {
    let nats = NatsServer::start();
    let client = client(&nats).await;
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 5));
    match request(&client, Command::Ping).await.into_result() {
        Ok(ReplyBody::Pong { agent_version, boot_id, booted_slot, .. }) => {
            assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
            assert_eq!(boot_id, "boot-1");
            // No RAUC on this bus: the slot is honestly unknown.
            assert_eq!(booted_slot, None);
        }
        other => panic!("unexpected ping reply {other:?}"),
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn status_returns_the_current_heartbeat() {
    let nats = NatsServer::start();
    let client = client(&nats).await;
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 5));
    match request(&client, Command::Status).await.into_result() {
        Ok(ReplyBody::Status { heartbeat }) => {
            assert_eq!(heartbeat.device_id.as_str(), DEVICE);
            assert_eq!(heartbeat.os_version.as_deref(), Some("1.0.0"));
        }
        other => panic!("unexpected status reply {other:?}"),
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_verbs_garbage_and_newer_schemas_get_typed_errors_and_the_agent_keeps_serving() {
    let nats = NatsServer::start();
    let client = client(&nats).await;
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 5));
    let within = Duration::from_secs(15);

    let reply = request_raw(&client, br#"{"schema":1,"verb":"format-disk"}"#.to_vec(), within).await;
    assert_eq!(
        reply.into_result(),
        Err(CommandError::Unsupported { reason: Unsupported::UnknownVerb { verb: "format-disk".into() } })
    );
    for garbage in [&b"\x00\xff garbage"[..], b"", b"[]", b"{\"verb\":42,\"schema\":1}"] {
        let reply = request_raw(&client, garbage.to_vec(), within).await;
        assert!(matches!(reply.into_result(), Err(CommandError::BadRequest { .. })), "{garbage:?}");
    }
    let reply = request_raw(&client, br#"{"schema":9,"verb":"ping"}"#.to_vec(), within).await;
    assert!(matches!(
        reply.into_result(),
        Err(CommandError::Unsupported { reason: Unsupported::NewerSchema { received: 9, .. } })
    ));
    let reply = request_raw(&client, br#"{"schema":1,"verb":"ping","extra":1}"#.to_vec(), within).await;
    assert!(matches!(reply.into_result(), Err(CommandError::Unsupported { reason: Unsupported::UnknownField { .. } })));

    // Still alive and serving.
    assert!(request(&client, Command::Ping).await.into_result().is_ok());
    assert!(!agent.task.is_finished());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn commit_without_an_upgrade_awaiting_commit_is_refused() {
    let nats = NatsServer::start();
    let client = client(&nats).await;
    let device = FakeDevice::new();
    let agent = RunningAgent::start(device.config(&nats.url(), 5));
    let commit = Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-1".into() });
    assert!(matches!(request(&client, commit).await.into_result(), Err(CommandError::Refused { .. })));
    agent.stop().await.unwrap();
}
