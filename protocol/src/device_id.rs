//! Device identifiers. They end up inside NATS subjects and KV keys, so a
//! bad one must be a typed error long before it reaches the wire.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted device id. Keeps subjects and KV keys short and bounded.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A validated device id: 1..=64 of `[A-Za-z0-9_-]`.
///
/// That excludes `.` (a subject token separator), `*` and `>` (wildcards),
/// whitespace, and anything a KV key would reject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {len} characters long, the limit is {MAX_DEVICE_ID_LEN}")]
    TooLong { len: usize },
    #[error("device id contains {found:?} at position {position}; only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    InvalidChar { found: char, position: usize },
}

impl DeviceId {
    pub fn new(raw: impl Into<String>) -> Result<Self, DeviceIdError> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        let len = raw.chars().count();
        if len > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::TooLong { len });
        }
        if let Some((position, found)) =
            raw.chars().enumerate().find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(DeviceIdError::InvalidChar { found, position });
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for ok in ["pi-kitchen-01", "a", "DEVICE_9", &"x".repeat(MAX_DEVICE_ID_LEN)] {
            assert_eq!(DeviceId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_subject_breaking_and_oversized_ids() {
        assert_eq!(DeviceId::new(""), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::new("x".repeat(MAX_DEVICE_ID_LEN + 1)),
            Err(DeviceIdError::TooLong { len: MAX_DEVICE_ID_LEN + 1 })
        );
        for (bad, ch, pos) in [
            ("a.b", '.', 1),
            ("*", '*', 0),
            ("dev>", '>', 3),
            ("a b", ' ', 1),
            ("tab\there", '\t', 3),
            ("ünï", 'ü', 0),
            ("a/b", '/', 1),
        ] {
            assert_eq!(DeviceId::new(bad), Err(DeviceIdError::InvalidChar { found: ch, position: pos }), "{bad:?}");
        }
    }

    #[test]
    fn deserialising_validates() {
        let err = serde_json::from_str::<DeviceId>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("'.'") || err.to_string().contains("\".\""), "{err}");
        let ok: DeviceId = serde_json::from_str("\"pi-1\"").unwrap();
        assert_eq!(ok.as_str(), "pi-1");
    }
}
