//! Enrollment administration over the operator bucket: tokens (create,
//! revoke) and verdicts on enrolled devices (accept, reject, revoke). The
//! domain API ([`super::KvFleet`]) runs these and audits them; the CLI and
//! the dashboard both go through it.
//!
//! A token's text exists only in the [`CreatedToken`] handed back to its
//! creator: the bucket holds a digest of its secret, and nothing here logs
//! or records it.

use super::{CreatedToken, TokenSpec, Verdict};
use crate::enroll::token::TokenRecord;
use crate::enroll::{system, token};
use crate::error::{Error, Result};
use crate::model::keys;
use crate::provision::{check_label, DeviceUser};
use crate::store;
use async_nats::jetstream::kv;
use bytes::Bytes;
use harmony_protocol::DeviceId;
use serde::Serialize;
use std::collections::BTreeMap;

/// Applies `change` to the JSON record at `key` with compare-and-set;
/// [`Error::Invalid`] ending in "not found" when there is none.
pub async fn update<T, F>(state: &kv::Store, key: &str, mut change: F) -> Result<T>
where
    T: serde::de::DeserializeOwned + Serialize,
    F: FnMut(T) -> Result<T>,
{
    for _ in 0..8 {
        let entry = state.entry(key.to_string()).await.map_err(Error::nats)?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(Error::Invalid(format!("{key} not found")));
        };
        let next = change(store::decode(&entry)?)?;
        let value = serde_json::to_vec(&next).map_err(|e| Error::Invalid(e.to_string()))?;
        match state.update(key, Bytes::from(value), entry.revision).await {
            Ok(_) => return Ok(next),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(Error::nats(e)),
        }
    }
    Err(Error::Nats(format!("{key} keeps changing; try again")))
}

/// Checks a token spec: its labels, its lifetime in seconds.
pub fn check_spec(spec: &TokenSpec) -> Result<(BTreeMap<String, String>, u64)> {
    let labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(check_label)
        .collect::<Result<_>>()?;
    let ttl = token::parse_duration(&spec.expires)
        .ok_or_else(|| Error::Invalid(format!("expires {:?}: use e.g. 30m, 12h, 7d", spec.expires)))?;
    if spec.max_uses == 0 {
        return Err(Error::Invalid("max uses must be at least 1".into()));
    }
    Ok((labels, ttl))
}

/// Makes a token and stores its record (create-only).
pub async fn create_token(state: &kv::Store, spec: &TokenSpec, created_by: &str, now: u64) -> Result<CreatedToken> {
    let (labels, ttl) = check_spec(spec)?;
    let expires_at = now.checked_add(ttl).ok_or_else(|| Error::Invalid("expiry too far away".into()))?;
    let (text, record) = token::generate(labels, spec.max_uses, expires_at, spec.require_approval, created_by, now)
        .map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    let value = serde_json::to_vec(&record).map_err(|e| Error::Invalid(e.to_string()))?;
    state
        .create(token::token_key(&record.id), Bytes::from(value))
        .await
        .map_err(|e| Error::Nats(format!("token {}: {e}", record.id)))?;
    log::info!("enroll: token {} created by {} ({} uses)", record.id, record.created_by, record.max_uses);
    Ok(CreatedToken { token: text, record })
}

/// Whether `id` is shaped like a token id (so it is safe as a KV key).
fn token_id_ok(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Marks a token revoked (kept as it was if it already is).
pub async fn revoke_token(state: &kv::Store, id: &str, now: u64) -> Result<TokenRecord> {
    if !token_id_ok(id) {
        return Err(Error::Invalid(format!("no token {id:?}")));
    }
    let t = update(state, &token::token_key(id), |mut t: TokenRecord| {
        t.revoked_at.get_or_insert(now);
        Ok(t)
    })
    .await
    .map_err(|e| match e {
        Error::Invalid(_) => Error::Invalid(format!("no token {id}")),
        e => e,
    })?;
    log::info!("enroll: token {id} revoked");
    Ok(t)
}

/// Moves a device record to the verdict's status (compare-and-set).
pub async fn judge(state: &kv::Store, id: &DeviceId, verdict: Verdict) -> Result<DeviceUser> {
    update(state, &keys::device(id), |mut u: DeviceUser| {
        u.status = verdict.next_status(u.status).map_err(Error::Invalid)?;
        Ok(u)
    })
    .await
    .map_err(|e| match e {
        Error::Invalid(m) if m.ends_with("not found") => Error::NoSuchDevice(id.to_string()),
        e => e,
    })
}

/// Ends a device's live connections: by its id, and the enrolling one by
/// its key. Returns how many were closed.
pub async fn disconnect(sys: &async_nats::Client, account: &str, record: &DeviceUser) -> Result<usize> {
    let by_id = system::kick_user(sys, account, record.device.as_str()).await?;
    let by_key = system::kick_user(sys, account, &format!("enroll:{}", record.nkey)).await?;
    Ok(by_id + by_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::DeviceStatus;

    #[test]
    fn verdict_table() {
        use DeviceStatus::*;
        for s in [Active, Pending, Rejected, Revoked] {
            assert_eq!(Verdict::Accept.next_status(s).ok(), (s == Pending).then_some(Active), "accept {s:?}");
            assert_eq!(Verdict::Reject.next_status(s).ok(), (s == Pending).then_some(Rejected), "reject {s:?}");
            let revoked = matches!(s, Active | Pending | Revoked).then_some(Revoked);
            assert_eq!(Verdict::Revoke.next_status(s).ok(), revoked, "revoke {s:?}");
        }
        assert_eq!(Verdict::Accept.next_status(Rejected).unwrap_err(), "cannot accept a device that is rejected");
    }

    #[test]
    fn token_specs_are_checked() {
        let spec = |labels: &[&str], uses, expires: &str| TokenSpec {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            max_uses: uses,
            expires: expires.into(),
            require_approval: false,
        };
        let (labels, ttl) = check_spec(&spec(&["site=lab,room=2", "x=y"], 3, "7d")).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(ttl, 7 * 86_400);
        assert!(check_spec(&spec(&[], 0, "7d")).is_err());
        assert!(check_spec(&spec(&[], 1, "forever")).is_err());
        assert!(check_spec(&spec(&["no equals"], 1, "1h")).is_err());
        assert!(token_id_ok("0123456789ab") && !token_id_ok("../../x") && !token_id_ok("0123456789AB"));
    }
}
