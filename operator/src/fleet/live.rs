//! Keeping the index current: a snapshot of each bucket, then a watch from
//! the revision after it. A watch that ends (NATS trouble, a restarted
//! server) is started again after a fresh snapshot, with backoff, and the
//! subscribers are told to re-read everything ([`Change::Resync`]).

use super::index::Index;
use super::Change;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::ratelimit::WarnLimiter;
use crate::store;
use async_nats::jetstream::kv;
use futures::StreamExt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// The index and the channel its changes go out on.
#[derive(Debug)]
pub struct Shared {
    index: RwLock<Index>,
    pub changes: broadcast::Sender<Change>,
    /// The operator bucket's revision the index has applied up to, so a
    /// writer can wait until the index shows its own write.
    state_applied: watch::Sender<u64>,
}

/// Queued changes per subscriber before it lags (and must resync).
const CHANGE_BACKLOG: usize = 4096;

impl Shared {
    pub fn new() -> Self {
        Self {
            index: RwLock::new(Index::default()),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
            state_applied: watch::channel(0).0,
        }
    }
    /// Waits until the index has applied the operator bucket up to
    /// `revision`; false when `limit` passed first.
    pub async fn state_applied(&self, revision: u64, limit: Duration) -> bool {
        let mut applied = self.state_applied.subscribe();
        tokio::time::timeout(limit, applied.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }
    fn note_state_applied(&self, revision: u64) {
        self.state_applied.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }
    fn send(&self, change: Change) {
        // No subscriber is not an error.
        let _ = self.changes.send(change);
    }
}

/// Which bucket a follower keeps the index current with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Heartbeats,
    /// The operator bucket: `device.*`, `job.*`, `rollout.*`, `bundle.*`.
    State,
    /// The audit log: only "something new" matters.
    Audit,
}

/// The newest revision among `entries` (0 for none).
fn newest(entries: &[kv::Entry]) -> u64 {
    entries.iter().map(|e| e.revision).max().unwrap_or(0)
}

/// Reads `source` afresh into the index; returns the revision read up to.
pub async fn load(store: &kv::Store, shared: &Shared, source: Source) -> Result<u64> {
    match source {
        Source::Audit => store::last_revision(store).await,
        Source::Heartbeats => {
            let entries = store::read_latest(store).await?;
            let mut warn = WarnLimiter::new(Duration::from_secs(60));
            shared.write().load_heartbeats(&entries, &mut warn);
            Ok(newest(&entries))
        }
        Source::State => {
            let entries = store::read_latest(store).await?;
            shared.write().load_state(&entries);
            let read = newest(&entries);
            shared.note_state_applied(read);
            Ok(read)
        }
    }
}

/// Follows `source` from `revision` (already loaded) for as long as the task
/// runs: every entry updates the index and announces what it changed.
pub async fn follow(store: kv::Store, shared: Arc<Shared>, source: Source, mut revision: u64) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10), Duration::from_secs(30));
    let mut warn = WarnLimiter::new(Duration::from_secs(60));
    loop {
        let started = Instant::now();
        let why = watch(&store, &shared, source, &mut revision, &mut warn).await;
        let wait = backoff.after(started.elapsed());
        log::warn!("fleet index: watch of {} ended ({why}); reloading in {wait:?}", store.name);
        tokio::time::sleep(wait).await;
        match load(&store, &shared, source).await {
            Ok(r) => {
                revision = r;
                shared.send(if source == Source::Audit { Change::Audit } else { Change::Resync });
            }
            Err(e) => log::warn!("fleet index: reloading {}: {e}", store.name),
        }
    }
}

/// One watch, until it ends; returns why.
async fn watch(
    store: &kv::Store,
    shared: &Shared,
    source: Source,
    revision: &mut u64,
    warn: &mut WarnLimiter,
) -> Error {
    let mut entries = match store.watch_all_from_revision(*revision + 1).await {
        Ok(w) => w,
        Err(e) => return Error::nats(e),
    };
    loop {
        let entry = match entries.next().await {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Error::nats(e),
            None => return Error::Nats("the watch ended".into()),
        };
        *revision = (*revision).max(entry.revision);
        let changes: Vec<Change> = match source {
            Source::Heartbeats => shared.write().apply_heartbeat(&entry, warn).into_iter().collect(),
            Source::State => {
                let changes = shared.write().apply_state(&entry);
                shared.note_state_applied(entry.revision);
                changes
            }
            Source::Audit => vec![Change::Audit],
        };
        for c in changes {
            shared.send(c);
        }
    }
}
