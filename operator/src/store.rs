//! Reading and writing the operator's durable state in its KV bucket.

use crate::coordinator::State;
use crate::error::{Error, Result};
use crate::model::{keys, BundleRecord, Job, Rollout};
use async_nats::jetstream::kv;
use futures::StreamExt;
use harmony_protocol::DeviceId;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Every live entry of a bucket whose key starts with `prefix` (one pass over
/// the bucket's last values; returns at once for an empty bucket).
pub async fn read_prefix(store: &kv::Store, prefix: &str) -> Result<Vec<kv::Entry>> {
    // Fresh stream info: `kv::Store::status()` answers from the info cached
    // when the store was opened, so a key written since (by this process or
    // another operator) would be missed and an empty bucket never noticed.
    let info = store.stream.get_info().await.map_err(|e| Error::Nats(format!("stream info: {e}")))?;
    if info.state.messages == 0 {
        // A watch on an empty bucket would wait forever for its first entry.
        return Ok(Vec::new());
    }
    let mut watch = store.watch_with_history(">").await.map_err(Error::nats)?;
    let mut out = Vec::new();
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(Error::nats)?;
        let last = entry.delta == 0;
        if entry.operation == kv::Operation::Put && entry.key.starts_with(prefix) {
            out.push(entry);
        }
        if last {
            break;
        }
    }
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(entry: &kv::Entry) -> Result<T> {
    serde_json::from_slice(&entry.value).map_err(|e| Error::Corrupt { key: entry.key.clone(), detail: e.to_string() })
}

pub async fn put_json<T: Serialize>(store: &kv::Store, key: &str, value: &T) -> Result<u64> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Corrupt { key: key.into(), detail: e.to_string() })?;
    store.put(key, bytes.into()).await.map_err(|e| Error::Nats(format!("put {key}: {e}")))
}

pub async fn get_json<T: DeserializeOwned>(store: &kv::Store, key: &str) -> Result<Option<T>> {
    match store.get(key).await.map_err(|e| Error::Nats(format!("get {key}: {e}")))? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt { key: key.into(), detail: e.to_string() }),
    }
}

/// Loads rollouts, jobs and offer sequence numbers.
pub async fn load_state(store: &kv::Store) -> Result<State> {
    let mut state = State::default();
    for entry in read_prefix(store, "").await? {
        if entry.key.starts_with("rollout.") {
            let r: Rollout = decode(&entry)?;
            state.rollouts.insert(r.id.clone(), r);
        } else if entry.key.starts_with("job.") {
            let j: Job = decode(&entry)?;
            state.jobs.insert(j.device.clone(), j);
        } else if let Some(dev) = entry.key.strip_prefix("seq.") {
            let seq: u64 = decode(&entry)?;
            if let Ok(id) = DeviceId::new(dev) {
                state.seqs.insert(id, seq);
            }
        }
    }
    Ok(state)
}

pub async fn save_job(store: &kv::Store, job: &Job) -> Result<()> {
    put_json(store, &keys::job(&job.device), job).await.map(drop)
}

pub async fn save_seq(store: &kv::Store, device: &DeviceId, seq: u64) -> Result<()> {
    put_json(store, &keys::seq(device), &seq).await.map(drop)
}

pub async fn save_rollout(store: &kv::Store, r: &Rollout) -> Result<()> {
    put_json(store, &keys::rollout(&r.id), r).await.map(drop)
}

pub async fn bundles(store: &kv::Store) -> Result<Vec<BundleRecord>> {
    read_prefix(store, "bundle.").await?.iter().map(decode).collect()
}

pub async fn rollouts(store: &kv::Store) -> Result<Vec<Rollout>> {
    read_prefix(store, "rollout.").await?.iter().map(decode).collect()
}

pub async fn jobs(store: &kv::Store) -> Result<Vec<Job>> {
    read_prefix(store, "job.").await?.iter().map(decode).collect()
}
