//! https:// bundle URLs against a real TLS server (`openssl s_server -WWW`):
//! downloads when the server's CA is trusted, refuses when it is not.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use async_nats::jetstream;
use harmony_agent::upgrade::download::{BundleFiles, Downloader};
use harmony_protocol::names::BUNDLE_OBJECT_BUCKET;
use harmony_protocol::BundleSource;
use harmony_testkit::pki::TestPki;
use harmony_testkit::NatsServer;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct TlsServer(Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_dir(dir: &Path) -> (TlsServer, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-WWW",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "srv.pem",
            "-key",
            "srv.key",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let server = TlsServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_download_verifies_the_server_against_the_configured_ca() {
    let www = tempfile::tempdir().unwrap();
    TestPki::create(www.path(), "IP:127.0.0.1");
    let bytes: Vec<u8> = (0..512 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(www.path().join("bundle.raucb"), &bytes).unwrap();
    let (_server, port) = serve_dir(www.path());
    let src = BundleSource {
        object: None,
        url: Some(format!("https://127.0.0.1:{port}/bundle.raucb")),
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        authorization: None,
        signature_sha256: None,
    };
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let state = tempfile::tempdir().unwrap();
    let downloader = |ca: Option<&Path>| Downloader {
        js: js.clone(),
        bucket: BUNDLE_OBJECT_BUCKET.into(),
        files: BundleFiles::new(state.path()),
        max_bytes_per_sec: 0,
        https_ca_file: ca.map(Path::to_path_buf),
        retry: harmony_agent::upgrade::download::RetryPolicy::default(),
    };

    // The test CA is not in the system store: the server is not trusted.
    let err = downloader(None).fetch(&src, &mut |_, _| {}).await.unwrap_err().to_string();
    assert!(err.contains("TLS") && err.to_lowercase().contains("certificate"), "{err}");

    let done = downloader(Some(&www.path().join("ca.pem"))).fetch(&src, &mut |_, _| {}).await.unwrap();
    assert_eq!(done.sha256, src.sha256);
}
