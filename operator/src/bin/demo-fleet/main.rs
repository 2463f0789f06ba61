//! The demo's simulated fleet: a dozen labelled devices speaking the real
//! protocol over the demo's NATS, and a rollout a person can watch — a
//! canary wave, a device whose install fails, the rollout halting itself
//! with its reason, a resume, the rest of the fleet upgraded. Narrated in
//! plain words; the devices keep heartbeating afterwards (for the
//! dashboard) until Ctrl-C, or exit at once with `--once` after checking
//! the outcome (CI's smoke run).
//!
//! scripts/demo runs it: demo-fleet -c build/demo/operator.toml

mod devices;
mod narrate;

use clap::Parser;
use harmony_operator::bus::Buckets;
use harmony_operator::commands::{rollout_control, rollout_start, StartArgs, Target};
use harmony_operator::model::{keys, BundleRecord, HaltThreshold, Job, JobState, RolloutStatus};
use harmony_operator::sim::SimFleet;
use harmony_operator::{store, Config, Error, Result};
use narrate::Progress;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(about = "Simulated devices and a watchable rollout for scripts/demo")]
struct Args {
    /// The operator's config (NATS URL and credentials, fleet signing key).
    #[arg(short, long)]
    config: PathBuf,
    /// Quick run for CI: short delays, check the outcome, exit.
    #[arg(long)]
    once: bool,
    /// Seconds before the rollout starts (time to open the dashboard).
    #[arg(long, default_value_t = 5)]
    start_after: u64,
    /// Seconds the halted rollout stays halted before the demo resumes it.
    #[arg(long, default_value_t = 20)]
    resume_after: u64,
    /// Simulated download + install + reboot time per device, in ms.
    #[arg(long, default_value_t = 6000)]
    install_ms: u64,
    #[arg(long, default_value_t = 2)]
    heartbeat_secs: u64,
    /// Shown while halted: where the person can press Resume themselves.
    #[arg(long)]
    dashboard_url: Option<String>,
}

const BUNDLE: &str = "harmony-1.1.0";
const TO_VERSION: &str = "1.1.0";
const ROLLOUT: &str = "demo-1_1_0";

fn main() {
    harmony_operator::logger::init();
    let args = Args::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("tokio runtime: {e}")))
        .and_then(|rt| rt.block_on(demo(args)));
    if let Err(e) = outcome {
        eprintln!("demo-fleet: {e}");
        std::process::exit(1);
    }
}

async fn demo(mut args: Args) -> Result<()> {
    if args.once {
        args.start_after = 0;
        args.resume_after = 1;
        args.install_ms = args.install_ms.min(600);
        args.heartbeat_secs = 1;
    }
    let cfg = Config::load(&args.config)?;
    let client = harmony_operator::bus::connect(&cfg.nats).await?;
    let buckets = Buckets::open(client).await?;
    publish_bundle(&buckets).await?;

    let fleet = connect_sim(&cfg, &args).await?;
    let sims = devices::build()?;
    let order: Vec<String> = sims.iter().map(|d| d.id.to_string()).collect();
    for d in sims {
        fleet.add(d);
    }
    fleet.start().await?;
    let _beats = fleet.spawn_heartbeats(Duration::from_secs(args.heartbeat_secs));
    println!(
        "{} simulated devices at five sites run {}; they heartbeat every {} s over NATS like real agents",
        devices::count(),
        devices::FROM_VERSION,
        args.heartbeat_secs
    );
    if args.start_after > 0 {
        println!("the rollout starts in {} s", args.start_after);
    }
    tokio::time::sleep(Duration::from_secs(args.start_after.max(args.heartbeat_secs))).await;

    let (tx, mut progress) = watch::channel(Progress::default());
    let narrator = tokio::spawn(narrate::run(buckets.state.clone(), ROLLOUT.into(), tx));
    let mut start = StartArgs::from_defaults(&cfg, BUNDLE, Target::Devices(order));
    start.id = Some(ROLLOUT.into());
    start.canary = 2;
    start.waves = vec![50, 100];
    start.policy.max_in_flight = 2;
    start.policy.halt = HaltThreshold::Count(1);
    println!();
    println!("rolling out {BUNDLE} ({} → {TO_VERSION}) to all {} devices:", devices::FROM_VERSION, devices::count());
    println!("  a canary wave of 2 devices, then half the fleet, then the rest; at most 2 devices at a time;");
    println!("  a wave halts the rollout as soon as 1 device fails (here {} will)", devices::failing());
    println!("  each device commits only after the operator sees its heartbeat from the new boot");
    println!("  (the CLI: harmony-operator rollout status {ROLLOUT})");
    println!();
    rollout_start(&cfg, &start).await?;

    let deadline = Duration::from_secs(if args.once { 60 } else { 900 });
    tokio::time::timeout(deadline, drive(&cfg, &args, &mut progress))
        .await
        .map_err(|_| Error::Invalid(format!("the rollout did not finish within {} s", deadline.as_secs())))??;
    let summary = summarize(&buckets).await?;
    narrator.abort();
    println!();
    println!("done: {summary}");
    if args.once {
        return check(&buckets, &progress.borrow().clone()).await;
    }
    println!("the simulated devices keep heartbeating; Ctrl-C stops the demo");
    tokio::signal::ctrl_c().await.map_err(|e| Error::Invalid(format!("waiting for Ctrl-C: {e}")))?;
    Ok(())
}

