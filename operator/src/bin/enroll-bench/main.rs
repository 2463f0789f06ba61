//! `enroll-bench`: the figures issue #14 asks for to choose between the two
//! ways of admitting devices (docs/adr/0005-enrollment-by-auth-callout.md).
//! Run by `scripts/bench enroll [N]`.
//!
//! 1. **Callout mode**: a real nats-server with the block `enroll
//!    server-config` prints and the real `harmony-operator serve` as
//!    separate processes. N enrollments (a fresh nkey each, one token with
//!    `max_uses = N`), a bounded number at a time; then the N enrolled keys
//!    connect as devices (from several holder processes, each this binary
//!    run as `enroll-bench hold`), the server is killed with SIGKILL and
//!    started again on the same port and store, and the time until all N
//!    are connected again is measured.
//! 2. **Include mode** (today's `init --device`): an include listing N
//!    device users (`provision::render_auth_conf`), for each size asked:
//!    time until the server listens, its RSS, and the time a reload takes
//!    after one more user was added; the same for callout mode's
//!    accounts-only block. At the storm size the same reconnect storm as
//!    above, with no operator involved.
//!
//! CPU is utime + stime from `/proc/<pid>/stat`; RSS is `VmRSS`.
//! The holders reconnect with the agent's backoff (harmony-agent's
//! `bus::reconnect_delay`: immediately, then 100 ms doubling to 30 s, plus up
//! to 50 % jitter per device).

use clap::{Parser, Subcommand};
use futures::stream::StreamExt;
use harmony_operator::config::{Config, EnrollConfig};
use harmony_operator::enroll::cli::{self, TokenArgs};
use harmony_operator::enroll::{seed_file, SeedKind};
use harmony_operator::provision::{render_auth_conf, DeviceUser};
use harmony_protocol::enroll::{enroll_inbox_prefix, enroll_subject, EnrollReply, EnrollRequest};
use harmony_protocol::names::device_inbox_prefix;
use harmony_protocol::{DeviceId, SCHEMA_VERSION};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, Parser)]
#[command(about = "Enrollment by auth callout vs. include + reload: enrollments/s, reconnect storms, server memory")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Enrollments, and identities in the reconnect storms.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Processes holding the device connections in a storm.
    #[arg(long, default_value_t = 4)]
    holders: usize,
    /// Include sizes for start time, RSS and reload (comma-separated).
    #[arg(long, default_value = "10000,100000", value_delimiter = ',')]
    include_sizes: Vec<usize>,
    /// The enrollment service's rate limit for this run ([enroll] max_requests_per_sec).
    #[arg(long, default_value_t = 100_000)]
    max_requests_per_sec: u32,
    /// Skip part 1 (callout mode: enrollments and its storm).
    #[arg(long)]
    skip_callout: bool,
    /// Skip part 2 (include mode and the accounts-only block).
    #[arg(long)]
    skip_include: bool,
    /// The operator binary (default: next to this one).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Keep the work directory (server and operator logs) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Give up waiting for a storm to settle after this long.
    #[arg(long, default_value_t = 300)]
    storm_limit_secs: u64,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) Hold device connections: lines `<seed> <device id>` in
    /// KEYS; prints `C <connected>` whenever the count changes.
    Hold {
        #[arg(long)]
        url: String,
        #[arg(long)]
        keys: PathBuf,
    },
}

fn main() -> Res<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match &args.cmd {
        Some(Cmd::Hold { url, keys }) => rt.block_on(hold(url, keys)),
        None => rt.block_on(bench(&args)),
    }
}

// ---------------------------------------------------------------- processes

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

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A nats-server with a config file, a JetStream store and a log file, all
/// kept across [`Server::restart`].
struct Server {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    conf: PathBuf,
}

const RELOADED: &str = "Reloaded server configuration";

