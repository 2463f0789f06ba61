//! The bundle server over HTTPS (issue #16): real nats-server, a real bundle
//! in the object store, certificates made by `openssl`. A client that asks
//! for HTTP/2 (as RAUC's libcurl does over TLS) gets it and several Range
//! requests on one connection; an HTTP/1.1 client (the agent's own) still
//! works; a client that does not trust the CA gets nothing; a renewed
//! certificate is served without a restart, and a broken one is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bundle_http_support;
mod common;

use bundle_http_support::http_config;

use common::{now, Env};
use ed25519_dalek::SigningKey;
use harmony_operator::bundle;
use harmony_operator::bundle_http::token::{self, Claims};
use harmony_operator::bundle_http::{self, Handle};
use harmony_operator::clock::SystemClock;
use harmony_operator::config::BundleHttpConfig;
use harmony_operator::sim::http::parse;
use harmony_protocol::time::UnixMillis;
use harmony_testkit::pki::TestPki;
use harmony_testkit::rauc_bundle::{build_bundle, incompressible as noise, TestCa};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A TLS client trusting `ca` only, offering `alpn`.
async fn connect(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

fn alpn(tls: &TlsStream<TcpStream>) -> Option<String> {
    tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
}

/// One HTTP/2 GET of `path` with `Range: range`: (status, content-range, body).
async fn h2_get(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    auth: &str,
    range: &str,
) -> (u16, String, Vec<u8>) {
    let req = axum::http::Request::get(format!("https://127.0.0.1{path}"))
        .header("authorization", auth)
        .header("range", range)
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let content_range =
        response.headers().get("content-range").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        bytes.extend_from_slice(&chunk);
    }
    (status, content_range, bytes)
}

/// One HTTP/1.1 request over `tls`, read to EOF (`Connection: close`).
async fn http1_get(
    mut tls: TlsStream<TcpStream>,
    path: &str,
    auth: &str,
    range: &str,
) -> harmony_operator::sim::http::Response {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: {auth}\r\nRange: {range}\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A server closing TLS without close_notify still ends the response.
    let _ = tls.read_to_end(&mut raw).await;
    parse(&raw).unwrap()
}

/// The server on a free port with TLS from `cert` and `key`.
fn tls_config(dir: &Path, cert: &Path, key: &Path) -> BundleHttpConfig {
    BundleHttpConfig {
        public_url: "https://127.0.0.1".into(),
        tls_cert: Some(cert.to_path_buf()),
        tls_key: Some(key.to_path_buf()),
        ..http_config(dir, "127.0.0.1:0")
    }
}

struct Rig {
    env: Env,
    server: Handle,
    pki: TestPki,
    file: Vec<u8>,
    auth: String,
}

async fn rig(pki_dir: &Path) -> Rig {
    rig_with(pki_dir, true).await
}

/// `http2`: the `[bundle_http] http2` setting.
async fn rig_with(pki_dir: &Path, http2: bool) -> Rig {
    let env = Env::start().await;
    let ca = TestCa::create(env.dir.path());
    let payload = noise(200_000);
    let path = build_bundle(&ca, env.dir.path(), "b", "harmony-rpi4", "3.0.0", "verity", &payload);
    let rec = bundle::push(&env.buckets, &path, None, false, now()).await.unwrap();
    let pki = TestPki::create(pki_dir, "IP:127.0.0.1");
    let cfg = BundleHttpConfig { http2, ..tls_config(env.dir.path(), &pki.cert, &pki.key) };
    let key = SigningKey::from_bytes(&[9; 32]);
    let server = bundle_http::start(&cfg, key.verifying_key(), &env.buckets, Arc::new(SystemClock)).await.unwrap();
    let claims = Claims {
        device: "pi-1".into(),
        bundle: rec.id.clone(),
        sha256: rec.sha256.clone(),
        rollout: Some("r1".into()),
        max_concurrent: None,
        expires_at: UnixMillis(now().0 + 60_000),
    };
    let auth = format!("Bearer {}", token::issue(&key, &claims));
    Rig { env, server, pki, file: std::fs::read(&path).unwrap(), auth }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_multiplexes_range_requests_and_http1_still_works() {
    let pki_dir = tempfile::tempdir().unwrap();
    let r = rig(pki_dir.path()).await;
    let addr = r.server.local_addr();
    let size = r.file.len();

    let tls = connect(addr, &r.pki.ca, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("h2"), "the server prefers HTTP/2");
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    // Three ranges in flight at once on the one connection, as curl's
    // multiplexing does; each gets its own bytes.
    let ranges = [(0usize, 9usize), (1000, 70_000), (size - 100, size - 1)];
    let asks = ranges.iter().map(|(a, b)| {
        let mut c = client.clone();
        let auth = r.auth.clone();
        async move { h2_get(&mut c, "/v1/bundles/3.0.0", &auth, &format!("bytes={a}-{b}")).await }
    });
    let answers = futures::future::join_all(asks).await;
    for ((a, b), (status, content_range, body)) in ranges.iter().zip(answers) {
        assert_eq!(status, 206);
        assert_eq!(content_range, format!("bytes {a}-{b}/{size}"));
        assert_eq!(body, &r.file[*a..=*b]);
    }
    // The token is still required over HTTP/2.
    let mut c = client.clone();
    let (status, _, _) = h2_get(&mut c, "/v1/bundles/3.0.0", "Bearer nope", "bytes=0-9").await;
    assert_eq!(status, 401);

    // A client that offers only HTTP/1.1 (the agent's) is served HTTP/1.1.
    let tls = connect(addr, &r.pki.ca, &[b"http/1.1"]).await.unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("http/1.1"));
    let resp = http1_get(tls, "/v1/bundles/3.0.0", &r.auth, "bytes=5-14").await;
    assert_eq!((resp.status, resp.body.as_slice()), (206, &r.file[5..15]), "{}", resp.text());
    // And one offering no ALPN at all.
    let tls = connect(addr, &r.pki.ca, &[]).await.unwrap();
    let resp = http1_get(tls, "/v1/bundles/3.0.0", &r.auth, "bytes=0-3").await;
    assert_eq!((resp.status, resp.body.as_slice()), (206, &r.file[..4]));

    // Plain HTTP to the TLS port gets no bundle bytes.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /v1/bundles/3.0.0 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n", r.auth);
    plain.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw).await;
    assert!(!raw.windows(4).any(|w| w == b"HTTP"), "a plain-HTTP answer on the TLS port: {raw:?}");
    drop(r.env);
}

