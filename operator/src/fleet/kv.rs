//! [`KvFleet`]: the [`FleetService`] over the operator's KV buckets.
//!
//! Two ways to run it: [`KvFleet::live`] (the long-running operator) loads
//! the index once and keeps it current from KV watches, so reads do no KV
//! round trip; [`KvFleet::snapshot`] (a one-shot CLI command) loads the
//! index on the first read that needs it, and never again.

use super::live::{self, Shared, Source};
use super::query::{self, selector_matches};
use super::{
    archive, audit, enrollment, timeline, workloads, Actor, AuditAction, AuditEntry, AuditPage, AuditQuery,
    AuditResult, BundlePush, BundleView, Change, Control, CreatedToken, DeviceDetail, DevicePage, DeviceQuery,
    FleetService, Judgement, Overview, PingReport, RolloutDetail, RolloutSummary, Stage, StartArgs, Target, TokenSpec,
    Verdict,
};
use crate::bus::Buckets;
use crate::clock::{Clock, SystemClock};
use crate::config::EnrollConfig;
use crate::config::{Config, FleetConfig};
use crate::coordinator::{plan_waves, WavePlan};
use crate::enroll::token::TokenRecord;
use crate::error::{Error, Result};
use crate::model::{keys, valid_name, BundleRecord, Job, Rollout, RolloutStatus};
use crate::provision::{DeviceStatus, DeviceUser};
use crate::serve::ControlRequest;
use crate::store::{self, CorruptRecord, Quarantined};
use crate::workloads::desired::{self, DeviceOutcome, Outcome};
use crate::workloads::{view, ApplyReport, DeviceWorkloads, WorkloadSpec};
use async_nats::jetstream::kv;
use futures::StreamExt;
use harmony_protocol::command::Command;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, ReplyBody};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, OnceCell};

/// Devices whose manifests are written at once.
const WRITE_CONCURRENCY: usize = 16;

/// How long a ping or reboot request waits for the device.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const REBOOT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write waits for the live index to show it.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(5);

/// The real fleet. Cheap to clone; the watch tasks of a live one stop when
/// its last clone is dropped.
#[derive(Clone)]
pub struct KvFleet {
    inner: Arc<Inner>,
}

struct Inner {
    buckets: Buckets,
    fleet: FleetConfig,
    shared: Arc<Shared>,
    /// Set once the index holds a full read of the buckets.
    loaded: OnceCell<()>,
    tasks: Vec<tokio::task::AbortHandle>,
    /// The config's `[enroll]` and the NATS URL, for rejecting and revoking
    /// devices (they disconnect it through the system account).
    enroll: std::sync::OnceLock<EnrollAccess>,
    /// The system-account connection, made on first use.
    system: OnceCell<async_nats::Client>,
    /// The fleet signing key's file, for signing workload manifests.
    signing_key: std::sync::OnceLock<PathBuf>,
}

#[derive(Debug, Clone)]
struct EnrollAccess {
    url: String,
    cfg: EnrollConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for KvFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvFleet").field("live", &!self.inner.tasks.is_empty()).finish_non_exhaustive()
    }
}

impl KvFleet {
    /// For one CLI command: connects (failing fast) and reads lazily.
    pub async fn open(cfg: &Config) -> Result<Self> {
        let buckets = Buckets::open(crate::bus::connect_once(&cfg.nats).await?).await?;
        Ok(Self::snapshot(buckets, cfg.fleet.clone()).with_enroll(cfg).with_signing_key(&cfg.keys.signing_key))
    }

    /// Reads the buckets once, on the first read that needs the index.
    pub fn snapshot(buckets: Buckets, fleet: FleetConfig) -> Self {
        Self::new(buckets, fleet, Arc::new(Shared::new()), OnceCell::new(), Vec::new())
    }

    fn new(
        buckets: Buckets,
        fleet: FleetConfig,
        shared: Arc<Shared>,
        loaded: OnceCell<()>,
        tasks: Vec<tokio::task::AbortHandle>,
    ) -> Self {
        let enroll = std::sync::OnceLock::new();
        let signing_key = std::sync::OnceLock::new();
        let inner = Inner { buckets, fleet, shared, loaded, tasks, enroll, system: OnceCell::new(), signing_key };
        Self { inner: Arc::new(inner) }
    }

