//! Shared setup for the upgrade integration tests: a real nats-server with
//! the buckets the operator creates, a real `rauc service` on a private
//! D-Bus (slots A/B as image files, U-Boot-like test boot backend), RAUC
//! bundles built with `rauc bundle` and a test CA made by openssl, a fleet
//! signing key, and the real agent loop with a recording reboot.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use async_nats::jetstream;
use ed25519_dalek::SigningKey;
use harmony_agent::clock::{Clock, SystemClock};
use harmony_agent::reboot::RecordingReboot;
use harmony_agent::service_manager::RecordingServiceManager;
use harmony_agent::{AgentConfig, Effects};
use harmony_protocol::command::{Command, CommandReply};
use harmony_protocol::names::{BUNDLE_OBJECT_BUCKET, HEARTBEAT_BUCKET, OFFER_BUCKET};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{BundleSource, DeviceId, Heartbeat, SignedEnvelope, UpgradeOffer};
use harmony_testkit::rauc::{RaucService, TEST_COMPATIBLE};
use harmony_testkit::rauc_bundle::{build_bundle, TestCa};
use harmony_testkit::NatsServer;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod range_server;
pub mod tmpfs;

pub const DEVICE: &str = "pi-upgrade-01";

/// Test CAs are made once per test binary run (openssl RSA keygen is slow).
pub fn trusted_ca() -> &'static TestCa {
    static CA: OnceLock<(tempfile::TempDir, TestCa)> = OnceLock::new();
    &CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::create(dir.path());
        (dir, ca)
    })
    .1
}

pub fn untrusted_ca() -> &'static TestCa {
    static CA: OnceLock<(tempfile::TempDir, TestCa)> = OnceLock::new();
    &CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::create(dir.path());
        (dir, ca)
    })
    .1
}

pub fn fleet_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

pub fn now() -> UnixMillis {
    UnixMillis(
        u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap(),
    )
}

/// A built bundle and what an offer needs to know about it.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub version: String,
    pub payload: Vec<u8>,
}

