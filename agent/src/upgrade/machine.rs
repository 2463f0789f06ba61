//! The upgrade decision core: `step(env, state, event, now) -> (state, actions)`.
//!
//! Pure: no clock, no I/O. The service feeds it events (an offer arrived, a
//! download finished, the agent started in some boot, a commit was asked
//! for...) and carries out the actions it returns. The state it returns is
//! what gets persisted, so after a power cut `Event::Started` re-derives
//! everything from the last record and the facts of the new boot.

use super::reconcile;
pub use super::reconcile::SlotFacts;
use super::validate::{self, Verdict};
use harmony_protocol::clock::BootMillis;
use harmony_protocol::command::{CommitArgs, ReplyBody};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::upgrade::BootMismatch;
use harmony_protocol::{
    CommandError, DeviceId, FailureReason, NotedRefusal, OfferNotes, RefusalReason, RollbackReason, Transfer,
    UpgradeOffer, UpgradePhase, UpgradeStatus,
};
use serde::{Deserialize, Serialize};

/// Facts about this device and this boot that decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub device_id: DeviceId,
    /// RAUC's `Compatible`.
    pub compatible: String,
    /// The running OS version (os-release `VERSION_ID`), if known.
    pub current_version: Option<String>,
    /// RAUC's `BootSlot` (bootname) for this boot.
    pub booted_slot: String,
    pub boot_id: String,
    pub max_bundle_bytes: u64,
    pub commit_deadline_ms: u64,
    /// Boottime when this agent run started. A trial window that begins in
    /// this run begins here.
    pub started_boottime: BootMillis,
    /// RAUC's slot states when this agent run started; `None` when RAUC
    /// could not be read (the record is then not checked against it).
    pub slots: Option<SlotFacts>,
    /// Whether RAUC may stream bundles on this device: `Err` says why not
    /// (turned off in the config, no NBD in the kernel).
    pub streaming: Result<(), String>,
}

/// The accepted offer being worked on, and what happened to it so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub offer: UpgradeOffer,
    /// Boot id when RAUC finished installing; a different boot id later
    /// proves the device rebooted.
    pub pre_reboot_boot_id: Option<String>,
    /// Bootname RAUC installed into and made primary.
    pub target_slot: Option<String>,
    /// When the new slot first came up (the commit deadline counts from here).
    pub awaiting_since: Option<UnixMillis>,
    /// Set once the agent decided to fall back; the old system reports it.
    pub fallback: Option<RollbackReason>,
    /// Boot id in which the current reboot was requested.
    pub rebooting_from: Option<String>,
    /// Boot id and slot when the install started: a power cut after RAUC
    /// switched the primary slot but before `Installed` was recorded shows
    /// up as a new boot on a different slot.
    #[serde(default)]
    pub install_boot: Option<(String, String)>,
    /// Where the commit deadline counts from: a boottime reading and the
    /// boot it belongs to. Never the wall clock, which NTP steps.
    #[serde(default)]
    pub trial_window: Option<TrialWindow>,
    /// How the bundle reaches RAUC; decided when the offer is accepted.
    /// `None` in records written before streaming: those downloaded.
    #[serde(default)]
    pub transfer: Option<Transfer>,
}

/// The commit deadline's start, on the clock nothing steps. A boottime
/// reading means something only within its boot: an agent restart in the
/// same boot keeps the window; a new boot of the still-unconfirmed slot
/// (the bootloader counted an attempt for it) opens a fresh one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialWindow {
    pub boot_id: String,
    pub started: BootMillis,
}

impl Job {
    pub fn new(offer: UpgradeOffer) -> Self {
        Self {
            offer,
            pre_reboot_boot_id: None,
            target_slot: None,
            awaiting_since: None,
            fallback: None,
            rebooting_from: None,
            install_boot: None,
            trial_window: None,
            transfer: None,
        }
    }

    pub fn streamed(&self) -> bool {
        self.transfer == Some(Transfer::Streamed)
    }
}

