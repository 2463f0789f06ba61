//! The simulated fleet: one NATS connection for every simulated device.
//! Heartbeats are KV puts under each device's key, offers arrive through one
//! watch of the offer bucket (verified with the fleet public key like an
//! agent would), commands through one subscription to every device's
//! command subject.

use super::device::{Behavior, SimState};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use async_nats::jetstream::{self, kv};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use harmony_protocol::command::{Command, CommandReply, ReplyBody};
use harmony_protocol::names::{all_command_subjects, HEARTBEAT_BUCKET, OFFER_BUCKET};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, Heartbeat, SignedEnvelope, TrustedKeys, UpgradeOffer, UpgradePhase};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Commit latencies seen by the simulated devices: from the moment the
/// awaiting-commit heartbeat was written to the moment the commit arrived.
#[derive(Debug, Default)]
pub struct Stats {
    pub commit_latency: Vec<Duration>,
    /// Per device: how long the server took to acknowledge the awaiting-commit
    /// heartbeat (the part of the commit latency spent before the operator
    /// can have seen it, or in the same queue).
    pub awaiting_put_ack: HashMap<DeviceId, Duration>,
    /// Per device: the commit latency, to pair with the put acknowledgement.
    pub commit_latency_of: HashMap<DeviceId, Duration>,
    /// When each commit arrived (first commit of a device only).
    pub commit_times: Vec<Instant>,
    pub committed: usize,
    pub heartbeats: u64,
    /// Heartbeat puts the server did not acknowledge (a node down, a leader
    /// election): with the time of the last failure and the last success.
    pub put_errors: u64,
    pub last_put_error: Option<Instant>,
    pub last_put_ok: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct SimFleet {
    client: async_nats::Client,
    heartbeats: kv::Store,
    offers: kv::Store,
    trusted: Arc<TrustedKeys>,
    pub devices: Arc<Mutex<HashMap<DeviceId, SimState>>>,
    pub stats: Arc<Mutex<Stats>>,
    clock: Arc<dyn Clock>,
    /// Simulated download + install + reboot time before the new boot's
    /// heartbeat, in ms; shared by the clones the watchers hold, so it can
    /// be changed after [`SimFleet::start`].
    install_delay_ms: Arc<AtomicU64>,
}

fn nats(e: impl std::fmt::Display) -> Error {
    Error::Nats(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SimFleet {
    /// `url`: one server, or every node of a cluster separated by commas.
    pub async fn connect(url: &str, fleet_key: VerifyingKey) -> Result<Self> {
        Self::connect_with(async_nats::ConnectOptions::new(), url, fleet_key).await
    }

    /// Like [`SimFleet::connect`], with the caller's options (credentials:
    /// on a server that requires them, e.g. the demo's, the simulation uses
    /// the operator's nkey).
    pub async fn connect_with(options: async_nats::ConnectOptions, url: &str, fleet_key: VerifyingKey) -> Result<Self> {
        let addrs = crate::bus::server_addrs(url)?;
        let client = options
            .client_capacity(65_536)
            .subscription_capacity(65_536)
            // A paused (SIGSTOPped) server keeps its TCP connections open:
            // only unanswered pings reveal it, so ping often enough to move
            // to another node within seconds.
            .ping_interval(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(addrs)
            .await
            .map_err(nats)?;
        let js = jetstream::new(client.clone());
        let heartbeats = js.get_key_value(HEARTBEAT_BUCKET).await.map_err(nats)?;
        let offers = js.get_key_value(OFFER_BUCKET).await.map_err(nats)?;
        let mut trusted = TrustedKeys::new();
        trusted.insert(fleet_key);
        Ok(Self {
            client,
            heartbeats,
            offers,
            trusted: Arc::new(trusted),
            devices: Arc::default(),
            stats: Arc::default(),
            clock: Arc::new(SystemClock),
            install_delay_ms: Arc::default(),
        })
    }

    /// Sets the simulated download + install + reboot time (default none).
    pub fn set_install_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.install_delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn install_delay(&self) -> Duration {
        Duration::from_millis(self.install_delay_ms.load(Ordering::Relaxed))
    }

    pub fn add(&self, state: SimState) {
        lock(&self.devices).insert(state.id.clone(), state);
    }

    pub fn with<R>(&self, id: &DeviceId, f: impl FnOnce(&mut SimState) -> R) -> Option<R> {
        lock(&self.devices).get_mut(id).map(f)
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    pub fn heartbeat_store(&self) -> &kv::Store {
        &self.heartbeats
    }

    pub async fn put(&self, hb: &Heartbeat) -> Result<()> {
        let bytes = serde_json::to_vec(hb).map_err(|e| Error::Invalid(e.to_string()))?;
        lock(&self.stats).heartbeats += 1;
        let result = self.heartbeats.put(hb.device_id.as_str(), bytes.into()).await;
        let mut stats = lock(&self.stats);
        match result {
            Ok(_) => {
                stats.last_put_ok = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                stats.put_errors += 1;
                stats.last_put_error = Some(Instant::now());
                Err(nats(e))
            }
        }
    }

    /// Sends the device's current heartbeat.
    pub async fn beat(&self, id: &DeviceId) -> Result<()> {
        let now = self.now();
        let hb = self.with(id, |d| (!d.silent).then(|| d.heartbeat(now))).flatten();
        match hb {
            Some(hb) => self.put(&hb).await,
            None => Ok(()),
        }
    }

    /// Sends every device's heartbeat once per `interval`, spread evenly
    /// over it (a hundred slots), many puts in flight; runs until aborted.
    /// Devices added later are included from the next round on.
    pub fn spawn_heartbeats(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            const SLOTS: u32 = 100;
            let mut tick = tokio::time::interval(interval / SLOTS);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut inflight = futures::stream::FuturesUnordered::new();
            loop {
                let mut ids: Vec<DeviceId> = lock(&me.devices).keys().cloned().collect();
                ids.sort();
                let per_slot = ids.len().div_ceil(SLOTS as usize).max(1);
                let mut chunks = ids.chunks(per_slot);
                for _ in 0..SLOTS {
                    tick.tick().await;
                    for id in chunks.next().unwrap_or_default() {
                        let me = me.clone();
                        let id = id.clone();
                        inflight.push(async move { me.beat(&id).await });
                        while inflight.len() > 2048 {
                            inflight.next().await;
                        }
                    }
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(inflight.next()) {}
                }
            }
        })
    }

    /// Starts the offer watcher and the command responder.
    pub async fn start(&self) -> Result<()> {
        let mut watch = self.offers.watch(">").await.map_err(nats)?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                while let Some(Ok(entry)) = watch.next().await {
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    let Ok(env) = SignedEnvelope::decode(&entry.value) else { continue };
                    let Ok(offer) = me.trusted.verify::<UpgradeOffer>(&env) else { continue };
                    let me = me.clone();
                    tokio::spawn(async move { me.on_offer(offer).await });
                }
                // The watch failed (its stream had no leader for a while, a
                // node went away): watch again, like an agent, from each
                // device's last offer so none put meanwhile is missed; a
                // repeat of an offer already seen is dropped in `on_offer`.
                watch = loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(w) = me.offers.watch_with_history(">").await {
                        break w;
                    }
                };
            }
        });
        let mut sub = self.client.subscribe(all_command_subjects()).await.map_err(nats)?;
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(reply_to) = msg.reply.clone() else { continue };
                let id = msg.subject.split('.').nth(3).and_then(|s| DeviceId::new(s).ok());
                let Some(id) = id else { continue };
                let me = me.clone();
                tokio::spawn(async move {
                    let reply = me.on_command(&id, &msg.payload).await;
                    let _ = me.client.publish(reply_to, reply.encode().into()).await;
                });
            }
        });
        Ok(())
    }

    async fn on_offer(&self, offer: UpgradeOffer) {
        let now = self.now();
        let beats = self.with(&offer.device_id, |d| {
            d.offers_received.push(offer.offer_seq);
            let fresh = d.offers.last().is_none_or(|o| o.offer_seq < offer.offer_seq);
            if !fresh {
                return Vec::new();
            }
            d.offers.push(offer.clone());
            if d.behavior == Behavior::Manual {
                Vec::new()
            } else {
                d.run_offer(&offer, now)
            }
        });
        // The install delay is split: the download heartbeat at once, the
        // installed (or failed) one halfway, the new boot's at the end.
        let install_delay = self.install_delay();
        let half = install_delay / 2;
        let mut beats = beats.unwrap_or_default().into_iter();
        if let Some(hb) = beats.next() {
            let _ = self.put(&hb).await;
        }
        let rest: Vec<Heartbeat> = beats.collect();
        if !rest.is_empty() && !half.is_zero() {
            tokio::time::sleep(half).await;
        }
        for mut hb in rest {
            hb.sent_at = self.now();
            let _ = self.put(&hb).await;
        }
        let remaining = install_delay.saturating_sub(half);
        if !remaining.is_zero() {
            tokio::time::sleep(remaining).await;
        }
        let now = self.now();
        let manual = self.with(&offer.device_id, |d| d.behavior == Behavior::Manual).unwrap_or(true);
        if manual {
            return;
        }
        if let Some(hb) = self.with(&offer.device_id, |d| d.finish_reboot(&offer, now)).flatten() {
            let started = Instant::now();
            if self.put(&hb).await.is_ok() {
                lock(&self.stats).awaiting_put_ack.insert(offer.device_id.clone(), started.elapsed());
            }
        }
    }

    async fn on_command(&self, id: &DeviceId, payload: &[u8]) -> CommandReply {
        let cmd = match Command::decode(payload) {
            Ok(c) => c,
            Err(e) => return CommandReply::from_result(Err(e)),
        };
        let now = self.now();
        let result = match cmd {
            Command::Commit(args) => {
                let done = self.with(id, |d| {
                    if let Some(t) = d.awaiting_since.take() {
                        let mut stats = lock(&self.stats);
                        stats.commit_latency.push(t.elapsed());
                        stats.commit_latency_of.insert(id.clone(), t.elapsed());
                        stats.commit_times.push(Instant::now());
                    }
                    let evidence = (args.boot_id.clone(), args.target_version.clone());
                    if !d.awaiting_sent.contains(&evidence) {
                        d.unjustified_commits.push(format!(
                            "commit for boot {} version {} without such an awaiting-commit heartbeat",
                            args.boot_id, args.target_version
                        ));
                    }
                    lock(&self.stats).committed += 1;
                    d.commits.push(args.clone());
                    if d.upgrade.phase == UpgradePhase::AwaitingCommit {
                        d.upgrade.phase = UpgradePhase::Committed;
                        d.upgrade.since = now;
                    }
                    (d.heartbeat(now), d.slot.clone(), d.behavior != Behavior::Manual)
                });
                match done {
                    Some((hb, slot, beat)) => {
                        if beat {
                            let _ = self.put(&hb).await;
                        }
                        Ok(ReplyBody::Committed { slot })
                    }
                    None => Err(harmony_protocol::CommandError::Refused { detail: "unknown device".into() }),
                }
            }
            Command::Ping => Ok(ReplyBody::Pong {
                agent_version: "sim".into(),
                uptime_secs: 1,
                booted_slot: self.with(id, |d| d.slot.clone()),
                boot_id: self.with(id, |d| d.boot_id.clone()).unwrap_or_default(),
            }),
            Command::Reboot => {
                // As the agent decides (`allows_operator_reboot`, its
                // machine's rule): not in the middle of an upgrade. The reboot is at once: a
                // new boot id, announced by the next heartbeat.
                let rebooted = self.with(id, |d| {
                    if !d.upgrade.phase.allows_operator_reboot() {
                        return Err(format!("not rebooting during upgrade phase {}", d.upgrade.phase.name()));
                    }
                    d.reboot();
                    Ok((d.heartbeat(now), d.behavior != Behavior::Manual))
                });
                match rebooted {
                    Some(Ok((hb, beat))) => {
                        if beat {
                            let _ = self.put(&hb).await;
                        }
                        Ok(ReplyBody::RebootScheduled)
                    }
                    Some(Err(detail)) => Err(harmony_protocol::CommandError::Refused { detail }),
                    None => Err(harmony_protocol::CommandError::Refused { detail: "unknown device".into() }),
                }
            }
            _ => Err(harmony_protocol::CommandError::Refused { detail: "not simulated".into() }),
        };
        CommandReply::from_result(result)
    }
}
