//! Workloads (issue #15), operator side, against a real nats-server: signed
//! per-device manifests written by compare-and-set to active devices only,
//! content in the object store, `rm`, what devices report, and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{dev, Env};
use harmony_operator::fleet::{Actor, AuditQuery, FleetService, KvFleet, Target, Via};
use harmony_operator::model::keys;
use harmony_operator::provision::{DeviceStatus, DeviceUser};
use harmony_operator::store;
use harmony_operator::workloads::{file, Convergence, Outcome, WorkloadSpec};
use harmony_protocol::signing::verifying_key_from_hex;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::workload::{
    AgentManifest, AgentStatus, Conditions, FileContent, ResourceSpec, ResourceState, MANIFEST_BUCKET,
    WORKLOAD_STATUS_BUCKET,
};
use harmony_protocol::{SignedEnvelope, TrustedKeys};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

fn actor() -> Actor {
    Actor::new("tester", Via::Cli)
}

/// The operator's record of a device, as provisioning or enrollment leaves it.
async fn record(env: &Env, id: &str, status: DeviceStatus, labels: &[(&str, &str)]) {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut user = DeviceUser::provisioned(dev(id), format!("U{id}"), labels);
    user.status = status;
    store::put_json(&env.buckets.state, &keys::device(&dev(id)), &user).await.unwrap();
}

/// A lab of five: three active, one pending, one revoked.
async fn lab(env: &Env) {
    record(env, "pi-1", DeviceStatus::Active, &[("site", "lab")]).await;
    record(env, "pi-2", DeviceStatus::Active, &[("site", "lab")]).await;
    record(env, "pi-3", DeviceStatus::Active, &[("site", "home")]).await;
    record(env, "pi-4", DeviceStatus::Pending, &[("site", "lab")]).await;
    record(env, "pi-5", DeviceStatus::Revoked, &[("site", "lab")]).await;
}

