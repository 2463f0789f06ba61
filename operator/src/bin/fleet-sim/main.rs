//! Fleet simulator + operator benchmark.
//!
//! Starts a nats-server (or uses `--nats-url`), creates the buckets, starts
//! the real `harmony-operator serve` as a child process, and simulates N
//! devices in this process speaking the real protocol over real NATS (one
//! heartbeat per device per interval, spread evenly). It reports the
//! operator's CPU and RSS in steady state, then rolls a bundle out to
//! `--rollout` devices with simulated installs and reports the time to roll
//! and the commit latency (awaiting-commit heartbeat written → commit
//! received by the device), p50/p99.
//!
//! cargo run --release -p harmony-operator --bin fleet-sim -- --devices 10000
//!
//! With `--dashboard` the operator also serves the dashboard (`serve
//! --http`): after the steady state the device pages are timed, and during
//! the rollout `--viewers` clients hold the live-update stream open while
//! the rollout page is timed (scripts/bench dashboard).

mod dashboard;
mod http;

use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use harmony_operator::bus::{create_buckets, BucketLimits, Buckets};
use harmony_operator::commands::{rollout_start, StartArgs, Target};
use harmony_operator::model::{keys, BundleRecord, HaltThreshold, RolloutStatus};
use harmony_operator::sim::{Behavior, SimFleet, SimState};
use harmony_operator::{store, Config};
use harmony_protocol::DeviceId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Simulate a fleet against a real operator and report CPU, RSS, commit latency and roll time")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    #[arg(long, default_value_t = 10)]
    interval_secs: u64,
    /// Steady-state measuring window after one warm-up interval.
    #[arg(long, default_value_t = 30)]
    measure_secs: u64,
    /// Devices to roll out to after the steady-state measurement (0: skip).
    #[arg(long, default_value_t = 1000)]
    rollout: usize,
    /// Simulated download + install + reboot time per device.
    #[arg(long, default_value_t = 2000)]
    install_ms: u64,
    #[arg(long, default_value_t = 100)]
    max_in_flight: usize,
    /// Use this server (or comma-separated cluster nodes) instead of starting one.
    #[arg(long)]
    nats_url: Option<String>,
    /// Servers to start when no --nats-url: 1 (a single server) or a
    /// JetStream cluster of 3 on loopback, with R-N buckets.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The operator binary (default: next to this one).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Serve and benchmark the dashboard (see the module docs).
    #[arg(long)]
    dashboard: bool,
    /// Live-update (SSE) viewers during the rollout, with --dashboard.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    /// Rounds over the ten device-page requests, with --dashboard.
    #[arg(long, default_value_t = 20)]
    page_rounds: usize,
}

const BENCH_USER: &str = "bench";

