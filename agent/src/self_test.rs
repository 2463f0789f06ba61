//! `harmony-agent --self-test`: can this device take part in the fleet?
//! Each failure has its own exit code so provisioning scripts can tell
//! what to fix.

use crate::config::AgentConfig;
use crate::{fleet_keys, identity};
use std::path::Path;
use std::time::Duration;

/// RAUC's well-known D-Bus name.
pub const RAUC_BUS_NAME: &str = "de.pengutronix.rauc";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTestFailure {
    Config = 10,
    Identity = 11,
    FleetKeys = 12,
    Rauc = 13,
}

/// Runs every check, printing one line each; returns the first failure.
pub async fn run(config_path: &Path) -> Result<(), SelfTestFailure> {
    let cfg = match AgentConfig::load(config_path) {
        Ok(cfg) => {
            println!("ok    config {}", config_path.display());
            cfg
        }
        Err(e) => {
            println!("FAIL  config: {e}");
            return Err(SelfTestFailure::Config);
        }
    };
    let mut first_failure = None;
    let mut fail = |f: SelfTestFailure, msg: String| {
        println!("FAIL  {msg}");
        first_failure.get_or_insert(f);
    };
    match identity::device_id(&cfg).and_then(|id| identity::boot_id(&cfg.system.boot_id).map(|b| (id, b))) {
        Ok((id, boot)) => println!("ok    device id {id}, boot id {boot}"),
        Err(e) => fail(SelfTestFailure::Identity, format!("identity: {e}")),
    }
    match fleet_keys::load(&cfg.fleet_keys_dir) {
        Ok(keys) => println!(
            "ok    {} fleet key(s): {}",
            keys.len(),
            keys.ids().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
        ),
        Err(e) => fail(SelfTestFailure::FleetKeys, format!("fleet keys: {e}")),
    }
    match tokio::time::timeout(Duration::from_secs(5), rauc_on_bus(cfg.rauc.dbus_address.as_deref())).await {
        Ok(Ok(())) => println!("ok    RAUC is on D-Bus as {RAUC_BUS_NAME}"),
        Ok(Err(e)) => fail(SelfTestFailure::Rauc, format!("RAUC: {e}")),
        Err(_) => fail(SelfTestFailure::Rauc, "RAUC: D-Bus did not answer within 5 s".to_string()),
    }
    first_failure.map_or(Ok(()), Err)
}

async fn rauc_on_bus(address: Option<&str>) -> Result<(), String> {
    let conn = match address {
        Some(addr) => zbus::connection::Builder::address(addr)
            .map_err(|e| format!("bad D-Bus address {addr:?}: {e}"))?
            .build()
            .await
            .map_err(|e| format!("cannot connect to D-Bus at {addr}: {e}"))?,
        None => zbus::Connection::system().await.map_err(|e| format!("cannot connect to the system bus: {e}"))?,
    };
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.map_err(|e| e.to_string())?;
    let name = zbus::names::BusName::try_from(RAUC_BUS_NAME).map_err(|e| e.to_string())?;
    match dbus.name_has_owner(name).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("{RAUC_BUS_NAME} is not on the bus (is rauc.service running?)")),
        Err(e) => Err(e.to_string()),
    }
}
