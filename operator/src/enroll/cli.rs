//! `harmony-operator enroll ...` and the enrollment side of `devices ...`.

use super::token::{self, TokenRecord, TOKEN_KEY_PREFIX};
use super::{seed_file, server_config, system, SeedKind};
use crate::commands::{actor, open, table, Output};
use crate::config::{Config, EnrollConfig};
use crate::error::{Error, Result};
use crate::model::keys;
use crate::provision::{check_label, DeviceStatus, DeviceUser};
use crate::store;
use async_nats::jetstream::kv;
use bytes::Bytes;
use harmony_protocol::DeviceId;
use serde::Serialize;
use std::collections::BTreeMap;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn enroll_cfg(cfg: &Config) -> Result<&EnrollConfig> {
    cfg.enroll.as_ref().ok_or_else(|| {
        Error::Invalid("the config has no [enroll] section (see `harmony-operator enroll server-config`)".into())
    })
}

#[derive(Debug, Clone)]
pub struct TokenArgs {
    pub labels: Vec<String>,
    pub max_uses: u32,
    pub expires: String,
    pub require_approval: bool,
}

#[derive(Serialize)]
struct Created<'a> {
    token: &'a str,
    record: &'a TokenRecord,
}

pub async fn token_create(cfg: &Config, a: &TokenArgs) -> Result<Output> {
    let labels: BTreeMap<String, String> = a.labels.iter().map(|l| check_label(l)).collect::<Result<_>>()?;
    let ttl = token::parse_duration(&a.expires)
        .ok_or_else(|| Error::Invalid(format!("--expires {:?}: use e.g. 30m, 12h, 7d", a.expires)))?;
    if a.max_uses == 0 {
        return Err(Error::Invalid("--max-uses must be at least 1".into()));
    }
    let b = open(cfg).await?;
    let now = now_secs();
    let (text, record) = token::generate(labels, a.max_uses, now + ttl, a.require_approval, &actor().name, now)
        .map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    let value = serde_json::to_vec(&record).map_err(|e| Error::Invalid(e.to_string()))?;
    b.state.create(token::token_key(&record.id), Bytes::from(value)).await.map_err(Error::nats)?;
    log::info!("enroll: token {} created by {} ({} uses)", record.id, record.created_by, record.max_uses);
    let human = format!(
        "{text}\n\ntoken {} for {} device(s), expires in {}{}; it is shown only now. \
         Write it onto a card with `harmony-operator enroll prepare --token ...`.",
        record.id,
        record.max_uses,
        a.expires,
        if record.require_approval { ", each device waits for `devices accept`" } else { "" }
    );
    Ok(Output::new(&Created { token: &text, record: &record }, human))
}

pub async fn token_list(cfg: &Config) -> Result<Output> {
    let b = open(cfg).await?;
    let mut tokens: Vec<TokenRecord> = store::decode_all(&store::read_prefix(&b.state, TOKEN_KEY_PREFIX).await?).good;
    tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at));
    let now = now_secs();
    let rows = tokens
        .iter()
        .map(|t| {
            let state = match token::check(t, "", now) {
                _ if t.revoked_at.is_some() => "revoked",
                _ if now >= t.expires_at => "expired",
                _ if t.uses >= t.max_uses => "used up",
                _ => "valid",
            };
            vec![
                t.id.clone(),
                state.to_string(),
                format!("{}/{}", t.uses, t.max_uses),
                if t.require_approval { "yes".into() } else { "no".into() },
                t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                format!("{}h", t.expires_at.saturating_sub(now) / 3600),
                t.created_by.clone(),
            ]
        })
        .collect::<Vec<_>>();
    let text = table(&["TOKEN", "STATE", "USES", "APPROVAL", "LABELS", "EXPIRES IN", "BY"], &rows);
    Ok(Output::new(&tokens, text))
}

/// Applies `change` to the KV record at `key` with compare-and-set.
async fn update<T, F>(state: &kv::Store, key: &str, mut change: F) -> Result<T>
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

pub async fn token_revoke(cfg: &Config, id: &str) -> Result<Output> {
    let b = open(cfg).await?;
    let now = now_secs();
    let t: TokenRecord = update(&b.state, &token::token_key(id), |mut t: TokenRecord| {
        t.revoked_at.get_or_insert(now);
        Ok(t)
    })
    .await
    .map_err(|e| match e {
        Error::Invalid(_) => Error::Invalid(format!("no token {id}")),
        e => e,
    })?;
    log::info!("enroll: token {id} revoked by {}", actor().name);
    let text = format!("token {id} revoked ({} device(s) enrolled with it keep their identity)", t.uses);
    Ok(Output::new(&t, text))
}

