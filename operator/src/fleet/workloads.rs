//! Which devices a workload apply or remove reaches: only devices whose
//! operator record is active. Selectors match the operator's labels (never
//! what a device reports), and a device named on the command line that is
//! not active is a failure for that device alone.

use super::index::Index;
use super::{selector_matches, Target};
use crate::error::{Error, Result};
use crate::provision::DeviceStatus;
use crate::workloads::{Outcome, WorkloadSpec};
use harmony_protocol::DeviceId;

/// One selected device as named, and whether it may get a manifest.
pub type Selected = (String, Result<DeviceId>);

pub fn select(index: &Index, target: &Target) -> Result<Vec<Selected>> {
    let active = |id: &DeviceId| index.devices.get(id).and_then(|e| e.status) == Some(DeviceStatus::Active);
    let chosen: Vec<Selected> = match target {
        Target::Devices(names) => {
            let mut seen = std::collections::BTreeSet::new();
            names
                .iter()
                .map(|n| n.trim())
                .filter(|n| !n.is_empty() && seen.insert(n.to_string()))
                .map(|name| {
                    let device =
                        super::device_id(name).and_then(|id| match index.devices.get(&id).and_then(|e| e.status) {
                            Some(DeviceStatus::Active) => Ok(id),
                            Some(s) => Err(Error::NotActive { device: id.to_string(), status: s.as_str() }),
                            // Heard from, perhaps, but no record: not a device of this fleet's.
                            None => Err(Error::NoSuchDevice(id.to_string())),
                        });
                    (name.to_string(), device)
                })
                .collect()
        }
        Target::Selector(sel) => {
            if sel.split(',').all(|t| t.trim().is_empty()) {
                return Err(Error::Invalid("empty selector (use --all for every device)".into()));
            }
            index
                .devices
                .iter()
                .filter(|(id, e)| active(id) && e.labels.as_ref().is_some_and(|l| selector_matches(l, sel)))
                .map(|(id, _)| (id.to_string(), Ok(id.clone())))
                .collect()
        }
        Target::All => {
            index.devices.keys().filter(|id| active(id)).map(|id| (id.to_string(), Ok(id.clone()))).collect()
        }
    };
    if chosen.is_empty() {
        return Err(Error::Invalid("no devices selected".into()));
    }
    Ok(chosen)
}

/// How the audit log names a whole selection.
pub fn target_name(target: &Target) -> String {
    match target {
        Target::Devices(names) => names.join(","),
        Target::Selector(sel) => format!("selector {sel}"),
        Target::All => "all devices".into(),
    }
}

/// The audit log's detail of one device's write.
pub fn describe(spec: &WorkloadSpec, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Written { generation } if spec.resources.is_empty() => {
            format!("manifest generation {generation} (no resources)")
        }
        Outcome::Written { generation } => {
            format!("manifest generation {generation} ({} resource(s))", spec.resources.len())
        }
        Outcome::Unchanged { generation: Some(g) } => format!("unchanged at generation {g}"),
        Outcome::Unchanged { generation: None } => "unchanged (never had workloads)".into(),
        Outcome::Failed { error } => error.clone(),
    }
}
