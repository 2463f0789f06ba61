//! Signed envelopes: an ed25519 signature over the exact payload bytes.
//!
//! The payload travels as the JSON text that was signed, so the receiver
//! verifies the bytes it got before parsing them; no canonical re-encoding
//! of JSON is ever needed. The signed message binds a domain tag and the key
//! id, so a signature cannot be replayed as another kind of message or
//! attributed to another key.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const DOMAIN_TAG: &[u8] = b"harmony-fleet/signed-envelope/v1\0";

/// Short id of a public key: hex of the first 8 bytes of its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        Self(hex::encode(&digest[..8]))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEnvelope {
    pub key_id: KeyId,
    /// The signed JSON text of the payload.
    pub payload: String,
    /// Hex ed25519 signature over [`SignedEnvelope::message`].
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("payload could not be encoded: {0}")]
    Encode(serde_json::Error),
    #[error("signed by unknown key {0}")]
    UnknownKey(KeyId),
    #[error("signature is not 64 bytes of hex")]
    MalformedSignature,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signed payload is not a valid message: {0}")]
    Payload(serde_json::Error),
    #[error("key is not 32 bytes of hex")]
    MalformedKey,
}

impl SignedEnvelope {
    /// The exact bytes the signature covers.
    fn message(key_id: &KeyId, payload: &str) -> Vec<u8> {
        let key_id = key_id.0.as_bytes();
        let mut msg = Vec::with_capacity(DOMAIN_TAG.len() + 4 + key_id.len() + payload.len());
        msg.extend_from_slice(DOMAIN_TAG);
        // Length prefix: the key id / payload boundary cannot be shifted.
        msg.extend_from_slice(&(key_id.len() as u32).to_be_bytes());
        msg.extend_from_slice(key_id);
        msg.extend_from_slice(payload.as_bytes());
        msg
    }

    pub fn sign<T: Serialize>(key: &SigningKey, value: &T) -> Result<Self, SigningError> {
        let payload = serde_json::to_string(value).map_err(SigningError::Encode)?;
        let key_id = KeyId::of(&key.verifying_key());
        let signature = key.sign(&Self::message(&key_id, &payload));
        Ok(Self { key_id, payload, signature: hex::encode(signature.to_bytes()) })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The set of fleet public keys a device accepts. Holding more than one is
/// how keys rotate: the new key is trusted before the old one is retired.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, VerifyingKey>,
}

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: VerifyingKey) -> KeyId {
        let id = KeyId::of(&key);
        self.keys.insert(id.clone(), key);
        id
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Verify the envelope, then parse its payload. A payload is parsed only
    /// after its signature checked out.
    pub fn verify<T: DeserializeOwned>(&self, env: &SignedEnvelope) -> Result<T, SigningError> {
        let key = self.keys.get(&env.key_id).ok_or_else(|| SigningError::UnknownKey(env.key_id.clone()))?;
        let raw = hex::decode(&env.signature).map_err(|_| SigningError::MalformedSignature)?;
        let bytes: [u8; 64] = raw.try_into().map_err(|_| SigningError::MalformedSignature)?;
        let signature = Signature::from_bytes(&bytes);
        key.verify_strict(&SignedEnvelope::message(&env.key_id, &env.payload), &signature)
            .map_err(|_| SigningError::BadSignature)?;
        serde_json::from_str(&env.payload).map_err(SigningError::Payload)
    }
}

/// Public keys and signing-key seeds are stored as one line of hex.
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, SigningError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .map_err(|_| SigningError::MalformedKey)?
        .try_into()
        .map_err(|_| SigningError::MalformedKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::MalformedKey)
}

pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, SigningError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .map_err(|_| SigningError::MalformedKey)?
        .try_into()
        .map_err(|_| SigningError::MalformedKey)?;
    Ok(SigningKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn sign_then_verify() {
        let mut trusted = TrustedKeys::new();
        trusted.insert(key(1).verifying_key());
        let env = SignedEnvelope::sign(&key(1), &serde_json::json!({"a": 1})).unwrap();
        let v: serde_json::Value = trusted.verify(&env).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
    }

    #[test]
    fn unknown_key_is_refused() {
        let mut trusted = TrustedKeys::new();
        trusted.insert(key(1).verifying_key());
        let env = SignedEnvelope::sign(&key(2), &1u32).unwrap();
        assert!(matches!(trusted.verify::<u32>(&env), Err(SigningError::UnknownKey(_))));
    }

    #[test]
    fn relabelled_key_id_does_not_verify() {
        // Two trusted keys; a signature by key 2 relabelled as key 1 must fail.
        let mut trusted = TrustedKeys::new();
        let id1 = trusted.insert(key(1).verifying_key());
        trusted.insert(key(2).verifying_key());
        let mut env = SignedEnvelope::sign(&key(2), &1u32).unwrap();
        env.key_id = id1;
        assert!(matches!(trusted.verify::<u32>(&env), Err(SigningError::BadSignature)));
    }

    #[test]
    fn malformed_signatures_are_typed_errors() {
        let mut trusted = TrustedKeys::new();
        trusted.insert(key(1).verifying_key());
        let env = SignedEnvelope::sign(&key(1), &1u32).unwrap();
        for sig in ["", "zz", &env.signature[..126]] {
            let bad = SignedEnvelope { signature: sig.to_string(), ..env.clone() };
            assert!(matches!(trusted.verify::<u32>(&bad), Err(SigningError::MalformedSignature)), "{sig}");
        }
    }

    #[test]
    fn key_hex_round_trip_and_errors() {
        let k = key(9);
        let hexed = hex::encode(k.verifying_key().as_bytes());
        assert_eq!(verifying_key_from_hex(&format!("{hexed}\n")).unwrap(), k.verifying_key());
        assert!(matches!(verifying_key_from_hex("abcd"), Err(SigningError::MalformedKey)));
        assert_eq!(signing_key_from_hex(&hex::encode(k.to_bytes())).unwrap().to_bytes(), k.to_bytes());
    }
}
