//! What each CLI subcommand does (except `serve`), returning a value that is
//! printed as JSON (`--json`) or as a human table.

use crate::bus::{create_buckets, BucketLimits, Buckets};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::coordinator::{plan_waves, WavePlan};
use crate::error::{Error, Result};
use crate::model::{keys, valid_name, HaltThreshold, Job, Rollout, RolloutPolicy, RolloutStatus};
use crate::provision::{self, AgentSettings, DeviceUser};
use crate::registry::{matches_selector, stored_heartbeat, DeviceRow, Labels, StoredHeartbeat};
use crate::serve::ControlRequest;
use crate::store;
use harmony_protocol::command::Command;
use harmony_protocol::DeviceId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A command's result: the JSON for scripts and the text for people.
#[derive(Debug)]
pub struct Output {
    pub json: serde_json::Value,
    pub text: String,
}

impl Output {
    fn new(value: &impl Serialize, text: String) -> Self {
        Self { json: serde_json::to_value(value).unwrap_or(serde_json::Value::Null), text }
    }
}

/// Left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join("  ")
    };
    let mut out = line(header.to_vec()).trim_end().to_string();
    for r in rows {
        out.push('\n');
        out.push_str(line(r.iter().map(String::as_str).collect()).trim_end());
    }
    out
}

/// Connects for one CLI command: fails fast, naming the URL, when NATS
/// cannot be reached (the server keeps retrying instead, see `serve`).
pub async fn open(cfg: &Config) -> Result<Buckets> {
    Buckets::open(crate::bus::connect_once(&cfg.nats).await?).await
}

/// The believable heartbeats: each decodes and names the device of its key.
/// Others are left out with a warning (one device cannot speak for another).
pub async fn heartbeats(b: &Buckets) -> Result<Vec<StoredHeartbeat>> {
    let mut out = Vec::new();
    for e in store::read_prefix(&b.heartbeats, "").await? {
        match stored_heartbeat(&e) {
            Ok(hb) => out.push(hb),
            Err(why) => log::warn!("ignoring heartbeat under key {}: {why}", e.key),
        }
    }
    out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    Ok(out)
}

/// The operator's provisioning records (`device.<id>`), with their labels.
pub async fn provisioned(b: &Buckets) -> Result<Vec<DeviceUser>> {
    Ok(store::decode_all(&store::read_prefix(&b.state, "device.").await?).good)
}

fn labels_by_device(users: &[DeviceUser]) -> BTreeMap<DeviceId, Labels> {
    users.iter().map(|u| (u.device.clone(), u.labels.clone())).collect()
}

