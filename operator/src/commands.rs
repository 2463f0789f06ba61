//! What each CLI subcommand does (except `serve`), returning a value that is
//! printed as JSON (`--json`) or as a human table.

use crate::bus::{create_buckets, BucketLimits, Buckets};
use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::fleet::{Actor, StartArgs, Target, Via};
use crate::fleet::{
    AuditQuery, AuditResult, BundlePush, Control, DeviceQuery, DeviceSummary, FleetService, KvFleet, Presence,
};
use crate::model::{keys, Job, Rollout, RolloutStatus};
use crate::provision::{self, AgentSettings, DeviceUser};
use crate::registry::{stored_heartbeat, Labels, StoredHeartbeat};
use crate::store;
use harmony_protocol::DeviceId;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A command's result: the JSON for scripts and the text for people.
#[derive(Debug)]
pub struct Output {
    pub json: serde_json::Value,
    pub text: String,
}

impl Output {
    pub(crate) fn new(value: &impl Serialize, text: String) -> Self {
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

/// Every device heard from, and every device whose record is not active
/// (pending, rejected, revoked: they are shown even if never heard from);
/// provisioned active devices never seen are left out here, the dashboard
/// shows them as `unseen`.
pub async fn devices_list(cfg: &Config) -> Result<Output> {
    let fleet = KvFleet::open(cfg).await?;
    let mut q = DeviceQuery { limit: DeviceQuery::MAX_LIMIT, ..Default::default() };
    let mut rows: Vec<DeviceSummary> = Vec::new();
    let at = loop {
        let page = fleet.devices(&q).await?;
        let done = page.devices.len() < page.limit;
        rows.extend(page.devices.into_iter().filter(|d| {
            d.presence != Presence::Unseen || d.status.is_some_and(|s| s != crate::provision::DeviceStatus::Active)
        }));
        if done {
            break page.at;
        }
        q.offset += page.limit;
    };
    let text = table(
        &["DEVICE", "STATUS", "PRESENCE", "VERSION", "SLOT", "HEALTH", "PHASE", "SEEN"],
        &rows
            .iter()
            .map(|r| {
                let phase = r.phase.clone().unwrap_or_default();
                vec![
                    r.device_id.to_string(),
                    r.status.map_or("unprovisioned", crate::provision::DeviceStatus::as_str).to_string(),
                    r.presence.name().to_string(),
                    r.os_version.clone().unwrap_or_default(),
                    r.booted_slot.clone().unwrap_or_default(),
                    r.health.map(crate::fleet::health_name).unwrap_or_default().to_string(),
                    match &r.boot_mismatch {
                        Some(m) => format!("{phase} ({m})"),
                        None => phase,
                    },
                    r.last_seen.map(|t| format!("{}s ago", at.saturating_since(t) / 1000)).unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(Output::new(&rows, text))
}

/// One device: its row, last heartbeat, current job (or why it cannot be
/// read) and the timeline of its jobs across rollouts.
pub async fn devices_show(cfg: &Config, id: &str) -> Result<Output> {
    let id = DeviceId::new(id).map_err(|e| Error::Invalid(e.to_string()))?;
    let fleet = KvFleet::open(cfg).await?;
    let d = match fleet.device(&id).await {
        Err(Error::NoSuchDevice(_)) => return Err(Error::NoSuchDevice(id.to_string())),
        other => other?,
    };
    // A device whose record is not active is shown even if never heard
    // from: that is what an operator deciding about it needs to see.
    let inactive = d.summary.status.is_some_and(|s| s != crate::provision::DeviceStatus::Active);
    if d.heartbeat.is_none() && !inactive {
        return Err(match d.heartbeat_error {
            Some(detail) => Error::Corrupt { key: id.to_string(), detail },
            None => Error::NoSuchDevice(id.to_string()),
        });
    }
    let value = serde_json::json!({
        "device": d.summary, "heartbeat": d.heartbeat, "job": d.job, "job_error": d.job_error,
        "quarantined_job": d.quarantined_job, "timeline": d.timeline,
        "status": d.summary.status, "enrollment": d.enrollment, "held_labels": d.held_labels,
        "workloads": d.workloads, "workloads_error": d.workloads_error,
    });
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    Ok(Output { json: value, text })
}

pub async fn ping(cfg: &Config, id: &str) -> Result<Output> {
    let id = DeviceId::new(id).map_err(|e| Error::Invalid(e.to_string()))?;
    let fleet = KvFleet::open(cfg).await?;
    let report = fleet.ping(&actor(), &id).await?;
    let text = format!("{id}: {} ({:.1} ms)", serde_json::to_string(&report.reply).unwrap_or_default(), report.rtt_ms);
    Ok(Output::new(&report, text))
}

pub async fn devices_reboot(cfg: &Config, id: &str) -> Result<Output> {
    let id = DeviceId::new(id).map_err(|e| Error::Invalid(e.to_string()))?;
    let fleet = KvFleet::open(cfg).await?;
    fleet.reboot(&actor(), &id).await?;
    Ok(Output::new(&serde_json::json!({"device": id, "reboot": "scheduled"}), format!("{id}: reboot scheduled")))
}

/// The audit log, newest first.
pub async fn audit(cfg: &Config, offset: usize, limit: usize) -> Result<Output> {
    let fleet = KvFleet::open(cfg).await?;
    let page = fleet.audit(&AuditQuery { offset, limit }).await?;
    let text = table(
        &["WHEN", "WHO", "VIA", "ACTION", "TARGET", "RESULT"],
        &page
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.at.0.to_string(),
                    e.actor.name.clone(),
                    format!("{:?}", e.actor.via).to_lowercase(),
                    serde_json::to_value(e.action)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    e.target.clone(),
                    match &e.result {
                        AuditResult::Ok { detail } => format!("ok: {detail}"),
                        AuditResult::Failed { error } => format!("failed: {error}"),
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(Output::new(&page, format!("{text}\n({} of {} entries from {})", page.entries.len(), page.total, offset)))
}

/// The name the CLI records in the audit log: `--as`, else the OS user.
static ACT_AS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the CLI's name for the audit log (from `--as`); call once, first.
pub fn act_as(name: Option<String>) {
    if let Some(name) = name.filter(|n| !n.trim().is_empty()) {
        let _ = ACT_AS.set(name);
    }
}

/// Who the CLI acts as.
pub fn actor() -> Actor {
    let name = ACT_AS
        .get()
        .cloned()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_string());
    Actor::new(name, Via::Cli)
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
        &DeviceUser::provisioned(device.clone(), prov.nkey.clone(), labels),
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
    let fleet = KvFleet::open(cfg).await?;
    let push = BundlePush { path: file.to_path_buf(), id: id.map(str::to_string), progress_bar: progress };
    let rec = fleet.push_bundle(&actor(), &push).await?;
    let text = format!("{} {} {} {} bytes sha256 {}", rec.id, rec.compatible, rec.version, rec.size, rec.sha256);
    Ok(Output::new(&rec, text))
}

pub async fn bundle_list(cfg: &Config) -> Result<Output> {
    let fleet = KvFleet::open(cfg).await?;
    let list = fleet.bundles().await?;
    let text = table(
        &["BUNDLE", "VERSION", "COMPATIBLE", "SIZE", "SHA256", "IN USE BY"],
        &list
            .iter()
            .map(|b| {
                let r = &b.record;
                vec![
                    r.id.clone(),
                    r.version.clone(),
                    r.compatible.clone(),
                    r.size.to_string(),
                    r.sha256[..16.min(r.sha256.len())].to_string(),
                    b.in_use_by.join(","),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(Output::new(&list, text))
}

pub async fn bundle_rm(cfg: &Config, id: &str) -> Result<Output> {
    let fleet = KvFleet::open(cfg).await?;
    fleet.remove_bundle(&actor(), id).await?;
    Ok(Output::new(&serde_json::json!({"removed": id}), format!("removed {id}")))
}

/// Creates the rollout record; the serving operator picks it up from its watch.
pub async fn rollout_start(cfg: &Config, a: &StartArgs) -> Result<Output> {
    let fleet = KvFleet::open(cfg).await?;
    let rollout = fleet.start_rollout(&actor(), a).await?;
    let sizes: Vec<usize> = rollout.waves.iter().map(Vec::len).collect();
    let text = format!("rollout {}: {} devices in waves {sizes:?}", rollout.id, rollout.devices().count());
    Ok(Output::new(&rollout, text))
}

pub async fn rollout_control(cfg: &Config, id: &str, control: &str) -> Result<Output> {
    let parsed: Control = control.parse()?;
    let fleet = KvFleet::open(cfg).await?;
    fleet.control_rollout(&actor(), id, parsed).await?;
    Ok(Output::new(&serde_json::json!({"rollout": id, "requested": control}), format!("{control} requested for {id}")))
}

#[derive(Debug, Serialize)]
pub struct RolloutReport {
    pub rollout: Rollout,
    /// Jobs per state name.
    pub counts: std::collections::BTreeMap<&'static str, usize>,
    /// Per wave: devices per stage.
    pub waves: Vec<crate::fleet::WaveProgress>,
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
    let fleet = KvFleet::open(cfg).await?;
    let Some(id) = id else {
        let corrupt = fleet.corrupt_records().await?;
        let summaries = fleet.rollouts().await?;
        let rollouts = fleet.rollout_records().await?;
        let text = table(
            &["ROLLOUT", "BUNDLE", "STATUS", "WAVE", "DEVICES", "DONE"],
            &rollouts
                .iter()
                .map(|r| {
                    let done = summaries.iter().find(|s| s.id == r.id).map_or(0, |s| s.counts.finished());
                    vec![
                        r.id.clone(),
                        r.bundle.id.clone(),
                        r.status.name().into(),
                        format!("{}/{}", (r.current_wave + 1).min(r.waves.len()), r.waves.len()),
                        r.devices().count().to_string(),
                        done.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        let text = format!("{text}{}", corrupt_note(&corrupt));
        return Ok(Output::new(&rollouts, text));
    };
    let detail = fleet.rollout(id).await?;
    let (rollout, jobs, corrupt) = (detail.rollout, detail.jobs, detail.corrupt);
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
    for w in &detail.waves {
        let stages: Vec<String> = crate::fleet::Stage::ALL
            .iter()
            .filter(|s| w.counts.get(**s) > 0)
            .map(|s| format!("{} {}", w.counts.get(*s), s.name()))
            .collect();
        text.push_str(&format!("  wave {} ({} devices): {}\n", w.index, w.devices, stages.join(", ")));
    }
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
    Ok(Output::new(&RolloutReport { rollout, counts, waves: detail.waves, devices: jobs, corrupt }, text))
}
