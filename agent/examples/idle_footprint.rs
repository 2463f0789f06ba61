//! Benchmark: the agent's idle footprint on this host, with every loop
//! running.
//!
//! Starts a real nats-server with the buckets the operator creates (heartbeats,
//! offers, bundles) and a real `rauc service` on a private D-Bus (testkit, as
//! the agent's tests use it), runs the given agent binary as a child process
//! with a 10 s heartbeat interval, and waits until it is settled: a heartbeat
//! that carries RAUC's compatible and the `idle` upgrade record (the upgrade
//! service, health monitor and offer watch are started by then) and the
//! offer watch's consumer on the offer stream. Then it samples its RSS
//! (`/proc/<pid>/status`: VmRSS, RssAnon, RssFile) and CPU time
//! (`/proc/<pid>/stat`) for the given duration. Prints one JSON line.
//!
//!   cargo run --release -p harmony-agent --example idle_footprint -- BINARY [SECONDS]
#![allow(clippy::expect_used, clippy::unwrap_used)]

use harmony_protocol::{names, Heartbeat};
use harmony_testkit::rauc::{RaucService, TEST_COMPATIBLE};
use harmony_testkit::rauc_bundle::TestCa;
use harmony_testkit::NatsServer;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `kB` field of `/proc/<pid>/status` (VmRSS, RssAnon, RssFile).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args.next().expect("usage: idle_footprint BINARY [SECONDS]");
    let seconds: u64 = args.next().map(|s| s.parse().expect("seconds")).unwrap_or(60);

    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv =
        |bucket: &str| async_nats::jetstream::kv::Config { bucket: bucket.into(), history: 1, ..Default::default() };
    let heartbeats = js.create_key_value(kv(names::HEARTBEAT_BUCKET)).await.unwrap();
    js.create_key_value(kv(names::OFFER_BUCKET)).await.unwrap();
    js.create_object_store(async_nats::jetstream::object_store::Config {
        bucket: names::BUNDLE_OBJECT_BUCKET.into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::create_dir(p("ca")).unwrap();
    let ca = TestCa::create(&p("ca"));
    let rauc = RaucService::start(&ca);
    std::fs::write(p("boot_id"), "bench-boot\n").unwrap();
    std::fs::write(p("os-release"), "VERSION_ID=1.0.0\n").unwrap();
    std::fs::write(p("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    for d in ["state", "keys", "health.d"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    // A fleet key, so offers would be verified rather than refused.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    std::fs::write(p("keys/fleet.pub"), hex::encode(key.to_bytes())).unwrap();
    let cfg = format!(
        "device_id = \"bench-1\"\nheartbeat_interval_secs = 10\nstate_dir = \"{}\"\nfleet_keys_dir = \"{}\"\n\
         [nats]\nurls = [\"{}\"]\n[rauc]\ndbus_address = \"{}\"\n\
         [system]\nos_release = \"{}\"\nboot_id = \"{}\"\nmachine_id = \"{}\"\n\
         [upgrade]\nhealth_checks_dir = \"{}\"\n",
        p("state").display(),
        p("keys").display(),
        nats.url(),
        rauc.address(),
        p("os-release").display(),
        p("boot_id").display(),
        p("machine-id").display(),
        p("health.d").display()
    );
    std::fs::write(p("agent.toml"), cfg).unwrap();

    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(p("agent.toml"))
        .env("HARMONY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the agent");
    let pid = child.id();
    // Settled: RAUC answered (its compatible is in the heartbeat), the
    // upgrade record is restored (idle), and the offer watch's consumer
    // exists on the offer stream.
    let settle_by = Instant::now() + Duration::from_secs(60);
    loop {
        let hb: Option<Heartbeat> =
            heartbeats.get("bench-1").await.ok().flatten().and_then(|b| serde_json::from_slice(&b).ok());
        let rauc_up =
            hb.is_some_and(|h| h.compatible.as_deref() == Some(TEST_COMPATIBLE) && h.upgrade.phase.name() == "idle");
        let mut offers = js.get_stream(format!("KV_{}", names::OFFER_BUCKET)).await.unwrap();
        let watching = offers.info().await.map(|i| i.state.consumer_count >= 1).unwrap_or(false);
        if rauc_up && watching {
            break;
        }
        assert!(Instant::now() < settle_by, "the agent did not settle within 60 s\nrauc log:\n{}", rauc.log());
        assert!(child.try_wait().unwrap().is_none(), "the agent exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let start_ticks = cpu_ticks(pid).expect("agent is running");
    let started = Instant::now();
    // Anonymous memory is the agent's own; file-backed is mostly its code
    // and libc pages, shared with the page cache.
    let (mut max_rss, mut max_anon, mut max_file) = (0, 0, 0);
    let mut sum_rss = 0;
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let rss = status_kib(pid, "VmRSS").expect("agent still running");
        max_rss = max_rss.max(rss);
        max_anon = max_anon.max(status_kib(pid, "RssAnon").unwrap_or(0));
        max_file = max_file.max(status_kib(pid, "RssFile").unwrap_or(0));
        sum_rss += rss;
        samples += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu_secs = (cpu_ticks(pid).unwrap() - start_ticks) as f64 / ticks_per_sec;
    let anon = status_kib(pid, "RssAnon").unwrap_or(0);
    let file = status_kib(pid, "RssFile").unwrap_or(0);
    let wall = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{{\"seconds\":{wall:.1},\"rss_max_kib\":{max_rss},\"rss_avg_kib\":{},\"rss_anon_kib\":{anon},\"rss_file_kib\":{file},\"rss_anon_max_kib\":{max_anon},\"rss_file_max_kib\":{max_file},\"cpu_seconds\":{cpu_secs:.2},\"cpu_percent\":{:.3}}}",
        sum_rss / samples.max(1),
        100.0 * cpu_secs / wall
    );
}
