//! `harmony-operator workloads ...`: thin wrappers over the domain API
//! ([`KvFleet`]), which selects, signs, writes and audits.

use super::desired::{ApplyReport, Outcome};
use super::view::{retry_text, DeviceWorkloads};
use crate::commands::{actor, table, Output};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fleet::{device_id, FleetService, KvFleet, Target};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::workload::ResourceState;
use std::path::Path;

/// A multi-device command's output, and how many of its devices failed.
#[derive(Debug)]
pub struct Applied {
    pub output: Output,
    pub failed: usize,
    pub total: usize,
}

impl Applied {
    fn of(report: &ApplyReport) -> Self {
        let text = report
            .devices
            .iter()
            .map(|d| match &d.outcome {
                Outcome::Written { generation } => format!("{}: generation {generation} written", d.device),
                Outcome::Unchanged { generation: Some(g) } => format!("{}: unchanged (generation {g})", d.device),
                Outcome::Unchanged { generation: None } => format!("{}: unchanged (no workloads)", d.device),
                Outcome::Failed { error } => format!("{}: FAILED: {error}", d.device),
            })
            .collect::<Vec<_>>()
            .join("\n");
        Self { output: Output::new(report, text), failed: report.failed(), total: report.devices.len() }
    }

    /// The error that makes the command exit non-zero, after its output.
    pub fn error(&self) -> Option<Error> {
        (self.failed > 0).then_some(Error::PartlyFailed { failed: self.failed, total: self.total })
    }
}

/// `workloads apply -f FILE`: the file is read and checked before NATS is
/// touched, so a bad manifest is reported without connecting.
pub async fn apply(cfg: &Config, file: &Path, target: &Target) -> Result<Applied> {
    let spec = super::file::load(file)?;
    let fleet = KvFleet::open(cfg).await?;
    Ok(Applied::of(&fleet.apply_workloads(&actor(), target, &spec).await?))
}

pub async fn remove(cfg: &Config, target: &Target) -> Result<Applied> {
    let fleet = KvFleet::open(cfg).await?;
    Ok(Applied::of(&fleet.remove_workloads(&actor(), target).await?))
}

fn now() -> UnixMillis {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

/// A device's text as one table cell: control characters (newlines,
/// terminal escapes) would break the table or the terminal.
fn cell(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn converged(w: &DeviceWorkloads) -> &'static str {
    use super::view::Convergence;
    match w.convergence {
        Convergence::Converged => "yes",
        Convergence::Converging => "no",
        Convergence::Behind => "behind",
        Convergence::Unreported => "unreported",
        Convergence::NoManifest => "no manifest",
    }
}

fn boot(w: &DeviceWorkloads) -> String {
    let Some(s) = &w.status else { return "-".into() };
    let short: String = cell(&s.boot_id).chars().take(8).collect();
    match w.current_boot {
        Some(false) => format!("{short} (old boot)"),
        _ => short,
    }
}

/// `workloads status [--device ID]`.
pub async fn status(cfg: &Config, device: Option<&str>) -> Result<Output> {
    let fleet = KvFleet::open(cfg).await?;
    let Some(raw) = device else {
        let all = fleet.workloads(None).await?;
        return Ok(Output::new(&all, fleet_table(&all)));
    };
    let id = device_id(raw)?;
    let one = fleet.workloads(Some(&id)).await?;
    let text = match one.first() {
        None => format!("{id}: no workloads (no manifest, no status)"),
        Some(w) => device_text(w, now()),
    };
    Ok(Output::new(&one.first(), text))
}

fn fleet_table(all: &[DeviceWorkloads]) -> String {
    let rows = all
        .iter()
        .map(|w| {
            vec![
                w.device_id.to_string(),
                opt(w.desired.as_ref().map(|d| d.generation)),
                opt(w.status.as_ref().and_then(|s| s.observed_generation)),
                boot(w),
                converged(w).to_string(),
                w.counts_text(),
                cell(
                    &w.refused()
                        .or_else(|| w.status_error.clone())
                        .or_else(|| w.desired_error.clone())
                        .unwrap_or_default(),
                ),
            ]
        })
        .collect::<Vec<_>>();
    table(&["DEVICE", "DESIRED", "OBSERVED", "BOOT", "CONVERGED", "RESOURCES", "REFUSED"], &rows)
}

/// One device: its generations, then one row per resource.
pub fn device_text(w: &DeviceWorkloads, now: UnixMillis) -> String {
    let mut out = format!(
        "device {}  desired {}  observed {}  boot {}  converged {}\n",
        w.device_id,
        opt(w.desired.as_ref().map(|d| d.generation)),
        opt(w.status.as_ref().and_then(|s| s.observed_generation)),
        boot(w),
        converged(w),
    );
    for (what, problem) in [
        ("refused", w.refused()),
        ("status not believed", w.status_error.clone()),
        ("manifest", w.desired_error.clone()),
    ] {
        if let Some(p) = problem {
            out.push_str(&format!("{what}: {}\n", cell(&p)));
        }
    }
    let ago = |t: UnixMillis| format!("{} s ago", now.saturating_since(t) / 1000);
    let rows = w
        .rows()
        .iter()
        .map(|r| {
            let (since, detail) = match &r.state {
                None => (String::new(), String::new()),
                Some(ResourceState::Pending) => (String::new(), String::new()),
                Some(ResourceState::Reconciling { since }) => (ago(*since), String::new()),
                Some(ResourceState::Ready { since, details }) => (ago(*since), details.clone()),
                Some(ResourceState::Failed { since, error, attempts, retry_after }) => {
                    (ago(*since), format!("{error} (attempt {attempts}, {})", retry_text(*retry_after, now)))
                }
            };
            vec![
                cell(&r.id),
                opt(r.kind.as_deref()),
                r.state.as_ref().map_or("unreported", ResourceState::name).to_string(),
                since,
                cell(&detail),
            ]
        })
        .collect::<Vec<_>>();
    out.push_str(&table(&["RESOURCE", "KIND", "STATE", "SINCE", "DETAIL"], &rows));
    out
}