/// Prints the nats-server block for callout mode, creating the issuer and
/// system-user seeds on first use.
pub fn server_config(cfg: &Config) -> Result<Output> {
    let e = enroll_cfg(cfg)?;
    let op_seed = cfg.nats.nkey_seed_file.as_ref().ok_or_else(|| {
        Error::Invalid("callout mode needs nats.nkey_seed_file: the operator's user is named by its nkey".into())
    })?;
    let operator_user = crate::provision::operator_nkey(op_seed)?;
    let issuer = seed_file(&e.issuer_seed_file, SeedKind::Account, true)?.public_key();
    let system_user = seed_file(&e.system_seed_file, SeedKind::User, true)?.public_key();
    let keys = server_config::CalloutKeys { operator_user, system_user, issuer };
    let text = server_config::render(&e.account, &keys);
    Ok(Output { json: serde_json::json!({ "config": text }), text })
}

pub async fn pending(cfg: &Config) -> Result<Output> {
    let b = open(cfg).await?;
    let users: Vec<DeviceUser> = store::decode_all(&store::read_prefix(&b.state, "device.").await?).good;
    let pending: Vec<DeviceUser> = users.into_iter().filter(|u| u.status == DeviceStatus::Pending).collect();
    let rows = pending
        .iter()
        .map(|u| {
            let e = u.enrollment.as_ref();
            vec![
                u.device.to_string(),
                e.map(|e| e.token.clone()).unwrap_or_default(),
                u.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                e.and_then(|e| e.os_version.clone()).unwrap_or_default(),
                e.map(|e| format!("{}s ago", now_secs().saturating_sub(e.at))).unwrap_or_default(),
                u.nkey.clone(),
            ]
        })
        .collect::<Vec<_>>();
    let text = table(&["DEVICE", "TOKEN", "LABELS", "OS", "ASKED", "KEY"], &rows);
    Ok(Output::new(&pending, text))
}

/// What a `devices accept|reject|revoke` does to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
    Revoke,
}

/// The status a verdict moves a record to, or why it cannot.
pub fn next_status(verdict: Verdict, now: DeviceStatus) -> std::result::Result<DeviceStatus, String> {
    use DeviceStatus::*;
    match (verdict, now) {
        (Verdict::Accept, Pending) => Ok(Active),
        (Verdict::Reject, Pending) => Ok(Rejected),
        (Verdict::Revoke, Active | Pending) => Ok(Revoked),
        (Verdict::Revoke, Revoked) => Ok(Revoked),
        (v, s) => Err(format!("cannot {v:?} a device that is {}", s.as_str()).to_lowercase()),
    }
}

#[derive(Serialize)]
struct Judged {
    device: DeviceId,
    status: DeviceStatus,
    disconnected: usize,
}

pub async fn judge(cfg: &Config, device: &str, verdict: Verdict) -> Result<Output> {
    let id = DeviceId::new(device).map_err(|e| Error::Invalid(e.to_string()))?;
    // Revoking without a way to disconnect would leave the device online.
    let sys = match verdict {
        Verdict::Accept => None,
        Verdict::Reject | Verdict::Revoke => {
            let e = enroll_cfg(cfg)?;
            Some((system::connect(&cfg.nats.url, &e.system_seed_file).await?, e.account.clone()))
        }
    };
    let b = open(cfg).await?;
    let record: DeviceUser = update(&b.state, &keys::device(&id), |mut u: DeviceUser| {
        u.status = next_status(verdict, u.status).map_err(Error::Invalid)?;
        Ok(u)
    })
    .await
    .map_err(|e| match e {
        Error::Invalid(m) if m.ends_with("not found") => Error::NoSuchDevice(id.to_string()),
        e => e,
    })?;
    let mut disconnected = 0;
    if let Some((sys, account)) = sys {
        // The record is already refused by every callout; now end the live
        // connections (by device id, and the enrolling one by its key).
        disconnected += system::kick_user(&sys, &account, id.as_str()).await?;
        disconnected += system::kick_user(&sys, &account, &format!("enroll:{}", record.nkey)).await?;
    }
    log::info!("devices: {id} is now {} ({:?} by {})", record.status.as_str(), verdict, actor().name);
    let text = format!("{id} is now {} ({disconnected} connection(s) closed)", record.status.as_str());
    Ok(Output::new(&Judged { device: id, status: record.status, disconnected }, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_table() {
        use DeviceStatus::*;
        let all = [Active, Pending, Rejected, Revoked];
        for s in all {
            assert_eq!(next_status(Verdict::Accept, s).ok(), (s == Pending).then_some(Active), "accept {s:?}");
            assert_eq!(next_status(Verdict::Reject, s).ok(), (s == Pending).then_some(Rejected), "reject {s:?}");
            let revoked = matches!(s, Active | Pending | Revoked).then_some(Revoked);
            assert_eq!(next_status(Verdict::Revoke, s).ok(), revoked, "revoke {s:?}");
        }
    }
}
