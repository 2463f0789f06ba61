//! Shared setup for the agent's core integration tests: a real nats-server,
//! the buckets the operator would create, a temp "device" (machine id, boot
//! id, os-release, fleet keys), and the real agent loop under test control.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use async_nats::jetstream;
use harmony_agent::service_manager::RecordingServiceManager;
use harmony_agent::{AgentConfig, Effects};
use harmony_protocol::command::{Command, CommandReply};
use harmony_protocol::names::HEARTBEAT_BUCKET;
use harmony_protocol::{DeviceId, Heartbeat};
use harmony_testkit::NatsServer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DEVICE: &str = "pi-test-01";

/// A temp directory laid out like the bits of a device the agent reads.
pub struct FakeDevice {
    pub dir: tempfile::TempDir,
}

impl FakeDevice {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("os-release"), "NAME=Harmony\nVERSION_ID=\"1.0.0\"\n").unwrap();
        std::fs::write(dir.path().join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::create_dir_all(dir.path().join("fleet-keys")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let dev = Self { dir };
        dev.new_boot("boot-1");
        dev
    }

    /// Simulate a reboot as far as the agent can tell: a new boot id.
    pub fn new_boot(&self, boot_id: &str) {
        std::fs::write(self.dir.path().join("boot_id"), format!("{boot_id}\n")).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self, nats_url: &str, interval_secs: u64) -> AgentConfig {
        let text = format!(
            r#"
device_id = "{DEVICE}"
heartbeat_interval_secs = {interval_secs}
state_dir = "{state}"
fleet_keys_dir = "{keys}"
startup_grace_secs = 3
[labels]
site = "lab"
[nats]
urls = ["{nats_url}"]
request_timeout_secs = 2
[rauc]
dbus_address = "unix:path={nobus}"
[system]
os_release = "{osr}"
boot_id = "{boot}"
machine_id = "{mid}"
"#,
            state = self.path("state").display(),
            keys = self.path("fleet-keys").display(),
            nobus = self.path("no-such-bus").display(),
            osr = self.path("os-release").display(),
            boot = self.path("boot_id").display(),
            mid = self.path("machine-id").display(),
        );
        AgentConfig::parse(&text, Path::new("test.toml")).expect("test config")
    }
}

/// The real agent loop running in this test's runtime.
pub struct RunningAgent {
    pub service_manager: Arc<RecordingServiceManager>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), harmony_agent::AgentError>>,
}

impl RunningAgent {
    pub fn start(cfg: AgentConfig) -> Self {
        Self::start_with(cfg, Effects::real())
    }

    /// With the given effects, except the service manager (recorded).
    pub fn start_with(cfg: AgentConfig, effects: Effects) -> Self {
        let service_manager = Arc::new(RecordingServiceManager::with_watchdog(Duration::from_millis(400)));
        let effects = Effects { service_manager: service_manager.clone(), ..effects };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(harmony_agent::run(cfg, effects, async move {
            let _ = stopped.await;
        }));
        Self { service_manager, stop: Some(stop), task }
    }

    pub async fn stop(mut self) -> Result<(), harmony_agent::AgentError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("agent stops within 10 s")
            .expect("agent task did not panic")
    }
}

pub async fn client(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(nats.url()).await.expect("test client connects")
}

/// What `harmony-operator init` does for heartbeats, minimal.
pub async fn create_heartbeat_bucket(client: &async_nats::Client) -> jetstream::kv::Store {
    jetstream::new(client.clone())
        .create_key_value(jetstream::kv::Config {
            bucket: HEARTBEAT_BUCKET.to_string(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("create heartbeat bucket")
}

pub async fn read_heartbeat(kv: &jetstream::kv::Store) -> Option<Heartbeat> {
    let bytes = kv.get(DEVICE).await.ok()??;
    Some(serde_json::from_slice(&bytes).expect("heartbeat JSON"))
}

/// Poll until `pred` holds for the device's heartbeat, or panic after `within`.
pub async fn wait_heartbeat(
    kv: &jetstream::kv::Store,
    within: Duration,
    pred: impl Fn(&Heartbeat) -> bool,
) -> Heartbeat {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(hb) = read_heartbeat(kv).await {
            if pred(&hb) {
                return hb;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no matching heartbeat within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn device_id() -> DeviceId {
    DeviceId::new(DEVICE).unwrap()
}

/// Send raw bytes to the device's command subject, retrying until the agent
/// has subscribed (no responders) or `within` passes.
pub async fn request_raw(client: &async_nats::Client, payload: Vec<u8>, within: Duration) -> CommandReply {
    let subject = harmony_protocol::names::command_subject(&device_id());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), client.request(subject.clone(), payload.clone().into()))
            .await
        {
            Ok(Ok(msg)) => return CommandReply::decode(&msg.payload).expect("reply is a CommandReply"),
            other => {
                assert!(tokio::time::Instant::now() < deadline, "no reply within {within:?}: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub async fn request(client: &async_nats::Client, command: Command) -> CommandReply {
    request_raw(client, command.encode(), Duration::from_secs(15)).await
}

/// Wait until the agent told systemd something matching `pred` (at index
/// `from` or later); returns its index.
pub async fn wait_notification(
    agent: &RunningAgent,
    from: usize,
    within: Duration,
    pred: impl Fn(&harmony_agent::service_manager::Notification) -> bool,
) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let log = agent.service_manager.notifications();
        if let Some(i) = log.iter().skip(from).position(&pred) {
            return from + i;
        }
        assert!(tokio::time::Instant::now() < deadline, "no such notification within {within:?}: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
