//! Zero-touch enrollment: the wire contract between a device that holds an
//! enrollment token and the operator's enrollment service.
//!
//! A device generates its own nkey, connects with it and presents the token
//! as the connection's `auth_token`. The operator's auth callout admits such
//! a connection with [`enroll_permissions`] only: publish on the device's
//! own [`enroll_subject`] and receive replies in its own
//! [`enroll_inbox_prefix`]. The device sends an [`EnrollRequest`] there and
//! gets an [`EnrollReply`]. Once enrolled it reconnects with the same nkey
//! and no token, and the callout grants it the ordinary
//! [`crate::permissions::device_permissions`].
//!
//! Subjects are keyed by the device's *public* nkey, so one enrolling
//! connection can neither read another's reply nor ask in its name.

use crate::names::SUBJECT_PREFIX;
use crate::permissions::Permissions;
use crate::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest enrollment request the operator reads; anything bigger is
/// refused unread ([`EnrollRefusal::TooLarge`]).
pub const MAX_ENROLL_REQUEST_BYTES: usize = 4096;

/// Largest number of labels a request may ask for, and the longest key and
/// value: labels become rollout selectors, they are not a storage area.
pub const MAX_REQUEST_LABELS: usize = 16;
pub const MAX_LABEL_LEN: usize = 64;

/// Prefix of every enrollment token, so a token is recognisable in a file
/// or a log line that must be scrubbed.
pub const TOKEN_PREFIX: &str = "hfe1_";

/// The subject a device asks to enroll on.
pub fn enroll_subject(device_nkey: &str) -> String {
    format!("{SUBJECT_PREFIX}.enroll.{device_nkey}")
}

/// Wildcard for the operator's enrollment service (queue subscription).
pub fn all_enroll_subjects() -> String {
    format!("{SUBJECT_PREFIX}.enroll.*")
}

/// Inbox prefix an enrolling client must use (async-nats
/// `custom_inbox_prefix`), so its permissions name only its own replies.
pub fn enroll_inbox_prefix(device_nkey: &str) -> String {
    format!("_INBOX_ENROLL.{device_nkey}")
}

/// Everything a token-holding (or pending) connection may do: ask to
/// enroll as itself, and hear the answer.
pub fn enroll_permissions(device_nkey: &str) -> Permissions {
    Permissions {
        publish: vec![enroll_subject(device_nkey)],
        subscribe: vec![format!("{}.>", enroll_inbox_prefix(device_nkey))],
    }
}

/// A public nkey of a NATS *user* (what devices generate): `U` followed by
/// 55 characters of base32. Checked before it is used inside a subject.
pub fn is_user_nkey(s: &str) -> bool {
    s.len() == 56 && s.starts_with('U') && s.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// Name of the enrollment file on a card's boot (FAT) partition, written by
/// `harmony-operator enroll prepare` or baked in by the layer. The agent
/// moves it to the data partition on first boot and deletes it from the
/// FAT partition, where anyone with the card could read it.
pub const ENROLL_FILE_NAME: &str = "harmony-enroll.toml";

/// The enrollment file's content (TOML). Everything a flashed card needs to
/// find the fleet and ask to join it; no private key ever travels in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollFile {
    /// The enrollment token (`hfe1_...`).
    pub token: String,
    /// NATS servers as the device reaches them.
    pub nats_urls: Vec<String>,
    /// PEM of the CA that signed the servers' TLS certificates, when the
    /// URLs are `tls://` and the CA is not in the image's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_ca_pem: Option<String>,
}

/// A device's request to join the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub schema: u32,
    /// The enrollment token, checked again by the enrollment service (the
    /// callout only decided the connection may ask).
    pub token: String,
    /// The device's public nkey; must equal the one it connected with.
    pub nkey: String,
    /// The id the device derived from its machine id. A re-flashed card has
    /// a new machine id and therefore enrolls as a new device.
    pub device: DeviceId,
    /// Labels the device suggests; a token's labels win on conflict.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    #[serde(default)]
    pub os_version: Option<String>,
}

/// The operator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EnrollReply {
    /// Recorded and granted: reconnect with the same nkey and no token.
    Enrolled {
        device: DeviceId,
        labels: BTreeMap<String, String>,
    },
    /// Recorded, waiting for `devices accept`; ask again later (with the
    /// same nkey no token use is spent again).
    Pending {
        device: DeviceId,
    },
    Refused {
        reason: EnrollRefusal,
        detail: String,
    },
}

/// Why an enrollment was refused. Nothing was recorded or granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollRefusal {
    /// Not a token the operator issued (unknown id or wrong secret).
    TokenInvalid,
    TokenExpired,
    TokenRevoked,
    TokenUsedUp,
    /// Unparseable, oversized or inconsistent request.
    Malformed,
    TooLarge,
    /// The id belongs to another key.
    DeviceIdTaken,
    /// An operator rejected (or revoked) this device.
    Rejected,
    /// The enrollment service is shedding load; ask again later.
    Busy,
    /// The request's schema is newer than the operator understands.
    Unsupported,
}

impl EnrollRefusal {
    /// Whether asking again later (same token) can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_permissions_name_only_the_devices_own_key() {
        let k = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";
        assert!(is_user_nkey(k));
        let p = enroll_permissions(k);
        assert_eq!(p.publish, vec![format!("harmony.v1.enroll.{k}")]);
        assert_eq!(p.subscribe, vec![format!("_INBOX_ENROLL.{k}.>")]);
        for bad in ["", "U*", &k[..55], &k.replace('U', "N"), &format!("{}.", &k[..55]), &k.to_lowercase()] {
            assert!(!is_user_nkey(bad), "{bad}");
        }
    }

    #[test]
    fn reply_wire_shape() {
        let r = EnrollReply::Refused { reason: EnrollRefusal::TokenUsedUp, detail: "3 of 3 uses".into() };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"result":"refused","reason":"token_used_up","detail":"3 of 3 uses"}"#);
        assert_eq!(serde_json::from_str::<EnrollReply>(&json).unwrap(), r);
    }

    #[test]
    fn request_refuses_unknown_fields() {
        let text = r#"{"schema":1,"token":"t","nkey":"U","device":"d","agent_version":"1","x":1}"#;
        assert!(serde_json::from_str::<EnrollRequest>(text).is_err());
    }
}
