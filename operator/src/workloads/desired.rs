//! Writing one device's desired manifest: the next generation, bound to the
//! device, signed with the fleet key like upgrade offers, and written with
//! compare-and-set on the key's revision, so two operators applying at once
//! can never both write one generation (the loser reads again and takes the
//! next one).

use super::view::believed_status;
use super::WorkloadSpec;
use crate::bus::MANIFEST_MAX_VALUE_BYTES;
use crate::error::{Error, Result};
use async_nats::jetstream::kv;
use ed25519_dalek::SigningKey;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::workload::{AgentManifest, MAX_MANIFEST_BYTES};
use harmony_protocol::{DeviceId, SignedEnvelope, TrustedKeys};
use serde::{Deserialize, Serialize};

/// Compare-and-set attempts before giving up on a key that keeps changing.
/// Every lost attempt means another writer won, so this many concurrent
/// applies to one device still all succeed.
const ATTEMPTS: usize = 16;

/// What happened at one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The manifest was written at this generation.
    Written { generation: u64 },
    /// The device's manifest already asks for exactly this and was left
    /// alone (`None`: removing from a device that never had workloads).
    Unchanged { generation: Option<u64> },
    /// Not written; the other devices went ahead.
    Failed { error: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOutcome {
    /// As named on the command line (it may not be a valid device id).
    pub device: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Every selected device's outcome, in the order selected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub devices: Vec<DeviceOutcome>,
}

impl ApplyReport {
    pub fn failed(&self) -> usize {
        self.devices.iter().filter(|d| matches!(d.outcome, Outcome::Failed { .. })).count()
    }
}

/// The buckets and key a write needs.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub manifests: &'a kv::Store,
    pub statuses: &'a kv::Store,
    pub key: &'a SigningKey,
}

/// Writes `spec` as `device`'s next manifest, unless its current one
/// already asks for exactly this. Never [`Outcome::Failed`]: errors are
/// returned.
pub async fn write(t: Target<'_>, device: &DeviceId, spec: &WorkloadSpec, now: UnixMillis) -> Result<Outcome> {
    let key = device.as_str();
    // The device refuses a generation below the one it applied and ignores
    // the one it has: after the manifest bucket lost its history (recreated,
    // purged) numbering must still continue above what the device reports.
    let observed = observed_generation(t.statuses, device).await?;
    let mut trusted = TrustedKeys::new();
    trusted.insert(t.key.verifying_key());
    for _ in 0..ATTEMPTS {
        let entry = t.manifests.entry(key).await.map_err(|e| Error::Nats(format!("manifest of {device}: {e}")))?;
        let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
        if let Some(current) = live.and_then(|e| verified(&trusted, &e.value)) {
            // Only one signed by the current key counts: after a key
            // rotation, applying again re-signs.
            if current.device_id == *device && current.generation >= observed.unwrap_or(0) && spec.same_as(&current) {
                return Ok(Outcome::Unchanged { generation: Some(current.generation) });
            }
        }
        if entry.is_none() && observed.is_none() && spec.resources.is_empty() {
            return Ok(Outcome::Unchanged { generation: None });
        }
        let last = match (&entry, live) {
            (_, Some(e)) => generation_of(&e.value),
            (Some(_), None) => newest_in_history(t.manifests, key).await?,
            (None, _) => None,
        };
        let generation = last
            .max(observed)
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| Error::Invalid(format!("{device}: no generation after {}", u64::MAX)))?;
        let bytes = signed(t.key, &spec.manifest_for(device, generation, now))?;
        let expected = entry.as_ref().map_or(0, |e| e.revision);
        match t.manifests.update(key, bytes.into(), expected).await {
            Ok(_) => {
                log::info!("workloads: {device} manifest generation {generation} written");
                return Ok(Outcome::Written { generation });
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                log::debug!(
                    "workloads: {device} manifest changed while writing generation {generation}; reading again"
                );
            }
            Err(e) => return Err(Error::Nats(format!("write manifest of {device}: {e}"))),
        }
    }
    Err(Error::Nats(format!("the manifest of {device} keeps changing; try again")))
}

/// The signed, encoded manifest, checked as the device will check it.
fn signed(key: &SigningKey, manifest: &AgentManifest) -> Result<Vec<u8>> {
    let device = &manifest.device_id;
    manifest.check().map_err(|e| Error::Invalid(format!("{device}: {e}")))?;
    let env = SignedEnvelope::sign(key, manifest).map_err(|e| Error::Invalid(e.to_string()))?;
    if env.payload.len() > MAX_MANIFEST_BYTES {
        return Err(Error::Invalid(format!(
            "the manifest is {} bytes; devices take at most {MAX_MANIFEST_BYTES} (move large contents to content_file)",
            env.payload.len()
        )));
    }
    let bytes = env.encode();
    if bytes.len() > MANIFEST_MAX_VALUE_BYTES {
        return Err(Error::Invalid(format!(
            "the signed manifest is {} bytes; the bucket takes at most {MANIFEST_MAX_VALUE_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The manifest in `value` if it is signed by the current key and parses.
fn verified(trusted: &TrustedKeys, value: &[u8]) -> Option<AgentManifest> {
    let env = SignedEnvelope::decode(value).ok()?;
    trusted.verify::<serde::de::IgnoredAny>(&env).ok()?;
    AgentManifest::parse(&env.payload).ok()
}

/// The generation a stored manifest claims, read leniently: one this
/// operator cannot parse (a newer operator's) still holds its number.
pub fn generation_of(value: &[u8]) -> Option<u64> {
    let env = SignedEnvelope::decode(value).ok()?;
    serde_json::from_str::<serde_json::Value>(&env.payload).ok()?.get("generation")?.as_u64()
}

/// The highest generation among a deleted key's kept revisions.
async fn newest_in_history(manifests: &kv::Store, key: &str) -> Result<Option<u64>> {
    use futures::StreamExt;
    let mut history = manifests.history(key).await.map_err(|e| Error::Nats(format!("history of {key}: {e}")))?;
    let mut newest = None;
    while let Some(entry) = history.next().await {
        let entry = entry.map_err(|e| Error::Nats(format!("history of {key}: {e}")))?;
        newest = newest.max(generation_of(&entry.value));
    }
    Ok(newest)
}

/// The generation the device says it applied, if its status is believable.
async fn observed_generation(statuses: &kv::Store, device: &DeviceId) -> Result<Option<u64>> {
    let value = statuses.get(device.as_str()).await.map_err(|e| Error::Nats(format!("status of {device}: {e}")))?;
    Ok(value.and_then(|v| believed_status(device, &v).ok()).and_then(|s| s.observed_generation))
}