/// The simulated devices share the operator's NATS user (they are a
/// simulation, not provisioned devices).
async fn connect_sim(cfg: &Config, args: &Args) -> Result<SimFleet> {
    let options = match &cfg.nats.nkey_seed_file {
        Some(path) => {
            let seed = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        }
        None => async_nats::ConnectOptions::new(),
    };
    let public = harmony_operator::keys::load(&cfg.keys.signing_key)?.verifying_key();
    let fleet = SimFleet::connect_with(options, &cfg.nats.url, public).await?;
    fleet.set_install_delay(Duration::from_millis(args.install_ms));
    Ok(fleet)
}

/// The bundle record as `bundle push` leaves it; the simulated devices do
/// not download it, so no bundle file is needed.
async fn publish_bundle(b: &Buckets) -> Result<()> {
    let rec = BundleRecord {
        id: BUNDLE.into(),
        version: TO_VERSION.into(),
        compatible: "harmony-sim".into(),
        sha256: "5e".repeat(32),
        size: 412 << 20,
        pushed_at: harmony_operator::clock::Clock::now(&harmony_operator::clock::SystemClock),
        signature_sha256: None,
    };
    store::put_json(&b.state, &keys::bundle(BUNDLE), &rec).await.map(|_| ())
}

/// Waits for the halt, leaves it visible for `resume_after`, resumes
/// (unless someone already did, e.g. from the dashboard), waits for the end.
async fn drive(cfg: &Config, args: &Args, progress: &mut watch::Receiver<Progress>) -> Result<()> {
    let mut resumed = false;
    loop {
        let status = progress.borrow_and_update().status.clone();
        match status {
            Some(RolloutStatus::Completed) => return Ok(()),
            Some(RolloutStatus::Aborted) => return Err(Error::Invalid("the rollout was aborted".into())),
            Some(RolloutStatus::Halted { .. }) if !resumed => {
                resumed = true;
                countdown(args).await;
                if matches!(progress.borrow().status, Some(RolloutStatus::Halted { .. })) {
                    println!("demo: resuming the rollout (harmony-operator rollout resume {ROLLOUT}); the failed device stays failed");
                    rollout_control(cfg, ROLLOUT, "resume").await?;
                }
            }
            _ => {}
        }
        progress.changed().await.map_err(|_| Error::Invalid("the narrator stopped watching KV".into()))?;
    }
}

async fn countdown(args: &Args) {
    let mut left = args.resume_after;
    if let Some(url) = &args.dashboard_url {
        println!("demo: look at the rollout on {url} — press Resume there, or wait {left} s for the demo to resume it");
    } else if left > 1 {
        println!("demo: the rollout stays halted; the demo resumes it in {left} s");
    }
    while left > 0 {
        let step = left.min(5);
        tokio::time::sleep(Duration::from_secs(step)).await;
        left -= step;
        if left > 0 {
            println!("demo: resuming in {left} s");
        }
    }
}

async fn jobs(b: &Buckets) -> Result<Vec<Job>> {
    Ok(store::jobs(&b.state).await?.good.into_iter().filter(|j| j.rollout_id == ROLLOUT).collect())
}

async fn summarize(b: &Buckets) -> Result<String> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for j in jobs(b).await? {
        *counts.entry(j.state.name()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    Ok(parts.join(", "))
}

/// CI's check: the rollout halted once on the failing device, was resumed,
/// and every other device committed.
async fn check(b: &Buckets, progress: &Progress) -> Result<()> {
    let jobs = jobs(b).await?;
    let failing = devices::failing();
    let mut problems = Vec::new();
    if progress.halts != 1 {
        problems.push(format!("the rollout halted {} times, expected once", progress.halts));
    }
    if jobs.len() != devices::count() {
        problems.push(format!("{} jobs, expected {}", jobs.len(), devices::count()));
    }
    for j in &jobs {
        let ok = if j.device.as_str() == failing {
            matches!(j.state, JobState::Failed { .. })
        } else {
            j.state == JobState::Committed
        };
        if !ok {
            problems.push(format!("{} ended {}", j.device, j.state.name()));
        }
    }
    if problems.is_empty() {
        println!("demo-fleet: ok — halted on {failing}, resumed, {} devices committed", jobs.len() - 1);
        Ok(())
    } else {
        Err(Error::Invalid(problems.join("; ")))
    }
}