/// Stream when the device can and the offer allows it: an HTTP URL with
/// its token, and the signature hash that stands in for the whole file's
/// hash. Otherwise download, saying why.
fn choose_transfer(env: &Env, offer: &UpgradeOffer) -> Transfer {
    let b = &offer.bundle;
    let not_streamed = if let Err(why) = &env.streaming {
        why.clone()
    } else if b.url.is_none() || b.authorization.is_none() {
        "the offer has no HTTP source (the operator does not serve bundles over HTTP)".to_string()
    } else if b.signature_sha256.is_none() {
        "the offer has no signature hash to check a streamed bundle by (push the bundle again)".to_string()
    } else {
        return Transfer::Streamed;
    };
    Transfer::Downloaded { not_streamed }
}

/// The first action for a job: fetch and hash the file, or check the
/// streamed bundle's signature block.
fn fetch_action(job: &Job) -> (UpgradePhase, Action) {
    if job.streamed() {
        (UpgradePhase::Verifying, Action::VerifyStream)
    } else {
        (UpgradePhase::Offered, Action::Download)
    }
}

/// Everything the agent persists about upgrades (the "upgrade record").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: UpgradePhase,
    pub job: Option<Job>,
    /// Replay protection: offers at or below this sequence are refused.
    pub last_accepted_seq: u64,
    /// The offer behind a `Refused` phase (never accepted, so not `job`).
    pub refused: Option<UpgradeOffer>,
    pub since: UnixMillis,
    /// The newest offer that arrived while an upgrade was in flight; judged
    /// when that upgrade ends (see `take_pending`).
    #[serde(default)]
    pub pending: Option<UpgradeOffer>,
    /// A refusal that must not overwrite the phase (see [`OfferNotes`]).
    #[serde(default)]
    pub noted_refusal: Option<NotedRefusal>,
    /// The record disagrees with RAUC (see `reconcile`): found on start,
    /// cleared when a new offer is accepted.
    #[serde(default)]
    pub boot_mismatch: Option<BootMismatch>,
    /// A `Mark` call is in flight; never persisted (a restart forgets it and
    /// the operator retries the commit).
    #[serde(skip)]
    pub marking: bool,
}

impl State {
    pub fn initial(now: UnixMillis) -> Self {
        Self {
            phase: UpgradePhase::Idle,
            job: None,
            last_accepted_seq: 0,
            refused: None,
            since: now,
            pending: None,
            noted_refusal: None,
            boot_mismatch: None,
            marking: false,
        }
    }

    /// The status the heartbeat reports for this state.
    pub fn status(&self) -> UpgradeStatus {
        let offer = self.job.as_ref().map(|j| &j.offer).or(self.refused.as_ref());
        let offer = if matches!(self.phase, UpgradePhase::Refused { .. }) { self.refused.as_ref() } else { offer };
        UpgradeStatus {
            phase: self.phase.clone(),
            offer_seq: offer.map(|o| o.offer_seq),
            rollout_id: offer.and_then(|o| o.rollout_id.clone()),
            target_version: offer.map(|o| o.target_version.clone()),
            pre_reboot_boot_id: self.job.as_ref().and_then(|j| j.pre_reboot_boot_id.clone()),
            target_slot: self.job.as_ref().and_then(|j| j.target_slot.clone()),
            since: self.since,
            offer_notes: OfferNotes {
                busy_offer_seq: self.pending.as_ref().map(|o| o.offer_seq),
                refusal: self.noted_refusal.clone(),
            },
            boot_mismatch: self.boot_mismatch.clone(),
            transfer: self.job.as_ref().and_then(|j| j.transfer.clone()),
        }
    }

    /// No upgrade in flight: a new offer may start one.
    pub fn is_settled(&self) -> bool {
        matches!(
            self.phase,
            UpgradePhase::Idle
                | UpgradePhase::Committed
                | UpgradePhase::Refused { .. }
                | UpgradePhase::Failed { .. }
                | UpgradePhase::RolledBack { .. }
        )
    }
}

