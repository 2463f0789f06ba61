//! The NATS auth callout: nats-server asks on `$SYS.REQ.USER.AUTH` whether
//! a connecting client may in, and as what. Every operator process answers
//! (a queue group), from its in-memory [`Directory`].

use super::decide::{admit, Admission, Presented};
use super::directory::Directory;
use super::jwt::{self, AuthorizationRequest, Grant};
use super::token;
use crate::clock::Clock;
use crate::ratelimit::WarnLimiter;
use crate::store;
use async_nats::jetstream::kv;
use futures::StreamExt;
use harmony_protocol::enroll::enroll_permissions;
use harmony_protocol::permissions::device_permissions;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where nats-server sends authorization requests.
pub const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
const QUEUE: &str = "harmony-callout";

/// An enrolling connection is let in this long: enough to ask (and, while
/// pending approval, to ask again a few times).
const ENROLL_GRANT_SECS: u64 = 600;

/// nats-server's authorization timeout in callout mode (`timeout` in the
/// block `enroll server-config` prints): older requests are not answered.
pub const STALE_AFTER_SECS: u64 = super::server_config::AUTH_TIMEOUT_SECS;

/// How long an unknown key waits for this process to see records written
/// by another operator process a moment ago.
const CATCH_UP: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Callout {
    pub issuer: nkeys::KeyPair,
    pub account: String,
    pub grant_ttl_secs: u64,
    pub dir: Arc<Directory>,
    pub state: kv::Store,
    pub clock: Arc<dyn Clock>,
    warn: Mutex<WarnLimiter>,
    /// Per server id, the newest `iat` of its requests.
    newest_request: Mutex<std::collections::HashMap<String, u64>>,
}

impl Callout {
    pub fn new(
        issuer: nkeys::KeyPair,
        account: String,
        grant_ttl_secs: u64,
        dir: Arc<Directory>,
        state: kv::Store,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            issuer,
            account,
            grant_ttl_secs,
            dir,
            state,
            clock,
            warn: Mutex::new(WarnLimiter::new(Duration::from_secs(10))),
            newest_request: Mutex::default(),
        }
    }

    fn now_secs(&self) -> u64 {
        self.clock.now().0 / 1000
    }

    /// The decision for one request (the signed answer is made by the caller).
    pub async fn decide(&self, req: &AuthorizationRequest) -> Admission {
        let opts = &req.connect_opts;
        let proven = match (&opts.nkey, &opts.sig) {
            (Some(nkey), Some(sig)) if jwt::nonce_signed_by(nkey, &req.client_info.nonce, sig) => Some(nkey.as_str()),
            _ => None,
        };
        let mut record = proven.and_then(|k| self.dir.by_nkey(k));
        if record.is_none() && proven.is_some() && opts.auth_token.is_none() {
            // Maybe enrolled through another operator process a moment ago.
            if let Ok(rev) = store::last_revision(&self.state).await {
                if rev > self.dir.revision() && self.dir.caught_up_to(rev, CATCH_UP).await {
                    record = proven.and_then(|k| self.dir.by_nkey(k));
                }
            }
        }
        let token = opts.auth_token.as_deref().and_then(token::parse).and_then(|t| self.dir.token(t.id));
        let presented = Presented { proven_nkey: proven, token: opts.auth_token.as_deref() };
        admit(&presented, record.as_ref(), token.as_ref(), self.now_secs())
    }

    /// The grant for an admission, or the refusal text.
    pub fn grant(&self, admission: &Admission) -> Result<Grant, String> {
        let now = self.now_secs();
        match admission {
            Admission::Device { device, nkey } => Ok(Grant {
                name: device.to_string(),
                permissions: {
                    let mut p = device_permissions(device);
                    let enroll = enroll_permissions(nkey);
                    p.publish.extend(enroll.publish);
                    p.subscribe.extend(enroll.subscribe);
                    p
                },
                allow_responses: true,
                expires_at: now + self.grant_ttl_secs,
            }),
            Admission::Enroll { nkey } => Ok(Grant {
                name: format!("enroll:{nkey}"),
                permissions: enroll_permissions(nkey),
                allow_responses: false,
                expires_at: now + ENROLL_GRANT_SECS,
            }),
            Admission::Deny(why) => Err(why.clone()),
        }
    }

    /// Answers one raw request: the signed response, or `None` when the
    /// request itself is unreadable (the server then times out and refuses).
    pub async fn answer(&self, payload: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(payload).ok()?;
        let verified = match jwt::decode_request(text) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("auth callout: unreadable authorization request: {e}");
                return None;
            }
        };
        let req = verified.request;
        // Load shedding: the server gave up on a request this old (its
        // authorization timeout), so answering it would only spend CPU a
        // reconnect storm needs for requests someone still waits for. Age
        // is measured against the newest request of the same server, so no
        // two clocks are compared.
        let age = {
            let mut newest = self.newest_request.lock().unwrap_or_else(PoisonError::into_inner);
            request_age(&mut newest, &req.server_id.id, verified.issued_at)
        };
        if age > STALE_AFTER_SECS {
            let allowed = self.warn.lock().unwrap_or_else(PoisonError::into_inner).allow("stale", Instant::now());
            if let Some(held) = allowed {
                log::warn!("auth callout: dropped a request {age} s old (behind; {held} more dropped since last said)");
            }
            return None;
        }
        let admission = self.decide(&req).await;
        let grant = self.grant(&admission);
        let host = &req.client_info.host;
        match &admission {
            Admission::Device { device, .. } => log::debug!("auth callout: {host} admitted as device {device}"),
            Admission::Enroll { nkey } => log::info!("auth callout: {host} admitted to enroll as {nkey}"),
            Admission::Deny(why) => {
                let allowed = self.warn.lock().unwrap_or_else(PoisonError::into_inner).allow(host, Instant::now());
                if let Some(held) = allowed {
                    let more =
                        if held > 0 { format!(" ({held} more from this host not logged)") } else { String::new() };
                    log::warn!("auth callout: {host} refused: {why}{more}");
                }
            }
        }
        let answer = grant.as_ref().map_err(String::as_str);
        match jwt::encode_response(&self.issuer, &self.account, &req, answer, self.now_secs()) {
            Ok(jwt) => Some(jwt),
            Err(e) => {
                log::error!("auth callout: cannot sign the answer: {e}");
                None
            }
        }
    }
}

