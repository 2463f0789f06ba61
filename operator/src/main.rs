//! `harmony-operator`: wiring only. Parsing lives in clap, behaviour in the library.

use clap::{Parser, Subcommand};
use harmony_operator::bus::BucketLimits;
use harmony_operator::commands::{self, Output, ProvisionArgs, StartArgs, Target};
use harmony_operator::enroll::cli::{self as enroll_cli, Verdict};
use harmony_operator::model::HaltThreshold;
use harmony_operator::workloads::cli::{self as workloads_cli, Applied};
use harmony_operator::{keys, Config, Error};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "harmony-operator", version, about = "Harmony Fleet operator: bundles, signed offers, rollouts")]
struct Cli {
    /// Operator config file (TOML).
    #[arg(long, short, global = true, default_value = "/etc/harmony-operator/operator.toml")]
    config: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Your name in the audit log (default: $USER).
    #[arg(long = "as", global = true, value_name = "NAME")]
    act_as: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the coordinator (leader-elected; safe to run two).
    Serve {
        /// Also serve the web dashboard here (default 127.0.0.1:8080; overrides [dashboard] listen).
        #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:8080", value_name = "ADDR")]
        http: Option<String>,
    },
    /// Create buckets; with --device, also provision a device credential + agent.toml.
    Init(InitArgs),
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Ping a device over its command subject.
    Ping { device: String },
    /// Which operator leads, and how far behind the heartbeats it is.
    Leader,
    #[command(subcommand)]
    Rollout(RolloutCmd),
    #[command(subcommand)]
    Bundle(BundleCmd),
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The audit log: who did what, when, and how it ended; newest first.
    Audit {
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    #[command(subcommand)]
    Dashboard(DashboardCmd),
    /// Zero-touch enrollment: tokens, the nats-server callout config, preparing cards.
    #[command(subcommand)]
    Enroll(EnrollCmd),
    /// Files, systemd units and containers on devices: signed manifests per device.
    #[command(subcommand)]
    Workloads(WorkloadsCmd),
}

#[derive(Debug, Subcommand)]
enum WorkloadsCmd {
    /// Give the selected active devices this manifest as their next generation.
    Apply {
        /// The manifest (TOML); relative file names in it are relative to it.
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Give the selected devices an empty manifest: they delete what they manage.
    Rm {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Desired and observed generation per device; with --device, every resource.
    Status {
        #[arg(long)]
        device: Option<String>,
    },
}

/// Which devices: named, by the operator's labels, or all.
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// Device ids, comma-separated (or repeated).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["selector", "all"], required_unless_present_any = ["selector", "all"])]
    devices: Vec<String>,
    /// label=value[,label=value]: all must match.
    #[arg(long, conflicts_with = "all")]
    selector: Option<String>,
    /// Every device: for a rollout every device heard from whose record is
    /// not inactive, for workloads every active device.
    #[arg(long)]
    all: bool,
}

impl TargetArgs {
    fn target(self) -> Target {
        if self.all {
            Target::All
        } else if let Some(sel) = self.selector {
            Target::Selector(sel)
        } else {
            Target::Devices(self.devices)
        }
    }
}

#[derive(Debug, Subcommand)]
enum EnrollCmd {
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print the nats-server accounts + auth_callout block (creates the issuer and system keys once).
    ServerConfig,
    /// Write a token (and the NATS URLs, CA) onto the boot partition of an image or a card, without mounting.
    Prepare(PrepareCli),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["image", "device"])))]
