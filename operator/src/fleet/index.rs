//! The in-memory picture of the fleet that reads answer from: the last
//! believable heartbeat, provisioning labels and current job of every
//! device, the rollouts and the bundles. Fed from KV entries (a snapshot, then
//! watch updates); every entry is checked before it is believed.

use super::{Change, Stage};
use crate::enroll::token::{TokenRecord, TOKEN_KEY_PREFIX};
use crate::model::{BundleRecord, Job, Rollout};
use crate::provision::{DeviceStatus, DeviceUser, Enrollment};
use crate::ratelimit::WarnLimiter;
use crate::registry::{stored_heartbeat, Labels, StoredHeartbeat};
use crate::store::CorruptRecord;
use async_nats::jetstream::kv;
use harmony_protocol::DeviceId;
use std::collections::BTreeMap;
use std::time::Instant;

/// What the index holds of one device.
#[derive(Debug, Clone, Default)]
pub struct DeviceEntry {
    pub heartbeat: Option<StoredHeartbeat>,
    /// Why the latest heartbeat under the device's key is not believed.
    pub heartbeat_error: Option<String>,
    /// The operator's provisioning labels (`None`: not provisioned, or its
    /// record is not active: only active devices have labels, so rollout
    /// selectors never match a pending, rejected or revoked device).
    pub labels: Option<Labels>,
    /// Its operator record's status (`None`: no record, only heard from).
    pub status: Option<DeviceStatus>,
    /// How it enrolled itself, when it did.
    pub enrollment: Option<Box<Enrollment>>,
    /// The whole record of a device that is not active (pending, rejected,
    /// revoked): shown (its labels, key), never matched.
    pub held: Option<Box<DeviceUser>>,
    /// The device's current (latest) rollout job.
    pub job: Option<Job>,
}

impl DeviceEntry {
    fn is_empty(&self) -> bool {
        self.heartbeat.is_none()
            && self.heartbeat_error.is_none()
            && self.labels.is_none()
            && self.status.is_none()
            && self.job.is_none()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Index {
    pub devices: BTreeMap<DeviceId, DeviceEntry>,
    pub rollouts: BTreeMap<String, Rollout>,
    pub bundles: BTreeMap<String, BundleRecord>,
    /// Enrollment tokens (their records; never a token's text), by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Operator records that do not decode, by key.
    pub corrupt: BTreeMap<String, CorruptRecord>,
}

/// What a device's row shows, to tell a heartbeat that changes the picture
/// from one that only moves its timestamp.
fn visible(hb: &StoredHeartbeat) -> impl PartialEq + '_ {
    (
        &hb.os_version,
        &hb.agent_version,
        &hb.booted_slot,
        &hb.boot_id,
        &hb.health,
        hb.upgrade.phase.name(),
        &hb.upgrade.boot_mismatch,
    )
}

impl Index {
    fn entry(&mut self, id: &DeviceId) -> &mut DeviceEntry {
        self.devices.entry(id.clone()).or_default()
    }

    fn prune(&mut self, id: &DeviceId) {
        if self.devices.get(id).is_some_and(DeviceEntry::is_empty) {
            self.devices.remove(id);
        }
    }

    /// Replaces every heartbeat with the entries of a fresh read.
    pub fn load_heartbeats(&mut self, entries: &[kv::Entry], warn: &mut WarnLimiter) {
        for e in self.devices.values_mut() {
            e.heartbeat = None;
            e.heartbeat_error = None;
        }
        for entry in entries {
            self.apply_heartbeat(entry, warn);
        }
        self.devices.retain(|_, e| !e.is_empty());
    }

    /// One heartbeat bucket entry. A payload that does not decode, or names
    /// another device than its key, is not believed: the device then has no
    /// heartbeat (its key's latest value is garbage) and the reason is kept.
    pub fn apply_heartbeat(&mut self, entry: &kv::Entry, warn: &mut WarnLimiter) -> Option<Change> {
        let Ok(id) = DeviceId::new(entry.key.as_str()) else {
            log::warn!("ignoring heartbeat under key {:?}: not a device id", entry.key);
            return None;
        };
        if entry.operation != kv::Operation::Put {
            let had = self.devices.get(&id).is_some_and(|e| e.heartbeat.is_some() || e.heartbeat_error.is_some());
            if let Some(e) = self.devices.get_mut(&id) {
                e.heartbeat = None;
                e.heartbeat_error = None;
            }
            self.prune(&id);
            return had.then_some(Change::Device(id));
        }
        match stored_heartbeat(entry) {
            Ok(hb) => {
                let e = self.entry(&id);
                let changed =
                    e.heartbeat_error.is_some() || e.heartbeat.as_ref().is_none_or(|old| visible(old) != visible(&hb));
                // An older revision (a replay after a newer update) never wins.
                if e.heartbeat.as_ref().is_none_or(|old| old.revision <= hb.revision) {
                    e.heartbeat = Some(hb);
                    e.heartbeat_error = None;
                }
                changed.then_some(Change::Device(id))
            }
            Err(why) => {
                if let Some(held) = warn.allow(&entry.key, Instant::now()) {
                    let more = if held > 0 { format!(" ({held} more since the last warning)") } else { String::new() };
                    log::warn!("ignoring heartbeat under key {}: {why}{more}", entry.key);
                }
                let e = self.entry(&id);
                let changed = e.heartbeat_error.as_deref() != Some(why.to_string().as_str()) || e.heartbeat.is_some();
                e.heartbeat = None;
                e.heartbeat_error = Some(why.to_string());
                changed.then_some(Change::Device(id))
            }
        }
    }