/// How far a request (issued at `iat` by `server`) is behind the newest one
/// seen from that server, in seconds; remembers the newest.
fn request_age(newest: &mut std::collections::HashMap<String, u64>, server: &str, iat: u64) -> u64 {
    let n = newest.entry(server.to_string()).or_insert(0);
    *n = (*n).max(iat);
    n.saturating_sub(iat)
}

/// Answers authorization requests until `client` closes.
pub async fn serve(client: async_nats::Client, callout: Arc<Callout>) -> crate::Result<()> {
    let mut sub = client.queue_subscribe(AUTH_SUBJECT, QUEUE.into()).await.map_err(crate::Error::nats)?;
    log::info!("auth callout: answering {AUTH_SUBJECT} for account {}", callout.account);
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        let callout = callout.clone();
        let client = client.clone();
        // Each answer in its own task: an unknown key may wait for the
        // directory to catch up, and must not hold up a reconnect storm.
        tokio::spawn(async move {
            if let Some(jwt) = callout.answer(&msg.payload).await {
                if let Err(e) = client.publish(reply, jwt.into()).await {
                    log::warn!("auth callout: cannot answer: {e}");
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_as_old_as_its_servers_newest_says() {
        let mut newest = std::collections::HashMap::new();
        assert_eq!(request_age(&mut newest, "n1", 1_000), 0);
        assert_eq!(request_age(&mut newest, "n1", 1_020), 0);
        // Queued behind 20 s of newer requests: the server gave up on it.
        assert!(request_age(&mut newest, "n1", 1_000) > STALE_AFTER_SECS);
        assert_eq!(request_age(&mut newest, "n1", 1_015), 5);
        // Another server's clock is never compared with n1's.
        assert_eq!(request_age(&mut newest, "n2", 500), 0);
    }
}