// An offer is the large variant; events are few (one per upgrade step),
// so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent started (first start, restart, or first start after a reboot).
    Started,
    /// An offer whose signature verified; `Err` when it did not.
    Offer(Result<UpgradeOffer, RefusalReason>),
    DownloadProgress {
        done: u64,
        total: u64,
    },
    Downloaded,
    DownloadFailed {
        detail: String,
    },
    NoSpace {
        needed: u64,
        available: u64,
    },
    Verified {
        sha256: String,
    },
    InstallProgress {
        percent: u8,
    },
    InstallFinished {
        target_slot: String,
    },
    InstallFailed {
        last_error: String,
    },
    /// The `Installed` status has had its chance to reach the operator.
    RebootDue,
    RebootFailed {
        detail: String,
    },
    HealthChecked {
        failed: Vec<String>,
    },
    CommitRequested(CommitArgs),
    MarkedGood(Result<String, String>),
    MarkedBad(Result<String, String>),
    DeadlineReached,
    RebootRequested,
    /// The wall clock jumped (its change disagreed with boottime's): offers
    /// refused for their validity window are judged again.
    ClockStepped,
    /// The finished upgrade's status has had its chance to reach the
    /// operator: judge the offer kept while busy.
    PendingDue,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Offer(_) => "offer",
            Self::DownloadProgress { .. } => "download_progress",
            Self::Downloaded => "downloaded",
            Self::DownloadFailed { .. } => "download_failed",
            Self::NoSpace { .. } => "no_space",
            Self::Verified { .. } => "verified",
            Self::InstallProgress { .. } => "install_progress",
            Self::InstallFinished { .. } => "install_finished",
            Self::InstallFailed { .. } => "install_failed",
            Self::RebootDue => "reboot_due",
            Self::RebootFailed { .. } => "reboot_failed",
            Self::HealthChecked { .. } => "health_checked",
            Self::CommitRequested(_) => "commit_requested",
            Self::MarkedGood(_) => "marked_good",
            Self::MarkedBad(_) => "marked_bad",
            Self::DeadlineReached => "deadline_reached",
            Self::RebootRequested => "reboot_requested",
            Self::ClockStepped => "clock_stepped",
            Self::PendingDue => "pending_due",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start or resume downloading the job's bundle.
    Download,
    /// Produce `Verified` with the bundle file's SHA-256.
    Verify,
    /// Produce `Verified` with the SHA-256 of the streamed bundle's
    /// signature block, read over HTTP (`DownloadFailed` when it cannot be).
    VerifyStream,
    Install,
    /// After a restart mid-install: take over the install already started
    /// (RAUC still running it, or finished while no agent listened) and
    /// install only if RAUC has not. Ends in `InstallFinished`/`InstallFailed`
    /// like `Install`.
    AdoptInstall,
    DeleteBundle,
    /// Give the `Installed` status time to go out, then send `RebootDue`.
    ScheduleReboot,
    Reboot,
    RunHealthChecks,
    /// Send `DeadlineReached` when boottime reaches this (replaces any
    /// earlier deadline; at once when it already passed).
    ArmDeadline(BootMillis),
    MarkGood,
    MarkBad,
    /// Answer the pending commit/reboot command.
    Reply(Result<ReplyBody, CommandError>),
    /// Tell the log why an offer was ignored without changing the status.
    LogRefusal(RefusalReason),
    /// Give the finished upgrade's status time to go out, then send `PendingDue`.
    SchedulePending,
}

fn refused(detail: impl Into<String>) -> Action {
    Action::Reply(Err(CommandError::Refused { detail: detail.into() }))
}

/// One transition. Every event not explicitly handled in the current phase
/// leaves the state alone (and refuses a pending command).
pub fn step(env: &Env, state: State, event: Event, now: UnixMillis) -> (State, Vec<Action>) {
    let was_settled = state.is_settled();
    let started = matches!(event, Event::Started);
    let (s, mut actions) = transition(env, state, event, now);
    // The upgrade just ended (or the agent started with nothing in flight)
    // and an offer was kept from while it was busy: act on it once the
    // outcome has had its chance to reach the operator.
    if s.pending.is_some() && s.is_settled() && (!was_settled || started) {
        actions.push(Action::SchedulePending);
    }
    (s, actions)
}

