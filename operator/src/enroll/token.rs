//! Enrollment tokens: `hfe1_<id>_<secret>`. The id names the token in
//! `enroll token list|revoke` and in logs; only a SHA-256 of the secret is
//! stored, so the operator's bucket never holds a usable token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use harmony_protocol::enroll::{EnrollRefusal, TOKEN_PREFIX};
use harmony_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// KV key prefix of token records in the operator bucket.
pub const TOKEN_KEY_PREFIX: &str = "enroll-token.";

/// How many device ids a token record remembers (for `token list`).
const REMEMBERED_DEVICES: usize = 100;

pub fn token_key(id: &str) -> String {
    format!("{TOKEN_KEY_PREFIX}{id}")
}

/// A token as the operator stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Given to every device enrolled with it (win over the device's own).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub max_uses: u32,
    #[serde(default)]
    pub uses: u32,
    /// Unix seconds.
    pub expires_at: u64,
    #[serde(default)]
    pub require_approval: bool,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    pub created_at: u64,
    pub created_by: String,
    /// The first devices enrolled with it.
    #[serde(default)]
    pub devices: Vec<DeviceId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Splits a presented token; `None` for anything not shaped like ours (so
/// it is never used as a KV key).
pub fn parse(token: &str) -> Option<ParsedToken<'_>> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let secret_ok = secret.len() == 43 && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(ParsedToken { id, secret })
}

pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new token and its record. The token text is shown once, never stored.
pub fn generate(
    labels: BTreeMap<String, String>,
    max_uses: u32,
    expires_at: u64,
    require_approval: bool,
    created_by: &str,
    now: u64,
) -> Result<(String, TokenRecord), getrandom::Error> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut id)?;
    getrandom::getrandom(&mut secret)?;
    let id = hex::encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let record = TokenRecord {
        id: id.clone(),
        secret_sha256: secret_digest(&secret),
        labels,
        max_uses,
        uses: 0,
        expires_at,
        require_approval,
        revoked_at: None,
        created_at: now,
        created_by: created_by.to_string(),
        devices: Vec::new(),
    };
    Ok((format!("{TOKEN_PREFIX}{id}_{secret}"), record))
}

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Valid,
    Revoked,
    Expired,
    UsedUp,
}

impl TokenState {
    /// `now` in Unix seconds. The one ordering of a token's limits: the
    /// CLI, the dashboard and [`check`] all go by it.
    pub fn of(t: &TokenRecord, now: u64) -> Self {
        if t.revoked_at.is_some() {
            Self::Revoked
        } else if now >= t.expires_at {
            Self::Expired
        } else if t.uses >= t.max_uses {
            Self::UsedUp
        } else {
            Self::Valid
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::UsedUp => "used up",
        }
    }
}

/// Whether `secret` opens `record` at `now`, and if not why. Checked by
/// the callout (may this connection ask?) and again by the enrollment
/// service (may it be recorded?), which also spends a use.
pub fn check(record: &TokenRecord, secret: &str, now: u64) -> Result<(), (EnrollRefusal, String)> {
    if secret_digest(secret) != record.secret_sha256 {
        return Err((EnrollRefusal::TokenInvalid, format!("token {} secret does not match", record.id)));
    }
    let id = &record.id;
    match TokenState::of(record, now) {
        TokenState::Valid => {}
        TokenState::Revoked => return Err((EnrollRefusal::TokenRevoked, format!("token {id} was revoked"))),
        TokenState::Expired => {
            return Err((EnrollRefusal::TokenExpired, format!("token {id} expired at {}", record.expires_at)))
        }
        TokenState::UsedUp => {
            let detail = format!("token {id} used {} of {} times", record.uses, record.max_uses);
            return Err((EnrollRefusal::TokenUsedUp, detail));
        }
    }
    Ok(())
}

/// The record after one more device enrolled with it.
pub fn spend(record: &TokenRecord, device: &DeviceId) -> TokenRecord {
    let mut next = record.clone();
    next.uses = next.uses.saturating_add(1);
    if next.devices.len() < REMEMBERED_DEVICES {
        next.devices.push(device.clone());
    }
    next
}

/// Parses `7d`, `12h`, `30m`, `45s` into seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|s| *s > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(max_uses: u32) -> (String, TokenRecord) {
        generate(BTreeMap::new(), max_uses, 1_000, false, "alice", 100).unwrap()
    }

    #[test]
    fn token_round_trips_and_only_its_digest_is_stored() {
        let (token, record) = fresh(1);
        let p = parse(&token).unwrap();
        assert_eq!(p.id, record.id);
        assert!(!serde_json::to_string(&record).unwrap().contains(p.secret));
        assert_eq!(check(&record, p.secret, 500), Ok(()));
        assert_ne!(fresh(1).0, token, "random");
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let (token, _) = fresh(1);
        for bad in [
            "",
            "hfe1_",
            &token[..token.len() - 1],
            &token.replace("hfe1_", "hfe2_"),
            &format!("{token}x"),
            "hfe1_../../etc_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "hfe1_ABCDEF012345_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_limit_refuses_with_its_reason() {
        let (token, record) = fresh(2);
        let secret = parse(&token).unwrap().secret;
        let reason = |r: &TokenRecord, s: &str, now| check(r, s, now).unwrap_err().0;
        let (other, _) = fresh(1);
        assert_eq!(reason(&record, parse(&other).unwrap().secret, 500), EnrollRefusal::TokenInvalid);
        assert_eq!(reason(&record, secret, 1_000), EnrollRefusal::TokenExpired);
        let revoked = TokenRecord { revoked_at: Some(200), ..record.clone() };
        assert_eq!(reason(&revoked, secret, 500), EnrollRefusal::TokenRevoked);
        let d = DeviceId::new("d1").unwrap();
        let once = spend(&record, &d);
        assert_eq!(check(&once, secret, 500), Ok(()));
        let twice = spend(&once, &d);
        assert_eq!((twice.uses, twice.devices.len()), (2, 2));
        assert_eq!(reason(&twice, secret, 500), EnrollRefusal::TokenUsedUp);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Some(604_800));
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("90s"), Some(90));
        for bad in ["", "d", "7", "7y", "0d", "-1d", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
