//! Tells a person what the rollout is doing, in plain words, from the
//! operator's own records (the `job.*` and `rollout.*` keys in KV).

use futures::StreamExt;
use harmony_operator::model::{Job, JobState, Rollout, RolloutStatus};
use harmony_operator::{Error, Result};
use std::collections::HashMap;
use tokio::sync::watch;

/// What the demo's driver needs to know about the rollout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub status: Option<RolloutStatus>,
    pub halts: usize,
}

fn words(state: &JobState) -> String {
    match state {
        JobState::Pending => "waits for its turn".into(),
        JobState::Offered => "got a signed offer".into(),
        JobState::Installing => "downloads and installs into the other slot".into(),
        JobState::Rebooting => "installed; reboots into the new slot".into(),
        JobState::CommitSent => "heartbeat from the new boot seen; commit sent".into(),
        JobState::Committed => "committed: runs the new version".into(),
        JobState::RolledBack { reason } => format!("ROLLED BACK: {reason}"),
        JobState::Failed { reason } => format!("FAILED: {reason}"),
        JobState::TimedOut { waiting_for } => format!("TIMED OUT waiting for {waiting_for}"),
        JobState::Skipped => "skipped (rollout aborted)".into(),
        JobState::UpToDate => "already up to date".into(),
    }
}

fn stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// Watches the state bucket and prints every change of `rollout_id` and its
/// devices' jobs until the watch ends; publishes the rollout's status.
pub async fn run(
    state: async_nats::jetstream::kv::Store,
    rollout_id: String,
    tx: watch::Sender<Progress>,
) -> Result<()> {
    let mut updates = state.watch_all().await.map_err(|e| Error::Nats(e.to_string()))?;
    let mut seen: HashMap<String, &'static str> = HashMap::new();
    let mut last: Option<Rollout> = None;
    let rollout_key = format!("rollout.{rollout_id}");
    while let Some(entry) = updates.next().await {
        let Ok(entry) = entry else { continue };
        if entry.key.starts_with("job.") {
            let Ok(job) = serde_json::from_slice::<Job>(&entry.value) else { continue };
            if job.rollout_id != rollout_id || seen.get(job.device.as_str()) == Some(&job.state.name()) {
                continue;
            }
            seen.insert(job.device.to_string(), job.state.name());
            if job.state != JobState::Pending {
                println!("{}   wave {}  {:<22} {}", stamp(), job.wave + 1, job.device.as_str(), words(&job.state));
            }
        } else if entry.key == rollout_key {
            let Ok(r) = serde_json::from_slice::<Rollout>(&entry.value) else { continue };
            describe(last.as_ref(), &r);
            tx.send_modify(|p| {
                if matches!(r.status, RolloutStatus::Halted { .. })
                    && !matches!(p.status, Some(RolloutStatus::Halted { .. }))
                {
                    p.halts += 1;
                }
                p.status = Some(r.status.clone());
            });
            last = Some(r);
        }
    }
    Ok(())
}

fn describe(before: Option<&Rollout>, r: &Rollout) {
    let waves = r.waves.len();
    let wave_changed = before.is_none_or(|b| b.current_wave != r.current_wave);
    if wave_changed && r.current_wave < waves {
        let size = r.waves.get(r.current_wave).map_or(0, Vec::len);
        let what = if r.current_wave == 0 { " (the canary: a few devices first)" } else { "" };
        println!("{} == wave {} of {waves} starts: {size} devices{what}", stamp(), r.current_wave + 1);
    }
    if before.is_some_and(|b| b.status == r.status) {
        return;
    }
    match &r.status {
        RolloutStatus::Running if before.is_some() => println!("{} == rollout {} runs again", stamp(), r.id),
        RolloutStatus::Running => {}
        RolloutStatus::Paused => println!("{} == rollout {} paused: no new offers until it is resumed", stamp(), r.id),
        RolloutStatus::Halted { reason } => {
            println!("{} == ROLLOUT HALTED by itself: {reason}", stamp());
            println!("           no device gets an offer until someone resumes (or aborts) it");
        }
        RolloutStatus::Aborted => println!("{} == rollout {} aborted", stamp(), r.id),
        RolloutStatus::Completed => println!("{} == rollout {} completed: every wave done", stamp(), r.id),
    }
}