fn transition(env: &Env, state: State, event: Event, now: UnixMillis) -> (State, Vec<Action>) {
    use UpgradePhase as P;
    let mut s = state;
    let moved = |mut s: State, phase: UpgradePhase| {
        s.phase = phase;
        s.since = now;
        s
    };
    match (&s.phase, event) {
        // ---- offers -------------------------------------------------------
        (_, Event::Offer(Err(reason))) => refuse_offer(s, None, reason, now),
        (_, Event::Offer(Ok(offer))) => judge_offer(env, s, offer, now),
        (P::Refused { reason: RefusalReason::NotYetValid | RefusalReason::Expired }, Event::ClockStepped) => {
            rejudge_refused(env, s, now)
        }
        (_, Event::PendingDue) if s.is_settled() && s.pending.is_some() => take_pending(env, s, now),

        // ---- download and verify -----------------------------------------
        (P::Offered | P::Downloading { .. }, Event::DownloadProgress { done, total }) => {
            (moved(s, P::Downloading { bytes_done: done, bytes_total: total }), vec![])
        }
        (P::Offered | P::Downloading { .. }, Event::Downloaded) => (moved(s, P::Verifying), vec![Action::Verify]),
        (P::Offered | P::Downloading { .. }, Event::DownloadFailed { detail }) => {
            (moved(s, P::Failed { reason: FailureReason::DownloadFailed { detail } }), vec![Action::DeleteBundle])
        }
        (P::Offered | P::Downloading { .. }, Event::NoSpace { needed, available }) => {
            (moved(s, P::Failed { reason: FailureReason::NoSpace { needed, available } }), vec![Action::DeleteBundle])
        }
        (P::Verifying, Event::DownloadFailed { detail }) if s.job.as_ref().is_some_and(Job::streamed) => {
            (moved(s, P::Failed { reason: FailureReason::DownloadFailed { detail } }), vec![])
        }
        (P::Verifying, Event::Verified { sha256 }) => {
            let expected = s
                .job
                .as_ref()
                .and_then(|j| {
                    if j.streamed() {
                        j.offer.bundle.signature_sha256.clone()
                    } else {
                        Some(j.offer.bundle.sha256.clone())
                    }
                })
                .unwrap_or_default()
                .to_ascii_lowercase();
            if sha256.eq_ignore_ascii_case(&expected) {
                if let Some(job) = s.job.as_mut() {
                    job.install_boot = Some((env.boot_id.clone(), env.booted_slot.clone()));
                }
                (moved(s, P::Installing { percent: 0 }), vec![Action::Install])
            } else {
                let reason = FailureReason::VerifyFailed { expected, actual: sha256 };
                (moved(s, P::Failed { reason }), vec![Action::DeleteBundle])
            }
        }

        // ---- install -----------------------------------------------------
        (P::Installing { .. }, Event::InstallProgress { percent }) => {
            s.phase = P::Installing { percent };
            (s, vec![])
        }
        (P::Installing { .. }, Event::InstallFailed { last_error }) => {
            (moved(s, P::Failed { reason: FailureReason::InstallFailed { last_error } }), vec![Action::DeleteBundle])
        }
        (P::Installing { .. }, Event::InstallFinished { target_slot }) => {
            if target_slot == env.booted_slot {
                let last_error = format!("RAUC made the booted slot {target_slot} primary, not the other one");
                return (
                    moved(s, P::Failed { reason: FailureReason::InstallFailed { last_error } }),
                    vec![Action::DeleteBundle],
                );
            }
            if let Some(job) = s.job.as_mut() {
                job.target_slot = Some(target_slot);
                job.pre_reboot_boot_id = Some(env.boot_id.clone());
            }
            (moved(s, P::Installed), vec![Action::DeleteBundle, Action::ScheduleReboot])
        }
        (P::Installed, Event::RebootDue) => {
            if let Some(job) = s.job.as_mut() {
                job.rebooting_from = Some(env.boot_id.clone());
            }
            (moved(s, P::Rebooting), vec![Action::Reboot])
        }
        (P::Rebooting, Event::RebootFailed { detail }) => {
            // Only an upgrade reboot is a failure of the upgrade; a failed
            // fallback reboot is retried by the next deadline after restart.
            if s.job.as_ref().is_some_and(|j| j.fallback.is_some()) {
                return (s, vec![]);
            }
            (moved(s, P::Failed { reason: FailureReason::RebootFailed { detail } }), vec![])
        }

        // ---- after a (re)start -------------------------------------------
        (_, Event::Started) => on_started(env, s, now),

        (P::Rebooting, Event::HealthChecked { failed }) if awaiting_health(&s, env) => {
            if failed.is_empty() {
                (moved(s, P::AwaitingCommit), vec![])
            } else {
                fall_back(s, RollbackReason::HealthCheckFailed { failed })
            }
        }
        (P::AwaitingCommit, Event::HealthChecked { failed }) => {
            if failed.is_empty() {
                (s, vec![])
            } else {
                fall_back(s, RollbackReason::HealthCheckFailed { failed })
            }
        }
        (P::Rebooting | P::AwaitingCommit, Event::DeadlineReached)
            if awaiting_health(&s, env) || matches!(s.phase, P::AwaitingCommit) =>
        {
            fall_back(s, RollbackReason::CommitTimeout)
        }
        (P::Rebooting | P::AwaitingCommit, Event::MarkedBad(result))
            if s.job.as_ref().is_some_and(|j| j.fallback.is_some()) =>
        {
            if let Err(e) = result {
                // Reboot anyway: the slot was never marked good, so the boot
                // counter still runs out and the bootloader falls back.
                log::error!("marking the booted slot bad failed ({e}); rebooting anyway");
            }
            s.marking = false;
            if let Some(job) = s.job.as_mut() {
                job.rebooting_from = Some(env.boot_id.clone());
            }
            (moved(s, P::Rebooting), vec![Action::Reboot])
        }

        // ---- commit --------------------------------------------------------
        (P::AwaitingCommit, Event::CommitRequested(args)) => {
            let Some(job) = s.job.as_ref() else { return (s, vec![refused("no upgrade record")]) };
            if s.marking {
                return (s, vec![refused("a commit is already in progress")]);
            }
            if args.target_version != job.offer.target_version {
                let detail = format!("awaiting commit of {}, not {}", job.offer.target_version, args.target_version);
                return (s, vec![refused(detail)]);
            }
            if args.boot_id != env.boot_id {
                let detail = format!("this is boot {}, not {}", env.boot_id, args.boot_id);
                return (s, vec![refused(detail)]);
            }
            s.marking = true;
            (s, vec![Action::MarkGood])
        }
        (P::AwaitingCommit, Event::MarkedGood(result)) if s.marking => {
            s.marking = false;
            match result {
                Ok(slot) => (moved(s, P::Committed), vec![Action::Reply(Ok(ReplyBody::Committed { slot }))]),
                Err(e) => {
                    // Still on trial: the deadline (which may have passed
                    // while the Mark was in flight) decides again.
                    let reason = FailureReason::CommitFailed { detail: e };
                    let mut actions = vec![Action::Reply(Err(CommandError::Internal { detail: reason.to_string() }))];
                    actions.extend(trial_deadline(env, &s).map(Action::ArmDeadline));
                    (s, actions)
                }
            }
        }
        (P::Committed, Event::CommitRequested(args)) => {
            // A retried commit (the first reply got lost) is answered again.
            let same = s
                .job
                .as_ref()
                .is_some_and(|j| j.offer.target_version == args.target_version && args.boot_id == env.boot_id);
            let slot = s.job.as_ref().and_then(|j| j.target_slot.clone()).unwrap_or_default();
            if same {
                (s, vec![Action::Reply(Ok(ReplyBody::Committed { slot }))])
            } else {
                (s, vec![refused("nothing awaits commit")])
            }
        }
        (_, Event::CommitRequested(_)) => {
            let detail = format!("nothing awaits commit (upgrade phase {})", s.phase.name());
            (s, vec![refused(detail)])
        }

        // ---- operator reboot ---------------------------------------------
        (phase, Event::RebootRequested) if phase.allows_operator_reboot() && !s.marking => {
            (s, vec![Action::Reply(Ok(ReplyBody::RebootScheduled)), Action::Reboot])
        }
        (_, Event::RebootRequested) => {
            let detail = format!("not rebooting during upgrade phase {}", s.phase.name());
            (s, vec![refused(detail)])
        }

        // ---- everything else ---------------------------------------------
        (_, other) => {
            log::debug!("upgrade: ignoring {} in phase {}", other.name(), s.phase.name());
            (s, vec![])
        }
    }
}

