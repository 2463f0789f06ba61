//! Disconnecting a device now: the operator's system-account user asks
//! every server for the device's connections (CONNZ, filtered by the user
//! name the callout gave it: the device id) and kicks each one.

use crate::error::{Error, Result};
use futures::StreamExt;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// How long replies from the servers of a cluster are collected.
const GATHER: Duration = Duration::from_millis(750);

#[derive(Debug, Deserialize)]
struct ServerReply<T> {
    server: ServerInfo,
    data: Option<T>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ServerInfo {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Connz {
    #[serde(default)]
    connections: Vec<Conn>,
}

#[derive(Debug, Deserialize)]
struct Conn {
    cid: u64,
}

/// Connects as the system-account user whose seed is at `seed_file`.
pub async fn connect(url: &str, seed_file: &Path) -> Result<async_nats::Client> {
    let seed = std::fs::read_to_string(seed_file).map_err(|e| Error::io(seed_file, e))?;
    let addrs = crate::bus::server_addrs(url)?;
    async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .name("harmony-operator-system")
        .connection_timeout(Duration::from_secs(3))
        .connect(addrs)
        .await
        .map_err(|e| Error::Unreachable { url: url.to_string(), detail: e.to_string() })
}

/// Asks all servers and gathers their answers for [`GATHER`].
async fn ask_all<T: for<'de> Deserialize<'de>>(
    sys: &async_nats::Client,
    subject: String,
    body: serde_json::Value,
) -> Result<Vec<(String, T)>> {
    let inbox = sys.new_inbox();
    let mut replies = sys.subscribe(inbox.clone()).await.map_err(Error::nats)?;
    sys.publish_with_reply(subject, inbox, body.to_string().into()).await.map_err(Error::nats)?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        match serde_json::from_slice::<ServerReply<T>>(&msg.payload) {
            Ok(ServerReply { server, data: Some(d), .. }) => out.push((server.id, d)),
            Ok(ServerReply { server, error, .. }) => {
                log::warn!("server {} answered with an error: {}", server.id, error.unwrap_or_default())
            }
            Err(e) => log::warn!("unreadable server reply: {e}"),
        }
    }
    Ok(out)
}

/// Disconnects every connection admitted under `user` (a device id) in
/// `account`; returns how many were kicked.
pub async fn kick_user(sys: &async_nats::Client, account: &str, user: &str) -> Result<usize> {
    let filter = serde_json::json!({ "acc": account, "user": user, "auth": true, "limit": 1024 });
    let found: Vec<(String, Connz)> = ask_all(sys, "$SYS.REQ.SERVER.PING.CONNZ".into(), filter).await?;
    let mut kicked = 0;
    for (server, connz) in found {
        for conn in connz.connections {
            let subject = format!("$SYS.REQ.SERVER.{server}.KICK");
            let body = serde_json::json!({ "cid": conn.cid }).to_string();
            match tokio::time::timeout(Duration::from_secs(3), sys.request(subject, body.into())).await {
                Ok(Ok(_)) => kicked += 1,
                Ok(Err(e)) => log::warn!("kick of {user} (cid {}) on {server}: {e}", conn.cid),
                Err(_) => log::warn!("kick of {user} (cid {}) on {server}: no answer", conn.cid),
            }
        }
    }
    Ok(kicked)
}
