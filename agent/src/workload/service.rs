//! The workload service: watches this device's manifest key, runs the
//! core's actions through the reconcilers, and publishes typed status.
//!
//! The first pass runs from the manifest saved on /data before NATS is
//! reached, so after a reboot (an OS upgrade included) workloads come back
//! without the network. A pass runs its actions one at a time in order;
//! each action is bounded by `action_timeout_secs`. Status goes out through
//! a publisher task that always sends the latest and retries, so a NATS
//! outage never stalls reconciling.

use super::core::{self, Action, Env, Event, Gate, State};
use super::reconciler::Reconcilers;
use super::store::WorkloadStore;
use super::WorkloadConfig;
use crate::clock::Clock;
use crate::runner::AbortOnDrop;
use harmony_protocol::names::kv_put_subject;
use harmony_protocol::workload::{
    AgentManifest, AgentStatus, FileContent, ManifestRefusal, ResourceSpec, MANIFEST_BUCKET, WORKLOAD_STATUS_BUCKET,
};
use harmony_protocol::{DeviceId, SignedEnvelope, SigningError, TrustedKeys};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub struct WorkloadContext {
    pub config: WorkloadConfig,
    pub state_dir: PathBuf,
    pub keys: TrustedKeys,
    pub device_id: DeviceId,
    pub boot_id: String,
    pub client: async_nats::Client,
    pub clock: Arc<dyn Clock>,
    pub reconcilers: Reconcilers,
    pub gate: watch::Sender<Gate>,
}

impl std::fmt::Debug for WorkloadContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadContext").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

/// Signature first, then the manifest's own checks (kinds, names, sizes).
/// Returns the envelope too: it is what gets saved once the manifest applies.
pub fn decode_manifest(keys: &TrustedKeys, bytes: &[u8]) -> Result<(SignedEnvelope, AgentManifest), ManifestRefusal> {
    let envelope = SignedEnvelope::decode(bytes)
        .map_err(|e| ManifestRefusal::Malformed { detail: format!("not a signed envelope: {e}") })?;
    keys.verify::<serde::de::IgnoredAny>(&envelope).map_err(|e| match e {
        SigningError::UnknownKey(id) => ManifestRefusal::UnknownKey { key_id: id.0 },
        SigningError::BadSignature | SigningError::MalformedSignature => ManifestRefusal::BadSignature,
        other => ManifestRefusal::Malformed { detail: other.to_string() },
    })?;
    let manifest = AgentManifest::parse(&envelope.payload)?;
    Ok((envelope, manifest))
}

struct Service {
    ctx: WorkloadContext,
    env: Env,
    state: State,
    store: WorkloadStore,
    objects: Option<Arc<super::objects::ObjectCache>>,
    /// The envelope of the last manifest that verified, saved on `SaveApplied`.
    received: Option<SignedEnvelope>,
    status: watch::Sender<Option<AgentStatus>>,
}

pub async fn run(
    ctx: WorkloadContext,
    objects: Option<Arc<super::objects::ObjectCache>>,
    shutdown: impl Future<Output = ()>,
) {
    let store = WorkloadStore::in_dir(&ctx.state_dir);
    let (saved, applied) = match store.load_manifest(&ctx.keys) {
        Some((env, m)) => (Some(env), Some(m)),
        None => (None, None),
    };
    let env = Env {
        device_id: ctx.device_id.clone(),
        file_roots: ctx.config.file_roots.clone(),
        mount_sources: ctx.config.mount_sources.clone(),
        retry_initial_ms: ctx.config.retry_initial_secs.saturating_mul(1000),
        retry_max_ms: ctx.config.retry_max_secs.saturating_mul(1000),
    };
    // A saved manifest for another device (a card moved between devices
    // with its /data) is not applied.
    let applied = applied.filter(|m| m.device_id == env.device_id);
    let state = State::restored(applied, store.load_owned());
    let (status_tx, status_rx) = watch::channel(None);
    let publisher = AbortOnDrop(tokio::spawn(publish_status(ctx.client.clone(), ctx.device_id.clone(), status_rx)));
    let (tx, mut manifests) = mpsc::channel(4);
    let watcher = AbortOnDrop(tokio::spawn(crate::kv_watch::watch_own_key(
        ctx.client.clone(),
        MANIFEST_BUCKET,
        ctx.device_id.clone(),
        tx,
    )));
    let drift = Duration::from_secs(ctx.config.drift_interval_secs);
    let mut svc = Service { ctx, env, state, store, objects, received: saved, status: status_tx };
    svc.apply(Event::PassDue).await;
    let mut drift_tick = tokio::time::interval_at(tokio::time::Instant::now() + drift, drift);
    drift_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let retry = svc.retry_in();
        tokio::select! {
            () = &mut shutdown => break,
            Some(bytes) = manifests.recv() => {
                let decoded = match decode_manifest(&svc.ctx.keys, &bytes) {
                    Ok((envelope, manifest)) => {
                        svc.received = Some(envelope);
                        Ok(manifest)
                    }
                    Err(e) => {
                        log::warn!("workload manifest refused: {e}");
                        Err(e)
                    }
                };
                svc.apply(Event::ManifestReceived(decoded)).await;
            }
            _ = drift_tick.tick() => svc.apply(Event::PassDue).await,
            () = sleep_for(retry) => svc.apply(Event::PassDue).await,
        }
    }
    drop((publisher, watcher));
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => futures::future::pending().await,
    }
}

impl Service {
    fn retry_in(&self) -> Option<Duration> {
        let at = self.state.next_retry()?;
        Some(Duration::from_millis(at.saturating_since(self.ctx.clock.now()).max(100)))
    }