/// The operator config as TOML, with a dashboard admin when `password` is given
/// (hashed by the operator binary itself, as an operator would).
fn config_toml(cfg: &Config, op_bin: &Path, password: Option<&str>) -> Res<String> {
    let mut table: toml::Table = toml::to_string(cfg)?.parse()?;
    if let Some(password) = password {
        let mut child = Command::new(op_bin)
            .args(["dashboard", "hash-password"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            writeln!(stdin, "{password}")?;
        }
        let out = child.wait_with_output()?;
        let hash = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
        if !out.status.success() || hash.is_empty() {
            return Err("harmony-operator dashboard hash-password failed".into());
        }
        let mut user = toml::Table::new();
        user.insert("name".into(), BENCH_USER.into());
        user.insert("password_hash".into(), hash.into());
        user.insert("role".into(), "viewer".into());
        let dash = table.entry("dashboard").or_insert_with(|| toml::Table::new().into());
        if let Some(dash) = dash.as_table_mut() {
            dash.insert("users".into(), toml::Value::Array(vec![user.into()]));
        }
    }
    Ok(toml::to_string(&table)?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn find_nats_server() -> PathBuf {
    if let Some(p) = std::env::var_os("HARMONY_NATS_SERVER") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    "nats-server".into()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime in seconds and VmRSS in KiB of a process.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks / clk_tck(), rss))
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Res<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench(args))
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `nodes` nats-servers with JetStream (routed into one cluster when
/// more than one); returns them and their comma-separated client URLs.
fn start_servers(nodes: usize, dir: &Path) -> Res<(Vec<Proc>, String)> {
    let ports: Vec<(u16, u16)> = (0..nodes).map(|_| Ok((free_port()?, free_port()?))).collect::<Res<_>>()?;
    let routes: Vec<String> = ports.iter().map(|(_, r)| format!("\"nats-route://127.0.0.1:{r}\"")).collect();
    let mut procs = Vec::new();
    for (i, (port, route)) in ports.iter().enumerate() {
        let node_dir = dir.join(format!("n{}", i + 1));
        std::fs::create_dir_all(&node_dir)?;
        let mut conf = format!(
            "server_name: \"n{}\"\nlisten: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n",
            i + 1,
            node_dir.join("js").display()
        );
        if nodes > 1 {
            conf += &format!(
                "cluster {{ name: \"fleet-sim\", listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
                routes.join(", ")
            );
        }
        std::fs::write(node_dir.join("server.conf"), conf)?;
        let log = std::fs::File::create(node_dir.join("nats-server.log"))?;
        let child = Command::new(find_nats_server())
            .arg("-c")
            .arg(node_dir.join("server.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        procs.push(Proc(child));
    }
    let urls: Vec<String> = ports.iter().map(|(p, _)| format!("nats://127.0.0.1:{p}")).collect();
    Ok((procs, urls.join(",")))
}

async fn bench(args: Args) -> Res<()> {
    let dir = tempfile_dir()?;
    let (servers, url) = match &args.nats_url {
        Some(u) => (Vec::new(), u.clone()),
        None => start_servers(args.nodes.max(1), &dir)?,
    };
    let nats_pids: Vec<u32> = servers.iter().map(|p| p.0.id()).collect();
    let nats_cpu = || -> Option<f64> {
        (!nats_pids.is_empty()).then(|| nats_pids.iter().filter_map(|p| usage(*p)).map(|u| u.0).sum())
    };
    let key = dir.join("fleet.key");
    harmony_operator::keys::generate(&key)?;
    let mut cfg = Config::for_url(&url, &key);
    cfg.fleet.stale_after_secs = 3 * args.interval_secs;
    cfg.coordinator.tick_millis = 500;
    let cfg_path = dir.join("operator.toml");
    let op_bin = args.operator.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("harmony-operator"))).unwrap_or_default()
    });
    let password = args.dashboard.then(|| hex::encode(dir.as_os_str().as_encoded_bytes()));
    std::fs::write(&cfg_path, config_toml(&cfg, &op_bin, password.as_deref())?)?;
    let http_port = free_port()?;

    let client = harmony_operator::bus::connect(&cfg.nats).await?;
    let limits =
        BucketLimits { replicas: if args.nats_url.is_none() { args.nodes.max(1) } else { 1 }, ..Default::default() };
    // A fresh cluster answers JetStream requests once it has elected a meta leader.
    let js = async_nats::jetstream::new(client.clone());
    let ready_by = Instant::now() + Duration::from_secs(60);
    while let Err(e) = create_buckets(&js, &limits).await {
        if Instant::now() > ready_by {
            return Err(format!("creating the buckets: {e}").into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let buckets = Buckets::open(client).await?;
    let rec = BundleRecord {
        id: "2.0".into(),
        version: "2.0".into(),
        compatible: "harmony-sim".into(),
        sha256: "ab".repeat(32),
        size: 100 << 20,
        pushed_at: harmony_operator::clock::Clock::now(&harmony_operator::clock::SystemClock),
        signature_sha256: None,
    };
    store::put_json(&buckets.state, &keys::bundle("2.0"), &rec).await?;

    let public = harmony_operator::keys::load(&key)?.verifying_key();
    let fleet = SimFleet::connect(&url, public).await?;
    fleet.set_install_delay(Duration::from_millis(args.install_ms));
    let ids: Vec<DeviceId> =
        (0..args.devices).map(|i| DeviceId::new(format!("sim-{i:06}"))).collect::<Result<_, _>>()?;
    for (i, id) in ids.iter().enumerate() {
        let mut d = SimState::new(id.clone(), "1.0", Behavior::Happy);
        if args.dashboard {
            d.labels.insert("site".into(), format!("site-{}", i % 10));
        }
        fleet.add(d);
    }
    fleet.start().await?;

    // Heartbeats: every device once per interval, spread evenly, with many puts in flight.
    let beater = {
        let fleet = fleet.clone();
        let ids = ids.clone();
        let interval = Duration::from_secs(args.interval_secs);
        tokio::spawn(async move {
            let slots = 100u32;
            let per_slot = ids.len().div_ceil(slots as usize);
            let mut tick = tokio::time::interval(interval / slots);
            let mut inflight = FuturesUnordered::new();
            for chunk in ids.chunks(per_slot.max(1)).cycle() {
                tick.tick().await;
                for id in chunk {
                    let fleet = fleet.clone();
                    let id = id.clone();
                    inflight.push(async move { fleet.beat(&id).await });
                    while inflight.len() > 2048 {
                        inflight.next().await;
                    }
                }
                while let Some(Some(_)) = futures::FutureExt::now_or_never(inflight.next()) {}
            }
        })
    };

    let mut serve = vec!["serve".to_string()];
    if args.dashboard {
        serve.extend(["--http".to_string(), format!("127.0.0.1:{http_port}")]);
    }
    let op = Proc(
        Command::new(&op_bin)
            .arg("--config")
            .arg(&cfg_path)
            .args(&serve)
            .env("HARMONY_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pid = op.0.id();
    println!(
        "fleet-sim: {} devices, 1 heartbeat / {} s each ({:.0}/s), operator pid {pid}",
        args.devices,
        args.interval_secs,
        args.devices as f64 / args.interval_secs as f64
    );

    tokio::time::sleep(Duration::from_secs(args.interval_secs + 2)).await;
    let (c0, _) = usage(pid).ok_or("operator not running")?;
    let hb0 = fleet.stats.lock().map(|s| s.heartbeats).unwrap_or(0);
    let n0 = nats_cpu();
    let t0 = Instant::now();
    let mut peak_rss = 0;
    while t0.elapsed() < Duration::from_secs(args.measure_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((_, rss)) = usage(pid) {
            peak_rss = peak_rss.max(rss);
        }
    }
    let (c1, rss) = usage(pid).ok_or("operator died")?;
    let secs = t0.elapsed().as_secs_f64();
    let hb1 = fleet.stats.lock().map(|s| s.heartbeats).unwrap_or(0);
    println!(
        "heartbeats written: {:.0}/s (target {:.0}/s)",
        (hb1 - hb0) as f64 / secs,
        args.devices as f64 / args.interval_secs as f64
    );
    println!(
        "steady state over {secs:.0} s: operator CPU {:.1}% of one core, RSS {:.1} MiB (peak {:.1} MiB)",
        (c1 - c0) / secs * 100.0,
        rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    let steady_nats = match (n0, nats_cpu()) {
        (Some(n0), Some(n1)) => (n1 - n0) / secs * 100.0,
        _ => f64::NAN,
    };
    println!(
        "  (nats-server CPU {steady_nats:.1}% of one core over {} server(s), simulator in this process)",
        nats_pids.len()
    );
    let steady_op = (c1 - c0) / secs * 100.0;

    // One line for scripts/bench to put runs side by side.
    let mut result = format!(
        "RESULT servers={} devices={} steady_operator_cpu={steady_op:.1} steady_nats_cpu={steady_nats:.1}",
        nats_pids.len().max(1),
        args.devices
    );
    let dash = match &password {
        Some(pw) => Some(
            dashboard::login(http_port, BENCH_USER, pw, Duration::from_secs(120)).await.map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    if let Some(dash) = &dash {
        let pages = dashboard::device_pages(args.devices);
        let mut times = dash.time_all(&pages, args.page_rounds).await.map_err(|e| e.to_string())?;
        // Per page: which requests make the tail (times are in round order,
        // one per page per round).
        for (i, page) in pages.iter().enumerate() {
            let mut own: Vec<Duration> = times.iter().skip(i).step_by(pages.len()).copied().collect();
            own.sort();
            println!(
                "  {page}: p50 {:.1} ms, max {:.1} ms",
                ms(pct(&own, 0.5)),
                ms(own.last().copied().unwrap_or_default())
            );
        }
        times.sort();
        println!(
            "dashboard device pages ({} requests: first/middle/last page, search, label filter, combined filters, each sort, overview): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            times.len(),
            ms(pct(&times, 0.5)),
            ms(pct(&times, 0.99)),
            ms(times.last().copied().unwrap_or_default())
        );
        result += &format!(
            " devices_page_p50_ms={:.1} devices_page_p99_ms={:.1}",
            ms(pct(&times, 0.5)),
            ms(pct(&times, 0.99))
        );
    }
    if args.rollout > 0 {
        let targets: Vec<String> = ids.iter().take(args.rollout).map(|d| d.to_string()).collect();
        let mut a = StartArgs::from_defaults(&cfg, "2.0", Target::Devices(targets));
        a.id = Some("bench".into());
        a.canary = 10;
        a.waves = vec![10, 50, 100];
        a.policy.max_in_flight = args.max_in_flight;
        a.policy.halt = HaltThreshold::Percent(10);
        let viewers = dash.as_ref().map(|d| d.viewers(args.viewers));
        let mut rollout_page_times = Vec::new();
        let c_start = usage(pid).map(|u| u.0).unwrap_or(0.0);
        let nats_start = nats_cpu();
        let start = Instant::now();
        rollout_start(&cfg, &a).await?;
        let mut polls = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            polls += 1;
            if let Some(dash) = dash.as_ref().filter(|_| polls.is_multiple_of(4)) {
                rollout_page_times.push(dash.time("/rollouts/bench").await.map_err(|e| e.to_string())?);
            }
            let r: Option<harmony_operator::model::Rollout> =
                store::get_json(&buckets.state, &keys::rollout("bench")).await?;
            match r.map(|r| r.status) {
                Some(RolloutStatus::Completed) => break,
                Some(RolloutStatus::Halted { reason }) => return Err(format!("rollout halted: {reason}").into()),
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(3600) {
                return Err("rollout did not finish within an hour".into());
            }
        }
        let took = start.elapsed();
        let cpu = usage(pid).map(|u| u.0).unwrap_or(0.0) - c_start;
        let nats_during = match (nats_start, nats_cpu()) {
            (Some(a), Some(b)) => (b - a) / took.as_secs_f64() * 100.0,
            _ => f64::NAN,
        };
        let mut lat = fleet.stats.lock().map(|s| s.commit_latency.clone()).unwrap_or_default();
        lat.sort();
        println!(
            "rollout of {} devices (canary 10, waves 10/50/100%, max in flight {}, simulated install {} ms): {:.1} s, operator CPU {:.1}% during it",
            args.rollout,
            args.max_in_flight,
            args.install_ms,
            took.as_secs_f64(),
            cpu / took.as_secs_f64() * 100.0
        );
        println!(
            "commit latency (awaiting-commit heartbeat put → commit at device), n={}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            pct(&lat, 0.5).as_secs_f64() * 1000.0,
            pct(&lat, 0.99).as_secs_f64() * 1000.0,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
        );
        let slow = lat.iter().filter(|d| **d >= Duration::from_millis(500)).count();
        // Where a slow commit's time went: still waiting for the server to
        // take the heartbeat, or after it.
        let (mut acks, slow_with_slow_ack) = fleet
            .stats
            .lock()
            .map(|s| {
                let acks: Vec<Duration> = s.awaiting_put_ack.values().copied().collect();
                let both = s
                    .commit_latency_of
                    .iter()
                    .filter(|(id, l)| {
                        **l >= Duration::from_millis(500) && s.awaiting_put_ack.get(*id).is_some_and(|a| *a >= **l / 2)
                    })
                    .count();
                (acks, both)
            })
            .unwrap_or_default();
        acks.sort();
        println!(
            "awaiting-commit heartbeat put acknowledged after: p50 {:.1} ms, p99 {:.1} ms; of the {slow} commits ≥ 500 ms, {slow_with_slow_ack} spent half or more waiting for that acknowledgement",
            pct(&acks, 0.5).as_secs_f64() * 1000.0,
            pct(&acks, 0.99).as_secs_f64() * 1000.0
        );
        result += &format!(
            " rollout_secs={:.1} rollout_operator_cpu={:.1} rollout_nats_cpu={nats_during:.1} commits={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} over_500ms={slow} put_ack_p99_ms={:.1}",
            took.as_secs_f64(),
            cpu / took.as_secs_f64() * 100.0,
            lat.len(),
            pct(&lat, 0.5).as_secs_f64() * 1000.0,
            pct(&lat, 0.99).as_secs_f64() * 1000.0,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            pct(&acks, 0.99).as_secs_f64() * 1000.0
        );
        if let Some(v) = &viewers {
            let events = v.events.load(std::sync::atomic::Ordering::Relaxed);
            let bytes = v.bytes.load(std::sync::atomic::Ordering::Relaxed);
            let failed = v.failures.load(std::sync::atomic::Ordering::Relaxed);
            rollout_page_times.sort();
            println!(
                "dashboard during the rollout: {} live-update viewers received {events} events ({:.1} per viewer, {:.0} KiB in all, {failed} streams failed); rollout page p50 {:.1} ms, p99 {:.1} ms over {} requests",
                args.viewers,
                events as f64 / args.viewers.max(1) as f64,
                bytes as f64 / 1024.0,
                ms(pct(&rollout_page_times, 0.5)),
                ms(pct(&rollout_page_times, 0.99)),
                rollout_page_times.len()
            );
            result += &format!(
                " viewers={} sse_events_per_viewer={:.1} sse_failed={failed} rollout_page_p50_ms={:.1} rollout_page_p99_ms={:.1}",
                args.viewers,
                events as f64 / args.viewers.max(1) as f64,
                ms(pct(&rollout_page_times, 0.5)),
                ms(pct(&rollout_page_times, 0.99))
            );
        }
    }
    println!("{result}");
    beater.abort();
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Res<PathBuf> {
    let mut nonce = [0u8; 4];
    getrandom::getrandom(&mut nonce)?;
    let dir = std::env::temp_dir().join(format!("fleet-sim-{}", hex::encode(nonce)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
