//! Rebooting the device through systemd-logind's D-Bus API — the same path
//! `systemctl reboot` takes, so units stop cleanly and nothing depends on a
//! shell.

use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, thiserror::Error)]
#[error("reboot through logind failed: {0}")]
pub struct RebootError(pub String);

pub trait Reboot: Send + Sync + std::fmt::Debug {
    fn reboot(&self) -> BoxFuture<'_, Result<(), RebootError>>;
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_blocking = false
)]
trait LoginManager {
    /// `interactive = false`: never wait for a polkit prompt.
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
}

/// The real thing: logind on the system bus (or on `address`, for tests).
#[derive(Debug, Clone, Default)]
pub struct LogindReboot {
    pub address: Option<String>,
}

impl Reboot for LogindReboot {
    fn reboot(&self) -> BoxFuture<'_, Result<(), RebootError>> {
        Box::pin(async {
            let err = |e: zbus::Error| RebootError(e.to_string());
            let connection = match &self.address {
                Some(a) => zbus::connection::Builder::address(a.as_str()).map_err(err)?.build().await,
                None => zbus::Connection::system().await,
            }
            .map_err(err)?;
            let manager = LoginManagerProxy::new(&connection).await.map_err(err)?;
            log::warn!("rebooting through logind");
            manager.reboot(false).await.map_err(err)
        })
    }
}

/// For tests: counts reboot requests instead of rebooting.
#[derive(Debug, Default)]
pub struct RecordingReboot {
    count: AtomicUsize,
}

impl RecordingReboot {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Reboot for RecordingReboot {
    fn reboot(&self) -> BoxFuture<'_, Result<(), RebootError>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}
