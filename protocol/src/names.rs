//! Every NATS subject, KV bucket and object-store bucket the fleet uses.
//!
//! Per-device names embed a validated [`DeviceId`], so a device id can never
//! inject a token separator or wildcard.

use crate::DeviceId;

/// Prefix of all Harmony subjects; the `v1` is the subject-space version.
pub const SUBJECT_PREFIX: &str = "harmony.v1";

/// KV bucket: one key per device (the device id), value a JSON [`crate::Heartbeat`].
/// Written by agents, watched by the operator.
pub const HEARTBEAT_BUCKET: &str = "harmony-heartbeats";

/// KV bucket: one key per device, value a JSON [`crate::SignedEnvelope`] wrapping an
/// [`crate::UpgradeOffer`]. Written by the operator, watched by that device's agent.
pub const OFFER_BUCKET: &str = "harmony-offers";

/// KV bucket for the operator's own durable state (rollouts, per-device
/// progress, offer sequence numbers, leader lease). Agents have no access.
pub const OPERATOR_STATE_BUCKET: &str = "harmony-operator";

/// Object store holding RAUC bundles, one object per bundle.
pub const BUNDLE_OBJECT_BUCKET: &str = "harmony-bundles";

/// Key under which a device's heartbeat and offer are stored.
pub fn device_key(device: &DeviceId) -> &str {
    device.as_str()
}

/// Request/reply subject on which a device's agent serves commands.
pub fn command_subject(device: &DeviceId) -> String {
    format!("{SUBJECT_PREFIX}.device.{device}.cmd")
}

/// Inbox prefix a device's client must use for replies (async-nats
/// `custom_inbox_prefix`), so its credentials can be limited to receiving
/// replies addressed to itself.
pub fn device_inbox_prefix(device: &DeviceId) -> String {
    format!("_INBOX.{device}")
}

/// Wildcard matching every device's command subject (for operator permissions).
pub fn all_command_subjects() -> String {
    format!("{SUBJECT_PREFIX}.device.*.cmd")
}

/// Request/reply subject the leading operator answers with what it has
/// processed (operator-only: device permissions do not name it).
pub fn operator_status_subject() -> String {
    format!("{SUBJECT_PREFIX}.operator.status")
}

/// The JetStream subject a KV `put` of `key` in `bucket` is published on.
/// Used to grant a device permission to write only its own keys.
pub fn kv_put_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_device_names_embed_the_id() {
        let id = DeviceId::new("pi-7").unwrap();
        assert_eq!(command_subject(&id), "harmony.v1.device.pi-7.cmd");
        assert_eq!(device_inbox_prefix(&id), "_INBOX.pi-7");
        assert_eq!(kv_put_subject(HEARTBEAT_BUCKET, device_key(&id)), "$KV.harmony-heartbeats.pi-7");
    }

    #[test]
    fn bucket_names_are_valid_jetstream_names() {
        for b in [HEARTBEAT_BUCKET, OFFER_BUCKET, OPERATOR_STATE_BUCKET, BUNDLE_OBJECT_BUCKET] {
            assert!(b.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{b}");
        }
    }
}
