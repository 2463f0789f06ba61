//! `harmony-operator enroll ...` and the enrollment side of `devices ...`:
//! thin wrappers over the domain API ([`KvFleet`]), which does the work and
//! audits it (the dashboard goes through the same calls).

use super::token::TokenRecord;
use super::{seed_file, server_config, SeedKind};
use crate::commands::{actor, table, Output};
use crate::config::{Config, EnrollConfig};
use crate::error::{Error, Result};
use crate::fleet::{device_id, FleetService, KvFleet, TokenSpec, TokenState};
use crate::provision::DeviceUser;

pub use crate::fleet::Verdict;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn enroll_cfg(cfg: &Config) -> Result<&EnrollConfig> {
    cfg.enroll.as_ref().ok_or_else(|| {
        Error::Invalid("the config has no [enroll] section (see `harmony-operator enroll server-config`)".into())
    })
}

#[derive(Debug, Clone)]
pub struct TokenArgs {
    pub labels: Vec<String>,
    pub max_uses: u32,
    pub expires: String,
    pub require_approval: bool,
}

pub async fn token_create(cfg: &Config, a: &TokenArgs) -> Result<Output> {
    let spec = TokenSpec {
        labels: a.labels.clone(),
        max_uses: a.max_uses,
        expires: a.expires.clone(),
        require_approval: a.require_approval,
    };
    let fleet = KvFleet::open(cfg).await?;
    let created = fleet.create_token(&actor(), &spec).await?;
    let record = &created.record;
    let human = format!(
        "{}\n\ntoken {} for {} device(s), expires in {}{}; it is shown only now. \
         Write it onto a card with `harmony-operator enroll prepare --token ...`.",
        created.token,
        record.id,
        record.max_uses,
        a.expires,
        if record.require_approval { ", each device waits for `devices accept`" } else { "" }
    );
    Ok(Output::new(&created, human))
}

pub async fn token_list(cfg: &Config) -> Result<Output> {
    let tokens: Vec<TokenRecord> = KvFleet::open(cfg).await?.tokens().await?;
    let now = now_secs();
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                TokenState::of(t, now).name().to_string(),
                format!("{}/{}", t.uses, t.max_uses),
                if t.require_approval { "yes".into() } else { "no".into() },
                t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                format!("{}h", t.expires_at.saturating_sub(now) / 3600),
                t.created_by.clone(),
            ]
        })
        .collect::<Vec<_>>();
    let text = table(&["TOKEN", "STATE", "USES", "APPROVAL", "LABELS", "EXPIRES IN", "BY"], &rows);
    Ok(Output::new(&tokens, text))
}

pub async fn token_revoke(cfg: &Config, id: &str) -> Result<Output> {
    let t = KvFleet::open(cfg).await?.revoke_token(&actor(), id).await?;
    let text = format!("token {id} revoked ({} device(s) enrolled with it keep their identity)", t.uses);
    Ok(Output::new(&t, text))
}

/// `enroll prepare`: what goes onto the card's boot partition.
#[derive(Debug, Clone)]
pub struct PrepareArgs {
    pub target: std::path::PathBuf,
    pub token: String,
    pub nats_urls: Vec<String>,
    pub ca: Option<std::path::PathBuf>,
    pub overwrite: bool,
}

/// Writes the enrollment file onto an image's or a card's boot partition.
/// Needs no NATS connection (a laptop with the image is enough).
pub fn prepare(a: &PrepareArgs) -> Result<Output> {
    let nats_ca_pem = match &a.ca {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?),
        None => None,
    };
    if nats_ca_pem.as_deref().is_some_and(|pem| !pem.contains("-----BEGIN CERTIFICATE-----")) {
        return Err(Error::Invalid("--ca is not a PEM certificate".into()));
    }
    let file =
        harmony_protocol::enroll::EnrollFile { token: a.token.clone(), nats_urls: a.nats_urls.clone(), nats_ca_pem };
    let card = super::prepare::prepare(&a.target, &file, a.overwrite).map_err(|e| Error::Invalid(e.to_string()))?;
    let json = serde_json::json!({
        "target": card.target,
        "partition": card.partition,
        "offset": card.offset,
        "path": card.path_written,
        "bytes": card.bytes,
        "replaced": card.replaced,
    });
    Ok(Output { json, text: card.to_string() })
}

/// Prints the nats-server block for callout mode, creating the issuer and
/// system-user seeds on first use.
pub fn server_config(cfg: &Config) -> Result<Output> {
    let e = enroll_cfg(cfg)?;
    let op_seed = cfg.nats.nkey_seed_file.as_ref().ok_or_else(|| {
        Error::Invalid("callout mode needs nats.nkey_seed_file: the operator's user is named by its nkey".into())
    })?;
    let operator_user = crate::provision::operator_nkey(op_seed)?;
    let issuer = seed_file(&e.issuer_seed_file, SeedKind::Account, true)?.public_key();
    let system_user = seed_file(&e.system_seed_file, SeedKind::User, true)?.public_key();
    let keys = server_config::CalloutKeys { operator_user, system_user, issuer };
    let text = server_config::render(&e.account, &keys);
    Ok(Output { json: serde_json::json!({ "config": text }), text })
}

pub async fn pending(cfg: &Config) -> Result<Output> {
    let pending: Vec<DeviceUser> = KvFleet::open(cfg).await?.pending_devices().await?;
    let rows = pending
        .iter()
        .map(|u| {
            let e = u.enrollment.as_ref();
            vec![
                u.device.to_string(),
                e.map(|e| e.token.clone()).unwrap_or_default(),
                u.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                e.and_then(|e| e.os_version.clone()).unwrap_or_default(),
                e.map(|e| format!("{}s ago", now_secs().saturating_sub(e.at))).unwrap_or_default(),
                u.nkey.clone(),
            ]
        })
        .collect::<Vec<_>>();
    let text = table(&["DEVICE", "TOKEN", "LABELS", "OS", "ASKED", "KEY"], &rows);
    Ok(Output::new(&pending, text))
}

/// `devices accept|reject|revoke ID`.
pub async fn judge(cfg: &Config, device: &str, verdict: Verdict) -> Result<Output> {
    let id = device_id(device)?;
    let j = KvFleet::open(cfg).await?.judge_device(&actor(), &id, verdict).await?;
    let text = format!("{} is now {} ({} connection(s) closed)", j.device, j.status.as_str(), j.disconnected);
    Ok(Output::new(&j, text))
}
