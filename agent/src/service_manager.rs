//! systemd integration (`Type=notify`): readiness, watchdog and status text,
//! behind a trait so tests can observe what the agent told systemd.

use std::sync::Mutex;
use std::time::Duration;

pub trait ServiceManager: Send + Sync + std::fmt::Debug {
    fn ready(&self);
    fn watchdog_ping(&self);
    fn status(&self, text: &str);
    fn stopping(&self);
    /// How often systemd expects a ping (`WatchdogSec=`), if it does.
    fn watchdog_timeout(&self) -> Option<Duration>;
}

/// The real thing: `sd_notify(3)` over `$NOTIFY_SOCKET`. Outside systemd
/// every call is a no-op, so the agent also runs from a shell.
#[derive(Debug, Default)]
pub struct SdNotify;

impl SdNotify {
    fn send(&self, state: &[sd_notify::NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(false, state) {
            log::debug!("sd_notify failed: {e}");
        }
    }
}

impl ServiceManager for SdNotify {
    fn ready(&self) {
        self.send(&[sd_notify::NotifyState::Ready]);
    }
    fn watchdog_ping(&self) {
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }
    fn status(&self, text: &str) {
        self.send(&[sd_notify::NotifyState::Status(text)]);
    }
    fn stopping(&self) {
        self.send(&[sd_notify::NotifyState::Stopping]);
    }
    fn watchdog_timeout(&self) -> Option<Duration> {
        let mut usec = 0u64;
        if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            Some(Duration::from_micros(usec))
        } else {
            None
        }
    }
}

/// What a test sees of the agent's conversation with systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    Ready,
    Watchdog,
    Status(String),
    Stopping,
}

/// Test double recording every notification.
#[derive(Debug, Default)]
pub struct RecordingServiceManager {
    pub log: Mutex<Vec<Notification>>,
    pub watchdog: Option<Duration>,
}

impl RecordingServiceManager {
    pub fn with_watchdog(timeout: Duration) -> Self {
        Self { log: Mutex::new(Vec::new()), watchdog: Some(timeout) }
    }
    pub fn notifications(&self) -> Vec<Notification> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
    fn push(&self, n: Notification) {
        if let Ok(mut l) = self.log.lock() {
            l.push(n);
        }
    }
}

impl ServiceManager for RecordingServiceManager {
    fn ready(&self) {
        self.push(Notification::Ready);
    }
    fn watchdog_ping(&self) {
        self.push(Notification::Watchdog);
    }
    fn status(&self, text: &str) {
        self.push(Notification::Status(text.to_string()));
    }
    fn stopping(&self) {
        self.push(Notification::Stopping);
    }
    fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }
}
