//! A real `rauc service` on a private bus, with two image-file slots (A, B)
//! and the test boot backend (`data/boot-backend.sh`) keeping U-Boot-like
//! boot state in a file. `reboot()` restarts the service the way a device
//! reboot would look to RAUC: the backend picks the slot to boot, spending
//! one try, and RAUC is told it booted that slot.

use crate::dbus::DbusDaemon;
use crate::rauc_bundle::TestCa;
use crate::tools::{find_tool, repo_root};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TEST_COMPATIBLE: &str = "harmony-test-board";
const SLOT_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct RaucService {
    pub bus: DbusDaemon,
    child: Option<Child>,
    dir: tempfile::TempDir,
    booted: String,
}

impl RaucService {
    /// Start with a keyring that trusts `ca`, booted from slot A.
    pub fn start(ca: &TestCa) -> Self {
        Self::start_with_handlers(ca, "")
    }

    /// Like `start`, with extra `[handlers]` lines in system.conf (for
    /// example `pre-install=/path/hook` for a hook that counts its runs).
    pub fn start_with_handlers(ca: &TestCa, extra_handlers: &str) -> Self {
        let bus = DbusDaemon::start();
        let dir = tempfile::tempdir().expect("tempdir for rauc");
        for slot in ["a", "b"] {
            let f = std::fs::File::create(dir.path().join(format!("slot-{slot}.img"))).expect("slot image");
            f.set_len(SLOT_BYTES).expect("size slot image");
        }
        std::fs::create_dir_all(dir.path().join("data")).expect("rauc data dir");
        std::fs::create_dir_all(dir.path().join("mnt")).expect("rauc mount prefix");
        let conf = format!(
            // Own mount prefix: RAUC's default (/mnt/rauc) is shared, and
            // parallel tests would install each other's bundles.
            "[system]\ncompatible={TEST_COMPATIBLE}\nbootloader=custom\ndata-directory={data}\nmountprefix={mnt}\n\n\
             [keyring]\npath={keyring}\n\n\
             [handlers]\nbootloader-custom-backend={backend}\n{extra_handlers}\n\n\
             [slot.rootfs.0]\ndevice={a}\ntype=raw\nbootname=A\n\n\
             [slot.rootfs.1]\ndevice={b}\ntype=raw\nbootname=B\n",
            data = dir.path().join("data").display(),
            mnt = dir.path().join("mnt").display(),
            keyring = ca.cert.display(),
            backend = Self::backend_script().display(),
            a = dir.path().join("slot-a.img").display(),
            b = dir.path().join("slot-b.img").display(),
        );
        std::fs::write(dir.path().join("system.conf"), conf).expect("system.conf");
        let mut service = Self { bus, child: None, dir, booted: String::new() };
        let first = service.backend(&["simulate-boot"]);
        service.spawn(&first);
        service.backend(&["confirm"]);
        service
    }

    pub fn backend_script() -> PathBuf {
        repo_root().join("testkit/data/boot-backend.sh")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("boot-state")
    }

    pub fn system_conf(&self) -> PathBuf {
        self.dir.path().join("system.conf")
    }

    pub fn slot_image(&self, bootname: &str) -> PathBuf {
        self.dir.path().join(format!("slot-{}.img", bootname.to_ascii_lowercase()))
    }

    pub fn address(&self) -> String {
        self.bus.address()
    }

    pub fn booted(&self) -> &str {
        &self.booted
    }

    /// Run the boot backend with this service's state file.
    pub fn backend(&self, args: &[&str]) -> String {
        let out = Command::new(Self::backend_script())
            .args(args)
            .env("HARMONY_BOOT_STATE", self.state_file())
            .output()
            .expect("run boot backend");
        assert!(out.status.success(), "boot backend {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The raw boot state file (BOOT_ORDER=..., BOOT_A_LEFT=...).
    pub fn boot_state(&self) -> String {
        std::fs::read_to_string(self.state_file()).unwrap_or_default()
    }

    /// `rauc status --detailed --output-format=json` against this service.
    pub fn status_json(&self) -> String {
        let out = self.rauc_cli(&["status", "--detailed", "--output-format=json"]);
        assert!(out.status.success(), "rauc status: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// RAUC's `Operation` property (`idle`, `installing`), read over D-Bus
    /// with dbus-send.
    pub fn operation(&self) -> String {
        let out = Command::new(find_tool("dbus-send"))
            .arg(format!("--bus={}", self.address()))
            .args([
                "--print-reply",
                "--dest=de.pengutronix.rauc",
                "/",
                "org.freedesktop.DBus.Properties.Get",
                "string:de.pengutronix.rauc.Installer",
                "string:Operation",
            ])
            .output()
            .expect("run dbus-send");
        assert!(out.status.success(), "Operation: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        text.split('"').nth(1).unwrap_or_default().to_string()
    }

    pub fn rauc_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(find_tool("rauc"))
            .arg(format!("--conf={}", self.system_conf().display()))
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", self.address())
            .env("DBUS_STARTER_BUS_TYPE", "session")
            .env("HARMONY_BOOT_STATE", self.state_file())
            .output()
            .expect("run rauc")
    }

    /// Power-cycle as RAUC sees it: stop the service, let the backend choose
    /// and count the boot, start the service booted from that slot, confirm
    /// the boot (a committed slot's unconfirmed count goes back to 0).
    pub fn reboot(&mut self) -> String {
        self.stop();
        let slot = self.backend(&["simulate-boot"]);
        self.spawn(&slot);
        // The system came up: harmony-boot-confirm.service's part.
        self.backend(&["confirm"]);
        slot
    }

    fn spawn(&mut self, boot_slot: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rauc.log"))
            .expect("rauc log");
        let child = Command::new(find_tool("rauc"))
            .arg("service")
            .arg(format!("--conf={}", self.system_conf().display()))
            .arg(format!("--override-boot-slot={boot_slot}"))
            .env("DBUS_SESSION_BUS_ADDRESS", self.address())
            .env("DBUS_STARTER_BUS_TYPE", "session")
            .env("HARMONY_BOOT_STATE", self.state_file())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn rauc service");
        self.child = Some(child);
        self.booted = boot_slot.to_string();
        self.wait_on_bus();
    }

    fn wait_on_bus(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("rauc service exited with {status}: {}", self.log());
                }
            }
            // dbus-send ships with the dbus package (busctl would need systemd).
            let out = Command::new(find_tool("dbus-send"))
                .arg(format!("--bus={}", self.address()))
                .args([
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:de.pengutronix.rauc",
                ])
                .output();
            if out.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("boolean true")) {
                return;
            }
            assert!(Instant::now() < deadline, "rauc service not on the bus within 20 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rauc.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RaucService {
    fn drop(&mut self) {
        self.stop();
    }
}
