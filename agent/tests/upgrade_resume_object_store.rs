//! An object-store download survives the nats-server being killed and,
//! after an outage longer than the stall timeout, restarted (same port, same
//! JetStream store): the same `fetch` call (one agent run) gives up on the
//! stalled stream, retries from the checkpoint with backoff, and finishes,
//! fetching no byte twice.
//!
//! (A short outage is ridden out by async-nats itself: its ordered consumer
//! recreates itself after a reconnect. What it cannot bound is a long one;
//! before the fix the stall ended the job as `download_failed`.)
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod log_capture;

use async_nats::jetstream;
use harmony_agent::upgrade::download::{BundleFiles, Downloader, RetryPolicy};
use harmony_protocol::names::BUNDLE_OBJECT_BUCKET;
use harmony_protocol::BundleSource;
use harmony_testkit::NatsServer;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SIZE: usize = 3 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_download_resumes_in_the_same_run_after_the_server_restarts() {
    log_capture::init();
    let mut nats = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(nats.url())
        .await
        .unwrap();
    // JetStream requests time out after 2 s (default 5 s), so an attempt
    // made while the server is away fails in seconds and the outage below
    // stays short.
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(2));
    let store = js
        .create_object_store(jetstream::object_store::Config {
            bucket: BUNDLE_OBJECT_BUCKET.into(),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let bytes: Vec<u8> = (0..SIZE).map(|i| (i * 13 % 251) as u8).collect();
    store.put("b.raucb", &mut bytes.as_slice()).await.unwrap();
    let src = BundleSource {
        object: Some("b.raucb".into()),
        url: None,
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: SIZE as u64,
        authorization: None,
        signature_sha256: None,
    };
    let state = tempfile::tempdir().unwrap();
    let d = Downloader {
        js,
        bucket: BUNDLE_OBJECT_BUCKET.into(),
        files: BundleFiles::new(state.path()),
        // Slow enough to be caught mid-way.
        max_bytes_per_sec: 1024 * 1024,
        https_ca_file: None,
        retry: RetryPolicy {
            first_backoff: Duration::from_millis(200),
            stall_timeout: Duration::from_secs(3),
            ..RetryPolicy::default()
        },
    };
    let done_bytes = Arc::new(AtomicU64::new(0));
    let seen = done_bytes.clone();
    let task = tokio::spawn(async move {
        let mut progress = move |done: u64, _total: u64| seen.store(done, Ordering::SeqCst);
        d.fetch(&src, &mut progress).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done_bytes.load(Ordering::SeqCst) < 1024 * 1024 {
        assert!(tokio::time::Instant::now() < deadline, "download never got past 1 MiB");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = done_bytes.load(Ordering::SeqCst);
    let logged = log_capture::mark();
    nats.kill();
    // The fault is the outage itself: it lasts until a retry also found the
    // server away (no progress: the third attempt in a row is announced),
    // which takes longer than two stall timeouts.
    let outage = tokio::time::Instant::now();
    log_capture::wait_line(logged, Duration::from_secs(30), &["bundle download interrupted", "(attempt 3 of"]).await;
    assert!(!task.is_finished(), "the download is still retrying, not failed");
    eprintln!("server away for {:?}", outage.elapsed());
    nats.restart();

    let done = tokio::time::timeout(Duration::from_secs(60), task).await.unwrap().unwrap().unwrap();
    eprintln!("killed at {at_kill} bytes; resumed at {:?}; fetched {} in this run", done.resumed_at, done.fetched);
    assert_eq!(done.sha256, hex::encode(Sha256::digest(&bytes)), "the file is the object, byte for byte");
    assert!(!done.resumed_at.is_empty(), "it resumed after the interruption");
    assert!(done.resumed_at[0] >= at_kill.min(1024 * 1024), "resumed from the checkpoint, not from 0");
    assert_eq!(done.fetched, SIZE as u64, "every byte fetched exactly once in this run");
    assert_eq!(std::fs::read(&done.path).unwrap(), bytes);
}
