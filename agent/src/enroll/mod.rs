//! Zero-touch enrollment, the device's side (issue 14).
//!
//! On start, before anything else:
//! 1. **Import**: a valid enrollment file on the boot partition
//!    (`enroll.import_from`) is copied to `<state_dir>/enroll.toml` (0600,
//!    fsynced; its CA to `<state_dir>/nats-ca.pem`) and deleted from the
//!    FAT partition. A malformed one is left where it is, with an error.
//! 2. **Plan** ([`plan_start`]): a device with credentials configured runs
//!    exactly as before. One without credentials but with a staged file
//!    enrolls.
//! 3. **Enroll**: the device's own nkey (`<state_dir>/device.nk`, generated
//!    once, never regenerated) plus the token ask the operator
//!    ([`client::EnrollClient`]); [`next_step`] decides what each answer
//!    means. Once enrolled, the drop-in `<drop_in_dir>/20-enrolled.toml`
//!    (device id, URLs, seed file, CA) is written, the staged file deleted,
//!    and the config reloaded: from then on the agent is an ordinary one.
//!
//! The decisions are pure functions with table tests; the file and NATS
//! work is in [`store`] and [`client`].

pub mod client;
pub mod store;

use crate::config::{AgentConfig, ConfigError};
use crate::identity::{self, IdentityError};
use crate::liveness::Liveness;
use client::{AskError, Attempt, EnrollClient};
use harmony_protocol::enroll::{EnrollFile, EnrollRefusal, EnrollReply, EnrollRequest};
use harmony_protocol::DeviceId;
use std::path::PathBuf;
use std::time::Duration;
use store::{EnrollPaths, ImportFile};
use tokio::sync::watch;

/// Version of [`EnrollRequest`] this agent sends.
pub const REQUEST_SCHEMA: u32 = harmony_protocol::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the device's nkey seed {path} is unusable: {detail}")]
    Seed { path: PathBuf, detail: String },
    #[error("the staged enrollment file {path} is invalid: {detail}")]
    StagedInvalid { path: PathBuf, detail: String },
    #[error("cannot determine the device id to enroll as: {0}")]
    Identity(#[from] IdentityError),
    #[error("cannot reload the config after enrolling: {0}")]
    Reload(#[from] ConfigError),
    #[error("the config has no drop_in_dir to record the enrollment in")]
    NoDropInDir,
    #[error("enrolled, but the reloaded config has no NATS credentials (does a later drop-in override {0}?)")]
    NoCredentialsAfterReload(PathBuf),
}

// ---------------------------------------------------------------------------
// Pure decisions.

/// What to do with the boot partition's enrollment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportAction {
    Nothing,
    /// Copy to the data partition, then delete from the boot partition.
    StageAndDelete,
    /// Log a clear error and leave the file for a person to fix.
    LeaveAndReport,
}

pub fn import_action(file: &ImportFile) -> ImportAction {
    match file {
        ImportFile::Absent => ImportAction::Nothing,
        ImportFile::Valid { .. } => ImportAction::StageAndDelete,
        ImportFile::Malformed(_) => ImportAction::LeaveAndReport,
    }
}

/// What the agent finds on start, after importing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFacts {
    /// `nats.credentials_file` or `nats.nkey_seed_file` is configured (a
    /// provisioned device, or the enrolled drop-in is in place).
    pub credentials: bool,
    /// `<state_dir>/enroll.toml` exists.
    pub staged: bool,
    /// A `drop_in_dir` is configured, so an enrollment can be persisted.
    pub drop_in_dir: bool,
    /// `<state_dir>/device.nk` exists.
    pub seed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPlan {
    /// Exactly as before enrollment existed.
    RunAsConfigured,
    /// Already has credentials; a staged token is of no further use (and a
    /// secret lying around): delete it, then run.
    DiscardStagedAndRun,
    /// Ask the operator; `new_identity` when the seed is generated now.
    Enroll { new_identity: bool },
    /// Staged file but nowhere to write the result: report, run as
    /// configured (without credentials).
    CannotEnroll,
}

pub fn plan_start(f: StartFacts) -> StartPlan {
    match (f.credentials, f.staged, f.drop_in_dir) {
        (true, false, _) | (false, false, _) => StartPlan::RunAsConfigured,
        (true, true, _) => StartPlan::DiscardStagedAndRun,
        (false, true, true) => StartPlan::Enroll { new_identity: !f.seed },
        (false, true, false) => StartPlan::CannotEnroll,
    }
}

/// Delays between enrollment attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// After `pending`, `busy`, a bad reply; the cap of the backoff.
    pub retry: Duration,
    /// After a final refusal.
    pub refused_retry: Duration,
}