struct PrepareCli {
    /// A disk image (.wic, .img), before it is written to cards.
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// A flashed card's block device (/dev/sdX, /dev/mmcblk0), not mounted.
    #[arg(long, value_name = "DEV")]
    device: Option<PathBuf>,
    /// The enrollment token (`enroll token create`).
    #[arg(long)]
    token: String,
    /// NATS server URL as devices reach it (repeatable).
    #[arg(long = "nats-url", required = true)]
    nats_urls: Vec<String>,
    /// PEM of the CA that signed the servers' certificates (for tls:// URLs).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Replace an enrollment file already on the card.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a token (shown once) that lets devices ask to enroll.
    Create {
        /// Labels every device enrolled with it gets, key=value (comma-separated or repeated).
        #[arg(long = "labels", value_delimiter = ',')]
        labels: Vec<String>,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// How long it is valid: 30m, 12h, 7d, 2w.
        #[arg(long, default_value = "7d")]
        expires: String,
        /// Enrolled devices wait in `devices pending` until `devices accept`.
        #[arg(long)]
        require_approval: bool,
    },
    /// Every token, newest first (never the token itself).
    List,
    /// No device can enroll with it any more (enrolled devices stay).
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum DashboardCmd {
    /// Read a password on stdin, print its argon2 hash for [[dashboard.users]] password_hash.
    HashPassword,
}

fn hash_password_from_stdin() -> Result<(), Error> {
    let mut password = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut password)
        .map_err(|e| Error::Io { path: PathBuf::from("stdin"), source: e })?;
    let password = password.strip_suffix('\n').unwrap_or(&password);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(Error::Invalid("empty password on stdin".into()));
    }
    let hash = harmony_operator::dashboard::hash_password(password).map_err(Error::Invalid)?;
    println!("{hash}");
    Ok(())
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Heartbeats of devices silent this long expire from the bucket.
    #[arg(long, default_value_t = 7)]
    heartbeat_ttl_days: u64,
    /// Largest total size of the bundle object store, in GiB (default: no cap).
    #[arg(long)]
    bundle_store_gib: Option<i64>,
    /// Copies of every bucket on a JetStream cluster (1..=5, at most the cluster's servers).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Provision this device.
    #[arg(long)]
    device: Option<String>,
    /// Device labels, key=value (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// NATS URL(s) as the device sees them (default: the operator's).
    #[arg(long = "device-nats-url")]
    nats_urls: Vec<String>,
    /// Directory receiving the device files (data/harmony/... for the data partition, etc/harmony/fleet-keys).
    #[arg(long, default_value = "device-files")]
    out: PathBuf,
    /// nats-server include file with the users (regenerated).
    #[arg(long, default_value = "harmony-auth.conf")]
    auth_conf: PathBuf,
    /// The operator's own nkey seed (created if missing).
    #[arg(long, default_value = "operator.nk")]
    operator_nkey: PathBuf,
    #[arg(long, default_value_t = 10)]
    heartbeat_interval_secs: u64,
    #[arg(long, default_value_t = 300)]
    commit_deadline_secs: u64,
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// Every device with presence (online/stale/offline), version, slot, health, phase.
    List,
    /// One device: last heartbeat and its rollout job with every transition.
    Show { device: String },
    /// Ask a device to reboot (the agent refuses during an install).
    Reboot { device: String },
    /// Devices enrolled with a --require-approval token, waiting for a verdict.
    Pending,
    /// Let a pending device in.
    Accept { device: String },
    /// Refuse a pending device; its key is never admitted.
    Reject { device: String },
    /// Take a device's rights away and disconnect it now; its key is never admitted again.
    Revoke { device: String },
}