    /// Step the event and carry out its actions in order, stepping each
    /// outcome as it arrives.
    async fn apply(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let refused_before = self.state.refused.clone();
            let (next, actions) = core::step(&self.env, self.state.clone(), event, self.ctx.clock.now());
            self.state = next;
            if self.state.refused != refused_before {
                if let Some(r) = &self.state.refused {
                    log::warn!("workload manifest (generation {:?}) refused: {}", r.generation, r.reason);
                }
            }
            self.report();
            for action in actions {
                if let Some(outcome) = self.act(action).await {
                    events.push_back(outcome);
                }
            }
        }
    }

    async fn act(&mut self, action: Action) -> Option<Event> {
        let timeout = Duration::from_secs(self.ctx.config.action_timeout_secs);
        match action {
            Action::SaveApplied => {
                if let Some(m) = &self.state.applied {
                    log::info!(
                        "workload manifest generation {} applied ({} resources)",
                        m.generation,
                        m.resources.len()
                    );
                }
                if let Some(envelope) = &self.received {
                    // Unsaved, the manifest still applies now; after a restart the
                    // previous one is re-applied until the bus delivers this again.
                    if let Err(e) = self.store.save_manifest(envelope) {
                        log::error!("cannot save the workload manifest: {e}");
                    }
                }
                self.collect_objects();
                None
            }
            Action::SaveOwned => {
                if let Err(e) = self.store.save_owned(&self.state.owned) {
                    log::error!("cannot save the owned workload list: {e}");
                }
                None
            }
            Action::Ensure { id, spec } => {
                let result = self.ctx.reconcilers.ensure(&id, &spec, timeout).await;
                match &result {
                    Ok(e) if e.repaired => log::info!("workload {id}: reconciled ({})", e.details),
                    Ok(_) => {}
                    Err(e) => log::warn!("workload {id}: {e}"),
                }
                Some(Event::Ensured { id, spec, result })
            }
            Action::Remove { id, spec } => {
                let result = self.ctx.reconcilers.delete(&id, &spec, timeout).await;
                match &result {
                    Ok(()) => log::info!("workload {id}: removed"),
                    Err(e) => log::warn!("workload {id}: removing: {e}"),
                }
                Some(Event::Removed { id, result })
            }
        }
    }

    /// Cached objects the applied manifest no longer names are dropped.
    fn collect_objects(&self) {
        let Some(objects) = &self.objects else { return };
        let keep = self
            .state
            .applied
            .iter()
            .flat_map(|m| &m.resources)
            .filter_map(|r| match &r.spec {
                ResourceSpec::File(f) => match &f.content {
                    FileContent::Object { sha256, .. } => Some(sha256.clone()),
                    FileContent::Inline(_) => None,
                },
                ResourceSpec::Container(c) => c.archive.as_ref().map(|a| a.sha256.clone()),
                ResourceSpec::SystemdUnit(_) => None,
            })
            .collect();
        objects.retain(&keep);
    }

    fn report(&self) {
        self.ctx.gate.send_if_modified(|g| {
            let next = self.state.gate();
            if *g == next {
                false
            } else {
                *g = next;
                true
            }
        });
        let status = self.state.status(&self.ctx.device_id, &self.ctx.boot_id, self.ctx.clock.now());
        self.status.send_if_modified(|current| {
            let same =
                current.as_ref().is_some_and(|c| AgentStatus { updated_at: status.updated_at, ..c.clone() } == status);
            if !same {
                *current = Some(status);
            }
            !same
        });
    }
}

/// Sends the latest status to this device's key in the status bucket, and
/// again after a failure.
async fn publish_status(client: async_nats::Client, device: DeviceId, mut rx: watch::Receiver<Option<AgentStatus>>) {
    let js = async_nats::jetstream::new(client);
    let subject = kv_put_subject(WORKLOAD_STATUS_BUCKET, device.as_str());
    loop {
        let status = rx.borrow_and_update().clone();
        if let Some(status) = status {
            let payload = serde_json::to_vec(&status).unwrap_or_default();
            let put = async {
                js.publish(subject.clone(), payload.into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(Duration::from_secs(5), put).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    log::debug!("workload status not published: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                Err(_) => {
                    log::debug!("workload status not published within 5 s");
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What the upgrade health check asks of the workloads.
#[derive(Debug, Clone)]
pub struct GateHandle {
    pub rx: watch::Receiver<Gate>,
    /// The first pass of this start is waited for until then.
    pub wait_until: tokio::time::Instant,
}

impl GateHandle {
    /// A gate that is always open (workloads disabled).
    pub fn open() -> Self {
        let (tx, rx) = watch::channel(Gate::Open);
        // Keep the channel's value without a live sender.
        drop(tx);
        Self { rx, wait_until: tokio::time::Instant::now() }
    }

    /// Failed-check names for the health report. `wait`: after an upgrade
    /// reboot the first pass is waited for; a periodic check does not wait
    /// and does not count a pass in progress as a failure.
    pub async fn failures(&self, wait: bool) -> Vec<String> {
        let mut rx = self.rx.clone();
        if wait {
            let waited = tokio::time::timeout_at(self.wait_until, rx.wait_for(|g| *g != Gate::Waiting)).await;
            if waited.is_err() {
                return vec!["workloads (first reconcile pass not finished in time)".into()];
            }
        }
        let gate = rx.borrow().clone();
        match gate {
            Gate::Open | Gate::Waiting => Vec::new(),
            Gate::Closed(failed) => failed,
        }
    }
}
