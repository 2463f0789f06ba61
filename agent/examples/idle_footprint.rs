//! Benchmark: the agent's idle footprint on this host.
//!
//! Starts a real nats-server, creates the heartbeat bucket, runs the given
//! agent binary as a child process with a 10 s heartbeat interval, and
//! samples its RSS (`/proc/<pid>/status`) and CPU time (`/proc/<pid>/stat`)
//! for the given duration. Prints one JSON line with the figures.
//!
//!   cargo run --release -p harmony-agent --example idle_footprint -- BINARY [SECONDS]
#![allow(clippy::expect_used, clippy::unwrap_used)]

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
    async_nats::jetstream::new(client)
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: harmony_protocol::names::HEARTBEAT_BUCKET.into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("boot_id"), "bench-boot\n").unwrap();
    std::fs::write(p("os-release"), "VERSION_ID=1.0.0\n").unwrap();
    std::fs::write(p("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::create_dir(p("state")).unwrap();
    std::fs::create_dir(p("keys")).unwrap();
    let cfg = format!(
        "device_id = \"bench-1\"\nheartbeat_interval_secs = 10\nstate_dir = \"{}\"\nfleet_keys_dir = \"{}\"\n\
         [nats]\nurls = [\"{}\"]\n[rauc]\ndbus_address = \"unix:path={}\"\n\
         [system]\nos_release = \"{}\"\nboot_id = \"{}\"\nmachine_id = \"{}\"\n",
        p("state").display(),
        p("keys").display(),
        nats.url(),
        p("no-bus").display(),
        p("os-release").display(),
        p("boot_id").display(),
        p("machine-id").display()
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
    // Let it connect and settle before measuring "idle".
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let start_ticks = cpu_ticks(pid).expect("agent is running");
    let started = Instant::now();
    let mut max_rss = 0;
    let mut sum_rss = 0;
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let rss = status_kib(pid, "VmRSS").expect("agent still running");
        max_rss = max_rss.max(rss);
        sum_rss += rss;
        samples += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu_secs = (cpu_ticks(pid).unwrap() - start_ticks) as f64 / ticks_per_sec;
    // Anonymous memory is the agent's own; file-backed is mostly its code
    // and libc pages, shared with the page cache.
    let anon = status_kib(pid, "RssAnon").unwrap_or(0);
    let file = status_kib(pid, "RssFile").unwrap_or(0);
    let wall = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{{\"seconds\":{wall:.1},\"rss_max_kib\":{max_rss},\"rss_avg_kib\":{},\"rss_anon_kib\":{anon},\"rss_file_kib\":{file},\"cpu_seconds\":{cpu_secs:.2},\"cpu_percent\":{:.3}}}",
        sum_rss / samples.max(1),
        100.0 * cpu_secs / wall
    );
}