    /// Loads the index and keeps it current from KV watches (heartbeats,
    /// the operator bucket, the audit log) until the last clone is dropped.
    pub async fn live(buckets: Buckets, fleet: FleetConfig) -> Result<Self> {
        let shared = Arc::new(Shared::new());
        let audit = audit::open(&buckets.js).await?;
        let sources = [
            (buckets.heartbeats.clone(), Source::Heartbeats),
            (buckets.state.clone(), Source::State),
            (audit, Source::Audit),
        ];
        let mut tasks = Vec::new();
        for (store, source) in sources {
            let revision = live::load(&store, &shared, source).await?;
            tasks.push(tokio::spawn(live::follow(store, shared.clone(), source, revision)).abort_handle());
        }
        Ok(Self::new(buckets, fleet, shared, OnceCell::new_with(Some(())), tasks))
    }

    /// Takes the config's `[enroll]` (if any) for rejecting and revoking
    /// devices; without it those fail with a clear error. Set once: a later
    /// call is ignored.
    pub fn with_enroll(self, cfg: &Config) -> Self {
        if let Some(e) = &cfg.enroll {
            let _ = self.inner.enroll.set(EnrollAccess { url: cfg.nats.url.clone(), cfg: e.clone() });
        }
        self
    }

    /// Takes the fleet signing key's file for signing workload manifests
    /// (read when signing; without it, applying fails). Set once.
    pub fn with_signing_key(self, path: &std::path::Path) -> Self {
        let _ = self.inner.signing_key.set(path.to_path_buf());
        self
    }

    /// The system-account connection and the devices' account.
    async fn system(&self) -> Result<(&async_nats::Client, &str)> {
        let access = self.inner.enroll.get().ok_or_else(|| {
            Error::Invalid(
                "rejecting or revoking a device disconnects it through the NATS system account: the operator \
                 config needs an [enroll] section (see `harmony-operator enroll server-config`)"
                    .into(),
            )
        })?;
        let sys = self
            .inner
            .system
            .get_or_try_init(|| crate::enroll::system::connect(&access.url, &access.cfg.system_seed_file))
            .await?;
        Ok((sys, access.cfg.account.as_str()))
    }

    fn now_secs(&self) -> u64 {
        self.now().0 / 1000
    }

    async fn run_verdict(&self, id: &DeviceId, verdict: Verdict) -> Result<Judgement> {
        // Connect first: revoking without a way to disconnect would leave
        // the device online, so nothing is changed unless we can.
        let sys = if verdict.disconnects() { Some(self.system().await?) } else { None };
        let record = enrollment::judge(&self.inner.buckets.state, id, verdict).await?;
        let mut disconnected = 0;
        if let Some((sys, account)) = sys {
            // The record is already refused by every callout; now end the
            // live connections.
            disconnected = enrollment::disconnect(sys, account, &record).await?;
        }
        Ok(Judgement { device: id.clone(), status: record.status, disconnected })
    }

    pub fn buckets(&self) -> &Buckets {
        &self.inner.buckets
    }

    fn now(&self) -> UnixMillis {
        SystemClock.now()
    }

    async fn ensure_loaded(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .loaded
            .get_or_try_init(|| async {
                live::load(&inner.buckets.heartbeats, &inner.shared, Source::Heartbeats).await?;
                live::load(&inner.buckets.state, &inner.shared, Source::State).await?;
                Ok::<(), Error>(())
            })
            .await
            .map(drop)
    }

    /// Operator records that could not be read: rollouts first, then jobs.
    pub async fn corrupt_records(&self) -> Result<Vec<CorruptRecord>> {
        self.ensure_loaded().await?;
        let index = self.inner.shared.read();
        let of = |p: &str| index.corrupt.values().filter(|c| c.key.starts_with(p)).cloned().collect::<Vec<_>>();
        Ok([of("rollout."), of("job.")].concat())
    }

