//! `harmony-operator serve`: the event loop around [`crate::coordinator::step`].
//!
//! Standby until it holds the leader lease; then it loads the durable state,
//! re-puts any offer that was decided but not written, and turns KV watch
//! entries (heartbeats, rollouts, control requests), commit replies and ticks
//! into events. Each step's actions are executed in order: offers are signed
//! and put after their job and sequence number are persisted; commits go out
//! before the job is persisted, so the commit latency is one step.

use crate::backoff::Backoff;
use crate::bundle_http::offer::HttpSource;
use crate::bus::{connect, Buckets};
use crate::clock::Clock;
use crate::config::Config;
use crate::coordinator::{step, Control, Event, State, Tuning, REBUILT_NOTE};
use crate::effects::{execute, NatsEffects};
use crate::error::{Error, Result};
use crate::leader_status::LeaderStatus;
use crate::lease::LeaseKeeper;
use crate::model::{JobState, Rollout};
use crate::ratelimit::WarnLimiter;
use crate::registry::StoredHeartbeat;
use crate::signer::OfferSigner;
use crate::store;
use crate::writer::{Revisions, WriteFailure, Writer};
use async_nats::jetstream::kv;
use futures::StreamExt;
use harmony_protocol::command::{Command, CommandReply};
use harmony_protocol::names::{command_subject, operator_status_subject};
use harmony_protocol::{DeviceId, SignedEnvelope, UpgradeOffer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Mutex};

/// A pause/resume/abort request, written by the CLI to `ctl.<rollout>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlRequest {
    pub control: String,
}

impl ControlRequest {
    pub fn parse(&self) -> Option<Control> {
        match self.control.as_str() {
            "pause" => Some(Control::Pause),
            "resume" => Some(Control::Resume),
            "abort" => Some(Control::Abort),
            _ => None,
        }
    }
}

enum Outcome {
    Shutdown,
    LostLease,
    /// A write was refused because its key changed under us (a newer
    /// leader wrote it): our memory is stale, reload before acting again.
    Fenced,
    /// A watch ended (NATS trouble): reload from KV and carry on.
    Restart,
}

type Shutdown<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send)>;

/// Runs the operator until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    run_with_clock(cfg, Arc::new(crate::clock::SystemClock), shutdown).await
}

pub async fn run_with_clock(
    cfg: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let key = crate::keys::load(&cfg.keys.signing_key)?;
    let client = connect(&cfg.nats).await?;
    let buckets = Buckets::open(client).await?;
    // Bundles over HTTP (issue #16): served on the leader and on standbys
    // alike, so an offer's URL keeps working across a takeover.
    let (http, _bundle_server) = match &cfg.bundle_http {
        Some(h) => {
            let token_key = crate::keys::load_or_create_token_key(&h.token_key)?;
            let server = crate::bundle_http::start(h, token_key.verifying_key(), &buckets, clock.clone()).await?;
            let source = HttpSource { public_url: h.public_url.clone(), token_key };
            (Some(source), Some(server))
        }
        None => (None, None),
    };
    let signer = OfferSigner::new(key, http);
    // Zero-touch enrollment: this process also admits devices (issue #14).
    let _gate = match &cfg.enroll {
        Some(e) => Some(crate::enroll::start(e, &buckets, clock.clone()).await?),
        None => None,
    };
    let ttl_ms = cfg.coordinator.lease_ttl_secs.max(1) * 1000;
    let lease = Arc::new(Mutex::new(LeaseKeeper::new(buckets.state.clone(), cfg.operator_id(), ttl_ms)));
    let mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), Duration::from_secs(60));
    loop {
        // Standby: try for the lease every third of its lifetime.
        loop {
            let held = lease.lock().await.try_acquire_or_renew(clock.now()).await;
            match held {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => log::warn!("lease: {e}"),
            }
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(ttl_ms / 3)) => {}
            }
        }
        log::info!("leading");
        let started = Instant::now();
        let wait = match lead(&cfg, &buckets, &signer, &lease, &clock, shutdown.as_mut()).await {
            Ok(Outcome::Shutdown) => {
                lease.lock().await.release().await;
                return Ok(());
            }
            Ok(Outcome::Fenced) => {
                // Keep the lease if it is still ours (the standby loop
                // renews it): whoever holds it leads after a fresh load.
                let wait = backoff.after(started.elapsed());
                log::warn!("a write was fenced; reloading state in {wait:?}");
                wait
            }
            Ok(Outcome::LostLease) => {
                log::warn!("standing by: lease lost");
                Duration::from_millis(200)
            }
            Ok(Outcome::Restart) => {
                let wait = backoff.after(started.elapsed());
                log::warn!("watch ended; reloading state in {wait:?}");
                wait
            }
            Err(e) => {
                // Holding the lease while unable to lead would keep every
                // standby out: give it up, and do not spin on a fault.
                let wait = backoff.after(started.elapsed());
                log::error!("cannot lead: {e}; released the leader lease, trying again in {wait:?}");
                lease.lock().await.release().await;
                wait
            }
        };
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn tuning(cfg: &Config) -> Tuning {
    Tuning {
        stale_after_ms: cfg.fleet.stale_after_secs * 1000,
        commit_retry_ms: cfg.coordinator.commit_retry_secs * 1000,
    }
}

