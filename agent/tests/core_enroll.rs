#![allow(clippy::unwrap_used, clippy::expect_used)] // integration-test code: failing loudly is the point
//! Zero-touch enrollment (issue 14), the device's side, against a real
//! nats-server and a fake enrollment service (a test task answering on
//! `all_enroll_subjects()` with canned replies; the operator's callout is
//! not part of this crate).

mod common;
mod log_capture;

use common::*;
use futures::StreamExt;
use harmony_agent::service_manager::Notification;
use harmony_agent::AgentConfig;
use harmony_protocol::enroll::{
    all_enroll_subjects, enroll_inbox_prefix, enroll_permissions, enroll_subject, EnrollRefusal, EnrollReply,
    EnrollRequest,
};
use harmony_protocol::permissions::device_permissions;
use harmony_protocol::{DeviceId, Heartbeat};
use harmony_testkit::wait::{synced_with_server, wait_until};
use harmony_testkit::NatsServer;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "hfe1_test-token-0001";
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The id the agent derives from the fake device's machine id.
fn derived_id() -> DeviceId {
    harmony_agent::identity::device_id_from_machine_id("0123456789abcdef0123456789abcdef").unwrap()
}

/// An un-provisioned device: image config with a placeholder server and no
/// credentials, a drop-in dir, a boot partition; loaded from a file, as on
/// a device, so enrolling reloads it with its drop-ins.
fn write_config(dev: &FakeDevice, refused_retry_secs: u64) -> AgentConfig {
    std::fs::create_dir_all(dev.path("boot")).unwrap();
    let text = format!(
        r#"
drop_in_dir = "{d}/agent.d"
heartbeat_interval_secs = 1
state_dir = "{d}/state"
fleet_keys_dir = "{d}/fleet-keys"
startup_grace_secs = 1
[labels]
site = "lab"
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
refused_retry_secs = {refused_retry_secs}
"#,
        d = dev.dir.path().display()
    );
    std::fs::write(dev.path("agent.toml"), text).unwrap();
    AgentConfig::load(&dev.path("agent.toml")).unwrap()
}

fn write_boot_file(dev: &FakeDevice, url: &str, ca: bool) {
    let mut text = format!("token = \"{TOKEN}\"\nnats_urls = [\"{url}\"]\n");
    if ca {
        text.push_str(&format!("nats_ca_pem = \"\"\"\n{CA_PEM}\"\"\"\n"));
    }
    std::fs::write(dev.path("boot/harmony-enroll.toml"), text).unwrap();
}

/// One request the fake enrollment service saw.
#[derive(Debug, Clone)]
struct Seen {
    subject: String,
    reply: String,
    request: EnrollRequest,
}

/// The fake enrollment service: answers every request with `answer`.
struct Responder {
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<EnrollReply>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Responder {
    async fn start(client: async_nats::Client, answer: EnrollReply) -> Self {
        let mut sub = client.subscribe(all_enroll_subjects()).await.unwrap();
        synced_with_server(&client).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let task = tokio::spawn({
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                while let Some(msg) = sub.next().await {
                    let request: EnrollRequest = serde_json::from_slice(&msg.payload).expect("an EnrollRequest");
                    let reply = msg.reply.clone().expect("a request").to_string();
                    seen.lock().unwrap().push(Seen { subject: msg.subject.to_string(), reply: reply.clone(), request });
                    let body = serde_json::to_vec(&*answer.lock().unwrap()).unwrap();
                    client.publish(reply, body.into()).await.unwrap();
                }
            }
        });
        Self { seen, answer, _task: task }
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("a request was seen")
    }
    fn set(&self, answer: EnrollReply) {
        *self.answer.lock().unwrap() = answer;
    }
}

