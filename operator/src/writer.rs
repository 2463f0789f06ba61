//! The serve loop's KV writer: one task that publishes every write in the
//! order the coordinator decided it, with acknowledgements pipelined so the
//! decision loop never waits on a round trip (that keeps commit latency low
//! while many devices report at once).
//!
//! Ordering is the crash-safety rule "a job and its sequence number are
//! durable before its offer exists": an offer is a barrier — every earlier
//! write must be acknowledged before the offer is published.
//!
//! Fencing: every write is a compare-and-set on its key's revision
//! (`Nats-Expected-Last-Subject-Sequence`). The writer starts from the
//! revisions the operator loaded when it took the lead and moves each one to
//! the revision its own write got. A write from an operator that lost the
//! lease — even one held back in a paused NATS node and delivered late — is
//! refused by the stream as soon as anyone else wrote that key since, so it
//! cannot land over the new leader's state ([`WriteFailure::Fenced`]).
//!
//! A write that is fenced, or fails for good after retries, poisons the
//! writer: nothing queued after it is published, and [`Writer::failed`]
//! tells the serve loop to stop leading and reload what is really durable.

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The last revision of each key, by subject (`$KV.<bucket>.<key>`). A key
/// missing here is expected not to exist (revision 0).
pub type Revisions = HashMap<String, u64>;

/// The subject a KV key is stored under.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

#[derive(Debug)]
pub struct Write {
    /// `$KV.<bucket>.<key>`
    pub subject: String,
    pub value: Bytes,
    /// Wait for all earlier writes to be acknowledged before this one.
    pub barrier: bool,
}

/// Why the writer stopped writing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    /// The key changed since this operator last wrote or read it: someone
    /// else (a newer leader) wrote it. Not retried.
    #[error("write {subject} fenced: the key is no longer at revision {expected}")]
    Fenced { subject: String, expected: u64 },
    /// NATS did not take the write after every retry.
    #[error("write {subject}: {detail}")]
    Failed { subject: String, detail: String },
}

#[derive(Debug)]
enum Item {
    Put(Write),
    /// A key's revision seen by the serve loop (a rollout the CLI created):
    /// recorded only if the writer knows nothing newer of that key.
    Observe(String, u64),
    /// Answered once everything queued before it is acknowledged.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Item>,
    /// The first write that failed for good or was fenced, if any.
    failure: watch::Receiver<Option<WriteFailure>>,
}

impl Writer {
    /// `known`: the revisions read when the state was loaded.
    pub fn start(js: jetstream::Context, known: Revisions) -> Self {
        Self::start_with_retries(js, known, 5)
    }

    /// `attempts` per write (the first try included) before it fails for good.
    pub fn start_with_retries(js: jetstream::Context, known: Revisions, attempts: u32) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (failed_tx, failure) = watch::channel(None);
        let task = Task {
            js,
            attempts: attempts.max(1),
            known,
            in_flight: HashMap::new(),
            pending: FuturesOrdered::new(),
            poison: Poison { first: None, tx: failed_tx },
        };
        tokio::spawn(task.run(rx));
        Self { tx, failure }
    }

    pub fn put(&self, bucket: &str, key: &str, value: Bytes, barrier: bool) {
        let w = Write { subject: kv_subject(bucket, key), value, barrier };
        if self.tx.send(Item::Put(w)).is_err() {
            log::error!("KV writer is gone; write to {bucket}/{key} lost");
        }
    }

    /// Tells the writer a key's revision that it may not know (a record
    /// created by someone else after the state was loaded).
    pub fn observe(&self, bucket: &str, key: &str, revision: u64) {
        let _ = self.tx.send(Item::Observe(kv_subject(bucket, key), revision));
    }

    /// Resolves once every write queued so far is acknowledged (or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Resolves with the reason once a write failed for good or was fenced;
    /// pending forever otherwise.
    pub async fn failed(&self) -> WriteFailure {
        let mut rx = self.failure.clone();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None, // writer task gone: the serve loop notices otherwise
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }
}

fn expect_revision(expected: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
    headers
}

fn classify(w: &Write, expected: u64, e: &jetstream::context::PublishError) -> WriteFailure {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        WriteFailure::Fenced { subject: w.subject.clone(), expected }
    } else {
        WriteFailure::Failed { subject: w.subject.clone(), detail: e.to_string() }
    }
}

/// One try; the new revision of the key on success.
async fn publish_once(js: &jetstream::Context, w: &Write, expected: u64) -> Result<u64, WriteFailure> {
    match js.publish_with_headers(w.subject.clone(), expect_revision(expected), w.value.clone()).await {
        Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| classify(w, expected, &e)),
        Err(e) => Err(classify(w, expected, &e)),
    }
}