async fn lead(
    cfg: &Config,
    b: &Buckets,
    signer: &OfferSigner,
    lease: &Arc<Mutex<LeaseKeeper>>,
    clock: &Arc<dyn Clock>,
    mut shutdown: Shutdown<'_>,
) -> Result<Outcome> {
    // Renewed on its own task: a busy event loop must not delay renewals
    // until the lease expires under a leader that is still acting.
    let renew_ms = (cfg.coordinator.lease_ttl_secs.max(1) * 1000 / 3).max(100);
    let (lost_tx, mut lost) = watch::channel(false);
    let _renewer =
        AbortOnDrop(tokio::spawn(renew_lease(lease.clone(), clock.clone(), Duration::from_millis(renew_ms), lost_tx)));
    let clock = clock.as_ref();
    let loaded = store::load_state(&b.state).await?;
    let mut state = loaded.state;
    let mut revisions = loaded.revisions;
    store::quarantine(&b.state, &loaded.corrupt).await?;
    state.tuning = tuning(cfg);
    let (offers, offer_revisions) = current_offers(b).await?;
    state.offers = offers;
    revisions.extend(offer_revisions);
    log::debug!("loaded {} rollouts, {} jobs, {} offers", state.rollouts.len(), state.jobs.len(), state.offers.len());
    reconcile_offers(b, signer, &state, &mut revisions).await?;
    let writer = Writer::start(b.js.clone(), revisions);
    let (commit_tx, mut commit_rx) = mpsc::unbounded_channel::<Event>();
    let fx = NatsEffects { writer: writer.clone(), client: b.client.clone(), replies: commit_tx };
    let mut warn_limit = WarnLimiter::new(Duration::from_secs(60));
    let mut heartbeats = b.heartbeats.watch_with_history(">").await.map_err(Error::nats)?;
    // Replay the last heartbeat of every device before deciding anything, so
    // offers record a baseline and pending commits are found at once. The
    // emptiness check must be fresh: a bucket opened empty may be full now.
    let mut replayed: HashMap<DeviceId, StoredHeartbeat> = HashMap::new();
    let mut heartbeat_revision = 0u64;
    if !store::is_empty(&b.heartbeats).await? {
        while let Some(entry) = heartbeats.next().await {
            let entry = entry.map_err(Error::nats)?;
            let caught_up = entry.delta == 0;
            heartbeat_revision = entry.revision;
            if let Some(hb) = decode_heartbeat(&entry, &mut warn_limit) {
                let (next, actions) = step(state, &Event::Heartbeat(Box::new(hb.clone())), clock.now());
                state = next;
                execute(&fx, signer, &state, actions)?;
                replayed.insert(hb.device_id.clone(), hb);
            }
            if caught_up {
                break;
            }
        }
    }
    // Rollouts written by the CLI while no operator led have no jobs yet:
    // give them theirs before any tick can judge their waves.
    let open: Vec<Rollout> = state.rollouts.values().filter(|r| !r.status.is_final()).cloned().collect();
    for r in open {
        let (next, actions) = step(state, &Event::RolloutCreated(Box::new(r)), clock.now());
        state = next;
        execute(&fx, signer, &state, actions)?;
    }
    // A job just rebuilt from its offer has not seen the device's last
    // heartbeat yet (it came in the replay, before the job existed).
    let rebuilt: Vec<StoredHeartbeat> = state
        .jobs
        .values()
        .filter(|j| j.state == JobState::Offered && j.history.last().is_some_and(|t| t.note.starts_with(REBUILT_NOTE)))
        .filter_map(|j| replayed.remove(&j.device))
        .collect();
    drop(replayed);
    for hb in rebuilt {
        let (next, actions) = step(state, &Event::Heartbeat(Box::new(hb)), clock.now());
        state = next;
        execute(&fx, signer, &state, actions)?;
    }

    let mut rollouts = b.state.watch_with_history("rollout.>").await.map_err(Error::nats)?;
    let mut controls = b.state.watch_with_history("ctl.>").await.map_err(Error::nats)?;
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.coordinator.tick_millis.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only the leader subscribes, so whoever answers leads.
    let mut status_requests = b.client.subscribe(operator_status_subject()).await.map_err(Error::nats)?;
    let operator_id = cfg.operator_id();

    loop {
        let event = tokio::select! {
            _ = shutdown.as_mut() => {
                writer.flush().await;
                return Ok(Outcome::Shutdown);
            }
            entry = heartbeats.next() => match entry {
                Some(Ok(e)) => {
                    heartbeat_revision = e.revision;
                    match decode_heartbeat(&e, &mut warn_limit) { Some(hb) => Event::Heartbeat(Box::new(hb)), None => continue }
                }
                _ => return Ok(Outcome::Restart),
            },
            Some(request) = status_requests.next() => {
                // Every heartbeat up to this revision was stepped over; the
                // flush makes the job writes it caused durable before we say so.
                writer.flush().await;
                let status = LeaderStatus { operator_id: operator_id.clone(), heartbeat_revision };
                if let (Some(reply), Ok(body)) = (request.reply, serde_json::to_vec(&status)) {
                    if let Err(e) = b.client.publish(reply, body.into()).await {
                        log::debug!("operator status reply: {e}");
                    }
                }
                continue;
            }
            entry = rollouts.next() => match entry {
                Some(Ok(e)) if e.operation == kv::Operation::Put => {
                    // A rollout the CLI created: the writer must expect its revision.
                    writer.observe(&b.state.name, &e.key, e.revision);
                    match store::decode::<Rollout>(&e) {
                        Ok(r) if !r.status.is_final() => Event::RolloutCreated(Box::new(r)),
                        Ok(_) => continue,
                        Err(err) => { log::warn!("{err}"); continue }
                    }
                }
                Some(Ok(_)) => continue,
                _ => return Ok(Outcome::Restart),
            },
            entry = controls.next() => match entry {
                Some(Ok(e)) if e.operation == kv::Operation::Put => {
                    let Some(id) = e.key.strip_prefix("ctl.") else { continue };
                    match store::decode::<ControlRequest>(&e).ok().and_then(|c| c.parse()) {
                        Some(control) => Event::Control { rollout_id: id.to_string(), control, revision: e.revision },
                        None => { log::warn!("ignoring bad control request in {}", e.key); continue }
                    }
                }
                Some(Ok(_)) => continue,
                _ => return Ok(Outcome::Restart),
            },
            why = writer.failed() => match why {
                WriteFailure::Fenced { .. } => return Ok(Outcome::Fenced),
                // Memory is ahead of what is durable: reload from KV.
                WriteFailure::Failed { .. } => return Err(Error::Nats(format!("state write failed: {why}"))),
            },
            _ = lease_lost(&mut lost) => {
                writer.flush().await;
                return Ok(Outcome::LostLease);
            }
            Some(ev) = commit_rx.recv() => ev,
            _ = tick.tick() => Event::Tick,
        };
        if !matches!(event, Event::Tick | Event::Heartbeat(_)) {
            log::debug!("event {event:?}");
        }
        let (next, actions) = step(state, &event, clock.now());
        state = next;
        execute(&fx, signer, &state, actions)?;
    }
}

