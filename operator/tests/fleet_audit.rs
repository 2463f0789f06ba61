//! The audit log from the command line (issue #13): every state-changing
//! CLI action and ping is recorded with who, when, what and how it ended,
//! failures included; `audit` pages through it newest first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use harmony_testkit::rauc_bundle::{build_bundle, TestCa};
use harmony_testkit::NatsServer;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn op(cfg: &Path, user: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harmony-operator"))
        .env("USER", user)
        .arg("-c")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_actions_are_audited_with_who_what_and_the_result() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("operator.toml");
    let toml =
        format!("[nats]\nurl = \"{}\"\n[keys]\nsigning_key = \"{}\"\n", nats.url(), d.join("fleet.key").display());
    std::fs::write(&cfg, toml).unwrap();
    ok(&op(&cfg, "root", &["keys", "generate"]));
    ok(&op(&cfg, "root", &["init"]));
    let empty: Value = serde_json::from_str(&ok(&op(&cfg, "root", &["--json", "audit"]))).unwrap();
    assert_eq!((empty["total"].as_u64(), empty["entries"].as_array().map(Vec::len)), (Some(0), Some(0)));

    // 1. A control request for a rollout that does not exist: refused, and recorded.
    failed(&op(&cfg, "bob", &["--as", "alice", "rollout", "pause", "nosuch"]));
    // 2-4. Push, start, pause as alice.
    let ca = TestCa::create(d);
    let bundle = build_bundle(&ca, d, "b", "harmony-rpi4", "2.0.0", "plain", b"rootfs");
    ok(&op(&cfg, "bob", &["--as", "alice", "bundle", "push", bundle.to_str().unwrap()]));
    ok(&op(
        &cfg,
        "bob",
        &["--as", "alice", "rollout", "start", "--bundle", "2.0.0", "--devices", "pi-1", "--id", "r1"],
    ));
    ok(&op(&cfg, "bob", &["--as", "alice", "rollout", "pause", "r1"]));
    // 5-7. As $USER: a ping and a reboot nobody answers, a bundle still in use.
    assert!(failed(&op(&cfg, "bob", &["ping", "pi-1"])).contains("pi-1"));
    failed(&op(&cfg, "bob", &["devices", "reboot", "pi-1"]));
    assert!(failed(&op(&cfg, "bob", &["bundle", "rm", "2.0.0"])).contains("used by rollout r1"));
    // Reads are not audited.
    ok(&op(&cfg, "bob", &["devices", "list"]));
    ok(&op(&cfg, "bob", &["rollout", "status", "r1"]));

    let log: Value = serde_json::from_str(&ok(&op(&cfg, "carol", &["--json", "audit"]))).unwrap();
    assert_eq!(log["total"], 7, "{log:#}");
    let entries = log["entries"].as_array().unwrap();
    let rows: Vec<(&str, &str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"]["name"].as_str().unwrap(),
                e["actor"]["via"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["result"]["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("bob", "cli", "bundle_remove", "2.0.0", "failed"),
            ("bob", "cli", "device_reboot", "pi-1", "failed"),
            ("bob", "cli", "device_ping", "pi-1", "failed"),
            ("alice", "cli", "rollout_pause", "r1", "ok"),
            ("alice", "cli", "rollout_start", "r1", "ok"),
            ("alice", "cli", "bundle_push", bundle.to_str().unwrap(), "ok"),
            ("alice", "cli", "rollout_pause", "nosuch", "failed"),
        ]
    );
    assert!(entries[0]["result"]["error"].as_str().unwrap().contains("used by rollout r1"), "{:#}", entries[0]);
    assert!(entries[6]["result"]["error"].as_str().unwrap().contains("rollout nosuch not found"));
    assert!(entries[4]["result"]["detail"].as_str().unwrap().contains("1 devices"), "{:#}", entries[4]);
    let times: Vec<u64> = entries.iter().map(|e| e["at"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");

    // Page 2 of 3 entries each.
    let page: Value =
        serde_json::from_str(&ok(&op(&cfg, "carol", &["--json", "audit", "--offset", "3", "--limit", "3"]))).unwrap();
    let actions: Vec<&str> =
        page["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["rollout_pause", "rollout_start", "bundle_push"]);
    let text = ok(&op(&cfg, "carol", &["audit", "--limit", "2"]));
    assert!(text.starts_with("WHEN") && text.contains("failed: bundle 2.0.0 is used by rollout r1"), "{text}");
}
