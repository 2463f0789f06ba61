//! One device's workloads as people see them: the generation the operator
//! asked for (manifest bucket) beside what the device reports (status
//! bucket), and whether the two agree. Plain data: every string in a status
//! came from the device and must be shown as text.

use crate::bus::Buckets;
use crate::error::{Error, Result};
use crate::store;
use async_nats::jetstream::kv;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::workload::{AgentManifest, AgentStatus, ResourceState};
use harmony_protocol::{DeviceId, SignedEnvelope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a device stands with its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convergence {
    /// The desired generation is applied and every resource is ready.
    Converged,
    /// The desired generation is being applied.
    Converging,
    /// The device reports an older generation (or none): it has not taken
    /// the manifest yet, or refused it.
    Behind,
    /// A manifest, but no believable status from the device.
    Unreported,
    /// The device reports workloads, but has no manifest.
    NoManifest,
}

impl Convergence {
    pub fn name(self) -> &'static str {
        match self {
            Self::Converged => "converged",
            Self::Converging => "converging",
            Self::Behind => "behind",
            Self::Unreported => "unreported",
            Self::NoManifest => "no_manifest",
        }
    }
}

/// The manifest the operator last wrote for a device, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub generation: u64,
    pub issued_at: UnixMillis,
    pub gate_upgrades: bool,
    /// Id and kind of each resource, in manifest order.
    pub resources: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRef {
    pub id: String,
    pub kind: String,
}

/// One resource: what was asked for and what the device says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRow {
    pub id: String,
    /// `None`: reported by the device but not in the manifest (being
    /// removed, or the status is of an older generation).
    pub kind: Option<String>,
    /// `None`: in the manifest, not reported yet.
    pub state: Option<ResourceState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceWorkloads {
    pub device_id: DeviceId,
    pub desired: Option<Desired>,
    /// Why the stored manifest could not be read.
    pub desired_error: Option<String>,
    /// The device's own report (hostile text).
    pub status: Option<AgentStatus>,
    /// Why the stored status is not believed (undecodable, another device's).
    pub status_error: Option<String>,
    pub convergence: Convergence,
    /// Whether the status is from the boot the device last sent a heartbeat
    /// from (`None`: no status or no heartbeat). After an OS upgrade, a
    /// status of the earlier boot says nothing about the new OS.
    pub current_boot: Option<bool>,
}

impl DeviceWorkloads {
    /// From the raw values under the device's keys.
    pub fn build(
        device: &DeviceId,
        manifest: Option<&[u8]>,
        status: Option<&[u8]>,
        heartbeat_boot: Option<&str>,
    ) -> Self {
        let (desired, desired_error) = match manifest.map(stored_manifest) {
            None => (None, None),
            Some(Ok(m)) => (Some(m), None),
            Some(Err(e)) => (None, Some(e)),
        };
        let (status, status_error) = match status.map(|s| believed_status(device, s)) {
            None => (None, None),
            Some(Ok(s)) => (Some(s), None),
            Some(Err(e)) => (None, Some(e)),
        };
        let convergence = match (&desired, &status) {
            (None, _) if desired_error.is_none() && status.is_some() => Convergence::NoManifest,
            (_, None) => Convergence::Unreported,
            (d, Some(s)) => {
                let wanted = d.as_ref().map_or(0, |d| d.generation);
                match s.observed_generation {
                    Some(seen) if seen >= wanted && s.conditions.converged => Convergence::Converged,
                    Some(seen) if seen >= wanted => Convergence::Converging,
                    _ => Convergence::Behind,
                }
            }
        };
        let current_boot = status.as_ref().zip(heartbeat_boot).map(|(s, boot)| s.boot_id == boot);
        Self { device_id: device.clone(), desired, desired_error, status, status_error, convergence, current_boot }
    }