impl Server {
    /// Starts it; returns it and the time from spawn until it accepted a TCP connection.
    fn start(dir: &Path, conf: &Path) -> Res<(Self, Duration)> {
        std::fs::create_dir_all(dir)?;
        let mut s = Self { child: None, port: free_port()?, dir: dir.to_path_buf(), conf: conf.to_path_buf() };
        let took = s.spawn()?;
        Ok((s, took))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    fn spawn(&mut self) -> Res<Duration> {
        let started = Instant::now();
        let child = Command::new(find_nats_server())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.join("js"))
            .arg("-c")
            .arg(&self.conf)
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = started + Duration::from_secs(120);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(started.elapsed());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("nats-server exited with {status}; see {}", self.log_path().display()).into());
            }
            if Instant::now() > deadline {
                return Err("nats-server did not listen within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGHUP (what `nats-server --signal reload=<pid>` sends), then waits
    /// for the log line saying the reload finished.
    fn reload(&self) -> Res<Duration> {
        let count = || std::fs::read_to_string(self.log_path()).map(|t| t.matches(RELOADED).count()).unwrap_or(0);
        let before = count();
        let started = Instant::now();
        let status = Command::new("kill").arg("-HUP").arg(self.pid().to_string()).status()?;
        if !status.success() {
            return Err("kill -HUP failed".into());
        }
        while count() == before {
            if started.elapsed() > Duration::from_secs(120) {
                return Err("no reload within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(started.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------- holders

/// The agent's reconnect backoff (harmony-agent `bus::reconnect_delay`).
fn reconnect_delay(device: &str, attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    let base = Duration::from_millis(100u64.saturating_mul(1 << exp)).min(Duration::from_secs(30));
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("{device}/{attempts}").as_bytes());
    let permille = u64::from(u16::from_be_bytes([digest[0], digest[1]]) % 1000);
    let jitter_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX) / 2 * permille / 1000;
    base + Duration::from_millis(jitter_ms)
}

/// A holder's connection: 0 down, 1 connected by the client's account (the
/// server may still be deciding: async-nats reports a connection once it
/// reads anything but an error after CONNECT, and a server waiting for the
/// callout sends PINGs), 2 proven by a PING/PONG round trip, which the
/// server answers only after admitting the client.
struct Held {
    client: async_nats::Client,
    state: Arc<AtomicU8>,
    checking: Arc<AtomicBool>,
}

const DOWN: u8 = 0;
const CLAIMED: u8 = 1;
const PROVEN: u8 = 2;

async fn hold(url: &str, keys: &Path) -> Res<()> {
    let text = std::fs::read_to_string(keys)?;
    let lines: Vec<(String, String)> =
        text.lines().filter_map(|l| l.split_once(' ').map(|(s, d)| (s.to_string(), d.to_string()))).collect();
    let connected = Arc::new(AtomicUsize::new(0));
    let held: Arc<std::sync::Mutex<Vec<Arc<Held>>>> = Arc::default();
    let printer = {
        let connected = connected.clone();
        tokio::spawn(async move {
            let mut last = usize::MAX;
            loop {
                let n = connected.load(Ordering::Relaxed);
                if n != last {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "C {n}");
                    let _ = out.flush();
                    last = n;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Proves claimed connections with a round trip.
    let checker = {
        let (held, connected) = (held.clone(), connected.clone());
        tokio::spawn(async move {
            loop {
                let snapshot: Vec<Arc<Held>> = held.lock().map(|h| h.iter().cloned().collect()).unwrap_or_default();
                for h in snapshot {
                    if h.state.load(Ordering::SeqCst) != CLAIMED || h.checking.swap(true, Ordering::SeqCst) {
                        continue;
                    }
                    let connected = connected.clone();
                    tokio::spawn(async move {
                        let ok = tokio::time::timeout(Duration::from_secs(12), h.client.flush()).await;
                        if matches!(ok, Ok(Ok(())))
                            && h.state.compare_exchange(CLAIMED, PROVEN, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                        {
                            connected.fetch_add(1, Ordering::SeqCst);
                        }
                        h.checking.store(false, Ordering::SeqCst);
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let failed = Arc::new(AtomicUsize::new(0));
    let ok: usize = futures::stream::iter(lines)
        .map(|(seed, device)| {
            let connected = connected.clone();
            let failed = failed.clone();
            let held = held.clone();
            let url = url.to_string();
            async move {
                let state = Arc::new(AtomicU8::new(DOWN));
                for _ in 0..20 {
                    let (c, st) = (connected.clone(), state.clone());
                    let id = device.clone();
                    let opts = async_nats::ConnectOptions::with_nkey(seed.clone())
                        .custom_inbox_prefix(device_inbox_prefix(&DeviceId::new(device.as_str()).ok()?))
                        .max_reconnects(None)
                        .reconnect_delay_callback(move |a| reconnect_delay(&id, a))
                        .connection_timeout(Duration::from_secs(15))
                        .read_buffer_capacity(4096)
                        .event_callback(move |event| {
                            let (c, st) = (c.clone(), st.clone());
                            async move {
                                match event {
                                    async_nats::Event::Connected => {
                                        let _ = st.compare_exchange(DOWN, CLAIMED, Ordering::SeqCst, Ordering::SeqCst);
                                    }
                                    // The swap runs in the guard: only a proven connection was counted.
                                    async_nats::Event::Disconnected if st.swap(DOWN, Ordering::SeqCst) == PROVEN => {
                                        c.fetch_sub(1, Ordering::SeqCst);
                                    }
                                    _ => {}
                                }
                            }
                        });
                    match opts.connect(url.as_str()).await {
                        Ok(client) => {
                            let _ = state.compare_exchange(DOWN, CLAIMED, Ordering::SeqCst, Ordering::SeqCst);
                            let h = Arc::new(Held { client, state, checking: Arc::new(AtomicBool::new(false)) });
                            if let Ok(mut all) = held.lock() {
                                all.push(h);
                            }
                            return Some(());
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                failed.fetch_add(1, Ordering::SeqCst);
                None
            }
        })
        .buffer_unordered(50)
        .filter_map(|c| async move { c })
        .count()
        .await;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {ok} {}", failed.load(Ordering::SeqCst))?;
        out.flush()?;
    }
    // Hold them until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    printer.abort();
    checker.abort();
    Ok(())
}

/// Holder processes over a key file, and the connected count they report.
struct Holders {
    procs: Vec<Proc>,
    counts: Vec<Arc<AtomicUsize>>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl Holders {
    fn start(url: &str, identities: &[(String, String)], n: usize, dir: &Path) -> Res<Self> {
        let exe = std::env::current_exe()?;
        let mut procs = Vec::new();
        let mut counts = Vec::new();
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        for (i, chunk) in identities.chunks(identities.len().div_ceil(n.max(1)).max(1)).enumerate() {
            let file = dir.join(format!("holder-{i}.keys"));
            let text: String = chunk.iter().map(|(s, d)| format!("{s} {d}\n")).collect();
            std::fs::write(&file, text)?;
            let mut child = Command::new(&exe)
                .args(["hold", "--url", url, "--keys"])
                .arg(&file)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let out = child.stdout.take().ok_or("holder stdout")?;
            let count = Arc::new(AtomicUsize::new(0));
            let (c, r, f) = (count.clone(), ready.clone(), failed.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let mut w = line.split_whitespace();
                    match (w.next(), w.next(), w.next()) {
                        (Some("C"), Some(n), _) => c.store(n.parse().unwrap_or(0), Ordering::SeqCst),
                        (Some("READY"), _, Some(bad)) => {
                            f.fetch_add(bad.parse().unwrap_or(0), Ordering::SeqCst);
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
            });
            procs.push(Proc(child));
            counts.push(count);
        }
        Ok(Self { procs, counts, ready, failed })
    }

    fn connected(&self) -> usize {
        self.counts.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    /// Waits until every holder connected all it could.
    fn wait_ready(&self, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        while self.ready.load(Ordering::SeqCst) < self.procs.len() {
            if Instant::now() > deadline {
                return Err(format!("holders not ready after {timeout:?}: {} connected", self.connected()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until `n` connections are proven; returns how long it took.
    fn wait_connected(&self, n: usize, timeout: Duration) -> Res<Duration> {
        let started = Instant::now();
        while self.connected() < n {
            if started.elapsed() > timeout {
                return Err(format!("only {} of {n} connected after {timeout:?}", self.connected()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(started.elapsed())
    }
}

/// Kill -9 the server, wait until the holders noticed, start it again, and
/// wait until all `n` are connected again. Prints and returns the figures.
fn storm(
    label: &str,
    server: &mut Server,
    holders: &Holders,
    n: usize,
    operator: Option<u32>,
    limit: Duration,
) -> Res<String> {
    let op0 = operator.and_then(cpu_secs);
    let killed = Instant::now();
    server.kill();
    // The holders see the connection close within milliseconds.
    while holders.connected() > n / 2 && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let noticed = killed.elapsed();
    let spawned = Instant::now();
    let listen = server.spawn()?;
    let (mut t50, mut t99) = (None, None);
    let deadline = spawned + limit;
    // The connected count once a second, and the most seen at once.
    let (mut series, mut next_sample, mut most) = (Vec::new(), Duration::ZERO, (0, Duration::ZERO));
    loop {
        let c = holders.connected();
        if spawned.elapsed() >= next_sample {
            series.push(c);
            next_sample += Duration::from_secs(1);
        }
        if c > most.0 {
            most = (c, spawned.elapsed());
        }
        if t50.is_none() && c * 2 >= n {
            t50 = Some(spawned.elapsed());
        }
        if t99.is_none() && c * 100 >= n * 99 {
            t99 = Some(spawned.elapsed());
        }
        if c >= n || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let all = spawned.elapsed();
    let c = holders.connected();
    let op = match (op0, operator.and_then(cpu_secs)) {
        (Some(a), Some(b)) => format!("{:.2} s", b - a),
        _ => "-".into(),
    };
    let nats_cpu = cpu_secs(server.pid()).unwrap_or_default();
    let rss = rss_kib(server.pid()).unwrap_or_default();
    let fmt = |d: Option<Duration>| d.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or("-".into());
    println!(
        "storm {label}: connected, once a second from the restart: {}",
        series.iter().map(usize::to_string).collect::<Vec<_>>().join(" ")
    );
    let line = format!(
        "STORM {label}: {c}/{n} connected {:.2} s after the restart (listening after {:.2} s; 50 % at {}, 99 % at {}; \
         most at once {} at {:.2} s); holders noticed the kill in {:.2} s; nats-server CPU since restart {nats_cpu:.2} s, RSS {}; operator CPU over the storm {op}",
        all.as_secs_f64(),
        listen.as_secs_f64(),
        fmt(t50),
        fmt(t99),
        most.0,
        most.1.as_secs_f64(),
        noticed.as_secs_f64(),
        mib(rss),
    );
    println!("{line}");
    Ok(line)
}

// ---------------------------------------------------------------- enrollment

enum Outcome {
    Enrolled { seed: String, device: String, took: Duration, busy: usize },
    Failed(String),
}

async fn enroll_one(url: &str, token: &str, i: usize) -> Outcome {
    let started = Instant::now();
    let key = nkeys::KeyPair::new_user();
    let device = format!("bench-{i:06}");
    let Ok(seed) = key.seed() else { return Outcome::Failed("no seed".into()) };
    let Ok(id) = DeviceId::new(device.as_str()) else { return Outcome::Failed(format!("bad id {device}")) };
    let req = EnrollRequest {
        schema: SCHEMA_VERSION,
        token: token.into(),
        nkey: key.public_key(),
        device: id,
        labels: BTreeMap::new(),
        agent_version: "bench".into(),
        os_version: None,
    };
    let Ok(body) = serde_json::to_vec(&req) else { return Outcome::Failed("encode".into()) };
    let client = match async_nats::ConnectOptions::with_nkey(seed.clone())
        .token(token.to_string())
        .custom_inbox_prefix(enroll_inbox_prefix(&key.public_key()))
        .connection_timeout(Duration::from_secs(15))
        .request_timeout(Some(Duration::from_secs(30)))
        .max_reconnects(Some(1))
        .connect(url)
        .await
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    let mut busy = 0;
    let outcome = loop {
        let reply = match client.request(enroll_subject(&key.public_key()), body.clone().into()).await {
            Ok(m) => m,
            Err(e) => break Outcome::Failed(format!("request: {e}")),
        };
        match serde_json::from_slice::<EnrollReply>(&reply.payload) {
            Ok(EnrollReply::Enrolled { .. }) => {
                break Outcome::Enrolled { seed, device, took: started.elapsed(), busy };
            }
            Ok(EnrollReply::Refused { reason: harmony_protocol::enroll::EnrollRefusal::Busy, .. }) if busy < 100 => {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(other) => break Outcome::Failed(format!("{other:?}")),
            Err(e) => break Outcome::Failed(format!("reply: {e}")),
        }
    };
    let _ = client.drain().await;
    outcome
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Part 1: callout mode with the real operator.
async fn callout_mode(args: &Args, dir: &Path, op_bin: &Path, report: &mut Vec<String>) -> Res<()> {
    let n = args.devices;
    let p = |f: &str| dir.join(f);
    seed_file(&p("operator.nk"), SeedKind::User, true)?;
    let signing_key = p("fleet.key");
    harmony_operator::keys::generate(&signing_key)?;
    let mut cfg = Config::for_url("nats://127.0.0.1:1", &signing_key);
    cfg.nats.nkey_seed_file = Some(p("operator.nk"));
    cfg.enroll = Some(EnrollConfig {
        issuer_seed_file: p("issuer.nk"),
        system_seed_file: p("system.nk"),
        max_requests_per_sec: args.max_requests_per_sec,
        ..EnrollConfig::default()
    });
    let block = cli::server_config(&cfg)?.text;
    std::fs::write(p("callout.conf"), &block)?;
    let (mut server, _) = Server::start(&p("callout-server"), &p("callout.conf"))?;
    cfg.nats.url = server.url();
    harmony_operator::commands::init(&cfg, &Default::default()).await?;
    std::fs::write(p("operator.toml"), toml::to_string(&cfg)?)?;
    let op_log = std::fs::File::create(p("operator.log"))?;
    let op = Proc(
        Command::new(op_bin)
            .arg("--config")
            .arg(p("operator.toml"))
            .arg("serve")
            .env("HARMONY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(op_log)
            .spawn()?,
    );
    let op_pid = op.0.id();
    // Ready when an unknown key is refused at once (the callout answers).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = Instant::now();
        let r = async_nats::ConnectOptions::with_nkey(nkeys::KeyPair::new_user().seed()?)
            .connection_timeout(Duration::from_secs(5))
            .connect(server.url())
            .await;
        if let Err(e) = r {
            if e.to_string().to_lowercase().contains("authorization") && t.elapsed() < Duration::from_secs(1) {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("the operator's callout never answered".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let args_t =
        TokenArgs { labels: vec![], max_uses: u32::try_from(n)?, expires: "1d".into(), require_approval: false };
    let token = cli::token_create(&cfg, &args_t).await?.json["token"].as_str().ok_or("no token in output")?.to_string();

    println!(
        "== callout mode: {n} enrollments, {} at a time, [enroll] max_requests_per_sec = {} ==",
        args.concurrency, args.max_requests_per_sec
    );
    let (op0, nats0) = (cpu_secs(op_pid).unwrap_or_default(), cpu_secs(server.pid()).unwrap_or_default());
    let started = Instant::now();
    let url = server.url();
    let outcomes: Vec<Outcome> = futures::stream::iter(0..n)
        .map(|i| {
            let (url, token) = (url.clone(), token.clone());
            async move { enroll_one(&url, &token, i).await }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let took = started.elapsed();
    let (op1, nats1) = (cpu_secs(op_pid).unwrap_or_default(), cpu_secs(server.pid()).unwrap_or_default());
    let mut identities = Vec::new();
    let mut lat = Vec::new();
    let mut busy = 0;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        match o {
            Outcome::Enrolled { seed, device, took, busy: b } => {
                identities.push((seed, device));
                lat.push(took);
                busy += b;
            }
            Outcome::Failed(why) => *failures.entry(why.chars().take(80).collect()).or_default() += 1,
        }
    }
    lat.sort();
    let line = format!(
        "ENROLL: {}/{n} enrolled in {:.2} s = {:.0} enrollments/s ({} at a time); per enrollment (connect + request) p50 {:.1} ms, p99 {:.1} ms; \
         busy answers retried {busy}; operator CPU {:.2} s, nats-server CPU {:.2} s; failures {failures:?}",
        identities.len(),
        took.as_secs_f64(),
        identities.len() as f64 / took.as_secs_f64(),
        args.concurrency,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        op1 - op0,
        nats1 - nats0,
    );
    println!("{line}");
    report.push(line);
    let line = format!(
        "ENROLL-ARITHMETIC (not measured): at the default [enroll] max_requests_per_sec = 20, {n} enrollments take at least {n}/20 = {:.0} s ({:.1} min)",
        n as f64 / 20.0,
        n as f64 / 20.0 / 60.0
    );
    println!("{line}");
    report.push(line);

    println!("== callout mode: reconnect storm, {} enrolled identities ==", identities.len());
    let holders = Holders::start(&server.url(), &identities, args.holders, dir)?;
    let t = Instant::now();
    holders.wait_ready(Duration::from_secs(600))?;
    let m = identities.len() - holders.failed.load(Ordering::SeqCst);
    holders.wait_connected(m, Duration::from_secs(600))?;
    println!("all {m} connected (proven by a round trip) {:.1} s after the holders started", t.elapsed().as_secs_f64());
    let line = format!(
        "HOLD callout: {m} devices connected; nats-server RSS {}, operator RSS {}",
        mib(rss_kib(server.pid()).unwrap_or_default()),
        mib(rss_kib(op_pid).unwrap_or_default())
    );
    println!("{line}");
    report.push(line);
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.push(storm("callout", &mut server, &holders, m, Some(op_pid), Duration::from_secs(args.storm_limit_secs))?);
    drop(holders);
    drop(op);
    Ok(())
}

/// (seed, device id) of each identity a holder connects as.
type Identities = Vec<(String, String)>;
/// Identities and the device records an include lists.
type Users = (Identities, Vec<DeviceUser>);

/// `n` random device users: (seed, id) and their records.
fn random_users(n: usize) -> Res<Users> {
    let mut ids = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    for i in 0..n {
        let kp = nkeys::KeyPair::new_user();
        let device = format!("inc-{i:06}");
        users.push(DeviceUser::provisioned(DeviceId::new(device.as_str())?, kp.public_key(), BTreeMap::new()));
        ids.push((kp.seed()?, device));
    }
    Ok((ids, users))
}

/// Part 2: include + reload, and callout mode's accounts-only block, without connections.
fn include_mode(args: &Args, dir: &Path, report: &mut Vec<String>) -> Res<()> {
    let op = seed_file(&dir.join("inc-operator.nk"), SeedKind::User, true)?;
    // The accounts-only block of callout mode, for its start time, RSS and reload.
    let mut cfg = Config::for_url("nats://127.0.0.1:1", &dir.join("fleet.key"));
    cfg.nats.nkey_seed_file = Some(dir.join("inc-operator.nk"));
    cfg.enroll = Some(EnrollConfig {
        issuer_seed_file: dir.join("inc-issuer.nk"),
        system_seed_file: dir.join("inc-system.nk"),
        ..EnrollConfig::default()
    });
    let callout_conf = dir.join("accounts-only.conf");
    std::fs::write(&callout_conf, cli::server_config(&cfg)?.text)?;
    let mut sizes: Vec<(String, PathBuf, Option<Users>)> =
        vec![("callout (accounts block only)".into(), callout_conf, None)];
    for &n in &args.include_sizes {
        let t = Instant::now();
        let (ids, users) = random_users(n + 1)?;
        let conf = dir.join(format!("include-{n}.conf"));
        let text = render_auth_conf(&op.public_key(), &users[..n]);
        std::fs::write(&conf, &text)?;
        println!(
            "include with {n} device users: {} bytes, keys + render + write {:.2} s",
            text.len(),
            t.elapsed().as_secs_f64()
        );
        sizes.push((format!("include, {n} device users"), conf, Some((ids, users))));
    }
    for (i, (label, conf, users)) in sizes.iter().enumerate() {
        println!("== {label} ==");
        let (server, listen) = Server::start(&dir.join(format!("srv-{i}")), conf)?;
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_kib(server.pid()).unwrap_or_default();
        let cpu = cpu_secs(server.pid()).unwrap_or_default();
        let mut reloads = Vec::new();
        for round in 0..3 {
            if let Some((_, users)) = users {
                // One more enrolled device: n + 1 users, then back to n.
                let n = users.len() - 1;
                let upto = if round % 2 == 0 { n + 1 } else { n };
                std::fs::write(conf, render_auth_conf(&op.public_key(), &users[..upto]))?;
            }
            reloads.push(server.reload()?.as_secs_f64() * 1000.0);
        }
        let rss_after = rss_kib(server.pid()).unwrap_or_default();
        let line = format!(
            "SERVER {label}: listening {:.3} s after spawn (CPU to start {cpu:.2} s), RSS idle {}, reload (one user added/removed) {} ms, RSS after reloads {}",
            listen.as_secs_f64(),
            mib(rss),
            reloads.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" / "),
            mib(rss_after),
        );
        println!("{line}");
        report.push(line);
    }
    // The storm with the include, at the storm size (no operator).
    let n = args.devices;
    let (ids, users) = match sizes.iter().find_map(|(_, _, u)| u.as_ref().filter(|(i, _)| i.len() == n + 1)) {
        Some((ids, users)) => (ids.clone(), users.clone()),
        None => random_users(n + 1)?,
    };
    let conf = dir.join("include-storm.conf");
    std::fs::write(&conf, render_auth_conf(&op.public_key(), &users[..n]))?;
    println!("== include mode: reconnect storm, {n} identities ==");
    let (mut server, _) = Server::start(&dir.join("srv-storm"), &conf)?;
    let holders = Holders::start(&server.url(), &ids[..n], args.holders, dir)?;
    let t = Instant::now();
    holders.wait_ready(Duration::from_secs(600))?;
    let m = n - holders.failed.load(Ordering::SeqCst);
    holders.wait_connected(m, Duration::from_secs(600))?;
    println!("all {m} connected (proven by a round trip) {:.1} s after the holders started", t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&conf, render_auth_conf(&op.public_key(), &users[..n + 1]))?;
    let reload = server.reload()?;
    let line = format!(
        "HOLD include: {m} devices connected; nats-server RSS {}; reload with them connected (one user added) {:.0} ms",
        mib(rss_kib(server.pid()).unwrap_or_default()),
        reload.as_secs_f64() * 1000.0
    );
    println!("{line}");
    report.push(line);
    report.push(storm("include", &mut server, &holders, m, None, Duration::from_secs(args.storm_limit_secs))?);
    Ok(())
}

async fn bench(args: &Args) -> Res<()> {
    let mut nonce = [0u8; 4];
    getrandom::getrandom(&mut nonce)?;
    let dir = std::env::temp_dir().join(format!("enroll-bench-{}", hex::encode(nonce)));
    std::fs::create_dir_all(&dir)?;
    let op_bin = args.operator.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("harmony-operator"))).unwrap_or_default()
    });
    let mut report = Vec::new();
    if !args.skip_callout {
        callout_mode(args, &dir, &op_bin, &mut report).await?;
    }
    if !args.skip_include {
        tokio::task::block_in_place(|| include_mode(args, &dir, &mut report))?;
    }
    println!(
        "== summary ({} cores, load average {}) ==",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        {
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    for line in &report {
        println!("{line}");
    }
    if args.keep {
        println!("work directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
