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
