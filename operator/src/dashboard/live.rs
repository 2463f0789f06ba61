//! Live updates over server-sent events. One task per dashboard listens to
//! the fleet's changes and coalesces them over a window: however busy the
//! fleet (a 1,000-device rollout heartbeating), each viewer gets at most one
//! event per topic per window. Pages refresh the fragments that listen to
//! those topics (`hx-trigger="sse:devices"` etc.), so one stream serves
//! every page and nothing per-viewer is computed unless a page asks.

use crate::fleet::{Change, FleetService};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;

/// What changed in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Topics {
    pub devices: bool,
    pub rollouts: bool,
    pub bundles: bool,
    pub audit: bool,
    pub tokens: bool,
}

impl Topics {
    fn all() -> Self {
        Self { devices: true, rollouts: true, bundles: true, audit: true, tokens: true }
    }
    fn any(self) -> bool {
        self.devices || self.rollouts || self.bundles || self.audit || self.tokens
    }
    fn add(&mut self, change: &Change) {
        match change {
            Change::Device(_) => self.devices = true,
            Change::Rollout(_) => self.rollouts = true,
            Change::Bundles => self.bundles = true,
            Change::Audit => self.audit = true,
            Change::Tokens => self.tokens = true,
            Change::Resync => *self = Self::all(),
        }
    }
    /// SSE event names; `overview` whenever anything changed.
    pub fn names(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.any() {
            out.push("overview");
        }
        for (on, name) in [
            (self.devices, "devices"),
            (self.rollouts, "rollouts"),
            (self.bundles, "bundles"),
            (self.audit, "audit"),
            (self.tokens, "tokens"),
        ] {
            if on {
                out.push(name);
            }
        }
        out
    }
}

/// Fans coalesced changes out to every open stream.
#[derive(Debug, Clone)]
pub struct LiveHub {
    tx: broadcast::Sender<(u64, Topics)>,
    /// Set when the server shuts down: open streams end, so a graceful
    /// shutdown does not wait for browsers to go away.
    closing: Arc<watch::Sender<bool>>,
    /// Bumped with every coalesced batch sent: fragments rendered at an
    /// older generation are out of date.
    generation: Arc<AtomicU64>,
}

impl LiveHub {
    /// Starts the coalescing task (ends with the fleet's change channel).
    pub fn start<S: FleetService>(fleet: Arc<S>, window: Duration) -> Self {
        let (tx, _) = broadcast::channel(64);
        let generation = Arc::new(AtomicU64::new(0));
        let hub = Self { tx: tx.clone(), closing: Arc::new(watch::channel(false).0), generation: generation.clone() };
        let mut changes = fleet.subscribe();
        tokio::spawn(async move {
            loop {
                let mut topics = Topics::default();
                match changes.recv().await {
                    Ok(c) => topics.add(&c),
                    Err(RecvError::Lagged(_)) => topics = Topics::all(),
                    Err(RecvError::Closed) => break,
                }
                // Gather everything else that arrives within the window.
                let until = tokio::time::Instant::now() + window;
                loop {
                    match tokio::time::timeout_at(until, changes.recv()).await {
                        Ok(Ok(c)) => topics.add(&c),
                        Ok(Err(RecvError::Lagged(_))) => topics = Topics::all(),
                        Ok(Err(RecvError::Closed)) | Err(_) => break,
                    }
                }
                let current = generation.fetch_add(1, Ordering::SeqCst) + 1;
                // No receivers is fine: nobody is watching.
                let _ = tx.send((current, topics));
            }
            log::debug!("dashboard: fleet change stream ended");
        });
        hub
    }

    pub fn subscribe(&self) -> broadcast::Receiver<(u64, Topics)> {
        self.tx.subscribe()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// `GET /events`: the page's one SSE stream. It ends at the first update
/// after `still_allowed` says no (the session was logged out or expired).
pub fn stream(
    hub: &LiveHub,
    still_allowed: impl Fn() -> bool + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hello = futures::stream::once(async { Ok(Event::default().event("hello").data("0")) });
    let updates = BroadcastStream::new(hub.subscribe())
        .take_while(move |_| std::future::ready(still_allowed()))
        .flat_map(|item| {
            // A viewer that fell behind refreshes everything once.
            let (generation, topics) = item.unwrap_or((0, Topics::all()));
            let events: Vec<Result<Event, Infallible>> = topics
                .names()
                .into_iter()
                .map(|name| Ok(Event::default().event(name).data(generation.to_string())))
                .collect();
            futures::stream::iter(events)
        });
    let mut closing = hub.closing.subscribe();
    let closed = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    Sse::new(hello.chain(updates).take_until(closed)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