pub async fn devices_list(cfg: &Config) -> Result<Output> {
    let b = open(cfg).await?;
    let now = SystemClock.now();
    let labels = labels_by_device(&provisioned(&b).await?);
    let none = Labels::new();
    let rows: Vec<DeviceRow> = heartbeats(&b)
        .await?
        .iter()
        .map(|h| DeviceRow::from_heartbeat(h, labels.get(&h.device_id).unwrap_or(&none), now, &cfg.fleet))
        .collect();
    let text = table(
        &["DEVICE", "PRESENCE", "VERSION", "SLOT", "HEALTH", "PHASE", "SEEN"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.device_id.clone(),
                    format!("{:?}", r.presence).to_lowercase(),
                    r.os_version.clone().unwrap_or_default(),
                    r.booted_slot.clone().unwrap_or_default(),
                    format!("{:?}", r.health).to_lowercase(),
                    match &r.boot_mismatch {
                        Some(m) => format!("{} ({m})", r.phase),
                        None => r.phase.to_string(),
                    },
                    format!("{}s ago", now.saturating_since(r.last_seen) / 1000),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(Output::new(&rows, text))
}

pub async fn devices_show(cfg: &Config, id: &str) -> Result<Output> {
    let b = open(cfg).await?;
    let id = DeviceId::new(id).map_err(|e| Error::Invalid(e.to_string()))?;
    let entry = b
        .heartbeats
        .entry(id.as_str())
        .await
        .map_err(|e| Error::Nats(format!("get {id}: {e}")))?
        .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
        .ok_or_else(|| Error::NoSuchDevice(id.to_string()))?;
    let hb = stored_heartbeat(&entry).map_err(|why| Error::Corrupt { key: id.to_string(), detail: why.to_string() })?;
    let record: Option<DeviceUser> = store::get_json(&b.state, &keys::device(&id)).await.unwrap_or_else(|e| {
        log::warn!("{e}");
        None
    });
    let labels = record.map(|r| r.labels).unwrap_or_default();
    // A corrupt job is shown as such (with its quarantined copy), not fatal.
    let (job, job_error) = match store::get_json::<Job>(&b.state, &keys::job(&id)).await {
        Ok(job) => (job, None),
        Err(e @ Error::Corrupt { .. }) => (None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
    let quarantined: Option<store::Quarantined> =
        store::get_json(&b.state, &keys::quarantine(&keys::job(&id))).await.unwrap_or_default();
    let row = DeviceRow::from_heartbeat(&hb, &labels, SystemClock.now(), &cfg.fleet);
    let value = serde_json::json!({
        "device": row, "heartbeat": hb.heartbeat, "job": job, "job_error": job_error, "quarantined_job": quarantined,
    });
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    Ok(Output { json: value, text })
}

pub async fn ping(cfg: &Config, id: &str) -> Result<Output> {
    let b = open(cfg).await?;
    let id = DeviceId::new(id).map_err(|e| Error::Invalid(e.to_string()))?;
    let start = std::time::Instant::now();
    let body = crate::serve::request(&b.client, &id, &Command::Ping, Duration::from_secs(5)).await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let value = serde_json::json!({ "device": id, "rtt_ms": ms, "reply": body });
    Ok(Output { text: format!("{id}: {} ({ms:.1} ms)", serde_json::to_string(&body).unwrap_or_default()), json: value })
}

pub async fn init(cfg: &Config, limits: &BucketLimits) -> Result<Output> {
    if !(1..=crate::bus::MAX_REPLICAS).contains(&limits.replicas) {
        return Err(Error::Invalid(format!(
            "--replicas {}: JetStream keeps 1 to {} copies",
            limits.replicas,
            crate::bus::MAX_REPLICAS
        )));
    }
    let client = crate::bus::connect_once(&cfg.nats).await?;
    crate::bus::check_replicas(limits.replicas, &client.server_info())?;
    let js = async_nats::jetstream::new(client);
    create_buckets(&js, limits).await?;
    let text = format!("buckets ready ({} replica(s))", limits.replicas);
    Ok(Output::new(&serde_json::json!({"buckets": "ok", "replicas": limits.replicas}), text))
}

#[derive(Debug, Clone)]
pub struct ProvisionArgs {
    pub device: String,
    pub labels: Vec<String>,
    pub nats_urls: Vec<String>,
    pub out: PathBuf,
    pub auth_conf: PathBuf,
    pub operator_nkey: PathBuf,
    pub heartbeat_interval_secs: u64,
    pub commit_deadline_secs: u64,
}

/// Writes a device's credential and agent.toml and regenerates the server's
/// auth include with every provisioned device.
pub async fn provision(cfg: &Config, a: &ProvisionArgs) -> Result<Output> {
    let device = DeviceId::new(a.device.as_str()).map_err(|e| Error::Invalid(e.to_string()))?;
    let labels: Labels = a.labels.iter().map(|l| provision::check_label(l)).collect::<Result<_>>()?;
    let b = open(cfg).await?;
    let settings = AgentSettings {
        nats_urls: if a.nats_urls.is_empty() { vec![cfg.nats.url.clone()] } else { a.nats_urls.clone() },
        labels: labels.clone(),
        heartbeat_interval_secs: a.heartbeat_interval_secs,
        commit_deadline_secs: a.commit_deadline_secs,
    };
    let (prov, _seed) = provision::provision_device(&device, &settings, &cfg.keys.signing_key, &a.out)?;
    store::put_json(
        &b.state,
        &keys::device(&device),
        &DeviceUser { device: device.clone(), nkey: prov.nkey.clone(), labels },
    )
    .await?;
    let users: Vec<DeviceUser> =
        store::read_prefix(&b.state, "device.").await?.iter().map(store::decode).collect::<Result<_>>()?;
    let op = provision::operator_nkey(&a.operator_nkey)?;
    let conf = provision::render_auth_conf(&op, &users);
    std::fs::write(&a.auth_conf, conf).map_err(|e| Error::io(&a.auth_conf, e))?;
    let text = format!(
        "provisioned {device}: copy {} onto the device's root; reload nats-server to apply {}",
        a.out.display(),
        a.auth_conf.display()
    );
    Ok(Output::new(&prov, text))
}

pub async fn bundle_push(cfg: &Config, file: &Path, id: Option<&str>, progress: bool) -> Result<Output> {
    // Local input first: a wrong file is reported without touching NATS.
    crate::bundle::read_manifest(file)?;
    let b = open(cfg).await?;
    let rec = crate::bundle::push(&b, file, id, progress, SystemClock.now()).await?;
    let text = format!("{} {} {} {} bytes sha256 {}", rec.id, rec.compatible, rec.version, rec.size, rec.sha256);
    Ok(Output::new(&rec, text))
}

pub async fn bundle_list(cfg: &Config) -> Result<Output> {
    let b = open(cfg).await?;
    let list = store::bundles(&b.state).await?.good;
    let text = table(
        &["BUNDLE", "VERSION", "COMPATIBLE", "SIZE", "SHA256"],
        &list
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    r.version.clone(),
                    r.compatible.clone(),
                    r.size.to_string(),
                    r.sha256[..16.min(r.sha256.len())].to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(Output::new(&list, text))
}

pub async fn bundle_rm(cfg: &Config, id: &str) -> Result<Output> {
    let b = open(cfg).await?;
    crate::bundle::remove(&b, id).await?;
    Ok(Output::new(&serde_json::json!({"removed": id}), format!("removed {id}")))
}

/// Which devices a rollout targets.
#[derive(Debug, Clone)]
pub enum Target {
    Devices(Vec<String>),
    Selector(String),
    All,
}

#[derive(Debug, Clone)]
pub struct StartArgs {
    pub id: Option<String>,
    pub bundle: String,
    pub target: Target,
    pub canary: usize,
    pub waves: Vec<u8>,
    pub policy: RolloutPolicy,
}

impl StartArgs {
    pub fn from_defaults(cfg: &Config, bundle: &str, target: Target) -> Self {
        let d = &cfg.rollout;
        let halt = match (d.halt_after_percent, d.halt_after_failures) {
            (Some(p), _) => HaltThreshold::Percent(p),
            (None, n) => HaltThreshold::Count(n.unwrap_or(1)),
        };
        Self {
            id: None,
            bundle: bundle.into(),
            target,
            canary: d.canary,
            waves: d.waves.clone(),
            policy: RolloutPolicy {
                max_in_flight: d.max_in_flight,
                device_timeout_ms: d.device_timeout_secs * 1000,
                reboot_timeout_ms: d.reboot_timeout_secs * 1000,
                halt,
                allow_downgrade: false,
                offer_ttl_ms: d.offer_ttl_secs * 1000,
            },
        }
    }
}

/// Creates the rollout record; the serving operator picks it up from its watch.
pub async fn rollout_start(cfg: &Config, a: &StartArgs) -> Result<Output> {
    let b = open(cfg).await?;
    let now = SystemClock.now();
    let bundle = crate::bundle::get(&b, &a.bundle).await?;
    let devices: Vec<DeviceId> = match &a.target {
        Target::Devices(list) => list
            .iter()
            .map(|d| DeviceId::new(d.as_str()).map_err(|e| Error::Invalid(format!("{d}: {e}"))))
            .collect::<Result<_>>()?,
        // The operator's own labels, never what a device reports.
        Target::Selector(sel) => {
            provisioned(&b).await?.into_iter().filter(|u| matches_selector(&u.labels, sel)).map(|u| u.device).collect()
        }
        // Every device heartbeating under its own key.
        Target::All => heartbeats(&b).await?.into_iter().map(|h| h.heartbeat.device_id).collect(),
    };
    if devices.is_empty() {
        return Err(Error::Invalid("no devices selected".into()));
    }
    // A corrupt job record is skipped (with a warning): the serving operator
    // rebuilds it from the device's signed offer, or starts it afresh.
    let busy: Vec<String> = store::jobs(&b.state)
        .await?
        .good
        .into_iter()
        .filter(|j| !j.state.is_terminal() && devices.contains(&j.device))
        .map(|j| format!("{} (rollout {})", j.device, j.rollout_id))
        .collect();
    if !busy.is_empty() {
        return Err(Error::Invalid(format!("devices busy in another rollout: {}", busy.join(", "))));
    }
    let id = a.id.clone().unwrap_or_else(|| format!("{}-{}", a.bundle.replace('.', "_"), now.0));
    if !valid_name(&id) || id.contains('.') {
        return Err(Error::Invalid(format!("rollout id {id:?}: use letters, digits, '_', '-'")));
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
    b.state.create(keys::rollout(&id), bytes.into()).await.map_err(|e| Error::Nats(format!("rollout {id}: {e}")))?;
    let sizes: Vec<usize> = rollout.waves.iter().map(Vec::len).collect();
    Ok(Output::new(&rollout, format!("rollout {id}: {} devices in waves {sizes:?}", devices.len())))
}

pub async fn rollout_control(cfg: &Config, id: &str, control: &str) -> Result<Output> {
    let b = open(cfg).await?;
    if store::get_json::<Rollout>(&b.state, &keys::rollout(id)).await?.is_none() {
        return Err(Error::NoSuchRollout(id.into()));
    }
    store::put_json(&b.state, &keys::ctl(id), &ControlRequest { control: control.into() }).await?;
    Ok(Output::new(&serde_json::json!({"rollout": id, "requested": control}), format!("{control} requested for {id}")))
}

#[derive(Debug, Serialize)]
pub struct RolloutReport {
    pub rollout: Rollout,
    pub counts: std::collections::BTreeMap<&'static str, usize>,
    pub devices: Vec<Job>,
    /// Records that could not be read (skipped); their raw bytes are kept
    /// under `quarantine.<key>` once the serving operator has seen them.
    pub corrupt: Vec<store::CorruptRecord>,
}

fn corrupt_note(corrupt: &[store::CorruptRecord]) -> String {
    if corrupt.is_empty() {
        return String::new();
    }
    let keys: Vec<&str> = corrupt.iter().map(|c| c.key.as_str()).collect();
    format!("\ncorrupt records skipped (see `harmony-operator devices show`, quarantine.<key>): {}", keys.join(", "))
}

pub async fn rollout_status(cfg: &Config, id: Option<&str>) -> Result<Output> {
    let b = open(cfg).await?;
    let store::Records { good: rollouts, mut corrupt } = store::rollouts(&b.state).await?;
    let Some(id) = id else {
        let text = table(
            &["ROLLOUT", "BUNDLE", "STATUS", "WAVE", "DEVICES"],
            &rollouts
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.bundle.id.clone(),
                        r.status.name().into(),
                        format!("{}/{}", (r.current_wave + 1).min(r.waves.len()), r.waves.len()),
                        r.devices().count().to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        let text = format!("{text}{}", corrupt_note(&corrupt));
        return Ok(Output::new(&rollouts, text));
    };
    let rollout = rollouts.into_iter().find(|r| r.id == id).ok_or_else(|| Error::NoSuchRollout(id.into()))?;
    let job_records = store::jobs(&b.state).await?;
    corrupt.extend(job_records.corrupt);
    let jobs: Vec<Job> = job_records.good.into_iter().filter(|j| j.rollout_id == id).collect();
    let mut counts = std::collections::BTreeMap::new();
    for j in &jobs {
        *counts.entry(j.state.name()).or_insert(0) += 1;
    }
    let mut text = format!(
        "rollout {} bundle {} ({}) status {}{}\nwave {}/{}  {:?}\n",
        rollout.id,
        rollout.bundle.id,
        rollout.bundle.version,
        rollout.status.name(),
        match &rollout.status {
            RolloutStatus::Halted { reason } => format!(": {reason}"),
            _ => String::new(),
        },
        (rollout.current_wave + 1).min(rollout.waves.len()),
        rollout.waves.len(),
        counts
    );
    text.push_str(&table(
        &["DEVICE", "WAVE", "STATE", "SINCE"],
        &jobs
            .iter()
            .map(|j| {
                let detail = match &j.state {
                    crate::model::JobState::RolledBack { reason } | crate::model::JobState::Failed { reason } => {
                        format!("{} ({reason})", j.state.name())
                    }
                    s => match &j.queued_behind {
                        Some(q) => format!(
                            "{} (queued behind {})",
                            s.name(),
                            q.offer_seq.map_or_else(|| "the current upgrade".to_string(), |n| format!("offer {n}"))
                        ),
                        None => s.name().to_string(),
                    },
                };
                vec![
                    j.device.to_string(),
                    j.wave.to_string(),
                    detail,
                    j.history.last().map(|t| t.at.0.to_string()).unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    text.push_str(&corrupt_note(&corrupt));
    Ok(Output::new(&RolloutReport { rollout, counts, devices: jobs, corrupt }, text))
}