/// Why the device is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Recorded; waiting for `devices accept`.
    Pending { device: DeviceId },
    /// The operator asked for a later retry (`busy`).
    Busy { detail: String },
    /// Refused for good as far as this token goes; asked again slowly in
    /// case the operator accepts the device later.
    Refused { reason: EnrollRefusal, detail: String },
    /// No answer: unreachable, no service, timeout, a garbled reply.
    NoAnswer { detail: String },
    /// The server refused the connection (a token the callout does not
    /// accept, or a callout that did not answer): backed off up to the
    /// refusal delay, since it is usually as final as a refusal.
    NotAuthorized { detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Enrolled { device: DeviceId },
    Retry { after: Duration, wait: Wait },
}

/// What an attempt's outcome means. `failures` counts attempts in a row
/// without an answer, this one included (≥ 1 for an `Err`).
pub fn next_step(outcome: &Result<EnrollReply, AskError>, failures: u32, t: Timing) -> Step {
    match outcome {
        Ok(EnrollReply::Enrolled { device, .. }) => Step::Enrolled { device: device.clone() },
        Ok(EnrollReply::Pending { device }) => {
            Step::Retry { after: t.retry, wait: Wait::Pending { device: device.clone() } }
        }
        Ok(EnrollReply::Refused { reason, detail }) if reason.is_retryable() => {
            Step::Retry { after: t.retry, wait: Wait::Busy { detail: detail.clone() } }
        }
        Ok(EnrollReply::Refused { reason, detail }) => {
            Step::Retry { after: t.refused_retry, wait: Wait::Refused { reason: *reason, detail: detail.clone() } }
        }
        Err(e @ AskError::NotAuthorized(_)) => Step::Retry {
            after: backoff(failures, t.refused_retry),
            wait: Wait::NotAuthorized { detail: e.to_string() },
        },
        Err(e) => Step::Retry { after: backoff(failures, t.retry), wait: Wait::NoAnswer { detail: e.to_string() } },
    }
}

/// 1 s doubling per failure in a row, capped at `cap`.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(cap)
}

// ---------------------------------------------------------------------------
// The adapter: files, then the loop.

/// What `prepare` decided.
#[derive(Debug)]
pub enum Prepared {
    Run(Box<AgentConfig>),
    Enroll(Box<Enrollment>),
}

/// Import the boot partition's file, then decide. Only file work; the
/// network is touched by [`Enrollment::run`].
pub fn prepare(cfg: AgentConfig) -> Result<Prepared, EnrollError> {
    let paths = EnrollPaths::from_config(&cfg);
    let import = store::read_import(&paths.import_from);
    match (import_action(&import), &import) {
        (ImportAction::StageAndDelete, ImportFile::Valid { file, text }) => store::stage(&paths, file, text)?,
        (ImportAction::LeaveAndReport, ImportFile::Malformed(detail)) => log::error!(
            "the enrollment file {} is not usable ({detail}); left in place: replace it with one from \
             `harmony-operator enroll prepare`",
            paths.import_from.display()
        ),
        _ => {}
    }
    let facts = StartFacts {
        credentials: cfg.has_credentials(),
        staged: paths.staged.exists(),
        drop_in_dir: paths.drop_in.is_some(),
        seed: paths.seed.exists(),
    };
    match plan_start(facts) {
        StartPlan::RunAsConfigured => {
            if !facts.credentials {
                log::warn!(
                    "no NATS credentials configured and no enrollment file ({}); connecting without credentials",
                    paths.import_from.display()
                );
            }
            Ok(Prepared::Run(Box::new(cfg)))
        }
        StartPlan::DiscardStagedAndRun => {
            log::info!("credentials are configured; deleting the unused enrollment file {}", paths.staged.display());
            if let Err(e) = store::remove_durably(&paths.staged) {
                log::error!("cannot delete {}: {e}", paths.staged.display());
            }
            Ok(Prepared::Run(Box::new(cfg)))
        }
        StartPlan::CannotEnroll => {
            log::error!(
                "{} is staged but the config has no drop_in_dir to record the enrollment in; not enrolling",
                paths.staged.display()
            );
            Ok(Prepared::Run(Box::new(cfg)))
        }
        StartPlan::Enroll { new_identity } => {
            let file = store::read_staged(&paths.staged)?;
            let (key, created) = store::load_or_create_seed(&paths.seed)?;
            if new_identity != created {
                log::warn!("{} changed while the agent was starting", paths.seed.display());
            }
            let ca = store::write_ca(&paths, &file)?;
            let request = EnrollRequest {
                schema: REQUEST_SCHEMA,
                token: file.token.clone(),
                nkey: key.public_key(),
                device: identity::device_id(&cfg)?,
                labels: cfg.labels.clone(),
                agent_version: crate::shared::AGENT_VERSION.to_string(),
                os_version: identity::os_version(&cfg.system.os_release),
            };
            Ok(Prepared::Enroll(Box::new(Enrollment { cfg, paths, key, file, ca, request })))
        }
    }
}