pub fn bundle(ca: &TestCa, dir: &Path, name: &str, version: &str, payload_len: usize) -> Bundle {
    // Incompressible (a simple LCG), so the bundle is as big as the payload.
    let mut x: u32 = 0x2545_f491 ^ version.len() as u32;
    let payload: Vec<u8> = (0..payload_len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    let path = build_bundle(ca, dir, name, TEST_COMPATIBLE, version, "plain", &payload);
    let bytes = std::fs::read(&path).unwrap();
    Bundle {
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        path,
        version: version.into(),
        payload,
    }
}

/// Everything one test device needs.
pub struct Rig {
    pub nats: NatsServer,
    pub rauc: RaucService,
    pub dir: tempfile::TempDir,
    pub client: async_nats::Client,
    pub heartbeats: jetstream::kv::Store,
    pub offers: jetstream::kv::Store,
    pub bundles: jetstream::object_store::ObjectStore,
    pub reboot: Arc<RecordingReboot>,
    pub extra_upgrade_config: String,
    /// Device nkey seed file, when the server requires authentication.
    pub nkey_seed_file: Option<PathBuf>,
}

impl Rig {
    pub async fn start() -> Self {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        Self::start_with(nats, client).await
    }

    /// With a given server and an admin client that may create buckets.
    pub async fn start_with(nats: NatsServer, client: async_nats::Client) -> Self {
        let rauc = RaucService::start(trusted_ca());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("os-release"), "NAME=Harmony\nVERSION_ID=\"1.0.0\"\n").unwrap();
        std::fs::write(dir.path().join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::create_dir_all(dir.path().join("fleet-keys")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::create_dir_all(dir.path().join("health.d")).unwrap();
        std::fs::create_dir_all(dir.path().join("bundles")).unwrap();
        std::fs::write(dir.path().join("fleet-keys/fleet.pub"), hex::encode(fleet_key().verifying_key().to_bytes()))
            .unwrap();
        std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
        let js = jetstream::new(client.clone());
        let heartbeats = js
            .create_key_value(jetstream::kv::Config {
                bucket: HEARTBEAT_BUCKET.into(),
                history: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let offers = js
            .create_key_value(jetstream::kv::Config { bucket: OFFER_BUCKET.into(), history: 1, ..Default::default() })
            .await
            .unwrap();
        let bundles = js
            .create_object_store(jetstream::object_store::Config {
                bucket: BUNDLE_OBJECT_BUCKET.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        Self {
            nats,
            rauc,
            dir,
            client,
            heartbeats,
            offers,
            bundles,
            reboot: Arc::new(RecordingReboot::default()),
            extra_upgrade_config: String::new(),
            nkey_seed_file: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn new_boot(&self, boot_id: &str) {
        std::fs::write(self.path("boot_id"), format!("{boot_id}\n")).unwrap();
    }

    pub fn set_os_version(&self, version: &str) {
        std::fs::write(self.path("os-release"), format!("NAME=Harmony\nVERSION_ID=\"{version}\"\n")).unwrap();
    }

    pub fn config(&self, commit_deadline_secs: u64) -> AgentConfig {
        AgentConfig::parse(&self.config_text(commit_deadline_secs), Path::new("upgrade-test.toml"))
            .expect("test config")
    }

    /// The agent's config file text (for running the agent binary).
    pub fn config_text(&self, commit_deadline_secs: u64) -> String {
        format!(
            r#"
device_id = "{DEVICE}"
heartbeat_interval_secs = 1
state_dir = "{state}"
fleet_keys_dir = "{keys}"
startup_grace_secs = 3
[nats]
urls = ["{url}"]
request_timeout_secs = 2
{nkey}
[rauc]
dbus_address = "{bus}"
[system]
os_release = "{osr}"
boot_id = "{boot}"
machine_id = "{mid}"
nbd = ["{nbd}"]
[upgrade]
commit_deadline_secs = {commit_deadline_secs}
max_bundle_bytes = 67108864
health_checks_dir = "{health}"
health_check_timeout_secs = 5
reboot_delay_ms = 200
progress_interval_ms = 100
{extra}
"#,
            state = self.path("state").display(),
            keys = self.path("fleet-keys").display(),
            url = self.nats.url(),
            bus = self.rauc.address(),
            osr = self.path("os-release").display(),
            boot = self.path("boot_id").display(),
            mid = self.path("machine-id").display(),
            // The host has no NBD: a test that streams creates this file.
            nbd = self.path("nbd0").display(),
            health = self.path("health.d").display(),
            extra = self.extra_upgrade_config,
            nkey = self
                .nkey_seed_file
                .as_ref()
                .map(|p| format!("nkey_seed_file = \"{}\"", p.display()))
                .unwrap_or_default(),
        )
    }

    pub fn start_agent(&self, commit_deadline_secs: u64) -> RunningAgent {
        self.start_agent_with_clock(commit_deadline_secs, Arc::new(SystemClock))
    }

    /// With a clock the test steps (wall clock and boottime independently).
    pub fn start_agent_with_clock(&self, commit_deadline_secs: u64, clock: Arc<dyn Clock>) -> RunningAgent {
        self.start_agent_with(commit_deadline_secs, clock, Arc::new(RecordingServiceManager::default()))
    }

    /// With a given clock and a service manager the test reads (e.g. one
    /// with a watchdog, to see the pings).
    pub fn start_agent_with(
        &self,
        commit_deadline_secs: u64,
        clock: Arc<dyn Clock>,
        service_manager: Arc<RecordingServiceManager>,
    ) -> RunningAgent {
        let mut effects = Effects::real();
        effects.service_manager = service_manager;
        effects.reboot = self.reboot.clone();
        effects.clock = clock;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(harmony_agent::run(self.config(commit_deadline_secs), effects, async move {
            let _ = stopped.await;
        }));
        RunningAgent { stop: Some(stop), task }
    }

    pub async fn push_bundle(&self, name: &str, bundle: &Bundle) {
        let mut f = tokio::fs::File::open(&bundle.path).await.unwrap();
        self.bundles.put(name, &mut f).await.unwrap();
    }

    pub fn offer(&self, seq: u64, object: &str, bundle: &Bundle) -> UpgradeOffer {
        UpgradeOffer {
            schema: 1,
            offer_seq: seq,
            device_id: DeviceId::new(DEVICE).unwrap(),
            rollout_id: Some("rollout-1".into()),
            target_version: bundle.version.clone(),
            compatible: TEST_COMPATIBLE.into(),
            bundle: BundleSource {
                object: Some(object.into()),
                url: None,
                sha256: bundle.sha256.clone(),
                size: bundle.size,
                authorization: None,
                signature_sha256: None,
            },
            not_before: UnixMillis(now().0 - 60_000),
            expires_at: UnixMillis(now().0 + 3_600_000),
            allow_downgrade: false,
        }
    }

    pub async fn send_offer(&self, offer: &UpgradeOffer) {
        self.send_envelope(&SignedEnvelope::sign(&fleet_key(), offer).unwrap()).await;
    }

    pub async fn send_envelope(&self, env: &SignedEnvelope) {
        self.offers.put(DEVICE, env.encode().into()).await.unwrap();
    }

    pub async fn heartbeat(&self) -> Option<Heartbeat> {
        let bytes = self.heartbeats.get(DEVICE).await.ok()??;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// Wait until the heartbeat satisfies `pred`; panics with the last one seen.
    pub async fn wait_heartbeat(&self, within: Duration, pred: impl Fn(&Heartbeat) -> bool) -> Heartbeat {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(hb) = self.heartbeat().await {
                if pred(&hb) {
                    return hb;
                }
                last = Some(hb);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no matching heartbeat within {within:?}; last: {:?}\nrauc log:\n{}",
                last.map(|h| h.upgrade),
                self.rauc.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_phase(&self, within: Duration, phase: &str) -> Heartbeat {
        self.wait_heartbeat(within, |hb| hb.upgrade.phase.name() == phase).await
    }

    pub async fn command(&self, command: Command) -> CommandReply {
        let subject = harmony_protocol::names::command_subject(&DeviceId::new(DEVICE).unwrap());
        let msg = tokio::time::timeout(Duration::from_secs(20), self.client.request(subject, command.encode().into()))
            .await
            .expect("command reply in time")
            .expect("command reply");
        CommandReply::decode(&msg.payload).unwrap()
    }

    /// `boot_status` of the slot with this bootname, from `rauc status` (JSON).
    pub fn rauc_boot_status(&self, bootname: &str) -> String {
        let status: serde_json::Value = serde_json::from_str(&self.rauc.status_json()).unwrap();
        for entry in status["slots"].as_array().unwrap() {
            for slot in entry.as_object().unwrap().values() {
                if slot["bootname"] == bootname {
                    return slot["boot_status"].as_str().unwrap_or_default().to_string();
                }
            }
        }
        panic!("no slot {bootname} in {status}")
    }

    /// The first heartbeat written after this call whose boot id is
    /// `boot_id`: every write is seen (a KV watch, not polling), so a
    /// placeholder sent before the real status cannot be missed.
    pub async fn first_heartbeat_of_boot(
        &self,
        within: Duration,
        boot_id: &str,
    ) -> impl std::future::Future<Output = Heartbeat> + '_ {
        use futures::StreamExt;
        let mut updates = self.heartbeats.watch(DEVICE).await.unwrap();
        let boot_id = boot_id.to_string();
        async move {
            let first = async {
                while let Some(entry) = updates.next().await {
                    let entry = entry.unwrap();
                    if entry.operation != jetstream::kv::Operation::Put {
                        continue;
                    }
                    let hb: Heartbeat = serde_json::from_slice(&entry.value).unwrap();
                    if hb.boot_id == boot_id {
                        return hb;
                    }
                }
                panic!("heartbeat watch ended");
            };
            tokio::time::timeout(within, first).await.expect("a heartbeat of the new boot in time")
        }
    }

    /// Forget the last heartbeat, so the next one seen is a fresh one (a
    /// definite point after a restart).
    pub async fn forget_heartbeat(&self) {
        self.heartbeats.purge(DEVICE).await.unwrap();
    }

    /// Temp files (`*.tmp`, `*.part`) anywhere under the state directory.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "tmp" || x == "part") {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path("state"), &mut out);
        out
    }

    /// Files left in the agent's download directory.
    pub fn download_files(&self) -> Vec<String> {
        std::fs::read_dir(self.path("state/download"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), harmony_agent::AgentError>>,
}

impl RunningAgent {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await.expect("agent stops within 10 s");
        r.expect("agent task did not panic").expect("agent ran without error");
    }

    /// Like a power cut: no orderly shutdown.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Offer `b` as `seq` and wait until the agent installed it into B and asked
/// to reboot; then "reboot" (RAUC restarted from the slot the boot backend
/// picks, new boot id, os-release of the new version). Returns the agent
/// stopped; the caller starts it again in the new boot.
pub async fn install_into_b_and_reboot(rig: &mut Rig, agent: RunningAgent, seq: u64, b: &Bundle, boot_id: &str) {
    rig.send_offer(&rig.offer(seq, "v2.raucb", b)).await;
    let hb = rig.wait_phase(Duration::from_secs(60), "rebooting").await;
    assert_eq!(hb.upgrade.target_slot.as_deref(), Some("B"));
    agent.stop().await;
    assert_eq!(rig.rauc.reboot(), "B", "the boot backend picks the new slot");
    rig.new_boot(boot_id);
    rig.set_os_version(&b.version);
}