/// After reboot into the target slot: health checks have not reported yet.
fn awaiting_health(s: &State, env: &Env) -> bool {
    s.job.as_ref().is_some_and(|j| {
        j.fallback.is_none() && j.awaiting_since.is_some() && j.target_slot.as_deref() == Some(env.booted_slot.as_str())
    })
}

/// The commit deadline of the trial window opened in this boot.
fn trial_deadline(env: &Env, s: &State) -> Option<BootMillis> {
    let window = s.job.as_ref()?.trial_window.as_ref()?;
    (window.boot_id == env.boot_id).then(|| window.started.saturating_add_ms(env.commit_deadline_ms))
}

fn judge_offer(env: &Env, mut s: State, offer: UpgradeOffer, now: UnixMillis) -> (State, Vec<Action>) {
    match validate::judge(env, &s, &offer, now) {
        Verdict::AlreadyKnown => (s, vec![]),
        Verdict::Refuse(RefusalReason::Busy) => keep_while_busy(s, offer),
        Verdict::Refuse(reason) => refuse_offer(s, Some(offer), reason, now),
        Verdict::Accept => {
            s.last_accepted_seq = offer.offer_seq;
            if s.pending.as_ref().is_some_and(|p| p.offer_seq <= offer.offer_seq) {
                s.pending = None;
            }
            let mut job = Job::new(offer);
            job.transfer = Some(choose_transfer(env, &job.offer));
            let (phase, action) = fetch_action(&job);
            s.job = Some(job);
            s.refused = None;
            s.noted_refusal = None;
            s.boot_mismatch = None;
            s.phase = phase;
            s.since = now;
            (s, vec![action])
        }
    }
}

