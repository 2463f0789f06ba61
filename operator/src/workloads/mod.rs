//! Workloads (issue #15), the operator side: a person's TOML manifest file
//! becomes a [`WorkloadSpec`] ([`file`]), its large contents go to the
//! object store ([`objects`]), and each selected device gets it as its next
//! signed manifest generation ([`desired`]). What devices report back is
//! read into [`DeviceWorkloads`] ([`view`]) for the CLI, `devices show` and
//! the dashboard. The wire types are `harmony_protocol::workload`'s.
//!
//! Applying and removing go through [`crate::fleet::FleetService`], which
//! selects the devices and audits every write; [`cli`] is the thin
//! command-line layer over it.

pub mod cli;
pub mod desired;
pub mod file;
pub mod objects;
pub mod view;

pub use desired::{ApplyReport, DeviceOutcome, Outcome};
pub use view::{Convergence, DeviceWorkloads};

use harmony_protocol::time::UnixMillis;
use harmony_protocol::workload::{AgentManifest, ManifestRefusal, Resource};
use harmony_protocol::{DeviceId, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What to give every selected device: the manifest without its per-device
/// fields (device, generation, time), and the local files its object
/// references are uploaded from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub gate_upgrades: bool,
    pub resources: Vec<Resource>,
    /// Uploaded (when not already stored) before any manifest is written,
    /// so no device is told about an object it cannot fetch.
    #[serde(default)]
    pub objects: Vec<LocalObject>,
}

/// A local file to store in the workload object store under its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalObject {
    /// Lower-case hex SHA-256 of the content: the object's name.
    pub sha256: String,
    pub size: u64,
    pub path: PathBuf,
}

impl WorkloadSpec {
    /// No resources: the device deletes everything it manages. Deleting the
    /// key instead would tell it nothing.
    pub fn empty() -> Self {
        Self { gate_upgrades: true, resources: Vec::new(), objects: Vec::new() }
    }

    /// The manifest `device` gets at `generation`.
    pub fn manifest_for(&self, device: &DeviceId, generation: u64, issued_at: UnixMillis) -> AgentManifest {
        AgentManifest {
            schema: SCHEMA_VERSION,
            device_id: device.clone(),
            generation,
            issued_at,
            gate_upgrades: self.gate_upgrades,
            resources: self.resources.clone(),
        }
    }

    /// Every check a device makes without its own configuration, so the
    /// operator never signs what every device would refuse. The device id
    /// and generation are bound later and are not what is checked here.
    pub fn check(&self) -> Result<(), ManifestRefusal> {
        let placeholder = DeviceId::new("check").map_err(|e| ManifestRefusal::Malformed { detail: e.to_string() })?;
        self.manifest_for(&placeholder, 1, UnixMillis(0)).check()
    }

    /// Whether `current` already asks for exactly this. Without resources
    /// the upgrade gate has nothing to wait for, so it does not count.
    pub fn same_as(&self, current: &AgentManifest) -> bool {
        current.resources == self.resources
            && (self.resources.is_empty() || current.gate_upgrades == self.gate_upgrades)
    }
}
