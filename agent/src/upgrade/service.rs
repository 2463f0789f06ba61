//! The upgrade service: feeds the state machine with events (offers from the
//! KV watch, results of downloads/installs/checks, operator commands,
//! deadlines), persists every state it returns before acting on it, publishes
//! the status for the heartbeat, and carries out the actions.

use super::download::{BundleFiles, Downloader};
use super::installer::{BundleRef, Installer};
use super::machine::{self, Action, Env, Event, State};
use super::record::RecordStore;
use super::{health, UpgradeConfig, UpgradeRequest};
use crate::clock::{BootMillis, Clock};
use crate::reboot::Reboot;
use crate::shared::{DeviceFacts, StatusBoard};
use harmony_protocol::command::ReplyBody;
use harmony_protocol::names::{BUNDLE_OBJECT_BUCKET, OFFER_BUCKET};
use harmony_protocol::signing::SigningError;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{CommandError, RefusalReason, SignedEnvelope, TrustedKeys, UpgradeOffer, UpgradePhase};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Everything the upgrade service needs; built by the runner.
#[derive(Debug, Clone)]
pub struct UpgradeContext {
    pub config: UpgradeConfig,
    pub state_dir: PathBuf,
    pub keys: TrustedKeys,
    pub facts: Arc<DeviceFacts>,
    pub board: Arc<StatusBoard>,
    pub client: async_nats::Client,
    pub installer: Arc<dyn Installer>,
    pub reboot: Arc<dyn Reboot>,
    pub clock: Arc<dyn Clock>,
    pub records: Arc<dyn RecordStore>,
    /// Beaten by the service loop (see `LIVENESS_TICK`); the supervisor
    /// withholds the watchdog ping when it goes silent.
    pub liveness: Arc<crate::liveness::Liveness>,
    /// The workloads' part of the health checks.
    pub workloads: crate::workload::service::GateHandle,
}

/// The service loop proves it still turns at least this often. Long work
/// (download, install, checks, Mark) runs in helper tasks, so only a loop
/// stuck in one step (a hung record write, a blocking call) misses it.
pub const LIVENESS_TICK: Duration = Duration::from_secs(1);

/// Messages from the service's helper tasks back to its loop.
// Large only by the event's offer; as rare as the events (see `Event`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Msg {
    Event(Event),
    /// Download complete with the streaming hash of the file.
    Downloaded {
        sha256: String,
        fetched: u64,
    },
}

type Reply = oneshot::Sender<Result<ReplyBody, CommandError>>;

struct Service {
    ctx: UpgradeContext,
    env: Env,
    state: State,
    files: BundleFiles,
    tx: mpsc::Sender<Msg>,
    pending_reply: Option<Reply>,
    /// The machine arms deadlines on boottime; converted to tokio's
    /// monotonic clock when armed, so no wall-clock step moves it.
    deadline: Option<tokio::time::Instant>,
    /// Last (wall, boottime) reading, to see the wall clock being stepped.
    clock_seen: (UnixMillis, BootMillis),
    /// The state in memory is ahead of the record (see `safe_unsaved`).
    record_behind: bool,
    download_sha: Option<String>,
    /// Helper tasks (download, install, checks...). Dropping the set aborts
    /// them, so a stopped service leaves nothing running behind it.
    tasks: tokio::task::JoinSet<()>,
}

/// RAUC's slot states for checking the record on start; `None` (logged)
/// when RAUC does not answer, so a slow RAUC never holds the service up.
async fn read_slot_facts(installer: &dyn Installer) -> Option<machine::SlotFacts> {
    match tokio::time::timeout(Duration::from_secs(10), installer.slot_facts()).await {
        Ok(Ok(facts)) => Some(facts),
        Ok(Err(e)) => {
            log::warn!("cannot read RAUC's slot states ({e}); the upgrade record is not checked against them");
            None
        }
        Err(_) => {
            log::warn!(
                "RAUC did not report its slot states within 10 s; the upgrade record is not checked against them"
            );
            None
        }
    }
}