/// A device about to enroll: everything the loop needs.
pub struct Enrollment {
    pub cfg: AgentConfig,
    pub paths: EnrollPaths,
    key: nkeys::KeyPair,
    pub file: EnrollFile,
    pub ca: Option<PathBuf>,
    pub request: EnrollRequest,
}

impl std::fmt::Debug for Enrollment {
    // Neither the seed nor the token belongs in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("paths", &self.paths)
            .field("public_key", &self.key.public_key())
            .field("device", &self.request.device)
            .finish_non_exhaustive()
    }
}

impl Enrollment {
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// Ask until enrolled; returns the reloaded config. Beats `liveness` at
    /// least every second while waiting and keeps `status` current. Only
    /// file errors end it; every answer and failure is retried.
    pub async fn run(
        self,
        client: &impl EnrollClient,
        status: &watch::Sender<String>,
        liveness: &Liveness,
    ) -> Result<AgentConfig, EnrollError> {
        let seed =
            self.key.seed().map_err(|e| EnrollError::Seed { path: self.paths.seed.clone(), detail: e.to_string() })?;
        let public_key = self.key.public_key();
        let timing = Timing {
            retry: Duration::from_secs(self.cfg.enroll.retry_secs),
            refused_retry: Duration::from_secs(self.cfg.enroll.refused_retry_secs),
        };
        let device = self.request.device.clone();
        log::info!("enrolling as {device} with nkey {public_key} at {}", self.file.nats_urls.join(", "));
        status.send_replace(format!("enrolling as {device}"));
        let mut failures = 0u32;
        loop {
            liveness.beat();
            let attempt = Attempt {
                file: &self.file,
                ca_file: self.ca.as_ref(),
                seed: &seed,
                public_key: &public_key,
                request: &self.request,
                timeout: Duration::from_secs(self.cfg.nats.request_timeout_secs),
            };
            let outcome = client.ask(&attempt).await;
            failures = if outcome.is_err() { failures.saturating_add(1) } else { 0 };
            let labels = match &outcome {
                Ok(EnrollReply::Enrolled { labels, .. }) => Some(labels.clone()),
                _ => None,
            };
            match next_step(&outcome, failures, timing) {
                Step::Enrolled { device } => {
                    log::info!("enrolled as {device} (labels {labels:?}); switching to the device's own credentials");
                    return self.finish(&device);
                }
                Step::Retry { after, wait } => {
                    let text = match &wait {
                        Wait::Pending { device } => {
                            log::info!(
                                "enrollment of {device} is pending an operator's approval; asking again in {after:?}"
                            );
                            format!("enrollment pending approval (device {device})")
                        }
                        Wait::Busy { detail } => {
                            log::warn!("the enrollment service is busy ({detail}); asking again in {after:?}");
                            format!("enrollment service busy, retrying (device {device})")
                        }
                        Wait::Refused { reason, detail } => {
                            log::error!(
                                "enrollment refused: {reason:?} ({detail}); asking again in {after:?} in case an \
                                 operator accepts this device (nkey {public_key})"
                            );
                            format!("enrollment refused: {reason:?} (device {device})")
                        }
                        Wait::NoAnswer { detail } => {
                            log::warn!("{detail}; asking again in {after:?}");
                            format!("enrolling: no answer, retrying (device {device})")
                        }
                        Wait::NotAuthorized { detail } => {
                            log::error!("{detail}; asking again in {after:?} (nkey {public_key})");
                            format!("enrollment not authorized, retrying (device {device})")
                        }
                    };
                    status.send_replace(text);
                    sleep_beating(after, liveness).await;
                }
            }
        }
    }

    /// Persist the enrollment, then become an ordinary agent.
    fn finish(self, device: &DeviceId) -> Result<AgentConfig, EnrollError> {
        let Some(drop_in) = &self.paths.drop_in else {
            // `plan_start` only enrolls with a drop-in dir.
            return Err(EnrollError::NoDropInDir);
        };
        let text = store::drop_in_text(device, &self.file.nats_urls, &self.paths.seed, self.ca.as_deref());
        store::write_drop_in(drop_in, &text)?;
        log::info!("wrote {}", drop_in.display());
        if let Err(e) = store::remove_durably(&self.paths.staged) {
            log::error!("cannot delete {} ({e}); it is deleted on the next start", self.paths.staged.display());
        }
        let cfg = match &self.cfg.source {
            Some(path) => AgentConfig::load(path)?,
            None => {
                // Built in memory (tests): apply what the drop-in says.
                let mut cfg = self.cfg;
                cfg.device_id = Some(device.clone());
                cfg.nats.urls = self.file.nats_urls.clone();
                cfg.nats.credentials_file = None;
                cfg.nats.nkey_seed_file = Some(self.paths.seed.clone());
                cfg.nats.ca_file = self.ca.clone();
                cfg
            }
        };
        if !cfg.has_credentials() {
            return Err(EnrollError::NoCredentialsAfterReload(drop_in.clone()));
        }
        Ok(cfg)
    }
}