    /// The stored rollout records, by id.
    pub async fn rollout_records(&self) -> Result<Vec<Rollout>> {
        self.ensure_loaded().await?;
        Ok(self.inner.shared.read().rollouts.values().cloned().collect())
    }

    /// Runs `action`, then records it and its result in the audit log. The
    /// log is opened first: an action that could not be recorded is not done.
    async fn audited<T: Send>(
        &self,
        actor: &Actor,
        action: AuditAction,
        target: &str,
        run: impl Future<Output = Result<T>> + Send,
        describe: impl FnOnce(&T) -> String + Send,
    ) -> Result<T> {
        let log = audit::open(&self.inner.buckets.js).await?;
        let result = run.await;
        self.record(&log, actor, action, target, &result, describe).await;
        if result.is_ok() {
            self.show_own_writes().await;
        }
        result
    }

    /// After a write by this operator, waits (briefly) until the live index
    /// has applied the operator bucket up to now, so the page the person
    /// sees next shows what they just did. A snapshot index was read once
    /// for one command and is not waited on.
    async fn show_own_writes(&self) {
        if self.inner.tasks.is_empty() {
            return;
        }
        let revision = match store::last_revision(&self.inner.buckets.state).await {
            Ok(r) => r,
            Err(e) => return log::warn!("fleet index: reading the operator bucket's revision: {e}"),
        };
        if !self.inner.shared.state_applied(revision, OWN_WRITE_WAIT).await {
            log::warn!("fleet index: revision {revision} not applied within {OWN_WRITE_WAIT:?}; the next page may lag");
        }
    }

    /// Writes one audit entry; a failure to write it is logged.
    async fn record<T>(
        &self,
        log: &kv::Store,
        actor: &Actor,
        action: AuditAction,
        target: &str,
        result: &Result<T>,
        describe: impl FnOnce(&T) -> String,
    ) {
        let entry = AuditEntry {
            seq: 0,
            at: self.now(),
            actor: actor.clone(),
            action,
            target: target.to_string(),
            result: match result {
                Ok(v) => AuditResult::Ok { detail: describe(v) },
                Err(e) => AuditResult::Failed { error: e.to_string() },
            },
        };
        if let Err(e) = audit::append(log, &entry).await {
            log::error!("audit log: could not record {action:?} of {target} by {}: {e}", actor.name);
        }
    }