/// `http2 = false`: a client that offers HTTP/2 first (RAUC's libcurl with
/// nghttp2) is answered HTTP/1.1, as a device without nghttp2 would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http2_off_an_h2_client_gets_http1_over_tls() {
    let pki_dir = tempfile::tempdir().unwrap();
    let r = rig_with(pki_dir.path(), false).await;
    let tls = connect(r.server.local_addr(), &r.pki.ca, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("http/1.1"));
    let resp = http1_get(tls, "/v1/bundles/3.0.0", &r.auth, "bytes=5-14").await;
    assert_eq!((resp.status, resp.body.as_slice()), (206, &r.file[5..15]), "{}", resp.text());
    // A client that speaks HTTP/2 only finds no common protocol.
    assert!(connect(r.server.local_addr(), &r.pki.ca, &[b"h2"]).await.is_err(), "an h2-only client was accepted");
    drop(r.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_is_refused_and_a_renewed_certificate_needs_no_restart() {
    let pki_dir = tempfile::tempdir().unwrap();
    let r = rig(pki_dir.path()).await;
    let addr = r.server.local_addr();

    // A client trusting another CA does not complete the handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::create(other_dir.path(), "IP:127.0.0.1");
    let err = connect(addr, &other.ca, &[b"h2"]).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Renewal: the files now hold the other CA's certificate and key. The
    // next handshake is served with them, without restarting the server.
    std::fs::copy(&other.cert, &r.pki.cert).unwrap();
    std::fs::copy(&other.key, &r.pki.key).unwrap();
    let tls = connect(addr, &other.ca, &[b"http/1.1"]).await.unwrap();
    let resp = http1_get(tls, "/v1/bundles/3.0.0", &r.auth, "bytes=0-9").await;
    assert_eq!((resp.status, resp.body.as_slice()), (206, &r.file[..10]));
    assert!(connect(addr, &r.pki.ca, &[b"http/1.1"]).await.is_err(), "the old certificate is still served");

    // A broken renewal (a key that is not PEM) keeps the last good pair.
    std::fs::write(&r.pki.key, "not a key\n").unwrap();
    let tls = connect(addr, &other.ca, &[b"http/1.1"]).await.unwrap();
    let resp = http1_get(tls, "/v1/bundles/3.0.0", &r.auth, "bytes=0-9").await;
    assert_eq!(resp.status, 206);
    drop(r.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_fit_the_certificate_is_refused_at_start() {
    let env = Env::start().await;
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = TestPki::create(a_dir.path(), "IP:127.0.0.1");
    let b = TestPki::create(b_dir.path(), "IP:127.0.0.1");
    let cfg = tls_config(env.dir.path(), &a.cert, &b.key);
    let key = SigningKey::from_bytes(&[9; 32]);
    let err = bundle_http::start(&cfg, key.verifying_key(), &env.buckets, Arc::new(SystemClock)).await.unwrap_err();
    assert!(err.to_string().contains("does not fit the certificate"), "{err}");
    let missing = BundleHttpConfig { tls_key: Some(a_dir.path().join("absent.key")), ..cfg };
    let err = bundle_http::start(&missing, key.verifying_key(), &env.buckets, Arc::new(SystemClock)).await.unwrap_err();
    assert!(err.to_string().contains("absent.key"), "{err}");
}
