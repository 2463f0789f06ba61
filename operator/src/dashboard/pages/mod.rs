//! One module per page; each renders its page and the live fragments in it.

pub mod audit;
pub mod bundles;
pub mod device;
pub mod devices;
pub mod login;
pub mod overview;
pub mod rollout;
pub mod rollouts;

/// Whether htmx asked (then only the fragment is sent, not the page).
pub fn is_htmx(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("hx-request") && !headers.contains_key("hx-boosted")
}

use crate::dashboard::guard::Caller;
use crate::fleet::{Actor, Stage, StageCounts, Via};
use harmony_protocol::time::UnixMillis;

/// The dashboard user as the audit log records them.
pub fn actor(caller: &Caller) -> Actor {
    Actor::new(caller.session.user.clone(), Via::Dashboard)
}

pub fn now() -> UnixMillis {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

/// Bar order: done on the left, trouble next, what is still to come on the
/// right (grey).
pub const BAR_ORDER: [Stage; 10] = [
    Stage::Committed,
    Stage::UpToDate,
    Stage::Rebooted,
    Stage::Installing,
    Stage::Offered,
    Stage::Failed,
    Stage::RolledBack,
    Stage::TimedOut,
    Stage::Skipped,
    Stage::Pending,
];

pub fn bar_counts(c: &StageCounts) -> Vec<(&'static str, usize)> {
    BAR_ORDER.iter().map(|s| (s.name(), c.get(*s))).collect()
}

pub fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("—")
}
