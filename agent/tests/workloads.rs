//! The real agent loop applying workload manifests from a real nats-server:
//! convergence, drift correction, deletion, refusals that change nothing,
//! and re-application from /data after a restart without NATS.
//!
//! Files are reconciled for real (a temp root); systemd units by a fake
//! that keeps its "units" in memory (the real unit reconciler runs against
//! real systemd in the QEMU suite, qemu-tests/workloads.py).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{FakeDevice, RunningAgent, DEVICE};
use ed25519_dalek::SigningKey;
use futures::future::BoxFuture;
use harmony_agent::config::AgentConfig;
use harmony_agent::workload::effects::WorkloadEffects;
use harmony_agent::workload::file::FileReconciler;
use harmony_agent::workload::objects::{NatsObjects, ObjectCache};
use harmony_agent::workload::reconciler::{Observed, Reconciler, Reconcilers};
use harmony_agent::Effects;
use harmony_protocol::workload::{
    AgentManifest, AgentStatus, ContainerSpec, FileContent, FileSpec, ManifestRefusal, Resource, ResourceSpec,
    ResourceState, SpecProblem, UnitSpec, MANIFEST_BUCKET, WORKLOAD_STATUS_BUCKET,
};
use harmony_protocol::{DeviceId, SignedEnvelope};
use harmony_testkit::NatsServer;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which refusal a case expects.
type IsReason = Box<dyn Fn(&ManifestRefusal) -> bool>;

/// Units as the fake systemd holds them: name → (content, active).
type Units = Arc<Mutex<BTreeMap<String, (String, bool)>>>;

#[derive(Debug, Default)]
struct FakeUnits {
    units: Units,
}

impl Reconciler for FakeUnits {
    type Spec = UnitSpec;
    fn observe<'a>(&'a self, _: &'a str, spec: &'a UnitSpec) -> BoxFuture<'a, Result<Observed, String>> {
        Box::pin(async move {
            match self.units.lock().unwrap().get(&spec.name) {
                Some((content, active)) if *content == spec.content && *active == spec.active => {
                    Ok(Observed::InSync { details: "fake".into() })
                }
                _ => Ok(Observed::Drifted { what: format!("{} differs", spec.name) }),
            }
        })
    }
    fn reconcile<'a>(&'a self, _: &'a str, spec: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if spec.content.contains("ExecStart=/bin/false") {
                return Err(format!("{} failed to start", spec.name));
            }
            self.units.lock().unwrap().insert(spec.name.clone(), (spec.content.clone(), spec.active));
            Ok(())
        })
    }
    fn delete<'a>(&'a self, _: &'a str, spec: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.units.lock().unwrap().remove(&spec.name);
            Ok(())
        })
    }
}

#[derive(Debug)]
struct NoContainers;
impl Reconciler for NoContainers {
    type Spec = ContainerSpec;
    fn observe<'a>(&'a self, _: &'a str, _: &'a ContainerSpec) -> BoxFuture<'a, Result<Observed, String>> {
        Box::pin(async { Err("no containers in this test".to_string()) })
    }
    fn reconcile<'a>(&'a self, _: &'a str, _: &'a ContainerSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Err("no containers in this test".to_string()) })
    }
    fn delete<'a>(&'a self, _: &'a str, _: &'a ContainerSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug)]
struct TestWorkloads {
    units: Units,
}

impl WorkloadEffects for TestWorkloads {
    fn build(&self, cfg: &AgentConfig, client: &async_nats::Client) -> (Reconcilers, Option<Arc<ObjectCache>>) {
        let objects = Arc::new(ObjectCache::new(
            cfg.state_dir.join("workloads/objects"),
            Box::new(NatsObjects { js: async_nats::jetstream::new(client.clone()) }),
        ));
        let r = Reconcilers {
            file: Arc::new(FileReconciler {
                roots: cfg.workloads.file_roots.clone(),
                objects: objects.clone(),
                passwd_file: "/etc/passwd".into(),
                group_file: "/etc/group".into(),
            }),
            unit: Arc::new(FakeUnits { units: self.units.clone() }),
            container: Arc::new(NoContainers),
        };
        (r, Some(objects))
    }
}