/// Supersede rule: the newest offer (highest sequence) wins; an offer at or
/// below the kept one changes nothing.
fn keep_while_busy(mut s: State, offer: UpgradeOffer) -> (State, Vec<Action>) {
    if s.pending.as_ref().is_some_and(|p| p.offer_seq >= offer.offer_seq) {
        return (s, vec![]);
    }
    log::info!("upgrade busy ({}): keeping offer {} for when it ends", s.phase.name(), offer.offer_seq);
    s.pending = Some(offer);
    (s, vec![])
}

/// Judge the offer kept while busy. A refusal does not overwrite the
/// outcome of the upgrade that just ended; it is noted next to it.
fn take_pending(env: &Env, mut s: State, now: UnixMillis) -> (State, Vec<Action>) {
    let Some(offer) = s.pending.take() else { return (s, vec![]) };
    let outcome =
        matches!(s.phase, UpgradePhase::Committed | UpgradePhase::Failed { .. } | UpgradePhase::RolledBack { .. });
    match validate::judge(env, &s, &offer, now) {
        Verdict::Refuse(reason) if outcome => {
            s.noted_refusal = Some(NotedRefusal { offer_seq: Some(offer.offer_seq), reason: reason.clone() });
            (s, vec![Action::LogRefusal(reason)])
        }
        _ => judge_offer(env, s, offer, now),
    }
}

