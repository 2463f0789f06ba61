//! Client for RAUC's D-Bus service. `installer_interface` is the contract;
//! this module turns it into the few operations the agent needs, with RAUC's
//! own error text (`LastError`) carried through verbatim.

pub mod installer_interface;

use futures::StreamExt;
use installer_interface::{InstallerProxy, SlotStatus};
use std::collections::HashMap;
use tokio::sync::watch;
use zbus::zvariant::Value;

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
    /// RAUC's record of the last install into this slot (`slot.status`
    /// under its data directory): `ok` once an install completed.
    pub install_status: Option<String>,
    /// `bundle.version` of the last bundle installed into this slot.
    pub bundle_version: Option<String>,
    /// `bundle.compatible` of the last bundle installed into this slot.
    pub bundle_compatible: Option<String>,
    /// `installed.timestamp` (UTC, `YYYY-MM-DDTHH:MM:SSZ`) as Unix seconds.
    pub installed_at_secs: Option<u64>,
}

impl SlotInfo {
    fn from_dbus((name, props): SlotStatus) -> Self {
        let text = |key: &str| props.get(key).and_then(|v| String::try_from(v.clone()).ok());
        Self {
            bootname: text("bootname"),
            state: text("state"),
            boot_status: text("boot-status"),
            install_status: text("status"),
            bundle_version: text("bundle.version"),
            bundle_compatible: text("bundle.compatible"),
            installed_at_secs: text("installed.timestamp").as_deref().and_then(parse_utc_timestamp),
            name,
        }
    }
}

/// What a restarted agent finds when it looks for the install its
/// predecessor started (see [`RaucClient::adopt_install`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// The install completed (now or before the restart): the bootname RAUC
    /// made primary.
    Finished(String),
    /// RAUC ran the install and it failed: its `LastError`.
    Failed(String),
    /// RAUC is idle and the bundle is not in the other slot: install it.
    NotInstalled,
}

/// What the agent knows about the install it may have started before a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallClaim {
    /// The offer's version (RAUC's `bundle.version`).
    pub version: String,
    /// RAUC's `Compatible`.
    pub compatible: String,
    /// Bootname of the slot this system runs from (never the target).
    pub booted_slot: String,
    /// Wall-clock Unix seconds when the install was about to start; an
    /// install RAUC recorded earlier than this is an older one.
    pub not_before_secs: u64,
}

