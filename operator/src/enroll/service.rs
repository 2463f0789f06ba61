//! The enrollment service: answers [`EnrollRequest`]s on
//! `harmony.v1.enroll.<nkey>` (only connections the callout let in to
//! enroll can publish there, each on its own key's subject).
//!
//! Writes are made safe against other operator processes by the bucket
//! itself: a token use is spent with a compare-and-set on the token's
//! revision, and a device record is created only if its key is absent.

use super::decide::{enroll, EnrollDecision};
use super::directory::Directory;
use super::token::{self, TokenRecord};
use crate::clock::Clock;
use crate::model::keys;
use crate::provision::{DeviceStatus, DeviceUser};
use crate::ratelimit::WarnLimiter;
use crate::store;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use harmony_protocol::enroll::{
    all_enroll_subjects, is_user_nkey, EnrollRefusal, EnrollReply, EnrollRequest, MAX_ENROLL_REQUEST_BYTES,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const QUEUE: &str = "harmony-enroll";
/// Compare-and-set attempts on a token that other enrollments also spend.
const SPEND_ATTEMPTS: usize = 8;

#[derive(Debug)]
pub struct EnrollService {
    pub dir: Arc<Directory>,
    pub state: kv::Store,
    pub clock: Arc<dyn Clock>,
}

/// A token bucket: `rate` requests per second, bursts up to `rate`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self { rate, tokens: rate, at: now }
    }
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refuse(reason: EnrollRefusal, detail: impl Into<String>) -> EnrollReply {
    EnrollReply::Refused { reason, detail: detail.into() }
}

fn reply_for(record: &DeviceUser) -> EnrollReply {
    match record.status {
        DeviceStatus::Active => EnrollReply::Enrolled { device: record.device.clone(), labels: record.labels.clone() },
        DeviceStatus::Pending => EnrollReply::Pending { device: record.device.clone() },
        DeviceStatus::Rejected | DeviceStatus::Revoked => {
            refuse(EnrollRefusal::Rejected, format!("device {} is {}", record.device, record.status.as_str()))
        }
    }
}

impl EnrollService {
    fn now_secs(&self) -> u64 {
        self.clock.now().0 / 1000
    }

