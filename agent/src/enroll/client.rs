//! The one I/O step of enrolling: connect with the device's nkey and the
//! token, ask once, hang up. A fresh connection per attempt: an enrolling
//! connection has no business staying open, and once enrolled the agent
//! reconnects without the token anyway.

use harmony_protocol::enroll::{enroll_inbox_prefix, enroll_subject, EnrollFile, EnrollReply, EnrollRequest};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Why one attempt got no answer. All of these are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Unreachable server, TLS failure, authorization violation (a token
    /// the callout refused), bad URL or CA file.
    #[error("cannot connect to NATS for enrollment: {0}")]
    Connect(String),
    /// The server (its auth callout) refused the connection: a token that
    /// is unknown, revoked, expired or used up, a rejected key, or a
    /// callout that did not answer in time.
    #[error("NATS refused the enrolling connection (is the token valid?): {0}")]
    NotAuthorized(String),
    /// Connected, but no reply (no enrollment service, timeout, denied).
    #[error("enrollment request got no reply: {0}")]
    Request(String),
    #[error("the enrollment service's reply is not an EnrollReply: {0}")]
    BadReply(String),
}

/// One enrollment attempt's inputs.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub file: &'a EnrollFile,
    pub ca_file: Option<&'a PathBuf>,
    pub seed: &'a str,
    pub public_key: &'a str,
    pub request: &'a EnrollRequest,
    pub timeout: Duration,
}

/// Asks the operator to enroll this device; behind a trait so the loop can
/// be driven by a fake.
pub trait EnrollClient: Send + Sync {
    fn ask(&self, attempt: &Attempt<'_>) -> impl Future<Output = Result<EnrollReply, AskError>> + Send;
}

/// The real client, over NATS.
#[derive(Debug, Default)]
pub struct NatsEnrollClient;

impl EnrollClient for NatsEnrollClient {
    async fn ask(&self, a: &Attempt<'_>) -> Result<EnrollReply, AskError> {
        let mut options = async_nats::ConnectOptions::with_nkey(a.seed.to_string())
            .token(a.file.token.clone())
            .name(format!("harmony-agent enrolling {}", a.public_key))
            // Enroll-only permissions name just this inbox.
            .custom_inbox_prefix(enroll_inbox_prefix(a.public_key))
            .connection_timeout(a.timeout)
            .request_timeout(Some(a.timeout))
            // An active key's grant names its enrollment subject and inbox
            // too, so a device accepted while pending (or that missed its
            // answer) hears "enrolled" here like any other.
            .max_reconnects(Some(0));
        if let Some(ca) = a.ca_file {
            options = crate::bus::with_ca_file(options, ca).map_err(|e| AskError::Connect(e.to_string()))?;
        }
        let addrs = crate::bus::server_addrs(&a.file.nats_urls).map_err(|e| AskError::Connect(e.to_string()))?;
        let client = tokio::time::timeout(a.timeout * 2, options.connect(addrs))
            .await
            .map_err(|_| AskError::Connect(format!("no connection within {:?}", a.timeout * 2)))?
            .map_err(|e| match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation => AskError::NotAuthorized(e.to_string()),
                _ => AskError::Connect(e.to_string()),
            })?;
        let payload = serde_json::to_vec(a.request).map_err(|e| AskError::Request(e.to_string()))?;
        let reply = client.request(enroll_subject(a.public_key), payload.into()).await;
        // Best effort: the connection has done its one job.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.drain()).await;
        let reply = reply.map_err(|e| AskError::Request(e.to_string()))?;
        serde_json::from_slice(&reply.payload).map_err(|e| AskError::BadReply(e.to_string()))
    }
}
