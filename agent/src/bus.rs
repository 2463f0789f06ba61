//! The NATS connection. It is opened once and then left to async-nats to
//! keep alive: unlimited reconnects with backoff, so a device that loses its
//! network keeps running and resumes by itself.

use crate::config::NatsConfig;
use harmony_protocol::DeviceId;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials { path: PathBuf, source: std::io::Error },
    #[error("cannot read the NATS CA file {path}: {source}")]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("invalid NATS server URL {url:?}: {detail}")]
    BadUrl { url: String, detail: String },
    #[error("NATS connect failed: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// An open (or still connecting) client and a flag that follows the
/// connection state.
#[derive(Debug)]
pub struct Bus {
    pub client: async_nats::Client,
    pub connected: watch::Receiver<bool>,
}

pub async fn connect(cfg: &NatsConfig, device: &DeviceId) -> Result<Bus, BusError> {
    let mut options = if let Some(path) = &cfg.credentials_file {
        async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| BusError::Credentials { path: path.clone(), source })?
    } else if let Some(path) = &cfg.nkey_seed_file {
        let seed =
            std::fs::read_to_string(path).map_err(|source| BusError::Credentials { path: path.clone(), source })?;
        async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
    } else {
        async_nats::ConnectOptions::new()
    };
    if let Some(ca) = &cfg.ca_file {
        options = with_ca_file(options, ca)?;
    }
    let (connected_tx, connected) = watch::channel(false);
    options = options
        .name(format!("harmony-agent {device}"))
        // Device credentials only allow replies under the device's own inbox.
        .custom_inbox_prefix(harmony_protocol::names::device_inbox_prefix(device))
        // Return at once and keep trying in the background: the agent must
        // come up (and feed the watchdog) on a device that is offline.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback({
            let device = device.to_string();
            move |attempts| reconnect_delay(&device, attempts)
        })
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(cfg.request_timeout_secs)))
        .event_callback(move |event| {
            let connected_tx = connected_tx.clone();
            async move {
                match &event {
                    async_nats::Event::Connected => {
                        log::info!("NATS connected");
                        connected_tx.send_replace(true);
                    }
                    async_nats::Event::Disconnected => {
                        log::warn!("NATS disconnected; reconnecting in the background");
                        connected_tx.send_replace(false);
                    }
                    other => log::warn!("NATS: {other}"),
                }
            }
        });
    let client = options.connect(server_addrs(&cfg.urls)?).await?;
    Ok(Bus { client, connected })
}

/// Trust the CA in `path` (PEM) for `tls://` servers. Checked here so a
/// missing file is a clear error naming it, not a TLS failure later.
pub fn with_ca_file(
    options: async_nats::ConnectOptions,
    path: &std::path::Path,
) -> Result<async_nats::ConnectOptions, BusError> {
    std::fs::metadata(path).map_err(|source| BusError::CaFile { path: path.to_path_buf(), source })?;
    Ok(options.add_root_certificates(path.to_path_buf()))
}

/// Parse every configured URL, naming the first bad one.
pub fn server_addrs(urls: &[String]) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    urls.iter()
        .map(|url| {
            url.parse().map_err(|e: std::io::Error| BusError::BadUrl { url: url.clone(), detail: e.to_string() })
        })
        .collect()
}

/// Longest wait between reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Exponential backoff (100 ms doubling, capped at 30 s) plus up to 50 %
/// per-device jitter, so a fleet that lost its server does not reconnect in
/// lock-step when it comes back. The jitter is a hash of the device id and
/// attempt number: spread across devices, reproducible for one device.
pub fn reconnect_delay(device: &str, attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    let base = Duration::from_millis(100u64.saturating_mul(1 << exp)).min(MAX_RECONNECT_DELAY);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("{device}/{attempts}").as_bytes());
    let permille = u64::from(u16::from_be_bytes([digest[0], digest[1]]) % 1000);
    let jitter_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX) / 2 * permille / 1000;
    base + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_spreads_devices() {
        assert_eq!(reconnect_delay("a", 1), Duration::ZERO);
        let first = reconnect_delay("a", 2);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(150), "{first:?}");
        for attempts in 2..100 {
            let d = reconnect_delay("a", attempts);
            assert!(d <= MAX_RECONNECT_DELAY * 3 / 2, "{attempts}: {d:?}");
        }
        assert!(reconnect_delay("a", 40) >= MAX_RECONNECT_DELAY);
        let spread: std::collections::BTreeSet<_> = (0..20).map(|i| reconnect_delay(&format!("dev-{i}"), 12)).collect();
        assert!(spread.len() > 10, "jitter should differ across devices: {spread:?}");
    }
}