struct Fixture {
    nats: NatsServer,
    device: FakeDevice,
    key: SigningKey,
    manifests: async_nats::jetstream::kv::Store,
    status: async_nats::jetstream::kv::Store,
    units: Units,
}

impl Fixture {
    async fn new() -> Self {
        let nats = NatsServer::start();
        let device = FakeDevice::new();
        let key = SigningKey::from_bytes(&[7; 32]);
        std::fs::write(device.path("fleet-keys/fleet.pub"), hex::encode(key.verifying_key().as_bytes())).unwrap();
        let client = common::client(&nats).await;
        let js = async_nats::jetstream::new(client);
        let kv = |bucket: &str| async_nats::jetstream::kv::Config {
            bucket: bucket.into(),
            history: 5,
            ..Default::default()
        };
        let manifests = js.create_key_value(kv(MANIFEST_BUCKET)).await.unwrap();
        let status = js.create_key_value(kv(WORKLOAD_STATUS_BUCKET)).await.unwrap();
        Self { nats, device, key, manifests, status, units: Units::default() }
    }

    fn root(&self) -> std::path::PathBuf {
        self.device.path("workloads")
    }

    fn config(&self, nats_url: &str) -> AgentConfig {
        let mut cfg = self.device.config(nats_url, 1);
        cfg.workloads.file_roots = vec![self.root()];
        cfg.workloads.drift_interval_secs = 1;
        cfg.workloads.retry_initial_secs = 1;
        cfg.workloads.retry_max_secs = 2;
        cfg
    }

    fn start(&self, nats_url: &str) -> RunningAgent {
        let effects = Effects { workloads: Arc::new(TestWorkloads { units: self.units.clone() }), ..Effects::real() };
        RunningAgent::start_with(self.config(nats_url), effects)
    }

    fn file(&self, name: &str, text: &str) -> ResourceSpec {
        ResourceSpec::File(FileSpec {
            path: self.root().join(name).to_string_lossy().into_owned(),
            mode: 0o644,
            owner: None,
            group: None,
            content: FileContent::Inline(text.into()),
        })
    }

    fn manifest(&self, generation: u64, resources: Vec<(&str, ResourceSpec)>) -> AgentManifest {
        AgentManifest {
            schema: 1,
            device_id: DeviceId::new(DEVICE).unwrap(),
            generation,
            issued_at: harmony_protocol::time::UnixMillis(0),
            gate_upgrades: true,
            resources: resources.into_iter().map(|(id, spec)| Resource { id: id.into(), spec }).collect(),
        }
    }

    async fn put(&self, m: &AgentManifest) {
        self.put_raw(SignedEnvelope::sign(&self.key, m).unwrap().encode()).await;
    }

    async fn put_raw(&self, bytes: Vec<u8>) {
        self.manifests.put(DEVICE, bytes.into()).await.unwrap();
    }