fn write_manifest(dir: &Path, motd: &str) -> PathBuf {
    let path = dir.join("manifest.toml");
    let text = format!(
        "[[resource]]\nid = \"motd\"\nkind = \"file\"\npath = \"/data/workloads/motd\"\nmode = \"0644\"\ncontent = \"{motd}\"\n\
         [[resource]]\nid = \"blob\"\nkind = \"file\"\npath = \"/data/workloads/blob\"\ncontent_file = \"blob.bin\"\n\
         [[resource]]\nid = \"web\"\nkind = \"systemd_unit\"\nname = \"harmony-demo-web.service\"\n\
         content = \"[Service]\\nExecStart=/bin/true\\n\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Larger than what may be inlined, so it goes to the object store.
fn blob() -> Vec<u8> {
    (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect()
}

fn spec(env: &Env, motd: &str) -> WorkloadSpec {
    std::fs::write(env.dir.path().join("blob.bin"), blob()).unwrap();
    file::load(&write_manifest(env.dir.path(), motd)).unwrap()
}

/// The device's manifest, verified as a device verifies it: the fleet's
/// public key file, then the device-side parse.
async fn manifest_of(env: &Env, id: &str) -> Option<AgentManifest> {
    let kv = env.buckets.js.get_key_value(MANIFEST_BUCKET).await.unwrap();
    let bytes = kv.get(id).await.unwrap()?;
    let public = std::fs::read_to_string(harmony_operator::keys::public_path(&env.cfg.keys.signing_key)).unwrap();
    let mut trusted = TrustedKeys::new();
    trusted.insert(verifying_key_from_hex(&public).unwrap());
    let env_ = SignedEnvelope::decode(&bytes).unwrap();
    trusted.verify::<serde::de::IgnoredAny>(&env_).expect("signed with the fleet key");
    Some(AgentManifest::parse(&env_.payload).expect("a device would take it"))
}

fn outcomes(report: &harmony_operator::workloads::ApplyReport) -> Vec<(String, Outcome)> {
    report.devices.iter().map(|d| (d.device.clone(), d.outcome.clone())).collect()
}

fn written(g: u64) -> Outcome {
    Outcome::Written { generation: g }
}

fn failed_with(o: &Outcome, what: &str) -> bool {
    matches!(o, Outcome::Failed { error } if error.contains(what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_writes_signed_manifests_to_active_devices_by_name_selector_and_all() {
    let env = Env::start().await;
    lab(&env).await;
    let fleet = KvFleet::open(&env.cfg).await.unwrap();
    let spec1 = spec(&env, "hello");
    assert_eq!(spec1.objects.len(), 1, "the blob goes to the object store");

    // By name: the active device gets generation 1; a pending, a revoked and
    // an unknown device each fail on their own.
    let names = ["pi-1", "pi-4", "pi-5", "nosuch"].map(String::from).to_vec();
    let report = fleet.apply_workloads(&actor(), &Target::Devices(names), &spec1).await.unwrap();
    let got = outcomes(&report);
    assert_eq!(got[0], ("pi-1".into(), written(1)));
    assert!(failed_with(&got[1].1, "pending"), "{got:?}");
    assert!(failed_with(&got[2].1, "revoked"), "{got:?}");
    assert!(failed_with(&got[3].1, "device nosuch not found"), "{got:?}");
    assert_eq!(report.failed(), 3);
    for id in ["pi-4", "pi-5", "nosuch", "pi-2"] {
        assert!(manifest_of(&env, id).await.is_none(), "{id} got a manifest");
    }
    let m = manifest_of(&env, "pi-1").await.unwrap();
    assert_eq!((m.device_id, m.generation, m.gate_upgrades), (dev("pi-1"), 1, true));
    assert_eq!(m.resources, spec1.resources);

    // The big content is in the object store under its SHA-256.
    let sha = hex::encode(Sha256::digest(blob()));
    match &m.resources[1].spec {
        ResourceSpec::File(f) => {
            assert_eq!(f.content, FileContent::Object { sha256: sha.clone(), size: blob().len() as u64 })
        }
        other => panic!("{other:?}"),
    }
    let objects = env.buckets.workload_objects().await.unwrap();
    let mut stored = Vec::new();
    objects.get(&sha).await.unwrap().read_to_end(&mut stored).await.unwrap();
    assert_eq!(stored, blob());

    // By selector: the operator's labels, active devices only (pi-4 is
    // pending). pi-1 already has exactly this: left alone, not bumped.
    let report = fleet.apply_workloads(&actor(), &Target::Selector("site=lab".into()), &spec1).await.unwrap();
    assert_eq!(
        outcomes(&report),
        vec![("pi-1".into(), Outcome::Unchanged { generation: Some(1) }), ("pi-2".into(), written(1))]
    );

    // A changed manifest to all active devices: each takes its next generation.
    let spec2 = spec(&env, "hello again");
    let report = fleet.apply_workloads(&actor(), &Target::All, &spec2).await.unwrap();
    assert_eq!(
        outcomes(&report),
        vec![("pi-1".into(), written(2)), ("pi-2".into(), written(2)), ("pi-3".into(), written(1))]
    );
    assert_eq!(manifest_of(&env, "pi-3").await.unwrap().device_id, dev("pi-3"), "bound to its device");
    // The upgrade gate is part of what is compared.
    let mut ungated = spec2.clone();
    ungated.gate_upgrades = false;
    let report = fleet.apply_workloads(&actor(), &Target::Devices(vec!["pi-3".into()]), &ungated).await.unwrap();
    assert_eq!(outcomes(&report), vec![("pi-3".into(), written(2))]);
    assert!(!manifest_of(&env, "pi-3").await.unwrap().gate_upgrades);

    // Every device's outcome is audited, failures included.
    let log = fleet.audit(&AuditQuery { offset: 0, limit: 50 }).await.unwrap();
    let rows: Vec<(String, String)> = log
        .entries
        .iter()
        .map(|e| (e.target.clone(), serde_json::to_value(&e.result).unwrap()["outcome"].as_str().unwrap().into()))
        .collect();
    assert_eq!(rows.len(), 10, "{rows:?}");
    assert!(rows.contains(&("pi-4".into(), "failed".into())));
    assert!(rows.contains(&("pi-3".into(), "ok".into())));
    assert!(log.entries.iter().all(|e| serde_json::to_value(e.action).unwrap() == "workload_apply"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_manifest_or_an_empty_selection_writes_nothing() {
    let env = Env::start().await;
    lab(&env).await;
    let fleet = KvFleet::open(&env.cfg).await.unwrap();
    // A manifest a device would refuse is refused before signing or uploading.
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[resource]]\nid = \"u\"\nkind = \"systemd_unit\"\nname = \"../evil.service\"\ncontent = \"\"\n",
    )
    .unwrap();
    let err = file::load(&bad).unwrap_err().to_string();
    assert!(err.contains("evil.service") && err.contains("line 1"), "{err}");
    let mut invalid = spec(&env, "x");
    invalid.resources.push(invalid.resources[0].clone());
    let err = fleet.apply_workloads(&actor(), &Target::All, &invalid).await.unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
    let err = fleet.apply_workloads(&actor(), &Target::Selector("site=mars".into()), &spec(&env, "x")).await;
    assert!(err.unwrap_err().to_string().contains("no devices selected"));
    let manifests = env.buckets.manifests().await.unwrap();
    assert!(store::is_empty(&manifests).await.unwrap(), "something was written");
    let objects = env.buckets.workload_objects().await.unwrap();
    assert!(objects.info(hex::encode(Sha256::digest(blob()))).await.is_err(), "an object was uploaded");
    // Both refusals are in the audit log.
    let log = fleet.audit(&AuditQuery::default()).await.unwrap();
    let targets: Vec<&str> = log.entries.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["selector site=mars", "all devices"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_writes_an_empty_manifest_at_the_next_generation() {
    let env = Env::start().await;
    lab(&env).await;
    let fleet = KvFleet::open(&env.cfg).await.unwrap();
    let pi1 = Target::Devices(vec!["pi-1".into()]);
    fleet.apply_workloads(&actor(), &pi1, &spec(&env, "x")).await.unwrap();
    fleet.apply_workloads(&actor(), &pi1, &spec(&env, "y")).await.unwrap();
    let report = fleet.remove_workloads(&actor(), &Target::Devices(vec!["pi-1".into(), "pi-2".into()])).await.unwrap();
    assert_eq!(
        outcomes(&report),
        vec![("pi-1".into(), written(3)), ("pi-2".into(), Outcome::Unchanged { generation: None })]
    );
    let m = manifest_of(&env, "pi-1").await.unwrap();
    assert_eq!((m.generation, m.resources.len()), (3, 0));
    assert!(manifest_of(&env, "pi-2").await.is_none(), "a device that never had workloads gets no key");
    let again = fleet.remove_workloads(&actor(), &pi1).await.unwrap();
    assert_eq!(outcomes(&again), vec![("pi-1".into(), Outcome::Unchanged { generation: Some(3) })]);
    let log = fleet.audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(serde_json::to_value(log.entries[0].action).unwrap(), "workload_remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_never_write_one_generation_twice() {
    let env = Env::start().await;
    lab(&env).await;
    const WRITERS: u64 = 8;
    let specs: Vec<WorkloadSpec> = (0..WRITERS).map(|i| spec(&env, &format!("writer {i}"))).collect();
    // Each writer its own connection, like operators on two machines, all
    // released at once.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|s| {
            let (cfg, start) = (env.cfg.clone(), start.clone());
            tokio::spawn(async move {
                let fleet = KvFleet::open(&cfg).await.unwrap();
                fleet.workloads(None).await.unwrap();
                start.wait().await;
                fleet.apply_workloads(&actor(), &Target::Devices(vec!["pi-1".into()]), &s).await.unwrap()
            })
        })
        .collect();
    let mut generations = Vec::new();
    for t in tasks {
        match &t.await.unwrap().devices[0].outcome {
            Outcome::Written { generation } => generations.push(*generation),
            other => panic!("{other:?}"),
        }
    }
    generations.sort_unstable();
    assert_eq!(generations, (1..=WRITERS).collect::<Vec<_>>());
    assert_eq!(manifest_of(&env, "pi-1").await.unwrap().generation, WRITERS);
}

fn status(id: &str, observed: Option<u64>, boot: &str, converged: bool) -> AgentStatus {
    AgentStatus {
        schema: 1,
        device_id: dev(id),
        observed_generation: observed,
        boot_id: boot.into(),
        resources: BTreeMap::from([
            ("motd".to_string(), ResourceState::Ready { since: UnixMillis(1), details: "written".into() }),
            (
                "web".to_string(),
                ResourceState::Failed {
                    since: UnixMillis(2),
                    error: "unit failed\n\u{1b}[31mred".into(),
                    attempts: 3,
                    retry_after: UnixMillis(u64::MAX / 2),
                },
            ),
        ]),
        conditions: Conditions { converged, refused: None },
        updated_at: UnixMillis(3),
    }
}

async fn report_status(env: &Env, s: &AgentStatus) {
    let kv = env.buckets.js.get_key_value(WORKLOAD_STATUS_BUCKET).await.unwrap();
    kv.put(s.device_id.as_str(), serde_json::to_vec(s).unwrap().into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_desired_beside_what_devices_report() {
    let env = Env::start().await;
    lab(&env).await;
    env.devices(&["pi-1"], common::sim::Behavior::Manual).await;
    let fleet = KvFleet::open(&env.cfg).await.unwrap();
    // pi-3 reports generation 7 (its manifest history was lost): numbering
    // continues above it, or the device would ignore what it is given.
    report_status(&env, &status("pi-3", Some(7), "b3", true)).await;
    let all = Target::Devices(["pi-1", "pi-2", "pi-3"].map(String::from).to_vec());
    let report = fleet.apply_workloads(&actor(), &all, &spec(&env, "x")).await.unwrap();
    assert_eq!(outcomes(&report)[2], ("pi-3".into(), written(8)));
    report_status(&env, &status("pi-1", Some(1), "pi-1-boot-0", false)).await;
    report_status(&env, &status("pi-2", None, "b2", false)).await;
    // A status that names another device than its key is not believed.
    let kv = env.buckets.js.get_key_value(WORKLOAD_STATUS_BUCKET).await.unwrap();
    kv.put("pi-5", serde_json::to_vec(&status("pi-1", Some(9), "x", true)).unwrap().into()).await.unwrap();

    let views = fleet.workloads(None).await.unwrap();
    let convergence: Vec<(&str, Convergence)> = views.iter().map(|w| (w.device_id.as_str(), w.convergence)).collect();
    assert_eq!(
        convergence,
        [
            ("pi-1", Convergence::Converging),
            ("pi-2", Convergence::Behind),
            ("pi-3", Convergence::Behind),
            ("pi-5", Convergence::Unreported)
        ]
    );
    assert_eq!(views[0].current_boot, Some(true), "pi-1's status is of its heartbeat's boot");
    assert!(views[3].status_error.as_deref().unwrap().contains("names device pi-1"));
    report_status(&env, &status("pi-3", Some(8), "b3", true)).await;
    assert_eq!(fleet.workloads(Some(&dev("pi-3"))).await.unwrap()[0].convergence, Convergence::Converged);

    // The CLI's table and one device's resources.
    let table = harmony_operator::workloads::cli::status(&env.cfg, None).await.unwrap().text;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("DEVICE") && lines[0].contains("CONVERGED"), "{table}");
    assert!(lines[1].starts_with("pi-1") && lines[1].contains("1 failed, 1 ready"), "{table}");
    assert!(lines[2].starts_with("pi-2") && lines[2].contains("behind"), "{table}");
    assert!(lines[3].starts_with("pi-3") && lines[3].contains("yes"), "{table}");
    let one = harmony_operator::workloads::cli::status(&env.cfg, Some("pi-1")).await.unwrap().text;
    assert!(one.contains("desired 1  observed 1"), "{one}");
    let web = one.lines().find(|l| l.starts_with("web")).unwrap();
    assert!(web.contains("systemd_unit") && web.contains("failed") && web.contains("attempt 3"), "{one}");
    assert!(!one.contains('\u{1b}'), "a device's terminal escapes reach the terminal: {one}");
    assert!(one.lines().any(|l| l.starts_with("blob") && l.contains("unreported")), "{one}");

    // `devices show` has the same section.
    let shown = harmony_operator::commands::devices_show(&env.cfg, "pi-1").await.unwrap().json;
    assert_eq!(shown["workloads"]["desired"]["generation"], 1);
    assert_eq!(shown["workloads"]["status"]["observed_generation"], 1);
    assert_eq!(shown["workloads"]["convergence"], "converging");
    assert_eq!(shown["workloads"]["status"]["resources"]["web"]["state"], "failed");
}

/// The binary: exit status and output people and scripts rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_reports_each_device_and_fails_if_any_did() {
    let env = Env::start().await;
    lab(&env).await;
    let cfg = env.dir.path().join("operator.toml");
    std::fs::write(&cfg, toml::to_string(&env.cfg).unwrap()).unwrap();
    let manifest = write_manifest(env.dir.path(), "hi");
    std::fs::write(env.dir.path().join("blob.bin"), blob()).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_harmony-operator"))
            .env("HARMONY_LOG", "warn")
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let m = manifest.to_str().unwrap();
    let out = run(&["workloads", "apply", "-f", m, "--devices", "pi-1,pi-4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a failed device must fail the command");
    assert!(stdout.contains("pi-1: generation 1 written"), "{stdout}");
    assert!(stdout.contains("pi-4: FAILED") && stdout.contains("pending"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 device(s) failed"), "{out:?}");

    let out = run(&["--json", "workloads", "apply", "-f", m, "--selector", "site=lab"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["devices"][0], serde_json::json!({"device": "pi-1", "outcome": "unchanged", "generation": 1}));
    assert_eq!(json["devices"][1], serde_json::json!({"device": "pi-2", "outcome": "written", "generation": 1}));

    let out = run(&["workloads", "rm", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("pi-1: generation 2 written") && stdout.contains("pi-3: unchanged (no workloads)"));
    let out = run(&["workloads", "status"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("unreported"), "{out:?}");
    let out = run(&["workloads", "apply", "-f", "/nonexistent.toml", "--all"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nonexistent.toml"));
    // Exactly one of --devices, --selector, --all.
    assert!(!run(&["workloads", "rm"]).status.success());
    assert!(!run(&["workloads", "rm", "--all", "--devices", "pi-1"]).status.success());
}