/// A heartbeat the coordinator may act on: a put whose payload decodes and
/// names the device of its key (a device can write only its own key, so the
/// key is the identity; the payload is the device's word). Everything else
/// is ignored with a warning, at most one per key a minute.
fn decode_heartbeat(e: &kv::Entry, limit: &mut WarnLimiter) -> Option<StoredHeartbeat> {
    if e.operation != kv::Operation::Put {
        return None;
    }
    match crate::registry::stored_heartbeat(e) {
        Ok(hb) => Some(hb),
        Err(why) => {
            if let Some(held) = limit.allow(&e.key, Instant::now()) {
                let more = if held > 0 { format!(" ({held} more since the last warning)") } else { String::new() };
                log::warn!("ignoring heartbeat under key {}: {why}{more}", e.key);
            }
            None
        }
    }
}

/// The offers in the offer bucket now, by device (undecodable ones skipped),
/// and the revision of every key of the bucket.
async fn current_offers(b: &Buckets) -> Result<(HashMap<DeviceId, UpgradeOffer>, Revisions)> {
    let mut out = HashMap::new();
    let entries = store::read_latest(&b.offers).await?;
    let revisions = store::revisions(&b.offers.name, &entries);
    for entry in entries.into_iter().filter(|e| e.operation == kv::Operation::Put) {
        let offer = SignedEnvelope::decode(&entry.value)
            .ok()
            .and_then(|env| serde_json::from_str::<UpgradeOffer>(&env.payload).ok());
        match offer {
            Some(o) if o.device_id.as_str() == entry.key => {
                out.insert(o.device_id.clone(), o);
            }
            _ => log::warn!("offer under key {} does not decode; ignored", entry.key),
        }
    }
    Ok((out, revisions))
}

