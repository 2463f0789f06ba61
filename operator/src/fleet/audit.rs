//! The audit log in its own KV bucket: one entry per key, written once.
//! Keys are `<millis, 13 digits>-<random>`, so they sort by time; the
//! stream's sequence gives the order, so "newest first, page N" is N×size
//! positions back from the last sequence, read by sequence directly.

use super::{AuditEntry, AuditPage, AuditQuery};
use crate::bus::AUDIT_BUCKET;
use crate::error::{Error, Result};
use async_nats::jetstream::{self, kv};

pub async fn open(js: &jetstream::Context) -> Result<kv::Store> {
    js.get_key_value(AUDIT_BUCKET)
        .await
        .map_err(|e| Error::Nats(format!("bucket {AUDIT_BUCKET}: {e} (run `harmony-operator init`)")))
}

fn key(entry: &AuditEntry) -> Result<String> {
    let mut random = [0u8; 6];
    getrandom::getrandom(&mut random).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    Ok(format!("{:013}-{}", entry.at.0, hex::encode(random)))
}

/// Appends one entry (its `seq` is assigned by the stream).
pub async fn append(store: &kv::Store, entry: &AuditEntry) -> Result<u64> {
    crate::store::put_json(store, &key(entry)?, entry).await
}

/// One page, newest first. Entries that do not decode are skipped with a
/// warning (anyone able to write the bucket could have put them there).
pub async fn page(store: &kv::Store, q: &AuditQuery) -> Result<AuditPage> {
    let limit = q.page_size();
    let info = store.stream.get_info().await.map_err(|e| Error::Nats(format!("audit log: {e}")))?;
    let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
    let mut entries = Vec::new();
    let mut seq = last.saturating_sub(q.offset as u64);
    while seq >= first && entries.len() < limit {
        match store.stream.get_raw_message(seq).await {
            Ok(msg) => {
                let deleted = msg.headers.get("KV-Operation").is_some();
                match serde_json::from_slice::<AuditEntry>(&msg.payload) {
                    Ok(mut e) if !deleted => {
                        e.seq = seq;
                        entries.push(e);
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("skipping undecodable audit entry {seq}: {e}"),
                }
            }
            Err(e) => log::debug!("audit entry {seq}: {e}"),
        }
        seq -= 1;
    }
    let total = usize::try_from(info.state.messages).unwrap_or(usize::MAX);
    Ok(AuditPage { entries, total, offset: q.offset, limit })
}
