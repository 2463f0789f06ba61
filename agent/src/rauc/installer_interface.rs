//! The one definition of RAUC's `de.pengutronix.rauc.Installer` D-Bus
//! interface that the agent uses. zbus generates the client proxy from this
//! trait; nothing else in the agent spells a RAUC method name.
//!
//! Signatures checked against Debian's rauc 1.8 (`busctl introspect
//! de.pengutronix.rauc / de.pengutronix.rauc.Installer`):
//! `InstallBundle(sa{sv})`, `Mark(ss) -> ss`, `GetSlotStatus() -> a(sa{sv})`,
//! `GetPrimary() -> s`, properties `Operation s`, `Progress (isi)`,
//! `LastError s`, `Compatible s`, `BootSlot s`, signal `Completed(i)`.

use std::collections::HashMap;
use zbus::zvariant::{OwnedValue, Value};

/// One entry of `GetSlotStatus`: slot name (`rootfs.1`) and its properties
/// (`bootname`, `state`, `boot-status`, `class`, ...).
pub type SlotStatus = (String, HashMap<String, OwnedValue>);

#[zbus::proxy(
    interface = "de.pengutronix.rauc.Installer",
    default_service = "de.pengutronix.rauc",
    default_path = "/",
    gen_blocking = false
)]
pub trait Installer {
    /// Starts an installation in the background; the outcome arrives as the
    /// `Completed` signal (0 = success) with details in `LastError`.
    fn install_bundle(&self, source: &str, args: HashMap<&str, Value<'_>>) -> zbus::Result<()>;

    /// `state` is `good`, `bad` or `active`; `slot_identifier` is `booted`,
    /// `other` or a slot name. Returns (slot name, message).
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;

    fn get_slot_status(&self) -> zbus::Result<Vec<SlotStatus>>;

    /// Slot name the bootloader will boot next.
    fn get_primary(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;

    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;

    /// (percentage, message, nesting depth)
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;

    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn compatible(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;
}
