//! `run(cfg, effects, shutdown)`: wires the agent's loops together and
//! supervises them until the shutdown future completes. `main.rs` calls it
//! with real effects; integration tests call it with fakes and their own
//! shutdown signal, driving the real loop.

use crate::bus::{self, BusError};
use crate::clock::{Clock, SystemClock};
use crate::commands::CommandServer;
use crate::config::AgentConfig;
use crate::enroll::client::NatsEnrollClient;
use crate::enroll::{EnrollError, Prepared};
use crate::heartbeat::HeartbeatLoop;
use crate::identity::{self, IdentityError};
use crate::liveness::Liveness;
use crate::rauc::RaucClient;
use crate::reboot::{LogindReboot, Reboot};
use crate::service_manager::{SdNotify, ServiceManager};
use crate::shared::{DeviceFacts, StatusBoard};
use crate::upgrade::{UpgradeHandle, UpgradeRequest};
use harmony_protocol::{CommandError, Health, UpgradeStatus};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The agent's side effects that are not NATS itself.
#[derive(Debug, Clone)]
pub struct Effects {
    pub service_manager: Arc<dyn ServiceManager>,
    pub clock: Arc<dyn Clock>,
    pub reboot: Arc<dyn Reboot>,
    /// How the workload reconcilers are made (real: podman, systemd's
    /// D-Bus API, the filesystem; tests put fakes here).
    pub workloads: Arc<dyn crate::workload::effects::WorkloadEffects>,
}

