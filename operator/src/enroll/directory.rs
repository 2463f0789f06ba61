//! What the callout and the enrollment service look up on every connection:
//! device records by nkey and by id, and token records by id. A copy in
//! memory, kept current from the operator bucket like the fleet index (a
//! snapshot, then a watch from the revision after it), so a reconnect storm
//! costs no KV reads.

use super::token::{TokenRecord, TOKEN_KEY_PREFIX};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::provision::DeviceUser;
use crate::store;
use async_nats::jetstream::kv;
use futures::StreamExt;
use harmony_protocol::DeviceId;
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<DeviceId, DeviceUser>,
    by_nkey: HashMap<String, DeviceId>,
    tokens: HashMap<String, TokenRecord>,
}

#[derive(Debug)]
pub struct Directory {
    maps: RwLock<Maps>,
    /// The operator bucket's revision the maps reflect.
    revision: watch::Sender<u64>,
}

impl Default for Directory {
    fn default() -> Self {
        Self { maps: RwLock::new(Maps::default()), revision: watch::channel(0).0 }
    }
}

impl Directory {
    pub fn by_nkey(&self, nkey: &str) -> Option<DeviceUser> {
        let maps = self.maps.read().unwrap_or_else(PoisonError::into_inner);
        maps.by_nkey.get(nkey).and_then(|id| maps.by_id.get(id)).cloned()
    }

    pub fn by_id(&self, id: &DeviceId) -> Option<DeviceUser> {
        self.maps.read().unwrap_or_else(PoisonError::into_inner).by_id.get(id).cloned()
    }

    pub fn token(&self, id: &str) -> Option<TokenRecord> {
        self.maps.read().unwrap_or_else(PoisonError::into_inner).tokens.get(id).cloned()
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Applies one operator-bucket entry (other keys are ignored).
    pub fn apply(&self, entry: &kv::Entry) {
        let put = entry.operation == kv::Operation::Put;
        let mut maps = self.maps.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = entry.key.strip_prefix("device.") {
            let Ok(id) = DeviceId::new(id) else { return };
            if let Some(old) = maps.by_id.remove(&id) {
                maps.by_nkey.remove(&old.nkey);
            }
            if put {
                match store::decode::<DeviceUser>(entry) {
                    Ok(user) if user.device == id => {
                        maps.by_nkey.insert(user.nkey.clone(), id.clone());
                        maps.by_id.insert(id, user);
                    }
                    // A corrupt record admits nobody (and is reported by the CLI).
                    Ok(_) | Err(_) => log::warn!("enroll: device record {} does not decode; ignored", entry.key),
                }
            }
        } else if let Some(id) = entry.key.strip_prefix(TOKEN_KEY_PREFIX) {
            maps.tokens.remove(id);
            if put {
                match store::decode::<TokenRecord>(entry) {
                    Ok(t) if t.id == id => {
                        maps.tokens.insert(id.to_string(), t);
                    }
                    Ok(_) | Err(_) => log::warn!("enroll: token record {} does not decode; ignored", entry.key),
                }
            }
        }
        drop(maps);
        self.revision.send_if_modified(|r| {
            let newer = entry.revision > *r;
            *r = (*r).max(entry.revision);
            newer
        });
    }

    fn clear(&self) {
        *self.maps.write().unwrap_or_else(PoisonError::into_inner) = Maps::default();
    }

    /// Waits (at most `limit`) until the maps reflect the bucket up to
    /// `revision`: a device that was recorded by another operator process a
    /// moment ago is then found. False if the watch did not catch up.
    pub async fn caught_up_to(&self, revision: u64, limit: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Reads the operator bucket afresh into `dir`; returns the revision read.
pub async fn load(store: &kv::Store, dir: &Directory) -> Result<u64> {
    let entries = store::read_latest(store).await?;
    dir.clear();
    for e in &entries {
        dir.apply(e);
    }
    // `apply` has moved the revision up to the newest entry already.
    Ok(entries.iter().map(|e| e.revision).max().unwrap_or(0))
}

/// Keeps `dir` current for as long as the task runs; a watch that ends is
/// started again after a fresh snapshot, with backoff.
pub async fn follow(store: kv::Store, dir: std::sync::Arc<Directory>, mut revision: u64) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let why = watch_from(&store, &dir, &mut revision).await;
        let wait = backoff.after(started.elapsed());
        log::warn!("enroll: watch of {} ended ({why}); reloading in {wait:?}", store.name);
        tokio::time::sleep(wait).await;
        match load(&store, &dir).await {
            Ok(r) => revision = r,
            Err(e) => log::warn!("enroll: reloading {}: {e}", store.name),
        }
    }
}

async fn watch_from(store: &kv::Store, dir: &Directory, revision: &mut u64) -> Error {
    let mut entries = match store.watch_all_from_revision(*revision + 1).await {
        Ok(w) => w,
        Err(e) => return Error::nats(e),
    };
    loop {
        match entries.next().await {
            Some(Ok(entry)) => {
                *revision = (*revision).max(entry.revision);
                dir.apply(&entry);
            }
            Some(Err(e)) => return Error::nats(e),
            None => return Error::Nats("the watch ended".into()),
        }
    }
}
