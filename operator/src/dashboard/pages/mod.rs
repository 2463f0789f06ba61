//! One module per page; each renders its page and the live fragments in it.

pub mod audit;
pub mod bundles;
pub mod device;
pub mod devices;
pub mod enrollment;
pub mod login;
pub mod overview;
pub mod rollout;
pub mod rollouts;

use crate::dashboard::error::DashResult;
use crate::dashboard::guard::Caller;
use crate::dashboard::AppState;
use crate::fleet::{Actor, Stage, StageCounts, Via};
use axum::http::Uri;
use axum::response::{Html, IntoResponse, Response};
use harmony_protocol::time::UnixMillis;
use maud::Markup;
use std::future::Future;

/// Whether htmx asked (then only the fragment is sent, not the page).
pub fn is_htmx(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("hx-request") && !headers.contains_key("hx-boosted")
}

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

/// Stage name and count per segment; devices whose job is no longer on
/// record (replaced by a newer rollout) go last, as `superseded`.
pub fn bar_counts(c: &StageCounts) -> Vec<(&'static str, usize)> {
    BAR_ORDER.iter().map(|s| (s.name(), c.get(*s))).chain(std::iter::once(("superseded", c.superseded))).collect()
}

pub fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("—")
}

/// Wave 0 is the canary.
pub fn wave_name(index: usize) -> String {
    if index == 0 {
        "canary".to_string()
    } else {
        format!("wave {index}")
    }
}

/// A live region as htmx fetches it, shared between the viewers with the
/// same role and URL (see `fragments.rs`).
pub async fn live_fragment<S, F, Fut>(app: &AppState<S>, caller: &Caller, uri: &Uri, render: F) -> DashResult<Response>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = DashResult<Markup>>,
{
    let role = if caller.is_admin() { "admin" } else { "viewer" };
    let key = format!("{role} {uri}");
    let html = app.fragments.get_or_render(key, app.live.generation(), render).await?;
    Ok(Html(html.to_string()).into_response())
}