    async fn wait_status(&self, what: &str, pred: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last = None;
        loop {
            if let Ok(Some(bytes)) = self.status.get(DEVICE).await {
                let s: AgentStatus = serde_json::from_slice(&bytes).unwrap();
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            assert!(tokio::time::Instant::now() < deadline, "status never showed {what}; last: {last:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn unit(name: &str, exec: &str) -> ResourceSpec {
    ResourceSpec::SystemdUnit(UnitSpec {
        name: name.into(),
        content: format!("[Service]\nExecStart={exec}\n"),
        enabled: true,
        active: true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_corrects_drift_and_deletes_what_leaves_the_manifest() {
    let f = Fixture::new().await;
    let agent = f.start(&f.nats.url());
    f.put(&f.manifest(1, vec![("motd", f.file("etc/motd", "hello\n")), ("web", unit("web.service", "/bin/web"))]))
        .await;
    let s =
        f.wait_status("generation 1 converged", |s| s.observed_generation == Some(1) && s.conditions.converged).await;
    assert_eq!(s.boot_id, "boot-1");
    assert!(matches!(s.resources["motd"], ResourceState::Ready { .. }));
    let motd = f.root().join("etc/motd");
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello\n");
    assert!(f.units.lock().unwrap().contains_key("web.service"));
    let ResourceState::Ready { since: first_ready, .. } = s.resources["motd"] else { unreachable!() };

    // A person edits the file and stops the unit; the drift pass puts both back.
    std::fs::write(&motd, "defaced\n").unwrap();
    f.units.lock().unwrap().get_mut("web.service").unwrap().1 = false;
    f.wait_status(
        "the file repaired",
        |s| matches!(s.resources.get("motd"), Some(ResourceState::Ready { since, .. }) if *since > first_ready),
    )
    .await;
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello\n");
    assert!(f.units.lock().unwrap()["web.service"].1, "unit started again");

    // Removed from the manifest: deleted from the device.
    f.put(&f.manifest(2, vec![("web", unit("web.service", "/bin/web"))])).await;
    let s =
        f.wait_status("generation 2 converged", |s| s.observed_generation == Some(2) && s.conditions.converged).await;
    assert!(!s.resources.contains_key("motd"));
    assert!(!motd.exists());
    f.put(&f.manifest(3, vec![])).await;
    f.wait_status("generation 3 converged", |s| s.observed_generation == Some(3) && s.conditions.converged).await;
    assert!(f.units.lock().unwrap().is_empty());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_manifests_change_nothing_and_say_why() {
    let f = Fixture::new().await;
    let agent = f.start(&f.nats.url());
    f.put(&f.manifest(5, vec![("motd", f.file("motd", "v5\n"))])).await;
    f.wait_status("generation 5", |s| s.observed_generation == Some(5) && s.conditions.converged).await;
    let motd = f.root().join("motd");

    let stranger = SigningKey::from_bytes(&[9; 32]);
    let forged = SignedEnvelope::sign(&stranger, &f.manifest(6, vec![("motd", f.file("motd", "forged\n"))])).unwrap();
    let mut tampered = SignedEnvelope::sign(&f.key, &f.manifest(6, vec![("motd", f.file("motd", "x\n"))])).unwrap();
    tampered.payload = tampered.payload.replace("x\\n", "y\\n");
    let mut other = f.manifest(6, vec![]);
    other.device_id = DeviceId::new("pi-other").unwrap();
    let unknown_kind = {
        let mut v = serde_json::to_value(f.manifest(6, vec![])).unwrap();
        v["resources"] = serde_json::json!([{"id": "vm", "kind": "virtual_machine", "image": "x"}]);
        let payload = v.to_string();
        // Signed as the operator would sign a manifest of a newer kind.
        let env = SignedEnvelope::sign(&f.key, &v).unwrap();
        assert_eq!(env.payload, payload);
        env
    };
    let outside = f.manifest(6, vec![("x", f.file("../escape", "x"))]);
    let elsewhere = {
        let mut m = f.manifest(6, vec![]);
        m.resources.push(Resource {
            id: "shadow".into(),
            spec: ResourceSpec::File(FileSpec {
                path: "/etc/shadow".into(),
                mode: 0o600,
                owner: None,
                group: None,
                content: FileContent::Inline("root::0:0:::::\n".into()),
            }),
        });
        m
    };
    let cases: Vec<(Vec<u8>, &str, IsReason)> = vec![
        (b"not json".to_vec(), "malformed", Box::new(|r| matches!(r, ManifestRefusal::Malformed { .. }))),
        (forged.encode(), "unknown key", Box::new(|r| matches!(r, ManifestRefusal::UnknownKey { .. }))),
        (tampered.encode(), "bad signature", Box::new(|r| *r == ManifestRefusal::BadSignature)),
        (
            SignedEnvelope::sign(&f.key, &other).unwrap().encode(),
            "wrong device",
            Box::new(|r| matches!(r, ManifestRefusal::WrongDevice { .. })),
        ),
        (
            unknown_kind.encode(),
            "unknown kind",
            Box::new(|r| *r == ManifestRefusal::UnknownResource { id: "vm".into(), kind: "virtual_machine".into() }),
        ),
        (
            SignedEnvelope::sign(&f.key, &outside).unwrap().encode(),
            "path traversal",
            Box::new(|r| matches!(r, ManifestRefusal::Invalid { problem: SpecProblem::BadPath { .. }, .. })),
        ),
        (
            SignedEnvelope::sign(&f.key, &elsewhere).unwrap().encode(),
            "outside the roots",
            Box::new(|r| matches!(r, ManifestRefusal::Invalid { problem: SpecProblem::OutsideRoots { .. }, .. })),
        ),
        (
            SignedEnvelope::sign(&f.key, &f.manifest(4, vec![])).unwrap().encode(),
            "stale generation",
            Box::new(|r| *r == ManifestRefusal::StaleGeneration { applied: 5, got: 4 }),
        ),
    ];
    for (bytes, what, is_reason) in cases {
        f.put_raw(bytes).await;
        let s = f.wait_status(what, |s| s.conditions.refused.as_ref().is_some_and(|r| is_reason(&r.reason))).await;
        assert_eq!(s.observed_generation, Some(5), "{what}: still applying generation 5");
        assert!(matches!(s.resources["motd"], ResourceState::Ready { .. }), "{what}");
        assert_eq!(std::fs::read_to_string(&motd).unwrap(), "v5\n", "{what}: nothing changed");
    }
    assert!(!f.device.path("escape").exists());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_resource_is_retried_and_the_rest_still_applies() {
    let f = Fixture::new().await;
    let agent = f.start(&f.nats.url());
    f.put(&f.manifest(1, vec![("bad", unit("bad.service", "/bin/false")), ("motd", f.file("motd", "ok\n"))])).await;
    let s = f
        .wait_status(
            "a retried failure",
            // The status of the start (no manifest yet) has no resources.
            |s| matches!(s.resources.get("bad"), Some(ResourceState::Failed { attempts, .. }) if *attempts >= 2),
        )
        .await;
    assert!(!s.conditions.converged);
    assert!(matches!(s.resources["motd"], ResourceState::Ready { .. }), "{s:#?}");
    let ResourceState::Failed { error, .. } = &s.resources["bad"] else { unreachable!() };
    assert!(error.contains("failed to start"), "{error}");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_without_nats_the_saved_manifest_is_applied_again() {
    let mut f = Fixture::new().await;
    let url = f.nats.url();
    let agent = f.start(&url);
    f.put(&f.manifest(1, vec![("motd", f.file("motd", "persisted\n"))])).await;
    f.wait_status("generation 1", |s| s.observed_generation == Some(1) && s.conditions.converged).await;
    agent.stop().await.unwrap();
    // A new slot: the managed file is gone (say it lived on the old root)
    // and the network is down.
    let motd = f.root().join("motd");
    std::fs::remove_file(&motd).unwrap();
    f.nats.kill();
    let agent = f.start(&url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !motd.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the saved manifest was not applied without NATS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "persisted\n");
    // A saved manifest edited on the card no longer verifies: not obeyed.
    agent.stop().await.unwrap();
    let saved = f.device.path("state/workloads/manifest.json");
    let text = std::fs::read_to_string(&saved).unwrap().replace("persisted", "tampered!");
    std::fs::write(&saved, text).unwrap();
    std::fs::remove_file(&motd).unwrap();
    // NATS back, without the manifest, so only the saved copy could apply.
    f.nats.restart();
    f.manifests =
        async_nats::jetstream::new(common::client(&f.nats).await).get_key_value(MANIFEST_BUCKET).await.unwrap();
    f.status =
        async_nats::jetstream::new(common::client(&f.nats).await).get_key_value(WORKLOAD_STATUS_BUCKET).await.unwrap();
    f.manifests.purge(DEVICE).await.unwrap();
    f.status.purge(DEVICE).await.unwrap();
    let agent = f.start(&url);
    // The status of the first pass is the point where it would have acted.
    let s = f.wait_status("the first pass after the restart", |s| s.boot_id == "boot-1").await;
    assert_eq!(s.observed_generation, None, "the tampered manifest is not the applied one");
    assert!(!motd.exists(), "a tampered saved manifest was applied");
    agent.stop().await.unwrap();
}