#[derive(Debug, Subcommand)]
enum RolloutCmd {
    /// Start a rollout of a pushed bundle.
    Start(StartCli),
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Abort {
        id: String,
    },
    /// All rollouts, or one in detail.
    Status {
        id: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct StartCli {
    #[arg(long)]
    bundle: String,
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long)]
    id: Option<String>,
    /// Devices in the canary wave.
    #[arg(long)]
    canary: Option<usize>,
    /// Cumulative percentages for the waves after the canary, e.g. 10,50,100.
    #[arg(long, value_delimiter = ',')]
    waves: Option<Vec<u8>>,
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Offer to commit, per device.
    #[arg(long)]
    device_timeout_secs: Option<u64>,
    /// Pre-reboot heartbeat to new-boot heartbeat, per device.
    #[arg(long)]
    reboot_timeout_secs: Option<u64>,
    /// Halt when this many devices of a wave fail/roll back/time out.
    #[arg(long, conflicts_with = "halt_after_percent")]
    halt_after: Option<u32>,
    /// Halt when this percentage of a wave does.
    #[arg(long)]
    halt_after_percent: Option<u8>,
    #[arg(long)]
    allow_downgrade: bool,
    /// At most N devices of this rollout download from the bundle server
    /// ([bundle_http]) at once; more are told to retry (503, Retry-After).
    #[arg(long)]
    max_concurrent_downloads: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum BundleCmd {
    /// Upload a RAUC bundle (version and compatible read from its manifest).
    Push {
        file: PathBuf,
        /// Name of the bundle (default: its version).
        #[arg(long)]
        id: Option<String>,
    },
    List,
    /// Remove a bundle (refused while an unfinished rollout uses it).
    Rm {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Create the fleet signing key (config keys.signing_key, or --out) and its .pub.
    Generate {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start a rotation: new key signs, old .pub stays valid on devices.
    Rotate,
    /// Finish a rotation: forget the old key.
    Retire,
}

fn print(out: &Output, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(&out.json).unwrap_or_default());
    } else {
        println!("{}", out.text);
    }
}

fn main() -> ExitCode {
    harmony_operator::logger::init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a multi-device command's outcome, then fails if any device did.
fn finish(applied: &Applied, json: bool) -> Result<(), Error> {
    print(&applied.output, json);
    applied.error().map_or(Ok(()), Err)
}

fn prepare_card(p: PrepareCli) -> Result<Output, Error> {
    let target = p.image.or(p.device).ok_or_else(|| Error::Invalid("--image or --device".into()))?;
    let a =
        enroll_cli::PrepareArgs { target, token: p.token, nats_urls: p.nats_urls, ca: p.ca, overwrite: p.overwrite };
    enroll_cli::prepare(&a)
}

async fn dispatch(cli: Cli) -> Result<(), Error> {
    let json = cli.json;
    commands::act_as(cli.act_as.clone());
    if let Cmd::Keys(KeysCmd::Generate { out: Some(path) }) = &cli.cmd {
        let id = keys::generate(path)?;
        print(
            &Output {
                json: serde_json::json!({"key_id": id, "public": keys::public_path(path)}),
                text: format!("key {id}"),
            },
            json,
        );
        return Ok(());
    }
    if let Cmd::Dashboard(DashboardCmd::HashPassword) = &cli.cmd {
        return hash_password_from_stdin();
    }
    // Preparing a card needs no operator config: a laptop with the image is enough.
    let cmd = match cli.cmd {
        Cmd::Enroll(EnrollCmd::Prepare(p)) => {
            print(&prepare_card(p)?, json);
            return Ok(());
        }
        other => other,
    };
    let cfg = Config::load(&cli.config)?;
    let out = match cmd {
        Cmd::Dashboard(DashboardCmd::HashPassword) => return hash_password_from_stdin(),
        Cmd::Serve { http } => {
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            let stop = async move {
                tokio::select! { _ = shutdown => {}, _ = term => {} }
            };
            return match http.or_else(|| cfg.dashboard.listen.clone()) {
                None => harmony_operator::run(cfg, stop).await,
                Some(listen) => harmony_operator::dashboard::run_with_dashboard(cfg, &listen, stop).await,
            };
        }
        Cmd::Init(a) => {
            let limits = BucketLimits {
                heartbeat_ttl: Duration::from_secs(a.heartbeat_ttl_days * 86_400),
                max_bundle_bytes: a.bundle_store_gib.map(|g| g * 1024 * 1024 * 1024),
                replicas: a.replicas,
            };
            let out = commands::init(&cfg, &limits).await?;
            match a.device {
                None => out,
                Some(device) => {
                    commands::provision(
                        &cfg,
                        &ProvisionArgs {
                            device,
                            labels: a.labels,
                            nats_urls: a.nats_urls,
                            out: a.out,
                            auth_conf: a.auth_conf,
                            operator_nkey: a.operator_nkey,
                            heartbeat_interval_secs: a.heartbeat_interval_secs,
                            commit_deadline_secs: a.commit_deadline_secs,
                        },
                    )
                    .await?
                }
            }
        }
        Cmd::Devices(DevicesCmd::List) => commands::devices_list(&cfg).await?,
        Cmd::Devices(DevicesCmd::Show { device }) => commands::devices_show(&cfg, &device).await?,
        Cmd::Ping { device } => commands::ping(&cfg, &device).await?,
        Cmd::Devices(DevicesCmd::Reboot { device }) => commands::devices_reboot(&cfg, &device).await?,
        Cmd::Devices(DevicesCmd::Pending) => enroll_cli::pending(&cfg).await?,
        Cmd::Devices(DevicesCmd::Accept { device }) => enroll_cli::judge(&cfg, &device, Verdict::Accept).await?,
        Cmd::Devices(DevicesCmd::Reject { device }) => enroll_cli::judge(&cfg, &device, Verdict::Reject).await?,
        Cmd::Devices(DevicesCmd::Revoke { device }) => enroll_cli::judge(&cfg, &device, Verdict::Revoke).await?,
        Cmd::Enroll(EnrollCmd::ServerConfig) => enroll_cli::server_config(&cfg)?,
        Cmd::Enroll(EnrollCmd::Prepare(p)) => prepare_card(p)?,
        Cmd::Enroll(EnrollCmd::Token(TokenCmd::List)) => enroll_cli::token_list(&cfg).await?,
        Cmd::Enroll(EnrollCmd::Token(TokenCmd::Revoke { id })) => enroll_cli::token_revoke(&cfg, &id).await?,
        Cmd::Enroll(EnrollCmd::Token(TokenCmd::Create { labels, max_uses, expires, require_approval })) => {
            let a = enroll_cli::TokenArgs { labels, max_uses, expires, require_approval };
            enroll_cli::token_create(&cfg, &a).await?
        }
        Cmd::Workloads(WorkloadsCmd::Apply { file, target }) => {
            return finish(&workloads_cli::apply(&cfg, &file, &target.target()).await?, json);
        }
        Cmd::Workloads(WorkloadsCmd::Rm { target }) => {
            return finish(&workloads_cli::remove(&cfg, &target.target()).await?, json);
        }
        Cmd::Workloads(WorkloadsCmd::Status { device }) => workloads_cli::status(&cfg, device.as_deref()).await?,
        Cmd::Audit { offset, limit } => commands::audit(&cfg, offset, limit).await?,
        Cmd::Leader => harmony_operator::leader_status::show(&cfg).await?,
        Cmd::Rollout(RolloutCmd::Start(s)) => {
            let mut a = StartArgs::from_defaults(&cfg, &s.bundle, s.target.target());
            a.id = s.id;
            a.canary = s.canary.unwrap_or(a.canary);
            a.waves = s.waves.unwrap_or(a.waves);
            a.policy.max_in_flight = s.max_in_flight.unwrap_or(a.policy.max_in_flight);
            a.policy.device_timeout_ms = s.device_timeout_secs.map_or(a.policy.device_timeout_ms, |v| v * 1000);
            a.policy.reboot_timeout_ms = s.reboot_timeout_secs.map_or(a.policy.reboot_timeout_ms, |v| v * 1000);
            if let Some(n) = s.halt_after {
                a.policy.halt = HaltThreshold::Count(n);
            }
            if let Some(p) = s.halt_after_percent {
                a.policy.halt = HaltThreshold::Percent(p);
            }
            a.policy.allow_downgrade = s.allow_downgrade;
            a.policy.max_concurrent_downloads = s.max_concurrent_downloads;
            commands::rollout_start(&cfg, &a).await?
        }
        Cmd::Rollout(RolloutCmd::Pause { id }) => commands::rollout_control(&cfg, &id, "pause").await?,
        Cmd::Rollout(RolloutCmd::Resume { id }) => commands::rollout_control(&cfg, &id, "resume").await?,
        Cmd::Rollout(RolloutCmd::Abort { id }) => commands::rollout_control(&cfg, &id, "abort").await?,
        Cmd::Rollout(RolloutCmd::Status { id }) => commands::rollout_status(&cfg, id.as_deref()).await?,
        Cmd::Bundle(BundleCmd::Push { file, id }) => {
            commands::bundle_push(
                &cfg,
                &file,
                id.as_deref(),
                !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )
            .await?
        }
        Cmd::Bundle(BundleCmd::List) => commands::bundle_list(&cfg).await?,
        Cmd::Bundle(BundleCmd::Rm { id }) => commands::bundle_rm(&cfg, &id).await?,
        Cmd::Keys(KeysCmd::Generate { .. }) => {
            let path = &cfg.keys.signing_key;
            let id = keys::generate(path)?;
            Output {
                json: serde_json::json!({"key_id": id, "public": keys::public_path(path)}),
                text: format!("key {id}; public key in {}", keys::public_path(path).display()),
            }
        }
        Cmd::Keys(KeysCmd::Rotate) => {
            let r = keys::rotate(&cfg.keys.signing_key)?;
            let text = format!(
                "new key {} signs from now on; install BOTH {} and {} in every device's fleet_keys_dir, then `keys retire`",
                r.new_key_id,
                r.new_public.display(),
                r.old_public.display()
            );
            Output { json: serde_json::to_value(&r).unwrap_or_default(), text }
        }
        Cmd::Keys(KeysCmd::Retire) => {
            let id = keys::retire(&cfg.keys.signing_key)?;
            Output { json: serde_json::json!({"retired": id}), text: format!("retired {id:?}") }
        }
    };
    print(&out, json);
    Ok(())
}
