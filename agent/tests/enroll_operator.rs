#![allow(clippy::unwrap_used, clippy::expect_used)] // integration-test code: failing loudly is the point
//! The whole enrollment path with the real operator: nats-server in
//! auth-callout mode, `harmony-operator serve` with `[enroll]` deciding
//! every connection and answering enrollment requests, and the real agent
//! loop starting from nothing but an enrollment file on its boot partition.

mod common;
mod log_capture;

use common::*;
use harmony_agent::service_manager::Notification;
use harmony_agent::AgentConfig;
use harmony_operator::config::{Config, EnrollConfig};
use harmony_operator::enroll::cli::{self, TokenArgs, Verdict};
use harmony_operator::enroll::{seed_file, SeedKind};
use harmony_protocol::{DeviceId, Heartbeat};
use harmony_testkit::wait::wait_until;
use harmony_testkit::NatsServer;
use std::path::Path;
use std::time::Duration;

struct Fleet {
    _dir: tempfile::TempDir,
    server: NatsServer,
    cfg: Config,
    admin: async_nats::Client,
    _serve: tokio::task::JoinHandle<()>,
}

impl Fleet {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let op = seed_file(&p("operator.nk"), SeedKind::User, true).unwrap();
        let signing_key = p("fleet.key");
        harmony_operator::keys::generate(&signing_key).unwrap();
        let mut cfg = Config::for_url("nats://127.0.0.1:1", &signing_key);
        cfg.nats.nkey_seed_file = Some(p("operator.nk"));
        cfg.enroll = Some(EnrollConfig {
            issuer_seed_file: p("issuer.nk"),
            system_seed_file: p("system.nk"),
            ..EnrollConfig::default()
        });
        std::fs::write(p("nats.conf"), cli::server_config(&cfg).unwrap().text).unwrap();
        let server = NatsServer::start_with_config(Some(&p("nats.conf")));
        cfg.nats.url = server.url();
        harmony_operator::commands::init(&cfg, &Default::default()).await.unwrap();
        let c = cfg.clone();
        let serve = tokio::spawn(async move { harmony_operator::serve::run(c, std::future::pending()).await.unwrap() });
        let admin = async_nats::ConnectOptions::with_nkey(op.seed().unwrap()).connect(server.url()).await.unwrap();
        Self { _dir: dir, server, cfg, admin, _serve: serve }
    }

    async fn token(&self, approval: bool) -> String {
        let a = TokenArgs {
            labels: vec!["site=lab".into()],
            max_uses: 1,
            expires: "1h".into(),
            require_approval: approval,
        };
        cli::token_create(&self.cfg, &a).await.unwrap().json["token"].as_str().unwrap().to_string()
    }

    async fn heartbeat(&self, id: &DeviceId) -> Option<Heartbeat> {
        let kv = async_nats::jetstream::new(self.admin.clone())
            .get_key_value(harmony_protocol::names::HEARTBEAT_BUCKET)
            .await
            .ok()?;
        let bytes = kv.get(id.as_str()).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }
}

fn derived_id() -> DeviceId {
    harmony_agent::identity::device_id_from_machine_id("0123456789abcdef0123456789abcdef").unwrap()
}

/// An un-provisioned device whose boot partition holds `token`.
fn device(fleet: &Fleet, token: &str) -> (FakeDevice, AgentConfig) {
    let dev = FakeDevice::new();
    std::fs::create_dir_all(dev.path("boot")).unwrap();
    std::fs::write(
        dev.path("boot/harmony-enroll.toml"),
        format!("token = \"{token}\"\nnats_urls = [\"{}\"]\n", fleet.server.url()),
    )
    .unwrap();
    let text = format!(
        r#"
drop_in_dir = "{d}/agent.d"
heartbeat_interval_secs = 1
state_dir = "{d}/state"
fleet_keys_dir = "{d}/fleet-keys"
startup_grace_secs = 1
[nats]
urls = ["nats://harmony-operator.invalid:4222"]
request_timeout_secs = 2
[rauc]
dbus_address = "unix:path={d}/no-such-bus"
[system]
os_release = "{d}/os-release"
boot_id = "{d}/boot_id"
machine_id = "{d}/machine-id"
[enroll]
import_from = "{d}/boot/harmony-enroll.toml"
retry_secs = 1
"#,
        d = dev.dir.path().display()
    );
    std::fs::write(dev.path("agent.toml"), text).unwrap();
    let cfg = AgentConfig::load(&dev.path("agent.toml")).unwrap();
    (dev, cfg)
}

async fn wait_heartbeat_from(fleet: &Fleet, within: Duration) -> Heartbeat {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(hb) = fleet.heartbeat(&derived_id()).await {
            return hb;
        }
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat from {} within {within:?}", derived_id());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn public_key_of(path: &Path) -> String {
    nkeys::KeyPair::from_seed(std::fs::read_to_string(path).unwrap().trim()).unwrap().public_key()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_with_only_a_token_joins_the_fleet_and_restarts_as_itself() {
    let fleet = Fleet::start().await;
    let token = fleet.token(false).await;
    let (dev, cfg) = device(&fleet, &token);
    let agent = RunningAgent::start(cfg);
    let hb = wait_heartbeat_from(&fleet, Duration::from_secs(30)).await;
    assert_eq!(hb.device_id, derived_id());
    assert!(!dev.path("boot/harmony-enroll.toml").exists());
    assert!(!dev.path("state/enroll.toml").exists());
    assert!(dev.path("agent.d/20-enrolled.toml").exists());
    let key = public_key_of(&dev.path("state/device.nk"));
    agent.stop().await.unwrap();

    // The token is used up; the device comes back with its own key alone.
    let started = std::time::SystemTime::now();
    let agent = RunningAgent::start(AgentConfig::load(&dev.path("agent.toml")).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let fresh = fleet
            .heartbeat(&derived_id())
            .await
            .is_some_and(|hb| std::time::UNIX_EPOCH + Duration::from_millis(hb.sent_at.0) > started);
        if fresh {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(public_key_of(&dev.path("state/device.nk")), key);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waits_for_approval_then_joins() {
    log_capture::init();
    let fleet = Fleet::start().await;
    let token = fleet.token(true).await;
    let (_dev, cfg) = device(&fleet, &token);
    let agent = RunningAgent::start(cfg);
    let pending =
        |n: &Notification| matches!(n, Notification::Status(s) if s.starts_with("enrollment pending approval"));
    wait_notification(&agent, 0, Duration::from_secs(20), pending).await;
    wait_until(Duration::from_secs(10), "the device listed as pending", || {
        let cfg = fleet.cfg.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(cli::pending(&cfg)).unwrap().text.contains(derived_id().as_str())
        })
        .join()
        .unwrap()
    })
    .await;
    assert!(fleet.heartbeat(&derived_id()).await.is_none());
    cli::judge(&fleet.cfg, derived_id().as_str(), Verdict::Accept).await.unwrap();
    wait_heartbeat_from(&fleet, Duration::from_secs(20)).await;
    agent.stop().await.unwrap();
}
