//! Resumable bundle download against a real nats-server object store and a
//! local HTTP server: interrupted downloads continue where they stopped and
//! the bytes already on disk are not fetched again.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use async_nats::jetstream;
use harmony_agent::upgrade::download::{BundleFiles, DownloadError, Downloader, RetryPolicy};
use harmony_protocol::names::BUNDLE_OBJECT_BUCKET;
use harmony_protocol::BundleSource;
use harmony_testkit::NatsServer;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 3 * 1024 * 1024;

fn data() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 % 253) as u8).collect()
}

/// A downloader from the fleet's bundle bucket into `files`: unthrottled,
/// no extra CA, the default retry policy (tests override what they vary).
fn downloader(js: jetstream::Context, files: BundleFiles) -> Downloader {
    Downloader {
        js,
        bucket: BUNDLE_OBJECT_BUCKET.into(),
        files,
        max_bytes_per_sec: 0,
        https_ca_file: None,
        retry: RetryPolicy::default(),
    }
}

fn source(object: Option<&str>, url: Option<String>, bytes: &[u8]) -> BundleSource {
    BundleSource {
        object: object.map(str::to_string),
        url,
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
        authorization: None,
        signature_sha256: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_download_resumes_after_being_killed_midway() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let store = js
        .create_object_store(jetstream::object_store::Config {
            bucket: BUNDLE_OBJECT_BUCKET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let bytes = data();
    store.put("b.raucb", &mut bytes.as_slice()).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let files = BundleFiles::new(state.path());
    let src = source(Some("b.raucb"), None, &bytes);

    // First attempt at 1 MiB/s, killed once past 1 MiB with its resume
    // point on disk.
    let slow = Downloader { max_bytes_per_sec: 1024 * 1024, ..downloader(js.clone(), files.clone()) };
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    let src2 = src.clone();
    let task = tokio::spawn(async move {
        let mut progress = move |done: u64, _total: u64| seen2.store(done, Ordering::SeqCst);
        slow.fetch(&src2, &mut progress).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.load(Ordering::SeqCst) <= 1024 * 1024 || !files.resume().exists() {
        assert!(tokio::time::Instant::now() < deadline, "download never got past 1 MiB with a resume point");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    let before = seen.load(Ordering::SeqCst);
    assert!(before > 1024 * 1024 && before < SIZE as u64, "killed mid-way at {before}");
    assert!(files.resume().exists(), "resume point persisted");

    // Second attempt (a restarted agent) finishes without the rate limit.
    let fast = downloader(js, files.clone());
    let mut first_report = None;
    let mut progress = |done: u64, _| {
        first_report.get_or_insert(done);
    };
    let done = fast.fetch(&src, &mut progress).await.unwrap();
    assert_eq!(done.sha256, src.sha256, "the resumed file is byte-identical");
    assert_eq!(std::fs::read(&done.path).unwrap(), bytes);
    assert!(
        done.fetched <= SIZE as u64 - 1024 * 1024,
        "resumed: fetched {} of {SIZE} bytes again (first run reached {before})",
        done.fetched
    );
    assert!(first_report.unwrap() > 1024 * 1024, "progress continues from the resume point");
    eprintln!("first run reached {before} bytes; the resumed run fetched {} of {SIZE}", done.fetched);
    assert!(!files.part().exists() && !files.resume().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_bundle_discards_the_partial_download() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let store = js
        .create_object_store(jetstream::object_store::Config {
            bucket: BUNDLE_OBJECT_BUCKET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let bytes = data();
    store.put("b.raucb", &mut bytes.as_slice()).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let files = BundleFiles::new(state.path());
    std::fs::create_dir_all(files.part().parent().unwrap()).unwrap();
    std::fs::write(files.part(), b"stale bytes of another bundle").unwrap();
    std::fs::write(files.resume(), br#"{"sha256":"00","bytes":29,"nuid":null,"stream_seq":null}"#).unwrap();
    let d = downloader(js, files);
    let done = d.fetch(&source(Some("b.raucb"), None, &bytes), &mut |_, _| {}).await.unwrap();
    assert_eq!(done.fetched, SIZE as u64);
    assert_eq!(done.sha256, source(None, None, &bytes).sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_free_space_is_refused_before_fetching() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let state = tempfile::tempdir().unwrap();
    let d = downloader(js, BundleFiles::new(state.path()));
    let mut src = source(Some("whatever"), None, b"x");
    src.size = 1 << 60;
    match d.fetch(&src, &mut |_, _| {}).await {
        Err(DownloadError::NoSpace { needed, available }) => assert!(needed > available),
        other => panic!("expected NoSpace, got {other:?}"),
    }
}

/// A tiny HTTP server that honours `Range: bytes=N-` and, on the first
/// request only, drops the connection after `cut` bytes.
async fn serve(bytes: Arc<Vec<u8>>, cut: usize) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/bundles/b.raucb", listener.local_addr().unwrap());
    let served = Arc::new(AtomicU64::new(0));
    let served2 = served.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let n = sock.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).to_string();
            let start: usize = req
                .lines()
                .find_map(|l| l.strip_prefix("Range: bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let body = &bytes[start..];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\r\n",
                body.len(),
                bytes.len() - 1,
                bytes.len()
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            let send = if first { &body[..cut] } else { body };
            first = false;
            let _ = sock.write_all(send).await;
            served2.fetch_add(send.len() as u64, Ordering::SeqCst);
        }
    });
    (url, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_download_resumes_with_a_range_request_after_the_connection_drops() {
    let bytes = Arc::new(data());
    let cut = 2 * 1024 * 1024;
    let (url, served) = serve(bytes.clone(), cut).await;
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let state = tempfile::tempdir().unwrap();
    let d = Downloader {
        retry: RetryPolicy { first_backoff: Duration::from_millis(100), ..RetryPolicy::default() },
        ..downloader(js, BundleFiles::new(state.path()))
    };
    let src = source(None, Some(url), &bytes);
    // One call (one agent run): the server closes the first connection
    // after `cut` bytes; the download resumes there with a Range request.
    let done = d.fetch(&src, &mut |_, _| {}).await.unwrap();
    assert_eq!(done.sha256, src.sha256);
    assert_eq!(done.resumed_at, vec![cut as u64], "resumed once, at the byte where the connection closed");
    assert_eq!(done.fetched, SIZE as u64, "every byte fetched once in this run, the tail after the drop too");
    assert_eq!(served.load(Ordering::SeqCst), SIZE as u64, "the server sent nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_download_gives_up_after_bounded_retries_with_the_last_error() {
    // Nothing listens on this port: every attempt is refused, none makes progress.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let state = tempfile::tempdir().unwrap();
    let d = Downloader {
        retry: RetryPolicy { attempts: 3, first_backoff: Duration::from_millis(50), ..RetryPolicy::default() },
        ..downloader(js, BundleFiles::new(state.path()))
    };
    let bytes = data();
    let src = source(None, Some(format!("http://127.0.0.1:{port}/b.raucb")), &bytes);
    let started = std::time::Instant::now();
    let err = d.fetch(&src, &mut |_, _| {}).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DownloadError::Interrupted(_)), "{err:?}");
    assert!(text.contains("gave up after 3 attempts") && text.contains("refused"), "{text}");
    // Backoff 50 ms then 100 ms between the three attempts.
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
}
