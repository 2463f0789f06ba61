//! The `harmony-operator` binary end to end against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use harmony_testkit::rauc_bundle::{build_bundle, TestCa};
use harmony_testkit::NatsServer;
use std::path::Path;
use std::process::{Command, Output};

fn op(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harmony-operator")).arg("-c").arg(cfg).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A minimal operator config in `d`: this server, a fleet key next to it.
fn write_config(nats: &NatsServer, d: &Path) -> std::path::PathBuf {
    let cfg = d.join("operator.toml");
    std::fs::write(
        &cfg,
        format!("[nats]\nurl = \"{}\"\n[keys]\nsigning_key = \"{}\"\n", nats.url(), d.join("fleet.key").display()),
    )
    .unwrap();
    cfg
}

#[test]
fn keys_init_bundles_devices_and_rollouts_from_the_command_line() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write_config(&nats, d);

    let key = ok(&op(&cfg, &["--json", "keys", "generate"]));
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    assert_eq!(key["key_id"].as_str().unwrap().len(), 16);
    assert!(!op(&cfg, &["keys", "generate"]).status.success(), "never overwrites the key");
    ok(&op(&cfg, &["init"]));
    ok(&op(&cfg, &["init"])); // idempotent

    // Not a bundle: refused with a reason, non-zero exit, nothing stored.
    std::fs::write(d.join("v9.raucb"), "not a bundle").unwrap();
    let refused = op(&cfg, &["bundle", "push", d.join("v9.raucb").to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a RAUC bundle"), "{refused:?}");

    let ca = TestCa::create(d);
    let bundle = build_bundle(&ca, d, "b", "harmony-rpi4", "2.0.0", "plain", b"rootfs");
    let pushed: serde_json::Value =
        serde_json::from_str(&ok(&op(&cfg, &["--json", "bundle", "push", bundle.to_str().unwrap()]))).unwrap();
    assert_eq!(pushed["version"], "2.0.0");
    assert_eq!(pushed["compatible"], "harmony-rpi4");
    let list: serde_json::Value = serde_json::from_str(&ok(&op(&cfg, &["--json", "bundle", "list"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(ok(&op(&cfg, &["bundle", "list"])).starts_with("BUNDLE"));

    let devices: serde_json::Value = serde_json::from_str(&ok(&op(&cfg, &["--json", "devices", "list"]))).unwrap();
    assert_eq!(devices, serde_json::json!([]));
    let none = op(&cfg, &["rollout", "start", "--bundle", "2.0.0", "--all"]);
    assert!(!none.status.success(), "no devices selected");
    let unknown = op(&cfg, &["rollout", "start", "--bundle", "9.9", "--devices", "pi-1"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("bundle 9.9 not found"));

    let started = ok(&op(&cfg, &["rollout", "start", "--bundle", "2.0.0", "--devices", "pi-1,pi-2", "--id", "r1"]));
    assert!(started.contains("rollout r1: 2 devices"), "{started}");
    let in_use = op(&cfg, &["bundle", "rm", "2.0.0"]);
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("used by rollout r1"));
    ok(&op(&cfg, &["rollout", "pause", "r1"]));
    assert!(ok(&op(&cfg, &["rollout", "status"])).contains("r1"));
    let status: serde_json::Value =
        serde_json::from_str(&ok(&op(&cfg, &["--json", "rollout", "status", "r1"]))).unwrap();
    assert_eq!(status["rollout"]["status"], "running", "nobody serves yet: the pause is only requested");

    // Provisioning writes the device files and the server's auth include.
    let out = d.join("dev");
    ok(&op(
        &cfg,
        &[
            "init",
            "--device",
            "pi-1",
            "--label",
            "site=lab",
            "--out",
            out.to_str().unwrap(),
            "--auth-conf",
            d.join("auth.conf").to_str().unwrap(),
            "--operator-nkey",
            d.join("op.nk").to_str().unwrap(),
        ],
    ));
    for f in
        ["data/harmony/agent.d/10-provisioned.toml", "data/harmony/device.nk", "etc/harmony/fleet-keys/fleet.key.pub"]
    {
        assert!(out.join(f).is_file(), "{f}");
    }
    let auth = std::fs::read_to_string(d.join("auth.conf")).unwrap();
    assert!(auth.contains("$KV.harmony-heartbeats.pi-1") && auth.contains("# pi-1"), "{auth}");
}

/// Every provisioned device is in the regenerated nats-server auth include,
/// including the one provisioned by this very call (it once was missing:
/// the device could never log in until the next device was provisioned).
#[test]
fn auth_include_lists_every_provisioned_device_at_once() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write_config(&nats, d);
    ok(&op(&cfg, &["keys", "generate"]));
    ok(&op(&cfg, &["init"]));
    let auth = d.join("auth.conf");
    let mut nkeys = Vec::new();
    for device in ["pi-1", "pi-2", "pi-3"] {
        let out = ok(&op(
            &cfg,
            &[
                "--json",
                "init",
                "--device",
                device,
                "--out",
                d.join(device).to_str().unwrap(),
                "--auth-conf",
                auth.to_str().unwrap(),
                "--operator-nkey",
                d.join("operator.nk").to_str().unwrap(),
            ],
        ));
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        nkeys.push(out["nkey"].as_str().unwrap().to_string());
        let conf = std::fs::read_to_string(&auth).unwrap();
        for (n, nkey) in nkeys.iter().enumerate() {
            assert!(conf.contains(nkey.as_str()), "after provisioning {device}, device #{n} is missing:\n{conf}");
        }
    }
}