    /// Resources per state name (`ready`, `failed`, ...), as reported.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for state in self.status.iter().flat_map(|s| s.resources.values()) {
            *out.entry(state.name()).or_insert(0) += 1;
        }
        out
    }

    /// `2 ready, 1 failed`
    pub fn counts_text(&self) -> String {
        self.counts().iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", ")
    }

    /// The manifest's resources in order, then any the device reports
    /// beyond them.
    pub fn rows(&self) -> Vec<ResourceRow> {
        let reported = self.status.as_ref().map(|s| &s.resources);
        let state = |id: &str| reported.and_then(|r| r.get(id)).cloned();
        let mut rows: Vec<ResourceRow> = self
            .desired
            .iter()
            .flat_map(|d| &d.resources)
            .map(|r| ResourceRow { id: r.id.clone(), kind: Some(r.kind.clone()), state: state(&r.id) })
            .collect();
        for (id, s) in reported.into_iter().flatten() {
            if !rows.iter().any(|r| &r.id == id) {
                rows.push(ResourceRow { id: id.clone(), kind: None, state: Some(s.clone()) });
            }
        }
        rows
    }

    /// The refusal of the latest manifest the device received, as text.
    pub fn refused(&self) -> Option<String> {
        let r = self.status.as_ref()?.conditions.refused.as_ref()?;
        Some(match r.generation {
            Some(g) => format!("generation {g}: {}", r.reason),
            None => r.reason.to_string(),
        })
    }
}

/// When a failed resource is tried again: `retry in 12 s`, `retry due`.
pub fn retry_text(retry_after: UnixMillis, now: UnixMillis) -> String {
    match retry_after.0.checked_sub(now.0) {
        Some(wait) if wait > 0 => format!("retry in {} s", wait.div_ceil(1000)),
        _ => "retry due".into(),
    }
}

/// A status value is believed only if it decodes and names the device of
/// its key (the device can write only its own key, never the payload's).
pub fn believed_status(device: &DeviceId, value: &[u8]) -> std::result::Result<AgentStatus, String> {
    let status: AgentStatus = serde_json::from_slice(value).map_err(|e| format!("undecodable status: {e}"))?;
    if status.device_id != *device {
        return Err(format!("status under key {device} names device {}", status.device_id));
    }
    Ok(status)
}

fn stored_manifest(value: &[u8]) -> std::result::Result<Desired, String> {
    let env = SignedEnvelope::decode(value).map_err(|e| format!("not a signed manifest: {e}"))?;
    let m = AgentManifest::parse(&env.payload).map_err(|e| e.to_string())?;
    Ok(Desired {
        generation: m.generation,
        issued_at: m.issued_at,
        gate_upgrades: m.gate_upgrades,
        resources: m.resources.iter().map(|r| ResourceRef { id: r.id.clone(), kind: r.spec.kind().into() }).collect(),
    })
}

/// One device's workloads; `None` when it has neither a manifest nor a status.
pub async fn read_device(b: &Buckets, device: &DeviceId, boot: Option<&str>) -> Result<Option<DeviceWorkloads>> {
    let (manifests, statuses) = (b.manifests().await?, b.workload_statuses().await?);
    let manifest =
        manifests.get(device.as_str()).await.map_err(|e| Error::Nats(format!("manifest of {device}: {e}")))?;
    let status = statuses.get(device.as_str()).await.map_err(|e| Error::Nats(format!("status of {device}: {e}")))?;
    if manifest.is_none() && status.is_none() {
        return Ok(None);
    }
    Ok(Some(DeviceWorkloads::build(device, manifest.as_deref(), status.as_deref(), boot)))
}

