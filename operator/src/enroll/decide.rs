//! The callout's and the enrollment service's decisions, as plain
//! functions of what is known: no clock reads, no I/O. Every combination
//! is tested below; anything not named is refused.

use super::token::{self, TokenRecord};
use crate::provision::{DeviceStatus, DeviceUser};
use harmony_protocol::enroll::{is_user_nkey, EnrollRefusal, EnrollRequest, MAX_LABEL_LEN, MAX_REQUEST_LABELS};
use harmony_protocol::{DeviceId, SCHEMA_VERSION};
use std::collections::BTreeMap;

/// What a connecting client showed, checked for shape by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The nkey it named, if its signature of the server's nonce verified.
    pub proven_nkey: Option<&'a str>,
    pub token: Option<&'a str>,
}

/// The callout's answer for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Device permissions, as that device (and its own enrollment subject,
    /// so a device that missed its "enrolled" answer can ask again).
    Device {
        device: DeviceId,
        nkey: String,
    },
    /// Enrollment permissions only, for this nkey.
    Enroll {
        nkey: String,
    },
    Deny(String),
}

/// May this connection in, and as what? `record` is the device record
/// holding the proven nkey; `token` the record of the presented token's id.
pub fn admit(
    presented: &Presented<'_>,
    record: Option<&DeviceUser>,
    token: Option<&TokenRecord>,
    now: u64,
) -> Admission {
    let Some(nkey) = presented.proven_nkey else {
        return Admission::Deny("no nkey, or its signature of the nonce did not verify".into());
    };
    if !is_user_nkey(nkey) {
        return Admission::Deny("not a user nkey".into());
    }
    if let Some(r) = record {
        return match r.status {
            DeviceStatus::Active => Admission::Device { device: r.device.clone(), nkey: nkey.to_string() },
            // Waiting for approval: it may ask again, nothing more.
            DeviceStatus::Pending => Admission::Enroll { nkey: nkey.to_string() },
            s @ (DeviceStatus::Rejected | DeviceStatus::Revoked) => {
                Admission::Deny(format!("device key is {}", s.as_str()))
            }
        };
    }
    let Some(presented_token) = presented.token else {
        return Admission::Deny("unknown nkey and no enrollment token".into());
    };
    let Some(parsed) = token::parse(presented_token) else {
        return Admission::Deny("malformed enrollment token".into());
    };
    match token {
        Some(t) if t.id == parsed.id => match token::check(t, parsed.secret, now) {
            Ok(()) => Admission::Enroll { nkey: nkey.to_string() },
            Err((_, detail)) => Admission::Deny(detail),
        },
        _ => Admission::Deny(format!("unknown enrollment token {}", parsed.id)),
    }
}

/// What the enrollment service does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollDecision {
    /// Write this new record and spend one use of the token.
    Record {
        record: DeviceUser,
        token: TokenRecord,
    },
    /// Already recorded for this key: answer from the record, spend nothing
    /// (the device missed the first reply, or asks again while pending).
    Answer(DeviceUser),
    Refuse(EnrollRefusal, String),
}

/// Checks a request's own shape: schema, labels, and that it speaks for the
/// key it connected with.
pub fn check_request(req: &EnrollRequest, connected_nkey: &str) -> Result<(), (EnrollRefusal, String)> {
    if req.schema > SCHEMA_VERSION {
        return Err((EnrollRefusal::Unsupported, format!("schema {} > {SCHEMA_VERSION}", req.schema)));
    }
    if req.nkey != connected_nkey || !is_user_nkey(&req.nkey) {
        return Err((EnrollRefusal::Malformed, "request nkey differs from the subject's".into()));
    }
    if req.labels.len() > MAX_REQUEST_LABELS {
        return Err((EnrollRefusal::Malformed, format!("{} labels, at most {MAX_REQUEST_LABELS}", req.labels.len())));
    }
    for (k, v) in &req.labels {
        let key_ok = !k.is_empty() && crate::model::valid_name(k);
        if !key_ok || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN || v.chars().any(char::is_control) {
            return Err((EnrollRefusal::Malformed, format!("label {k:?}")));
        }
    }
    Ok(())
}

