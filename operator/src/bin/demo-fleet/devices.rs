//! The demo's simulated fleet: a dozen devices at five sites, in rollout
//! order, one of which fails its install.

use harmony_operator::sim::{Behavior, SimState};
use harmony_operator::{Error, Result};
use harmony_protocol::DeviceId;

/// Version the devices run before the rollout.
pub const FROM_VERSION: &str = "1.0.0";

/// (device id, site, role, model, behavior), in rollout order: the first
/// two are the canary wave.
const FLEET: &[(&str, &str, &str, &str, Behavior)] = &[
    ("bakery-till", "bakery", "till", "pi4", Behavior::Happy),
    ("library-kiosk-1", "library", "kiosk", "pi5", Behavior::Happy),
    ("bakery-oven-display", "bakery", "display", "pi4", Behavior::Happy),
    ("school-projector-3", "school", "projector", "pi4", Behavior::FailInstall),
    ("library-kiosk-2", "library", "kiosk", "pi5", Behavior::Happy),
    ("clinic-reception", "clinic", "kiosk", "pi5", Behavior::Happy),
    ("school-hall-screen", "school", "display", "pi4", Behavior::Happy),
    ("school-office", "school", "desk", "pi5", Behavior::Happy),
    ("clinic-queue-display", "clinic", "display", "pi4", Behavior::Happy),
    ("harbour-weather", "harbour", "sensor", "pi4", Behavior::Happy),
    ("harbour-gate", "harbour", "gate", "pi5", Behavior::Happy),
    ("library-door", "library", "gate", "pi4", Behavior::Happy),
];

/// The device that fails its install, to show the rollout halting.
pub fn failing() -> &'static str {
    FLEET.iter().find(|d| d.4 == Behavior::FailInstall).map_or("", |d| d.0)
}

pub fn count() -> usize {
    FLEET.len()
}

/// The simulated devices, labelled, in rollout order.
pub fn build() -> Result<Vec<SimState>> {
    FLEET
        .iter()
        .map(|(id, site, role, model, behavior)| {
            let id = DeviceId::new(*id).map_err(|e| Error::Invalid(format!("{id}: {e}")))?;
            let mut d = SimState::new(id, FROM_VERSION, *behavior);
            d.labels.insert("site".into(), (*site).into());
            d.labels.insert("role".into(), (*role).into());
            d.labels.insert("model".into(), (*model).into());
            Ok(d)
        })
        .collect()
}
