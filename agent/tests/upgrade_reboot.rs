//! The logind reboot call, made against a stand-in `org.freedesktop.login1`
//! service on a private bus (rebooting the test host is not an option): it
//! proves the bus name, object path, interface, method and argument.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use harmony_agent::reboot::{LogindReboot, Reboot};
use harmony_testkit::dbus::DbusDaemon;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone)]
struct FakeLogind {
    calls: Arc<Mutex<Vec<bool>>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogind {
    fn reboot(&self, interactive: bool) {
        self.calls.lock().unwrap().push(interactive);
    }
}

#[tokio::test]
async fn reboot_asks_logind_non_interactively() {
    let bus = DbusDaemon::start();
    let logind = FakeLogind::default();
    let _server = zbus::connection::Builder::address(bus.address().as_str())
        .unwrap()
        .name("org.freedesktop.login1")
        .unwrap()
        .serve_at("/org/freedesktop/login1", logind.clone())
        .unwrap()
        .build()
        .await
        .unwrap();
    LogindReboot { address: Some(bus.address()) }.reboot().await.unwrap();
    assert_eq!(*logind.calls.lock().unwrap(), vec![false]);
}

#[tokio::test]
async fn no_logind_is_an_error_not_a_hang() {
    let bus = DbusDaemon::start();
    let err = LogindReboot { address: Some(bus.address()) }.reboot().await.unwrap_err();
    assert!(err.to_string().contains("login1"), "{err}");
}