/// Puts an offer if its key is still at the revision we know (fenced like
/// the writer's writes), and records the new revision.
async fn put_offer(
    b: &Buckets,
    signer: &OfferSigner,
    state: &State,
    offer: &UpgradeOffer,
    revisions: &mut Revisions,
) -> Result<()> {
    let env = signer.sign(offer, state)?;
    let subject = crate::writer::kv_subject(&b.offers.name, offer.device_id.as_str());
    let expected = revisions.get(&subject).copied().unwrap_or(0);
    let rev = b
        .offers
        .update(offer.device_id.as_str(), env.encode().into(), expected)
        .await
        .map_err(|e| Error::Nats(format!("offer for {} (expected revision {expected}): {e}", offer.device_id)))?;
    revisions.insert(subject, rev);
    Ok(())
}

/// After a restart or takeover: an offer that was decided (persisted in the
/// job) but may not have reached the offer bucket is put again — the same
/// offer, same sequence number, byte for byte (ed25519 is deterministic), so
/// no device ever sees a second offer.
async fn reconcile_offers(b: &Buckets, signer: &OfferSigner, state: &State, revisions: &mut Revisions) -> Result<()> {
    for job in state.jobs.values() {
        let Some(offer) = &job.offer else { continue };
        if !matches!(job.state, JobState::Offered) {
            continue;
        }
        let current = b.offers.get(job.device.as_str()).await.map_err(Error::nats)?;
        let present = current
            .and_then(|bytes| SignedEnvelope::decode(&bytes).ok())
            .and_then(|env| serde_json::from_str::<UpgradeOffer>(&env.payload).ok())
            .is_some_and(|o| o.offer_seq >= offer.offer_seq);
        if !present {
            log::info!("re-putting offer {} for {}", offer.offer_seq, job.device);
            put_offer(b, signer, state, offer, revisions).await?;
        }
    }
    Ok(())
}

/// Sends one command and waits for the typed reply.
pub async fn send_commit(client: &async_nats::Client, device: &DeviceId, cmd: Command) -> Result<()> {
    request(client, device, &cmd, Duration::from_secs(10)).await.map(drop)
}

pub async fn request(
    client: &async_nats::Client,
    device: &DeviceId,
    cmd: &Command,
    timeout: Duration,
) -> Result<harmony_protocol::ReplyBody> {
    let fut = client.request(command_subject(device), cmd.encode().into());
    let msg = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Device(format!("{device}: no reply within {timeout:?}")))?
        .map_err(|e| Error::Device(format!("{device}: {e}")))?;
    let reply = CommandReply::decode(&msg.payload).map_err(|e| Error::Device(format!("{device}: bad reply: {e}")))?;
    reply.into_result().map_err(|e| Error::Device(format!("{device}: {e}")))
}

/// Renews the lease every `period` until a renewal fails or does not answer
/// within `period`, then says so on `lost` and ends.
async fn renew_lease(
    lease: Arc<Mutex<LeaseKeeper>>,
    clock: Arc<dyn Clock>,
    period: Duration,
    lost: watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(period).await;
        let renewed = tokio::time::timeout(period, async {
            let mut lease = lease.lock().await;
            lease.try_acquire_or_renew(clock.now()).await
        })
        .await;
        match renewed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break,
            Ok(Err(e)) => {
                log::warn!("lease renewal failed: {e}");
                break;
            }
            Err(_) => {
                log::warn!("lease renewal did not answer within {period:?}");
                break;
            }
        }
    }
    let _ = lost.send(true);
}

/// Resolves once the renewal task reports the lease lost (or is gone).
async fn lease_lost(lost: &mut watch::Receiver<bool>) {
    let _ = lost.wait_for(|lost| *lost).await.map(drop);
}

/// Aborts a task when the leading that spawned it ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
