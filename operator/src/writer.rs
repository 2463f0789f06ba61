//! The serve loop's KV writer: one task that publishes every write in the
//! order the coordinator decided it, with acknowledgements pipelined so the
//! decision loop never waits on a round trip (that keeps commit latency low
//! while many devices report at once).
//!
//! Ordering is the crash-safety rule "a job and its sequence number are
//! durable before its offer exists": an offer is a barrier — every earlier
//! write must be acknowledged before the offer is published. A write that
//! fails for good (after retries) poisons the writer: no barrier write is
//! published after it, and [`Writer::failed`] tells the serve loop to stop
//! leading and reload from what is really durable.

use async_nats::jetstream;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug)]
pub struct Write {
    /// `$KV.<bucket>.<key>`
    pub subject: String,
    pub value: Bytes,
    /// Wait for all earlier writes to be acknowledged before this one.
    pub barrier: bool,
}

#[derive(Debug)]
enum Item {
    Put(Write),
    /// Answered once everything queued before it is acknowledged.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Item>,
    /// The first write that failed for good, if any.
    failure: watch::Receiver<Option<String>>,
}

impl Writer {
    pub fn start(js: jetstream::Context) -> Self {
        Self::start_with_retries(js, 5)
    }

    /// `attempts` per write (the first try included) before it fails for good.
    pub fn start_with_retries(js: jetstream::Context, attempts: u32) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (failed_tx, failure) = watch::channel(None);
        tokio::spawn(run(js, rx, failed_tx, attempts.max(1)));
        Self { tx, failure }
    }

    pub fn put(&self, bucket: &str, key: &str, value: Bytes, barrier: bool) {
        let w = Write { subject: format!("$KV.{bucket}.{key}"), value, barrier };
        if self.tx.send(Item::Put(w)).is_err() {
            log::error!("KV writer is gone; write to {bucket}/{key} lost");
        }
    }

    /// Resolves once every write queued so far is acknowledged (or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Resolves with the reason once a write failed for good; pending forever otherwise.
    pub async fn failed(&self) -> String {
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

async fn publish_once(js: &jetstream::Context, w: &Write) -> Result<(), String> {
    match js.publish(w.subject.clone(), w.value.clone()).await {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn publish_with_retry(js: &jetstream::Context, w: &Write, attempts: u32) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..attempts {
        match publish_once(js, w).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                log::warn!("write {} failed (attempt {}): {e}", w.subject, attempt + 1);
                last = e;
                if attempt + 1 < attempts {
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                }
            }
        }
    }
    log::error!("write {} failed for good: {last}", w.subject);
    Err(format!("write {}: {last}", w.subject))
}

/// Remembers the first failure and tells the serve loop.
struct Poison {
    first: Option<String>,
    tx: watch::Sender<Option<String>>,
}

impl Poison {
    fn note(&mut self, result: Result<(), String>) {
        if let (Err(e), None) = (result, &self.first) {
            self.first = Some(e.clone());
            let _ = self.tx.send(Some(e));
        }
    }
}

async fn run(
    js: jetstream::Context,
    mut rx: mpsc::UnboundedReceiver<Item>,
    failed: watch::Sender<Option<String>>,
    attempts: u32,
) {
    let mut pending = FuturesOrdered::new();
    let mut poison = Poison { first: None, tx: failed };
    loop {
        // Reap acknowledgements while idle too, so a failure is known (and
        // reported) without waiting for the next write.
        let item = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
            Some(r) = pending.next(), if !pending.is_empty() => {
                poison.note(r);
                continue;
            }
        };
        let w = match item {
            Item::Put(w) => w,
            Item::Flush(done) => {
                while let Some(r) = pending.next().await {
                    poison.note(r);
                }
                let _ = done.send(());
                continue;
            }
        };
        if w.barrier {
            while let Some(r) = pending.next().await {
                poison.note(r);
            }
            if let Some(why) = &poison.first {
                // An earlier write (this offer's job, perhaps) is not durable:
                // publishing the offer could make a device act on a decision
                // a restarted operator knows nothing about.
                log::error!("not writing {}: an earlier write failed ({why})", w.subject);
                continue;
            }
            let r = publish_with_retry(&js, &w, attempts).await;
            poison.note(r);
            continue;
        }
        // Publish now (keeps order on the connection); await the ack later.
        let js2 = js.clone();
        match js.publish(w.subject.clone(), w.value.clone()).await {
            Ok(ack) => pending.push_back(async move {
                match ack.await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        log::warn!("write {} not acknowledged: {e}; retrying", w.subject);
                        publish_with_retry(&js2, &w, attempts.saturating_sub(1).max(1)).await
                    }
                }
            }),
            Err(e) => {
                log::warn!("write {} failed: {e}; retrying", w.subject);
                let r = publish_with_retry(&js, &w, attempts.saturating_sub(1).max(1)).await;
                poison.note(r);
            }
        }
        // Bound the acks in flight, and reap finished ones.
        while pending.len() > 1024 {
            if let Some(r) = pending.next().await {
                poison.note(r);
            }
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            poison.note(r);
        }
    }
    while let Some(r) = pending.next().await {
        poison.note(r);
    }
}