/// An offer refused only for its validity window gets judged again (the
/// clock may have been wrong, not the offer).
fn rejudge_refused(env: &Env, s: State, now: UnixMillis) -> (State, Vec<Action>) {
    match s.refused.clone() {
        Some(offer) => judge_offer(env, s, offer, now),
        None => (s, vec![]),
    }
}

fn refuse_offer(
    mut s: State,
    offer: Option<UpgradeOffer>,
    reason: RefusalReason,
    now: UnixMillis,
) -> (State, Vec<Action>) {
    // Never let a bad offer overwrite an upgrade in flight, nor garbage (an
    // offer nobody can be sure the operator sent) overwrite an outcome the
    // operator has not necessarily read yet.
    let keep_phase = !s.is_settled()
        || (offer.is_none() && matches!(s.phase, UpgradePhase::Committed | UpgradePhase::RolledBack { .. }));
    if keep_phase {
        s.noted_refusal = Some(NotedRefusal { offer_seq: offer.map(|o| o.offer_seq), reason: reason.clone() });
        return (s, vec![Action::LogRefusal(reason)]);
    }
    let phase = UpgradePhase::Refused { reason };
    if s.phase == phase && s.refused == offer {
        // Judged again with the same verdict: nothing new to report.
        return (s, vec![]);
    }
    s.refused = offer;
    s.noted_refusal = None;
    s.phase = phase;
    s.since = now;
    (s, vec![])
}

fn fall_back(mut s: State, reason: RollbackReason) -> (State, Vec<Action>) {
    if s.marking {
        return (s, vec![]);
    }
    log::warn!("upgrade: falling back to the previous slot: {reason}");
    if let Some(job) = s.job.as_mut() {
        job.fallback = Some(reason);
    }
    s.marking = true;
    (s, vec![Action::MarkBad])
}

/// Check a settled record against RAUC's slot states. A record committed
/// to another slot than the booted one is not reported as committed: the
/// device runs the previous slot, so the phase becomes `rolled_back` (an
/// outcome every operator knows) with the typed mismatch next to it. The
/// job stays, so the mismatch keeps naming the committed slot; the agent
/// changes nothing in RAUC (it only reads).
fn reconcile_with_rauc(env: &Env, mut s: State, now: UnixMillis) -> State {
    let Some(slots) = env.slots.as_ref() else { return s };
    if !reconcile::applies_to(&s.phase) {
        return s;
    }
    let committed_slot = match s.phase {
        UpgradePhase::Committed => s.job.as_ref().and_then(|j| j.target_slot.clone()),
        _ => None,
    };
    let found = reconcile::check(committed_slot.as_deref(), &env.booted_slot, slots);
    let previous = s.boot_mismatch.take();
    s.boot_mismatch = match (found, previous) {
        (Some(found), _) => Some(found),
        // The cause of an earlier such rollback stays reported.
        (None, Some(previous @ BootMismatch::NotOnCommittedSlot { .. }))
            if matches!(s.phase, UpgradePhase::RolledBack { .. }) =>
        {
            Some(previous)
        }
        (None, _) => None,
    };
    if let Some(mismatch) = &s.boot_mismatch {
        log::warn!("upgrade record disagrees with RAUC: {mismatch}");
        if matches!(mismatch, BootMismatch::NotOnCommittedSlot { .. }) && s.phase == UpgradePhase::Committed {
            s.phase = UpgradePhase::RolledBack { reason: RollbackReason::BootFailed };
            s.since = now;
        }
    }
    s
}

