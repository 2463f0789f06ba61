//! `SystemdUnit` resources, through systemd's D-Bus API.
//!
//! Unit files go to the configured unit directory (`/run/systemd/system`):
//! the OS's units in /etc and /usr are never written, and a name that the
//! OS already defines is refused rather than shadowed. Enablement is
//! runtime-only for the same reason. The agent re-creates these files from
//! the manifest on /data on every boot, new slots included.

use super::reconciler::{Observed, Reconciler};
use super::systemd_interface::{ManagerProxy, UnitProxy};
use futures::future::BoxFuture;
use harmony_protocol::workload::UnitSpec;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

#[derive(Debug)]
pub struct UnitReconciler {
    pub unit_dir: PathBuf,
    /// How long a started unit must stay active to count as running.
    pub settle: Duration,
    /// None: the system bus.
    pub dbus_address: Option<String>,
    conn: OnceCell<zbus::Connection>,
}

const TRANSIENT: [&str; 3] = ["activating", "deactivating", "reloading"];

impl UnitReconciler {
    pub fn new(unit_dir: PathBuf, settle: Duration, dbus_address: Option<String>) -> Self {
        Self { unit_dir, settle, dbus_address, conn: OnceCell::new() }
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, String> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match &self.dbus_address {
                    Some(a) => zbus::connection::Builder::address(a.as_str())?.build().await,
                    None => zbus::Connection::system().await,
                }
            })
            .await
            .map_err(|e| format!("systemd D-Bus: {e}"))?;
        ManagerProxy::new(conn).await.map_err(|e| format!("systemd D-Bus: {e}"))
    }

    async fn unit(&self, m: &ManagerProxy<'static>, name: &str) -> Result<UnitProxy<'static>, String> {
        let path = m.load_unit(name).await.map_err(|e| format!("LoadUnit {name}: {e}"))?;
        UnitProxy::builder(m.inner().connection())
            .path(path)
            .map_err(|e| e.to_string())?
            // Always ask: a cached state would hide what a person just did.
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| format!("unit {name}: {e}"))
    }

    fn file(&self, spec: &UnitSpec) -> PathBuf {
        self.unit_dir.join(&spec.name)
    }

    /// Refuse a name the OS defines (its file is elsewhere than ours).
    async fn check_not_the_os(&self, unit: &UnitProxy<'static>, spec: &UnitSpec) -> Result<(), String> {
        let fragment = unit.fragment_path().await.map_err(|e| e.to_string())?;
        let ours = self.file(spec);
        if !fragment.is_empty() && std::path::Path::new(&fragment) != ours {
            return Err(format!("unit {} is defined by the OS ({fragment}); a workload may not replace it", spec.name));
        }
        Ok(())
    }

    async fn observe_now(&self, spec: &UnitSpec) -> Result<Observed, String> {
        let m = self.manager().await?;
        let unit = self.unit(&m, &spec.name).await?;
        self.check_not_the_os(&unit, spec).await?;
        let mut drift = Vec::new();
        match std::fs::read_to_string(self.file(spec)) {
            Ok(text) if text == spec.content => {}
            Ok(_) => drift.push("unit file differs".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => drift.push("unit file missing".to_string()),
            Err(e) => return Err(format!("{}: {e}", self.file(spec).display())),
        }
        if unit.need_daemon_reload().await.unwrap_or(false) {
            drift.push("systemd has not loaded the current unit file".into());
        }
        let file_state = m.get_unit_file_state(&spec.name).await.unwrap_or_else(|_| "not-found".into());
        let enabled = file_state.starts_with("enabled");
        if enabled != spec.enabled {
            drift.push(format!("unit file state is {file_state}"));
        }
        let active = unit.active_state().await.map_err(|e| e.to_string())?;
        let sub = unit.sub_state().await.unwrap_or_default();
        if (active == "active") != spec.active {
            drift.push(format!("unit is {active} ({sub})"));
        }
        if drift.is_empty() {
            Ok(Observed::InSync { details: format!("{active} ({sub}), {file_state}") })
        } else {
            Ok(Observed::Drifted { what: format!("{}: {}", spec.name, drift.join(", ")) })
        }
    }

    async fn reconcile_now(&self, spec: &UnitSpec) -> Result<(), String> {
        let m = self.manager().await?;
        let unit = self.unit(&m, &spec.name).await?;
        self.check_not_the_os(&unit, spec).await?;
        let path = self.file(spec);
        let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(spec.content.as_str());
        if changed {
            crate::durable::write_atomically(&path, spec.content.as_bytes(), 0o644)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if changed || unit.need_daemon_reload().await.unwrap_or(false) {
            m.reload().await.map_err(|e| format!("daemon reload: {e}"))?;
        }
        let unit = self.unit(&m, &spec.name).await?;
        let load = unit.load_state().await.unwrap_or_default();
        if load != "loaded" {
            return Err(format!("systemd could not load {}: load state {load}", spec.name));
        }
        let file_state = m.get_unit_file_state(&spec.name).await.unwrap_or_default();
        if spec.enabled && !file_state.starts_with("enabled") {
            let (has_install, _) =
                m.enable_unit_files(&[&spec.name], true, true).await.map_err(|e| format!("enable: {e}"))?;
            if !has_install {
                return Err(format!("{} has no [Install] section, so it cannot be enabled", spec.name));
            }
        } else if !spec.enabled && file_state.starts_with("enabled") {
            m.disable_unit_files(&[&spec.name], true).await.map_err(|e| format!("disable: {e}"))?;
        }
        let active = unit.active_state().await.map_err(|e| e.to_string())?;
        if spec.active {
            if active == "active" && changed {
                // New content takes effect only on a restart.
                m.restart_unit(&spec.name, "replace").await.map_err(|e| format!("restart: {e}"))?;
            } else if active != "active" {
                let _ = m.reset_failed_unit(&spec.name).await;
                m.start_unit(&spec.name, "replace").await.map_err(|e| format!("start: {e}"))?;
            }
            self.settle(&unit).await?;
        } else if active != "inactive" && active != "failed" {
            m.stop_unit(&spec.name, "replace").await.map_err(|e| format!("stop: {e}"))?;
            self.settle(&unit).await?;
        }
        Ok(())
    }

    /// Wait out the transition, then for `settle`: a service that exits at
    /// once is seen as failed here, not reported ready.
    async fn settle(&self, unit: &UnitProxy<'static>) -> Result<(), String> {
        loop {
            let state = unit.active_state().await.map_err(|e| e.to_string())?;
            if !TRANSIENT.contains(&state.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(self.settle).await;
        Ok(())
    }

    async fn delete_now(&self, spec: &UnitSpec) -> Result<(), String> {
        let m = self.manager().await?;
        let unit = self.unit(&m, &spec.name).await?;
        let fragment = unit.fragment_path().await.unwrap_or_default();
        let path = self.file(spec);
        if !fragment.is_empty() && std::path::Path::new(&fragment) != path {
            // The OS defines this name (now): never stop what is not ours.
            log::warn!("unit {} is now defined by the OS ({fragment}); only our file is removed", spec.name);
        } else {
            let active = unit.active_state().await.unwrap_or_default();
            if active != "inactive" && active != "failed" && !active.is_empty() {
                m.stop_unit(&spec.name, "replace").await.map_err(|e| format!("stop: {e}"))?;
                self.settle(&unit).await?;
            }
            if m.get_unit_file_state(&spec.name).await.is_ok_and(|s| s.starts_with("enabled")) {
                m.disable_unit_files(&[&spec.name], true).await.map_err(|e| format!("disable: {e}"))?;
            }
        }
        if path.exists() {
            crate::durable::remove_durably(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            m.reload().await.map_err(|e| format!("daemon reload: {e}"))?;
        }
        let _ = m.reset_failed_unit(&spec.name).await;
        Ok(())
    }
}

impl Reconciler for UnitReconciler {
    type Spec = UnitSpec;

    fn observe<'a>(&'a self, _id: &'a str, spec: &'a UnitSpec) -> BoxFuture<'a, Result<Observed, String>> {
        Box::pin(self.observe_now(spec))
    }

    fn reconcile<'a>(&'a self, _id: &'a str, spec: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.reconcile_now(spec))
    }

    fn delete<'a>(&'a self, _id: &'a str, spec: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.delete_now(spec))
    }
}
