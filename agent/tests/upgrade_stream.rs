//! Streamed installs on the host, through the real agent loop with real
//! nats-server and `rauc service`: what the agent checks before RAUC reads
//! a bundle over HTTP, and that a bad answer installs nothing. The host
//! kernel has no NBD, so the streamed install itself is proved only in the
//! QEMU guest (qemu-tests/ota.py); here NBD is declared present (the
//! agent's `system.nbd` path) so the agent takes the streaming path.
//!
//! The server is a small Range server in this file that can lie: about the
//! bundle's size, with another (validly signed) bundle, or by refusing the
//! token. The operator's own server and its tokens are tested in
//! operator/tests/bundle_http.rs.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_protocol::{FailureReason, Transfer, UpgradeOffer, UpgradePhase};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "Bearer for-this-device";

/// What the server does.
#[derive(Clone)]
struct Serve {
    bytes: Arc<Vec<u8>>,
    /// The size it claims in `Content-Range` (a liar's), else the true one.
    claimed_total: Option<u64>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    range: Option<String>,
    authorization: Option<String>,
    user_agent: Option<String>,
    status: u16,
}

struct RangeServer {
    url: String,
    serve: Arc<Mutex<Serve>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RangeServer {
    async fn start(bytes: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/bundles/b", listener.local_addr().unwrap());
        let serve = Arc::new(Mutex::new(Serve { bytes: Arc::new(bytes), claimed_total: None }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (serve2, seen2) = (serve.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let serve = serve2.lock().unwrap().clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, serve, seen).await;
                });
            }
        });
        Self { url, serve, seen }
    }

    fn set(&self, bytes: Vec<u8>, claimed_total: Option<u64>) {
        *self.serve.lock().unwrap() = Serve { bytes: Arc::new(bytes), claimed_total };
    }

    fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

async fn answer(stream: tokio::net::TcpStream, serve: Serve, seen: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut s = Seen { range: None, authorization: None, user_agent: None, status: 0 };
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = Some(value.trim().to_string());
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => s.range = value,
                "authorization" => s.authorization = value,
                "user-agent" => s.user_agent = value,
                _ => {}
            }
        }
    }
    let total = serve.bytes.len() as u64;
    let span = s.range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| {
        let (a, b) = r.split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() { total - 1 } else { b.parse::<u64>().ok()?.min(total - 1) };
        (a <= b).then_some((a, b))
    });
    let mut stream = reader.into_inner();
    let head = if s.authorization.as_deref() != Some(TOKEN) {
        s.status = 403;
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    } else if let Some((a, b)) = span {
        s.status = 206;
        let claimed = serve.claimed_total.unwrap_or(total);
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{claimed}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            b - a + 1
        )
    } else {
        s.status = 416;
        format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    seen.lock().unwrap().push(s.clone());
    stream.write_all(head.as_bytes()).await?;
    if let (206, Some((a, b))) = (s.status, span) {
        stream.write_all(&serve.bytes[a as usize..=b as usize]).await?;
    }
    stream.shutdown().await
}

