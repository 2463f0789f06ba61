//! Health checks of a freshly booted slot: configured systemd units must be
//! active, every executable in the checks directory must exit 0 within the
//! timeout, and the workload manifest must have converged (unless it opts
//! out: `gate_upgrades = false`). Returns the names of what failed (empty =
//! healthy).

use crate::shared::StatusBoard;
use crate::workload::service::GateHandle;
use harmony_protocol::heartbeat::{Health, HealthStatus};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;

/// What heartbeats report for a check run: the operator commits an upgrade
/// only on a `healthy` heartbeat of the new boot.
pub fn status(failed: &[String]) -> Health {
    let status = if failed.is_empty() { HealthStatus::Healthy } else { HealthStatus::Unhealthy };
    Health { status, failed_checks: failed.to_vec() }
}

/// Runs the checks now and then every `interval`, publishing each result,
/// so every heartbeat (not only the one after an upgrade) says whether the
/// device is healthy.
pub async fn monitor(
    units: Vec<String>,
    dir: PathBuf,
    timeout: Duration,
    interval: Duration,
    board: Arc<StatusBoard>,
    workloads: GateHandle,
) {
    loop {
        let mut failed = run(&units, &dir, timeout).await;
        failed.extend(workloads.failures(false).await);
        publish(&board, &failed);
        tokio::time::sleep(interval).await;
    }
}

pub fn publish(board: &StatusBoard, failed: &[String]) {
    let health = status(failed);
    board.health.send_if_modified(|current| {
        if *current == health {
            false
        } else {
            if !failed.is_empty() {
                log::warn!("unhealthy: {}", failed.join(", "));
            }
            *current = health;
            true
        }
    });
}

pub async fn run(units: &[String], checks_dir: &Path, timeout: Duration) -> Vec<String> {
    let mut failed = Vec::new();
    for unit in units {
        if !unit_active(unit, timeout).await {
            failed.push(format!("unit {unit}"));
        }
    }
    for check in executables(checks_dir) {
        let name = check.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cmd = Command::new(&check);
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        match tokio::time::timeout(timeout, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => {
                log::warn!(
                    "health check {name} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                failed.push(format!("check {name}"));
            }
            Ok(Err(e)) => {
                log::warn!("health check {name} could not run: {e}");
                failed.push(format!("check {name}"));
            }
            Err(_) => {
                log::warn!("health check {name} timed out after {timeout:?}");
                failed.push(format!("check {name} (timeout)"));
            }
        }
    }
    failed
}

async fn unit_active(unit: &str, timeout: Duration) -> bool {
    let mut cmd = Command::new("systemctl");
    cmd.args(["is-active", "--quiet", "--", unit]).kill_on_drop(true);
    matches!(tokio::time::timeout(timeout, cmd.status()).await, Ok(Ok(s)) if s.success())
}

/// Regular files with an execute bit, in name order. A missing directory
/// means no custom checks.
fn executables(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn reports_failing_and_slow_checks_by_name() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "10-ok", "exit 0");
        script(dir.path(), "20-bad", "exit 3");
        script(dir.path(), "30-slow", "sleep 5");
        std::fs::write(dir.path().join("README"), "not executable").unwrap();
        let failed = run(&[], dir.path(), Duration::from_millis(500)).await;
        assert_eq!(failed, vec!["check 20-bad".to_string(), "check 30-slow (timeout)".to_string()]);
    }

    #[tokio::test]
    async fn no_checks_directory_is_healthy() {
        assert!(run(&[], Path::new("/nonexistent/health.d"), Duration::from_secs(1)).await.is_empty());
    }
}