/// Decides an enrollment request. `by_key`: the record holding the
/// request's nkey; `by_id`: the record of the requested device id.
pub fn enroll(
    req: &EnrollRequest,
    connected_nkey: &str,
    by_key: Option<&DeviceUser>,
    by_id: Option<&DeviceUser>,
    token: Option<&TokenRecord>,
    now: u64,
) -> EnrollDecision {
    if let Err((reason, detail)) = check_request(req, connected_nkey) {
        return EnrollDecision::Refuse(reason, detail);
    }
    if let Some(existing) = by_key {
        return match existing.status {
            DeviceStatus::Active | DeviceStatus::Pending => EnrollDecision::Answer(existing.clone()),
            DeviceStatus::Rejected | DeviceStatus::Revoked => EnrollDecision::Refuse(
                EnrollRefusal::Rejected,
                format!("device {} is {}", existing.device, existing.status.as_str()),
            ),
        };
    }
    let Some(parsed) = token::parse(&req.token) else {
        return EnrollDecision::Refuse(EnrollRefusal::TokenInvalid, "malformed token".into());
    };
    let token = match token {
        Some(t) if t.id == parsed.id => t,
        _ => return EnrollDecision::Refuse(EnrollRefusal::TokenInvalid, format!("unknown token {}", parsed.id)),
    };
    if let Err((reason, detail)) = token::check(token, parsed.secret, now) {
        return EnrollDecision::Refuse(reason, detail);
    }
    if let Some(other) = by_id {
        // Another key holds this id (a cloned card, or a device lying about
        // its id). A re-flashed card has a new machine id, hence a new id.
        return EnrollDecision::Refuse(
            EnrollRefusal::DeviceIdTaken,
            format!("device id {} is held by another key ({})", other.device, other.status.as_str()),
        );
    }
    let mut labels: BTreeMap<String, String> = req.labels.clone();
    labels.extend(token.labels.clone());
    let status = if token.require_approval { DeviceStatus::Pending } else { DeviceStatus::Active };
    let record = DeviceUser {
        device: req.device.clone(),
        nkey: req.nkey.clone(),
        labels,
        status,
        enrollment: Some(crate::provision::Enrollment {
            at: now,
            token: token.id.clone(),
            agent_version: req.agent_version.chars().take(MAX_LABEL_LEN).collect(),
            os_version: req.os_version.as_ref().map(|v| v.chars().take(MAX_LABEL_LEN).collect()),
        }),
    };
    EnrollDecision::Record { token: token::spend(token, &req.device), record }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 500;

    fn key() -> String {
        nkeys::KeyPair::new_user().public_key()
    }

    fn token(max_uses: u32, approval: bool) -> (String, TokenRecord) {
        let labels = BTreeMap::from([("site".to_string(), "lab".to_string())]);
        token::generate(labels, max_uses, 1_000, approval, "alice", 100).unwrap()
    }

    fn record(nkey: &str, status: DeviceStatus) -> DeviceUser {
        DeviceUser { status, ..DeviceUser::provisioned(DeviceId::new("pi-1").unwrap(), nkey.into(), BTreeMap::new()) }
    }

    fn request(nkey: &str, token: &str) -> EnrollRequest {
        EnrollRequest {
            schema: SCHEMA_VERSION,
            token: token.into(),
            nkey: nkey.into(),
            device: DeviceId::new("pi-1").unwrap(),
            labels: BTreeMap::from([
                ("site".to_string(), "home".to_string()),
                ("room".to_string(), "hall".to_string()),
            ]),
            agent_version: "0.1.0".into(),
            os_version: Some("1.0.0".into()),
        }
    }

    #[test]
    fn admission_table() {
        let k = key();
        let (tok, rec) = token(1, false);
        let (other_tok, _) = token(1, false);
        let with = |token| Presented { proven_nkey: Some(&k), token };
        let deny = |a: Admission| matches!(a, Admission::Deny(_));
        let enroll = Admission::Enroll { nkey: k.clone() };
        // No proof of the key: never, whatever else.
        let unproven = Presented { proven_nkey: None, token: Some(&tok) };
        assert!(deny(admit(&unproven, Some(&record(&k, DeviceStatus::Active)), Some(&rec), NOW)));
        assert!(deny(admit(&Presented { proven_nkey: Some("NSERVERKEY"), token: Some(&tok) }, None, Some(&rec), NOW)));
        // Known keys: by status; the token does not matter.
        for token_given in [None, Some(tok.as_str())] {
            let p = with(token_given);
            let active = admit(&p, Some(&record(&k, DeviceStatus::Active)), None, NOW);
            assert_eq!(active, Admission::Device { device: DeviceId::new("pi-1").unwrap(), nkey: k.clone() });
            assert_eq!(admit(&p, Some(&record(&k, DeviceStatus::Pending)), None, NOW), enroll);
            assert!(deny(admit(&p, Some(&record(&k, DeviceStatus::Rejected)), Some(&rec), NOW)));
            assert!(deny(admit(&p, Some(&record(&k, DeviceStatus::Revoked)), Some(&rec), NOW)));
        }
        // Unknown keys: only a good token lets them ask.
        assert_eq!(admit(&with(Some(&tok)), None, Some(&rec), NOW), enroll);
        assert!(deny(admit(&with(None), None, Some(&rec), NOW)));
        assert!(deny(admit(&with(Some("garbage")), None, Some(&rec), NOW)));
        assert!(deny(admit(&with(Some(&tok)), None, None, NOW)), "token record missing");
        assert!(deny(admit(&with(Some(&other_tok)), None, Some(&rec), NOW)), "other token's id");
        assert!(deny(admit(&with(Some(&tok)), None, Some(&rec), 1_000)), "expired");
        let used = TokenRecord { uses: 1, ..rec.clone() };
        assert!(deny(admit(&with(Some(&tok)), None, Some(&used), NOW)), "used up");
        let revoked = TokenRecord { revoked_at: Some(1), ..rec.clone() };
        assert!(deny(admit(&with(Some(&tok)), None, Some(&revoked), NOW)), "revoked");
        // Same id, forged secret.
        let forged = format!("{}{}", &tok[..tok.len() - 3], if tok.ends_with("AAA") { "BBB" } else { "AAA" });
        assert!(deny(admit(&with(Some(&forged)), None, Some(&rec), NOW)), "forged");
    }

    #[test]
    fn enrollment_records_a_new_device_and_spends_one_use() {
        let k = key();
        let (tok, rec) = token(2, false);
        let EnrollDecision::Record { record, token: spent } =
            enroll(&request(&k, &tok), &k, None, None, Some(&rec), NOW)
        else {
            panic!("recorded")
        };
        assert_eq!(record.status, DeviceStatus::Active);
        assert_eq!(record.nkey, k);
        assert_eq!(record.labels.get("site").map(String::as_str), Some("lab"), "token labels win");
        assert_eq!(record.labels.get("room").map(String::as_str), Some("hall"), "device labels kept");
        assert_eq!(record.enrollment.as_ref().map(|e| e.token.as_str()), Some(rec.id.as_str()));
        assert_eq!(spent.uses, 1);

        let (tok, rec) = token(1, true);
        let EnrollDecision::Record { record, .. } = enroll(&request(&k, &tok), &k, None, None, Some(&rec), NOW) else {
            panic!("recorded")
        };
        assert_eq!(record.status, DeviceStatus::Pending);
    }

    #[test]
    fn known_keys_are_answered_without_spending() {
        let k = key();
        let (tok, rec) = token(1, false);
        let used_up = TokenRecord { uses: 1, ..rec.clone() };
        for status in [DeviceStatus::Active, DeviceStatus::Pending] {
            let r = record(&k, status);
            let d = enroll(&request(&k, &tok), &k, Some(&r), Some(&r), Some(&used_up), NOW);
            assert_eq!(d, EnrollDecision::Answer(r));
        }
        for status in [DeviceStatus::Rejected, DeviceStatus::Revoked] {
            let r = record(&k, status);
            let d = enroll(&request(&k, &tok), &k, Some(&r), Some(&r), Some(&rec), NOW);
            assert!(matches!(d, EnrollDecision::Refuse(EnrollRefusal::Rejected, _)), "{d:?}");
        }
    }

    #[test]
    fn refusals() {
        let k = key();
        let (tok, rec) = token(1, false);
        let refused = |d: EnrollDecision| match d {
            EnrollDecision::Refuse(r, _) => r,
            other => panic!("{other:?}"),
        };
        let go = |req: &EnrollRequest, by_id: Option<&DeviceUser>, t: Option<&TokenRecord>, now| {
            refused(enroll(req, &k, None, by_id, t, now))
        };
        let req = request(&k, &tok);
        // Another key holds the id: a second device claiming an enrolled id.
        let holder = record(&key(), DeviceStatus::Active);
        assert_eq!(go(&req, Some(&holder), Some(&rec), NOW), EnrollRefusal::DeviceIdTaken);
        assert_eq!(go(&req, None, Some(&rec), 1_000), EnrollRefusal::TokenExpired);
        assert_eq!(go(&req, None, Some(&TokenRecord { uses: 1, ..rec.clone() }), NOW), EnrollRefusal::TokenUsedUp);
        let revoked = TokenRecord { revoked_at: Some(1), ..rec.clone() };
        assert_eq!(go(&req, None, Some(&revoked), NOW), EnrollRefusal::TokenRevoked);
        assert_eq!(go(&req, None, None, NOW), EnrollRefusal::TokenInvalid);
        assert_eq!(go(&request(&k, "hfe1_nope"), None, Some(&rec), NOW), EnrollRefusal::TokenInvalid);
        // Speaking for another key.
        let mut other = req.clone();
        other.nkey = key();
        assert_eq!(go(&other, None, Some(&rec), NOW), EnrollRefusal::Malformed);
        let mut newer = req.clone();
        newer.schema = SCHEMA_VERSION + 1;
        assert_eq!(go(&newer, None, Some(&rec), NOW), EnrollRefusal::Unsupported);
        let mut many = req.clone();
        many.labels = (0..=MAX_REQUEST_LABELS).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert_eq!(go(&many, None, Some(&rec), NOW), EnrollRefusal::Malformed);
        let mut bad_label = req.clone();
        bad_label.labels = BTreeMap::from([("a b".to_string(), "v".to_string())]);
        assert_eq!(go(&bad_label, None, Some(&rec), NOW), EnrollRefusal::Malformed);
        let mut long_value = req;
        long_value.labels = BTreeMap::from([("a".to_string(), "v".repeat(MAX_LABEL_LEN + 1))]);
        assert_eq!(go(&long_value, None, Some(&rec), NOW), EnrollRefusal::Malformed);
    }
}