/// Re-derive where we are from the record and the facts of this boot.
fn on_started(env: &Env, mut s: State, now: UnixMillis) -> (State, Vec<Action>) {
    use UpgradePhase as P;
    s.marking = false;
    let mut s = reconcile_with_rauc(env, s, now);
    if matches!(s.phase, P::Refused { reason: RefusalReason::NotYetValid | RefusalReason::Expired }) {
        // The clock may have been fixed while the agent was down.
        return rejudge_refused(env, s, now);
    }
    let Some(job) = s.job.clone() else { return (s, vec![]) };
    let rebooted = |from: &Option<String>| from.as_deref().is_some_and(|b| b != env.boot_id);
    let on_target = job.target_slot.as_deref() == Some(env.booted_slot.as_str());
    let set_phase = |mut s: State, phase| {
        s.phase = phase;
        s.since = now;
        s
    };
    match &s.phase {
        P::Offered | P::Downloading { .. } => (s, vec![Action::Download]),
        P::Verifying if job.streamed() => (s, vec![Action::VerifyStream]),
        P::Verifying => (s, vec![Action::Verify]),
        P::Installing { .. } => match &job.install_boot {
            Some((boot, slot)) if *boot != env.boot_id && *slot != env.booted_slot => {
                // RAUC finished and the device came up in the other slot
                // before `Installed` was recorded: continue as after the
                // upgrade reboot.
                let window = TrialWindow { boot_id: env.boot_id.clone(), started: env.started_boottime };
                let deadline = window.started.saturating_add_ms(env.commit_deadline_ms);
                if let Some(j) = s.job.as_mut() {
                    j.target_slot = Some(env.booted_slot.clone());
                    j.pre_reboot_boot_id = Some(boot.clone());
                    j.awaiting_since = Some(now);
                    j.rebooting_from = Some(env.boot_id.clone());
                    j.trial_window = Some(window);
                }
                (
                    set_phase(s, P::Rebooting),
                    vec![Action::DeleteBundle, Action::ArmDeadline(deadline), Action::RunHealthChecks],
                )
            }
            // Same boot (agent restart) or still the old slot: the install
            // may be running or done; never start a second one blindly.
            _ => (s, vec![Action::AdoptInstall]),
        },
        P::Installed | P::Rebooting | P::Failed { reason: FailureReason::RebootFailed { .. } } | P::AwaitingCommit
            if job.target_slot.is_some() =>
        {
            let from = job.rebooting_from.clone().or(job.pre_reboot_boot_id.clone());
            // The new slot already came up in an earlier start of this boot.
            let awaiting_boot = job.awaiting_since.is_some() && job.fallback.is_none();
            if !rebooted(&from) && !awaiting_boot {
                // Same boot: only the agent restarted.
                return match s.phase {
                    P::Installed => (s, vec![Action::ScheduleReboot]),
                    P::Rebooting => (s, vec![Action::Reboot]),
                    _ => (s, vec![]),
                };
            }
            if !on_target {
                let reason = job.fallback.clone().unwrap_or(RollbackReason::BootFailed);
                return (set_phase(s, P::RolledBack { reason }), vec![]);
            }
            // Up on the new slot, not committed yet. The deadline counts on
            // boottime: an agent restart in the same boot keeps the window,
            // whatever the wall clock did meanwhile; a new boot of the
            // unconfirmed slot used up one bootloader attempt and opens a
            // fresh window (docs/agent-faults.md: the worst case).
            let window = match &job.trial_window {
                Some(w) if w.boot_id == env.boot_id => w.clone(),
                _ => TrialWindow { boot_id: env.boot_id.clone(), started: env.started_boottime },
            };
            let deadline = window.started.saturating_add_ms(env.commit_deadline_ms);
            let since = job.awaiting_since.unwrap_or(now);
            if let Some(j) = s.job.as_mut() {
                j.awaiting_since = Some(since);
                j.rebooting_from = Some(env.boot_id.clone());
                j.fallback = None;
                j.trial_window = Some(window);
            }
            let phase = if matches!(s.phase, P::AwaitingCommit) { P::AwaitingCommit } else { P::Rebooting };
            let s = if s.phase == phase { s } else { set_phase(s, phase) };
            (s, vec![Action::ArmDeadline(deadline), Action::RunHealthChecks])
        }
        _ => (s, vec![]),
    }
}