    /// Writes `spec` to every selected device, auditing each device's
    /// outcome (or, when nothing could be selected or prepared, the whole
    /// request's failure). One device failing does not stop the others.
    async fn write_workloads(
        &self,
        actor: &Actor,
        action: AuditAction,
        target: &Target,
        spec: &WorkloadSpec,
    ) -> Result<ApplyReport> {
        let log = audit::open(&self.inner.buckets.js).await?;
        let prepared = self.prepare_workloads(target, spec).await;
        let (chosen, manifests, statuses, key) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let failed: Result<ApplyReport> = Err(e);
                self.record(&log, actor, action, &workloads::target_name(target), &failed, |_| String::new()).await;
                return failed;
            }
        };
        let now = self.now();
        let t = desired::Target { manifests: &manifests, statuses: &statuses, key: &key };
        let devices = futures::stream::iter(chosen)
            .map(|(name, device)| {
                let log = &log;
                async move {
                    let result = match device {
                        Ok(id) => desired::write(t, &id, spec, now).await,
                        Err(e) => Err(e),
                    };
                    self.record(log, actor, action, &name, &result, |o| workloads::describe(spec, o)).await;
                    let outcome = result.unwrap_or_else(|e| Outcome::Failed { error: e.to_string() });
                    DeviceOutcome { device: name, outcome }
                }
            })
            .buffered(WRITE_CONCURRENCY)
            .collect()
            .await;
        Ok(ApplyReport { devices })
    }

    /// Everything a workload write needs before the first device: a spec
    /// every device would take, the selection, the signing key, the
    /// buckets, and the spec's objects stored.
    async fn prepare_workloads(
        &self,
        target: &Target,
        spec: &WorkloadSpec,
    ) -> Result<(Vec<workloads::Selected>, kv::Store, kv::Store, ed25519_dalek::SigningKey)> {
        spec.check().map_err(|e| Error::Invalid(format!("manifest refused: {e}")))?;
        let path = self.inner.signing_key.get().ok_or_else(|| {
            Error::Invalid("signing workload manifests needs the fleet key (config keys.signing_key)".into())
        })?;
        let key = crate::keys::load(path)?;
        self.ensure_loaded().await?;
        let chosen = workloads::select(&self.inner.shared.read(), target)?;
        let b = &self.inner.buckets;
        let (manifests, statuses) = (b.manifests().await?, b.workload_statuses().await?);
        if !spec.objects.is_empty() && chosen.iter().any(|(_, d)| d.is_ok()) {
            let store = b.workload_objects().await?;
            for object in &spec.objects {
                crate::workloads::objects::ensure(&store, object).await?;
            }
        }
        Ok((chosen, manifests, statuses, key))
    }

    /// The boot id of a device's last believable heartbeat.
    fn boot_of(&self, id: &DeviceId) -> Option<String> {
        self.inner.shared.read().devices.get(id)?.heartbeat.as_ref().map(|h| h.boot_id.clone())
    }

    async fn create_rollout(&self, a: &StartArgs) -> Result<Rollout> {
        let b = &self.inner.buckets;
        let now = self.now();
        let bundle = crate::bundle::get(b, &a.bundle).await?;
        self.ensure_loaded().await?;
        let (devices, busy, finished) = {
            let index = self.inner.shared.read();
            let devices: Vec<DeviceId> = match &a.target {
                Target::Devices(list) => list.iter().map(|d| super::device_id(d)).collect::<Result<_>>()?,
                // The operator's own labels, never what a device reports.
                Target::Selector(sel) => index
                    .devices
                    .iter()
                    .filter(|(_, e)| e.labels.as_ref().is_some_and(|l| selector_matches(l, sel)))
                    .map(|(id, _)| id.clone())
                    .collect(),
                // Every device heartbeating under its own key, unless its
                // record is not active.
                Target::All => index
                    .devices
                    .iter()
                    .filter(|(_, e)| e.heartbeat.is_some())
                    .filter(|(_, e)| e.status.is_none_or(|s| s == DeviceStatus::Active))
                    .map(|(id, _)| id.clone())
                    .collect(),
            };
            let inactive: Vec<String> = devices
                .iter()
                .filter_map(|d| {
                    let s = index.devices.get(d)?.status?;
                    (s != DeviceStatus::Active).then(|| format!("{d} ({})", s.as_str()))
                })
                .collect();
            if !inactive.is_empty() {
                return Err(Error::Invalid(format!("devices not active: {}", inactive.join(", "))));
            }
            let jobs: Vec<&Job> = devices.iter().filter_map(|d| index.devices.get(d)?.job.as_ref()).collect();
            let busy: Vec<String> = jobs
                .iter()
                .filter(|j| !j.state.is_terminal())
                .map(|j| format!("{} (rollout {})", j.device, j.rollout_id))
                .collect();
            let finished: Vec<Job> = jobs.into_iter().filter(|j| j.state.is_terminal()).cloned().collect();
            (devices, busy, finished)
        };
        if devices.is_empty() {
            return Err(Error::Invalid("no devices selected".into()));
        }
        if !busy.is_empty() {
            return Err(Error::Invalid(format!("devices busy in another rollout: {}", busy.join(", "))));
        }
        let id = a.id.clone().unwrap_or_else(|| format!("{}-{}", a.bundle.replace('.', "_"), now.0));
        if !valid_name(&id) || id.contains('.') {
            return Err(Error::Invalid(format!("rollout id {id:?}: use letters, digits, '_', '-'")));
        }
        // The coordinator replaces these jobs with the new rollout's: keep
        // them for the devices' timelines first.
        match archive::open(&b.js).await {
            Ok(store) => archive::save(&store, finished).await?,
            Err(e) => log::warn!("finished jobs not archived: {e}"),
        }
        let waves = plan_waves(&devices, &WavePlan { canary: a.canary, percents: a.waves.clone() });
        let rollout = Rollout {
            id: id.clone(),
            bundle,
            policy: a.policy.clone(),
            waves,
            current_wave: 0,
            status: RolloutStatus::Running,
            created_at: now,
            last_ctl_rev: 0,
            accepted_failures: 0,
            history: Vec::new(),
        };
        let bytes = serde_json::to_vec(&rollout).map_err(|e| Error::Invalid(e.to_string()))?;
        b.state
            .create(keys::rollout(&id), bytes.into())
            .await
            .map_err(|e| Error::Nats(format!("rollout {id}: {e}")))?;
        Ok(rollout)
    }

    async fn request_control(&self, id: &str, control: Control) -> Result<()> {
        let state = &self.inner.buckets.state;
        if store::get_json::<Rollout>(state, &keys::rollout(id)).await?.is_none() {
            return Err(Error::NoSuchRollout(id.into()));
        }
        store::put_json(state, &keys::ctl(id), &ControlRequest { control: control.name().into() }).await.map(drop)
    }
}

