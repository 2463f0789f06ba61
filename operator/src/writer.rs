//! The serve loop's KV writer: one task that publishes every write in the
//! order the coordinator decided it, with acknowledgements pipelined so the
//! decision loop never waits on a round trip (that keeps commit latency low
//! while many devices report at once).
//!
//! Ordering is the crash-safety rule "a job and its sequence number are
//! durable before its offer exists": an offer is a barrier — every earlier
//! write must be acknowledged before the offer is published.

use async_nats::jetstream;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
}

impl Writer {
    pub fn start(js: jetstream::Context) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(js, rx));
        Self { tx }
    }

    pub fn put(&self, bucket: &str, key: &str, value: Bytes, barrier: bool) {
        let w = Write { subject: format!("$KV.{bucket}.{key}"), value, barrier };
        if self.tx.send(Item::Put(w)).is_err() {
            log::error!("KV writer is gone; write to {bucket}/{key} lost");
        }
    }

    /// Resolves once every write queued so far is acknowledged.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn publish_with_retry(js: &jetstream::Context, w: &Write) {
    for attempt in 0..5u32 {
        let res = match js.publish(w.subject.clone(), w.value.clone()).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(()) => return,
            Err(e) => {
                log::warn!("write {} failed (attempt {}): {e}", w.subject, attempt + 1);
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    log::error!("write {} failed for good; state will be rewritten on its next change", w.subject);
}

async fn run(js: jetstream::Context, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut pending = FuturesOrdered::new();
    while let Some(item) = rx.recv().await {
        let w = match item {
            Item::Put(w) => w,
            Item::Flush(done) => {
                while let Some(()) = pending.next().await {}
                let _ = done.send(());
                continue;
            }
        };
        if w.barrier {
            while let Some(()) = pending.next().await {}
            publish_with_retry(&js, &w).await;
            continue;
        }
        // Publish now (keeps order on the connection); await the ack later.
        let js2 = js.clone();
        match js.publish(w.subject.clone(), w.value.clone()).await {
            Ok(ack) => pending.push_back(async move {
                if let Err(e) = ack.await {
                    log::warn!("write {} not acknowledged: {e}; retrying", w.subject);
                    publish_with_retry(&js2, &w).await;
                }
            }),
            Err(e) => {
                log::warn!("write {} failed: {e}; retrying", w.subject);
                publish_with_retry(&js, &w).await;
            }
        }
        // Bound the acks in flight, and reap finished ones.
        while pending.len() > 1024 {
            pending.next().await;
        }
        while let Some(Some(())) = futures::FutureExt::now_or_never(pending.next()) {}
    }
    while let Some(()) = pending.next().await {}
}
