//! Download tokens: who may read which bundle over HTTP, until when.
//!
//! A token is `v1.<claims>.<signature>` (both base64url without padding):
//! the claims are JSON, the signature is ed25519 over a domain tag and the
//! exact claims bytes, made with the operator's *token key* — a key of its
//! own, never the fleet key, so a token can never pass for an offer or a
//! manifest, nor the other way round. Pure: the time is passed in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use harmony_protocol::time::UnixMillis;
use serde::{Deserialize, Serialize};

/// Bound into every signature: bytes signed for anything else never verify.
const DOMAIN_TAG: &[u8] = b"harmony-fleet/bundle-token/v1\0";
const VERSION: &str = "v1";

/// What a token grants: `device` may read bundle `bundle` (whose content
/// hashes to `sha256`) until `expires_at`, as part of `rollout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub device: String,
    pub bundle: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// The rollout's `--max-concurrent-downloads`: carried here, signed,
    /// so the server needs no rollout lookup to enforce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    pub expires_at: UnixMillis,
}

/// Why a request's token does not let it read the bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: send `Authorization: Bearer <token>` from the device's offer")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify (not issued by this operator, or altered)")]
    BadSignature,
    #[error("token expired at {expired_at} ms")]
    Expired { expired_at: u64 },
    #[error("token is for bundle {token_for:?}, not {requested:?}")]
    WrongBundle { token_for: String, requested: String },
}

impl TokenError {
    /// 401 when the request is not authenticated at all, 403 when a good
    /// token asks for something it does not grant.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::WrongBundle { .. })
    }
}

fn message(claims: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(DOMAIN_TAG.len() + claims.len());
    msg.extend_from_slice(DOMAIN_TAG);
    msg.extend_from_slice(claims);
    msg
}

/// A token for `claims`. Deterministic (ed25519 is): the same offer signed
/// again after a takeover carries the same token.
pub fn issue(key: &SigningKey, claims: &Claims) -> String {
    // A struct of strings and integers always encodes.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let signature = key.sign(&message(&json));
    format!("{VERSION}.{}.{}", URL_SAFE_NO_PAD.encode(&json), URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// The claims of `token` if it verifies with `key`, has not expired at
/// `now`, and grants `bundle`. The signature is checked before the claims
/// are parsed.
pub fn verify(key: &VerifyingKey, token: &str, bundle: &str, now: UnixMillis) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(version), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    if version != VERSION {
        return Err(TokenError::Malformed("unknown token version"));
    }
    let json = URL_SAFE_NO_PAD.decode(claims).map_err(|_| TokenError::Malformed("claims are not base64url"))?;
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(TokenError::Malformed("signature is not 64 bytes of base64url"))?;
    key.verify_strict(&message(&json), &Signature::from_bytes(&signature)).map_err(|_| TokenError::BadSignature)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("claims do not parse"))?;
    if now >= claims.expires_at {
        return Err(TokenError::Expired { expired_at: claims.expires_at.0 });
    }
    if claims.bundle != bundle {
        return Err(TokenError::WrongBundle { token_for: claims.bundle, requested: bundle.to_string() });
    }
    Ok(claims)
}

/// The token of an `Authorization` header value (`Bearer <token>`).
pub fn from_header(value: Option<&str>) -> Result<&str, TokenError> {
    let value = value.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed("expected `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Malformed("expected `Bearer <token>`"));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims() -> Claims {
        Claims {
            device: "pi-1".into(),
            bundle: "2.0".into(),
            sha256: "ab".repeat(32),
            rollout: Some("r1".into()),
            max_concurrent: Some(2),
            expires_at: UnixMillis(1_000),
        }
    }

    /// Flips one character of the claims part, keeping it valid base64url.
    fn tamper_claims(token: &str) -> String {
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut json = URL_SAFE_NO_PAD.decode(&parts[1]).unwrap();
        let text = String::from_utf8(json.clone()).unwrap().replace("pi-1", "pi-2");
        json = text.into_bytes();
        parts[1] = URL_SAFE_NO_PAD.encode(json);
        parts.join(".")
    }

    /// (case, token, bundle asked for, now, expected outcome)
    type Row = (&'static str, String, &'static str, u64, Result<(), TokenError>);

    #[test]
    fn verify_table() {
        let good = issue(&key(1), &claims());
        let other_key = issue(&key(2), &claims());
        let fleet_envelope_sig = {
            // A signature by the same key over the claims without the domain
            // tag (what another use of the key would produce) must not pass.
            let json = serde_json::to_vec(&claims()).unwrap();
            let sig = key(1).sign(&json);
            format!("v1.{}.{}", URL_SAFE_NO_PAD.encode(&json), URL_SAFE_NO_PAD.encode(sig.to_bytes()))
        };
        let pk = key(1).verifying_key();
        let rows: Vec<Row> = vec![
            ("valid", good.clone(), "2.0", 999, Ok(())),
            ("expired at the instant", good.clone(), "2.0", 1_000, Err(TokenError::Expired { expired_at: 1_000 })),
            ("expired long ago", good.clone(), "2.0", 9_999, Err(TokenError::Expired { expired_at: 1_000 })),
            (
                "other bundle",
                good.clone(),
                "3.0",
                0,
                Err(TokenError::WrongBundle { token_for: "2.0".into(), requested: "3.0".into() }),
            ),
            ("other key", other_key, "2.0", 0, Err(TokenError::BadSignature)),
            ("no domain tag", fleet_envelope_sig, "2.0", 0, Err(TokenError::BadSignature)),
            ("claims tampered", tamper_claims(&good), "2.0", 0, Err(TokenError::BadSignature)),
            ("empty", String::new(), "2.0", 0, Err(TokenError::Malformed("not three dot-separated parts"))),
            ("two parts", "v1.abc".into(), "2.0", 0, Err(TokenError::Malformed("not three dot-separated parts"))),
            ("four parts", format!("{good}.x"), "2.0", 0, Err(TokenError::Malformed("not three dot-separated parts"))),
            ("version", good.replacen("v1", "v2", 1), "2.0", 0, Err(TokenError::Malformed("unknown token version"))),
            (
                "claims not base64",
                good.replacen('.', ".!", 1),
                "2.0",
                0,
                Err(TokenError::Malformed("claims are not base64url")),
            ),
            (
                "short signature",
                good[..good.len() - 4].to_string(),
                "2.0",
                0,
                Err(TokenError::Malformed("signature is not 64 bytes of base64url")),
            ),
        ];
        for (name, token, bundle, now, want) in rows {
            let got = verify(&pk, &token, bundle, UnixMillis(now)).map(|c| assert_eq!(c, claims()));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn issuing_is_deterministic() {
        assert_eq!(issue(&key(1), &claims()), issue(&key(1), &claims()));
    }

    #[test]
    fn header_table() {
        assert_eq!(from_header(Some("Bearer abc")), Ok("abc"));
        assert_eq!(from_header(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(from_header(None), Err(TokenError::Missing));
        for bad in ["", "abc", "Basic abc", "Bearer ", "Bearer"] {
            assert!(matches!(from_header(Some(bad)), Err(TokenError::Malformed(_))), "{bad:?}");
        }
        assert!(TokenError::WrongBundle { token_for: "a".into(), requested: "b".into() }.is_forbidden());
        assert!(!TokenError::BadSignature.is_forbidden());
    }
}
