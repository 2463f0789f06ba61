//! Waiting on a condition the test can read (a recorded call, a counter)
//! instead of sleeping for a guessed time.

use std::time::Duration;

/// Poll `cond` until it holds, or panic naming `what` after `within`.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `client.request` once the subject is served. A subscriber's `flush()`
/// only empties its own client's buffer: the server may not have processed
/// its SUB yet when another connection asks, and answers "no responders".
/// Those answers are retried until `within`; any other outcome is returned.
pub async fn request_when_served(
    client: &async_nats::Client,
    subject: String,
    payload: bytes::Bytes,
    within: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match client.request(subject.clone(), payload.clone()).await {
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

/// Returns once the server has processed everything `client` sent before
/// (its subscriptions included): a request to a subject nobody serves is
/// answered "no responders" by the server only in order after them. For a
/// client that may publish anywhere.
pub async fn synced_with_server(client: &async_nats::Client) {
    let subject = format!("_HARMONY_TEST.sync.{}", client.new_inbox().replace('.', "-"));
    match client.request(subject, bytes::Bytes::new()).await {
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
        other => panic!("a sync request to an unserved subject got {other:?}"),
    }
}
