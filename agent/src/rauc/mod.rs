//! Client for RAUC's D-Bus service. `installer_interface` is the contract;
//! this module turns it into the few operations the agent needs, with RAUC's
//! own error text (`LastError`) carried through verbatim.

pub mod installer_interface;

use futures::StreamExt;
use installer_interface::{InstallerProxy, SlotStatus};
use std::collections::HashMap;
use std::path::Path;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum RaucError {
    #[error("cannot reach RAUC on D-Bus ({address}): {source}")]
    Connect { address: String, source: zbus::Error },
    #[error("RAUC D-Bus call {call} failed: {source}")]
    Call { call: &'static str, source: zbus::Error },
    /// RAUC's `LastError`, verbatim.
    #[error("{last_error}")]
    InstallFailed { last_error: String },
    #[error("RAUC reports slot {slot} as {found} after marking it {wanted}")]
    MarkNotApplied { slot: String, wanted: &'static str, found: String },
    #[error("RAUC has no slot named {0}")]
    UnknownSlot(String),
}

fn call(name: &'static str) -> impl FnOnce(zbus::Error) -> RaucError {
    move |source| RaucError::Call { call: name, source }
}

#[derive(Debug, Clone)]
pub struct RaucClient {
    /// Uncached: a property read right after `Completed` must ask RAUC, not
    /// a cache that the PropertiesChanged signal may not have updated yet.
    proxy: InstallerProxy<'static>,
    /// Cached, only to receive `Progress` change notifications.
    watcher: InstallerProxy<'static>,
}

/// What the agent needs to know about one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub bootname: Option<String>,
    /// `booted`, `active` or `inactive`.
    pub state: Option<String>,
    /// `good` or `bad`, as the bootloader backend reports it.
    pub boot_status: Option<String>,
}

impl SlotInfo {
    fn from_dbus((name, props): SlotStatus) -> Self {
        let text = |key: &str| props.get(key).and_then(|v| String::try_from(v.clone()).ok());
        Self { bootname: text("bootname"), state: text("state"), boot_status: text("boot-status"), name }
    }
}

impl RaucClient {
    /// `address` is a D-Bus address (`unix:path=...`); `None` is the system bus.
    pub async fn connect(address: Option<&str>) -> Result<Self, RaucError> {
        let shown = address.unwrap_or("system bus").to_string();
        let connect_err = |source| RaucError::Connect { address: shown.clone(), source };
        let connection = match address {
            Some(a) => zbus::connection::Builder::address(a).map_err(connect_err)?.build().await,
            None => zbus::Connection::system().await,
        }
        .map_err(connect_err)?;
        let proxy = InstallerProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(connect_err)?;
        let watcher = InstallerProxy::new(&connection).await.map_err(connect_err)?;
        Ok(Self { proxy, watcher })
    }

    pub async fn compatible(&self) -> Result<String, RaucError> {
        self.proxy.compatible().await.map_err(call("Compatible"))
    }

    /// Bootname of the slot this system booted from (`A`, `B`).
    pub async fn boot_slot(&self) -> Result<String, RaucError> {
        self.proxy.boot_slot().await.map_err(call("BootSlot"))
    }

    pub async fn operation(&self) -> Result<String, RaucError> {
        self.proxy.operation().await.map_err(call("Operation"))
    }

    pub async fn last_error(&self) -> Result<String, RaucError> {
        self.proxy.last_error().await.map_err(call("LastError"))
    }

    pub async fn slots(&self) -> Result<Vec<SlotInfo>, RaucError> {
        let raw = self.proxy.get_slot_status().await.map_err(call("GetSlotStatus"))?;
        Ok(raw.into_iter().map(SlotInfo::from_dbus).collect())
    }

    /// Bootname of the slot the bootloader will boot next.
    pub async fn primary_bootname(&self) -> Result<String, RaucError> {
        let name = self.proxy.get_primary().await.map_err(call("GetPrimary"))?;
        let slots = self.slots().await?;
        slots.into_iter().find(|s| s.name == name).and_then(|s| s.bootname).ok_or(RaucError::UnknownSlot(name))
    }

    /// Install `bundle` and wait for RAUC to finish. Progress percentages go
    /// to `progress`. Returns the bootname RAUC made primary (the slot the
    /// next boot will try).
    pub async fn install(&self, bundle: &Path, progress: &watch::Sender<u8>) -> Result<String, RaucError> {
        // Subscribe before starting: a fast install could otherwise complete
        // before we listen and the signal would be lost.
        let mut completed = self.proxy.receive_completed().await.map_err(call("subscribe Completed"))?;
        let mut progress_changes = self.watcher.receive_progress_changed().await;
        // After an agent restart RAUC may still be busy with the install the
        // previous agent started; a second InstallBundle would be refused.
        // Let it finish, then install again (same bundle, same outcome).
        if self.operation().await? != "idle" {
            log::info!("RAUC is busy (an earlier install); waiting for it to finish");
            let _ = completed.next().await;
        }
        let source = bundle.to_string_lossy();
        self.proxy.install_bundle(&source, HashMap::new()).await.map_err(call("InstallBundle"))?;
        let result = loop {
            tokio::select! {
                signal = completed.next() => {
                    let Some(signal) = signal else {
                        return Err(RaucError::InstallFailed { last_error: "RAUC left the bus during install".into() });
                    };
                    break signal.args().map_err(call("Completed args"))?.result;
                }
                Some(change) = progress_changes.next() => {
                    if let Ok((percent, message, _)) = change.get().await {
                        log::debug!("RAUC {percent}% {message}");
                        progress.send_replace(u8::try_from(percent.clamp(0, 100)).unwrap_or(0));
                    }
                }
            }
        };
        if result != 0 {
            let last_error = self.last_error().await?;
            return Err(RaucError::InstallFailed { last_error });
        }
        progress.send_replace(100);
        self.primary_bootname().await
    }

    /// Mark the booted slot good and check that RAUC's bootloader backend
    /// now reports it good. Returns the bootname.
    pub async fn mark_booted_good(&self) -> Result<String, RaucError> {
        self.mark_booted("good").await
    }

    /// Mark the booted slot bad so the next boot falls back.
    pub async fn mark_booted_bad(&self) -> Result<String, RaucError> {
        self.mark_booted("bad").await
    }

    async fn mark_booted(&self, state: &'static str) -> Result<String, RaucError> {
        let (slot, message) = self.proxy.mark(state, "booted").await.map_err(call("Mark"))?;
        log::info!("RAUC: {message}");
        let found =
            self.slots().await?.into_iter().find(|s| s.name == slot).ok_or(RaucError::UnknownSlot(slot.clone()))?;
        let status = found.boot_status.clone().unwrap_or_default();
        if status != state {
            return Err(RaucError::MarkNotApplied { slot, wanted: state, found: status });
        }
        Ok(found.bootname.unwrap_or(slot))
    }
}