impl Effects {
    pub fn real() -> Self {
        Self {
            service_manager: Arc::new(SdNotify),
            clock: Arc::new(SystemClock),
            reboot: Arc::new(LogindReboot::default()),
            workloads: Arc::new(crate::workload::effects::RealWorkloads::default()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot determine device identity: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("enrollment: {0}")]
    Enroll(#[from] EnrollError),
    #[error("the {0} loop stopped unexpectedly")]
    LoopEnded(&'static str),
    #[error("RAUC is unreachable while an upgrade is {0}; exiting so systemd retries")]
    RaucNeededForUpgrade(&'static str),
}

pub async fn run(cfg: AgentConfig, effects: Effects, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    // Whether systemd has been told READY (by the enrollment phase's
    // supervisor or the agent's).
    let ready = Arc::new(AtomicBool::new(false));
    // A device without credentials but with an enrollment token enrolls
    // first; its supervisor keeps systemd informed (READY after the grace,
    // watchdog pings, status) until the agent's own takes over below.
    let (cfg, enroll_supervisor) = match crate::enroll::prepare(cfg)? {
        Prepared::Run(cfg) => (*cfg, None),
        Prepared::Enroll(enrollment) => {
            let (status_tx, status_rx) = tokio::sync::watch::channel(String::new());
            let (never_connected_tx, never_connected) = tokio::sync::watch::channel(false);
            let liveness = Arc::new(Liveness::new("enrollment"));
            let supervisor = Supervisor {
                service_manager: effects.service_manager.clone(),
                connected: never_connected,
                startup_grace: Duration::from_secs(enrollment.cfg.startup_grace_secs),
                // One attempt (connect + request) is bounded by about three
                // request timeouts; between attempts the loop beats every
                // second. The margin also covers the agent's start after
                // enrolling, until its own supervisor runs.
                max_silence: Duration::from_secs(enrollment.cfg.nats.request_timeout_secs * 3 + 30),
                liveness: vec![liveness.clone()],
                device: enrollment.request.device.to_string(),
                status_override: Some(status_rx),
                ready: ready.clone(),
            };
            let task = AbortOnDrop(tokio::spawn(async move {
                let _keep_open = never_connected_tx;
                supervisor.run().await
            }));
            let cfg = tokio::select! {
                () = &mut shutdown => {
                    log::info!("shutting down while enrolling");
                    effects.service_manager.stopping();
                    return Ok(());
                }
                r = enrollment.run(&NatsEnrollClient, &status_tx, &liveness) => r?,
            };
            (cfg, Some(task))
        }
    };
    let device_id = identity::device_id(&cfg)?;
    let boot_id = identity::boot_id(&cfg.system.boot_id)?;
    // Without RAUC the agent still heartbeats and serves commands; it just
    // cannot upgrade (and says so in the log and by answering commit/reboot).
    let rauc = connect_rauc(cfg.rauc.dbus_address.as_deref()).await;
    if rauc.is_none() {
        // On a trial boot only this agent can mark the slot bad when the
        // commit deadline passes. Carrying on without RAUC would leave the
        // device on an uncommitted slot indefinitely, so let systemd restart
        // us until RAUC answers.
        if let Some(phase) = upgrade_in_flight(&cfg.state_dir) {
            return Err(AgentError::RaucNeededForUpgrade(phase));
        }
    }
    let facts = Arc::new(DeviceFacts {
        device_id: device_id.clone(),
        os_version: identity::os_version(&cfg.system.os_release),
        compatible: rauc.as_ref().map(|r| r.1.clone()),
        booted_slot: rauc.as_ref().map(|r| r.2.clone()),
        boot_id,
        labels: cfg.labels.clone(),
        started,
        uptime_at_start_secs: identity::kernel_uptime_secs(),
        nbd: cfg.system.nbd.iter().any(|p| p.exists()),
    });
    log::info!(
        "harmony-agent {} starting as {} (os {}, boot {})",
        crate::shared::AGENT_VERSION,
        facts.device_id,
        facts.os_version.as_deref().unwrap_or("unknown"),
        facts.boot_id
    );
    // With RAUC, the upgrade service replaces the placeholder `idle` with the
    // restored record before the first heartbeat goes out.
    let board = Arc::new(StatusBoard::new(UpgradeStatus::idle(effects.clock.now()), Health::unknown(), rauc.is_none()));

    let bus = bus::connect(&cfg.nats, &device_id).await?;
    let js = async_nats::jetstream::new(bus.client.clone());

    let heartbeat_liveness = Arc::new(Liveness::new("heartbeat"));
    let heartbeat = tokio::spawn(
        HeartbeatLoop {
            js,
            facts: facts.clone(),
            board: board.clone(),
            clock: effects.clock.clone(),
            interval: cfg.heartbeat_interval(),
            liveness: heartbeat_liveness.clone(),
        }
        .run(),
    );

    let (upgrade_handle, upgrade_requests) = UpgradeHandle::channel(8);
    let commands = tokio::spawn(
        CommandServer {
            client: bus.client.clone(),
            facts: facts.clone(),
            board: board.clone(),
            clock: effects.clock.clone(),
            upgrade: upgrade_handle,
        }
        .run(),
    );
    let keys = crate::fleet_keys::load(&cfg.fleet_keys_dir).unwrap_or_else(|e| {
        log::error!("{e}; every upgrade offer and workload manifest will be refused");
        harmony_protocol::TrustedKeys::new()
    });
    let (workloads, gate) = if cfg.workloads.enabled {
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(crate::workload::Gate::Waiting);
        let gate = crate::workload::service::GateHandle {
            rx: gate_rx,
            wait_until: tokio::time::Instant::now() + Duration::from_secs(cfg.workloads.gate_timeout_secs),
        };
        let (reconcilers, objects) = effects.workloads.build(&cfg, &bus.client);
        let ctx = crate::workload::service::WorkloadContext {
            config: cfg.workloads.clone(),
            state_dir: cfg.state_dir.clone(),
            keys: keys.clone(),
            device_id: device_id.clone(),
            boot_id: facts.boot_id.clone(),
            client: bus.client.clone(),
            clock: effects.clock.clone(),
            reconcilers,
            gate: gate_tx,
        };
        (tokio::spawn(crate::workload::service::run(ctx, objects, futures::future::pending())), gate)
    } else {
        (tokio::spawn(futures::future::pending::<()>()), crate::workload::service::GateHandle::open())
    };
    let mut watched = vec![heartbeat_liveness];
    let upgrade = match rauc {
        Some((client, _, _)) => {
            let ctx = crate::upgrade::service::UpgradeContext {
                config: cfg.upgrade.clone(),
                state_dir: cfg.state_dir.clone(),
                keys,
                facts: facts.clone(),
                board: board.clone(),
                client: bus.client.clone(),
                installer: Arc::new(client),
                reboot: effects.reboot.clone(),
                clock: effects.clock.clone(),
                records: Arc::new(crate::upgrade::record::FileRecordStore::in_dir(&cfg.state_dir)),
                liveness: Arc::new(Liveness::new("upgrade service")),
                workloads: gate,
            };
            // On a trial slot this loop owns the commit deadline: a wedged
            // one must get the agent restarted, not keep the watchdog fed.
            watched.push(ctx.liveness.clone());
            tokio::spawn(crate::upgrade::service::run(ctx, upgrade_requests, futures::future::pending()))
        }
        None => tokio::spawn(answer_upgrade_requests_while_idle(upgrade_requests)),
    };

    let supervisor = Supervisor {
        service_manager: effects.service_manager.clone(),
        connected: bus.connected.clone(),
        startup_grace: Duration::from_secs(cfg.startup_grace_secs),
        // A heartbeat loop silent for three intervals is wedged (the upgrade
        // service beats every second, well inside this).
        max_silence: cfg.heartbeat_interval() * 3 + Duration::from_secs(5),
        liveness: watched,
        device: device_id.to_string(),
        status_override: None,
        ready: ready.clone(),
    };
    drop(enroll_supervisor);
    // Spawned loops outlive `run` unless stopped: abort them when `run`
    // returns or is itself dropped, so an in-process restart (the tests'
    // simulated reboot or crash) never leaves the old agent running.
    let (mut heartbeat, mut commands, mut upgrade, mut workloads) =
        (AbortOnDrop(heartbeat), AbortOnDrop(commands), AbortOnDrop(upgrade), AbortOnDrop(workloads));
    let result = tokio::select! {
        () = &mut shutdown => { log::info!("shutting down"); Ok(()) }
        _ = &mut heartbeat.0 => Err(AgentError::LoopEnded("heartbeat")),
        r = &mut commands.0 => {
            if let Ok(Err(e)) = r { log::error!("command server: {e}"); }
            Err(AgentError::LoopEnded("command server"))
        }
        _ = &mut upgrade.0 => Err(AgentError::LoopEnded("upgrade")),
        _ = &mut workloads.0 => Err(AgentError::LoopEnded("workloads")),
        () = supervisor.run() => Err(AgentError::LoopEnded("supervisor")),
    };
    effects.service_manager.stopping();
    // Deliver any reply or heartbeat still buffered before the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(2), bus.client.flush()).await;
    drop((heartbeat, commands, upgrade, workloads));
    result
}

/// Aborts the task when dropped.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The upgrade phase, if the persisted record says an upgrade spans a
/// reboot (installed, rebooting or awaiting commit).
fn upgrade_in_flight(state_dir: &std::path::Path) -> Option<&'static str> {
    use crate::upgrade::record::RecordStore;
    let state = crate::upgrade::record::FileRecordStore::in_dir(state_dir).load().ok()??;
    match state.phase {
        harmony_protocol::UpgradePhase::Installed
        | harmony_protocol::UpgradePhase::Rebooting
        | harmony_protocol::UpgradePhase::AwaitingCommit => Some(state.phase.name()),
        _ => None,
    }
}

/// RAUC's client plus its `Compatible` and `BootSlot`, or `None` (logged).
async fn connect_rauc(address: Option<&str>) -> Option<(RaucClient, String, String)> {
    let facts = async {
        let client = RaucClient::connect(address).await?;
        let compatible = client.compatible().await?;
        let slot = client.boot_slot().await?;
        Ok::<_, crate::rauc::RaucError>((client, compatible, slot))
    };
    match tokio::time::timeout(Duration::from_secs(10), facts).await {
        Ok(Ok(r)) => {
            log::info!("RAUC: compatible {}, booted slot {}", r.1, r.2);
            Some(r)
        }
        Ok(Err(e)) => {
            log::error!("{e}; OS upgrades are unavailable");
            None
        }
        Err(_) => {
            log::error!("RAUC did not answer within 10 s; OS upgrades are unavailable");
            None
        }
    }
}

/// Until an upgrade is in flight there is nothing to commit, and a reboot
/// request has no service to carry it out.
async fn answer_upgrade_requests_while_idle(mut requests: mpsc::Receiver<UpgradeRequest>) {
    while let Some(request) = requests.recv().await {
        let (reply, detail) = match request {
            UpgradeRequest::Commit { reply, .. } => (reply, "no upgrade is awaiting commit"),
            UpgradeRequest::Reboot { reply } => (reply, "reboot is not available on this agent"),
        };
        let _ = reply.send(Err(CommandError::Refused { detail: detail.to_string() }));
    }
}

/// Tells systemd when we are ready, feeds the watchdog while every loop is
/// alive, and keeps the status line current.
struct Supervisor {
    service_manager: Arc<dyn ServiceManager>,
    connected: tokio::sync::watch::Receiver<bool>,
    startup_grace: Duration,
    max_silence: Duration,
    liveness: Vec<Arc<Liveness>>,
    device: String,
    /// While enrolling: the status line to show instead of the connection's.
    status_override: Option<tokio::sync::watch::Receiver<String>>,
    /// Set once READY is sent; shared so it is sent once per start.
    ready: Arc<AtomicBool>,
}

impl Supervisor {
    async fn run(mut self) {
        let ping_every = self
            .service_manager
            .watchdog_timeout()
            .map(|t| t / 2)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(100));
        let watchdog = self.service_manager.watchdog_timeout().is_some();
        let started = tokio::time::Instant::now();
        let mut ready = self.ready.load(Ordering::SeqCst);
        let mut last_status = String::new();
        let mut tick = tokio::time::interval(ping_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = self.connected.changed() => { if r.is_err() { return; } }
            }
            let connected = *self.connected.borrow();
            if !ready && (connected || started.elapsed() >= self.startup_grace) {
                if self.status_override.is_some() {
                    log::info!("still enrolling after {:?}; reporting ready and carrying on", self.startup_grace);
                } else if !connected {
                    log::warn!("no NATS connection after {:?}; reporting ready and retrying", self.startup_grace);
                }
                self.service_manager.ready();
                self.ready.store(true, Ordering::SeqCst);
                ready = true;
            }
            // A silent loop is named in the status line too, so
            // `systemctl status` says why the watchdog is about to fire.
            let silent = self.liveness.iter().find(|l| l.silent_for() > self.max_silence);
            let status = match (silent, connected) {
                (Some(l), _) => {
                    format!("{} loop silent; watchdog ping withheld (device {})", l.name(), self.device)
                }
                (None, _) if self.status_override.is_some() => {
                    self.status_override.as_ref().map(|s| s.borrow().clone()).unwrap_or_default()
                }
                (None, true) => format!("connected to NATS as {}", self.device),
                (None, false) => format!("NATS unreachable, retrying (device {})", self.device),
            };
            if status != last_status {
                if let Some(l) = silent {
                    log::error!(
                        "{} loop silent for {:?}; withholding the watchdog ping so systemd restarts us",
                        l.name(),
                        l.silent_for()
                    );
                }
                self.service_manager.status(&status);
                last_status = status;
            }
            if watchdog && silent.is_none() {
                self.service_manager.watchdog_ping();
            }
        }
    }
}
