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

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs the CLI, killing it after `limit` (the old behaviour was to wait).
fn op_within(cfg: &Path, args: &[&str], limit: std::time::Duration) -> (Output, std::time::Duration) {
    use std::process::Stdio;
    let start = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_harmony-operator"))
        .arg("-c")
        .arg(cfg)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("`{}` still running after {limit:?}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

/// Issue #17: with no nats-server at the configured URL, a command once
/// waited for a timeout and then blamed missing buckets. Now it says at once
/// that NATS at that URL cannot be reached, and a wrong local file is
/// reported before any connection is tried.
#[test]
fn unreachable_nats_and_bad_local_input_are_reported_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let cfg = d.join("operator.toml");
    let toml = format!("[nats]\nurl = \"{url}\"\n[keys]\nsigning_key = \"{}\"\n", d.join("fleet.key").display());
    std::fs::write(&cfg, toml).unwrap();
    ok(&op(&cfg, &["keys", "generate"]));
    let limit = std::time::Duration::from_secs(8);
    for args in [&["devices", "list"][..], &["rollout", "status"], &["init"], &["bundle", "list"]] {
        let (out, took) = op_within(&cfg, args, limit);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("cannot reach NATS at {url}")), "{args:?}: {err}");
        assert!(!err.contains("harmony-operator init"), "{args:?} sends people the wrong way: {err}");
        assert!(took < std::time::Duration::from_secs(5), "{args:?} took {took:?}");
    }
    std::fs::write(d.join("notes.raucb"), "not a bundle").unwrap();
    let (out, _) = op_within(&cfg, &["bundle", "push", d.join("notes.raucb").to_str().unwrap()], limit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not a RAUC bundle") && !err.contains("NATS"), "{err}");
}

/// A child process that is killed when the test ends, even by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue #17 item 8: undecodable heartbeats were logged at debug only. Now
/// at warn, at most once a minute per device key (with the count held back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_heartbeats_are_warned_about_once_per_device() {
    use std::io::BufRead;
    use std::process::Stdio;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&nats, dir.path());
    ok(&op(&cfg, &["keys", "generate"]));
    ok(&op(&cfg, &["init"]));
    let nobody = op(&cfg, &["leader"]);
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no operator is leading"), "{nobody:?}");
    let mut serve = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_harmony-operator"))
            .arg("-c")
            .arg(&cfg)
            .arg("serve")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = serve.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no line with {what:?} in {lines:#?}"));
            let hit = line.contains(what);
            lines.push(line);
            if hit {
                return lines.clone();
            }
        }
    };
    wait_for("leading");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client).get_key_value("harmony-heartbeats").await.unwrap();
    for i in 0..20 {
        kv.put("pi-bad", format!("garbage {i}").into()).await.unwrap();
    }
    // Heartbeats reach the operator in order through one watch: once this
    // one is logged, every garbage one before it has been handled.
    kv.put("pi-last", "garbage too".into()).await.unwrap();
    let seen = wait_for("pi-last");
    // The leader answers, having processed all 21 puts.
    let leader: serde_json::Value = serde_json::from_str(&ok(&op(&cfg, &["--json", "leader"]))).unwrap();
    assert_eq!(leader["heartbeat_revision"], 21, "{leader}");
    assert_eq!(leader["behind"], 0, "{leader}");
    drop(serve);
    let bad: Vec<&String> = seen.iter().filter(|l| l.contains("pi-bad")).collect();
    assert_eq!(bad.len(), 1, "{seen:#?}");
    assert!(bad[0].starts_with("WARN") && bad[0].contains("undecodable"), "{bad:?}");
}