/// Run until `shutdown` completes. Never returns early: a failure is an
/// upgrade state, not the end of the service.
pub async fn run(
    ctx: UpgradeContext,
    mut requests: mpsc::Receiver<UpgradeRequest>,
    shutdown: impl Future<Output = ()>,
) {
    let env = Env {
        device_id: ctx.facts.device_id.clone(),
        compatible: ctx.facts.compatible.clone().unwrap_or_default(),
        current_version: ctx.facts.os_version.clone(),
        booted_slot: ctx.facts.booted_slot.clone().unwrap_or_default(),
        boot_id: ctx.facts.boot_id.clone(),
        max_bundle_bytes: ctx.config.max_bundle_bytes,
        commit_deadline_ms: ctx.config.commit_deadline_secs.saturating_mul(1000),
        started_boottime: ctx.clock.boottime(),
        slots: read_slot_facts(ctx.installer.as_ref()).await,
        streaming: super::stream::support(ctx.config.streaming, ctx.facts.nbd),
    };
    if let Err(why) = &env.streaming {
        log::info!("bundles are downloaded, not streamed: {why}");
    }
    let state = match ctx.records.load() {
        Ok(Some(s)) => s,
        Ok(None) => State::initial(ctx.clock.now()),
        Err(e) => {
            // Unreadable record: start clean rather than not at all; the
            // slots themselves are still guarded by the boot counter.
            log::error!("{e}; starting from an empty upgrade record");
            State::initial(ctx.clock.now())
        }
    };
    let (tx, mut rx) = mpsc::channel(64);
    let files = BundleFiles::new(&ctx.state_dir);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_offers(ctx.client.clone(), ctx.keys.clone(), env.device_id.clone(), tx.clone()));
    tasks.spawn(health::monitor(
        ctx.config.health_units.clone(),
        ctx.config.health_checks_dir.clone(),
        Duration::from_secs(ctx.config.health_check_timeout_secs),
        Duration::from_secs(ctx.config.health_check_interval_secs),
        ctx.board.clone(),
        ctx.workloads.clone(),
    ));
    let clock_seen = (ctx.clock.now(), ctx.clock.boottime());
    let mut clock_check = tokio::time::interval(Duration::from_millis(ctx.config.clock_check_interval_ms.max(1)));
    clock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut svc = Service {
        ctx,
        env,
        state,
        files,
        tx,
        pending_reply: None,
        deadline: None,
        clock_seen,
        record_behind: false,
        download_sha: None,
        tasks,
    };
    // Started first: it checks the record against RAUC, and a record that
    // RAUC contradicts must not go out in a heartbeat even once.
    svc.apply(Event::Started);
    svc.publish();
    svc.ctx.board.mark_upgrade_restored();
    tokio::pin!(shutdown);
    let mut liveness_tick = tokio::time::interval(LIVENESS_TICK);
    loop {
        let deadline = svc.deadline;
        tokio::select! {
            () = &mut shutdown => break,
            _ = liveness_tick.tick() => svc.ctx.liveness.beat(),
            Some(msg) = rx.recv() => match msg {
                Msg::Event(e) => svc.apply(e),
                Msg::Downloaded { sha256, fetched } => {
                    log::info!("bundle downloaded ({fetched} bytes fetched in this run)");
                    svc.download_sha = Some(sha256);
                    svc.apply(Event::Downloaded);
                }
            },
            request = requests.recv() => match request {
                None => break,
                Some(r) => svc.request(r),
            },
            () = sleep_until(deadline) => {
                svc.deadline = None;
                svc.apply(Event::DeadlineReached);
            }
            Some(_) = svc.tasks.join_next() => {}
            _ = clock_check.tick() => {
                if svc.record_behind {
                    svc.record_behind = svc.ctx.records.save(&svc.state).is_err();
                }
                if svc.wall_clock_stepped() {
                    svc.apply(Event::ClockStepped);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// A wall-clock change that differs from boottime's by more than this is a
/// step (NTP, `date -s`), not drift or a late tick.
const CLOCK_STEP_MS: u64 = 2_000;

/// How long a transition that could not be saved waits before it is tried again.
const SAVE_RETRY: Duration = Duration::from_secs(2);

impl Service {
    fn wall_clock_stepped(&mut self) -> bool {
        let (wall, boot) = (self.ctx.clock.now(), self.ctx.clock.boottime());
        let (last_wall, last_boot) = std::mem::replace(&mut self.clock_seen, (wall, boot));
        let wall_delta = i128::from(wall.0) - i128::from(last_wall.0);
        let boot_delta = i128::from(boot.0) - i128::from(last_boot.0);
        let stepped = (wall_delta - boot_delta).unsigned_abs() > u128::from(CLOCK_STEP_MS);
        if stepped {
            log::warn!("wall clock stepped by {} ms", wall_delta - boot_delta);
        }
        stepped
    }

    fn request(&mut self, request: UpgradeRequest) {
        let (event, reply) = match request {
            UpgradeRequest::Commit { args, reply } => (Event::CommitRequested(args), reply),
            UpgradeRequest::Reboot { reply } => (Event::RebootRequested, reply),
        };
        if self.pending_reply.is_some() {
            let _ = reply.send(Err(CommandError::Refused { detail: "another upgrade command is in progress".into() }));
            return;
        }
        self.pending_reply = Some(reply);
        self.apply(event);
    }

    fn apply(&mut self, event: Event) {
        if let Event::HealthChecked { failed } = &event {
            // Before the step: the heartbeat announcing awaiting_commit must
            // already carry the health the operator's commit depends on.
            health::publish(&self.ctx.board, failed);
        }
        let now = self.ctx.clock.now();
        let name = event.name();
        let retry = event.clone();
        let (next, actions) = machine::step(&self.env, self.state.clone(), event, now);
        if next != self.state {
            if next.phase.name() != self.state.phase.name() {
                log::info!("upgrade: {} -> {} ({name})", self.state.phase.name(), next.phase.name());
            }
            let progress_only = next.job == self.state.job
                && matches!(
                    (&next.phase, &self.state.phase),
                    (UpgradePhase::Downloading { .. }, UpgradePhase::Downloading { .. })
                        | (UpgradePhase::Installing { .. }, UpgradePhase::Installing { .. })
                );
            if !progress_only {
                if actions.contains(&Action::DeleteBundle) {
                    // Before saving: a state that drops the bundle never needs
                    // it again, and on a full disk its space is what the save
                    // needs.
                    self.files.remove_all();
                }
                match self.ctx.records.save(&next) {
                    Ok(()) => self.record_behind = false,
                    Err(e) if safe_unsaved(&next, &actions) => {
                        // Safety first: a trial slot must still fall back on
                        // a full disk, and the status must still be told. A
                        // record that lags behind these is re-derived safely
                        // after a restart (a fallback on the old slot as
                        // boot_failed if it never gets saved).
                        log::error!("{e}; carrying on with what is safe unsaved, saving again later");
                        self.record_behind = true;
                    }
                    Err(e) => {
                        // Acting on a state we could not persist could repeat
                        // or skip a step after a power cut: stay in the saved
                        // state, do nothing, and try the same event again.
                        self.unsaved(e, retry);
                        return;
                    }
                }
            }
            self.state = next;
            self.publish();
        }
        for action in actions {
            self.act(action);
        }
    }

    fn unsaved(&mut self, error: super::record::RecordError, event: Event) {
        if let Some(reply) = self.pending_reply.take() {
            let detail = format!("cannot save the upgrade record: {error}");
            let _ = reply.send(Err(CommandError::Internal { detail }));
        }
        if matches!(event, Event::CommitRequested(_) | Event::RebootRequested) {
            log::error!("{error}; the command was refused");
            return;
        }
        log::error!("{error}; not acting on it, trying {} again in {SAVE_RETRY:?}", event.name());
        self.send_later(async move {
            tokio::time::sleep(SAVE_RETRY).await;
            event
        });
    }

    fn publish(&self) {
        let status = self.state.status();
        self.ctx.board.upgrade.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    fn send_later(&mut self, fut: impl Future<Output = Event> + Send + 'static) {
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            let event = fut.await;
            let _ = tx.send(Msg::Event(event)).await;
        });
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Download => self.start_download(),
            Action::Verify => {
                if let Some(sha256) = self.download_sha.take() {
                    self.send_later(async move { Event::Verified { sha256 } });
                } else {
                    // Restarted between download and verification: hash the file.
                    let path = self.files.complete();
                    self.send_later(async move {
                        let sha256 = tokio::task::spawn_blocking(move || {
                            crate::file_hash::sha256_file(&path).map(|(sha, _)| sha)
                        })
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                        .unwrap_or_else(|e| format!("unreadable: {e}"));
                        Event::Verified { sha256 }
                    });
                }
            }
            Action::VerifyStream => {
                let Some(job) = self.state.job.as_ref() else { return };
                let source = job.offer.bundle.clone();
                let headers = super::stream::headers(&source, self.ctx.config.download_max_bytes_per_sec);
                let extra_ca = self.ctx.config.https_ca_file.clone();
                self.send_later(async move {
                    match super::stream::signature_sha256(&source, &headers, extra_ca.as_deref()).await {
                        Ok(sha256) => Event::Verified { sha256 },
                        Err(e) => Event::DownloadFailed {
                            detail: format!("streaming {}: {e}", source.url.as_deref().unwrap_or("")),
                        },
                    }
                });
            }
            Action::Install => self.start_install(None),
            Action::AdoptInstall => {
                let claim = self.install_claim();
                self.start_install(claim);
            }
            Action::DeleteBundle => self.files.remove_all(),
            Action::ScheduleReboot => {
                let delay = Duration::from_millis(self.ctx.config.reboot_delay_ms);
                self.send_later(async move {
                    tokio::time::sleep(delay).await;
                    Event::RebootDue
                });
            }
            Action::Reboot => {
                let reboot = self.ctx.reboot.clone();
                self.send_later(async move {
                    match reboot.reboot().await {
                        Ok(()) => {
                            // The system is going down; nothing more to report.
                            futures::future::pending::<()>().await;
                            Event::RebootFailed { detail: "unreachable".into() }
                        }
                        Err(e) => Event::RebootFailed { detail: e.to_string() },
                    }
                });
            }
            Action::RunHealthChecks => {
                let units = self.ctx.config.health_units.clone();
                let dir = self.ctx.config.health_checks_dir.clone();
                let timeout = Duration::from_secs(self.ctx.config.health_check_timeout_secs);
                let workloads = self.ctx.workloads.clone();
                self.send_later(async move {
                    let mut failed = health::run(&units, &dir, timeout).await;
                    // The new OS counts as healthy only once the workloads
                    // have converged on it (waited for, up to the gate timeout).
                    failed.extend(workloads.failures(true).await);
                    Event::HealthChecked { failed }
                });
            }
            Action::ArmDeadline(at) => {
                let wait = at.saturating_since(self.ctx.clock.boottime());
                log::info!("commit deadline in {wait} ms");
                self.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(wait));
            }
            Action::SchedulePending => {
                let delay = Duration::from_millis(self.ctx.config.reboot_delay_ms);
                self.send_later(async move {
                    tokio::time::sleep(delay).await;
                    Event::PendingDue
                });
            }
            Action::MarkGood | Action::MarkBad => {
                let good = matches!(action, Action::MarkGood);
                let installer = self.ctx.installer.clone();
                self.send_later(async move {
                    let result = installer.mark_booted(good).await;
                    if good {
                        Event::MarkedGood(result)
                    } else {
                        Event::MarkedBad(result)
                    }
                });
            }
            Action::Reply(result) => {
                if let Some(reply) = self.pending_reply.take() {
                    let _ = reply.send(result);
                }
            }
            Action::LogRefusal(reason) => log::warn!("upgrade offer ignored: {reason}"),
        }
    }

    fn start_download(&mut self) {
        let Some(job) = self.state.job.as_ref() else { return };
        let source = job.offer.bundle.clone();
        let downloader = Downloader {
            js: async_nats::jetstream::new(self.ctx.client.clone()),
            bucket: BUNDLE_OBJECT_BUCKET.to_string(),
            files: self.files.clone(),
            max_bytes_per_sec: self.ctx.config.download_max_bytes_per_sec,
            https_ca_file: self.ctx.config.https_ca_file.clone(),
            retry: super::download::RetryPolicy::default(),
        };
        let tx = self.tx.clone();
        let every = Duration::from_millis(self.ctx.config.progress_interval_ms);
        self.tasks.spawn(async move {
            let progress_tx = tx.clone();
            let mut last: Option<Instant> = None;
            let mut progress = move |done: u64, total: u64| {
                // Bounded rate: the heartbeat goes out on every change.
                if last.is_none_or(|t| t.elapsed() >= every) || done == total {
                    last = Some(Instant::now());
                    let _ = progress_tx.try_send(Msg::Event(Event::DownloadProgress { done, total }));
                }
            };
            let msg = match downloader.fetch(&source, &mut progress).await {
                Ok(d) => {
                    if !d.resumed_at.is_empty() {
                        log::info!("bundle download resumed after interruptions at {:?}", d.resumed_at);
                    }
                    Msg::Downloaded { sha256: d.sha256, fetched: d.fetched }
                }
                Err(super::download::DownloadError::NoSpace { needed, available }) => {
                    Msg::Event(Event::NoSpace { needed, available })
                }
                Err(super::download::DownloadError::Io { source: e, .. }) if is_disk_full(&e) => {
                    // Space for the whole bundle once the partial file is gone.
                    let dir = downloader.files.part();
                    let partial = std::fs::metadata(&dir).map(|m| m.len()).unwrap_or(0);
                    let free = dir.parent().and_then(|d| super::download::free_bytes(d).ok()).unwrap_or(0);
                    Msg::Event(Event::NoSpace { needed: source.size, available: free.saturating_add(partial) })
                }
                Err(e) => Msg::Event(Event::DownloadFailed { detail: e.to_string() }),
            };
            let _ = tx.send(msg).await;
        });
    }

    /// What the install the record says was started looks like in RAUC.
    fn install_claim(&self) -> Option<crate::rauc::InstallClaim> {
        let job = self.state.job.as_ref()?;
        Some(crate::rauc::InstallClaim {
            version: job.offer.target_version.clone(),
            compatible: self.env.compatible.clone(),
            booted_slot: self.env.booted_slot.clone(),
            // `since` of the Installing phase: when the install was started.
            not_before_secs: self.state.since.0 / 1000,
        })
    }

    /// `claim`: adopt the install a previous agent started (see
    /// `Installer::adopt_install`) instead of starting one.
    fn start_install(&mut self, claim: Option<crate::rauc::InstallClaim>) {
        let installer = self.ctx.installer.clone();
        let bundle = match self.state.job.as_ref() {
            Some(job) if job.streamed() => {
                let url = job.offer.bundle.url.clone().unwrap_or_default();
                // RAUC gets the agent's own trust (system CAs plus the extra
                // one) for https://; with no extra CA the system's is the same.
                let extra_ca = self.ctx.config.https_ca_file.as_ref().filter(|_| url.starts_with("https://"));
                let tls_ca = match extra_ca {
                    Some(extra) => match write_stream_trust(&self.files.stream_trust(), extra) {
                        Ok(path) => Some(path),
                        Err(detail) => {
                            self.send_later(async move { Event::InstallFailed { last_error: detail } });
                            return;
                        }
                    },
                    None => None,
                };
                BundleRef::Stream {
                    url,
                    headers: super::stream::headers(&job.offer.bundle, self.ctx.config.download_max_bytes_per_sec),
                    tls_ca,
                }
            }
            _ => BundleRef::File(self.files.complete()),
        };
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            let (progress, mut percent) = watch::channel(0u8);
            let forward_tx = tx.clone();
            let forward = tokio::spawn(async move {
                while percent.changed().await.is_ok() {
                    let p = *percent.borrow_and_update();
                    let _ = forward_tx.try_send(Msg::Event(Event::InstallProgress { percent: p }));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            let outcome = match &claim {
                Some(claim) => installer.adopt_install(&bundle, &progress, claim).await,
                None => installer.install(&bundle, &progress).await,
            };
            let event = match outcome {
                Ok(target_slot) => Event::InstallFinished { target_slot },
                Err(last_error) => Event::InstallFailed { last_error },
            };
            forward.abort();
            let _ = tx.send(Msg::Event(event)).await;
        });
    }
}

/// A transition that may go ahead although its state could not be saved:
/// one that only reports (no action, a reply, a log line) or only keeps a
/// trial slot's way back open (the commit deadline, the checks that may cut
/// it short, marking the slot bad and the fallback reboot). Anything that
/// moves an upgrade forward (download, install, the upgrade reboot, marking
/// good) waits until its state is saved.
fn safe_unsaved(next: &State, actions: &[Action]) -> bool {
    let fallback = next.job.as_ref().is_some_and(|j| j.fallback.is_some());
    actions.iter().all(|a| match a {
        Action::ArmDeadline(_)
        | Action::RunHealthChecks
        | Action::DeleteBundle
        | Action::Reply(_)
        | Action::LogRefusal(_)
        | Action::SchedulePending => true,
        Action::MarkBad | Action::Reboot => fallback,
        Action::Download
        | Action::Verify
        | Action::VerifyStream
        | Action::Install
        | Action::AdoptInstall
        | Action::ScheduleReboot
        | Action::MarkGood => false,
    })
}

/// Writes the CAs RAUC is to trust for a streamed `https://` install to
/// `path` (readable by RAUC, which runs as root).
fn write_stream_trust(path: &Path, extra_ca: &Path) -> Result<PathBuf, String> {
    let pem = super::http_get::trust_pem(extra_ca)
        .map_err(|e| format!("the TLS trust for RAUC: {}: {e}", extra_ca.display()))?;
    crate::durable::write_atomically(path, pem.as_bytes(), 0o644)
        .map_err(|e| format!("the TLS trust for RAUC: {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// ENOSPC (or a quota): the disk is full, not the source broken.
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Turn a raw KV value into an offer event: signature first, then parsing.
pub fn decode_offer(keys: &TrustedKeys, bytes: &[u8]) -> Result<UpgradeOffer, RefusalReason> {
    let envelope = SignedEnvelope::decode(bytes)
        .map_err(|e| RefusalReason::Malformed { detail: format!("not a signed envelope: {e}") })?;
    keys.verify::<UpgradeOffer>(&envelope).map_err(|e| match e {
        SigningError::UnknownKey(id) => RefusalReason::UnknownKey { key_id: id.0 },
        SigningError::BadSignature | SigningError::MalformedSignature => RefusalReason::BadSignature,
        other => RefusalReason::Malformed { detail: other.to_string() },
    })
}

/// Watch this device's key in the offers bucket and forward each value,
/// checked, as an offer event.
async fn watch_offers(
    client: async_nats::Client,
    keys: TrustedKeys,
    device: harmony_protocol::DeviceId,
    tx: mpsc::Sender<Msg>,
) {
    let (raw_tx, mut raw) = mpsc::channel(4);
    let watch = crate::kv_watch::watch_own_key(client, OFFER_BUCKET, device, raw_tx);
    let forward = async {
        while let Some(bytes) = raw.recv().await {
            if tx.send(Msg::Event(Event::Offer(decode_offer(&keys, &bytes)))).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = watch => {}
        () = forward => {}
    }
}