async fn wait_heartbeat_of(kv: &async_nats::jetstream::kv::Store, id: &DeviceId, within: Duration) -> Heartbeat {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(bytes)) = kv.get(id.as_str()).await {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat from {id} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn seed_public_key(path: &Path) -> String {
    nkeys::KeyPair::from_seed(std::fs::read_to_string(path).unwrap().trim()).unwrap().public_key()
}

#[tokio::test]
async fn first_boot_imports_waits_pending_then_enrolls_and_heartbeats() {
    log_capture::init();
    let nats = NatsServer::start();
    let admin = client(&nats).await;
    let kv = create_heartbeat_bucket(&admin).await;
    let dev = FakeDevice::new();
    let cfg = write_config(&dev, 600);
    write_boot_file(&dev, &nats.url(), true);

    // No enrollment service yet: the agent keeps asking (backoff, capped
    // at retry_secs) and tells systemd it is ready after the grace.
    let agent = RunningAgent::start(cfg);
    log_capture::wait_line(0, Duration::from_secs(10), &["enrollment request got no reply"]).await;
    wait_notification(&agent, 0, Duration::from_secs(5), |n| *n == Notification::Ready).await;

    // Imported: moved off the boot partition, staged 0600, seed 0600.
    assert!(!dev.path("boot/harmony-enroll.toml").exists(), "deleted from the boot partition");
    assert_eq!(mode(&dev.path("state/enroll.toml")), 0o600);
    assert_eq!(mode(&dev.path("state/device.nk")), 0o600);
    assert_eq!(std::fs::read_to_string(dev.path("state/nats-ca.pem")).unwrap(), CA_PEM);
    let public_key = seed_public_key(&dev.path("state/device.nk"));

    // Pending: asked again (same key) every retry_secs.
    let responder = Responder::start(admin.clone(), EnrollReply::Pending { device: derived_id() }).await;
    wait_until(Duration::from_secs(10), "two pending answers", || responder.count() >= 2).await;
    let pending = wait_notification(
        &agent,
        0,
        Duration::from_secs(5),
        |n| matches!(n, Notification::Status(s) if s.starts_with("enrollment pending approval")),
    )
    .await;
    let seen = responder.last();
    assert_eq!(seen.request.nkey, public_key, "the request carries the key of the seed on disk");
    assert_eq!(seen.subject, enroll_subject(&public_key));
    assert!(seen.reply.starts_with(&format!("{}.", enroll_inbox_prefix(&public_key))), "{}", seen.reply);
    assert_eq!(seen.request.token, TOKEN);
    assert_eq!(seen.request.device, derived_id());
    assert_eq!(seen.request.labels.get("site").map(String::as_str), Some("lab"));
    assert_eq!(seen.request.os_version.as_deref(), Some("1.0.0"));
    assert!(!dev.path("agent.d/20-enrolled.toml").exists());
    // The watchdog is fed while waiting.
    wait_notification(&agent, pending, Duration::from_secs(5), |n| *n == Notification::Watchdog).await;

    let labels = BTreeMap::from([("site".to_string(), "lab".to_string())]);
    responder.set(EnrollReply::Enrolled { device: derived_id(), labels });
    let hb = wait_heartbeat_of(&kv, &derived_id(), Duration::from_secs(15)).await;
    assert_eq!(hb.device_id, derived_id());

    let drop_in = dev.path("agent.d/20-enrolled.toml");
    assert_eq!(mode(&drop_in), 0o600);
    let text = std::fs::read_to_string(&drop_in).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(t["device_id"].as_str(), Some(derived_id().as_str()));
    assert_eq!(t["nats"]["urls"][0].as_str(), Some(nats.url().as_str()));
    assert_eq!(t["nats"]["nkey_seed_file"].as_str(), Some(dev.path("state/device.nk").to_str().unwrap()));
    assert_eq!(t["nats"]["ca_file"].as_str(), Some(dev.path("state/nats-ca.pem").to_str().unwrap()));
    assert!(!dev.path("state/enroll.toml").exists(), "the token is deleted once enrolled");
    let ready = agent.service_manager.notifications().iter().filter(|n| **n == Notification::Ready).count();
    assert_eq!(ready, 1, "READY once per start");
    agent.stop().await.unwrap();
}

/// A server that knows the device's key (as the callout would) with the
/// enroll permissions and the ordinary device permissions.
fn nkey_server(dev_key: &str, admin_key: &str, id: &DeviceId) -> (tempfile::TempDir, NatsServer) {
    let enroll = enroll_permissions(dev_key);
    let device = device_permissions(id);
    let publish: Vec<String> = enroll.publish.into_iter().chain(device.publish).collect();
    let subscribe: Vec<String> = enroll.subscribe.into_iter().chain(device.subscribe).collect();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [\n {{ nkey: \"{admin_key}\" }}\n {{ nkey: \"{dev_key}\", permissions: {{ \
             publish: {{ allow: {} }}, subscribe: {{ allow: {} }}, allow_responses: true }} }}\n] }}\n",
            serde_json::to_string(&publish).unwrap(),
            serde_json::to_string(&subscribe).unwrap(),
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with_config(Some(&conf));
    (conf_dir, nats)
}

#[tokio::test]
async fn an_existing_seed_is_reused_and_the_enrolled_identity_survives_restarts() {
    log_capture::init();
    let dev = FakeDevice::new();
    let dev_key = nkeys::KeyPair::new_user();
    let seed = dev_key.seed().unwrap();
    std::fs::write(dev.path("state/device.nk"), format!("{seed}\n")).unwrap();
    std::fs::set_permissions(dev.path("state/device.nk"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let admin_key = nkeys::KeyPair::new_user();
    let (_conf, nats) = nkey_server(&dev_key.public_key(), &admin_key.public_key(), &derived_id());
    let admin = async_nats::ConnectOptions::with_nkey(admin_key.seed().unwrap()).connect(nats.url()).await.unwrap();
    let kv = create_heartbeat_bucket(&admin).await;
    let responder =
        Responder::start(admin.clone(), EnrollReply::Enrolled { device: derived_id(), labels: BTreeMap::new() }).await;

    let cfg = write_config(&dev, 600);
    write_boot_file(&dev, &nats.url(), false);
    let agent = RunningAgent::start(cfg);
    wait_heartbeat_of(&kv, &derived_id(), Duration::from_secs(15)).await;
    assert_eq!(responder.count(), 1);
    assert_eq!(responder.last().request.nkey, dev_key.public_key(), "the existing seed is used");
    agent.stop().await.unwrap();
    assert_eq!(std::fs::read_to_string(dev.path("state/device.nk")).unwrap(), format!("{seed}\n"));
    assert!(!dev.path("state/nats-ca.pem").exists());

    // Restart: the drop-in makes it an ordinary agent; no enrollment again.
    kv.purge(derived_id().as_str()).await.unwrap();
    let agent = RunningAgent::start(AgentConfig::load(&dev.path("agent.toml")).unwrap());
    wait_heartbeat_of(&kv, &derived_id(), Duration::from_secs(15)).await;
    assert_eq!(responder.count(), 1, "an enrolled device does not ask again");
    assert_eq!(std::fs::read_to_string(dev.path("state/device.nk")).unwrap(), format!("{seed}\n"));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_final_refusal_is_logged_and_retried_only_slowly_while_systemd_is_fed() {
    log_capture::init();
    let nats = NatsServer::start();
    let admin = client(&nats).await;
    let responder = Responder::start(
        admin.clone(),
        EnrollReply::Refused { reason: EnrollRefusal::TokenRevoked, detail: "revoked by alice".into() },
    )
    .await;
    let dev = FakeDevice::new();
    let cfg = write_config(&dev, 600);
    write_boot_file(&dev, &nats.url(), false);
    let agent = RunningAgent::start(cfg);
    log_capture::wait_line(0, Duration::from_secs(10), &["enrollment refused", "TokenRevoked", "revoked by alice"])
        .await;
    let ready = wait_notification(&agent, 0, Duration::from_secs(5), |n| *n == Notification::Ready).await;
    let refused = |n: &Notification| matches!(n, Notification::Status(s) if s.starts_with("enrollment refused"));
    wait_notification(&agent, 0, Duration::from_secs(5), refused).await;
    // retry_secs is 1 s: a fast retry would show within these 4 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(responder.count(), 1, "a refused device does not ask again before refused_retry_secs");
    let pings =
        agent.service_manager.notifications().iter().skip(ready).filter(|n| **n == Notification::Watchdog).count();
    assert!(pings >= 4, "the watchdog is fed while refused: {pings}");
    assert!(!agent.task.is_finished(), "a refusal does not end the agent");
    assert!(!dev.path("agent.d/20-enrolled.toml").exists());
    assert!(dev.path("state/enroll.toml").exists(), "the token is kept: an operator may still accept");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_malformed_enrollment_file_is_left_in_place_with_a_clear_error() {
    log_capture::init();
    let dev = FakeDevice::new();
    let cfg = write_config(&dev, 600);
    let bad = "token = \"hfe1_x\"\nnats_urls = [\"nats://x:4222\"]\ncolour = \"red\"\n";
    std::fs::write(dev.path("boot/harmony-enroll.toml"), bad).unwrap();
    let agent = RunningAgent::start(cfg);
    log_capture::wait_line(0, Duration::from_secs(10), &["harmony-enroll.toml is not usable", "unknown field"]).await;
    wait_notification(&agent, 0, Duration::from_secs(5), |n| *n == Notification::Ready).await;
    assert!(!agent.task.is_finished(), "the agent carries on");
    assert_eq!(std::fs::read_to_string(dev.path("boot/harmony-enroll.toml")).unwrap(), bad, "left alone");
    assert!(!dev.path("state/enroll.toml").exists());
    assert!(!dev.path("state/device.nk").exists(), "no identity is made without a token");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_seed_is_a_clear_error_not_a_new_identity() {
    log_capture::init();
    let dev = FakeDevice::new();
    let cfg = write_config(&dev, 600);
    write_boot_file(&dev, "nats://127.0.0.1:1", false);
    std::fs::write(dev.path("state/device.nk"), "").unwrap();
    let agent = RunningAgent::start(cfg);
    let err = agent.stop().await.unwrap_err().to_string();
    assert!(err.contains("device.nk") && err.contains("empty"), "{err}");
    assert_eq!(std::fs::read_to_string(dev.path("state/device.nk")).unwrap(), "");
}