/// Every device with a manifest or a status, by id. `boot_of` gives the
/// boot id of a device's last believable heartbeat.
pub async fn read_all(b: &Buckets, boot_of: impl Fn(&DeviceId) -> Option<String>) -> Result<Vec<DeviceWorkloads>> {
    let mut values: BTreeMap<DeviceId, (Option<kv::Entry>, Option<kv::Entry>)> = BTreeMap::new();
    for entry in store::read_prefix(&b.manifests().await?, "").await? {
        if let Ok(id) = DeviceId::new(entry.key.as_str()) {
            values.entry(id).or_default().0 = Some(entry);
        }
    }
    for entry in store::read_prefix(&b.workload_statuses().await?, "").await? {
        match DeviceId::new(entry.key.as_str()) {
            Ok(id) => values.entry(id).or_default().1 = Some(entry),
            Err(_) => log::warn!("ignoring workload status under key {:?}: not a device id", entry.key),
        }
    }
    Ok(values
        .iter()
        .map(|(id, (m, s))| {
            let boot = boot_of(id);
            DeviceWorkloads::build(
                id,
                m.as_ref().map(|e| &e.value[..]),
                s.as_ref().map(|e| &e.value[..]),
                boot.as_deref(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use harmony_protocol::workload::{Conditions, ManifestRefusal, RefusedManifest};

    fn dev() -> DeviceId {
        DeviceId::new("pi-1").unwrap()
    }

    fn manifest(generation: u64) -> Vec<u8> {
        let m = serde_json::json!({"schema": 1, "device_id": "pi-1", "generation": generation, "issued_at": 1,
            "resources": [{"id": "motd", "kind": "file", "path": "/data/w/motd", "content": {"inline": "x"}},
                          {"id": "web", "kind": "systemd_unit", "name": "web.service", "content": ""}]});
        SignedEnvelope::sign(&SigningKey::from_bytes(&[3; 32]), &m).unwrap().encode()
    }

    fn status(observed: Option<u64>, converged: bool) -> AgentStatus {
        AgentStatus {
            schema: 1,
            device_id: dev(),
            observed_generation: observed,
            boot_id: "boot-1".into(),
            resources: BTreeMap::from([
                ("motd".into(), ResourceState::Ready { since: UnixMillis(5), details: String::new() }),
                ("old".into(), ResourceState::Pending),
            ]),
            conditions: Conditions { converged, refused: None },
            updated_at: UnixMillis(6),
        }
    }

    fn build(m: Option<u64>, s: Option<&AgentStatus>) -> DeviceWorkloads {
        let s = s.map(|s| serde_json::to_vec(s).unwrap());
        DeviceWorkloads::build(&dev(), m.map(manifest).as_deref(), s.as_deref(), Some("boot-1"))
    }

    #[test]
    fn convergence_table() {
        assert_eq!(build(Some(2), None).convergence, Convergence::Unreported);
        assert_eq!(build(Some(2), Some(&status(Some(2), true))).convergence, Convergence::Converged);
        assert_eq!(build(Some(2), Some(&status(Some(2), false))).convergence, Convergence::Converging);
        assert_eq!(build(Some(3), Some(&status(Some(2), true))).convergence, Convergence::Behind);
        assert_eq!(build(Some(3), Some(&status(None, false))).convergence, Convergence::Behind);
        assert_eq!(build(None, Some(&status(Some(2), true))).convergence, Convergence::NoManifest);
    }

    #[test]
    fn rows_counts_and_hostile_statuses() {
        let mut s = status(Some(1), false);
        s.conditions.refused = Some(RefusedManifest {
            generation: Some(2),
            reason: ManifestRefusal::UnknownResource { id: "vm".into(), kind: "vm".into() },
            at: UnixMillis(7),
        });
        let w = build(Some(2), Some(&s));
        let rows = w.rows();
        let rows: Vec<(&str, Option<&str>, Option<&str>)> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.kind.as_deref(), r.state.as_ref().map(ResourceState::name)))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("motd", Some("file"), Some("ready")),
                ("web", Some("systemd_unit"), None),
                ("old", None, Some("pending"))
            ]
        );
        assert_eq!(w.counts_text(), "1 pending, 1 ready");
        assert_eq!(w.refused().unwrap(), "generation 2: resource vm: kind \"vm\" is unknown to this agent");
        assert_eq!(w.current_boot, Some(true));

        let mut other = status(Some(1), true);
        other.device_id = DeviceId::new("pi-2").unwrap();
        let w = build(Some(2), Some(&other));
        assert!(w.status.is_none() && w.status_error.unwrap().contains("pi-2"));
        let w = DeviceWorkloads::build(&dev(), Some(b"garbage"), Some(b"{"), None);
        assert!(w.desired_error.is_some() && w.status_error.is_some());
        assert_eq!(w.convergence, Convergence::Unreported);
    }
}