async fn sleep_beating(total: Duration, liveness: &Liveness) {
    let until = tokio::time::Instant::now() + total;
    loop {
        liveness.beat();
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn import_table() {
        let file = store::parse_enroll_file("token = \"hfe1_a\"\nnats_urls = [\"nats://x:4222\"]").unwrap();
        let cases = [
            (ImportFile::Absent, ImportAction::Nothing),
            (ImportFile::Valid { file, text: String::new() }, ImportAction::StageAndDelete),
            (ImportFile::Malformed("bad".into()), ImportAction::LeaveAndReport),
        ];
        for (input, want) in cases {
            assert_eq!(import_action(&input), want, "{input:?}");
        }
    }

    #[test]
    fn start_table_covers_every_case() {
        use StartPlan::*;
        // (credentials, staged, drop_in_dir, seed) -> plan
        let cases = [
            ((false, false, false, false), RunAsConfigured),
            ((false, false, false, true), RunAsConfigured),
            ((false, false, true, false), RunAsConfigured),
            ((false, false, true, true), RunAsConfigured),
            ((false, true, false, false), CannotEnroll),
            ((false, true, false, true), CannotEnroll),
            ((false, true, true, false), Enroll { new_identity: true }),
            ((false, true, true, true), Enroll { new_identity: false }),
            ((true, false, false, false), RunAsConfigured),
            ((true, false, false, true), RunAsConfigured),
            ((true, false, true, false), RunAsConfigured),
            ((true, false, true, true), RunAsConfigured),
            ((true, true, false, false), DiscardStagedAndRun),
            ((true, true, false, true), DiscardStagedAndRun),
            ((true, true, true, false), DiscardStagedAndRun),
            ((true, true, true, true), DiscardStagedAndRun),
        ];
        for ((credentials, staged, drop_in_dir, seed), want) in cases {
            let facts = StartFacts { credentials, staged, drop_in_dir, seed };
            assert_eq!(plan_start(facts), want, "{facts:?}");
        }
    }

    #[test]
    fn reply_table_covers_every_answer() {
        let t = Timing { retry: Duration::from_secs(30), refused_retry: Duration::from_secs(600) };
        let dev = DeviceId::new("dev-1").unwrap();
        let refused = |reason| Ok(EnrollReply::Refused { reason, detail: "d".into() });
        assert_eq!(
            next_step(&Ok(EnrollReply::Enrolled { device: dev.clone(), labels: BTreeMap::new() }), 0, t),
            Step::Enrolled { device: dev.clone() }
        );
        assert_eq!(
            next_step(&Ok(EnrollReply::Pending { device: dev.clone() }), 0, t),
            Step::Retry { after: t.retry, wait: Wait::Pending { device: dev.clone() } }
        );
        assert_eq!(
            next_step(&refused(EnrollRefusal::Busy), 0, t),
            Step::Retry { after: t.retry, wait: Wait::Busy { detail: "d".into() } }
        );
        for reason in [
            EnrollRefusal::TokenInvalid,
            EnrollRefusal::TokenExpired,
            EnrollRefusal::TokenRevoked,
            EnrollRefusal::TokenUsedUp,
            EnrollRefusal::Malformed,
            EnrollRefusal::TooLarge,
            EnrollRefusal::DeviceIdTaken,
            EnrollRefusal::Rejected,
            EnrollRefusal::Unsupported,
        ] {
            assert_eq!(
                next_step(&refused(reason), 0, t),
                Step::Retry { after: t.refused_retry, wait: Wait::Refused { reason, detail: "d".into() } },
                "{reason:?} is final: slow retries only"
            );
        }
        for (failures, secs) in [(1, 1), (2, 2), (5, 16), (10, 512), (11, 600), (100, 600)] {
            match next_step(&Err(AskError::NotAuthorized("authorization violation".into())), failures, t) {
                Step::Retry { after, wait: Wait::NotAuthorized { .. } } => {
                    assert_eq!(after, Duration::from_secs(secs), "{failures}")
                }
                other => panic!("{other:?}"),
            }
        }
        for (failures, secs) in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (100, 30)] {
            for e in [
                AskError::Connect("refused".into()),
                AskError::Request("timeout".into()),
                AskError::BadReply("x".into()),
            ] {
                match next_step(&Err(e), failures, t) {
                    Step::Retry { after, wait: Wait::NoAnswer { .. } } => {
                        assert_eq!(after, Duration::from_secs(secs), "{failures}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}
