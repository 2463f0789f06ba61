//! A private `dbus-daemon` on a unix socket in a temp dir, killed on drop.
//! Services started against it must be told it is a session bus (see
//! `RaucService`): RAUC 1.8 otherwise insists on the system bus.

use crate::tools::find_tool;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct DbusDaemon {
    pid: i32,
    dir: tempfile::TempDir,
}

impl DbusDaemon {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir for dbus");
        let socket = dir.path().join("bus.sock");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write bus config");
        let out = Command::new(find_tool("dbus-daemon"))
            .arg(format!("--config-file={}", conf.display()))
            .arg("--fork")
            .arg("--print-pid")
            .output()
            .expect("run dbus-daemon");
        assert!(out.status.success(), "dbus-daemon: {}", String::from_utf8_lossy(&out.stderr));
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("dbus-daemon pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon socket {} never appeared", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { pid, dir }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bus.sock")
    }

    /// The address for `DBUS_SESSION_BUS_ADDRESS` and zbus.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket().display())
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}
