//! Benchmark, not a test (`#[ignore]`; run by `scripts/bench pace`): how
//! close a device's capped reads get to its cap (`Harmony-Max-Bytes-Per-Sec`)
//! through the real bundle server, for a client that reads one Range at a
//! time and pauses between reads, as RAUC does. A client whose own pace is
//! below the cap cannot reach it; the figure to read is achieved / the
//! lower of the cap and the client's own ceiling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bundle_http_support;
mod common;

use bundle_http_support::{http_config, request};
use common::{now, Env};
use ed25519_dalek::SigningKey;
use harmony_operator::bundle;
use harmony_operator::bundle_http::token::{self, Claims};
use harmony_operator::clock::SystemClock;
use harmony_protocol::time::UnixMillis;
use harmony_testkit::rauc_bundle::{build_bundle, incompressible, TestCa};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CAP: u64 = 65_536;
/// The size of most of RAUC's reads in QEMU scenario 15 (28 KiB).
const READ: u64 = 28_672;
const WARM_UP: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench pace"]
async fn capped_reads_against_the_cap() {
    let env = Env::start().await;
    let ca = TestCa::create(env.dir.path());
    let path = build_bundle(&ca, env.dir.path(), "b", "harmony-rpi4", "3.0.0", "verity", &incompressible(4_000_000));
    let rec = bundle::push(&env.buckets, &path, None, false, now()).await.unwrap();
    let cfg = http_config(env.dir.path(), "127.0.0.1:0");
    let key = SigningKey::from_bytes(&[1; 32]);
    let server = harmony_operator::bundle_http::start(&cfg, key.verifying_key(), &env.buckets, Arc::new(SystemClock))
        .await
        .unwrap();
    let cap = CAP.to_string();
    println!("cap {CAP} B/s, one {READ}-byte Range at a time; warm-up {WARM_UP:?}, window {WINDOW:?}");
    println!("| pause between reads (ms) | client's own ceiling / cap | achieved / cap |");
    println!("| --- | --- | --- |");
    for (i, pause_ms) in [0u64, 75, 250, 500, 1000].into_iter().enumerate() {
        // A device of its own per row: no allowance carried over.
        let claims = Claims {
            device: format!("probe-{i}"),
            bundle: rec.id.clone(),
            sha256: rec.sha256.clone(),
            rollout: None,
            max_concurrent: None,
            expires_at: UnixMillis(now().0 + 600_000),
        };
        let auth = format!("Bearer {}", token::issue(&key, &claims));
        let t0 = Instant::now();
        let mut offset = 0u64;
        let mut window: Option<(Instant, u64)> = None;
        let mut last_end = t0;
        while t0.elapsed() < WARM_UP + WINDOW {
            // The window opens when the first read after the warm-up is
            // asked for and closes when the last one has arrived.
            let asked = Instant::now();
            let range = format!("bytes={offset}-{}", offset + READ - 1);
            let headers = [("Authorization", auth.as_str()), ("Range", &range), ("Harmony-Max-Bytes-Per-Sec", &cap)];
            let r = request(server.local_addr(), "GET", "/v1/bundles/3.0.0", &headers).await;
            assert_eq!(r.status, 206, "{}", r.text());
            offset = (offset + READ) % 3_000_000;
            if asked.duration_since(t0) >= WARM_UP {
                window.get_or_insert((asked, 0)).1 += READ;
                last_end = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        let (start, bytes) = window.expect("a window");
        let achieved = bytes as f64 / last_end.duration_since(start).as_secs_f64() / CAP as f64;
        let ceiling = if pause_ms == 0 { f64::INFINITY } else { READ as f64 / (pause_ms as f64 / 1000.0) / CAP as f64 };
        println!("| {pause_ms} | {ceiling:.3} | {achieved:.3} |");
    }
}