/// Is `slot` (with `primary` the bootname RAUC will boot next) the result of
/// the install `claim` describes? Pure, so the decision is tested apart from
/// RAUC. A wall clock stepped back between the start of the install and now
/// makes it answer "no", which costs a second install, never a wrong slot.
pub fn slot_holds_claim(slot: &SlotInfo, primary: &str, claim: &InstallClaim) -> bool {
    let Some(bootname) = slot.bootname.as_deref() else { return false };
    bootname != claim.booted_slot
        && bootname == primary
        && slot.install_status.as_deref() == Some("ok")
        && slot.bundle_version.as_deref() == Some(claim.version.as_str())
        && slot.bundle_compatible.as_deref() == Some(claim.compatible.as_str())
        && slot.installed_at_secs.is_some_and(|t| t >= claim.not_before_secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RAUC's `installed.timestamp`) to Unix seconds.
pub fn parse_utc_timestamp(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':').map(|p| p.split('.').next().and_then(|p| p.parse::<i64>().ok()));
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), after H. Hinnant's
    // well-known algorithm, re-derived here.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
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

    /// Install `source` and wait for RAUC to finish. Progress percentages go
    /// to `progress`. Returns the bootname RAUC made primary (the slot the
    /// next boot will try).
    pub async fn install(&self, source: InstallSource<'_>, progress: &watch::Sender<u8>) -> Result<String, RaucError> {
        // Subscribe before starting: a fast install could otherwise complete
        // before we listen and the signal would be lost.
        let mut completed = self.proxy.receive_completed().await.map_err(call("subscribe Completed"))?;
        let mut progress_changes = self.watcher.receive_progress_changed().await;
        let (path, args) = source.install_bundle_args();
        self.proxy.install_bundle(&path, args).await.map_err(call("InstallBundle"))?;
        self.finish_install(&mut completed, &mut progress_changes, progress).await
    }

    /// After an agent restart in the middle of an install: take over the
    /// install the previous agent started instead of starting another one.
    /// RAUC busy: wait for its `Completed` and report that outcome. RAUC
    /// idle: the install finished (or never started) while no agent was
    /// listening; RAUC's own slot status says whether the bundle is in the
    /// other slot and that slot is primary.
    pub async fn adopt_install(
        &self,
        claim: &InstallClaim,
        progress: &watch::Sender<u8>,
    ) -> Result<Adoption, RaucError> {
        let mut completed = self.proxy.receive_completed().await.map_err(call("subscribe Completed"))?;
        let mut progress_changes = self.watcher.receive_progress_changed().await;
        let operation = self.operation().await?;
        if operation != "idle" {
            log::info!("RAUC is {operation} (the install started before this agent restarted); adopting it");
            return match self.finish_install(&mut completed, &mut progress_changes, progress).await {
                Ok(slot) => Ok(Adoption::Finished(slot)),
                Err(RaucError::InstallFailed { last_error }) => Ok(Adoption::Failed(last_error)),
                Err(other) => Err(other),
            };
        }
        let primary = self.primary_bootname().await?;
        let slots = self.slots().await?;
        match slots.iter().find(|s| slot_holds_claim(s, &primary, claim)) {
            Some(slot) => {
                log::info!(
                    "RAUC already installed {} into slot {primary} ({:?} at {:?}); not installing again",
                    claim.version,
                    slot.name,
                    slot.installed_at_secs
                );
                progress.send_replace(100);
                Ok(Adoption::Finished(primary))
            }
            None => {
                log::info!("RAUC is idle and {} is not in the other slot; installing", claim.version);
                Ok(Adoption::NotInstalled)
            }
        }
    }

    /// Wait for `Completed`, forwarding progress; on success the bootname
    /// RAUC made primary, else its `LastError`.
    async fn finish_install(
        &self,
        completed: &mut installer_interface::CompletedStream,
        progress_changes: &mut zbus::proxy::PropertyStream<'static, (i32, String, i32)>,
        progress: &watch::Sender<u8>,
    ) -> Result<String, RaucError> {
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

/// What `InstallBundle` is asked to install.
#[derive(Debug, Clone, Copy)]
pub enum InstallSource<'a> {
    /// A bundle file on this device.
    File(&'a std::path::Path),
    /// An `http(s)://` URL RAUC streams, sending `http_headers` (`Name:
    /// value`) with every request and, for `https://`, trusting the CAs in
    /// `tls_ca` (PEM) instead of the system's.
    Stream { url: &'a str, http_headers: &'a [String], tls_ca: Option<&'a std::path::Path> },
}

impl InstallSource<'_> {
    /// `InstallBundle`'s two arguments: the source and its `a{sv}` options.
    pub fn install_bundle_args(&self) -> (String, HashMap<&'static str, Value<'static>>) {
        let mut args = HashMap::new();
        match *self {
            Self::File(path) => (path.to_string_lossy().into_owned(), args),
            Self::Stream { url, http_headers, tls_ca } => {
                if !http_headers.is_empty() {
                    // `http-headers`: an array of strings (`as`).
                    args.insert("http-headers", Value::from(http_headers.to_vec()));
                }
                if let Some(ca) = tls_ca {
                    // `tls-ca`: a file name (`s`), read by RAUC's streaming helper.
                    args.insert("tls-ca", Value::from(ca.to_string_lossy().into_owned()));
                }
                (url.to_string(), args)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raucs_installed_timestamp() {
        assert_eq!(parse_utc_timestamp("1970-01-01T00:00:00Z"), Some(0));
        // `date -u -d 2026-11-28T01:54:08Z +%s`
        assert_eq!(parse_utc_timestamp("2026-11-28T01:54:08Z"), Some(1_795_830_848));
        assert_eq!(parse_utc_timestamp("2024-02-29T23:59:59Z"), Some(1_709_251_199));
        for bad in ["", "2026-11-28 01:54:08", "2026-13-01T00:00:00Z", "2026-11-28T25:00:00Z", "x-y-zTa:b:cZ"] {
            assert_eq!(parse_utc_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn install_bundle_args_name_headers_and_trust_only_for_a_stream() {
        let (path, args) = InstallSource::File(std::path::Path::new("/data/b.raucb")).install_bundle_args();
        assert_eq!((path.as_str(), args.len()), ("/data/b.raucb", 0));
        let headers = vec!["Authorization: Bearer t".to_string()];
        let ca = std::path::Path::new("/data/harmony/download/stream-trust.pem");
        let stream = InstallSource::Stream { url: "https://op/v1/bundles/b", http_headers: &headers, tls_ca: Some(ca) };
        let (url, args) = stream.install_bundle_args();
        assert_eq!(url, "https://op/v1/bundles/b");
        assert_eq!(args.get("http-headers"), Some(&Value::from(headers.clone())));
        assert_eq!(args.get("tls-ca"), Some(&Value::from(ca.to_string_lossy().into_owned())));
        let (_, args) =
            InstallSource::Stream { url: "http://op/b", http_headers: &[], tls_ca: None }.install_bundle_args();
        assert!(args.is_empty(), "{args:?}");
    }

    fn slot_b() -> SlotInfo {
        SlotInfo {
            name: "rootfs.1".into(),
            bootname: Some("B".into()),
            state: Some("inactive".into()),
            boot_status: Some("good".into()),
            install_status: Some("ok".into()),
            bundle_version: Some("2.0.0".into()),
            bundle_compatible: Some("board".into()),
            installed_at_secs: Some(1000),
        }
    }

    #[test]
    fn a_slot_holds_the_claimed_install_only_when_every_fact_agrees() {
        let claim = InstallClaim {
            version: "2.0.0".into(),
            compatible: "board".into(),
            booted_slot: "A".into(),
            not_before_secs: 1000,
        };
        assert!(slot_holds_claim(&slot_b(), "B", &claim));
        let cases: Vec<(&str, SlotInfo, &str)> = vec![
            ("not primary", slot_b(), "A"),
            ("install not ok", SlotInfo { install_status: Some("pending".into()), ..slot_b() }, "B"),
            ("other version", SlotInfo { bundle_version: Some("1.9.0".into()), ..slot_b() }, "B"),
            ("other compatible", SlotInfo { bundle_compatible: Some("x".into()), ..slot_b() }, "B"),
            ("an older install", SlotInfo { installed_at_secs: Some(999), ..slot_b() }, "B"),
            ("no timestamp", SlotInfo { installed_at_secs: None, ..slot_b() }, "B"),
            ("the booted slot", SlotInfo { bootname: Some("A".into()), ..slot_b() }, "A"),
        ];
        for (what, slot, primary) in cases {
            assert!(!slot_holds_claim(&slot, primary, &claim), "{what}");
        }
    }
}