/// SHA-256 of the bundle's signature block, cut out as RAUC does.
fn signature_sha256(b: &Bundle, dir: &std::path::Path) -> String {
    let sig = dir.join(format!("{}.sig", b.version));
    let out = std::process::Command::new("rauc")
        .args(["extract-signature", &format!("--keyring={}", trusted_ca().cert.display())])
        .arg(&b.path)
        .arg(&sig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    hex::encode(Sha256::digest(std::fs::read(sig).unwrap()))
}

fn streamed_offer(rig: &Rig, seq: u64, b: &Bundle, url: &str, sig: &str) -> UpgradeOffer {
    let mut o = rig.offer(seq, "v2.raucb", b);
    o.bundle.url = Some(url.into());
    o.bundle.authorization = Some(TOKEN.into());
    o.bundle.signature_sha256 = Some(sig.into());
    o
}

async fn failed_with(rig: &Rig, seq: u64) -> FailureReason {
    let hb =
        rig.wait_heartbeat(WAIT, |hb| hb.upgrade.offer_seq == Some(seq) && hb.upgrade.phase.name() == "failed").await;
    assert_eq!(hb.upgrade.transfer, Some(Transfer::Streamed), "{:?}", hb.upgrade);
    match hb.upgrade.phase {
        UpgradePhase::Failed { reason } => reason,
        other => panic!("{other:?}"),
    }
}

/// Nothing was installed: RAUC still boots A next and B was never written.
fn nothing_installed(rig: &Rig) {
    assert_eq!(rig.rauc.backend(&["get-primary"]), "A");
    assert!(rig.download_files().is_empty(), "nothing stored on /data: {:?}", rig.download_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_offer_is_checked_against_the_signed_signature_hash_and_bad_answers_install_nothing() {
    let rig = Rig::start().await;
    std::fs::write(rig.path("nbd0"), "").unwrap();
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 256 * 1024);
    let other = bundle(trusted_ca(), &rig.path("bundles"), "v2-other", "2.0.1", 256 * 1024);
    let sig = signature_sha256(&v2, &rig.path("bundles"));
    let server = RangeServer::start(std::fs::read(&v2.path).unwrap()).await;
    let agent = rig.start_agent(60);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;

    // 1. The server lies about the size.
    server.set(std::fs::read(&v2.path).unwrap(), Some(v2.size + 4096));
    rig.send_offer(&streamed_offer(&rig, 1, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 1).await {
        FailureReason::DownloadFailed { detail } => {
            assert!(detail.contains(&format!("the server says the bundle has {} bytes", v2.size + 4096)), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    let seen = server.take_seen();
    assert_eq!(seen.len(), 1, "stops at the trailer: {seen:?}");
    assert_eq!(seen[0].authorization.as_deref(), Some(TOKEN), "the offer's token is sent");

    // 2. The token is refused (another device's, another bundle's, expired).
    let mut o = streamed_offer(&rig, 2, &v2, &server.url, &sig);
    o.bundle.authorization = Some("Bearer for-another-device".into());
    server.set(std::fs::read(&v2.path).unwrap(), None);
    rig.send_offer(&o).await;
    match failed_with(&rig, 2).await {
        FailureReason::DownloadFailed { detail } => assert!(detail.contains("HTTP 403"), "{detail}"),
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    server.take_seen();

    // 3. The bundle changed after the offer: a validly signed bundle of the
    // same size is served in its place. Its signature block differs.
    assert_eq!(other.size, v2.size, "the same size, so only the hash can tell");
    server.set(std::fs::read(&other.path).unwrap(), None);
    rig.send_offer(&streamed_offer(&rig, 3, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 3).await {
        FailureReason::VerifyFailed { expected, actual } => {
            assert_eq!(expected, sig);
            assert_eq!(actual, signature_sha256(&other, &rig.path("bundles")));
        }
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    let seen = server.take_seen();
    assert_eq!(seen.len(), 2, "trailer and signature block only: {seen:?}");

    // 4. The right bundle: the check passes and RAUC is given the URL. The
    // host's RAUC cannot stream (Debian's build, no NBD), so it fetches
    // the URL itself and fails; the agent reports RAUC's error.
    server.set(std::fs::read(&v2.path).unwrap(), None);
    rig.send_offer(&streamed_offer(&rig, 4, &v2, &server.url, &sig)).await;
    match failed_with(&rig, 4).await {
        FailureReason::InstallFailed { last_error } => assert!(!last_error.is_empty()),
        other => panic!("{other:?}"),
    }
    nothing_installed(&rig);
    let seen = server.take_seen();
    assert!(seen.len() >= 3, "the agent's two reads, then RAUC's: {seen:?}");
    assert!(seen[..2].iter().all(|s| s.status == 206 && s.user_agent.as_deref() == Some("harmony-agent")), "{seen:?}");
    assert!(seen[2..].iter().any(|s| s.user_agent.as_deref() != Some("harmony-agent")), "RAUC read the URL: {seen:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nbd_a_streamable_offer_is_downloaded_and_the_status_says_why() {
    let rig = Rig::start().await;
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &v2).await;
    let sig = signature_sha256(&v2, &rig.path("bundles"));
    let agent = rig.start_agent(60);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    rig.send_offer(&streamed_offer(&rig, 1, &v2, "http://127.0.0.1:9/never-read", &sig)).await;
    let hb = rig.wait_phase(WAIT, "rebooting").await;
    match hb.upgrade.transfer {
        Some(Transfer::Downloaded { not_streamed }) => assert!(not_streamed.contains("no NBD"), "{not_streamed}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.rauc.backend(&["get-primary"]), "B", "installed from the object store");
    agent.stop().await;
}
