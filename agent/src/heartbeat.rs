//! The heartbeat loop: writes this device's [`Heartbeat`] to the heartbeat
//! KV bucket every interval and whenever the upgrade or health status
//! changes. It never gives up: a missing bucket or a NATS outage is logged
//! and retried on the next tick.

use crate::clock::Clock;
use crate::liveness::Liveness;
use crate::shared::{DeviceFacts, StatusBoard};
use async_nats::jetstream;
use harmony_protocol::names::{device_key, kv_put_subject, HEARTBEAT_BUCKET};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// Minimum spacing of change-triggered heartbeats (progress updates can be
/// frequent; the operator does not need more than this).
const MIN_SPACING: Duration = Duration::from_millis(500);
/// Bound on one KV write, so an outage cannot stall the loop.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct HeartbeatLoop {
    pub js: jetstream::Context,
    pub facts: Arc<DeviceFacts>,
    pub board: Arc<StatusBoard>,
    pub clock: Arc<dyn Clock>,
    pub interval: Duration,
    pub liveness: Arc<Liveness>,
}

impl HeartbeatLoop {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut upgrade_rx = self.board.upgrade.subscribe();
        let mut health_rx = self.board.health.subscribe();
        let mut last_error: Option<String> = None;
        let mut last_sent: Option<Instant> = None;
        // The first heartbeat of a boot is what the operator judges a
        // rollback or a trial boot by: it must carry the restored upgrade
        // record, not the placeholder. A wedged upgrade service stops its
        // own liveness beats, so the supervisor restarts us meanwhile.
        self.board.upgrade_restored().await;
        upgrade_rx.mark_unchanged();
        loop {
            let changed = tokio::select! {
                _ = ticker.tick() => false,
                r = upgrade_rx.changed() => r.is_ok(),
                r = health_rx.changed() => r.is_ok(),
            };
            if changed {
                if let Some(sent) = last_sent {
                    let since = sent.elapsed();
                    if since < MIN_SPACING {
                        tokio::time::sleep(MIN_SPACING - since).await;
                    }
                }
            }
            self.liveness.beat();
            match self.send().await {
                Ok(()) => {
                    if last_error.take().is_some() {
                        log::info!("heartbeats are being written again");
                    }
                    last_sent = Some(Instant::now());
                }
                Err(e) => {
                    // Log each distinct failure once, not every tick.
                    if last_error.as_deref() != Some(e.as_str()) {
                        log::error!("{e}");
                        last_error = Some(e);
                    }
                }
            }
        }
    }

    /// A JetStream publish to the heartbeat key's subject, not a KV handle:
    /// opening one needs `STREAM.INFO` on the heartbeat stream, which would
    /// also let the device list every device id (`subjects_filter`), so
    /// devices are not granted it (issue #17).
    async fn send(&self) -> Result<(), String> {
        let heartbeat = self.board.next_heartbeat(&self.facts, self.clock.now());
        let payload = serde_json::to_vec(&heartbeat).map_err(|e| format!("heartbeat not encoded: {e}"))?;
        let subject = kv_put_subject(HEARTBEAT_BUCKET, device_key(&self.facts.device_id));
        let put = async {
            let ack = self.js.publish(subject, payload.into()).await.map_err(|e| e.to_string())?;
            ack.await.map(drop).map_err(|e| e.to_string())
        };
        match tokio::time::timeout(PUT_TIMEOUT, put).await {
            Ok(Ok(())) => Ok(()),
            // Older servers answer a publish to a missing stream with "no
            // responders", 2.10+ with "no stream found for given subject".
            Ok(Err(e)) if e.contains("no responders") || e.contains("no stream found") => Err(format!(
                "heartbeat not written: KV bucket {HEARTBEAT_BUCKET} is not available ({e}); \
                 the operator creates it with `harmony-operator init`"
            )),
            Ok(Err(e)) => Err(format!("heartbeat not written: {e}")),
            Err(_) => Err("heartbeat not written: NATS did not acknowledge within 5 s (offline?)".to_string()),
        }
    }
}