    /// Handles one request that arrived on `subject`.
    pub async fn handle(&self, subject: &str, payload: &[u8]) -> EnrollReply {
        let Some(nkey) = subject.rsplit('.').next().filter(|k| is_user_nkey(k)) else {
            return refuse(EnrollRefusal::Malformed, "subject does not end in a user nkey");
        };
        if payload.len() > MAX_ENROLL_REQUEST_BYTES {
            return refuse(
                EnrollRefusal::TooLarge,
                format!("{} bytes, at most {MAX_ENROLL_REQUEST_BYTES}", payload.len()),
            );
        }
        let req: EnrollRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => return refuse(EnrollRefusal::Malformed, format!("request does not decode: {e}")),
        };
        for _ in 0..SPEND_ATTEMPTS {
            // The token fresh from the bucket (with the revision to spend
            // against), the device records from the directory.
            let (token, token_rev) = match self.fresh_token(&req.token).await {
                Ok(t) => t,
                Err(e) => return refuse(EnrollRefusal::Busy, format!("cannot read the token: {e}")),
            };
            let by_key = self.dir.by_nkey(nkey);
            let by_id = self.dir.by_id(&req.device);
            let decision = enroll(&req, nkey, by_key.as_ref(), by_id.as_ref(), token.as_ref(), self.now_secs());
            match decision {
                EnrollDecision::Answer(record) => return reply_for(&record),
                EnrollDecision::Refuse(reason, detail) => return refuse(reason, detail),
                EnrollDecision::Record { record, token } => {
                    let key = token::token_key(&token.id);
                    let Ok(value) = serde_json::to_vec(&token) else {
                        return refuse(EnrollRefusal::Busy, "cannot encode the token");
                    };
                    match self.state.update(&key, Bytes::from(value), token_rev).await {
                        Ok(_) => {}
                        // Another enrollment spent it first: decide again.
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => return refuse(EnrollRefusal::Busy, format!("cannot spend the token: {e}")),
                    }
                    return self.create(&record, &token).await;
                }
            }
        }
        refuse(EnrollRefusal::Busy, "token contended; ask again")
    }

    async fn fresh_token(&self, presented: &str) -> crate::Result<(Option<TokenRecord>, u64)> {
        let Some(parsed) = token::parse(presented) else { return Ok((None, 0)) };
        let entry = self.state.entry(token::token_key(parsed.id)).await.map_err(crate::Error::nats)?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => Ok((store::decode(&e).ok(), e.revision)),
            _ => Ok((None, 0)),
        }
    }

    /// Writes the new record (only if the id is free) and answers.
    async fn create(&self, record: &DeviceUser, spent: &TokenRecord) -> EnrollReply {
        let Ok(value) = serde_json::to_vec(record) else {
            return refuse(EnrollRefusal::Busy, "cannot encode the record");
        };
        match self.state.create(keys::device(&record.device), Bytes::from(value)).await {
            Ok(_) => {
                log::info!(
                    "enroll: device {} enrolled with token {} ({}), key {}",
                    record.device,
                    spent.id,
                    record.status.as_str(),
                    record.nkey
                );
                reply_for(record)
            }
            Err(e) => {
                // Not recorded: give the use back so the refusal costs nothing.
                self.refund(&spent.id).await;
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    refuse(EnrollRefusal::DeviceIdTaken, format!("device id {} was just taken", record.device))
                } else {
                    refuse(EnrollRefusal::Busy, format!("cannot record the device: {e}"))
                }
            }
        }
    }

    async fn refund(&self, token_id: &str) {
        let key = token::token_key(token_id);
        for _ in 0..SPEND_ATTEMPTS {
            let Ok(Some(entry)) = self.state.entry(key.clone()).await else { return };
            let Ok(mut t) = store::decode::<TokenRecord>(&entry) else { return };
            t.uses = t.uses.saturating_sub(1);
            let Ok(value) = serde_json::to_vec(&t) else { return };
            if self.state.update(&key, Bytes::from(value), entry.revision).await.is_ok() {
                return;
            }
        }
        log::warn!("enroll: could not give back a use of token {token_id}");
    }
}

/// Answers enrollment requests until `client` closes, at most
/// `per_sec` a second (more are told `busy`).
pub async fn serve(client: async_nats::Client, service: Arc<EnrollService>, per_sec: u32) -> crate::Result<()> {
    let subject = all_enroll_subjects();
    let mut sub = client.queue_subscribe(subject.clone(), QUEUE.into()).await.map_err(crate::Error::nats)?;
    log::info!("enroll: answering {subject} (at most {per_sec}/s)");
    let mut limit = RateLimit::new(per_sec, Instant::now());
    let mut warn = WarnLimiter::new(Duration::from_secs(10));
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else { continue };
        let reply = if limit.allow(Instant::now()) {
            service.handle(msg.subject.as_str(), &msg.payload).await
        } else {
            refuse(EnrollRefusal::Busy, "too many enrollment requests; ask again later")
        };
        if let EnrollReply::Refused { reason, detail } = &reply {
            if let Some(held) = warn.allow(&format!("{reason:?}"), Instant::now()) {
                log::warn!("enroll: refused {} ({reason:?}): {detail} [{held} similar not logged]", msg.subject);
            }
        }
        match serde_json::to_vec(&reply) {
            Ok(body) => {
                if let Err(e) = client.publish(reply_to, body.into()).await {
                    log::warn!("enroll: cannot answer {}: {e}", msg.subject);
                }
            }
            Err(e) => log::error!("enroll: cannot encode a reply: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(5, t0);
        assert_eq!((0..10).filter(|_| l.allow(t0)).count(), 5);
        assert!(!l.allow(t0 + Duration::from_millis(100)));
        assert!(l.allow(t0 + Duration::from_millis(250)));
        assert_eq!((0..10).filter(|_| l.allow(t0 + Duration::from_secs(10))).count(), 5, "burst capped");
    }
}
