//! Commands the operator sends to one agent over request/reply, and replies.
//!
//! Decoding is defensive: whatever arrives on the command subject becomes
//! either a [`Command`] or a typed [`CommandError`] to send back. Nothing a
//! peer sends can make the agent panic.

use crate::{Heartbeat, SCHEMA_VERSION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A command verb with its arguments. On the wire:
/// `{"schema":1,"verb":"commit","target_version":"2.0.0","boot_id":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Command {
    /// Liveness: replies with version, uptime and booted slot.
    Ping,
    /// Replies with the heartbeat the agent would send now.
    Status,
    /// Mark the booted slot good. Only valid while `AwaitingCommit`; the
    /// arguments pin what the operator saw, so a stale commit cannot land on
    /// a different boot or version.
    Commit(CommitArgs),
    /// Reboot the device (not during an install).
    Reboot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitArgs {
    pub target_version: String,
    pub boot_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// The exact bytes-on-the-wire shape of a request.
#[derive(Debug, Serialize)]
struct CommandRequest<'a> {
    schema: u32,
    #[serde(flatten)]
    command: &'a Command,
}

impl Command {
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Status => "status",
            Self::Commit(_) => "commit",
            Self::Reboot => "reboot",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings cannot fail; fall back to an
        // empty object rather than panicking if it ever did.
        serde_json::to_vec(&CommandRequest { schema: SCHEMA_VERSION, command: self }).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// Parse a request. Checks, in order: JSON object, schema (a newer one
    /// is `Unsupported`), verb (an unknown one is `Unsupported`), arguments
    /// (an unknown field is `Unsupported`, a missing or mistyped one is
    /// `BadRequest`).
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| CommandError::BadRequest { detail: format!("not JSON: {e}") })?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(CommandError::BadRequest { detail: "request is not a JSON object".into() });
        };
        let schema = match map.remove("schema") {
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| CommandError::BadRequest {
                detail: format!("schema {n} is not a non-negative integer"),
            })?,
            Some(other) => return Err(CommandError::BadRequest { detail: format!("schema {other} is not a number") }),
            None => return Err(CommandError::BadRequest { detail: "missing field `schema`".into() }),
        };
        if schema > u64::from(SCHEMA_VERSION) {
            return Err(CommandError::Unsupported {
                reason: Unsupported::NewerSchema { received: schema, supported: SCHEMA_VERSION },
            });
        }
        let verb = match map.remove("verb") {
            Some(serde_json::Value::String(v)) => v,
            Some(other) => return Err(CommandError::BadRequest { detail: format!("verb {other} is not a string") }),
            None => return Err(CommandError::BadRequest { detail: "missing field `verb`".into() }),
        };
        let args = serde_json::Value::Object(map);
        match verb.as_str() {
            "ping" => parse_args::<NoArgs>(args).map(|_| Self::Ping),
            "status" => parse_args::<NoArgs>(args).map(|_| Self::Status),
            "reboot" => parse_args::<NoArgs>(args).map(|_| Self::Reboot),
            "commit" => parse_args::<CommitArgs>(args).map(Self::Commit),
            _ => Err(CommandError::Unsupported { reason: Unsupported::UnknownVerb { verb } }),
        }
    }
}

fn parse_args<T: DeserializeOwned>(args: serde_json::Value) -> Result<T, CommandError> {
    serde_json::from_value(args).map_err(|e| {
        let detail = e.to_string();
        if detail.starts_with("unknown field") {
            CommandError::Unsupported { reason: Unsupported::UnknownField { detail } }
        } else {
            CommandError::BadRequest { detail }
        }
    })
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyBody {
    Pong { agent_version: String, uptime_secs: u64, booted_slot: Option<String>, boot_id: String },
    Status { heartbeat: Box<Heartbeat> },
    Committed { slot: String },
    RebootScheduled,
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandError {
    #[error("unsupported: {reason}")]
    Unsupported { reason: Unsupported },
    #[error("bad request: {detail}")]
    BadRequest { detail: String },
    /// Understood, but not allowed in the agent's current state.
    #[error("refused: {detail}")]
    Refused { detail: String },
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Unsupported {
    #[error("unknown verb {verb:?}")]
    UnknownVerb { verb: String },
    #[error("schema {received} is newer than supported {supported}")]
    NewerSchema { received: u64, supported: u32 },
    #[error("{detail}")]
    UnknownField { detail: String },
}

/// A reply on the wire: `{"schema":1,"ok":{...}}` or `{"schema":1,"error":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    pub schema: u32,
    #[serde(flatten)]
    pub outcome: ReplyOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    Ok(ReplyBody),
    Error(CommandError),
}

impl CommandReply {
    pub fn from_result(result: Result<ReplyBody, CommandError>) -> Self {
        let outcome = match result {
            Ok(body) => ReplyOutcome::Ok(body),
            Err(err) => ReplyOutcome::Error(err),
        };
        Self { schema: SCHEMA_VERSION, outcome }
    }

    pub fn into_result(self) -> Result<ReplyBody, CommandError> {
        match self.outcome {
            ReplyOutcome::Ok(body) => Ok(body),
            ReplyOutcome::Error(err) => Err(err),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> Command {
        Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "b-2".into() })
    }

    #[test]
    fn every_verb_round_trips() {
        for cmd in [Command::Ping, Command::Status, Command::Reboot, commit()] {
            assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
        }
    }

    #[test]
    fn garbage_is_a_bad_request() {
        for raw in [&b"\xff\xfe"[..], b"", b"[1,2]", b"\"ping\"", b"{\"verb\":\"ping\"}", b"{\"schema\":1}"] {
            match Command::decode(raw) {
                Err(CommandError::BadRequest { .. }) => {}
                other => panic!("{raw:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_verb_is_unsupported() {
        let err = Command::decode(br#"{"schema":1,"verb":"format-disk"}"#).unwrap_err();
        assert_eq!(err, CommandError::Unsupported { reason: Unsupported::UnknownVerb { verb: "format-disk".into() } });
    }

    #[test]
    fn newer_schema_is_unsupported_even_for_known_verbs() {
        let err = Command::decode(br#"{"schema":2,"verb":"ping"}"#).unwrap_err();
        assert_eq!(err, CommandError::Unsupported { reason: Unsupported::NewerSchema { received: 2, supported: 1 } });
    }

    #[test]
    fn unknown_field_is_unsupported_and_missing_field_is_bad_request() {
        match Command::decode(br#"{"schema":1,"verb":"ping","force":true}"#) {
            Err(CommandError::Unsupported { reason: Unsupported::UnknownField { detail } }) => {
                assert!(detail.contains("force"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        match Command::decode(br#"{"schema":1,"verb":"commit","target_version":"2"}"#) {
            Err(CommandError::BadRequest { detail }) => assert!(detail.contains("boot_id"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            CommandReply::from_result(Ok(ReplyBody::Committed { slot: "B".into() })),
            CommandReply::from_result(Err(CommandError::Refused { detail: "not awaiting commit".into() })),
        ] {
            assert_eq!(CommandReply::decode(&r.encode()).unwrap(), r);
        }
    }
}
