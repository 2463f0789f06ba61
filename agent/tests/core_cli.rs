#![allow(clippy::unwrap_used)] // integration-test code: failing loudly is the point
//! The shipped binary: --version, bad arguments, and --self-test exit codes.

mod common;

use common::FakeDevice;
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harmony-agent"))
}

#[test]
fn version_and_bad_arguments() {
    let out = agent().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("harmony-agent {}", env!("CARGO_PKG_VERSION")));
    let out = agent().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}

#[test]
fn missing_config_exits_10_with_the_path() {
    let out = agent().args(["--config", "/nonexistent/agent.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(10));
    let out = agent().args(["--self-test", "--config", "/nonexistent/agent.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/nonexistent/agent.toml"));
}

fn write_config(device: &FakeDevice) -> std::path::PathBuf {
    let cfg = device.path("agent.toml");
    let text = format!(
        "fleet_keys_dir = \"{}\"\n[nats]\nurls = [\"nats://127.0.0.1:1\"]\n[rauc]\ndbus_address = \"unix:path={}\"\n[system]\nboot_id = \"{}\"\nmachine_id = \"{}\"\n",
        device.path("fleet-keys").display(),
        device.path("no-bus").display(),
        device.path("boot_id").display(),
        device.path("machine-id").display(),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn self_test_reports_missing_fleet_keys_then_missing_rauc() {
    let device = FakeDevice::new();
    let cfg = write_config(&device);
    // No keys yet: exit 12, and the RAUC line is still printed.
    let out = agent().arg("--self-test").arg("--config").arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(12), "{stdout}");
    assert!(stdout.contains("FAIL  fleet keys"), "{stdout}");
    assert!(stdout.contains("ok    device id dev-"), "{stdout}");
    assert!(stdout.contains("FAIL  RAUC"), "{stdout}");

    // With a key, the first failure is RAUC's absence: exit 13.
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key();
    std::fs::write(device.path("fleet-keys/fleet.pub"), hex::encode(key.as_bytes())).unwrap();
    let out = agent().arg("--self-test").arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_config_template_shipped_in_meta_harmony_parses() {
    // The image's /etc/harmony/agent.toml: must stay valid as the config grows.
    let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../meta-harmony/recipes-harmony/harmony-agent/files/agent.toml");
    let text = std::fs::read_to_string(&template).unwrap();
    let cfg = harmony_agent::AgentConfig::parse(&text, &template).unwrap();
    assert_eq!(cfg.drop_in_dir.as_deref(), Some(std::path::Path::new("/data/harmony/agent.d")));
    assert_eq!(cfg.state_dir, std::path::PathBuf::from("/data/harmony"));
}
