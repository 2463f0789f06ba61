//! A device's upgrade timeline: every transition of its jobs, across rollouts.

use super::{Stage, TimelineEntry};
use crate::model::{Job, JobState};

/// Why a job ended badly, if it did.
pub fn reason(state: &JobState) -> Option<String> {
    match state {
        JobState::Failed { reason } | JobState::RolledBack { reason } => Some(reason.clone()),
        JobState::TimedOut { waiting_for } => Some(format!("timed out waiting for {waiting_for}")),
        _ => None,
    }
}

/// The entries of one job, oldest first. The reason of a failed, rolled
/// back or timed-out job goes on the transition into that state (the first
/// of the final run of entries in it; later ones are notes).
pub fn of_job(job: &Job, target_version: Option<&str>) -> Vec<TimelineEntry> {
    let last = job.state.name();
    let final_run = job.history.iter().rposition(|t| t.to != last).map_or(0, |i| i + 1);
    let why = reason(&job.state);
    job.history
        .iter()
        .enumerate()
        .map(|(i, t)| TimelineEntry {
            at: t.at,
            rollout_id: job.rollout_id.clone(),
            target_version: target_version
                .map(str::to_string)
                .or_else(|| job.offer.as_ref().map(|o| o.target_version.clone())),
            wave: job.wave,
            state: t.to.clone(),
            stage: Stage::of_name(&t.to),
            note: t.note.clone(),
            reason: if i == final_run && t.to == last { why.clone() } else { None },
        })
        .collect()
}

/// Archived jobs and the current one, one rollout each (the current record
/// wins over an archived copy), in time order.
pub fn of_jobs<'a>(
    archived: &'a [Job],
    current: Option<&'a Job>,
    version_of: impl Fn(&str) -> Option<String>,
) -> Vec<TimelineEntry> {
    let mut out: Vec<TimelineEntry> = archived
        .iter()
        .filter(|a| current.is_none_or(|c| c.rollout_id != a.rollout_id))
        .chain(current)
        .flat_map(|j| of_job(j, version_of(&j.rollout_id).as_deref()))
        .collect();
    out.sort_by_key(|e| e.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_protocol::time::UnixMillis;
    use harmony_protocol::DeviceId;

    fn job(rollout: &str, at: u64, steps: &[(JobState, &str)]) -> Job {
        let mut j = Job::pending(DeviceId::new("pi-1").expect("id"), rollout, 0, UnixMillis(at));
        for (i, (s, note)) in steps.iter().enumerate() {
            j.history.push(crate::model::Transition {
                at: UnixMillis(at + 1 + i as u64),
                to: s.name().into(),
                note: (*note).into(),
            });
            j.state = s.clone();
        }
        j
    }

    #[test]
    fn reasons_sit_on_the_transition_and_rollouts_interleave_by_time() {
        let failed = JobState::Failed { reason: "refused: downgrade".into() };
        let old = job("r1", 100, &[(JobState::Offered, ""), (failed.clone(), "reported by agent"), (failed, "again")]);
        let rolled = JobState::RolledBack { reason: "health check sshd failed".into() };
        let new = job("r2", 200, &[(JobState::Offered, ""), (JobState::Rebooting, "into B"), (rolled, "")]);
        let stale_copy = job("r2", 200, &[]);
        let t = of_jobs(&[old, stale_copy], Some(&new), |r| Some(format!("v-{r}")));
        let rows: Vec<(&str, &str, Option<Stage>, Option<&str>)> =
            t.iter().map(|e| (e.rollout_id.as_str(), e.state.as_str(), e.stage, e.reason.as_deref())).collect();
        assert_eq!(
            rows,
            [
                ("r1", "pending", Some(Stage::Pending), None),
                ("r1", "offered", Some(Stage::Offered), None),
                ("r1", "failed", Some(Stage::Failed), Some("refused: downgrade")),
                ("r1", "failed", Some(Stage::Failed), None),
                ("r2", "pending", Some(Stage::Pending), None),
                ("r2", "offered", Some(Stage::Offered), None),
                ("r2", "rebooting", Some(Stage::Installing), None),
                ("r2", "rolled_back", Some(Stage::RolledBack), Some("health check sshd failed")),
            ]
        );
        assert_eq!(t[0].target_version.as_deref(), Some("v-r1"));
    }
}