/// Retries what may be passing trouble; a fenced write is final at once.
/// (A retry after a lost acknowledgement whose write did land is fenced by
/// that write: the serve loop then reloads, which is safe.)
async fn publish_with_retry(
    js: &jetstream::Context,
    w: &Write,
    expected: u64,
    attempts: u32,
) -> Result<u64, WriteFailure> {
    let mut last = None;
    for attempt in 0..attempts {
        match publish_once(js, w, expected).await {
            Ok(rev) => return Ok(rev),
            Err(e @ WriteFailure::Fenced { .. }) => return Err(e),
            Err(e) => {
                log::warn!("{e} (attempt {})", attempt + 1);
                last = Some(e);
                if attempt + 1 < attempts {
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                }
            }
        }
    }
    Err(last.unwrap_or(WriteFailure::Failed { subject: w.subject.clone(), detail: "no attempt made".into() }))
}

/// Remembers the first failure and tells the serve loop.
struct Poison {
    first: Option<WriteFailure>,
    tx: watch::Sender<Option<WriteFailure>>,
}

impl Poison {
    fn note(&mut self, failure: WriteFailure) {
        log::error!("{failure}; writing nothing more until the state is reloaded");
        if self.first.is_none() {
            self.first = Some(failure.clone());
            let _ = self.tx.send(Some(failure));
        }
    }
}

type Acked = Pin<Box<dyn Future<Output = (String, Result<u64, WriteFailure>)> + Send>>;

struct Task {
    js: jetstream::Context,
    attempts: u32,
    known: Revisions,
    /// Unacknowledged writes per subject: a second write to the same key
    /// needs the revision the first one gets.
    in_flight: HashMap<String, usize>,
    pending: FuturesOrdered<Acked>,
    poison: Poison,
}

impl Task {
    fn settle(&mut self, subject: String, result: Result<u64, WriteFailure>) {
        if let Some(n) = self.in_flight.get_mut(&subject) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&subject);
            }
        }
        match result {
            Ok(rev) => {
                self.known.insert(subject, rev);
            }
            Err(e) => self.poison.note(e),
        }
    }

    async fn drain(&mut self) {
        while let Some((subject, r)) = self.pending.next().await {
            self.settle(subject, r);
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Item>) {
        loop {
            // Reap acknowledgements while idle too, so a failure is known (and
            // reported) without waiting for the next write.
            let item = tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                Some((subject, r)) = self.pending.next(), if !self.pending.is_empty() => {
                    self.settle(subject, r);
                    continue;
                }
            };
            let w = match item {
                Item::Put(w) => w,
                Item::Observe(subject, rev) => {
                    self.known.entry(subject).or_insert(rev);
                    continue;
                }
                Item::Flush(done) => {
                    self.drain().await;
                    let _ = done.send(());
                    continue;
                }
            };
            if w.barrier || self.in_flight.contains_key(&w.subject) {
                self.drain().await;
            }
            if let Some(why) = &self.poison.first {
                // Memory is ahead of (or, fenced, behind) what is durable: an
                // offer now could make a device act on a decision a restarted
                // operator knows nothing about; any other write could land
                // over a newer leader's.
                log::warn!("not writing {}: {why}", w.subject);
                continue;
            }
            let expected = self.known.get(&w.subject).copied().unwrap_or(0);
            if w.barrier {
                let r = publish_with_retry(&self.js, &w, expected, self.attempts).await;
                self.settle(w.subject.clone(), r);
                continue;
            }
            self.publish_pipelined(w, expected).await;
            // Bound the acks in flight, and reap finished ones.
            while self.pending.len() > 1024 {
                if let Some((subject, r)) = self.pending.next().await {
                    self.settle(subject, r);
                }
            }
            while let Some(Some((subject, r))) = futures::FutureExt::now_or_never(self.pending.next()) {
                self.settle(subject, r);
            }
        }
        self.drain().await;
    }

    /// Publishes now (keeps order on the connection); the ack is awaited later.
    async fn publish_pipelined(&mut self, w: Write, expected: u64) {
        let retries = self.attempts.saturating_sub(1).max(1);
        match self.js.publish_with_headers(w.subject.clone(), expect_revision(expected), w.value.clone()).await {
            Ok(ack) => {
                *self.in_flight.entry(w.subject.clone()).or_insert(0) += 1;
                let js = self.js.clone();
                self.pending.push_back(Box::pin(async move {
                    let r = match ack.await {
                        Ok(a) => Ok(a.sequence),
                        Err(e) => match classify(&w, expected, &e) {
                            fenced @ WriteFailure::Fenced { .. } => Err(fenced),
                            other => {
                                log::warn!("{other}; retrying");
                                publish_with_retry(&js, &w, expected, retries).await
                            }
                        },
                    };
                    (w.subject, r)
                }));
            }
            Err(e) => {
                log::warn!("write {} failed: {e}; retrying", w.subject);
                let r = publish_with_retry(&self.js, &w, expected, retries).await;
                self.settle(w.subject.clone(), r);
            }
        }
    }
}
