//! A streamed install's `https://` leg against the operator's real bundle
//! server with TLS (issue #16): real nats-server, a real signed bundle in
//! the real object store, certificates from `openssl`. The agent's own
//! check (the signature block over HTTPS, trusting the fleet's extra CA)
//! passes; and the trust file the agent hands RAUC (`tls-ca`) lets libcurl
//! — the `curl` CLI here, the library RAUC streams with — verify the server
//! and speak HTTP/2 to it. The host's RAUC cannot stream (no NBD, Debian's
//! build), so RAUC itself reading over HTTP/2 is proved in QEMU (scenario 14).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use harmony_agent::upgrade::{http_get, stream};
use harmony_operator::bundle_http::token::{self, Claims};
use harmony_operator::bus::{create_buckets, BucketLimits, Buckets};
use harmony_operator::clock::SystemClock;
use harmony_operator::config::BundleHttpConfig;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::BundleSource;
use harmony_testkit::pki::TestPki;
use harmony_testkit::rauc_bundle::{build_bundle, incompressible, TestCa};
use harmony_testkit::NatsServer;
use sha2::{Digest, Sha256};
use std::process::Command;
use std::sync::Arc;

fn now() -> UnixMillis {
    UnixMillis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_checks_over_https_and_hands_rauc_a_trust_that_verifies_the_server_over_http2() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    create_buckets(&async_nats::jetstream::new(client.clone()), &BucketLimits::default()).await.unwrap();
    let buckets = Buckets::open(client).await.unwrap();
    let ca = TestCa::create(dir.path());
    let path = build_bundle(&ca, dir.path(), "b", "harmony-rpi4", "2.0.0", "verity", &incompressible(300_000));
    let rec = harmony_operator::bundle::push(&buckets, &path, None, false, now()).await.unwrap();
    let pki = TestPki::create(dir.path(), "IP:127.0.0.1");
    let cfg = BundleHttpConfig {
        listen: "127.0.0.1:0".into(),
        public_url: "https://127.0.0.1".into(),
        cache_dir: dir.path().join("bundle-cache"),
        token_key: dir.path().join("bundle-token.key"),
        download_idle_secs: 0,
        tls_cert: Some(pki.cert.clone()),
        tls_key: Some(pki.key.clone()),
        http2: true,
    };
    let key = SigningKey::from_bytes(&[3; 32]);
    let server =
        harmony_operator::bundle_http::start(&cfg, key.verifying_key(), &buckets, Arc::new(SystemClock)).await.unwrap();
    let claims = Claims {
        device: "pi-1".into(),
        bundle: rec.id.clone(),
        sha256: rec.sha256.clone(),
        rollout: None,
        max_concurrent: None,
        expires_at: UnixMillis(now().0 + 60_000),
    };
    let url = format!("https://{}/v1/bundles/{}", server.local_addr(), rec.id);
    let source = BundleSource {
        object: None,
        url: Some(url.clone()),
        sha256: rec.sha256.clone(),
        size: rec.size,
        authorization: Some(format!("Bearer {}", token::issue(&key, &claims))),
        signature_sha256: rec.signature_sha256.clone(),
    };
    let headers = stream::headers(&source, 0);

    // The agent's check: without the fleet's CA the server is not trusted;
    // with it, the block's hash is the one `bundle push` recorded.
    let err = stream::signature_sha256(&source, &headers, None).await.unwrap_err().to_string();
    assert!(err.contains("TLS"), "{err}");
    let sha = stream::signature_sha256(&source, &headers, Some(&pki.ca)).await.unwrap();
    assert_eq!(Some(sha), rec.signature_sha256);

    // What RAUC gets: the system's CAs and the fleet's, one PEM file.
    let trust = dir.path().join("stream-trust.pem");
    std::fs::write(&trust, http_get::trust_pem(&pki.ca).unwrap()).unwrap();
    let ours = std::fs::read_to_string(&pki.ca).unwrap();
    let text = std::fs::read_to_string(&trust).unwrap();
    assert!(text.ends_with(&ours), "the fleet's CA is in the file");
    let system = rustls_native_certs::load_native_certs().certs.len();
    assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), system + 1, "and every system CA");

    // libcurl with that file, as RAUC's streaming helper uses it (CAINFO,
    // HTTP/2 over TLS): verified, multiplexed HTTP/2, the right bytes.
    let out_file = dir.path().join("range.bin");
    let curl = |cacert: &std::path::Path| {
        Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--http2", "--range", "0-4095"])
            .arg("--cacert")
            .arg(cacert)
            .args(["--header", &headers[0], "--write-out", "%{http_version} %{http_code}", "--output"])
            .arg(&out_file)
            .arg(&url)
            .output()
            .expect("run curl (scripts/setup installs it)")
    };
    let out = curl(&trust);
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 206");
    let file = std::fs::read(&path).unwrap();
    assert_eq!(std::fs::read(&out_file).unwrap(), &file[..4096]);
    // Another CA's file: libcurl refuses the server, as RAUC would.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::create(other_dir.path(), "IP:127.0.0.1");
    let out = curl(&other.ca);
    assert!(!out.status.success(), "a server outside the trust was accepted");
    assert_eq!(hex::encode(Sha256::digest(&file)), rec.sha256);
}