    /// Replaces everything read from the operator bucket with a fresh read.
    pub fn load_state(&mut self, entries: &[kv::Entry]) {
        for e in self.devices.values_mut() {
            e.labels = None;
            e.status = None;
            e.enrollment = None;
            e.held = None;
            e.job = None;
        }
        self.rollouts.clear();
        self.bundles.clear();
        self.tokens.clear();
        self.corrupt.clear();
        for entry in entries {
            self.apply_state(entry);
        }
        self.devices.retain(|_, e| !e.is_empty());
    }

    /// One operator bucket entry (`device.*`, `job.*`, `rollout.*`,
    /// `bundle.*`, `enroll-token.*`; other keys are not the index's business).
    pub fn apply_state(&mut self, entry: &kv::Entry) -> Vec<Change> {
        let key = entry.key.as_str();
        let put = entry.operation == kv::Operation::Put;
        let mut changes = Vec::new();
        if !put {
            self.corrupt.remove(key);
        }
        if let Some(rest) = key.strip_prefix("device.") {
            let Ok(id) = DeviceId::new(rest) else { return changes };
            let record = if put { self.decode::<DeviceUser>(entry).filter(|u| u.device == id) } else { None };
            let e = self.entry(&id);
            e.status = record.as_ref().map(|u| u.status);
            e.enrollment = record.as_ref().and_then(|u| u.enrollment.clone()).map(Box::new);
            match record {
                Some(u) if u.is_active() => {
                    e.labels = Some(u.labels);
                    e.held = None;
                }
                held => {
                    e.labels = None;
                    e.held = held.map(Box::new);
                }
            }
            self.prune(&id);
            changes.push(Change::Device(id));
        } else if let Some(rest) = key.strip_prefix("job.") {
            let Ok(id) = DeviceId::new(rest) else { return changes };
            let job = if put { self.decode::<Job>(entry).filter(|j| j.device == id) } else { None };
            let e = self.entry(&id);
            if let Some(old) = &e.job {
                changes.push(Change::Rollout(old.rollout_id.clone()));
            }
            if let Some(new) = &job {
                if changes.first() != Some(&Change::Rollout(new.rollout_id.clone())) {
                    changes.push(Change::Rollout(new.rollout_id.clone()));
                }
            }
            e.job = job;
            self.prune(&id);
            changes.push(Change::Device(id));
        } else if let Some(id) = key.strip_prefix("rollout.") {
            match put.then(|| self.decode::<Rollout>(entry)).flatten().filter(|r| r.id == id) {
                Some(r) => self.rollouts.insert(id.to_string(), r),
                None => self.rollouts.remove(id),
            };
            changes.push(Change::Rollout(id.to_string()));
        } else if let Some(id) = key.strip_prefix("bundle.") {
            match put.then(|| self.decode::<BundleRecord>(entry)).flatten().filter(|b| b.id == id) {
                Some(b) => self.bundles.insert(id.to_string(), b),
                None => self.bundles.remove(id),
            };
            changes.push(Change::Bundles);
        } else if let Some(id) = key.strip_prefix(TOKEN_KEY_PREFIX) {
            match put.then(|| self.decode::<TokenRecord>(entry)).flatten().filter(|t| t.id == id) {
                Some(t) => self.tokens.insert(id.to_string(), t),
                None => self.tokens.remove(id),
            };
            changes.push(Change::Tokens);
        }
        changes
    }

    /// Decodes an operator record; one that does not decode is remembered
    /// as corrupt (and skipped), one that does clears an earlier complaint.
    fn decode<T: serde::de::DeserializeOwned>(&mut self, entry: &kv::Entry) -> Option<T> {
        match serde_json::from_slice(&entry.value) {
            Ok(v) => {
                self.corrupt.remove(&entry.key);
                Some(v)
            }
            Err(e) => {
                log::warn!("skipping corrupt record {} (revision {}): {e}", entry.key, entry.revision);
                let record = CorruptRecord { key: entry.key.clone(), revision: entry.revision, detail: e.to_string() };
                self.corrupt.insert(entry.key.clone(), record);
                None
            }
        }
    }

    /// The current jobs of a rollout, by device.
    pub fn jobs_of<'a>(&'a self, rollout_id: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        self.devices.values().filter_map(|e| e.job.as_ref()).filter(move |j| j.rollout_id == rollout_id)
    }

    /// The stage of `device` in `rollout_id`, if its current job is of it.
    pub fn stage_in(&self, device: &DeviceId, rollout_id: &str) -> Option<Stage> {
        self.devices
            .get(device)
            .and_then(|e| e.job.as_ref())
            .filter(|j| j.rollout_id == rollout_id)
            .map(|j| Stage::of(&j.state))
    }
}