impl FleetService for KvFleet {
    async fn overview(&self) -> Result<Overview> {
        self.ensure_loaded().await?;
        Ok(query::overview(&self.inner.shared.read(), self.now(), &self.inner.fleet))
    }

    async fn devices(&self, q: &DeviceQuery) -> Result<DevicePage> {
        self.ensure_loaded().await?;
        Ok(query::devices(&self.inner.shared.read(), q, self.now(), &self.inner.fleet))
    }

    async fn device(&self, id: &DeviceId) -> Result<DeviceDetail> {
        self.ensure_loaded().await?;
        let job_key = keys::job(id);
        let (summary, heartbeat, heartbeat_error, job, job_error, versions, enrollment, held_labels) = {
            let index = self.inner.shared.read();
            let corrupt_job = index
                .corrupt
                .get(&job_key)
                .map(|c| Error::Corrupt { key: c.key.clone(), detail: c.detail.clone() }.to_string());
            let entry = match index.devices.get(id) {
                Some(e) => e.clone(),
                None if corrupt_job.is_some() => Default::default(),
                None => return Err(Error::NoSuchDevice(id.to_string())),
            };
            let summary = query::summary(id, &entry, self.now(), &self.inner.fleet);
            let versions: HashMap<String, String> =
                index.rollouts.values().map(|r| (r.id.clone(), r.bundle.version.clone())).collect();
            let enrollment = entry.enrollment.map(|e| *e);
            let held_labels = entry.held.map(|u| u.labels);
            (summary, entry.heartbeat, entry.heartbeat_error, entry.job, corrupt_job, versions, enrollment, held_labels)
        };
        let b = &self.inner.buckets;
        let quarantined_job: Option<Quarantined> =
            store::get_json(&b.state, &keys::quarantine(&job_key)).await.ok().flatten();
        let archived = match archive::open(&b.js).await {
            Ok(store) => archive::of_device(&store, id).await.unwrap_or_else(|e| {
                log::warn!("job archive of {id}: {e}");
                Vec::new()
            }),
            Err(e) => {
                log::warn!("{e}");
                Vec::new()
            }
        };
        let timeline = timeline::of_jobs(&archived, job.as_ref(), |r| versions.get(r).cloned());
        let boot = heartbeat.as_ref().map(|h| h.boot_id.as_str());
        // The page shows without its workloads rather than not at all.
        let (workloads, workloads_error) = match view::read_device(b, id, boot).await {
            Ok(w) => (w, None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(DeviceDetail {
            summary,
            heartbeat_revision: heartbeat.as_ref().map(|h| h.revision),
            heartbeat: heartbeat.map(|h| h.heartbeat),
            heartbeat_error,
            job,
            job_error,
            quarantined_job,
            timeline,
            enrollment,
            held_labels,
            workloads,
            workloads_error,
        })
    }

    async fn rollouts(&self) -> Result<Vec<RolloutSummary>> {
        self.ensure_loaded().await?;
        let index = self.inner.shared.read();
        let mut out: Vec<RolloutSummary> = index.rollouts.values().map(|r| query::rollout_summary(&index, r)).collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn rollout(&self, id: &str) -> Result<RolloutDetail> {
        let corrupt = self.corrupt_records().await?;
        let (rollout, mut jobs, missing) = {
            let index = self.inner.shared.read();
            let r = index.rollouts.get(id).cloned().ok_or_else(|| Error::NoSuchRollout(id.into()))?;
            let jobs: HashMap<DeviceId, Job> = index.jobs_of(id).map(|j| (j.device.clone(), j.clone())).collect();
            let missing: Vec<DeviceId> = r.devices().filter(|d| !jobs.contains_key(*d)).cloned().collect();
            (r, jobs, missing)
        };
        // Devices whose job of this rollout was replaced by a newer one.
        if !missing.is_empty() {
            if let Ok(store) = archive::open(&self.inner.buckets.js).await {
                let found: Vec<Job> = futures::stream::iter(missing)
                    .map(|d| {
                        let store = store.clone();
                        async move { archive::get(&store, &d, id).await.ok().flatten() }
                    })
                    .buffer_unordered(32)
                    .filter_map(|j| async move { j })
                    .collect()
                    .await;
                jobs.extend(found.into_iter().map(|j| (j.device.clone(), j)));
            }
        }
        let waves = query::wave_progress(&rollout, |d| jobs.get(d).map(|j| Stage::of(&j.state)));
        let summary = query::summary_of(&rollout, &waves);
        let mut jobs: Vec<Job> = jobs.into_values().collect();
        jobs.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(RolloutDetail { summary, rollout, waves, jobs, corrupt })
    }

    async fn bundles(&self) -> Result<Vec<BundleView>> {
        self.ensure_loaded().await?;
        let index = self.inner.shared.read();
        Ok(index
            .bundles
            .values()
            .map(|record| BundleView {
                in_use_by: index
                    .rollouts
                    .values()
                    .filter(|r| r.uses_bundle(&record.id))
                    .map(|r| r.id.clone())
                    .collect(),
                record: record.clone(),
            })
            .collect())
    }

    async fn push_bundle(&self, actor: &Actor, push: &BundlePush) -> Result<BundleRecord> {
        let target = push.id.clone().unwrap_or_else(|| push.path.display().to_string());
        let run =
            crate::bundle::push(&self.inner.buckets, &push.path, push.id.as_deref(), push.progress_bar, self.now());
        self.audited(actor, AuditAction::BundlePush, &target, run, |r: &BundleRecord| {
            format!("{} {} {} bytes sha256 {}", r.id, r.version, r.size, r.sha256)
        })
        .await
    }

    async fn remove_bundle(&self, actor: &Actor, id: &str) -> Result<()> {
        let run = crate::bundle::remove(&self.inner.buckets, id);
        self.audited(actor, AuditAction::BundleRemove, id, run, |_| "removed".into()).await
    }

    async fn start_rollout(&self, actor: &Actor, args: &StartArgs) -> Result<Rollout> {
        let target = args.id.clone().unwrap_or_else(|| format!("(new rollout of {})", args.bundle));
        self.audited(actor, AuditAction::RolloutStart, &target, self.create_rollout(args), |r: &Rollout| {
            let sizes: Vec<usize> = r.waves.iter().map(Vec::len).collect();
            format!("rollout {} of bundle {}: {} devices in waves {sizes:?}", r.id, r.bundle.id, r.devices().count())
        })
        .await
    }

    async fn control_rollout(&self, actor: &Actor, id: &str, control: Control) -> Result<()> {
        let run = self.request_control(id, control);
        self.audited(actor, control.into(), id, run, |_| format!("{} requested", control.name())).await
    }

    async fn ping(&self, actor: &Actor, id: &DeviceId) -> Result<PingReport> {
        let run = async {
            let start = std::time::Instant::now();
            let reply = crate::serve::request(&self.inner.buckets.client, id, &Command::Ping, PING_TIMEOUT).await?;
            Ok(PingReport { device: id.clone(), rtt_ms: start.elapsed().as_secs_f64() * 1000.0, reply })
        };
        self.audited(actor, AuditAction::DevicePing, id.as_str(), run, |p: &PingReport| format!("{:.1} ms", p.rtt_ms))
            .await
    }

    async fn reboot(&self, actor: &Actor, id: &DeviceId) -> Result<()> {
        let run = async {
            match crate::serve::request(&self.inner.buckets.client, id, &Command::Reboot, REBOOT_TIMEOUT).await? {
                ReplyBody::RebootScheduled => Ok(()),
                other => Err(Error::Device(format!("{id}: unexpected reply to reboot: {other:?}"))),
            }
        };
        self.audited(actor, AuditAction::DeviceReboot, id.as_str(), run, |_| "reboot scheduled".into()).await
    }

    async fn pending_devices(&self) -> Result<Vec<DeviceUser>> {
        self.ensure_loaded().await?;
        let index = self.inner.shared.read();
        let mut out: Vec<DeviceUser> = index
            .devices
            .values()
            .filter(|e| e.status == Some(DeviceStatus::Pending))
            .filter_map(|e| e.held.as_deref().cloned())
            .collect();
        // Longest waiting first.
        out.sort_by_key(|u| (u.enrollment.as_ref().map(|e| e.at), u.device.clone()));
        Ok(out)
    }

    async fn judge_device(&self, actor: &Actor, id: &DeviceId, verdict: Verdict) -> Result<Judgement> {
        let run = self.run_verdict(id, verdict);
        self.audited(actor, verdict.into(), id.as_str(), run, |j: &Judgement| {
            format!("{} is now {} ({} connection(s) closed)", j.device, j.status.as_str(), j.disconnected)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.ensure_loaded().await?;
        let mut out: Vec<TokenRecord> = self.inner.shared.read().tokens.values().cloned().collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn create_token(&self, actor: &Actor, spec: &TokenSpec) -> Result<CreatedToken> {
        let run = enrollment::create_token(&self.inner.buckets.state, spec, &actor.name, self.now_secs());
        // The audit entry names the token by its id; its text is only in
        // what is returned to the creator.
        self.audited(actor, AuditAction::TokenCreate, "(new token)", run, |c: &CreatedToken| {
            let t = &c.record;
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "token {}: {} use(s), expires in {}{}{}",
                t.id,
                t.max_uses,
                spec.expires,
                if t.require_approval { ", approval required" } else { "" },
                if labels.is_empty() { String::new() } else { format!(", labels {}", labels.join(",")) }
            )
        })
        .await
    }

    async fn revoke_token(&self, actor: &Actor, id: &str) -> Result<TokenRecord> {
        let run = enrollment::revoke_token(&self.inner.buckets.state, id, self.now_secs());
        self.audited(actor, AuditAction::TokenRevoke, id, run, |t: &TokenRecord| {
            format!("revoked ({} device(s) enrolled with it keep their identity)", t.uses)
        })
        .await
    }

    async fn apply_workloads(&self, actor: &Actor, target: &Target, spec: &WorkloadSpec) -> Result<ApplyReport> {
        self.write_workloads(actor, AuditAction::WorkloadApply, target, spec).await
    }

    async fn remove_workloads(&self, actor: &Actor, target: &Target) -> Result<ApplyReport> {
        self.write_workloads(actor, AuditAction::WorkloadRemove, target, &WorkloadSpec::empty()).await
    }

    async fn workloads(&self, device: Option<&DeviceId>) -> Result<Vec<DeviceWorkloads>> {
        self.ensure_loaded().await?;
        let b = &self.inner.buckets;
        match device {
            Some(id) => Ok(view::read_device(b, id, self.boot_of(id).as_deref()).await?.into_iter().collect()),
            None => view::read_all(b, |id| self.boot_of(id)).await,
        }
    }

    async fn audit(&self, q: &AuditQuery) -> Result<AuditPage> {
        audit::page(&audit::open(&self.inner.buckets.js).await?, q).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.shared.changes.subscribe()
    }
}
