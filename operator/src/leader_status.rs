//! What the leading operator has processed, answered on
//! [`operator_status_subject`]: the KV revision of the last heartbeat it
//! stepped over, after every state write caused so far is durable. A client
//! that wrote a heartbeat at revision R and then sees `heartbeat_revision >=
//! R` knows the operator has decided on it and that the job records show the
//! decision: a definite point to check "nothing happened" at (tests, and a
//! liveness probe for people running the control plane).

use crate::commands::Output;
use crate::config::Config;
use crate::error::{Error, Result};
use harmony_protocol::names::operator_status_subject;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    /// The lease holder answering.
    pub operator_id: String,
    /// KV revision of the last heartbeat entry processed (0: none yet).
    pub heartbeat_revision: u64,
}

/// Asks the leading operator; an error when none leads (no responder) or it
/// does not answer within `timeout`.
pub async fn query(client: &async_nats::Client, timeout: Duration) -> Result<LeaderStatus> {
    let reply = tokio::time::timeout(timeout, client.request(operator_status_subject(), "".into()))
        .await
        .map_err(|_| Error::Nats(format!("no operator answered on {} within {timeout:?}", operator_status_subject())))?
        .map_err(|e| Error::Nats(format!("{}: {e}", operator_status_subject())))?;
    serde_json::from_slice(&reply.payload).map_err(|e| Error::Invalid(format!("operator status: {e}")))
}

/// `harmony-operator leader`: who leads, and how far its heartbeat
/// processing is behind the heartbeat stream (a liveness check for people
/// running the control plane).
pub async fn show(cfg: &Config) -> Result<Output> {
    let b = crate::commands::open(cfg).await?;
    let status = query(&b.client, Duration::from_secs(5))
        .await
        .map_err(|e| Error::Nats(format!("no operator is leading (is `harmony-operator serve` running?): {e}")))?;
    let last = crate::store::last_revision(&b.heartbeats).await?;
    let behind = last.saturating_sub(status.heartbeat_revision);
    let text = format!(
        "leader: {}\nheartbeats processed up to revision {} of {} ({} behind)",
        status.operator_id, status.heartbeat_revision, last, behind
    );
    let json = serde_json::json!({
        "operator_id": status.operator_id,
        "heartbeat_revision": status.heartbeat_revision,
        "heartbeat_stream_last": last,
        "behind": behind,
    });
    Ok(Output { json, text })
}
