//! Leader lease: one KV key, taken and renewed with compare-and-set on its
//! revision, so two operators never both act. A standby takes over once the
//! holder stops renewing and the lease expires.

use crate::error::{Error, Result};
use crate::model::keys::LEASE;
use async_nats::jetstream::kv;
use harmony_protocol::time::UnixMillis;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_at: UnixMillis,
}

#[derive(Debug)]
pub struct LeaseKeeper {
    store: kv::Store,
    me: String,
    ttl_ms: u64,
    /// Revision of our own lease entry while we hold it.
    held: Option<u64>,
}

impl LeaseKeeper {
    pub fn new(store: kv::Store, me: String, ttl_ms: u64) -> Self {
        Self { store, me, ttl_ms, held: None }
    }

    fn value(&self, now: UnixMillis) -> Result<bytes::Bytes> {
        let lease = Lease { holder: self.me.clone(), expires_at: now.saturating_add_ms(self.ttl_ms) };
        serde_json::to_vec(&lease).map(Into::into).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Takes the lease if free or expired, renews it if ours. Returns whether
    /// we hold it afterwards. Losing a CAS race means "not leader".
    pub async fn try_acquire_or_renew(&mut self, now: UnixMillis) -> Result<bool> {
        let value = self.value(now)?;
        if let Some(rev) = self.held {
            match self.store.update(LEASE, value, rev).await {
                Ok(rev) => {
                    self.held = Some(rev);
                    return Ok(true);
                }
                Err(e) => {
                    log::warn!("lost the leader lease: {e}");
                    self.held = None;
                    return Ok(false);
                }
            }
        }
        let current = self.store.entry(LEASE).await.map_err(Error::nats)?;
        let result = match current {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let lease: Option<Lease> = serde_json::from_slice(&entry.value).ok();
                let free = lease.as_ref().is_none_or(|l| l.expires_at <= now || l.holder == self.me);
                if !free {
                    return Ok(false);
                }
                self.store.update(LEASE, value, entry.revision).await.map_err(|e| e.to_string())
            }
            Some(entry) => self.store.update(LEASE, value, entry.revision).await.map_err(|e| e.to_string()),
            None => self.store.create(LEASE, value).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(rev) => {
                log::info!("{} holds the leader lease", self.me);
                self.held = Some(rev);
                Ok(true)
            }
            Err(_) => Ok(false), // someone else won the race
        }
    }

    /// Gives the lease up (on clean shutdown) so a standby takes over at once.
    pub async fn release(&mut self) {
        if let Some(rev) = self.held.take() {
            let _ = self.store.update(LEASE, bytes::Bytes::from_static(b"{}"), rev).await;
        }
    }
}
