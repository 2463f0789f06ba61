//! The stages a rollout's progress bars show, and how each job state maps
//! onto one.

use crate::model::JobState;
use serde::{Deserialize, Serialize};

/// Where a device stands in a rollout, as a person reads a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// In a wave, not offered yet.
    Pending,
    /// The signed offer is written; the agent has not started on it.
    Offered,
    /// Downloading, verifying, installing, or rebooting into the new slot.
    Installing,
    /// Came up in the new slot; the commit is sent, awaiting its confirmation.
    Rebooted,
    Committed,
    /// Refused or failed before the reboot.
    Failed,
    RolledBack,
    TimedOut,
    /// The rollout was aborted before the device got an offer.
    Skipped,
    /// Already ran the target version: nothing was offered.
    UpToDate,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Pending,
        Stage::Offered,
        Stage::Installing,
        Stage::Rebooted,
        Stage::Committed,
        Stage::Failed,
        Stage::RolledBack,
        Stage::TimedOut,
        Stage::Skipped,
        Stage::UpToDate,
    ];

    /// `Rebooting` is the agent's "installed, rebooting into the target
    /// slot": the new boot has not been seen yet, so it still counts as
    /// installing. `CommitSent` follows a heartbeat of the new boot awaiting
    /// commit: that is "rebooted".
    pub fn of(state: &JobState) -> Self {
        match state {
            JobState::Pending => Self::Pending,
            JobState::Offered => Self::Offered,
            JobState::Installing | JobState::Rebooting => Self::Installing,
            JobState::CommitSent => Self::Rebooted,
            JobState::Committed => Self::Committed,
            JobState::Failed { .. } => Self::Failed,
            JobState::RolledBack { .. } => Self::RolledBack,
            JobState::TimedOut { .. } => Self::TimedOut,
            JobState::Skipped => Self::Skipped,
            JobState::UpToDate => Self::UpToDate,
        }
    }

    /// The stage of a job state's name as kept in a job's history
    /// (`JobState::name`); `None` for a name this operator does not know.
    pub fn of_name(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => Self::Pending,
            "offered" => Self::Offered,
            "installing" | "rebooting" => Self::Installing,
            "commit_sent" => Self::Rebooted,
            "committed" => Self::Committed,
            "failed" => Self::Failed,
            "rolled_back" => Self::RolledBack,
            "timed_out" => Self::TimedOut,
            "skipped" => Self::Skipped,
            "up_to_date" => Self::UpToDate,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Offered => "offered",
            Self::Installing => "installing",
            Self::Rebooted => "rebooted",
            Self::Committed => "committed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::TimedOut => "timed_out",
            Self::Skipped => "skipped",
            Self::UpToDate => "up_to_date",
        }
    }

    /// The job is over (it will not move again in this rollout).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Committed | Self::Failed | Self::RolledBack | Self::TimedOut | Self::Skipped | Self::UpToDate
        )
    }

    /// Counts against the rollout's halt threshold.
    pub fn is_bad(self) -> bool {
        matches!(self, Self::Failed | Self::RolledBack | Self::TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job state, its stage, and that the name-based mapping (used on
    /// history entries) agrees with the state-based one.
    #[test]
    fn every_job_state_maps_onto_one_stage() {
        let reason = || "r".to_string();
        let table: Vec<(JobState, Stage)> = vec![
            (JobState::Pending, Stage::Pending),
            (JobState::Offered, Stage::Offered),
            (JobState::Installing, Stage::Installing),
            (JobState::Rebooting, Stage::Installing),
            (JobState::CommitSent, Stage::Rebooted),
            (JobState::Committed, Stage::Committed),
            (JobState::Failed { reason: reason() }, Stage::Failed),
            (JobState::RolledBack { reason: reason() }, Stage::RolledBack),
            (JobState::TimedOut { waiting_for: reason() }, Stage::TimedOut),
            (JobState::Skipped, Stage::Skipped),
            (JobState::UpToDate, Stage::UpToDate),
        ];
        for (state, stage) in &table {
            assert_eq!(Stage::of(state), *stage, "{state:?}");
            assert_eq!(Stage::of_name(state.name()), Some(*stage), "{}", state.name());
            assert_eq!(stage.is_finished(), state.is_terminal(), "{state:?}");
            assert_eq!(stage.is_bad(), state.is_bad(), "{state:?}");
        }
        assert_eq!(Stage::of_name("wave 2"), None);
        assert_eq!(
            Stage::ALL.len(),
            Stage::ALL.iter().map(|s| s.name()).collect::<std::collections::HashSet<_>>().len()
        );
    }
}
