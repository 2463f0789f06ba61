//! Reading and writing the operator's durable state in its KV bucket.
//!
//! A record that does not decode is never fatal: it is skipped with a
//! warning and reported as [`CorruptRecord`], so one bad key cannot stop the
//! operator or the CLI (issue #17, item 1). The serve loop also keeps a copy
//! of its raw bytes under `quarantine.<key>` (see [`quarantine`]).

use crate::coordinator::State;
use crate::error::{Error, Result};
use crate::model::{keys, BundleRecord, Job, Rollout};
use async_nats::jetstream::kv;
use futures::StreamExt;
use harmony_protocol::DeviceId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A KV entry that could not be decoded, as shown by the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptRecord {
    pub key: String,
    pub revision: u64,
    pub detail: String,
}

/// The decodable records of one kind and the keys that were not.
#[derive(Debug, Clone)]
pub struct Records<T> {
    pub good: Vec<T>,
    pub corrupt: Vec<CorruptRecord>,
}

/// Whether the bucket holds no message at all, from fresh stream info:
/// `kv::Store::status()` answers from the info cached when the store was
/// opened, so it would miss every key written since (by anyone).
pub async fn is_empty(store: &kv::Store) -> Result<bool> {
    let info = store.stream.get_info().await.map_err(|e| Error::Nats(format!("stream info: {e}")))?;
    Ok(info.state.messages == 0)
}

/// The bucket's newest revision, read fresh (not the info cached at open).
pub async fn last_revision(store: &kv::Store) -> Result<u64> {
    let info = store.stream.get_info().await.map_err(|e| Error::Nats(format!("stream info: {e}")))?;
    Ok(info.state.last_sequence)
}

/// Every live entry of a bucket whose key starts with `prefix` (one pass over
/// the bucket's last values; returns at once for an empty bucket).
pub async fn read_prefix(store: &kv::Store, prefix: &str) -> Result<Vec<kv::Entry>> {
    let mut out = read_latest(store).await?;
    out.retain(|e| e.operation == kv::Operation::Put && e.key.starts_with(prefix));
    Ok(out)
}

/// The last entry of every key, deletes and purges included (their
/// revision is what a compare-and-set write must expect).
pub async fn read_latest(store: &kv::Store) -> Result<Vec<kv::Entry>> {
    if is_empty(store).await? {
        // A watch on an empty bucket would wait forever for its first entry.
        return Ok(Vec::new());
    }
    let mut watch = store.watch_with_history(">").await.map_err(Error::nats)?;
    let mut out = Vec::new();
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(Error::nats)?;
        let last = entry.delta == 0;
        out.push(entry);
        if last {
            break;
        }
    }
    Ok(out)
}

/// The revision of every key in `entries`, by KV subject (what the fenced
/// writer starts from).
pub fn revisions(bucket: &str, entries: &[kv::Entry]) -> crate::writer::Revisions {
    entries.iter().map(|e| (crate::writer::kv_subject(bucket, &e.key), e.revision)).collect()
}

pub fn decode<T: DeserializeOwned>(entry: &kv::Entry) -> Result<T> {
    serde_json::from_slice(&entry.value).map_err(|e| Error::Corrupt { key: entry.key.clone(), detail: e.to_string() })
}

fn corrupt(entry: &kv::Entry, e: &serde_json::Error) -> CorruptRecord {
    log::warn!("skipping corrupt record {} (revision {}): {e}", entry.key, entry.revision);
    CorruptRecord { key: entry.key.clone(), revision: entry.revision, detail: e.to_string() }
}

/// Decodes every entry; the undecodable ones are reported, not fatal.
pub fn decode_all<T: DeserializeOwned>(entries: &[kv::Entry]) -> Records<T> {
    let mut out = Records { good: Vec::new(), corrupt: Vec::new() };
    for entry in entries {
        match serde_json::from_slice(&entry.value) {
            Ok(v) => out.good.push(v),
            Err(e) => out.corrupt.push(corrupt(entry, &e)),
        }
    }
    out
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

/// The durable state and the records that could not be read into it.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: State,
    pub corrupt: Vec<CorruptRecord>,
    /// The revision of every key read, deleted ones included: the writer
    /// writes each key only if it is still at this revision (fencing).
    pub revisions: crate::writer::Revisions,
}

/// Loads rollouts, jobs and offer sequence numbers, skipping corrupt records.
pub async fn load_state(store: &kv::Store) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    let entries = read_latest(store).await?;
    loaded.revisions = revisions(&store.name, &entries);
    for entry in entries.into_iter().filter(|e| e.operation == kv::Operation::Put) {
        let result = if entry.key.starts_with("rollout.") {
            serde_json::from_slice::<Rollout>(&entry.value).map(|r| {
                loaded.state.rollouts.insert(r.id.clone(), r);
            })
        } else if entry.key.starts_with("job.") {
            serde_json::from_slice::<Job>(&entry.value).map(|j| {
                loaded.state.jobs.insert(j.device.clone(), j);
            })
        } else if let Some(dev) = entry.key.strip_prefix("seq.") {
            serde_json::from_slice::<u64>(&entry.value).map(|seq| {
                if let Ok(id) = DeviceId::new(dev) {
                    loaded.state.seqs.insert(id, seq);
                }
            })
        } else {
            Ok(())
        };
        if let Err(e) = result {
            loaded.corrupt.push(corrupt(&entry, &e));
        }
    }
    Ok(loaded)
}

/// The raw bytes of a corrupt record, kept when the operator writes a fresh
/// record over it (a rebuilt job, say), so nothing is lost for a post-mortem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quarantined {
    pub record: CorruptRecord,
    /// The undecodable value, lossily as text.
    pub raw: String,
}

/// Copies each corrupt record to `quarantine.<key>` (once per revision).
pub async fn quarantine(store: &kv::Store, corrupt: &[CorruptRecord]) -> Result<()> {
    for c in corrupt {
        let qkey = keys::quarantine(&c.key);
        let known: Option<Quarantined> = get_json(store, &qkey).await.ok().flatten();
        if known.is_some_and(|q| q.record.revision == c.revision) {
            continue;
        }
        let raw = match store.entry(c.key.as_str()).await.map_err(Error::nats)? {
            Some(e) if e.revision == c.revision => String::from_utf8_lossy(&e.value).into_owned(),
            _ => continue, // already rewritten
        };
        put_json(store, &qkey, &Quarantined { record: c.clone(), raw }).await?;
        log::warn!("quarantined corrupt record {} as {qkey}", c.key);
    }
    Ok(())
}

/// Records quarantined so far (shown by `rollout status`, `devices show`).
pub async fn quarantined(store: &kv::Store) -> Result<Vec<Quarantined>> {
    Ok(decode_all(&read_prefix(store, keys::QUARANTINE_PREFIX).await?).good)
}

pub async fn bundles(store: &kv::Store) -> Result<Records<BundleRecord>> {
    Ok(decode_all(&read_prefix(store, "bundle.").await?))
}

pub async fn rollouts(store: &kv::Store) -> Result<Records<Rollout>> {
    Ok(decode_all(&read_prefix(store, "rollout.").await?))
}

pub async fn jobs(store: &kv::Store) -> Result<Records<Job>> {
    Ok(decode_all(&read_prefix(store, "job.").await?))
}
