//! On start, the upgrade record is checked against what RAUC reports about
//! the slots. The record says what the agent did (committed slot B); only
//! the bootloader's state says what the device will really run. When the
//! boot state is lost or torn after mark-good, or U-Boot leaves a committed
//! slot that stopped booting, the two disagree, and the heartbeat must say
//! so instead of repeating `committed`. Pure: the RAUC adapter reads the
//! facts (`GetSlotStatus`, `GetPrimary`), this decides.

use harmony_protocol::upgrade::BootMismatch;
use harmony_protocol::{FailureReason, UpgradePhase};
use std::collections::BTreeMap;

/// RAUC's view of the slots when the agent started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotFacts {
    /// Bootname the next boot goes to (`GetPrimary`); `None` when RAUC
    /// could not name one.
    pub primary: Option<String>,
    /// `boot-status` (`good`/`bad`) per bootname, from `GetSlotStatus`.
    pub boot_status: BTreeMap<String, String>,
}

/// Phases in which nothing is in flight, so the record alone states which
/// slot the device should run. In-flight phases (and a failed upgrade
/// reboot, whose other slot is primary on purpose) have their own rules in
/// the state machine.
pub fn applies_to(phase: &UpgradePhase) -> bool {
    match phase {
        UpgradePhase::Idle
        | UpgradePhase::Committed
        | UpgradePhase::Refused { .. }
        | UpgradePhase::RolledBack { .. } => true,
        UpgradePhase::Failed { reason } => !matches!(reason, FailureReason::RebootFailed { .. }),
        _ => false,
    }
}

/// What disagrees between the record and RAUC, most serious first.
/// `committed_slot` is the slot the record says was committed (only for
/// phase `Committed`).
pub fn check(committed_slot: Option<&str>, booted: &str, slots: &SlotFacts) -> Option<BootMismatch> {
    if let Some(committed) = committed_slot {
        if committed != booted {
            return Some(BootMismatch::NotOnCommittedSlot {
                committed: committed.to_string(),
                booted: booted.to_string(),
            });
        }
    }
    if let Some(status) = slots.boot_status.get(booted) {
        if status != "good" {
            return Some(BootMismatch::BootedSlotNotGood { slot: booted.to_string(), boot_status: status.clone() });
        }
    }
    match slots.primary.as_deref() {
        Some(primary) if primary != booted => {
            Some(BootMismatch::BootedSlotNotPrimary { booted: booted.to_string(), primary: primary.to_string() })
        }
        // Unknown primary (RAUC could not say): nothing to compare.
        _ => None,
    }
}
