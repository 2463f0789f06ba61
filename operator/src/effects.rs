//! Carrying out the coordinator's [`Action`]s through a small [`Effects`]
//! trait: the real one writes through the ordered KV writer and sends commit
//! requests over NATS; tests use [`RecordingEffects`].

use crate::coordinator::{Action, Event, State};
use crate::error::{Error, Result};
use crate::model::{keys, Job};
use crate::signer::OfferSigner;
use crate::writer::Writer;
use bytes::Bytes;
use harmony_protocol::command::{Command, CommitArgs};
use harmony_protocol::names::{OFFER_BUCKET, OPERATOR_STATE_BUCKET};
use harmony_protocol::DeviceId;
use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// The two effects the coordinator has: durable writes, and commit commands.
pub trait Effects {
    /// Put `value` under `key` in `bucket`, in order; a barrier waits for
    /// every earlier write to be durable first.
    fn put(&self, bucket: &'static str, key: &str, value: Bytes, barrier: bool);
    /// Send a commit; the outcome comes back later as [`Event::CommitReplied`].
    fn send_commit(&self, device: DeviceId, offer_seq: u64, args: CommitArgs);
}

/// Turns one step's actions into effects. Persist actions are deduplicated
/// (the record's final value is written once); order is kept, so a job and
/// its sequence number are written before its offer, and a commit goes out
/// before the job that records it is persisted.
pub fn execute(fx: &impl Effects, signer: &OfferSigner, state: &State, actions: Vec<Action>) -> Result<()> {
    let mut persisted: HashSet<String> = HashSet::new();
    let json = |k: &str, v: &dyn erased::Json| -> Result<Bytes> {
        v.to_json().map(Into::into).map_err(|e| Error::Corrupt { key: k.to_string(), detail: e.to_string() })
    };
    for action in actions {
        match action {
            Action::SendCommit { device, offer_seq, args } => {
                log::info!("commit {device} (offer {offer_seq}, boot {})", args.boot_id);
                fx.send_commit(device, offer_seq, args);
            }
            Action::WriteOffer(offer) => {
                log::info!("offer {} to {}: {}", offer.offer_seq, offer.device_id, offer.target_version);
                let env = signer.sign(&offer, state)?;
                fx.put(OFFER_BUCKET, offer.device_id.as_str(), env.encode().into(), true);
            }
            Action::PersistJob(id) => {
                let k = keys::job(&id);
                if let (true, Some(job)) = (persisted.insert(k.clone()), state.jobs.get(&id)) {
                    log_transition(job);
                    fx.put(OPERATOR_STATE_BUCKET, &k, json(&k, job)?, false);
                }
            }
            Action::PersistSeq(id) => {
                let k = keys::seq(&id);
                if let (true, Some(seq)) = (persisted.insert(k.clone()), state.seqs.get(&id)) {
                    fx.put(OPERATOR_STATE_BUCKET, &k, json(&k, seq)?, false);
                }
            }
            Action::PersistRollout(id) => {
                let k = keys::rollout(&id);
                if let (true, Some(r)) = (persisted.insert(k.clone()), state.rollouts.get(&id)) {
                    fx.put(OPERATOR_STATE_BUCKET, &k, json(&k, r)?, false);
                }
            }
        }
    }
    Ok(())
}

fn log_transition(job: &Job) {
    if let Some(t) = job.history.last() {
        log::info!("{} [{}]: {} {}", job.device, job.rollout_id, t.to, t.note);
    }
}

mod erased {
    /// Object-safe "serialize to JSON".
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}

/// The real effects: the ordered KV writer and NATS requests.
#[derive(Debug, Clone)]
pub struct NatsEffects {
    pub writer: Writer,
    pub client: async_nats::Client,
    pub replies: mpsc::UnboundedSender<Event>,
}

impl Effects for NatsEffects {
    fn put(&self, bucket: &'static str, key: &str, value: Bytes, barrier: bool) {
        self.writer.put(bucket, key, value, barrier);
    }

    fn send_commit(&self, device: DeviceId, offer_seq: u64, args: CommitArgs) {
        let client = self.client.clone();
        let tx = self.replies.clone();
        tokio::spawn(async move {
            let result = crate::serve::send_commit(&client, &device, Command::Commit(args)).await;
            if let Err(e) = &result {
                log::warn!("commit {device}: {e}");
            }
            let _ = tx.send(Event::CommitReplied { device, offer_seq, result: result.map_err(|e| e.to_string()) });
        });
    }
}

/// Test double: records every effect in order.
#[derive(Debug, Default)]
pub struct RecordingEffects {
    pub log: Mutex<Vec<String>>,
}

impl Effects for RecordingEffects {
    fn put(&self, bucket: &'static str, key: &str, _value: Bytes, barrier: bool) {
        let b = if barrier { " (barrier)" } else { "" };
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!("put {bucket}/{key}{b}"));
    }
    fn send_commit(&self, device: DeviceId, offer_seq: u64, args: CommitArgs) {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("commit {device} {offer_seq} {}", args.boot_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{step, Event};
    use crate::model::{BundleRecord, HaltThreshold, Rollout, RolloutPolicy, RolloutStatus};
    use harmony_protocol::time::UnixMillis;

    fn rollout() -> Rollout {
        let d = |s: &str| DeviceId::new(s).unwrap();
        Rollout {
            id: "r1".into(),
            bundle: BundleRecord {
                id: "2.0".into(),
                version: "2.0".into(),
                compatible: "c".into(),
                sha256: "00".into(),
                size: 1,
                pushed_at: UnixMillis(0),
                signature_sha256: None,
            },
            policy: RolloutPolicy {
                max_in_flight: 1,
                device_timeout_ms: 1000,
                reboot_timeout_ms: 1000,
                halt: HaltThreshold::Count(1),
                allow_downgrade: false,
                offer_ttl_ms: 1000,
                max_concurrent_downloads: None,
            },
            waves: vec![vec![d("a"), d("b")]],
            current_wave: 0,
            accepted_failures: 0,
            status: RolloutStatus::Running,
            created_at: UnixMillis(0),
            last_ctl_rev: 0,
            history: Vec::new(),
        }
    }

    #[test]
    fn job_and_sequence_are_written_before_the_offer_and_each_record_once() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let (state, actions) = step(State::default(), &Event::RolloutCreated(Box::new(rollout())), UnixMillis(5));
        let fx = RecordingEffects::default();
        execute(&fx, &OfferSigner::new(key, None), &state, actions).unwrap();
        let log = fx.log.into_inner().unwrap();
        assert_eq!(
            log,
            vec![
                "put harmony-operator/job.a",
                "put harmony-operator/job.b",
                "put harmony-operator/rollout.r1",
                "put harmony-operator/seq.a",
                "put harmony-offers/a (barrier)",
            ],
            "job.a is written once (its final, offered value) and before the offer"
        );
    }
}
